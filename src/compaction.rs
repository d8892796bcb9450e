//! Compaction: sealed segments rewritten into zstd-compressed archives (`archive.rs`), by
//! policy, in the background or on demand; and the erasure of deleted streams' events.
//!
//! A compaction of a run of consecutive sealed segments:
//!
//! 1. reads their batches (through their mappings) and cuts the run's position range into
//!    pieces of at most `max_archive_bytes` of batches;
//! 2. writes each piece's archive under a temporary name, fsyncs it, renames it to
//!    `{base}.arc` and fsyncs the directory;
//! 3. swaps the archives in for the segments (readers in flight keep their mappings);
//! 4. removes the segments and their indexes, and fsyncs the directory.
//!
//! A crash before step 4 finishes leaves archives beside segments; opening the partition
//! finishes the job if the archives cover the segments entirely, and rolls it back
//! otherwise (see `partition::reconcile_archives`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::archive::{self, Archive, BatchRef, BuildOptions, Plan};
use crate::error::{Error, Result};
use crate::format::archive::{AuditRecord, Reason, Source};
use crate::format::index;
use crate::partition::Partition;
use crate::router::stream_hash;
use crate::segment::{Segment, State, View};
use crate::store::now_nanos;

/// When and how sealed segments become archives.
///
/// A sealed segment is archived when any of these holds:
/// - its newest event is older than [`retention`](CompactionOptions::retention) and, with
///   [`require_snapshots`](CompactionOptions::require_snapshots) (the default), every stream
///   with events in it has a snapshot at or past its last event there;
/// - the partition's sealed, unarchived segments hold more than
///   [`max_hot_bytes`](CompactionOptions::max_hot_bytes) (oldest first);
/// - it holds events of a deleted stream (they are erased).
///
/// ```
/// use std::time::Duration;
/// use strata::{CompactionOptions, Options};
/// let opts = Options::default().compaction(
///     CompactionOptions::default().retention(Duration::from_secs(30 * 86_400)).throttle(Some(50 << 20)),
/// );
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
pub struct CompactionOptions {
    pub(crate) retention: Duration,
    pub(crate) require_snapshots: bool,
    pub(crate) max_hot_bytes: Option<u64>,
    pub(crate) interval: Option<Duration>,
    pub(crate) max_archive_bytes: u64,
    pub(crate) block_bytes: usize,
    pub(crate) level: i32,
    pub(crate) dictionary: bool,
    pub(crate) throttle: Option<u64>,
}

impl Default for CompactionOptions {
    fn default() -> CompactionOptions {
        CompactionOptions {
            retention: Duration::from_secs(7 * 86_400),
            require_snapshots: true,
            max_hot_bytes: None,
            interval: Some(Duration::from_secs(60)),
            max_archive_bytes: 16 << 20,
            block_bytes: 64 << 10,
            level: 3,
            dictionary: false,
            throttle: None,
        }
    }
}

impl CompactionOptions {
    /// How old a segment's newest event must be before the segment is archived (default 7
    /// days). Zero archives every sealed segment the snapshot rule allows.
    pub fn retention(mut self, d: Duration) -> CompactionOptions {
        self.retention = d;
        self
    }

    /// Archive a segment by age only once every stream in it has a snapshot at or past its
    /// events there (default `true`): aggregate loads then never read archives.
    pub fn require_snapshots(mut self, yes: bool) -> CompactionOptions {
        self.require_snapshots = yes;
        self
    }

    /// Also archive the oldest sealed segments, whatever their age, while a partition's
    /// sealed segments hold more than this many bytes (default: no bound).
    pub fn max_hot_bytes(mut self, bytes: Option<u64>) -> CompactionOptions {
        self.max_hot_bytes = bytes;
        self
    }

    /// How often the background compactor applies the policy (default every 60 s; `None`:
    /// no background compaction, only [`Store::compact`](crate::Store::compact)).
    pub fn interval(mut self, every: Option<Duration>) -> CompactionOptions {
        self.interval = every;
        self
    }

    /// Most batch bytes per archive (default 16 MiB; at least 64 KiB). A partition read that
    /// goes through an archive holds this much decompressed in memory.
    pub fn max_archive_bytes(mut self, bytes: u64) -> CompactionOptions {
        self.max_archive_bytes = bytes;
        self
    }

    /// Uncompressed size of a block, the unit a stream read decompresses (default 64 KiB).
    pub fn block_bytes(mut self, bytes: usize) -> CompactionOptions {
        self.block_bytes = bytes;
        self
    }

    /// zstd compression level (default 3).
    pub fn level(mut self, level: i32) -> CompactionOptions {
        self.level = level;
        self
    }

    /// Train a zstd dictionary per archive and store it there (default `false`: measured to
    /// gain little on 64 KiB blocks, see BENCHMARKS.md).
    pub fn dictionary(mut self, yes: bool) -> CompactionOptions {
        self.dictionary = yes;
        self
    }

    /// Most segment bytes compacted per second (default: unthrottled).
    pub fn throttle(mut self, bytes_per_sec: Option<u64>) -> CompactionOptions {
        self.throttle = bytes_per_sec;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_archive_bytes < 64 << 10 {
            return Err(Error::InvalidOptions("max_archive_bytes must be at least 64 KiB".into()));
        }
        if self.block_bytes < 4096 || self.block_bytes > 64 << 20 {
            return Err(Error::InvalidOptions("block_bytes must be 4 KiB..=64 MiB".into()));
        }
        if !(1..=22).contains(&self.level) {
            return Err(Error::InvalidOptions(format!("zstd level must be 1..=22, not {}", self.level)));
        }
        if self.throttle == Some(0) {
            return Err(Error::InvalidOptions("a throttle must allow some bytes per second".into()));
        }
        Ok(())
    }
}

/// What a compaction did (see [`Store::compact`](crate::Store::compact)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionReport {
    /// Segments replaced by archives.
    pub segments_archived: u64,
    /// Archives written (new ones and rewrites).
    pub archives_written: u64,
    /// Archives rewritten to erase deleted streams.
    pub archives_rewritten: u64,
    /// Events now in the new archives.
    pub events_archived: u64,
    /// Events of deleted streams erased.
    pub events_erased: u64,
    /// Snapshots of deleted streams erased.
    pub snapshots_erased: u64,
    /// Bytes of the segments read.
    pub bytes_in: u64,
    /// Bytes of the archives written.
    pub bytes_out: u64,
    /// Time taken.
    pub elapsed: Duration,
    /// Files left as they were because they could not be read (each with why); the rest of
    /// the store was compacted.
    pub skipped: Vec<String>,
}

impl CompactionReport {
    /// Segment bytes per archive byte (0 if nothing was archived).
    pub fn ratio(&self) -> f64 {
        if self.bytes_out == 0 { 0.0 } else { self.bytes_in as f64 / self.bytes_out as f64 }
    }

    fn add(&mut self, o: &CompactionReport) {
        self.segments_archived += o.segments_archived;
        self.archives_written += o.archives_written;
        self.archives_rewritten += o.archives_rewritten;
        self.events_archived += o.events_archived;
        self.events_erased += o.events_erased;
        self.snapshots_erased += o.snapshots_erased;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.skipped.extend(o.skipped.iter().cloned());
    }
}

/// Running totals of a store's compactions since it was opened (see
/// [`Store::compaction_stats`](crate::Store::compaction_stats)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionStats {
    /// Compaction runs, background and explicit.
    pub runs: u64,
    /// Runs that stopped on an error (I/O, a full disk).
    pub failures: u64,
    /// Files left unarchived because they were damaged.
    pub skipped: u64,
    /// Segments replaced by archives.
    pub segments_archived: u64,
    /// Bytes of segments read.
    pub bytes_in: u64,
    /// Bytes of archives written.
    pub bytes_out: u64,
    /// Events of deleted streams erased.
    pub events_erased: u64,
    /// The last error or skipped file, if any.
    pub last_error: Option<String>,
}

/// Running totals of the store's compactions.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub runs: AtomicU64,
    pub failures: AtomicU64,
    pub segments_archived: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub events_erased: AtomicU64,
    /// Files left unarchived because they were damaged.
    pub skipped: AtomicU64,
    pub last_error: parking_lot::Mutex<Option<String>>,
}

impl Counters {
    pub fn stats(&self) -> CompactionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CompactionStats {
            runs: get(&self.runs),
            failures: get(&self.failures),
            skipped: get(&self.skipped),
            segments_archived: get(&self.segments_archived),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            events_erased: get(&self.events_erased),
            last_error: self.last_error.lock().clone(),
        }
    }

    pub fn record(&self, r: &Result<CompactionReport>) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(r) => {
                if let Some(last) = r.skipped.last() {
                    self.skipped.fetch_add(r.skipped.len() as u64, Ordering::Relaxed);
                    *self.last_error.lock() = Some(last.clone());
                }
                self.segments_archived.fetch_add(r.segments_archived, Ordering::Relaxed);
                self.bytes_in.fetch_add(r.bytes_in, Ordering::Relaxed);
                self.bytes_out.fetch_add(r.bytes_out, Ordering::Relaxed);
                self.events_erased.fetch_add(r.events_erased, Ordering::Relaxed);
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock() = Some(e.to_string());
            }
        }
    }
}

/// Progress of a running compaction, for a progress bar: bytes of batches compressed so far
/// out of the bytes planned (the plan grows as partitions are looked at).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionProgress {
    /// Bytes compressed so far.
    pub done: u64,
    /// Bytes planned so far.
    pub planned: u64,
}

/// Paces a compaction to a byte rate, and tells a progress callback.
pub(crate) struct Pace<'a> {
    started: Instant,
    limit: Option<u64>,
    /// Set when the store closes: the throttle stops sleeping, so the job ends soon.
    stop: &'a AtomicBool,
    pub progress: CompactionProgress,
    pub report: &'a mut dyn FnMut(CompactionProgress),
}

impl<'a> Pace<'a> {
    pub fn new(limit: Option<u64>, stop: &'a AtomicBool, report: &'a mut dyn FnMut(CompactionProgress)) -> Pace<'a> {
        Pace { started: Instant::now(), limit, stop, progress: CompactionProgress::default(), report }
    }

    fn plan(&mut self, bytes: u64) {
        self.progress.planned += bytes;
        (self.report)(self.progress);
    }

    fn done(&mut self, bytes: u64) {
        self.progress.done += bytes;
        (self.report)(self.progress);
        if let Some(limit) = self.limit.filter(|_| !self.stop.load(Ordering::Acquire)) {
            let due = Duration::from_secs_f64(self.progress.done as f64 / limit as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// A sealed segment chosen for archiving.
#[derive(Clone)]
struct Chosen {
    slot: Arc<Segment>,
    end: u64,
    sealed: Arc<crate::segment::SealedSegment>,
    reason: Reason,
}

/// Applies the policy to one partition (with `force`, every sealed segment is archived).
pub(crate) fn compact_partition(
    part: &Partition,
    opts: &CompactionOptions,
    force: bool,
    pace: &mut Pace<'_>,
) -> Result<CompactionReport> {
    let _one_at_a_time = part.compaction.lock();
    let mut report = CompactionReport::default();
    let deleted: HashMap<String, u64> = part.tombstones.all().into_iter().collect();
    let units = part.snapshot();
    let Some((_, sealed_units)) = units.split_last() else { return Ok(report) };
    // Deleted streams' snapshots go from the sidecar, and archives holding their events are
    // rewritten without them.
    if !deleted.is_empty() {
        match part.snapshots.erase(&|s| deleted.contains_key(s)) {
            Ok(n) => report.snapshots_erased += n,
            Err(e) => report.skipped.push(format!("erasing snapshots of deleted streams: {e}")),
        }
        for (slot, _) in sealed_units {
            if let State::Archived(a) = slot.state() {
                let done = holds_deleted(slot, &a, &deleted).and_then(|holds| {
                    if holds { rewrite_archive(part, slot, &a, &deleted, opts, pace, &mut report) } else { Ok(()) }
                });
                skip_damaged(done, &mut report)?;
            }
        }
    }
    // Then the sealed segments, oldest first.
    let now = now_nanos();
    let mut candidates = Vec::new();
    for (slot, end) in sealed_units {
        if slot.is_archive() || matches!(slot.state(), State::Open(_)) {
            continue;
        }
        match slot.view(*end, &part.io, &part.report) {
            Ok(View::Sealed(s)) => candidates.push((slot.clone(), *end, s)),
            Ok(_) => continue,
            Err(e) => skip_damaged(Err(e), &mut report)?,
        }
    }
    let mut hot: u64 = candidates.iter().map(|c| c.2.len()).sum();
    let mut chosen = Vec::new();
    for (slot, end, sealed) in candidates {
        let reason = match choose(part, &slot, &sealed, &deleted, opts, force, now, hot) {
            Ok(r) => r,
            Err(e) => {
                // A damaged segment is left where it is; the rest goes on (it breaks the run,
                // so no archive spans it).
                skip_damaged(Err(e), &mut report)?;
                continue;
            }
        };
        if let Some(reason) = reason {
            hot -= sealed.len();
            pace.plan(sealed.len());
            chosen.push(Chosen { slot, end, sealed, reason });
        }
    }
    // Consecutive chosen segments are archived together.
    let mut run: Vec<Chosen> = Vec::new();
    for c in chosen {
        if run.last().is_some_and(|l| l.end != c.slot.base || l.reason != c.reason) {
            archive_around_damage(part, std::mem::take(&mut run), &deleted, opts, pace, &mut report)?;
        }
        run.push(c);
    }
    if !run.is_empty() {
        archive_around_damage(part, run, &deleted, opts, pace, &mut report)?;
    }
    Ok(report)
}

/// Archives a run; if a segment of it turns out damaged (its batches are checked only
/// here), the segments before and after it are archived without it.
fn archive_around_damage(
    part: &Partition,
    mut run: Vec<Chosen>,
    deleted: &HashMap<String, u64>,
    opts: &CompactionOptions,
    pace: &mut Pace<'_>,
    report: &mut CompactionReport,
) -> Result<()> {
    loop {
        if run.is_empty() {
            return Ok(());
        }
        let keep = run.clone();
        match archive_run(part, run, deleted, opts, pace, report) {
            Err(Error::Corruption { path, offset, reason }) => {
                let Some(k) = keep.iter().position(|c| c.slot.path == path) else {
                    return skip_damaged(Err(Error::Corruption { path, offset, reason }), report);
                };
                report.skipped.push(Error::Corruption { path, offset, reason }.to_string());
                let mut before = keep;
                let after = before.split_off(k + 1);
                before.pop();
                archive_around_damage(part, before, deleted, opts, pace, report)?;
                run = after;
            }
            other => return skip_damaged(other, report),
        }
    }
}

/// Damage to one file is recorded in the report and compaction goes on with the others;
/// any other error (I/O, a full disk) stops it.
fn skip_damaged(done: Result<()>, report: &mut CompactionReport) -> Result<()> {
    match done {
        Err(e @ (Error::Corruption { .. } | Error::UnsupportedVersion { .. })) => {
            report.skipped.push(e.to_string());
            Ok(())
        }
        other => other,
    }
}

/// Why a sealed segment is to be archived now, if it is. Cheap first: the age comes from
/// the segment's last batch, deleted streams from index lookups, and only an old enough
/// segment has its streams' snapshots looked up. No segment is read whole here.
#[allow(clippy::too_many_arguments)]
fn choose(
    part: &Partition,
    slot: &Segment,
    sealed: &Arc<crate::segment::SealedSegment>,
    deleted: &HashMap<String, u64>,
    opts: &CompactionOptions,
    force: bool,
    now: u64,
    hot: u64,
) -> Result<Option<Reason>> {
    if force {
        return Ok(Some(Reason::Forced));
    }
    let view = View::Sealed(sealed.clone());
    for stream in deleted.keys() {
        if view.last_version(slot, stream, stream_hash(stream), u64::MAX)?.is_some() {
            return Ok(Some(Reason::Erasure));
        }
    }
    let retention = u64::try_from(opts.retention.as_nanos()).unwrap_or(u64::MAX);
    let old = now.saturating_sub(sealed.last_timestamp(slot)?) >= retention;
    if old && !opts.require_snapshots {
        return Ok(Some(Reason::Retained));
    }
    if old && snapshotted(part, &sealed.stream_last_versions(slot)?, deleted)? {
        return Ok(Some(Reason::RetainedAndSnapshotted));
    }
    Ok(opts.max_hot_bytes.is_some_and(|m| hot > m).then_some(Reason::HotBytes))
}

/// Whether every stream has a snapshot at or past `last_versions` (deleted ones need none).
fn snapshotted(part: &Partition, last_versions: &[(&str, u64)], deleted: &HashMap<String, u64>) -> Result<bool> {
    for (stream, last) in last_versions {
        if deleted.contains_key(*stream) {
            continue;
        }
        match part.snapshots.latest_version(stream) {
            Ok(Some(v)) if v >= *last => {}
            Ok(_) => return Ok(false),
            Err(why) => return Err(Error::corruption(&part.dir, 0, why)),
        }
    }
    Ok(true)
}

fn holds_deleted(slot: &Segment, a: &Arc<Archive>, deleted: &HashMap<String, u64>) -> Result<bool> {
    let view = View::Archived(a.clone());
    for stream in deleted.keys() {
        if view.last_version(slot, stream, stream_hash(stream), u64::MAX)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Erased events of one stream, gathered into an audit record.
#[derive(Default)]
struct Erased {
    records: HashMap<String, AuditRecord>,
}

impl Erased {
    fn add(&mut self, stream: &str, deleted_at: u64, first: u64, count: u32) {
        let now = now_nanos();
        let r = self.records.entry(stream.to_owned()).or_insert_with(|| AuditRecord {
            stream: stream.to_owned(),
            events: 0,
            first_position: first,
            last_position: first,
            deleted_at,
            erased_at: now,
        });
        r.events += u64::from(count);
        r.first_position = r.first_position.min(first);
        r.last_position = r.last_position.max(first + u64::from(count) - 1);
    }

    fn take(&mut self) -> Vec<AuditRecord> {
        let mut v: Vec<AuditRecord> = self.records.drain().map(|(_, r)| r).collect();
        v.sort_by_key(|r| r.first_position);
        v
    }
}

fn build_opts(opts: &CompactionOptions) -> BuildOptions {
    BuildOptions { level: opts.level, block_bytes: opts.block_bytes, dictionary: opts.dictionary }
}

/// Archives a run of consecutive sealed segments (steps 1 to 4 of the module's protocol).
fn archive_run(
    part: &Partition,
    run: Vec<Chosen>,
    deleted: &HashMap<String, u64>,
    opts: &CompactionOptions,
    pace: &mut Pace<'_>,
    report: &mut CompactionReport,
) -> Result<()> {
    let (Some(first), Some(last)) = (run.first(), run.last()) else { return Ok(()) };
    let run_end = last.end;
    let reason = first.reason;
    let sources: Vec<Source> =
        run.iter().map(|c| Source { base_position: c.slot.base, bytes: c.sealed.len() }).collect();
    let mut written: Vec<(u64, PathBuf)> = Vec::new();
    let mut piece: Vec<BatchRef<'_>> = Vec::new();
    let mut piece_bytes = 0u64;
    let mut piece_base = first.slot.base;
    let mut erased = Erased::default();
    let mut bytes_in = 0u64;
    let mut events = 0u64;
    let mut erased_events = 0u64;
    let mut failure: Option<Error> = None;
    // Batches are gathered per piece; a piece is written when the next batch would overflow it.
    let write_piece = |base: u64, end: u64, piece: Vec<BatchRef<'_>>, audit: Vec<AuditRecord>, pace: &mut Pace<'_>| {
        let plan = Plan { partition: part.id, base, end, job_end: run_end, reason, sources: &sources, audit: &audit };
        let image = archive::build(&plan, piece, build_opts(opts), &mut |n| pace.done(n))?;
        let name = crate::format::archive::file_name(base);
        if let Err(e) = part.io.write_atomic(&part.dir, &name, &image) {
            // The rename may have happened before the failure: leave neither file behind.
            for leftover in [part.dir.join(&name), part.dir.join(format!("{name}.tmp"))] {
                if leftover.exists() {
                    let _ = part.io.remove_file(&leftover);
                }
            }
            return Err(e);
        }
        Ok::<(u64, usize), Error>((base, image.len()))
    };
    for c in &run {
        bytes_in += c.sealed.len();
        let mut walk_err = None;
        c.sealed
            .walk(&c.slot, &mut |b, bytes| {
                if failure.is_some() {
                    return;
                }
                if let Some(at) = deleted.get(b.stream_id) {
                    erased.add(b.stream_id, *at, b.base_position, b.event_count);
                    erased_events += u64::from(b.event_count);
                    return;
                }
                if piece_bytes + bytes.len() as u64 > opts.max_archive_bytes && !piece.is_empty() {
                    let done = std::mem::take(&mut piece);
                    match write_piece(piece_base, b.base_position, done, erased.take(), pace) {
                        Ok((base, len)) => {
                            written.push((base, part.dir.join(crate::format::archive::file_name(base))));
                            report.bytes_out += len as u64;
                        }
                        Err(e) => failure = Some(e),
                    }
                    piece_base = b.base_position;
                    piece_bytes = 0;
                }
                piece.push(archive::batch_ref(b, bytes));
                piece_bytes += bytes.len() as u64;
                events += u64::from(b.event_count);
            })
            .unwrap_or_else(|e| walk_err = Some(e));
        if let Some(e) = walk_err.or(failure.take()) {
            remove_written(part, &written);
            return Err(e);
        }
    }
    match write_piece(piece_base, run_end, std::mem::take(&mut piece), erased.take(), pace) {
        Ok((base, len)) => {
            written.push((base, part.dir.join(crate::format::archive::file_name(base))));
            report.bytes_out += len as u64;
        }
        Err(e) => {
            remove_written(part, &written);
            return Err(e);
        }
    }
    // Step 3: swap the archives in.
    let mut slots = Vec::with_capacity(written.len());
    for (base, path) in &written {
        match Archive::open(path, &part.io, part.id, *base) {
            Ok(a) => slots.push(Arc::new(Segment::archived(part.id, &part.dir, *base, State::Archived(Arc::new(a))))),
            Err(e) => {
                remove_written(part, &written);
                return Err(e);
            }
        }
    }
    {
        let mut segments = part.segments.write();
        let Some(at) = segments.iter().position(|s| Arc::ptr_eq(s, &first.slot)) else {
            drop(segments);
            remove_written(part, &written);
            return Err(Error::corruption(&first.slot.path, 0, "segment vanished during compaction"));
        };
        segments.splice(at..at + run.len(), slots);
    }
    // Step 4: the segments go. From here a crash is finished on open.
    // The index first: a segment left without one is still seen (and removed) on open.
    for c in &run {
        let idx = part.dir.join(index::file_name(c.slot.base));
        if idx.exists() {
            part.io.remove_file(&idx)?;
        }
        part.io.remove_file(&c.slot.path)?;
    }
    part.io.sync_dir(&part.dir)?;
    report.segments_archived += run.len() as u64;
    report.archives_written += written.len() as u64;
    report.events_archived += events;
    report.events_erased += erased_events;
    report.bytes_in += bytes_in;
    Ok(())
}

/// Removes archives written by a job that then failed (before any segment was removed, so
/// the segments still hold everything); a crash instead is rolled back on open.
fn remove_written(part: &Partition, written: &[(u64, PathBuf)]) {
    for (_, path) in written {
        let _ = part.io.remove_file(path);
    }
    let _ = part.io.sync_dir(&part.dir);
}

/// Rewrites an archive without the deleted streams' batches (same range, same name: the
/// rename replaces it atomically).
fn rewrite_archive(
    part: &Partition,
    slot: &Arc<Segment>,
    a: &Arc<Archive>,
    deleted: &HashMap<String, u64>,
    opts: &CompactionOptions,
    pace: &mut Pace<'_>,
    report: &mut CompactionReport,
) -> Result<()> {
    let data = a.data()?;
    pace.plan(data.len() as u64);
    let mut keep = Vec::new();
    let mut erased = Erased::default();
    let mut erased_events = 0;
    let mut events = 0;
    for p in a.positions() {
        let p = p.get();
        let bytes = data.get(p.offset as usize..).unwrap_or(&[]);
        let b = crate::format::batch::decode(bytes).map_err(|bad| {
            Error::corruption(&a.path, 0, format!("batch at uncompressed offset {}: {bad}", p.offset))
        })?;
        if let Some(at) = deleted.get(b.stream_id) {
            erased.add(b.stream_id, *at, b.base_position, b.event_count);
            erased_events += u64::from(b.event_count);
        } else {
            events += u64::from(b.event_count);
            keep.push(archive::batch_ref(&b, bytes));
        }
    }
    let mut audit = a.audit();
    audit.extend(erased.take());
    let sources = a.sources();
    let h = a.header;
    let plan = Plan {
        partition: part.id,
        base: h.base_position,
        end: h.end_position,
        job_end: h.job_end,
        reason: h.reason,
        sources: &sources,
        audit: &audit,
    };
    let image = archive::build(&plan, keep, build_opts(opts), &mut |n| pace.done(n))?;
    part.io.write_atomic(&part.dir, &crate::format::archive::file_name(h.base_position), &image)?;
    let fresh = Archive::open(&a.path, &part.io, part.id, h.base_position)?;
    slot.set_state(State::Archived(Arc::new(fresh)));
    report.archives_written += 1;
    report.archives_rewritten += 1;
    report.events_erased += erased_events;
    report.events_archived += events;
    report.bytes_out += image.len() as u64;
    Ok(())
}

/// Applies the policy (or, with `force`, archives every sealed segment) to every partition.
pub(crate) fn compact_store(
    partitions: &[Arc<Partition>],
    opts: &CompactionOptions,
    force: bool,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(CompactionProgress),
) -> Result<CompactionReport> {
    let started = Instant::now();
    let mut total = CompactionReport::default();
    let mut pace = Pace::new(opts.throttle, stop, progress);
    for part in partitions {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let r = compact_partition(part, opts, force, &mut pace)?;
        total.add(&r);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// What one partition keeps on disk (see [`Store::storage`](crate::Store::storage)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionStorage {
    /// The partition.
    pub partition: u32,
    /// Segment files, the active one included.
    pub segments: u64,
    /// Their bytes.
    pub segment_bytes: u64,
    /// Archive files.
    pub archives: u64,
    /// Their bytes.
    pub archive_bytes: u64,
    /// The uncompressed bytes of the batches in them.
    pub archived_bytes: u64,
    /// Events in them.
    pub archived_events: u64,
    /// Events erased from them (deleted streams).
    pub erased_events: u64,
    /// Deleted streams.
    pub deleted_streams: u64,
    /// Archive files that could not be opened (their ranges cannot be read).
    pub unreadable_archives: u64,
}

impl PartitionStorage {
    /// Uncompressed bytes per archive byte (0 with no archives).
    pub fn archive_ratio(&self) -> f64 {
        if self.archive_bytes == 0 { 0.0 } else { self.archived_bytes as f64 / self.archive_bytes as f64 }
    }
}

pub(crate) fn storage(part: &Partition) -> Result<PartitionStorage> {
    let mut s = PartitionStorage {
        partition: part.id,
        deleted_streams: part.tombstones.all().len() as u64,
        ..PartitionStorage::default()
    };
    for (slot, _) in part.snapshot() {
        match slot.state() {
            State::Archived(a) => {
                s.archives += 1;
                s.archive_bytes += a.file_len();
                s.archived_bytes += a.data_len();
                s.archived_events += a.events();
                s.erased_events = a.audit().iter().fold(s.erased_events, |sum, r| sum.saturating_add(r.events));
            }
            State::Failed(_) if slot.is_archive() => s.unreadable_archives += 1,
            _ => {
                // A segment compacted away since the list was taken is simply gone.
                match std::fs::metadata(&slot.path) {
                    Ok(m) => {
                        s.segments += 1;
                        s.segment_bytes += m.len();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("stat", &slot.path, e)),
                }
            }
        }
    }
    Ok(s)
}
