//! The backends as logs: the embedded store's implementation of the log seam
//! (`store::seam`), and a store's, which is its backend's.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::error::Result;
use crate::event::{AppendResult, EventData, EventView, ExpectedVersion, RecordedEvent};
use crate::io::Io;
use crate::log::events::each_event;
use crate::report::Report;
use crate::snapshot::{Counters, Job, Pending, Stored};
use crate::sync::HeadSignal;

use super::seam::{Heads, Log, Origin, Select, Visible};
use super::{Backend, Local, Store};

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

    fn shared(&self) -> Option<&dyn super::seam::Shared> {
        self.log().shared()
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
