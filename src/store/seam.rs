//! The log seam: the one trait through which the features above the store (aggregate loading
//! and snapshots, the projection engine, the command bus, and subscriptions to come) reach
//! the log. Both backends implement it (the embedded store in `logs.rs`, JetStream in
//! `jetstream/`), and a `Store` is the log of its backend. This file imports nothing of the
//! store's, so a backend can implement the trait without a loop through the facade.
//!
//! It is object-safe, and the features hold a `dyn Log`: a call through it costs one
//! indirect call, and the per-event callbacks were already `dyn`. The hot paths (appends,
//! partition scans) do the same work as the store's own methods.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::event::{AppendResult, EventData, EventView, ExpectedVersion, RecordedEvent};
use crate::io::Io;
pub(crate) use crate::log::stream_meta::Visible;
pub(crate) use crate::log::view::Select;
use crate::report::Report;
use crate::snapshot::{Counters, Pending, Stored};
use crate::sync::HeadSignal;

/// Where a partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Heads {
    /// One past its last visible position.
    pub head: u64,
    /// Timestamp of the event before `head` (0 if none).
    pub time: u64,
    /// One past its last position known to be on disk (behind `head` between the syncs of
    /// `Durability::Buffered`).
    pub durable: u64,
}

/// Where a partition a grow added came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// Its first position that is not a copy of a moved stream's history.
    pub live_from: u64,
    /// The heads of the partitions before it at the cutover.
    pub cut: Vec<u64>,
}

/// What the features above the store need of a log.
pub(crate) trait Log: Send + Sync {
    /// How many partitions streams are routed to.
    fn partition_count(&self) -> u32;

    /// The partition `stream` is routed to.
    fn partition_of(&self, stream: &str) -> u32;

    /// Appends `events` to `stream` if its version satisfies `expected`; returns once they
    /// are durable.
    fn append(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<AppendResult>;

    /// Hands `f` the events of `stream` from version `from_version` on, in version order,
    /// until it breaks; `min_position` is a position the caller knows the event at
    /// `from_version` is not before (the log may skip what lies before it).
    fn visit_stream(
        &self,
        stream: &str,
        from_version: u64,
        min_position: u64,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<()>;

    /// Hands `f` the events of `partition` from position `from` on, in position order, until
    /// `max` are given or it breaks; returns how many were given.
    fn scan_partition(
        &self,
        partition: u32,
        from: u64,
        max: usize,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<usize>;

    /// Hands `f` events at positions `from..end` of `partition`, in position order, until
    /// `max` are given or it breaks: at least those of the batches `select` wants (the streams
    /// a rule keeps, or the streams with events of some types), reading only those batches
    /// where the log has an index or summary of them; `f` judges each event. Returns how many
    /// were given and, unless `f` broke, the position every event before which was judged.
    fn scan_streams(
        &self,
        partition: u32,
        from: u64,
        end: u64,
        max: usize,
        select: Select<'_>,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<(usize, u64)>;

    /// Up to `max` events of `partition` from position `from` on, copied out.
    fn read_partition(&self, partition: u32, from: u64, max: usize) -> Result<Vec<RecordedEvent>> {
        let mut out = Vec::new();
        self.scan_partition(partition, from, max, &mut |e| {
            out.push(e.to_recorded());
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Where `partition` stands.
    fn heads(&self, partition: u32) -> Result<Heads>;

    /// Bumped after every head change: followers wait on it instead of polling.
    fn head_signal(&self) -> &HeadSignal;

    /// Where `partition` came from, if a grow added it.
    fn origin(&self, partition: u32) -> Option<Origin>;

    /// Whether `stream` was deleted.
    fn is_deleted(&self, stream: &str) -> bool;

    /// What a read of `stream` shows now: nothing if it was deleted, else what its metadata
    /// (retention rules, soft delete) keeps.
    fn visibility(&self, stream: &str) -> Result<Visible>;

    /// [`Log::visibility`] for a reader of durable events only: `max_count` counts back from
    /// the stream's last durable version.
    fn durable_visibility(&self, stream: &str) -> Result<Visible>;

    /// Whether some stream is deleted or has metadata (if not, every event is visible).
    fn hides_any(&self) -> bool;

    /// The latest snapshot of `stream`; `Err` says why one the log holds cannot be used.
    fn latest_snapshot(&self, stream: &str) -> std::result::Result<Option<Stored>, String>;

    /// Queues a snapshot for writing; `wait`: wait for room rather than drop it. Returns
    /// whether it was queued.
    fn queue_snapshot(&self, snapshot: Pending, wait: bool) -> Result<bool>;

    /// Counters of snapshot work, which loads add to.
    fn snapshot_counters(&self) -> &Counters;

    /// The directory the features keep their own files in (projections' checkpoints and
    /// dead letters), with the I/O context to write them and the report of their repairs.
    fn dir(&self) -> &Path;
    fn io(&self) -> &Io;
    fn report(&self) -> &Report;

    /// Where processes sharing this log coordinate the projections they run together (the
    /// JetStream backend); `None` for a log only this process opens.
    fn shared(&self) -> Option<&dyn Shared> {
        None
    }
}

/// A partition lease this process holds for a projection, as [`Shared`] last wrote it.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    /// The lease entry's revision this process last wrote.
    pub lease: u64,
    /// The checkpoint entry's revision this process last wrote (its fencing token).
    pub checkpoint: u64,
    /// When the last renewal that succeeded was sent: the lease is this process's until at
    /// least `renewed + lease_ttl`.
    pub renewed: Instant,
}

/// A checkpoint as the shared store holds it, with the process that wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SharedCheckpoint {
    /// The next position to handle.
    pub position: u64,
    /// Timestamp of the last handled event (0 if none).
    pub time: u64,
    /// The process that wrote it (empty if none has).
    pub owner: String,
}

/// Projection coordination between processes that share one log: partition leases that expire
/// unless renewed, checkpoints written by compare-and-set (a write by a process that lost
/// the partition fails), a membership count for sharing partitions fairly, a per-(projection,
/// partition) consumer to read events through, and a shared dead-letter queue.
pub(crate) trait Shared: Send + Sync {
    /// This process's name among the ones sharing the log.
    fn owner(&self) -> &str;

    /// How long a lease lasts without renewal.
    fn lease_ttl(&self) -> Duration;

    /// Announces (again) that this process runs `projection`, and returns how many processes
    /// do, this one included.
    fn join(&self, projection: &str) -> Result<usize>;

    /// Withdraws this process from `projection` (best effort: the announcement expires too).
    fn leave(&self, projection: &str);

    /// Takes `partition`'s lease for `projection` if no process holds it, and claims its
    /// checkpoint (rewrites it as this owner, so that an earlier owner's late write fails).
    /// `Ok(None)`: another process holds it.
    fn acquire(&self, projection: &str, partition: u32) -> Result<Option<(Claim, SharedCheckpoint)>>;

    /// Renews a held lease; `Ok(false)`: it was lost (expired and taken, or removed).
    fn renew(&self, projection: &str, partition: u32, claim: &mut Claim) -> Result<bool>;

    /// Gives a held lease up (its checkpoint should be stored first).
    fn release(&self, projection: &str, partition: u32, claim: &Claim) -> Result<()>;

    /// Stores a checkpoint if `claim` is still the last writer of it; `Ok(false)`: another
    /// process has claimed the partition since.
    fn store_checkpoint(
        &self,
        projection: &str,
        partition: u32,
        claim: &mut Claim,
        position: u64,
        time: u64,
    ) -> Result<bool>;

    /// The checkpoint the shared store holds (`None` before the first).
    fn checkpoint(&self, projection: &str, partition: u32) -> Result<Option<SharedCheckpoint>>;

    /// Hands `f` up to `max` events of `partition` from position `from` on, through the
    /// projection's own consumer of the partition; returns how many were given.
    fn consume(
        &self,
        projection: &str,
        partition: u32,
        from: u64,
        max: usize,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<usize>;

    /// Acknowledges to the projection's consumer of `partition` every event before `next`.
    fn acknowledge(&self, projection: &str, partition: u32, next: u64);

    /// Adds a letter to `projection`'s shared dead-letter queue; returns its id.
    fn add_letter(&self, projection: &str, letter: &crate::format::dlq::Letter) -> Result<u64>;

    /// Adds the resolution of letter `id` to the queue.
    fn resolve_letter(&self, projection: &str, id: u64, outcome: crate::format::dlq::Outcome) -> Result<()>;

    /// The queue's records after id `after` (0: from the start), oldest first, each with its
    /// id (a letter's id is its own record's).
    fn letters_after(&self, projection: &str, after: u64) -> Result<Vec<(u64, crate::format::dlq::Record)>>;
}
