//! Reading a partition: single fetches and the [`PartitionReader`] cursor.

use crate::admin::topic_name;
use crate::client::Client;
use crate::error::Error;
use rill_protocol::TopicName;
use rill_protocol::batch::{Batches, Record, RecordIter};
use rill_protocol::messages::{FetchRequest, ListOffsetsRequest, OffsetSpec, ProduceRequest};
use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    /// The next record produced after the reader starts.
    Latest,
    Offset(u64),
    /// The first record at or after this time (ms since the epoch); the end if there is none.
    Timestamp(i64),
}

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Soft cap on bytes per fetch (one batch larger than this is still returned whole).
    pub max_bytes: u32,
    /// Wait until at least this many bytes are available...
    pub min_bytes: u32,
    /// ...or this long has passed.
    pub max_wait: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            max_bytes: 1 << 20,
            min_bytes: 1,
            max_wait: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FetchResult {
    /// Records at or after the requested offset, in order.
    pub records: Vec<Record>,
    /// Offset after the last record of the returned batches (where the next fetch starts).
    pub next_offset: u64,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

impl Client {
    /// One fetch from `offset`, long-polling per `options`. Checks every batch's CRC.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        options: &FetchOptions,
    ) -> Result<FetchResult, Error> {
        let name = topic_name(topic)?;
        let request = FetchRequest {
            topic: name.clone(),
            partition,
            offset,
            max_bytes: options.max_bytes,
            min_bytes: options.min_bytes,
            max_wait_ms: u32::try_from(options.max_wait.as_millis()).unwrap_or(u32::MAX),
        };
        let (response, payload) = self.call_partition(&name, partition, &request).await?;
        let mut records = Vec::new();
        let mut next_offset = offset;
        for batch in Batches::new(payload) {
            let iter = RecordIter::new(batch)
                .map_err(|e| Error::Protocol(format!("corrupt batch from broker: {e}")))?;
            next_offset = next_offset.max(iter.header().last_offset() + 1);
            // A replicated partition's control batches (the brokers' Raft bookkeeping) take
            // offsets but hold no records for applications, as in Kafka.
            if iter.header().is_control() {
                continue;
            }
            for record in iter {
                let record = record
                    .map_err(|e| Error::Protocol(format!("corrupt record from broker: {e}")))?;
                if record.offset >= offset {
                    records.push(record);
                }
            }
        }
        Ok(FetchResult {
            records,
            next_offset,
            high_watermark: response.high_watermark,
            log_start_offset: response.log_start_offset,
        })
    }

    /// Writes one pre-built record batch (see `rill_protocol::batch::BatchBuilder`) to the
    /// connection now, and returns a future of its base offset once acknowledged. Batches sent
    /// one after another keep their order; awaiting several futures at once pipelines them.
    /// This is the low-level path under [`crate::Producer`]; it does not retry.
    pub async fn send_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: bytes::Bytes,
    ) -> Result<impl Future<Output = Result<u64, Error>> + use<>, Error> {
        let request = ProduceRequest {
            topic: topic_name(topic)?,
            partition,
        };
        let leader = self.leader_for(&request.topic, partition).await;
        let response = leader.enqueue(&request, batch).await?;
        Ok(async move { response.await.map(|(r, _)| r.base_offset) })
    }

    /// Resolves an offset specification on the broker (`None`: no record at or after a timestamp).
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Option<u64>, Error> {
        let request = ListOffsetsRequest {
            topic: topic_name(topic)?,
            partition,
            spec,
        };
        let response = self.call_partition(&request.topic, partition, &request);
        Ok(response.await?.0.offset)
    }
}

/// Reads one partition in order from a starting point, following new records as they arrive.
#[derive(Debug)]
pub struct PartitionReader {
    client: Client,
    topic: TopicName,
    partition: u32,
    position: u64,
    options: FetchOptions,
    buffered: VecDeque<Record>,
}

impl PartitionReader {
    pub async fn new(
        client: Client,
        topic: &str,
        partition: u32,
        start: StartOffset,
    ) -> Result<Self, Error> {
        let latest = || client.list_offset(topic, partition, OffsetSpec::Latest);
        let position = match start {
            StartOffset::Offset(o) => o,
            StartOffset::Earliest => client
                .list_offset(topic, partition, OffsetSpec::Earliest)
                .await?
                .unwrap_or(0),
            StartOffset::Latest => latest().await?.unwrap_or(0),
            StartOffset::Timestamp(ts) => match client
                .list_offset(topic, partition, OffsetSpec::Timestamp(ts))
                .await?
            {
                Some(o) => o,
                None => latest().await?.unwrap_or(0),
            },
        };
        Ok(PartitionReader {
            client,
            topic: topic_name(topic)?,
            partition,
            position,
            options: FetchOptions::default(),
            buffered: VecDeque::new(),
        })
    }

    pub fn with_options(mut self, options: FetchOptions) -> Self {
        self.options = options;
        self
    }

    /// Offset of the next record this reader will return.
    pub fn position(&self) -> u64 {
        self.buffered.front().map_or(self.position, |r| r.offset)
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// One fetch: the records available now, or after up to `max_wait` (may be empty).
    pub async fn poll(&mut self) -> Result<Vec<Record>, Error> {
        if !self.buffered.is_empty() {
            return Ok(self.buffered.drain(..).collect());
        }
        let result = self
            .client
            .fetch(
                self.topic.as_str(),
                self.partition,
                self.position,
                &self.options,
            )
            .await?;
        self.position = result.next_offset;
        Ok(result.records)
    }

    /// The next record, waiting for one to be produced if necessary.
    pub async fn next(&mut self) -> Result<Record, Error> {
        loop {
            if let Some(r) = self.buffered.pop_front() {
                return Ok(r);
            }
            let records = self.poll().await?;
            self.buffered.extend(records);
        }
    }
}
