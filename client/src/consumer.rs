//! [`Consumer`]: one member of a consumer group, read as a `Stream` of records.
//!
//! A background driver task owns the membership: it joins the group, reads the committed offsets
//! of the partitions it is given (or resets per `auto_offset_reset`), starts one fetcher task per
//! partition, and commits on an interval or when asked. Heartbeats run in their own task, on
//! their own schedule, so neither a slow application nor a slow commit delays one. Group
//! coordination (join, heartbeat, commit, leave) uses its own connection, so it never queues
//! behind fetches (a member of thousands of partitions keeps thousands of long polls open). When a heartbeat says the group is rebalancing, the
//! driver stops the fetchers, commits the position of every record the application has moved
//! past, and rejoins; records fetched but not yet given out are dropped and will be read again
//! by whoever owns their partition next.
//!
//! The commit rule (at-least-once): a record counts as finished once the application asks for
//! the *next* one (polls the stream again), calls [`Consumer::commit`] or [`Consumer::close`].
//! Auto-commit and rebalances commit only finished records, so a crash while record N is being
//! processed delivers N again to the partition's next owner (Kafka's commit-on-next-poll).
//! A partition without a committed offset starts at the reset position (`auto_offset_reset`),
//! and that position is committed before any of its records is handed out, so a member that
//! dies early cannot make its successor reset again to a later `Latest` and skip what came in
//! between.
//!
//! [`Consumer::commit_async`] commits without waiting: it takes a ticket and wakes the driver,
//! which commits the positions of every record finished so far; tickets taken while a commit
//! is on its way are covered by the next one, so committing after every poll costs one
//! commit (and one fsync on the broker) per round trip, not per poll. [`CommitHandle`]s
//! resolve in the order their tickets were taken.
//!
//! "Finished" is tracked under the same lock the driver takes when it revokes, tagged with an
//! epoch that changes at every (re)assignment, so no record is handed out after its partition's
//! position was committed for a rebalance.

use crate::admin::topic_name;
use crate::client::Client;
use crate::error::Error;
use crate::pipeline::{Lead, Pipeline};
use crate::reader::{FetchOptions, Fetched, Unread};
use bytes::Bytes;
use futures::Stream;
use rill_protocol::ErrorCode;
use rill_protocol::batch::Header;
use rill_protocol::messages::{
    AssignmentStrategy, CommitOffsetsRequest, FetchOffsetsRequest, HeartbeatRequest,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, OffsetSpec, TopicPartition,
};
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Where to start in a partition the group has never committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    Earliest,
    /// Only records produced after the partition was assigned.
    #[default]
    Latest,
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub group: String,
    pub topics: Vec<String>,
    /// Commit the application's position this often; `None` commits only on `commit()`,
    /// rebalance and `close()`.
    pub auto_commit_interval: Option<Duration>,
    pub auto_offset_reset: OffsetReset,
    /// The broker removes the member after this long without a heartbeat.
    pub session_timeout: Duration,
    pub strategy: AssignmentStrategy,
    pub fetch: FetchOptions,
    /// Fetched chunks buffered ahead of the application.
    pub buffered_fetches: usize,
    /// Bytes fetched ahead of the application, over all its partitions: a fetch that arrives
    /// while the buffer is full waits until the application has read (or dropped) enough.
    /// Held at most: this, plus one fetch in flight per partition (`fetch.max_bytes`).
    pub fetch_buffer_bytes: usize,
}

impl ConsumerConfig {
    pub fn new(
        group: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        ConsumerConfig {
            group: group.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            auto_commit_interval: Some(Duration::from_secs(5)),
            auto_offset_reset: OffsetReset::Latest,
            session_timeout: Duration::from_secs(10),
            strategy: AssignmentStrategy::Sticky,
            fetch: FetchOptions::default(),
            buffered_fetches: 16,
            fetch_buffer_bytes: 16 << 20,
        }
    }
}

/// A record with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<Header>,
}

/// The partitions this member owns, and in which generation. Empty while rebalancing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    pub generation: u32,
    pub partitions: Vec<TopicPartition>,
}

struct Chunk {
    epoch: u64,
    slot: usize,
    topic: Arc<str>,
    partition: u32,
    records: Unread,
}

/// Records of one partition handed out together by [`Consumer::next_batch`], read in place.
#[derive(Debug)]
pub struct ConsumerBatch {
    pub topic: Arc<str>,
    pub partition: u32,
    pub records: Fetched,
}

enum Item {
    Records(Chunk),
    Error(Error),
}

#[derive(Default)]
struct State {
    epoch: u64,
    /// Assigned partitions and the offset after the last record the application finished, by
    /// slot: what auto-commit and rebalances commit.
    positions: Vec<(TopicPartition, u64)>,
    /// The record handed out last, as (epoch, slot, next offset): finished once the application
    /// polls again, commits or closes.
    in_hand: Option<(u64, usize, u64)>,
}

impl State {
    /// The application moved past the record it was handed last.
    fn finish_in_hand(&mut self) {
        if let Some((epoch, slot, next)) = self.in_hand.take()
            && epoch == self.epoch
            && let Some(p) = self.positions.get_mut(slot)
        {
            p.1 = next;
        }
    }
}

type Reply = oneshot::Sender<Result<(), Error>>;

/// Where asynchronous commits stand: tickets `1..=completed` are done; `failures` holds the
/// ticket ranges `(from, to]` of recent failed commits and why (errors are rare; the oldest
/// are forgotten past [`KEPT_FAILURES`]).
#[derive(Debug, Clone, Default)]
struct CommitStatus {
    completed: u64,
    failures: VecDeque<(u64, u64, Error)>,
}

const KEPT_FAILURES: usize = 64;

#[derive(Debug)]
struct AsyncCommits {
    /// Tickets handed out.
    issued: std::sync::atomic::AtomicU64,
    /// Set by a ticket, cleared by the driver when it starts a commit: only the first
    /// ticket after that wakes it.
    requested: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
    status: watch::Sender<CommitStatus>,
}

/// The outcome of one [`Consumer::commit_async`]: resolves once a commit covering it is done.
#[must_use = "dropping a CommitHandle is fine: the commit still happens"]
#[derive(Debug)]
pub struct CommitHandle {
    ticket: u64,
    commits: Arc<AsyncCommits>,
}

impl CommitHandle {
    pub async fn wait(self) -> Result<(), Error> {
        let ticket = self.ticket;
        let mut status = self.commits.status.subscribe();
        let status = status
            .wait_for(|s| s.completed >= ticket)
            .await
            .map_err(|_| Error::Closed)?;
        match status
            .failures
            .iter()
            .find(|(from, to, _)| *from < ticket && ticket <= *to)
        {
            Some((_, _, e)) => Err(e.clone()),
            None if status
                .failures
                .front()
                .is_some_and(|(from, _, _)| ticket <= *from)
                && status.failures.len() == KEPT_FAILURES =>
            {
                Err(Error::InvalidArgument(
                    "commit outcome forgotten: too many failed commits since".into(),
                ))
            }
            None => Ok(()),
        }
    }
}

enum Command {
    Commit(Reply),
    CommitOffsets(Vec<(TopicPartition, u64)>, Reply),
    Close(Reply),
}

/// A consumer-group member. Poll it as a `Stream`; call [`Consumer::close`] to leave cleanly.
/// Dropping it without closing stops it like a crash would: the group notices at the session
/// timeout.
pub struct Consumer {
    rx: mpsc::Receiver<Item>,
    current: Option<Chunk>,
    state: Arc<Mutex<State>>,
    commands: mpsc::Sender<Command>,
    assignment: watch::Receiver<Assignment>,
    commits: Arc<AsyncCommits>,
    driver: JoinHandle<()>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("assignment", &*self.assignment.borrow())
            .finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Consumer {
    /// Joins `config.group` in the background and starts reading once partitions are assigned.
    pub fn subscribe(client: Client, config: ConsumerConfig) -> Result<Consumer, Error> {
        if config.topics.is_empty() {
            return Err(Error::InvalidArgument(
                "subscribe to at least one topic".into(),
            ));
        }
        for t in &config.topics {
            topic_name(t)?;
        }
        let (tx, rx) = mpsc::channel(config.buffered_fetches.max(1));
        let (commands_tx, commands) = mpsc::channel(16);
        let (assignment_tx, assignment) = watch::channel(Assignment::default());
        let state = Arc::new(Mutex::new(State::default()));
        let commits = Arc::new(AsyncCommits {
            issued: std::sync::atomic::AtomicU64::new(0),
            requested: std::sync::atomic::AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            status: watch::channel(CommitStatus::default()).0,
        });
        let budget = Arc::new(Semaphore::new(config.fetch_buffer_bytes.max(1)));
        let driver = Driver {
            budget,
            commits: commits.clone(),
            coord: client.with_own_connection(),
            client,
            config,
            state: state.clone(),
            tx,
            commands,
            assignment: assignment_tx,
            member_id: None,
            generation: 0,
            fetchers: Vec::new(),
            committed: HashMap::new(),
        };
        let driver = tokio::spawn(driver.run());
        Ok(Consumer {
            rx,
            current: None,
            state,
            commands: commands_tx,
            assignment,
            commits,
            driver,
        })
    }

    /// The current assignment.
    pub fn assignment(&self) -> Assignment {
        self.assignment.borrow().clone()
    }

    /// A receiver that changes whenever the assignment does (revoked, then reassigned).
    pub fn watch_assignment(&self) -> watch::Receiver<Assignment> {
        self.assignment.clone()
    }

    async fn command(&self, make: impl FnOnce(Reply) -> Command) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Commits the position after every record this consumer has returned so far (including the
    /// last one: calling this says the application has finished with it).
    pub async fn commit(&self) -> Result<(), Error> {
        lock(&self.state).finish_in_hand();
        self.command(Command::Commit).await
    }

    /// Starts a commit of the position after every record returned so far and returns at
    /// once, without waiting for the broker: cheap enough to call after every poll. Commits
    /// started while one is on its way are folded into the next; the handles resolve in the
    /// order they were taken (dropping one is fine).
    pub fn commit_async(&self) -> CommitHandle {
        lock(&self.state).finish_in_hand();
        let ticket = self
            .commits
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        // Read before writing: while a commit is already requested (the common case when
        // committing after every poll) the flag's cache line is left alone.
        let requested = &self.commits.requested;
        if !requested.load(std::sync::atomic::Ordering::SeqCst)
            && !requested.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.commits.wake.notify_one();
        }
        CommitHandle {
            ticket,
            commits: self.commits.clone(),
        }
    }

    /// The next records, many at once: what is left of one partition's fetch, read in place
    /// (`batch.records.records()`). Asking for it finishes what was handed out before (as
    /// `next` does); the whole batch counts as handed out, so a commit after it covers it.
    /// `None` once the consumer has stopped.
    pub async fn next_batch(&mut self) -> Option<Result<ConsumerBatch, Error>> {
        lock(&self.state).finish_in_hand();
        loop {
            let chunk = match self.current.take() {
                Some(c) => c,
                None => match self.rx.recv().await? {
                    Item::Records(c) => c,
                    Item::Error(e) => return Some(Err(e)),
                },
            };
            let records = chunk.records.rest();
            if records.is_empty() {
                continue;
            }
            let mut st = lock(&self.state);
            if st.epoch != chunk.epoch {
                // Revoked since it was fetched: its new owner reads it again.
                continue;
            }
            st.in_hand = Some((chunk.epoch, chunk.slot, records.next_offset));
            return Some(Ok(ConsumerBatch {
                topic: chunk.topic,
                partition: chunk.partition,
                records,
            }));
        }
    }

    /// Commits explicit next-offsets for partitions this member owns.
    pub async fn commit_offsets(&self, offsets: Vec<(TopicPartition, u64)>) -> Result<(), Error> {
        self.command(|r| Command::CommitOffsets(offsets, r)).await
    }

    /// Commits what was returned, leaves the group (its partitions move at once), and stops.
    pub async fn close(self) -> Result<(), Error> {
        lock(&self.state).finish_in_hand();
        self.command(Command::Close).await
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Stream for Consumer {
    type Item = Result<ConsumerRecord, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Asking for the next record finishes the previous one: under the same lock that
        // hands out the next, or before waiting for one.
        loop {
            if let Some(chunk) = self.current.as_mut() {
                if let Some(record) = chunk.records.next_record() {
                    let (epoch, slot) = (chunk.epoch, chunk.slot);
                    let (topic, partition) = (chunk.topic.clone(), chunk.partition);
                    {
                        let mut st = lock(&self.state);
                        st.finish_in_hand();
                        if st.epoch != epoch {
                            // Revoked since it was fetched: its new owner reads it again.
                            drop(st);
                            self.current = None;
                            continue;
                        }
                        st.in_hand = Some((epoch, slot, record.offset + 1));
                    }
                    return Poll::Ready(Some(Ok(ConsumerRecord {
                        topic,
                        partition,
                        offset: record.offset,
                        timestamp: record.timestamp,
                        key: record.key,
                        value: record.value,
                        headers: record.headers,
                    })));
                }
                self.current = None;
            }
            let item = self.rx.poll_recv(cx);
            if !matches!(item, Poll::Ready(Some(Item::Records(_)))) {
                lock(&self.state).finish_in_hand();
            }
            match ready!(item) {
                Some(Item::Records(chunk)) => self.current = Some(chunk),
                Some(Item::Error(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }
}

enum Next {
    Rejoin,
    Close(Reply),
    Gone,
}

struct Driver {
    /// The fetch buffer's bytes (`fetch_buffer_bytes`), shared by the fetchers.
    budget: Arc<Semaphore>,
    commits: Arc<AsyncCommits>,
    /// Fetches and offset lookups.
    client: Client,
    /// Group coordination, on its own connection.
    coord: Client,
    config: ConsumerConfig,
    state: Arc<Mutex<State>>,
    tx: mpsc::Sender<Item>,
    commands: mpsc::Receiver<Command>,
    assignment: watch::Sender<Assignment>,
    member_id: Option<String>,
    generation: u32,
    fetchers: Vec<JoinHandle<()>>,
    /// Last committed position per partition, to skip commits that change nothing.
    committed: HashMap<TopicPartition, u64>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        for f in &self.fetchers {
            f.abort();
        }
    }
}

/// Answers that mean this member must join again.
const REJOIN: [ErrorCode; 3] = [
    ErrorCode::RebalanceInProgress,
    ErrorCode::StaleGeneration,
    ErrorCode::UnknownMember,
];

/// Aborts a task when dropped, so a helper task never outlives the state that started it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps a membership alive: beats every `every`, independently of the application, commits and
/// fetches, until the broker says the member must rejoin.
struct Heartbeats {
    coord: Client,
    request: HeartbeatRequest,
    every: Duration,
    timeout: Duration,
}

impl Heartbeats {
    async fn run(self, rejoin: oneshot::Sender<()>) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let beat = async {
                self.coord
                    .enqueue_within(&self.request, Bytes::new(), self.timeout)
                    .await?
                    .await
            };
            match beat.await {
                Ok(_) => {}
                Err(e) if is(&e, &REJOIN) => {
                    let _ = rejoin.send(());
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "heartbeat failed; retrying at the next beat")
                }
            }
        }
    }
}

fn is(e: &Error, codes: &[ErrorCode]) -> bool {
    e.code().is_some_and(|c| codes.contains(&c))
}

impl Driver {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let request = match self.join_request() {
                Ok(r) => r,
                Err(e) => {
                    let _ = self.tx.send(Item::Error(e)).await;
                    return;
                }
            };
            let client = self.coord.clone();
            let joining = async move { client.call(&request).await.map(|(r, _)| r) };
            let joined = tokio::select! {
                joined = joining => joined,
                cmd = self.commands.recv() => {
                    match cmd {
                        // Nothing is owned while joining: nothing to commit.
                        Some(Command::Commit(r) | Command::CommitOffsets(_, r)) => {
                            let _ = r.send(Ok(()));
                            continue;
                        }
                        Some(Command::Close(r)) => {
                            let _ = r.send(self.leave().await);
                            return;
                        }
                        None => return,
                    }
                }
            };
            let joined = match joined {
                // A first join only gets an id from the broker (KIP-394): join again with it.
                Ok(j) if j.rejoin_with_id => {
                    self.member_id = Some(j.member_id);
                    continue;
                }
                Ok(j) => j,
                // The id is not (or no longer) known, e.g. after a broker restart: start over.
                Err(e) if is(&e, &[ErrorCode::UnknownMember]) && self.member_id.is_some() => {
                    tracing::info!(group = %self.config.group, "member id unknown to the broker; joining as a new member");
                    self.member_id = None;
                    continue;
                }
                Err(e) => {
                    let fatal = !e.is_retriable();
                    tracing::warn!(group = %self.config.group, error = %e, "join failed");
                    if self.tx.send(Item::Error(e)).await.is_err() || fatal {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            if let Err(e) = self.start(&joined).await {
                tracing::warn!(group = %self.config.group, error = %e, "could not start reading the assignment; rejoining");
                self.revoke().await;
                continue;
            }
            match self
                .steady(Duration::from_millis(u64::from(
                    joined.heartbeat_interval_ms.max(10),
                )))
                .await
            {
                Next::Rejoin => self.revoke().await,
                Next::Close(reply) => {
                    self.revoke().await;
                    let _ = reply.send(self.leave().await);
                    return;
                }
                Next::Gone => return,
            }
        }
    }

    fn join_request(&self) -> Result<JoinGroupRequest, Error> {
        let topics = self
            .config
            .topics
            .iter()
            .map(|t| topic_name(t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JoinGroupRequest {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            client: self.client.config().client_name.clone(),
            topics,
            session_timeout_ms: u32::try_from(self.config.session_timeout.as_millis())
                .unwrap_or(u32::MAX),
            strategy: self.config.strategy,
        })
    }

    async fn leave(&mut self) -> Result<(), Error> {
        let Some(member_id) = self.member_id.take() else {
            return Ok(());
        };
        let request = LeaveGroupRequest {
            group: self.config.group.clone(),
            member_id,
        };
        match self.coord.enqueue(&request, Bytes::new()).await?.await {
            Ok(_) => Ok(()),
            // Already gone (timed out, or the broker restarted): nothing to leave.
            Err(e) if is(&e, &[ErrorCode::UnknownMember]) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Takes up a new assignment: find each partition's starting offset, start its fetcher.
    async fn start(&mut self, joined: &JoinGroupResponse) -> Result<(), Error> {
        self.member_id = Some(joined.member_id.clone());
        self.generation = joined.generation;
        let request = FetchOffsetsRequest {
            group: self.config.group.clone(),
            partitions: joined.assignment.clone(),
        };
        let committed: HashMap<TopicPartition, Option<u64>> = self
            .coord
            .call(&request)
            .await?
            .0
            .offsets
            .into_iter()
            .collect();
        let mut positions = Vec::with_capacity(joined.assignment.len());
        let mut resets = Vec::new();
        for tp in &joined.assignment {
            let pos = match committed.get(tp).copied().flatten() {
                Some(o) => o,
                None => {
                    let o = reset_position(&self.client, tp, self.config.auto_offset_reset).await?;
                    resets.push((tp.clone(), o));
                    o
                }
            };
            positions.push((tp.clone(), pos));
        }
        self.committed = positions
            .iter()
            .filter(|(tp, _)| committed.get(tp).copied().flatten().is_some())
            .cloned()
            .collect();
        // A reset position is committed before anything is read from it: otherwise a member that
        // dies before its first commit lets the next owner reset again, to a later `Latest`,
        // and what was produced in between would never be delivered.
        self.commit(resets).await?;
        let epoch = {
            let mut st = lock(&self.state);
            st.epoch += 1;
            st.positions = positions.clone();
            st.epoch
        };
        for (slot, (tp, pos)) in positions.into_iter().enumerate() {
            let pipeline = Pipeline::new(
                self.client.clone(),
                tp.clone(),
                pos,
                self.config.fetch.clone(),
                self.budget.clone(),
                self.config.fetch_buffer_bytes.max(1),
                Lead::Free,
            );
            let fetcher = Fetcher {
                client: self.client.clone(),
                topic: tp.topic.as_str().into(),
                tp,
                pipeline,
                epoch,
                slot,
                tx: self.tx.clone(),
                reset: self.config.auto_offset_reset,
            };
            self.fetchers.push(tokio::spawn(fetcher.run()));
        }
        tracing::info!(group = %self.config.group, generation = self.generation, partitions = joined.assignment.len(), "assigned");
        self.assignment.send_replace(Assignment {
            generation: self.generation,
            partitions: joined.assignment.clone(),
        });
        Ok(())
    }

    async fn steady(&mut self, heartbeat_every: Duration) -> Next {
        let Some(member_id) = self.member_id.clone() else {
            return Next::Rejoin;
        };
        let (rejoin_tx, mut rejoin) = oneshot::channel();
        let beats = Heartbeats {
            coord: self.coord.clone(),
            request: HeartbeatRequest {
                group: self.config.group.clone(),
                member_id,
                generation: self.generation,
            },
            every: heartbeat_every,
            // Well inside the session: a beat lost on a dead connection is retried on a new one
            // before the broker gives up on the member.
            timeout: (self.config.session_timeout / 2).max(Duration::from_millis(50)),
        };
        let _beating = AbortOnDrop(tokio::spawn(beats.run(rejoin_tx)));
        let auto = self.config.auto_commit_interval;
        let mut commit_timer = tokio::time::interval(auto.unwrap_or(Duration::from_secs(3600)));
        commit_timer.tick().await;
        loop {
            tokio::select! {
                _ = &mut rejoin => return Next::Rejoin,
                _ = commit_timer.tick(), if auto.is_some() => {
                    if let Err(e) = self.commit_positions().await {
                        if is(&e, &REJOIN) {
                            return Next::Rejoin;
                        }
                        tracing::debug!(error = %e, "auto-commit failed");
                    }
                }
                () = self.commits.wake.notified() => {
                    if let Err(e) = self.commit_tickets().await
                        && is(&e, &REJOIN)
                    {
                        return Next::Rejoin;
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Commit(reply)) => { let _ = reply.send(self.commit_positions().await); }
                    Some(Command::CommitOffsets(offsets, reply)) => { let _ = reply.send(self.commit(offsets).await); }
                    Some(Command::Close(reply)) => return Next::Close(reply),
                    None => return Next::Gone,
                },
            }
        }
    }

    async fn commit(&mut self, offsets: Vec<(TopicPartition, u64)>) -> Result<(), Error> {
        if offsets.is_empty() {
            return Ok(());
        }
        let request = CommitOffsetsRequest {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            generation: Some(self.generation),
            offsets: offsets.clone(),
        };
        // Safe to repeat: a commit that moved to a new coordinator (or met a lost connection)
        // is sent again there, within the client's `retry_timeout`.
        self.coord.call(&request).await?;
        self.committed.extend(offsets);
        Ok(())
    }

    /// Commits the positions for every asynchronous commit ticket taken so far, and reports
    /// the outcome for them.
    async fn commit_tickets(&mut self) -> Result<(), Error> {
        // Tickets taken from here on wake the driver again for the next commit.
        self.commits
            .requested
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let through = self
            .commits
            .issued
            .load(std::sync::atomic::Ordering::SeqCst);
        let from = self.commits.status.borrow().completed;
        if through <= from {
            return Ok(());
        }
        let result = self.commit_positions().await;
        self.settle_tickets(from, through, &result);
        result
    }

    /// Reports the outcome of the commit that covered tickets `(from, through]`.
    fn settle_tickets(&self, from: u64, through: u64, result: &Result<(), Error>) {
        if through <= from {
            return;
        }
        self.commits.status.send_modify(|s| {
            s.completed = s.completed.max(through);
            if let Err(e) = result {
                if s.failures.len() == KEPT_FAILURES {
                    s.failures.pop_front();
                }
                s.failures.push_back((from, through, e.clone()));
            }
        });
    }

    /// Commits each partition's position where it moved since the last commit.
    async fn commit_positions(&mut self) -> Result<(), Error> {
        let changed: Vec<(TopicPartition, u64)> = lock(&self.state)
            .positions
            .iter()
            .filter(|(tp, pos)| self.committed.get(tp) != Some(pos))
            .cloned()
            .collect();
        self.commit(changed).await
    }

    /// Stops reading, then commits what the application was given (under the old generation).
    async fn revoke(&mut self) {
        for f in self.fetchers.drain(..) {
            f.abort();
        }
        let changed: Vec<(TopicPartition, u64)> = {
            let mut st = lock(&self.state);
            st.epoch += 1;
            let positions = std::mem::take(&mut st.positions);
            positions
                .into_iter()
                .filter(|(tp, pos)| self.committed.get(tp) != Some(pos))
                .collect()
        };
        // Asynchronous commits taken so far are answered by this one.
        let through = self
            .commits
            .issued
            .load(std::sync::atomic::Ordering::SeqCst);
        let from = self.commits.status.borrow().completed;
        let result = self.commit(changed).await;
        if let Err(e) = &result {
            tracing::info!(group = %self.config.group, error = %e, "could not commit before rebalancing; those records may be read again");
        }
        self.settle_tickets(from, through, &result);
        self.assignment.send_replace(Assignment {
            generation: self.generation,
            partitions: Vec::new(),
        });
    }
}

async fn reset_position(
    client: &Client,
    tp: &TopicPartition,
    reset: OffsetReset,
) -> Result<u64, Error> {
    let spec = match reset {
        OffsetReset::Earliest => OffsetSpec::Earliest,
        OffsetReset::Latest => OffsetSpec::Latest,
    };
    Ok(client
        .list_offset(tp.topic.as_str(), tp.partition, spec)
        .await?
        .unwrap_or(0))
}

struct Fetcher {
    client: Client,
    topic: Arc<str>,
    tp: TopicPartition,
    /// The partition's fetches, several in flight while there is a backlog.
    pipeline: Pipeline,
    epoch: u64,
    slot: usize,
    tx: mpsc::Sender<Item>,
    reset: OffsetReset,
}

impl Fetcher {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.pipeline.next().await {
                Ok(r) => {
                    backoff = Duration::from_millis(50);
                    if r.is_empty() {
                        continue;
                    }
                    // The chunk holds its room in the fetch buffer (or the partition's one
                    // fetch beyond it) until the application has read it or dropped its batch.
                    let chunk = Chunk {
                        epoch: self.epoch,
                        slot: self.slot,
                        topic: self.topic.clone(),
                        partition: self.tp.partition,
                        records: Unread::new(r),
                    };
                    if self.tx.send(Item::Records(chunk)).await.is_err() {
                        return;
                    }
                }
                Err(e) if is(&e, &[ErrorCode::OffsetOutOfRange]) => {
                    match reset_position(&self.client, &self.tp, self.reset).await {
                        Ok(p) => {
                            tracing::warn!(partition = %self.tp, from = self.pipeline.position(), to = p, "offset out of range; reset");
                            self.pipeline.seek(p);
                        }
                        Err(e) => tracing::debug!(error = %e, "reset failed"),
                    }
                }
                // The topic was deleted (or shrank under us): the broker rebalances the group
                // when it notices, and this fetcher is stopped then. Not the application's
                // problem, so wait quietly rather than failing the stream.
                Err(e) if is(&e, &[ErrorCode::UnknownTopic, ErrorCode::UnknownPartition]) => {
                    tracing::debug!(partition = %self.tp, error = %e, "partition gone; waiting for the rebalance");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) if e.is_retriable() => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    let _ = self.tx.send(Item::Error(e)).await;
                    return;
                }
            }
        }
    }
}
