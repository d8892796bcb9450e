//! The projection engine: read models fed from the partitions' logs by a pool of worker
//! threads, one worker at a time per (projection, partition), in position order, with
//! durable checkpoints, a durable dead-letter queue, lag measured against an SLA, and
//! parallel rebuilds swapped in atomically. Appends never wait for it: workers read what is
//! durable, through the log seam, and are woken by the writers' head signal.
//!
//! The public types are here; the engine's API in `engine`, its shared state in `state`, the
//! worker loop in `worker`, checkpoints in `checkpoint`, rebuilds in `rebuild`, the
//! dead-letter queue in `dlq`, and the partition leases of projections shared between processes
//! (on a log they all open: the JetStream backend) in `shared`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::clock::system_time;
use crate::event::RecordedEvent;
use crate::format::dlq::Letter;

mod checkpoint;
mod dlq;
mod engine;
mod rebuild;
mod shared;
mod state;
#[cfg(feature = "serde")]
pub(crate) mod typed;
mod worker;

pub use engine::ProjectionEngine;

/// The error a projection handler returns.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Events of one partition handed to a projection, in position order (the positions of
/// events sent to the dead-letter queue are skipped).
#[derive(Debug)]
#[non_exhaustive]
pub struct Batch<'a> {
    /// The partition.
    pub partition: u32,
    /// The events, in position order.
    pub events: &'a [RecordedEvent],
    /// A dead letter handed back by [`ProjectionEngine::replay_dead_letters`]: its position
    /// is behind the projection's, so a projection keeping its own checkpoints must not store
    /// [`Batch::next_position`] for it.
    pub replay: bool,
}

impl Batch<'_> {
    /// The position after the batch's last event: what a projection that keeps its own
    /// checkpoints ([`Checkpoints::Projection`]) stores with the effects of this batch, in
    /// the same transaction.
    pub fn next_position(&self) -> u64 {
        self.events.last().map_or(0, |e| e.position + 1)
    }
}

/// A batch failed at one of its events: the ones before it count as handled.
#[derive(Debug)]
pub struct BatchError {
    /// Index in [`Batch::events`] of the event that failed.
    pub index: usize,
    /// Why.
    pub error: HandlerError,
}

/// A read model (or any consumer) fed by the engine.
///
/// The engine calls a projection from several worker threads, but never concurrently for the
/// same partition, and always in position order within a partition (so in version order
/// within a stream). Delivery is **at least once** with [`Checkpoints::Engine`]: after a
/// crash, the events of the last batch whose checkpoint was not yet durable are delivered
/// again; make handling idempotent, or keep your own checkpoints
/// ([`Checkpoints::Projection`]) in the same transaction as your effects for exactly-once
/// effects.
///
/// A handler that panics is treated as failing on the event; after a panic in a batch of
/// several events, the batch is handed over again one event at a time (so the events before
/// the panicking one are delivered twice).
///
/// Keep the state of a projection with engine-kept checkpoints durable (a database, a
/// file): the checkpoints say what was handled, and an in-memory state would be empty after
/// a restart. An in-memory read model should be rebuilt at start ([`ProjectionEngine::rebuild`],
/// or a fresh name) or keep its own checkpoints.
pub trait Projection: Send + Sync + 'static {
    /// Handles one event.
    fn handle(&self, event: &RecordedEvent) -> std::result::Result<(), HandlerError>;

    /// Handles a batch of one partition's events (by default, one by one with
    /// [`Projection::handle`]). Override it to apply a batch in one transaction.
    fn handle_batch(&self, batch: &Batch<'_>) -> std::result::Result<(), BatchError> {
        for (index, e) in batch.events.iter().enumerate() {
            self.handle(e).map_err(|error| BatchError { index, error })?;
        }
        Ok(())
    }

    /// Clears the projection's state, before a [`ProjectionEngine::rebuild`] replays every
    /// event into it (by default, nothing to clear).
    fn reset(&self) -> std::result::Result<(), HandlerError> {
        Ok(())
    }

    /// With [`Checkpoints::Projection`]: the next position to handle in `partition`, as
    /// stored with the projection's own state (0 if it has none). Not called otherwise.
    fn checkpoint(&self, partition: u32) -> u64 {
        let _ = partition;
        0
    }
}

/// Who keeps a projection's checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpoints {
    /// The engine, in `projections/<name>/checkpoints`, written by a background checkpointer
    /// right after batches are handled (at-least-once: after a crash, the events handled
    /// since the last durable checkpoint, a round's batches at most, are delivered again).
    #[default]
    Engine,
    /// The projection, with its effects, in one transaction of its own (exactly-once
    /// effects): it stores [`Batch::next_position`] and returns it from
    /// [`Projection::checkpoint`].
    Projection,
}

/// What happens to an event the projection keeps failing on (after the retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// It goes to the projection's durable dead-letter queue and the projection goes on.
    #[default]
    DeadLetter,
    /// As `DeadLetter`, and its stream is parked: the stream's later events go to the
    /// dead-letter queue too, in order, unhandled, until its dead letters are replayed or
    /// discarded. Per-stream order is never broken.
    Park,
    /// The partition stops at the event (the others go on) until the projection is
    /// registered again.
    Stop,
}

/// How a projection is run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProjectionOptions {
    /// Most events per batch (default 4096).
    pub batch: usize,
    /// Attempts per event before the partition stops (default 3).
    pub attempts: u32,
    /// Wait before the first retry, doubled for each next one (default 10 ms).
    pub backoff: Duration,
    /// Lag (head time minus last handled time) above which the projection is unhealthy
    /// (default 5 s).
    pub sla: Duration,
    /// Who keeps checkpoints.
    pub checkpoints: Checkpoints,
    /// What happens to an event that keeps failing.
    pub on_failure: OnFailure,
    /// Most pending dead letters (default 100,000), which the queue holds in memory: a
    /// partition whose next letter would pass it stops until letters are replayed or discarded.
    pub max_dead_letters: usize,
    /// Run by every process for itself, even on a log that processes share (see
    /// [`ProjectionOptions::per_process`]).
    pub per_process: bool,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            batch: 4096,
            attempts: 3,
            backoff: Duration::from_millis(10),
            sla: Duration::from_secs(5),
            checkpoints: Checkpoints::Engine,
            on_failure: OnFailure::DeadLetter,
            max_dead_letters: 100_000,
            per_process: false,
        }
    }
}

impl ProjectionOptions {
    /// Sets the batch size.
    pub fn batch(mut self, events: usize) -> Self {
        self.batch = events.max(1);
        self
    }
    /// Sets the retry policy.
    pub fn retry(mut self, attempts: u32, backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self
    }
    /// Sets the lag SLA.
    pub fn sla(mut self, sla: Duration) -> Self {
        self.sla = sla;
        self
    }
    /// Sets who keeps checkpoints.
    pub fn checkpoints(mut self, who: Checkpoints) -> Self {
        self.checkpoints = who;
        self
    }
    /// Sets what happens to an event that keeps failing.
    pub fn on_failure(mut self, what: OnFailure) -> Self {
        self.on_failure = what;
        self
    }
    /// Sets the most pending dead letters (at least 1).
    pub fn max_dead_letters(mut self, n: usize) -> Self {
        self.max_dead_letters = n.max(1);
        self
    }

    /// Has this process run the projection on its own, over every partition, with its
    /// checkpoints and dead letters in the store's local directory, even where processes
    /// share the log.
    ///
    /// On a store of the JetStream backend ([`Store::connect`](crate::Store::connect)) a
    /// projection is otherwise **shared**: every process that registers it under the same
    /// name takes a fair share of its partitions, by leases on the cluster, and when a
    /// process dies the others take its partitions once its leases expire
    /// ([`JetStreamOptions::lease`](crate::JetStreamOptions::lease)). Checkpoints and dead
    /// letters then live on the cluster too (docs/jetstream.md, "Projections across
    /// processes"). Make a projection per-process when each process needs every event: an
    /// in-memory read model or cache in each process. On an embedded store, where one process
    /// opens the log, the two are the same.
    pub fn per_process(mut self) -> Self {
        self.per_process = true;
        self
    }
}

/// Where a projection stands in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionStatus {
    /// The partition.
    pub partition: u32,
    /// The next position to handle (everything before it is handled).
    pub next_position: u64,
    /// The position the durable checkpoint holds (where a restart resumes).
    pub checkpointed: u64,
    /// The partition's head (one past its last durable position).
    pub head: u64,
    /// Events appended but not handled yet.
    pub lag_events: u64,
    /// How far behind in time: the head's timestamp minus the last handled event's (zero
    /// when caught up).
    pub lag: Duration,
    /// Timestamp of the last handled event (`None` before the first).
    pub last_handled: Option<SystemTime>,
    /// Why the partition stopped, if it did (a handler that kept failing).
    pub error: Option<String>,
    /// For a projection shared between processes: the process running the partition, as
    /// its checkpoint names it (`None` for a per-process projection, or before any has run
    /// it).
    pub owner: Option<String>,
    /// Whether this process runs the partition (always, unless the projection is shared).
    pub here: bool,
}

/// Where a projection stands: per partition, and summed up against its SLA.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// The projection.
    pub name: String,
    /// Per partition.
    pub partitions: Vec<PartitionStatus>,
    /// Events handled since registration.
    pub handled: u64,
    /// The largest lag in events.
    pub max_lag_events: u64,
    /// The largest lag in time.
    pub max_lag: Duration,
    /// Events waiting in the dead-letter queue.
    pub dead_letters: u64,
    /// How long the rebuild that produced the live instance took (`None`: not rebuilt).
    pub last_rebuild: Option<Duration>,
    /// Within its SLA, and no partition stopped.
    pub healthy: bool,
}

impl ProjectionStatus {
    /// Whether every partition has handled everything up to its head as of this status.
    pub fn caught_up(&self) -> bool {
        self.partitions.iter().all(|p| p.lag_events == 0)
    }
}

/// An event a projection could not handle, waiting in its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its id in the queue (for [`ProjectionEngine::discard_dead_letters`]).
    pub id: u64,
    /// Where the event is.
    pub partition: u32,
    /// Its position.
    pub position: u64,
    /// Its stream.
    pub stream: String,
    /// Its version.
    pub version: u64,
    /// How many times the handler failed on it (0: its stream was parked).
    pub attempts: u32,
    /// The handler's last error (or why it was not handled).
    pub error: String,
    /// When it was added.
    pub time: SystemTime,
}

impl From<Letter> for DeadLetter {
    fn from(l: Letter) -> Self {
        DeadLetter {
            id: l.id,
            partition: l.partition,
            position: l.position,
            stream: l.stream,
            version: l.version,
            attempts: l.attempts,
            error: l.error,
            time: system_time(l.time),
        }
    }
}

/// What [`ProjectionEngine::replay_dead_letters`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Dead letters handled and removed from the queue.
    pub replayed: usize,
    /// Those that failed again: id and error (they stay in the queue).
    pub failed: Vec<(u64, String)>,
}

/// What [`ProjectionEngine::rebuild`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RebuildReport {
    /// From the start of the rebuild to the swap.
    pub duration: Duration,
    /// Events the rebuilt instance handled before the swap.
    pub events: u64,
}

/// A projection's live instance and how stale it is (see [`ProjectionEngine::view`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct View<P> {
    /// The instance serving reads.
    pub projection: Arc<P>,
    /// Where it stands: per partition, the last handled position and time, the lag, errors.
    pub status: ProjectionStatus,
}
