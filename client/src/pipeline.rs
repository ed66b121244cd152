//! Fetching one partition with several fetches in flight: what `PartitionReader` and the group
//! `Consumer`'s fetchers both read through.
//!
//! A fetch's end (the offset after its last batch) is known only once it has arrived, so the
//! fetch after it cannot be sent earlier without a guess. The pipeline guesses: while the
//! partition holds more than the last fetch returned (its end is below the high watermark), it
//! sends the next fetches from where they would start if each spans as many offsets as the last
//! one did. That is exact when batches are alike, the usual case of a backlog, and then the
//! broker reads the next fetch while this one travels and is checked. A guess that turns out
//! wrong (the fetch before it ended elsewhere) is dropped with every fetch behind it, and reading
//! goes on from the true end, so records are handed out exactly once and in order whatever
//! the guesses were; after a miss the pipeline waits a growing number of fetches before it
//! guesses again, so irregular batches cost at most an occasional wasted fetch. At the end of
//! the partition (nothing beyond the last fetch) there is one fetch in flight, long-polling.

use crate::client::Client;
use crate::error::Error;
use crate::reader::{FetchOptions, Fetched, checked, end_of};
use bytes::Bytes;
use rill_protocol::TopicName;
use rill_protocol::messages::{FetchResponse, TopicPartition};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Most fetches of one partition in flight at once.
const MAX_DEPTH: usize = 4;

/// Longest wait, in fetches handed out, before guessing again after misses.
const MAX_COOLDOWN: u32 = 64;

/// How the fetch at the reading position (not a guess) takes its room in the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lead {
    /// Reserves `max_bytes` before it is sent: the budget bounds everything fetched.
    Reserve,
    /// Sent without room when there is none, so a member of thousands of partitions keeps a
    /// long poll open on each whatever its shared budget. What arrives takes room for its size
    /// if there is some; if not, it is the partition's one fetch beyond the budget, and the next
    /// fetch without room waits until the application has dropped it.
    Free,
}

#[derive(Debug)]
pub(crate) struct Pipeline {
    client: Client,
    topic: TopicName,
    partition: u32,
    options: FetchOptions,
    /// Room a fetch may need: its `max_bytes`, within the budget.
    want: u32,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    /// One permit: held by the partition's fetch without room, in flight or handed out.
    spare: Arc<Semaphore>,
    lead: Lead,
    /// Where the next fetch handed out starts.
    position: u64,
    /// In the order they are handed out; the first starts at `position`.
    in_flight: VecDeque<InFlight>,
    /// Offsets the last fetch spanned, when the partition held more than it returned.
    span: Option<u64>,
    /// Fetches to hand out before guessing again, and the misses in a row that set it.
    cooldown: u32,
    misses: u32,
}

#[derive(Debug)]
struct InFlight {
    start: u64,
    /// Its room in the budget, or else the spare permit.
    room: OwnedSemaphorePermit,
    reserved: bool,
    task: Task,
}

/// A fetch's task, stopped when dropped (a guess that missed).
#[derive(Debug)]
struct Task(JoinHandle<Result<(FetchResponse, Bytes), Error>>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Pipeline {
    pub(crate) fn new(
        client: Client,
        tp: TopicPartition,
        position: u64,
        options: FetchOptions,
        budget: Arc<Semaphore>,
        budget_bytes: usize,
        lead: Lead,
    ) -> Self {
        let want = (options.max_bytes as usize).clamp(1, budget_bytes.max(1)) as u32;
        Pipeline {
            client,
            topic: tp.topic,
            partition: tp.partition,
            options,
            want,
            budget,
            budget_bytes: budget_bytes.max(1),
            spare: Arc::new(Semaphore::new(1)),
            lead,
            position,
            in_flight: VecDeque::new(),
            span: None,
            cooldown: 0,
            misses: 0,
        }
    }

    /// Where the next fetch handed out starts.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Drops every fetch in flight and reads on from `position`.
    pub(crate) fn seek(&mut self, position: u64) {
        self.in_flight.clear();
        self.span = None;
        self.position = position;
    }

    /// The next fetch, from the reading position, checked (CRC and layout of every batch). With
    /// [`Lead::Reserve`] it holds its room in the budget until dropped. An error drops every
    /// fetch in flight; the next call starts again from the position.
    pub(crate) async fn next(&mut self) -> Result<Fetched, Error> {
        if self.in_flight.is_empty() {
            let (room, reserved) = match self.lead {
                Lead::Reserve => (
                    self.budget.clone().acquire_many_owned(self.want).await,
                    true,
                ),
                Lead::Free => (self.spare.clone().acquire_owned().await, false),
            };
            self.send(self.position, room.map_err(|_| Error::Closed)?, reserved);
        }
        let Some(InFlight {
            start,
            mut room,
            reserved,
            mut task,
        }) = self.in_flight.pop_front()
        else {
            return Err(Error::Closed);
        };
        let arrived = match (&mut task.0).await {
            Ok(r) => r,
            Err(e) => Err(Error::Protocol(format!("a fetch task failed: {e}"))),
        };
        let (response, payload) = match arrived {
            Ok(r) => r,
            Err(e) => {
                self.seek(self.position);
                return Err(e);
            }
        };
        if reserved {
            // What the fetch did not use goes back now.
            drop(room.split((self.want as usize).saturating_sub(payload.len())));
        } else if let Ok(r) = self
            .budget
            .clone()
            .try_acquire_many_owned(payload.len().clamp(1, self.budget_bytes) as u32)
        {
            // Room for what arrived: the spare permit goes back.
            room = r;
        }
        let end = end_of(start, &payload);
        self.follow(start, end, response.high_watermark);
        // Checked after the next fetches left, so checking overlaps the broker's work.
        match checked(start, &response, payload) {
            Ok(mut fetched) => {
                fetched.hold(room);
                Ok(fetched)
            }
            Err(e) => {
                self.seek(start);
                Err(e)
            }
        }
    }

    /// Takes up a fetch that arrived (from `start` to `end`): drops the guesses behind it if
    /// the first does not start at `end`, and sends the next fetches.
    fn follow(&mut self, start: u64, end: u64, high_watermark: u64) {
        self.position = end;
        if let Some(first) = self.in_flight.front() {
            if first.start == end {
                self.misses = 0;
            } else {
                self.in_flight.clear();
                self.misses = self.misses.saturating_add(1);
                self.cooldown = 1u32
                    .checked_shl(self.misses)
                    .unwrap_or(MAX_COOLDOWN)
                    .min(MAX_COOLDOWN);
            }
        }
        self.cooldown = self.cooldown.saturating_sub(1);
        self.span = (end > start && end < high_watermark).then(|| end - start);
        if self.in_flight.is_empty() {
            // The next fetch at the position, if there is room for it now; else `next` sends
            // it, once the caller asks again (and, with `Lead::Free`, took room for this one).
            let Ok(room) = self.budget.clone().try_acquire_many_owned(self.want) else {
                return;
            };
            self.send(end, room, true);
        }
        let Some(span) = self.span.filter(|_| self.cooldown == 0) else {
            return;
        };
        while self.in_flight.len() < MAX_DEPTH {
            let Some(last) = self.in_flight.back() else {
                return;
            };
            let guess = last.start.saturating_add(span);
            if guess >= high_watermark {
                return;
            }
            let Ok(room) = self.budget.clone().try_acquire_many_owned(self.want) else {
                return;
            };
            self.send(guess, room, true);
        }
    }

    fn send(&mut self, start: u64, room: OwnedSemaphorePermit, reserved: bool) {
        let (client, topic, options) = (
            self.client.clone(),
            self.topic.clone(),
            self.options.clone(),
        );
        let partition = self.partition;
        let task =
            tokio::spawn(async move { client.fetch_raw(&topic, partition, start, &options).await });
        self.in_flight.push_back(InFlight {
            start,
            room,
            reserved,
            task: Task(task),
        });
    }
}
