//! A partition: an append-only log of segments, opened (recovering the active segment's tail)
//! and read here; appended to by its writer (see `writer.rs`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;
use parking_lot::{Mutex, RwLock};

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::format::index;
use crate::format::segment::{self as seg_format, End, Mode};
use crate::io::Io;
use crate::segment::{MemIndex, OpenSegment, Report, Segment, State, View, header_error};
use crate::store::RecoveryAction;
use crate::tombstones::Tombstones;

/// Directory name of partition `id`.
pub(crate) fn dir_name(id: u32) -> String {
    format!("p{id:05}")
}

/// The shared state of one partition: read by any thread, appended to by its writer only.
#[derive(Debug)]
pub(crate) struct Partition {
    pub id: u32,
    pub dir: PathBuf,
    pub io: Io,
    pub report: Report,
    /// Segments in position order; the last one is the active segment.
    pub segments: RwLock<Vec<Arc<Segment>>>,
    /// One past the last durable (acknowledged) position; readers never go past it.
    pub head: AtomicU64,
    /// Timestamp of the batch that ends at `head` (0 if the partition is empty).
    pub head_time: AtomicU64,
    /// One past the last position known to be on disk (behind `head` between the syncs of
    /// `Durability::Buffered`): projection checkpoints never go past it.
    pub durable_head: AtomicU64,
    /// Bumped after each head change, waking whoever follows the store's heads.
    pub signal: Arc<HeadSignal>,
    /// Why the partition stopped accepting appends, once it has.
    pub poison: Mutex<Option<String>>,
    /// Counters of the writer's work.
    pub stats: WriteCounters,
    /// The snapshot sidecar.
    pub snapshots: Arc<crate::snapshot::Sidecar>,
    /// The partition's deleted streams.
    pub tombstones: Tombstones,
    /// The archive slot whose decompressed data the last partition read kept (one per
    /// partition, so that reads stepping through archives hold at most one in memory).
    scan_pin: Mutex<Option<Arc<Vec<u8>>>>,
    /// Held by a compaction of this partition.
    pub compaction: Mutex<()>,
}

/// A store-wide signal of head changes: writers bump it after publishing a new head, and
/// followers (projection workers) wait on it instead of polling. Bumping costs an atomic
/// increment and a load when nobody waits.
#[derive(Debug, Default)]
pub(crate) struct HeadSignal {
    seq: AtomicU64,
    waiters: std::sync::atomic::AtomicUsize,
    lock: Mutex<()>,
    cv: parking_lot::Condvar,
}

impl HeadSignal {
    /// The current sequence number: pass it to [`HeadSignal::wait`].
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    // SeqCst: a bump's store to `seq` then load of `waiters`, against a waiter's store to
    // `waiters` then load of `seq`, must not both miss the other.
    pub fn bump(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders this wake-up after a waiter's check of `seq`.
            let _guard = self.lock.lock();
            self.cv.notify_all();
        }
    }

    /// Waits until the sequence number differs from `seen`, or `timeout` passes.
    pub fn wait(&self, seen: u64, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout.min(std::time::Duration::from_secs(3600));
        let mut guard = self.lock.lock();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        while self.seq.load(Ordering::SeqCst) == seen {
            if self.cv.wait_until(&mut guard, deadline).timed_out() {
                break;
            }
        }
        self.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counters a partition writer bumps once per group commit.
#[derive(Debug, Default)]
pub(crate) struct WriteCounters {
    pub appends: AtomicU64,
    pub events: AtomicU64,
    pub bytes: AtomicU64,
    pub groups: AtomicU64,
    pub syncs: AtomicU64,
    /// Group commits by appends per group: bucket `i` counts groups of at most `2^i`
    /// appends (the last bucket, more).
    pub group_sizes: [AtomicU64; GROUP_SIZE_BUCKETS],
}

/// Buckets of the group-size histogram: 1, 2, 4, ..., 4096 appends, and more.
pub(crate) const GROUP_SIZE_BUCKETS: usize = 14;

/// Where the writer takes over after open.
pub(crate) struct Tail {
    pub segment: Arc<Segment>,
    pub open: Arc<OpenSegment>,
    pub data_end: u64,
    /// Timestamp of the last batch recovered (0 if none): the writer's timestamps continue from
    /// it, so they do not go backwards across a restart (unless the active segment is empty).
    pub last_timestamp: u64,
    /// Length of the active segment file: past `data_end` it holds preallocated zeros.
    pub file_len: u64,
}

/// Creates the directory and first (empty) segment of a new partition.
pub(crate) fn create(dir: &Path, id: u32, io: &Io) -> Result<()> {
    io.create_dir(dir)?;
    write_segment_file(dir, id, 0, io)?;
    Ok(())
}

/// Writes a new, empty segment file durably (temp name, fsync, rename, fsync the directory).
pub(crate) fn write_segment_file(dir: &Path, id: u32, base: u64, io: &Io) -> Result<PathBuf> {
    let header = seg_format::encode_header(id, base, crate::store::now_nanos());
    let name = seg_format::file_name(base);
    io.write_atomic(dir, &name, &header)?;
    Ok(dir.join(name))
}

fn parse_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) { stem.parse().ok() } else { None }
}

impl Partition {
    /// Opens partition `id` in `dir`: lists its segments, recovers the active segment's tail
    /// (truncating a torn last write), and leaves sealed segments to be mapped on first use.
    pub fn open(
        dir: PathBuf,
        id: u32,
        io: Io,
        report: Report,
        signal: Arc<HeadSignal>,
    ) -> Result<(Arc<Partition>, Tail)> {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::corruption(&dir, 0, format!("partition {id} directory is missing")));
            }
            Err(e) => return Err(Error::io("list", &dir, e)),
        };
        let mut bases = Vec::new();
        let mut indexes = Vec::new();
        let mut archive_bases = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                io.remove_file(&entry.path())?;
                report.lock().push(RecoveryAction::RemovedTempFile { path: entry.path() });
            } else if let Some(base) = parse_name(name, ".log") {
                bases.push(base);
            } else if let Some(base) = parse_name(name, ".idx") {
                indexes.push(base);
            } else if let Some(base) = parse_name(name, ".arc") {
                archive_bases.push(base);
            }
        }
        bases.sort_unstable();
        let Some(&active_base) = bases.last() else {
            return Err(Error::corruption(&dir, 0, format!("partition {id} has no segment files")));
        };
        let archives = reconcile_archives(&dir, id, &io, &report, &mut bases, archive_bases)?;
        let first = bases.iter().chain(archives.iter().map(|a| &a.0)).min().copied();
        if first != Some(0) {
            let first = first.unwrap_or(0);
            return Err(Error::corruption(
                dir.join(seg_format::file_name(first)),
                0,
                format!("partition {id} starts at position {first}: the segments before it are missing"),
            ));
        }
        // An index is written only after the next segment's file is durable, so a valid index
        // beside the last segment means a newer segment was lost: refuse, rather than reuse its
        // positions. An index that does not check out is a leftover and goes.
        if indexes.contains(&active_base) {
            let path = dir.join(index::file_name(active_base));
            let mut head = Vec::with_capacity(index::HEADER_LEN);
            let file = io.open_read(&path)?;
            std::io::Read::read_to_end(&mut std::io::Read::take(file.std(), index::HEADER_LEN as u64), &mut head)
                .map_err(|e| Error::io("read", &path, e))?;
            drop(file);
            if index::decode_header(&head).is_ok_and(|h| h.partition == id && h.base_position == active_base) {
                return Err(Error::corruption(
                    &path,
                    0,
                    format!("segment {active_base} was sealed, but the segment after it is missing"),
                ));
            }
            io.remove_file(&path)?;
            io.sync_dir(&dir)?;
            report.lock().push(RecoveryAction::RemovedStaleIndex { path });
        }
        let mut segments: Vec<Arc<Segment>> =
            bases.iter().map(|&b| Arc::new(Segment::new(id, &dir, b, State::Unloaded))).collect();
        for (base, archive) in archives {
            let state = match archive {
                Ok(a) => State::Archived(a),
                Err(e) => State::Failed(e),
            };
            segments.push(Arc::new(Segment::archived(id, &dir, base, state)));
        }
        segments.sort_by_key(|s| s.base);
        // An archive stands for its whole range: the next file must start where it ends.
        for pair in segments.windows(2) {
            if let [a, next] = pair
                && let State::Archived(arc) = a.state()
                && arc.header.end_position != next.base
            {
                return Err(Error::corruption(
                    &a.path,
                    24,
                    format!(
                        "archive ends at position {}, the next file starts at {}",
                        arc.header.end_position, next.base
                    ),
                ));
            }
        }
        let (open, data_end, last_timestamp, file_len) = recover_active(&dir, id, active_base, &io, &report)?;
        let head = open.index.read().end_position;
        let open = Arc::new(open);
        let active = Arc::new(Segment::new(id, &dir, active_base, State::Open(open.clone())));
        if let Some(last) = segments.last_mut() {
            *last = active.clone();
        }
        let snapshots = Arc::new(crate::snapshot::Sidecar::new(&dir, id, io.clone(), report.clone()));
        let tombstones = Tombstones::open(&dir, id, io.clone(), &report)?;
        let part = Arc::new(Partition {
            id,
            dir,
            io,
            report,
            segments: RwLock::new(segments),
            head: AtomicU64::new(head),
            durable_head: AtomicU64::new(head),
            head_time: AtomicU64::new(last_timestamp),
            signal,
            poison: Mutex::new(None),
            stats: WriteCounters::default(),
            snapshots,
            tombstones,
            scan_pin: Mutex::new(None),
            compaction: Mutex::new(()),
        });
        Ok((part, Tail { segment: active, open, data_end, last_timestamp, file_len }))
    }

    /// The durable head: one past the last acknowledged position.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Each segment with the position where reads of it end, oldest first: the next
    /// segment's base, and the head for the last one. This is where every read path gets its
    /// bound (the visibility rule: an event is visible once the head covers it, to every read
    /// at once). The list is taken before the head: a segment is added only after every event
    /// before its base was published, so each listed segment but the last is complete, and
    /// the last is read up to a head at least as new as the list.
    pub fn snapshot(&self) -> Vec<(Arc<Segment>, u64)> {
        let segs = self.segments.read().clone();
        let head = self.head();
        let mut out = Vec::with_capacity(segs.len());
        for (i, s) in segs.iter().enumerate() {
            let end = segs.get(i + 1).map_or(head, |n| n.base);
            out.push((s.clone(), end));
        }
        out
    }

    fn view(&self, seg: &Segment, end: u64) -> Result<View> {
        seg.view(end, &self.io, &self.report)
    }

    /// The stream's last version in the segments before `before_base` (newest first).
    pub fn last_version_before(&self, stream: &str, hash: u64, before_base: u64) -> Result<Option<u64>> {
        for (seg, end) in self.snapshot().into_iter().rev() {
            if seg.base >= before_base {
                continue;
            }
            if let Some(v) = self.view(&seg, end)?.last_version(&seg, stream, hash, end)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The stream's last durable version.
    pub fn last_version(&self, stream: &str, hash: u64) -> Result<Option<u64>> {
        self.live(stream)?;
        self.last_version_before(stream, hash, u64::MAX)
    }

    /// The streams with a visible event in this partition that `keep` keeps (and that are
    /// not deleted), sorted by id.
    pub fn stream_ids(&self, keep: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
        let mut all = std::collections::BTreeSet::new();
        for (seg, end) in self.snapshot() {
            self.view(&seg, end)?.stream_ids(&seg, end, &mut all)?;
        }
        Ok(all.into_iter().filter(|s| keep(s) && self.tombstones.deleted_at(s).is_none()).collect())
    }

    /// Refuses stream reads of a deleted stream.
    fn live(&self, stream: &str) -> Result<()> {
        match self.tombstones.deleted_at(stream) {
            Some(_) => Err(Error::StreamDeleted { stream: stream.to_owned() }),
            None => Ok(()),
        }
    }

    pub fn read_stream(&self, stream: &str, hash: u64, from: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        self.live(stream)?;
        let mut out = Vec::new();
        for (seg, end) in self.snapshot() {
            if out.len() >= limit {
                break;
            }
            self.view(&seg, end)?.read_stream(&seg, stream, hash, from, end, limit, &mut out)?;
        }
        Ok(out)
    }

    /// Calls `f(batch, skip, take)` for the batches holding the stream's events from version
    /// `from` on (see [`View::visit_stream`]), oldest first, until `f` breaks. The caller may
    /// know that version `from` is at or after position `min_position`: segments that end
    /// before it are not looked at.
    pub fn visit_stream(
        &self,
        stream: &str,
        hash: u64,
        from: u64,
        min_position: u64,
        f: &mut dyn FnMut(&crate::format::batch::BatchView<'_>, usize, usize) -> std::ops::ControlFlow<()>,
    ) -> Result<()> {
        self.live(stream)?;
        for (seg, end) in self.snapshot() {
            if end <= min_position {
                continue;
            }
            if self.view(&seg, end)?.visit_stream(&seg, stream, hash, from, end, usize::MAX, f)?.1.is_break() {
                break;
            }
        }
        Ok(())
    }

    pub fn read_stream_back(&self, stream: &str, hash: u64, from: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        self.live(stream)?;
        let mut out = Vec::new();
        for (seg, end) in self.snapshot().into_iter().rev() {
            if out.len() >= limit {
                break;
            }
            self.view(&seg, end)?.read_stream_back(&seg, stream, hash, from, end, limit, &mut out)?;
        }
        Ok(out)
    }

    /// Calls `f(batch, skip, take)` for the batches holding positions from `from` on, in
    /// order, until `limit` events are taken or `f` breaks; returns how many were taken.
    pub fn visit_from(
        &self,
        from: u64,
        limit: usize,
        f: &mut dyn FnMut(&crate::format::batch::BatchView<'_>, usize, usize) -> std::ops::ControlFlow<()>,
    ) -> Result<usize> {
        let snap = self.snapshot();
        let start = snap.partition_point(|(s, _)| s.base <= from).saturating_sub(1);
        let mut taken = 0;
        let mut archived = false;
        for (seg, end) in snap.get(start..).unwrap_or(&[]) {
            if taken >= limit {
                break;
            }
            if *end <= from {
                continue;
            }
            let from = from.max(seg.base);
            let view = self.view(seg, *end)?;
            // An archive is read from its decompressed data: hold it for this read, and keep
            // it for the next step of the reader (releasing the one kept before).
            let _hold = match &view {
                View::Archived(a) => {
                    let data = a.data()?;
                    *self.scan_pin.lock() = Some(data.clone());
                    Some(data)
                }
                _ => None,
            };
            archived = _hold.is_some();
            let (n, flow) = view.visit_positions(seg, from, *end, limit - taken, f)?;
            taken += n;
            if flow.is_break() {
                break;
            }
        }
        if !archived {
            self.unpin_scan();
        }
        Ok(taken)
    }

    /// Reads back every file of the partition: every batch of every segment (CRC), every
    /// sealed segment's index, every archive's blocks and index entries. Returns the problems.
    pub fn verify(&self) -> Vec<Error> {
        let mut problems = Vec::new();
        for (seg, end) in self.snapshot() {
            match self.view(&seg, end) {
                Err(e) => problems.push(e),
                Ok(View::Archived(a)) => problems.extend(a.verify()),
                Ok(View::Sealed(s)) => {
                    if let Err(e) = s.walk(&seg, &mut |_, _| {}) {
                        problems.push(e);
                    }
                    problems.extend(s.verify_index(&seg));
                }
                Ok(view @ View::Open(_)) => {
                    if let Err(e) = view.visit_positions(&seg, seg.base, end, usize::MAX, &mut |_, _, _| {
                        std::ops::ControlFlow::Continue(())
                    }) {
                        problems.push(e);
                    }
                }
            }
        }
        problems
    }

    /// Loads what is checked on first use rather than at open: every sealed segment with its
    /// index (rebuilt if damaged) and the snapshot sidecar. Repairs go to the report; damage
    /// that cannot be repaired stays for the reads (and `verify`) to return.
    pub fn load_lazily_checked(&self) {
        for (seg, end) in self.snapshot() {
            let _ = self.view(&seg, end);
        }
        self.snapshots.load();
    }

    /// Releases the decompressed archive data kept for partition reads, if any.
    pub fn unpin_scan(&self) {
        self.scan_pin.lock().take();
    }

    pub fn read_from(&self, from: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let mut out = Vec::new();
        let id = self.id;
        self.visit_from(from, limit, &mut |b, skip, take| {
            for (i, e) in b.events().enumerate().skip(skip).take(take) {
                let mut slot = crate::segment::blank_event(id);
                crate::segment::fill_event(&mut slot, b, i, &e);
                out.push(slot);
            }
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(out)
    }
}

/// Scans the active segment, truncates a torn tail, makes what remains durable, and returns
/// its in-memory index and data end.
fn recover_active(dir: &Path, id: u32, base: u64, io: &Io, report: &Report) -> Result<(OpenSegment, u64, u64, u64)> {
    let path = dir.join(seg_format::file_name(base));
    let file = io.open_rw(&path)?;
    let file_len = file.len()?;
    let mut mem = MemIndex::new(base);
    let mut last_timestamp = 0;
    let end = {
        // SAFETY: the store lock is held and the writer has not started: nothing writes or
        // truncates this file while the map exists; it is dropped before any truncation.
        let map = unsafe { Mmap::map(file.std()) }.map_err(|e| Error::io("mmap", &path, e))?;
        let header = seg_format::decode_header(&map).map_err(|e| header_error(&path, e))?;
        if header.partition != id || header.base_position != base {
            return Err(Error::corruption(
                &path,
                0,
                format!("segment header says partition {} base {}", header.partition, header.base_position),
            ));
        }
        seg_format::scan(&map, &header, Mode::Active, |off, b| {
            last_timestamp = b.timestamp;
            mem.insert(b.stream_id, b.first_version, b.base_position, b.event_count, off, b.length as u32)
        })
        .map_err(|e| Error::corruption(&path, e.offset, e.reason))?
    };
    let data_end = end.data_end();
    // Zeros after the data are preallocated space and stay; a torn write is cut off.
    let mut file_len = file_len;
    if let End::TornTail { reason, .. } = end {
        file.set_len(data_end)?;
        report.lock().push(RecoveryAction::TruncatedTornTail {
            path: path.clone(),
            offset: data_end,
            discarded_bytes: file_len - data_end,
            reason,
        });
        file_len = data_end;
    }
    // What survived may sit only in the page cache (a process crash in Buffered mode): make it
    // durable before new batches claim it is.
    file.sync_data()?;
    Ok((OpenSegment::new(Arc::new(file), mem), data_end, last_timestamp, file_len))
}

/// An archive file, opened, or the error that kept it from opening.
type OpenedArchive = (u64, Result<Arc<Archive>>);

/// Finishes or rolls back compactions interrupted by a crash, leaving every position in
/// exactly one place. A compaction writes all its archives (each durably, under a temporary
/// name, then renamed) before it removes a segment. Each archive names the segments it was
/// made from (its sources) and where the whole compaction's range ends, so the archives of one
/// compaction are known; while any of their sources is still there, the compaction was
/// interrupted: if its archives tile its range it is finished (the sources go), otherwise it
/// is rolled back (the archives go). An archive that cannot be read is never removed here:
/// reads of its range fail, typed, until someone looks at it.
fn reconcile_archives(
    dir: &Path,
    id: u32,
    io: &Io,
    report: &Report,
    bases: &mut Vec<u64>,
    archive_bases: Vec<u64>,
) -> Result<Vec<OpenedArchive>> {
    let mut archives: Vec<OpenedArchive> = archive_bases
        .into_iter()
        .map(|b| {
            let path = dir.join(crate::format::archive::file_name(b));
            (b, Archive::open(&path, io, id, b).map(Arc::new))
        })
        .collect();
    archives.sort_by_key(|a| a.0);
    // An I/O error (too many open files, no memory for a mapping) says nothing about the
    // archive: fail the open rather than decide on partial knowledge.
    if let Some((_, Err(e))) =
        archives.iter().find(|(_, a)| matches!(a, Err(Error::Io { .. } | Error::StorageFull { .. })))
    {
        return Err(e.clone());
    }
    // The compactions with a source segment still present, by (first source, job end).
    let mut jobs: std::collections::BTreeMap<(u64, u64), (Vec<u64>, Vec<usize>)> = Default::default();
    for (k, (_, a)) in archives.iter().enumerate() {
        let Ok(a) = a else { continue };
        let sources: Vec<u64> = a.sources().iter().map(|s| s.base_position).collect();
        let Some(&first) = sources.first() else { continue };
        if sources.iter().any(|s| bases.contains(s)) {
            let job = jobs.entry((first, a.header.job_end)).or_insert_with(|| (sources.clone(), Vec::new()));
            job.1.push(k);
        }
    }
    let mut finished = Vec::new();
    let mut rolled_back = Vec::new();
    let mut drop_archives = Vec::new();
    for ((start, end), (sources, pieces)) in jobs {
        let mut at = start;
        for &k in &pieces {
            if let (b, Ok(a)) = &archives[k]
                && *b == at
            {
                at = a.header.end_position;
            }
        }
        let all_sources_there = sources.iter().all(|s| bases.contains(s));
        if at != end && !all_sources_there {
            // Segments were already removed, so the archives hold the only copy of their
            // range, but one of them is missing or unreadable: touch nothing, say so.
            return Err(Error::corruption(
                dir.join(crate::format::archive::file_name(start)),
                0,
                format!(
                    "a compaction of positions {start}..{end} was interrupted after removing segments, \
                     and its archives do not cover that range (one is missing or unreadable)"
                ),
            ));
        }
        if at == end {
            for s in sources.iter().filter(|s| bases.contains(s)) {
                for path in [dir.join(index::file_name(*s)), dir.join(seg_format::file_name(*s))] {
                    if path.exists() {
                        io.remove_file(&path)?;
                        finished.push(path);
                    }
                }
            }
            bases.retain(|b| !sources.contains(b));
        } else {
            for &k in &pieces {
                let path = dir.join(crate::format::archive::file_name(archives[k].0));
                io.remove_file(&path)?;
                rolled_back.push(path);
                drop_archives.push(k);
            }
        }
    }
    drop_archives.sort_unstable();
    for k in drop_archives.into_iter().rev() {
        let _ = archives.remove(k);
    }
    if !rolled_back.is_empty() || !finished.is_empty() {
        io.sync_dir(dir)?;
    }
    if !rolled_back.is_empty() {
        let reason = "a compaction was interrupted before all its archives were written".to_owned();
        report.lock().push(RecoveryAction::CompactionRolledBack { removed: rolled_back, reason });
    }
    if !finished.is_empty() {
        report.lock().push(RecoveryAction::CompactionFinished { removed: finished });
    }
    // What remains must not overlap: archives among themselves, or a segment.
    let ranges: Vec<(u64, u64, PathBuf)> = archives
        .iter()
        .filter_map(|(b, a)| a.as_ref().ok().map(|a| (*b, a.header.end_position, a.path.clone())))
        .collect();
    for (lo, hi, path) in &ranges {
        let clash = ranges.iter().any(|(l, h, _)| (l, h) != (lo, hi) && l < hi && h > lo)
            || bases.iter().any(|b| b >= lo && b < hi);
        if clash {
            return Err(Error::corruption(path, 16, format!("archive range {lo}..{hi} overlaps another file's")));
        }
    }
    Ok(archives)
}
