//! The Kafka listener against real Kafka clients: kcat (librdkafka), installed by `.ci/run`
//! from Debian's packages, and raw frames for what no well-behaved client sends.

use rill_e2e::{Broker, rill};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs kcat against `broker`'s Kafka listener with `stdin`; fails the test if kcat is missing.
fn kcat(broker: &Broker, args: &[&str], stdin: &[u8]) -> Output {
    let addr = broker.kafka_addr().expect("the Kafka listener is on");
    let mut child = Command::new("kcat")
        .arg("-b")
        .arg(addr)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is not installed (.ci/run installs Debian's kcat package)");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn create_topic(broker: &Broker, name: &str, partitions: u32) {
    let out = rill(
        Some(broker.addr()),
        &[
            "topic",
            "create",
            name,
            "--partitions",
            &partitions.to_string(),
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Story: a team points kcat at Rill's Kafka port. It lists the broker and topics, produces
/// 100,000 keyed lines, and reads back exactly those, in order within each partition, each key
/// always in one partition.
#[test]
fn kcat_lists_produces_and_reads_back_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    create_topic(&broker, "events", 4);

    let listed = kcat(&broker, &["-L"], b"");
    let listing = text(&listed);
    assert!(listed.status.success(), "{listing}");
    assert!(
        listing.contains(&format!("broker 0 at {}", broker.kafka_addr().unwrap())),
        "{listing}"
    );
    assert!(
        listing.contains("topic \"events\" with 4 partitions"),
        "{listing}"
    );

    let lines: Vec<String> = (0..100_000)
        .map(|i| format!("key{}:value-{i}", i % 101))
        .collect();
    let produced = kcat(
        &broker,
        &["-P", "-t", "events", "-K:"],
        lines.join("\n").as_bytes(),
    );
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );

    let read = kcat(
        &broker,
        &[
            "-C",
            "-t",
            "events",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%p %o %k:%s\n",
        ],
        b"",
    );
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let mut got = Vec::new();
    let mut last_offset: BTreeMap<u32, i64> = BTreeMap::new();
    let mut last_value: BTreeMap<u32, u64> = BTreeMap::new();
    let mut key_partition: BTreeMap<String, u32> = BTreeMap::new();
    for line in text(&read).lines() {
        let mut parts = line.splitn(3, ' ');
        let (p, o, kv) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let (p, o): (u32, i64) = (p.parse().unwrap(), o.parse().unwrap());
        let (key, value) = kv.split_once(':').unwrap();
        let n: u64 = value.trim_start_matches("value-").parse().unwrap();
        assert_eq!(
            *last_offset.get(&p).unwrap_or(&-1) + 1,
            o,
            "offsets of partition {p} run on"
        );
        assert!(
            last_value.get(&p).is_none_or(|&v| v < n),
            "partition {p}: value-{n} after value-{}",
            last_value[&p]
        );
        assert_eq!(
            *key_partition.entry(key.to_string()).or_insert(p),
            p,
            "{key} moved"
        );
        last_offset.insert(p, o);
        last_value.insert(p, n);
        got.push(kv.to_string());
    }
    assert_eq!(got.len(), lines.len(), "every record read once");
    let mut want = lines.clone();
    want.sort();
    got.sort();
    assert!(got == want, "the records read are the records produced");
    assert_eq!(last_offset.len(), 4, "all partitions used");
}

/// Story: one service writes with kcat and another reads with `rill`, and the other way
/// round: keys, values, headers and timestamps survive both ways.
#[test]
fn records_cross_between_kafka_and_rill_clients() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    create_topic(&broker, "cross", 1);

    let produced = kcat(
        &broker,
        &[
            "-P",
            "-t",
            "cross",
            "-K:",
            "-H",
            "trace=abc",
            "-H",
            "origin=kcat",
        ],
        b"k1:first\nk2:second\n",
    );
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let kafka_view = kcat(
        &broker,
        &[
            "-C",
            "-t",
            "cross",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o %T %k %s\n",
        ],
        b"",
    );
    let timestamps: Vec<i64> = text(&kafka_view)
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(timestamps.len(), 2, "{}", text(&kafka_view));

    let rill_view = rill(
        Some(broker.addr()),
        &[
            "consume",
            "cross",
            "--from-beginning",
            "--count",
            "2",
            "--format",
            "json",
        ],
        "",
    );
    assert!(
        rill_view.status.success(),
        "{}",
        String::from_utf8_lossy(&rill_view.stderr)
    );
    let records: Vec<serde_json::Value> = text(&rill_view)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    for (i, (key, value)) in [("k1", "first"), ("k2", "second")].into_iter().enumerate() {
        let r = &records[i];
        assert_eq!(r["offset"], i as u64);
        assert_eq!(r["key"], key);
        assert_eq!(r["value"], value);
        assert_eq!(
            r["timestamp"], timestamps[i],
            "the producer's timestamp, as kcat reads it"
        );
        assert_eq!(r["headers"]["trace"], "abc", "{r}");
        assert_eq!(r["headers"]["origin"], "kcat", "{r}");
    }

    let out = rill(
        Some(broker.addr()),
        &["produce", "cross", "--key-separator", "="],
        "k3=from rill\nk4=again\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = kcat(
        &broker,
        &["-C", "-t", "cross", "-o", "2", "-e", "-f", "%o %k %s\n"],
        b"",
    );
    assert_eq!(text(&read), "2 k3 from rill\n3 k4 again\n");
}

/// Sends one frame and returns the answer's body after its correlation id, or `None` when the
/// broker closed the connection instead.
fn exchange(stream: &mut TcpStream, frame: &[u8]) -> Option<(i32, Vec<u8>)> {
    stream.write_all(frame).unwrap();
    let mut len = [0u8; 4];
    if stream.read_exact(&mut len).is_err() {
        return None;
    }
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    let cid = i32::from_be_bytes(body[..4].try_into().unwrap());
    Some((cid, body[4..].to_vec()))
}

fn request(api_key: i16, version: i16, cid: i32, rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&api_key.to_be_bytes());
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&cid.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    body.extend_from_slice(rest);
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn connect(broker: &Broker) -> TcpStream {
    let s = TcpStream::connect(broker.kafka_addr().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Story: a fuzzer, an ancient client and a broken one hit the Kafka port. Unknown APIs and
/// versions are answered UNSUPPORTED_VERSION (ApiVersions with the ranges served, KIP-511);
/// oversized, undersized and undecodable frames close the connection with a logged reason;
/// the broker goes on serving.
#[test]
fn bad_input_on_the_kafka_port_is_refused_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &["--max-frame-bytes", "65536"]);

    let mut s = connect(&broker);
    // An API key Kafka does not have, then Metadata at a version past the served ones.
    for (key, version, cid) in [(999i16, 0i16, 11i32), (3, 99, 12)] {
        let (got, body) = exchange(&mut s, &request(key, version, cid, &[])).expect("answered");
        assert_eq!(got, cid);
        assert_eq!(body, 35i16.to_be_bytes(), "UNSUPPORTED_VERSION");
    }
    // ApiVersions at a version from the future: a v0 answer with the error and our ranges.
    let (got, body) = exchange(&mut s, &request(18, 77, 13, &[])).expect("answered");
    assert_eq!(got, 13);
    assert_eq!(&body[..2], &35i16.to_be_bytes());
    let count = i32::from_be_bytes(body[2..6].try_into().unwrap());
    let ranges: Vec<(i16, i16, i16)> = body[6..]
        .chunks(6)
        .take(count as usize)
        .map(|c| {
            let n = |i: usize| i16::from_be_bytes([c[i], c[i + 1]]);
            (n(0), n(2), n(4))
        })
        .collect();
    assert!(ranges.contains(&(18, 0, 3)), "{ranges:?}");
    assert!(
        ranges.contains(&(0, 0, 9)),
        "Produce advertised from 0: {ranges:?}"
    );
    // Produce v2 is advertised (librdkafka before 2.8 wants it) but refused when sent.
    let (got, body) = exchange(&mut s, &request(0, 2, 14, &[0; 10])).expect("answered");
    assert_eq!((got, body), (14, 35i16.to_be_bytes().to_vec()));

    // A CreateTopics claiming two billion topics in four bytes: refused before anything is
    // sized by the count (the published decoder would abort the process), and closed.
    let mut huge = connect(&broker);
    assert!(exchange(&mut huge, &request(19, 2, 16, &[0x7f, 0xff, 0xff, 0xff])).is_none());
    // A Metadata body that does not decode: closed.
    assert!(exchange(&mut s, &request(3, 9, 15, &[0xff, 0xff, 0xff])).is_none());
    // Over max_frame_bytes: closed before the body is read.
    let mut big = connect(&broker);
    assert!(exchange(&mut big, &(1i32 << 20).to_be_bytes()).is_none());
    // Shorter than a request header: closed.
    let mut short = connect(&broker);
    assert!(exchange(&mut short, &[0, 0, 0, 3, 0, 18, 0]).is_none());

    let log = broker.log();
    for reason in [
        "does not decode",
        "over the limit",
        "shorter than a request header",
        "Array length 2147483647 is more than the 0 bytes left",
    ] {
        assert!(log.contains(reason), "{reason:?} not logged:\n{log}");
    }
    let listed = kcat(&broker, &["-L"], b"");
    assert!(listed.status.success(), "still serving: {}", text(&listed));
}

/// Story: services compress their batches. kcat's gzip, snappy, lz4 and zstd batches are
/// checked by decompressing, stored as sent, and read back identically by kcat and by `rill`;
/// `rill produce --compression` writes batches that kcat reads.
#[test]
fn compressed_batches_cross_between_kafka_and_rill_clients() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    create_topic(&broker, "packed", 1);
    let codecs = ["gzip", "snappy", "lz4", "zstd"];
    let mut want = Vec::new();
    for codec in codecs {
        let lines: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    "{codec}-{}:{codec} value {i} of a compressible kind",
                    i % 10
                )
            })
            .collect();
        let out = kcat(
            &broker,
            &[
                "-P",
                "-t",
                "packed",
                "-K:",
                "-X",
                &format!("compression.codec={codec}"),
            ],
            lines.join("\n").as_bytes(),
        );
        assert!(
            out.status.success(),
            "{codec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        want.extend(lines);
    }
    let read = kcat(
        &broker,
        &[
            "-C",
            "-t",
            "packed",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%k:%s\n",
        ],
        b"",
    );
    let got: Vec<String> = text(&read).lines().map(str::to_string).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert!(got == want, "kcat reads what kcat wrote, in order");

    let count = want.len().to_string();
    let rill_view = rill(
        Some(broker.addr()),
        &[
            "consume",
            "packed",
            "--from-beginning",
            "--count",
            &count,
            "--format",
            "key-value",
        ],
        "",
    );
    assert!(
        rill_view.status.success(),
        "{}",
        String::from_utf8_lossy(&rill_view.stderr)
    );
    let got: Vec<String> = text(&rill_view)
        .lines()
        .map(|l| l.replacen('=', ":", 1))
        .collect();
    assert!(got == want, "rill reads kcat's compressed batches");

    let mut next = want.len();
    for codec in codecs {
        let lines: Vec<String> = (0..500)
            .map(|i| format!("r{i}={codec} from rill {i}"))
            .collect();
        let out = rill(
            Some(broker.addr()),
            &[
                "produce",
                "packed",
                "--key-separator",
                "=",
                "--compression",
                codec,
            ],
            &lines.join("\n"),
        );
        assert!(
            out.status.success(),
            "{codec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = kcat(
            &broker,
            &[
                "-C",
                "-t",
                "packed",
                "-o",
                &next.to_string(),
                "-c",
                "500",
                "-e",
                "-f",
                "%k=%s\n",
            ],
            b"",
        );
        let got: Vec<String> = text(&read).lines().map(str::to_string).collect();
        assert!(got == lines, "{codec}: kcat reads rill's batches: {got:?}");
        assert_eq!(
            stored_codec(&broker, "packed", next as u64),
            rill_protocol::batch::compression::Compression::from_name(codec)
                .unwrap()
                .id(),
            "rill produce --compression {codec} sent compressed batches"
        );
        next += 500;
    }
}

/// The codec of the batch holding `offset` of partition 0, as the broker stored it.
fn stored_codec(broker: &Broker, topic: &str, offset: u64) -> u8 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = rill_client::Client::connect(broker.addr()).await.unwrap();
        let options = rill_client::FetchOptions::default();
        let fetched = client
            .fetch_batches(topic, 0, offset, &options)
            .await
            .unwrap();
        fetched.batches()[0].header().compression()
    })
}

/// Story: two `kcat -G` members of one group share a 4-partition topic: the group rebalances to
/// two partitions each (client-side assignment, librdkafka's assignor), every record is read,
/// and `rill group describe` shows the Kafka group, its members' partitions and its commits.
#[test]
fn two_kcat_group_members_share_a_topic() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    create_topic(&broker, "shared", 4);
    let lines: Vec<String> = (0..2000).map(|i| format!("k{i}:v{i}")).collect();
    let produced = kcat(
        &broker,
        &["-P", "-t", "shared", "-K:"],
        lines.join("\n").as_bytes(),
    );
    assert!(produced.status.success());

    // Each member's stdout lines and its "assigned" reports, as they come.
    let (tx, rx) = std::sync::mpsc::channel::<(usize, bool, String)>();
    let mut members = Vec::new();
    for n in 0..2 {
        let mut child = Command::new("kcat")
            .args([
                "-b",
                broker.kafka_addr().unwrap(),
                "-G",
                "sharing",
                "shared",
            ])
            .args([
                "-u", // unbuffered: lines as they are read, not when a pipe buffer fills
                "-o",
                "beginning",
                "-f",
                "%p %s\n",
                "-X",
                "auto.commit.interval.ms=200",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kcat is not installed (.ci/run installs Debian's kcat package)");
        for (pipe, is_err) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                false,
            ),
            (
                Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
                true,
            ),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send((n, is_err, line));
                }
            });
        }
        members.push(child);
    }
    let mut read: BTreeSet<String> = BTreeSet::new();
    let mut last_assignment = [String::new(), String::new()];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let split = |a: &[String; 2]| a.iter().all(|s| s.matches("shared [").count() == 2);
    while read.len() < lines.len() || !split(&last_assignment) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok((n, is_err, line)) = rx.recv_timeout(left) else {
            panic!(
                "read {} of {}, assignments {last_assignment:?}\n{}",
                read.len(),
                lines.len(),
                broker.log()
            );
        };
        if is_err {
            if let Some((_, assigned)) = line.split_once("assigned:") {
                last_assignment[n] = assigned.to_string();
            }
        } else if let Some((_, kv)) = line.split_once(' ') {
            read.insert(kv.to_string());
        }
    }
    let values: BTreeSet<String> = lines
        .iter()
        .map(|l| l.split_once(':').unwrap().1.to_string())
        .collect();
    assert_eq!(read, values, "every record read (at least once)");

    let described = rill(
        Some(broker.addr()),
        &["group", "describe", "sharing", "--json"],
        "",
    );
    let d: serde_json::Value = serde_json::from_slice(&described.stdout).unwrap();
    let owned: Vec<usize> = d["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["assignment"].as_array().unwrap().len())
        .collect();
    assert_eq!(owned, vec![2, 2], "{d}");

    // And as Kafka's admin tools see it (confluent-kafka, installed by .ci/run from PyPI):
    // ListGroups and DescribeGroups.
    let script = r#"
import json, sys
from confluent_kafka.admin import AdminClient
a = AdminClient({"bootstrap.servers": sys.argv[1]})
listed = a.list_consumer_groups().result(timeout=30)
d = a.describe_consumer_groups(["sharing"])["sharing"].result(timeout=30)
print(json.dumps({
    "listed": [[g.group_id, str(g.state)] for g in listed.valid],
    "state": str(d.state),
    "assignor": d.partition_assignor,
    "members": sorted(len(m.assignment.topic_partitions) for m in d.members),
}))
"#;
    let out = Command::new("python3")
        .args(["-c", script, broker.kafka_addr().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "confluent-kafka admin (pip install confluent-kafka): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        seen["listed"],
        serde_json::json!([["sharing", "ConsumerGroupState.STABLE"]])
    );
    assert_eq!(seen["state"], "ConsumerGroupState.STABLE");
    assert_eq!(seen["members"], serde_json::json!([2, 2]), "{seen}");
    for mut m in members {
        let _ = m.kill();
        let _ = m.wait();
    }
}

/// Story: a service moves from a Kafka client to Rill's. The group its kcat members committed
/// resumes as a Rill consumer group where they stopped: only what came after is read.
#[test]
fn a_group_committed_by_kafka_clients_resumes_as_a_rill_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    create_topic(&broker, "handover", 2);
    let before: Vec<String> = (0..1000).map(|i| format!("k{i}:old{i}")).collect();
    assert!(
        kcat(
            &broker,
            &["-P", "-t", "handover", "-K:"],
            before.join("\n").as_bytes()
        )
        .status
        .success()
    );
    // A Kafka member reads everything and exits at the end, committing as it closes.
    let read = kcat(
        &broker,
        &[
            "-G",
            "movers",
            "handover",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%s\n",
        ],
        b"",
    );
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(text(&read).lines().count(), before.len());

    let after: Vec<String> = (0..500).map(|i| format!("k{i}=new{i}")).collect();
    let out = rill(
        Some(broker.addr()),
        &["produce", "handover", "--key-separator", "="],
        &after.join("\n"),
    );
    assert!(out.status.success());
    let resumed = rill(
        Some(broker.addr()),
        &[
            "consume",
            "handover",
            "--group",
            "movers",
            "--idle-exit",
            "2s",
        ],
        "",
    );
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let mut got: Vec<String> = text(&resumed).lines().map(str::to_string).collect();
    got.sort();
    let mut want: Vec<String> = (0..500).map(|i| format!("new{i}")).collect();
    want.sort();
    assert_eq!(
        got, want,
        "exactly the records after the Kafka group's commits"
    );
}
