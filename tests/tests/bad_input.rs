//! Acceptance: malformed and hostile input gets a typed error or a closed connection with a
//! logged reason, and never stops the broker from serving well-behaved clients.

use bytes::{Bytes, BytesMut};
use rill_client::{
    Admin, Client, ErrorCode, FetchOptions, Producer, ProducerConfig, ProducerRecord, TopicConfig,
};
use rill_e2e::Broker;
use rill_protocol::TopicName;
use rill_protocol::frame::{self, RequestHeader, ResponseFrame};
use rill_protocol::messages::{ListTopicsRequest, ProduceRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one response frame, or `None` if the broker closed the connection first.
async fn response(socket: &mut TcpStream) -> Option<ResponseFrame> {
    let mut buf = BytesMut::new();
    loop {
        if let Some(f) = frame::decode_response(&mut buf, 1 << 20).expect("well-formed response") {
            return Some(f);
        }
        if socket.read_buf(&mut buf).await.expect("read") == 0 {
            return None;
        }
    }
}

async fn closed(socket: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    socket.read_to_end(&mut rest).await.is_ok() && rest.is_empty()
}

fn request(
    api_key: u16,
    correlation_id: u32,
    body: &impl serde::Serialize,
    payload: Bytes,
) -> Vec<u8> {
    let out = frame::encode_request(
        RequestHeader {
            api_key,
            api_version: 0,
            correlation_id,
        },
        body,
        payload,
    );
    [&out.head[..], &out.payload[..]].concat()
}

/// A well-behaved client still produces and reads.
async fn healthy(addr: &str, n: u32) {
    let client = Client::connect(addr).await.expect("connect");
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let delivery = producer
        .send(ProducerRecord::new("good", format!("ok-{n}")))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    let meta = delivery.await.expect("produce while others misbehave");
    let options = FetchOptions {
        max_wait: std::time::Duration::ZERO,
        ..FetchOptions::default()
    };
    let r = client
        .fetch("good", 0, meta.offset, &options)
        .await
        .unwrap();
    assert_eq!(r.records[0].value, Bytes::from(format!("ok-{n}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &["--max-frame-bytes", "1048576"]);
    let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
    admin
        .create_topic("good", 1, TopicConfig::default())
        .await
        .unwrap();
    // A client that stays connected throughout.
    let steady = Client::connect(broker.addr()).await.unwrap();

    // 1. Garbage: an HTTP request. Its first four bytes read as a ~1.2 GB length.
    let mut s = TcpStream::connect(broker.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: rill\r\n\r\n")
        .await
        .unwrap();
    let r = response(&mut s)
        .await
        .expect("an error response before closing");
    assert_eq!(r.result.unwrap_err().code, ErrorCode::FrameTooLarge);
    assert!(closed(&mut s).await);
    healthy(broker.addr(), 1).await;

    // 2. Oversize frame with a valid header: the error echoes the correlation id.
    let mut s = TcpStream::connect(broker.addr()).await.unwrap();
    let mut big = Vec::new();
    big.extend_from_slice(&(8u32 << 20).to_be_bytes());
    big.extend_from_slice(&1u16.to_be_bytes());
    big.extend_from_slice(&0u16.to_be_bytes());
    big.extend_from_slice(&4242u32.to_be_bytes());
    s.write_all(&big).await.unwrap();
    let r = response(&mut s).await.expect("an error response");
    assert_eq!(r.correlation_id, 4242);
    assert_eq!(r.result.unwrap_err().code, ErrorCode::FrameTooLarge);
    assert!(closed(&mut s).await);

    // 3. A frame shorter than its own header.
    let mut s = TcpStream::connect(broker.addr()).await.unwrap();
    s.write_all(&[0, 0, 0, 3, 1, 2, 3]).await.unwrap();
    let r = response(&mut s).await.expect("an error response");
    assert_eq!(r.result.unwrap_err().code, ErrorCode::MalformedFrame);
    assert!(closed(&mut s).await);

    // 4. A truncated frame, then the client goes away: closed with a logged reason.
    let mut s = TcpStream::connect(broker.addr()).await.unwrap();
    let whole = request(6, 5, &ListTopicsRequest {}, Bytes::new());
    s.write_all(&whole[..whole.len() - 2]).await.unwrap();
    s.shutdown().await.unwrap();
    assert!(
        response(&mut s).await.is_none(),
        "no response to half a request"
    );
    healthy(broker.addr(), 2).await;

    // 5. Unknown api key: a typed error, and the same connection keeps working.
    let mut s = TcpStream::connect(broker.addr()).await.unwrap();
    s.write_all(&request(999, 7, &ListTopicsRequest {}, Bytes::new()))
        .await
        .unwrap();
    let r = response(&mut s).await.unwrap();
    assert_eq!(r.correlation_id, 7);
    assert_eq!(r.result.unwrap_err().code, ErrorCode::UnsupportedApiKey);
    s.write_all(&request(6, 8, &ListTopicsRequest {}, Bytes::new()))
        .await
        .unwrap();
    let r = response(&mut s).await.unwrap();
    assert_eq!(r.correlation_id, 8);
    assert!(r.result.is_ok(), "the connection survives a request error");

    // 6. A body that does not decode, and a corrupt record batch.
    s.write_all(&request(2, 9, &"not a fetch", Bytes::new()))
        .await
        .unwrap();
    assert_eq!(
        response(&mut s).await.unwrap().result.unwrap_err().code,
        ErrorCode::MalformedRequest
    );
    let produce = ProduceRequest {
        topic: TopicName::new("good").unwrap(),
        partition: 0,
    };
    s.write_all(&request(1, 10, &produce, Bytes::from_static(&[0u8; 80])))
        .await
        .unwrap();
    assert_eq!(
        response(&mut s).await.unwrap().result.unwrap_err().code,
        ErrorCode::CorruptBatch
    );

    // 7. Produce to an unknown topic and partition, through the real client.
    let producer = Producer::new(steady.clone(), ProducerConfig::default());
    let err = producer
        .send(ProducerRecord::new("missing", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
    assert!(!err.is_retriable());
    let err = producer
        .send(ProducerRecord::new("good", "x").partition(3))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no partition 3"), "{err}");
    let options = FetchOptions::default();
    let err = steady.fetch("good", 9, 0, &options).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownPartition));
    let err = steady
        .fetch("good", 0, 1_000_000, &options)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OffsetOutOfRange));

    healthy(broker.addr(), 3).await;
    let log = broker.log();
    for reason in ["framing error", "in the middle of a frame"] {
        assert!(log.contains(reason), "broker log lacks {reason:?}:\n{log}");
    }
}
