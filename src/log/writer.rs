//! The write path: one writer thread per partition turns everything queued into one group
//! commit (one `write`, one `fdatasync`) and completes each caller with its own result. The
//! protocol, and what a crash leaves, is FORMAT.md §10.
//!
//! Callers never take a lock: an append is encoded and checksummed-ready in the caller's
//! thread, pushed onto the partition's lock-free queue (crossbeam), and the caller waits on a
//! one-shot; the appends of one `append_many` share one encoded buffer (`BatchBytes::Shared`)
//! and one set of answers (`log::reply`), so they cost no allocation each. The writer drains the queue without waiting for more (no added latency at low
//! load; bigger groups under load), up to `max_group_appends` appends and about
//! `max_group_bytes` bytes. `Store::append_many` queues its appends bound for one partition as
//! one message, which the writer takes whole, so they share a group (which can pass
//! `max_group_appends` by them); each is still checked and answered on its own. The writer
//! checks each expected version against the stream's version as it will be after the earlier
//! appends of the same group, writes and syncs once, publishes the index and the new head, then
//! wakes the callers.
//!
//! In `Buffered` mode the writer also wakes up while idle with unsynced data, to sync once
//! `sync_interval` has passed. At close it finishes what is queued, waits for its zero fill in
//! flight and syncs, unless the partition is poisoned; `Store::close` returns the poisoning of
//! the lowest-numbered poisoned partition, and dropping the store without `close` ignores it.
//!
//! Poisoning (`Writer::poison`) waits for the zero fill in flight, writes the poison marker
//! (`format::poison`: the next open cuts the segment to `synced_offset` whatever happens
//! next), drops the segment's read map (`log::active`), cuts the active segment to
//! `synced_offset`, and takes the head and the in-memory index back to the durable data. If
//! the marker or the cut fails, the partition is poisoned all the same, and the cause says so
//! (`… (and cutting back to the durable data failed: …)`).

use hashbrown::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::clock::now_nanos;
use crate::error::{Error, Result};
use crate::event::{AppendResult, EventId, ExpectedVersion};
use crate::format::batch;
use crate::format::poison;
use crate::format::segment as seg_format;
use crate::log::active::{MemEntry, MemIndex, OpenSegment, run_last_version};
use crate::log::dedup::{self, Dedup};
use crate::log::journal::Journal;
use crate::log::partition::{GROUP_SIZE_BUCKETS, Partition, Tail, write_segment_file};
use crate::log::prealloc::{FillJob, Preallocator};
use crate::log::reply::{ReplyTo, answer_all};
use crate::log::sealer::{SealJob, seal};
use crate::log::segment::{Segment, State};

/// An encoded batch on its way to the writer: its own buffer (a single append), or a range of
/// one buffer shared by the appends of one `append_many`.
pub(crate) enum BatchBytes {
    Own(Vec<u8>),
    Shared { buf: Arc<Vec<u8>>, range: std::ops::Range<usize> },
}

impl BatchBytes {
    /// The bytes.
    pub fn get(&self) -> &[u8] {
        match self {
            BatchBytes::Own(v) => v,
            BatchBytes::Shared { buf, range } => buf.get(range.clone()).unwrap_or(&[]),
        }
    }
}

/// The stream an append is for: its own string (a single append), or a range of one string
/// holding the stream ids of an `append_many`'s appends.
pub(crate) enum StreamName {
    Own(Box<str>),
    Shared { names: Arc<str>, range: std::ops::Range<usize> },
}

impl StreamName {
    /// The stream id.
    pub fn get(&self) -> &str {
        match self {
            StreamName::Own(s) => s,
            StreamName::Shared { names, range } => names.get(range.clone()).unwrap_or(""),
        }
    }
}

/// One append on its way to the writer.
pub(crate) struct AppendRequest {
    pub stream: StreamName,
    pub hash: u64,
    pub expected: ExpectedVersion,
    /// The encoded batch (its stream id included); the writer fills in position, version,
    /// time, sync mark and CRC.
    pub batch: BatchBytes,
    pub event_count: u32,
    pub reply: ReplyTo,
    /// A copy of a moved stream's batch (see `grow`): keeps its original time.
    pub copied_at: Option<u64>,
    /// Not an append: answered once every request queued before it is committed and on disk
    /// (the writer syncs first, in Buffered mode too).
    pub barrier: bool,
    /// The events' ids, if every event has one: the append is then idempotent.
    pub ids: Option<Box<[EventId]>>,
    /// On the first request of an atomic unit (`Store::append_atomic`): how many requests,
    /// this one included, the unit holds; they follow it in the same message. 0 or 1 for an
    /// ordinary append.
    pub unit: u32,
}

/// Where an [`AppendRequest`]'s outcome arrives.
pub(crate) type Reply = oneshot::Receiver<Result<AppendResult>>;

impl AppendRequest {
    /// An append of `batch` (encoded, `event_count` events, stream id inside) with a reply
    /// channel of its own.
    pub fn new(stream: &str, hash: u64, expected: ExpectedVersion, batch: Vec<u8>, event_count: u32) -> (Self, Reply) {
        let (reply, rx) = oneshot::channel();
        let stream = StreamName::Own(stream.into());
        (AppendRequest::to(stream, hash, expected, BatchBytes::Own(batch), event_count, ReplyTo::One(reply)), rx)
    }

    /// An append answered at `reply`.
    pub fn to(
        stream: StreamName,
        hash: u64,
        expected: ExpectedVersion,
        batch: BatchBytes,
        event_count: u32,
        reply: ReplyTo,
    ) -> Self {
        AppendRequest {
            stream,
            hash,
            expected,
            batch,
            event_count,
            reply,
            copied_at: None,
            barrier: false,
            ids: None,
            unit: 0,
        }
    }

    /// The stream appended to ("" for a barrier).
    pub fn stream(&self) -> &str {
        self.stream.get()
    }

    /// A barrier (see the `barrier` field).
    pub fn barrier() -> (Self, Reply) {
        let (mut req, rx) = AppendRequest::new("", 0, ExpectedVersion::Any, Vec::new(), 0);
        req.barrier = true;
        (req, rx)
    }
}

/// What a partition writer's queue carries: one append, or several queued at once
/// ([`Store::append_many`](crate::Store::append_many)), so that they reach the writer together
/// and share a group commit.
pub(crate) enum Queued {
    One(AppendRequest),
    Many(Vec<AppendRequest>),
}

impl Queued {
    /// Moves the requests into `group`; returns their batch bytes.
    fn into_group(self, group: &mut Vec<AppendRequest>) -> usize {
        match self {
            Queued::One(r) => {
                let n = r.batch.get().len();
                group.push(r);
                n
            }
            Queued::Many(v) => {
                let n = v.iter().map(|r| r.batch.get().len()).sum();
                group.extend(v);
                n
            }
        }
    }
}

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged after the group's `fdatasync`: nothing acknowledged is lost, even on power
    /// loss. The default.
    Sync,
    /// Acknowledged after the group's `write`; the partition writer `fdatasync`s at least every
    /// `sync_interval` while there is unsynced data. A process crash loses nothing; a power loss
    /// or kernel crash may lose up to `sync_interval` of acknowledged appends.
    Buffered {
        /// Longest time acknowledged data stays unsynced.
        sync_interval: Duration,
    },
}

/// Settings the writer needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterConfig {
    pub durability: Durability,
    pub preallocate: bool,
    pub segment_bytes: u64,
    pub max_group_bytes: usize,
    pub max_group_appends: usize,
    /// Journal the active segment's index every this many bytes (`Options::recovery_scan_bytes`).
    pub journal_interval: u64,
    /// The idempotency window: appends, and most ids (`Options::idempotency_window`).
    pub dedup_appends: usize,
    pub dedup_max_ids: usize,
}

/// The state owned by a partition's writer thread.
pub(crate) struct Writer {
    part: Arc<Partition>,
    cfg: WriterConfig,
    segment: Arc<Segment>,
    open: Arc<OpenSegment>,
    write_offset: u64,
    synced_offset: u64,
    next_position: u64,
    last_timestamp: u64,
    last_sync: Instant,
    /// Last versions of streams found in sealed segments since the last roll.
    lookups: HashMap<Arc<str>, Option<u64>>,
    poisoned: Option<String>,
    sealer: Sender<SealJob>,
    prealloc: Preallocator,
    /// The active segment's index journal (FORMAT.md §8.4).
    journal: Journal,
    buf: Vec<u8>,
    /// The ids of the last appends (`log::dedup`), once rebuilt after open.
    dedup: Dedup,
    dedup_ready: bool,
    /// The group's ids map, kept between groups (`GroupState::pending_ids`).
    group_ids: HashMap<u64, (usize, usize)>,
    /// The last group's write and sync times, in microseconds, for its trace event (0 when
    /// no subscriber wants it).
    #[cfg(feature = "tracing")]
    group_us: (u64, u64),
}

enum Outcome {
    Accepted {
        first_position: u64,
        first_version: u64,
        last_version: u64,
        offset: u64,
        len: u32,
    },
    /// A retry of an append committed before: its result, nothing written.
    Duplicate(AppendResult),
    /// A retry of the group's earlier request at this index: that one's result, once known.
    DuplicateOf(usize),
    Rejected(Error),
}

/// What `check_and_encode` tracks across a group.
struct GroupState<'g> {
    outcomes: Vec<Outcome>,
    /// Streams' versions after the group's earlier appends.
    pending: HashMap<&'g str, u64>,
    /// Keys of the ids of the group's accepted appends: (request index, event index). The
    /// writer's map, lent to the group (its capacity kept from group to group).
    pending_ids: HashMap<u64, (usize, usize)>,
    position: u64,
}

const MAX_LOOKUP_CACHE: usize = 1 << 20;

impl Writer {
    pub fn new(
        part: Arc<Partition>,
        tail: Tail,
        cfg: WriterConfig,
        sealer: Sender<SealJob>,
        fills: Sender<FillJob>,
    ) -> Writer {
        let next_position = part.head();
        let fills = cfg.preallocate.then_some(fills);
        let prealloc = Preallocator::new(fills, cfg.segment_bytes, tail.file_len);
        Writer {
            part,
            cfg,
            segment: tail.segment,
            open: tail.open,
            write_offset: tail.data_end,
            synced_offset: tail.data_end,
            next_position,
            last_timestamp: tail.last_timestamp,
            last_sync: Instant::now(),
            lookups: HashMap::new(),
            poisoned: None,
            sealer,
            prealloc,
            journal: tail.journal,
            buf: Vec::new(),
            dedup: Dedup::new(cfg.dedup_appends, cfg.dedup_max_ids),
            dedup_ready: false,
            group_ids: HashMap::new(),
            #[cfg(feature = "tracing")]
            group_us: (0, 0),
        }
    }

    /// The writer thread's loop: runs until every sender is gone, then syncs what is unsynced
    /// and returns the failure of that last sync, if any.
    pub fn run(mut self, rx: Receiver<Queued>) -> Result<()> {
        let mut group: Vec<AppendRequest> = Vec::new();
        loop {
            let first = match self.cfg.durability {
                Durability::Buffered { sync_interval }
                    if self.synced_offset < self.write_offset && self.poisoned.is_none() =>
                {
                    let wait = sync_interval.saturating_sub(self.last_sync.elapsed());
                    match rx.recv_timeout(wait.max(Duration::from_micros(100))) {
                        Ok(r) => r,
                        Err(RecvTimeoutError::Timeout) => {
                            self.sync_now();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            let mut bytes = first.into_group(&mut group);
            while group.len() < self.cfg.max_group_appends && bytes < self.cfg.max_group_bytes {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.into_group(&mut group);
                    }
                    Err(_) => break,
                }
            }
            let barriers: Vec<AppendRequest> = group.extract_if(.., |r| r.barrier).collect();
            self.commit_group(&mut group);
            if !barriers.is_empty() {
                self.sync_now();
                for b in barriers {
                    let reply = match self.poisoned {
                        Some(_) => Err(self.poisoned_error()),
                        None => Ok(AppendResult {
                            partition: self.part.id,
                            first_position: self.next_position,
                            first_version: 0,
                            last_version: 0,
                            timestamp_nanos: self.last_timestamp,
                            duplicate: false,
                        }),
                    };
                    b.reply.send(reply);
                }
            }
            if let Durability::Buffered { sync_interval } = self.cfg.durability
                && self.last_sync.elapsed() >= sync_interval
            {
                self.sync_now();
            }
        }
        self.prealloc.finish();
        if self.poisoned.is_none() && self.synced_offset < self.write_offset {
            self.sync_now();
        }
        if self.poisoned.is_none() && self.synced_offset == self.write_offset {
            // Everything is durable: the whole index goes into a frozen section, which the
            // next open maps instead of rebuilding (FORMAT.md §8.4).
            self.journal.checkpoint(&self.part.io, &self.open);
        }
        self.trim_at_close();
        // A poisoned partition may hold acknowledged appends (Buffered mode) that are not on
        // disk: closing says so.
        match self.poisoned {
            Some(_) => Err(self.poisoned_error()),
            None => Ok(()),
        }
    }

    /// At a clean close, gives back the zero-filled space past the data (FORMAT.md §10.4):
    /// a closed store holds no preallocation, and the next open's writer fills ahead again.
    /// The read map goes first (no read may touch a mapped page past the new end). Best effort:
    /// a failure leaves zeros after the data, which are free space to every reader.
    fn trim_at_close(&mut self) {
        if self.poisoned.is_some() || self.synced_offset < self.write_offset {
            return;
        }
        if !matches!(self.open.file.len(), Ok(len) if len > self.write_offset) {
            return;
        }
        self.open.unmap();
        if self.open.file.set_len(self.write_offset).is_ok() {
            let _ = self.open.file.sync_all();
        }
    }

    /// Background sync in Buffered mode; a failure poisons the partition.
    fn sync_now(&mut self) {
        if self.poisoned.is_some() || self.synced_offset >= self.write_offset {
            return;
        }
        crate::trace::timer!(sync, DEBUG);
        match self.open.file.sync_data() {
            Ok(()) => {
                crate::trace::event!(
                    DEBUG,
                    "strata::append",
                    partition = self.part.id,
                    bytes = self.write_offset - self.synced_offset,
                    sync_us = sync.us(),
                    "background sync"
                );
                self.synced_offset = self.write_offset;
                self.part.durable_head.store(self.next_position, Ordering::Release);
                // Subscribers see only durable events: wake them.
                self.part.signal.bump();
                self.last_sync = Instant::now();
                self.part.stats.syncs.fetch_add(1, Ordering::Relaxed);
                self.journal.synced(&self.part.io);
            }
            Err(e) => self.poison(&e),
        }
    }

    /// Stops the partition after a failure that cannot be retried, and cuts the active segment
    /// back to what is known durable. Pages whose write-back failed may stay in the page cache,
    /// clean and readable, while the kernel reports the error only once: without the cut, a
    /// reopen in the same boot would read them back as valid batches, and new appends would
    /// vouch for bytes that may never reach the disk.
    fn poison(&mut self, cause: &Error) {
        let mut cause = cause.to_string();
        self.journal.stop();
        self.prealloc.finish();
        // The marker first (FORMAT.md §10.5): if the process dies before the cut, or the cut
        // fails, the next open still cuts the bytes after the durable end.
        let marker =
            poison::Marker { partition: self.part.id, segment: self.segment.base, durable_end: self.synced_offset };
        if let Err(e) = self.part.io.write_atomic(&self.part.dir, poison::FILE_NAME, &poison::encode(&marker)) {
            cause = format!("{cause} (and writing the poison marker failed: {e})");
        }
        // No read may touch a mapped page past the cut.
        self.open.unmap();
        if let Err(e) = self.open.file.set_len(self.synced_offset) {
            cause = format!("{cause} (and cutting back to the durable data failed: {e})");
        }
        // In `Buffered` mode the head had moved past the durable data, over appends the cut
        // just removed: the head and the index go back with them, so no read, head or stream
        // version counts them.
        let durable = self.part.durable_head.load(Ordering::Acquire);
        self.part.head.store(durable, Ordering::Release);
        self.open.index.write().cut(durable, self.synced_offset);
        // The window may name appends the cut removed.
        self.dedup.clear();
        self.dedup_ready = false;
        crate::trace::event!(WARN, "strata::append", partition = self.part.id, cause = %cause, "partition poisoned");
        *self.part.poison.lock() = Some(cause.clone());
        self.poisoned = Some(cause);
    }

    fn poisoned_error(&self) -> Error {
        Error::Poisoned { partition: self.part.id, cause: self.poisoned.clone().unwrap_or_default() }
    }

    /// The stream's last version: from this group's earlier appends, the active segment, the
    /// lookup cache, or the sealed segments (then cached).
    fn current_version(&mut self, pending: &HashMap<&str, u64>, req: &AppendRequest) -> Result<Option<u64>> {
        let stream = req.stream();
        if let Some(&v) = pending.get(stream) {
            return Ok(Some(v));
        }
        if let Some(v) = self.open.last_version(stream, req.hash)? {
            return Ok(Some(v));
        }
        if let Some(&v) = self.lookups.get(stream) {
            return Ok(v);
        }
        let v = self.part.last_version_before(stream, req.hash, self.segment.base)?;
        if self.lookups.len() >= MAX_LOOKUP_CACHE {
            self.lookups.clear();
        }
        self.lookups.insert(Arc::from(stream), v);
        Ok(v)
    }

    /// Commits one group: checks, one write, one sync, publish, reply. Drains `group`.
    fn commit_group(&mut self, group: &mut Vec<AppendRequest>) {
        if self.poisoned.is_none()
            && self.write_offset >= self.cfg.segment_bytes
            && self.write_offset > seg_format::HEADER_LEN as u64
            && let Err(e) = self.roll()
        {
            fail_all(group, &e);
            return;
        }
        if self.poisoned.is_some() {
            fail_all(group, &self.poisoned_error());
            return;
        }
        let timestamp = now_nanos().max(self.last_timestamp);
        let (outcomes, end_position) = self.check_and_encode(group, timestamp);
        #[cfg(feature = "tracing")]
        {
            self.group_us = (0, 0);
        }
        let result = if self.buf.is_empty() { Ok(()) } else { self.write_and_sync() };
        match result {
            Ok(()) => {
                #[cfg(feature = "tracing")]
                let first_position = self.next_position;
                if !self.buf.is_empty() {
                    self.publish(group, &outcomes, end_position, timestamp);
                }
                let accepted = |o: &Outcome| match *o {
                    Outcome::Accepted { first_position, first_version, last_version, .. } => Some(AppendResult {
                        partition: self.part.id,
                        first_position,
                        first_version,
                        last_version,
                        timestamp_nanos: timestamp,
                        duplicate: false,
                    }),
                    _ => None,
                };
                let replies: Vec<Result<AppendResult>> = outcomes
                    .iter()
                    .map(|o| match o {
                        Outcome::Accepted { .. } => accepted(o).ok_or(Error::Closed),
                        Outcome::Duplicate(r) => Ok(*r),
                        Outcome::DuplicateOf(j) => outcomes
                            .get(*j)
                            .and_then(accepted)
                            .map(|r| AppendResult { duplicate: true, ..r })
                            .ok_or(Error::Closed),
                        Outcome::Rejected(e) => Err(e.clone()),
                    })
                    .collect();
                answer_all(group.drain(..).map(|req| req.reply).zip(replies));
                crate::trace::event!(
                    DEBUG,
                    "strata::append",
                    partition = self.part.id,
                    appends = outcomes.len(),
                    accepted = outcomes.iter().filter(|o| matches!(o, Outcome::Accepted { .. })).count(),
                    events = end_position - first_position,
                    first_position,
                    bytes = self.buf.len(),
                    write_us = self.group_us.0,
                    sync_us = self.group_us.1,
                    durability = if self.cfg.durability == Durability::Sync { "sync" } else { "buffered" },
                    "group commit"
                );
            }
            Err(e) => {
                crate::trace::event!(
                    WARN,
                    "strata::append",
                    partition = self.part.id,
                    appends = outcomes.len(),
                    error = %e,
                    "group commit failed"
                );
                answer_all(group.drain(..).zip(outcomes).map(|(req, outcome)| {
                    let reply = match outcome {
                        Outcome::Accepted { .. } | Outcome::DuplicateOf(_) => Err(e.clone()),
                        Outcome::Duplicate(r) => Ok(r),
                        Outcome::Rejected(r) => Err(r),
                    };
                    (req.reply, reply)
                }));
            }
        }
    }

    /// Checks each append of the group in order against the stream's version as it will be
    /// after the group's earlier appends, and encodes the accepted ones into the group
    /// buffer (completing their headers). An atomic unit is checked whole: one refusal refuses
    /// all of it, and its bytes leave the buffer again. Returns each append's outcome and the
    /// position after the group.
    fn check_and_encode(&mut self, group: &[AppendRequest], timestamp: u64) -> (Vec<Outcome>, u64) {
        let mut st = GroupState {
            outcomes: Vec::with_capacity(group.len()),
            // Sized for the group: no rehash while it fills.
            pending: HashMap::with_capacity(group.len()),
            pending_ids: std::mem::take(&mut self.group_ids),
            position: self.next_position,
        };
        st.pending_ids.clear();
        self.buf.clear();
        let mut i = 0;
        while i < group.len() {
            let n = (group.get(i).map_or(1, |r| r.unit) as usize).clamp(1, group.len() - i);
            if n == 1 {
                let o = self.check_one(group, i, &mut st, timestamp, false);
                st.outcomes.push(o);
            } else {
                self.check_unit(group, i, n, &mut st, timestamp);
            }
            i += n;
        }
        self.group_ids = std::mem::take(&mut st.pending_ids);
        (st.outcomes, st.position)
    }

    /// Checks the atomic unit `group[start..start + n]`: all of it is written, all of it is a
    /// retry, or none of it is written.
    fn check_unit<'g>(
        &mut self,
        group: &'g [AppendRequest],
        start: usize,
        n: usize,
        st: &mut GroupState<'g>,
        timestamp: u64,
    ) {
        let (buf_len, position) = (self.buf.len(), st.position);
        let mut undo: Vec<(&'g str, Option<u64>)> = Vec::new();
        let first_outcome = st.outcomes.len();
        for k in start..start + n {
            let Some(req) = group.get(k) else { break };
            undo.push((req.stream(), st.pending.get(req.stream()).copied()));
            let o = self.check_one(group, k, st, timestamp, k + 1 < start + n);
            st.outcomes.push(o);
        }
        let parts = st.outcomes.get(first_outcome..).unwrap_or(&[]);
        let refusal = parts.iter().find_map(|o| match o {
            Outcome::Rejected(e) => Some(e.clone()),
            _ => None,
        });
        let written = parts.iter().filter(|o| matches!(o, Outcome::Accepted { .. })).count();
        let refusal = refusal.or_else(|| {
            (written > 0 && written < n).then(|| {
                let retried = parts
                    .iter()
                    .zip(group.get(start..).unwrap_or(&[]))
                    .find(|(o, _)| !matches!(o, Outcome::Accepted { .. }))
                    .map_or("", |(_, r)| r.stream());
                Error::IdempotencyConflict {
                    stream: retried.to_owned(),
                    reason: "this part of an atomic append repeats a committed append, and another part does not"
                        .into(),
                }
            })
        });
        let Some(e) = refusal else { return };
        // All or nothing: the unit's bytes, versions, ids and positions go back.
        self.buf.truncate(buf_len);
        st.position = position;
        for (stream, before) in undo.into_iter().rev() {
            match before {
                Some(v) => st.pending.insert(stream, v),
                None => st.pending.remove(stream),
            };
        }
        st.pending_ids.retain(|_, (j, _)| *j < start);
        for o in st.outcomes.get_mut(first_outcome..).unwrap_or(&mut []) {
            *o = Outcome::Rejected(e.clone());
        }
    }

    /// Checks `group[index]` and encodes it if accepted; `continues`: it is not the last part
    /// of its atomic unit.
    fn check_one<'g>(
        &mut self,
        group: &'g [AppendRequest],
        index: usize,
        st: &mut GroupState<'g>,
        timestamp: u64,
        continues: bool,
    ) -> Outcome {
        let Some(req) = group.get(index) else { return Outcome::Rejected(Error::Closed) };
        let stream = req.stream();
        if self.part.tombstones.deleted_at(stream).is_some() {
            return Outcome::Rejected(Error::StreamDeleted { stream: stream.to_string() });
        }
        if let Some(ids) = req.ids.as_deref()
            && req.copied_at.is_none()
            && !self.dedup.disabled()
        {
            match self.find_retry(group, req, ids, st) {
                Ok(Some(o)) => return o,
                Ok(None) => {}
                Err(e) => return Outcome::Rejected(e),
            }
        }
        let current = match self.current_version(&st.pending, req) {
            Ok(v) => v,
            Err(e) => return Outcome::Rejected(e),
        };
        if !req.expected.matches(current) {
            return Outcome::Rejected(Error::WrongExpectedVersion {
                stream: stream.to_string(),
                expected: req.expected,
                actual: current,
            });
        }
        // Versions and positions are u64: only a crafted file can bring them near the end,
        // and then the append is refused rather than written with a wrapped number.
        let count = u64::from(req.event_count);
        let position = st.position;
        let numbers = current
            .map_or(Some(0), |v| v.checked_add(1))
            .and_then(|first| first.checked_add(count).map(|end| (first, end - 1)))
            .filter(|_| position.checked_add(count).is_some());
        let Some((first_version, last_version)) = numbers else {
            return Outcome::Rejected(Error::Overflow { stream: stream.to_string() });
        };
        let offset = self.write_offset + self.buf.len() as u64;
        let start = self.buf.len();
        let bytes = req.batch.get();
        self.buf.extend_from_slice(bytes);
        if let Some(b) = self.buf.get_mut(start..) {
            // A copy (grow) stands alone in its new partition, whatever unit it came from.
            batch::set_unit_continues(b, continues && req.copied_at.is_none());
            batch::finish(b, position, first_version, req.copied_at.unwrap_or(timestamp), self.synced_offset);
        }
        st.pending.insert(stream, last_version);
        for (i, id) in req.ids.iter().flatten().enumerate() {
            st.pending_ids.insert(dedup::key(id), (index, i));
        }
        st.position += count;
        Outcome::Accepted { first_position: position, first_version, last_version, offset, len: bytes.len() as u32 }
    }

    /// Whether `req` (whose events all carry `ids`) retries an append already committed or
    /// accepted earlier in this group: `Some` outcome if so, `None` if none of its ids is
    /// known, an `IdempotencyConflict` if only some are, or all in another shape.
    fn find_retry(
        &mut self,
        group: &[AppendRequest],
        req: &AppendRequest,
        ids: &[EventId],
        st: &GroupState<'_>,
    ) -> Result<Option<Outcome>> {
        if !self.dedup_ready {
            self.dedup.rebuild(&self.part)?;
            self.dedup_ready = true;
        }
        let conflict = |reason: String| Error::IdempotencyConflict { stream: req.stream().to_string(), reason };
        // The common case, a new append: no id in the group or in the window. No allocation.
        let in_group_any =
            !st.pending_ids.is_empty() && ids.iter().any(|id| st.pending_ids.contains_key(&dedup::key(id)));
        if !in_group_any && ids.iter().all(|id| self.dedup.position_of(id).is_none()) {
            return Ok(None);
        }
        // The group's own earlier appends (not in the log yet).
        let in_group: Vec<Option<(usize, usize)>> =
            ids.iter().map(|id| st.pending_ids.get(&dedup::key(id)).copied()).collect();
        if let Some(Some((j, 0))) = in_group.first().copied()
            && let Some(earlier) = group.get(j)
            && earlier.stream() == req.stream()
            && earlier.ids.as_deref() == Some(ids)
        {
            return Ok(Some(Outcome::DuplicateOf(j)));
        }
        if in_group.iter().any(Option::is_some) {
            return Err(conflict("some of its event ids are those of another append in flight".into()));
        }
        // The log: the window proposes positions, the log confirms them.
        let proposed: Vec<Option<u64>> = ids.iter().map(|id| self.dedup.position_of(id)).collect();
        if proposed.iter().all(Option::is_none) {
            return Ok(None);
        }
        if let Some(Some(p0)) = proposed.first().copied()
            && proposed.iter().enumerate().all(|(i, p)| *p == Some(p0 + i as u64))
            && self.dedup.holds_append(p0, ids.len())
            && let Some(r) = self.confirm(req, ids, p0)?
        {
            return Ok(Some(Outcome::Duplicate(r)));
        }
        let mut known = 0usize;
        let mut streams: Vec<String> = Vec::new();
        for (id, p) in ids.iter().zip(&proposed) {
            let Some(p) = *p else { continue };
            let mut hit = None;
            self.part.visit_events(p, 1, &mut |e| {
                if e.id.as_ref() == Some(id) {
                    hit = Some(e.stream_id.to_owned());
                }
                std::ops::ControlFlow::Break(())
            })?;
            if let Some(s) = hit {
                known += 1;
                if !streams.contains(&s) {
                    streams.push(s);
                }
            }
        }
        if known == 0 {
            // Every proposal was a colliding key: the ids are new.
            return Ok(None);
        }
        Err(conflict(format!(
            "{known} of its {} event ids were already committed (to {}), but not as one earlier append of this stream in this order",
            ids.len(),
            streams.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
        )))
    }

    /// Reads the events `p0..p0 + ids.len()` back: if they are `req`'s stream's, with `ids`
    /// in order, the earlier append's result.
    fn confirm(&self, req: &AppendRequest, ids: &[EventId], p0: u64) -> Result<Option<AppendResult>> {
        let mut ok = true;
        let mut seen = 0usize;
        let mut first = None;
        let mut last_version = 0;
        self.part.visit_events(p0, ids.len(), &mut |e| {
            let same = e.stream_id == req.stream() && ids.get(seen) == e.id.as_ref();
            if first.is_none() {
                first = Some((e.version, e.timestamp_nanos));
            } else if e.version != last_version + 1 {
                ok = false;
            }
            last_version = e.version;
            ok &= same;
            seen += 1;
            if ok { std::ops::ControlFlow::Continue(()) } else { std::ops::ControlFlow::Break(()) }
        })?;
        Ok(match first {
            Some((first_version, timestamp_nanos)) if ok && seen == ids.len() => Some(AppendResult {
                partition: self.part.id,
                first_position: p0,
                first_version,
                last_version,
                timestamp_nanos,
                duplicate: true,
            }),
            _ => None,
        })
    }

    /// Writes the group buffer and, in Sync mode, syncs it. On failure the partition is
    /// poisoned, except for a full disk whose partial write could be cut off again.
    fn write_and_sync(&mut self) -> Result<()> {
        let file = self.open.file.clone();
        crate::trace::timer!(write, DEBUG);
        self.prealloc.make_room(self.write_offset + self.buf.len() as u64);
        if let Err(e) = file.write_all_at(&self.buf, self.write_offset) {
            if matches!(e, Error::StorageFull { .. }) && file.set_len(self.write_offset).is_ok() {
                // The cut also removed any zeros preallocated past the data.
                self.prealloc.reset(self.write_offset);
                return Err(e);
            }
            self.poison(&e);
            return Err(self.poisoned_error());
        }
        self.write_offset += self.buf.len() as u64;
        #[cfg(feature = "tracing")]
        {
            self.group_us.0 = write.us();
        }
        if self.cfg.durability == Durability::Sync {
            crate::trace::timer!(sync, DEBUG);
            if let Err(e) = file.sync_data() {
                self.poison(&e);
                return Err(self.poisoned_error());
            }
            self.synced_offset = self.write_offset;
            self.last_sync = Instant::now();
            self.part.stats.syncs.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "tracing")]
            {
                self.group_us.1 = sync.us();
            }
        }
        self.prealloc.after_write(&file, &self.part.io, self.write_offset);
        Ok(())
    }

    /// Makes a committed group visible: index entries, then the head.
    fn publish(&mut self, group: &[AppendRequest], outcomes: &[Outcome], end_position: u64, timestamp: u64) {
        {
            let mut mem = self.open.index.write();
            for (req, outcome) in group.iter().zip(outcomes) {
                if let Outcome::Accepted { first_position, first_version, offset, len, .. } = *outcome {
                    let key = mem.insert(req.stream(), first_version, first_position, req.event_count, offset, len);
                    self.journal.push(key, first_version, req.event_count, len, req.copied_at.unwrap_or(timestamp));
                    if self.dedup_ready {
                        self.dedup.push(first_position, req.ids.as_deref());
                    }
                }
            }
        }
        #[cfg(feature = "fault-injection")]
        if let Some(delay) = self.part.io.publish_delay() {
            std::thread::sleep(delay);
        }
        let stats = &self.part.stats;
        let accepted = outcomes.iter().filter(|o| matches!(o, Outcome::Accepted { .. })).count() as u64;
        stats.appends.fetch_add(accepted, Ordering::Relaxed);
        stats.events.fetch_add(end_position - self.next_position, Ordering::Relaxed);
        stats.bytes.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        stats.groups.fetch_add(1, Ordering::Relaxed);
        let bucket = (accepted.max(1) as usize).next_power_of_two().trailing_zeros() as usize;
        if let Some(b) = stats.group_sizes.get(bucket.min(GROUP_SIZE_BUCKETS - 1)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.next_position = end_position;
        self.last_timestamp = timestamp;
        self.part.head_time.store(timestamp, Ordering::Release);
        if self.cfg.durability == Durability::Sync {
            self.part.durable_head.store(end_position, Ordering::Release);
        }
        self.part.head.store(end_position, Ordering::Release);
        self.part.signal.bump();
        if self.synced_offset == self.write_offset {
            self.journal.synced(&self.part.io);
        }
    }

    /// Starts a new segment at the current head and hands the full one to the sealer. The
    /// full segment is made durable first, so a segment with a successor is never torn.
    fn roll(&mut self) -> Result<()> {
        if self.synced_offset < self.write_offset {
            if let Err(e) = self.open.file.sync_data() {
                self.poison(&e);
                return Err(self.poisoned_error());
            }
            self.synced_offset = self.write_offset;
            self.part.durable_head.store(self.next_position, Ordering::Release);
            self.part.signal.bump();
        }
        let part = self.part.clone();
        let base = self.next_position;
        // Until the rename inside write_segment_file, a failure leaves nothing behind but a
        // temp file (removed on open): keep writing to the full segment. After it, the new
        // file may exist on disk; writing on into the old one would break the chain.
        let path = match write_segment_file(&part.dir, part.id, base, &part.io) {
            Ok(p) => p,
            Err(e) if matches!(part.dir.join(seg_format::file_name(base)).try_exists(), Ok(false)) => return Err(e),
            Err(e) => {
                self.poison(&e);
                return Err(self.poisoned_error());
            }
        };
        let file = match part.io.open_rw(&path) {
            Ok(f) => f,
            Err(e) => {
                self.poison(&e);
                return Err(self.poisoned_error());
            }
        };
        // From here on nothing more is written to the old segment. No zero-fill may touch it
        // once the sealer trims it: the sealer waits for the fill in flight, not the writer.
        // (Before this point a failed roll keeps writing to the old segment, so the fill must
        // stay known to the writer.)
        let fill = self.prealloc.detach();
        let open = Arc::new(OpenSegment::new(Arc::new(file), MemIndex::new(base)));
        let segment = Arc::new(Segment::new(part.id, &part.dir, base, State::Open(open.clone())));
        part.segments.write().push(segment.clone());
        self.journal.roll(base, &part.io);
        crate::trace::event!(DEBUG, "strata::append", partition = part.id, base, "segment rolled");
        let old_segment = std::mem::replace(&mut self.segment, segment);
        let old_open = std::mem::replace(&mut self.open, open);
        self.write_offset = seg_format::HEADER_LEN as u64;
        self.synced_offset = self.write_offset;
        self.prealloc.reset(self.write_offset);
        self.prealloc.after_write(&self.open.file, &self.part.io, self.write_offset);
        // The full segment's streams keep their versions in the lookup cache: a stream appended
        // to just before the roll must not cost a search of the sealed segments.
        if self.lookups.len() >= MAX_LOOKUP_CACHE {
            self.lookups.clear();
        }
        // Streams of its frozen part too (their ids peeked from the segment), those the
        // in-memory index has after them overriding them.
        if let Ok(frozen) = old_open.frozen_streams() {
            for (stream, run) in frozen {
                self.lookups.insert(Arc::from(stream), run_last_version(run));
            }
        }
        for (stream, entries) in &old_open.index.read().streams {
            self.lookups.insert(stream.clone(), entries.last().map(MemEntry::last_version));
        }
        let job = SealJob { segment: old_segment, open: old_open, partition: part, fill };
        if let Err(crossbeam_channel::SendError(job)) = self.sealer.send(job) {
            seal(job);
        }
        Ok(())
    }
}

/// Answers every request of `group` with `e`.
fn fail_all(group: &mut Vec<AppendRequest>, e: &Error) {
    answer_all(group.drain(..).map(|req| (req.reply, Err(e.clone()))));
}
