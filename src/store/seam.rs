//! The log seam: the one trait through which the features above the store (aggregate loading
//! and snapshots, the projection engine, the command bus, and subscriptions to come) reach
//! the log. The embedded store is its one implementation today; a second backend (NATS
//! JetStream) implements the same trait to serve the same API.
//!
//! It is object-safe, and the features hold a `dyn Log`: a call through it costs one
//! indirect call, and the per-event callbacks were already `dyn`. The hot paths (appends,
//! partition scans) do the same work as the store's own methods.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::error::Result;
use crate::event::{AppendResult, EventData, EventView, ExpectedVersion, RecordedEvent};
use crate::io::Io;
use crate::log::events::each_event;
pub(crate) use crate::log::stream_meta::Visible;
pub(crate) use crate::log::view::Select;
use crate::report::Report;
use crate::snapshot::{Counters, Job, Pending, Stored};
use crate::sync::HeadSignal;

use super::{Backend, Local, Store};

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
}

impl Store {
    /// The backend, as the log the features above the store read and write.
    pub(crate) fn log(&self) -> &dyn Log {
        match &self.backend {
            Backend::Local(b) => b,
            #[cfg(feature = "jetstream")]
            Backend::JetStream(b) => &**b,
        }
    }
}

/// A store is the log of its backend.
impl Log for Store {
    fn partition_count(&self) -> u32 {
        self.log().partition_count()
    }

    fn partition_of(&self, stream: &str) -> u32 {
        self.log().partition_of(stream)
    }

    fn append(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<AppendResult> {
        self.log().append(stream, expected, events)
    }

    fn visit_stream(
        &self,
        stream: &str,
        from_version: u64,
        min_position: u64,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<()> {
        self.log().visit_stream(stream, from_version, min_position, f)
    }

    fn scan_partition(
        &self,
        partition: u32,
        from: u64,
        max: usize,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<usize> {
        self.log().scan_partition(partition, from, max, f)
    }

    fn scan_streams(
        &self,
        partition: u32,
        from: u64,
        end: u64,
        max: usize,
        select: Select<'_>,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<(usize, u64)> {
        self.log().scan_streams(partition, from, end, max, select, f)
    }

    fn read_partition(&self, partition: u32, from: u64, max: usize) -> Result<Vec<RecordedEvent>> {
        self.log().read_partition(partition, from, max)
    }

    fn heads(&self, partition: u32) -> Result<Heads> {
        self.log().heads(partition)
    }

    fn head_signal(&self) -> &HeadSignal {
        self.log().head_signal()
    }

    fn origin(&self, partition: u32) -> Option<Origin> {
        self.log().origin(partition)
    }

    fn is_deleted(&self, stream: &str) -> bool {
        self.log().is_deleted(stream)
    }

    fn visibility(&self, stream: &str) -> Result<Visible> {
        self.log().visibility(stream)
    }

    fn durable_visibility(&self, stream: &str) -> Result<Visible> {
        self.log().durable_visibility(stream)
    }

    fn hides_any(&self) -> bool {
        self.log().hides_any()
    }

    fn latest_snapshot(&self, stream: &str) -> std::result::Result<Option<Stored>, String> {
        self.log().latest_snapshot(stream)
    }

    fn queue_snapshot(&self, snapshot: Pending, wait: bool) -> Result<bool> {
        self.log().queue_snapshot(snapshot, wait)
    }

    fn snapshot_counters(&self) -> &Counters {
        self.log().snapshot_counters()
    }

    fn dir(&self) -> &Path {
        self.log().dir()
    }

    fn io(&self) -> &Io {
        self.log().io()
    }

    fn report(&self) -> &Report {
        self.log().report()
    }
}

impl Log for Local {
    fn partition_count(&self) -> u32 {
        Local::partition_count(self)
    }

    fn partition_of(&self, stream: &str) -> u32 {
        Local::partition_of(self, stream)
    }

    fn append(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<AppendResult> {
        Local::append(self, stream, expected, events)
    }

    fn visit_stream(
        &self,
        stream: &str,
        from_version: u64,
        min_position: u64,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<()> {
        let (hash, p) = self.route(stream)?;
        let id = p.id;
        p.visit_stream(stream, hash, from_version, min_position, &mut |b, skip, take| each_event(b, id, skip, take, f))
    }

    fn scan_partition(
        &self,
        partition: u32,
        from: u64,
        max: usize,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<usize> {
        self.partition(partition)?.visit_events(from, max, f)
    }

    fn scan_streams(
        &self,
        partition: u32,
        from: u64,
        end: u64,
        max: usize,
        select: Select<'_>,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<(usize, u64)> {
        self.partition(partition)?.visit_kept(from, end, max, select, f)
    }

    fn heads(&self, partition: u32) -> Result<Heads> {
        let p = self.partition(partition)?;
        Ok(Heads {
            head: p.head(),
            time: p.head_time.load(Ordering::Acquire),
            durable: p.durable_head.load(Ordering::Acquire),
        })
    }

    fn head_signal(&self) -> &HeadSignal {
        &self.shared.signal
    }

    fn origin(&self, partition: u32) -> Option<Origin> {
        self.partition_origin(partition).map(|(live_from, cut)| Origin { live_from, cut })
    }

    fn is_deleted(&self, stream: &str) -> bool {
        self.route(stream).is_ok_and(|(_, p)| p.tombstones.deleted_at(stream).is_some())
    }

    fn visibility(&self, stream: &str) -> Result<Visible> {
        Local::visibility(self, stream)
    }

    fn durable_visibility(&self, stream: &str) -> Result<Visible> {
        Local::durable_visibility(self, stream)
    }

    fn hides_any(&self) -> bool {
        Local::hides_any(self)
    }

    fn latest_snapshot(&self, stream: &str) -> std::result::Result<Option<Stored>, String> {
        let sidecar = self.shared.snapshots.of(self.partition_of(stream)).ok_or("the store is closed")?;
        sidecar.read(stream)
    }

    fn queue_snapshot(&self, snapshot: Pending, wait: bool) -> Result<bool> {
        self.shared.snapshots.queue(Job::Write(snapshot), wait)
    }

    fn snapshot_counters(&self) -> &Counters {
        self.shared.snapshots.counters()
    }

    fn dir(&self) -> &Path {
        &self.shared.dir
    }

    fn io(&self) -> &Io {
        &self.shared.io
    }

    fn report(&self) -> &Report {
        &self.shared.report
    }
}
