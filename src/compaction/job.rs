//! A compaction job: the policy's decisions carried out, one partition at a time, crash-safely.
//! A compaction of a run of consecutive sealed segments (`archive_run`; FORMAT.md §15.2):
//!
//! 1. reads their batches (through their mappings) and cuts the run's position range into
//!    pieces of at most `max_archive_bytes` of batches;
//! 2. writes each piece's archive under a temporary name, fsyncs it, renames it to
//!    `{base}.arc` and fsyncs the directory;
//! 3. swaps the archives in for the segments in the partition's list of files (reads in flight
//!    keep their mappings of the segments: removing a file leaves its mappings valid; later
//!    reads go to the archives);
//! 4. removes the segments and their indexes, and fsyncs the directory.
//!
//! A crash before step 4 finishes leaves archives beside segments; opening the partition
//! finishes the job if the archives cover the segments entirely, and rolls it back
//! otherwise (`log::recovery::reconcile_archives`). A damaged file is skipped and reported;
//! the rest of the partition is compacted around it: if a segment of a run turns out damaged
//! while it is read, the job removes what it wrote (no segment was removed yet), the segment is
//! reported in `CompactionReport::skipped`, and the segments before and after it are archived
//! as runs of their own.
//!
//! Batches of deleted streams are left out of what is archived, and so are the batches whose
//! events their stream's metadata all hides (`max_count`, `max_age`, `truncate_before`, a soft
//! delete, as of the job's start): reclaimed, they are gone even if the rule is loosened later,
//! as after a KurrentDB scavenge. Their audit record's `deleted_at` is when the tombstone, or
//! the metadata rule, was written. A batch only partly hidden is kept whole (reads still hide
//! its hidden events).
//!
//! `rewrite_archive` erases deleted streams (and hidden batches) from an archive: the new image is written under the
//! same name, then opened and checked, and replaces the old one in memory (reads in flight keep
//! the old mapping). A compaction that finds deleted streams also erases their snapshots, by a
//! rewrite of the partition's sidecar under the sidecar's writer lock.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::clock::now_nanos;
use crate::error::{Error, Result};
use crate::format::archive::{self as arc_format, AuditRecord, Reason, Source};
use crate::format::batch;
use crate::format::index;
use crate::log::sealed::SealedSegment;
use crate::log::stream_meta::{Rule, Visible};
use crate::log::{Archive, Partition, Segment, State, View};
use crate::router::stream_hash;

use super::build::{self, BatchRef, BuildOptions, Plan};
use super::policy::{self, Weigh};
use super::{CompactionOptions, CompactionProgress, CompactionReport, SnapshotIndex};

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
    sealed: Arc<SealedSegment>,
    reason: Reason,
}

/// The compaction of one partition: what it works on, and what it has done so far.
struct Job<'a, 'p> {
    part: &'a Partition,
    snapshots: &'a dyn SnapshotIndex,
    /// The partition's deleted streams, with when they were deleted.
    deleted: HashMap<String, u64>,
    /// The streams whose metadata hides some of their events now: what it shows (judged
    /// against the stream's last durable version), when the rule was written, and that last
    /// durable version, whose batch is never erased.
    rules: HashMap<String, (Visible, u64, u64)>,
    opts: &'a CompactionOptions,
    pace: &'a mut Pace<'p>,
    report: CompactionReport,
}

/// The archives a job has written so far: first position and path.
type Written = Vec<(u64, PathBuf)>;

/// Applies the policy to one partition (with `force`, every sealed segment is archived).
fn compact_partition(
    part: &Partition,
    snapshots: &dyn SnapshotIndex,
    opts: &CompactionOptions,
    force: bool,
    pace: &mut Pace<'_>,
) -> Result<CompactionReport> {
    let _one_at_a_time = part.compaction.lock();
    let deleted: HashMap<String, u64> = part.tombstones.all().into_iter().collect();
    let mut rules = HashMap::new();
    let now = now_nanos();
    for rec in part.metas.all() {
        if deleted.contains_key(&rec.stream) {
            continue;
        }
        // Against the durable end only: in `Buffered` mode events past it may yet be lost, and
        // what they would push out of a `max_count` must stay.
        let Some(last) = part.last_durable_version(&rec.stream, stream_hash(&rec.stream))? else { continue };
        let vis = Rule::of(&rec).visible(Some(last), now);
        // The batch holding the last version is kept whatever the rule hides: it is what
        // tells the stream's version to the next append (FORMAT.md §19.5).
        let vis = Visible { from_version: vis.from_version.min(last), ..vis };
        if vis.hides_any() {
            rules.insert(rec.stream, (vis, rec.written_at, last));
        }
    }
    let mut job = Job { part, snapshots, deleted, rules, opts, pace, report: CompactionReport::default() };
    let units = part.snapshot();
    let Some((_, sealed_units)) = units.split_last() else { return Ok(job.report) };
    if !job.deleted.is_empty() || !job.rules.is_empty() {
        job.erase_deleted(sealed_units)?;
    }
    let chosen = job.choose(sealed_units, force)?;
    // Consecutive chosen segments are archived together.
    let mut run: Vec<Chosen> = Vec::new();
    for c in chosen {
        if run.last().is_some_and(|l| l.end != c.slot.base || l.reason != c.reason) {
            job.archive_around_damage(std::mem::take(&mut run))?;
        }
        run.push(c);
    }
    if !run.is_empty() {
        job.archive_around_damage(run)?;
    }
    Ok(job.report)
}

impl Job<'_, '_> {
    /// When `b` is to be erased: a batch of a deleted stream (when it was deleted), or one
    /// whose events its stream's metadata all hides (when the rule was written). Batches
    /// only partly hidden are kept whole.
    fn erased_at(&self, b: &batch::BatchView<'_>) -> Option<u64> {
        if let Some(at) = self.deleted.get(b.stream_id) {
            return Some(*at);
        }
        let (vis, at, stream_last) = self.rules.get(b.stream_id)?;
        let last = b.first_version + u64::from(b.event_count).saturating_sub(1);
        (last < *stream_last && !vis.shows(last, b.timestamp)).then_some(*at)
    }

    /// Deleted streams' snapshots go from the sidecar, and archives holding their events (or
    /// events that metadata hides) are rewritten without them.
    fn erase_deleted(&mut self, sealed_units: &[(Arc<Segment>, u64)]) -> Result<()> {
        if !self.deleted.is_empty() {
            match self.snapshots.erase(&|s| self.deleted.contains_key(s)) {
                Ok(n) => self.report.snapshots_erased += n,
                Err(e) => self.report.skipped.push(format!("erasing snapshots of deleted streams: {e}")),
            }
        }
        for (slot, _) in sealed_units {
            if let State::Archived(a) = slot.state() {
                let done = policy::holds_deleted(slot, &a, &self.deleted, &self.rules)
                    .and_then(|holds| if holds { self.rewrite_archive(slot, &a) } else { Ok(()) });
                self.skip_damaged(done)?;
            }
        }
        Ok(())
    }

    /// The sealed segments the policy chooses, oldest first.
    fn choose(&mut self, sealed_units: &[(Arc<Segment>, u64)], force: bool) -> Result<Vec<Chosen>> {
        let part = self.part;
        let mut candidates = Vec::new();
        for (slot, end) in sealed_units {
            if slot.is_archive() || matches!(slot.state(), State::Open(_)) {
                continue;
            }
            match slot.view(*end, &part.io, &part.report) {
                Ok(View::Sealed(s)) => candidates.push((slot.clone(), *end, s)),
                Ok(_) => continue,
                Err(e) => self.skip_damaged(Err(e))?,
            }
        }
        let mut hot: u64 = candidates.iter().map(|c| c.2.len()).sum();
        let mut chosen = Vec::new();
        let now = now_nanos();
        let retention = u64::try_from(self.opts.retention.as_nanos()).unwrap_or(u64::MAX);
        // A stream's coldness is looked up once per job: its last version, then that event's
        // timestamp (one index walk and one read, only for streams without a snapshot past
        // an old segment).
        let coldness = std::cell::RefCell::new(HashMap::<String, bool>::new());
        let cold = |stream: &str| -> Result<bool> {
            if let Some(known) = coldness.borrow().get(stream) {
                return Ok(*known);
            }
            let hash = stream_hash(stream);
            let newest = match part.last_version(stream, hash)? {
                Some(v) => part.read_stream(stream, hash, v, 1)?.first().map(|e| e.timestamp_nanos),
                None => None,
            };
            // No visible last event: hidden by its metadata (a soft delete, an age), so it is
            // read by no one now and archiving it changes no read.
            let is_cold = newest.is_none_or(|t| now.saturating_sub(t) >= retention);
            coldness.borrow_mut().insert(stream.to_owned(), is_cold);
            Ok(is_cold)
        };
        for (slot, end, sealed) in candidates {
            let weigh = Weigh {
                dir: &part.dir,
                snapshots: self.snapshots,
                deleted: &self.deleted,
                rules: &self.rules,
                opts: self.opts,
                force,
                now,
                cold: &cold,
            };
            match policy::choose(&weigh, &slot, &sealed, hot) {
                Ok(Some(reason)) => {
                    hot -= sealed.len();
                    self.pace.plan(sealed.len());
                    chosen.push(Chosen { slot, end, sealed, reason });
                }
                Ok(None) => {}
                // A damaged segment is left where it is; the rest goes on (it breaks the run,
                // so no archive spans it).
                Err(e) => self.skip_damaged(Err(e))?,
            }
        }
        Ok(chosen)
    }

    /// Archives a run; if a segment of it turns out damaged (its batches are checked only
    /// here), the segments before and after it are archived without it.
    fn archive_around_damage(&mut self, mut run: Vec<Chosen>) -> Result<()> {
        loop {
            if run.is_empty() {
                return Ok(());
            }
            let keep = run.clone();
            match self.archive_run(run) {
                Err(Error::Corruption { path, offset, reason }) => {
                    let Some(k) = keep.iter().position(|c| c.slot.path == path) else {
                        return self.skip_damaged(Err(Error::Corruption { path, offset, reason }));
                    };
                    self.report.skipped.push(Error::Corruption { path, offset, reason }.to_string());
                    let mut before = keep;
                    let after = before.split_off(k + 1);
                    before.pop();
                    self.archive_around_damage(before)?;
                    run = after;
                }
                other => return self.skip_damaged(other),
            }
        }
    }

    /// Damage to one file is recorded in the report and compaction goes on with the others;
    /// any other error (I/O, a full disk) stops it.
    fn skip_damaged(&mut self, done: Result<()>) -> Result<()> {
        match done {
            Err(e @ (Error::Corruption { .. } | Error::UnsupportedVersion { .. })) => {
                self.report.skipped.push(e.to_string());
                Ok(())
            }
            other => other,
        }
    }

    fn build_opts(&self) -> BuildOptions {
        BuildOptions { level: self.opts.level, block_bytes: self.opts.block_bytes, dictionary: self.opts.dictionary }
    }

    /// Archives a run of consecutive sealed segments (steps 1 to 4 of the module's protocol).
    fn archive_run(&mut self, run: Vec<Chosen>) -> Result<()> {
        let written = self.write_pieces(&run)?;
        if let Err(e) = self.swap_in(&run, &written) {
            self.remove_written(&written);
            return Err(e);
        }
        // Step 4: the segments go. From here a crash is finished on open. The index first:
        // a segment left without one is still seen (and removed) on open.
        let part = self.part;
        for c in &run {
            let idx = part.dir.join(index::file_name(c.slot.base));
            if idx.exists() {
                part.io.remove_file(&idx)?;
            }
            part.io.remove_file(&c.slot.path)?;
        }
        part.io.sync_dir(&part.dir)?;
        self.report.segments_archived += run.len() as u64;
        self.report.archives_written += written.len() as u64;
        Ok(())
    }

    /// Steps 1 and 2: the run's batches, less the deleted streams', written as archives of at
    /// most `max_archive_bytes` each. On failure the archives written so far are removed.
    fn write_pieces(&mut self, run: &[Chosen]) -> Result<Written> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else { return Ok(Vec::new()) };
        let sources: Vec<Source> =
            run.iter().map(|c| Source { base_position: c.slot.base, bytes: c.sealed.len() }).collect();
        let template = Plan {
            partition: self.part.id,
            base: first.slot.base,
            end: last.end,
            job_end: last.end,
            reason: first.reason,
            sources: &sources,
            audit: &[],
        };
        let mut written: Written = Vec::new();
        let mut piece: Vec<BatchRef<'_>> = Vec::new();
        let mut piece_bytes = 0u64;
        let mut piece_base = first.slot.base;
        let mut erased = Erased::default();
        let mut failure: Option<Error> = None;
        for c in run {
            self.report.bytes_in += c.sealed.len();
            let walked = c.sealed.walk(&c.slot, &mut |b, bytes| {
                if failure.is_some() {
                    return;
                }
                if let Some(at) = self.erased_at(b) {
                    erased.add(b.stream_id, at, b.base_position, b.event_count);
                    self.report.events_erased += u64::from(b.event_count);
                    return;
                }
                if piece_bytes + bytes.len() as u64 > self.opts.max_archive_bytes && !piece.is_empty() {
                    let plan = Plan { base: piece_base, end: b.base_position, ..template };
                    match self.write_piece(&plan, std::mem::take(&mut piece), erased.take()) {
                        Ok(w) => written.push(w),
                        Err(e) => failure = Some(e),
                    }
                    piece_base = b.base_position;
                    piece_bytes = 0;
                }
                piece.push(build::batch_ref(b, bytes));
                piece_bytes += bytes.len() as u64;
                self.report.events_archived += u64::from(b.event_count);
            });
            if let Some(e) = walked.err().or(failure.take()) {
                self.remove_written(&written);
                return Err(e);
            }
        }
        let plan = Plan { base: piece_base, ..template };
        match self.write_piece(&plan, piece, erased.take()) {
            Ok(w) => written.push(w),
            Err(e) => {
                self.remove_written(&written);
                return Err(e);
            }
        }
        Ok(written)
    }

    /// Builds one archive and writes it durably under its name.
    fn write_piece(
        &mut self,
        plan: &Plan<'_>,
        batches: Vec<BatchRef<'_>>,
        audit: Vec<AuditRecord>,
    ) -> Result<(u64, PathBuf)> {
        let part = self.part;
        let plan = Plan { audit: &audit, ..*plan };
        let opts = self.build_opts();
        let pace = &mut *self.pace;
        let image = build::build(&plan, batches, opts, &mut |n| pace.done(n))?;
        let name = arc_format::file_name(plan.base);
        if let Err(e) = part.io.write_atomic(&part.dir, &name, &image) {
            // The rename may have happened before the failure: leave neither file behind.
            for leftover in [part.dir.join(&name), part.dir.join(format!("{name}.tmp"))] {
                if leftover.exists() {
                    let _ = part.io.remove_file(&leftover);
                }
            }
            return Err(e);
        }
        self.report.bytes_out += image.len() as u64;
        Ok((plan.base, part.dir.join(name)))
    }

    /// Step 3: the archives take the run's place in the partition's segment list.
    fn swap_in(&self, run: &[Chosen], written: &Written) -> Result<()> {
        let part = self.part;
        let Some(first) = run.first() else { return Ok(()) };
        let mut slots = Vec::with_capacity(written.len());
        for (base, path) in written {
            let a = Archive::open_checked(path, &part.io, part.id, *base, &part.archive_cache)?;
            slots.push(Arc::new(Segment::archived(part.id, &part.dir, *base, State::Archived(Arc::new(a)))));
        }
        let mut segments = part.segments.write();
        let Some(at) = segments.iter().position(|s| Arc::ptr_eq(s, &first.slot)) else {
            return Err(Error::corruption(&first.slot.path, 0, "segment vanished during compaction"));
        };
        segments.splice(at..at + run.len(), slots);
        Ok(())
    }

    /// Removes archives written by a job that then failed (before any segment was removed,
    /// so the segments still hold everything); a crash instead is rolled back on open.
    fn remove_written(&self, written: &Written) {
        for (_, path) in written {
            let _ = self.part.io.remove_file(path);
        }
        let _ = self.part.io.sync_dir(&self.part.dir);
    }

    /// Rewrites an archive without the deleted streams' batches (same range, same name: the
    /// rename replaces it atomically).
    fn rewrite_archive(&mut self, slot: &Arc<Segment>, a: &Arc<Archive>) -> Result<()> {
        let part = self.part;
        // (This also maps the old file, with its meta section, before the rename replaces it:
        // readers holding the old archive go on reading the old file.)
        let data = a.data()?;
        self.pace.plan(data.len() as u64);
        let mut keep = Vec::new();
        let mut erased = Erased::default();
        let mut erased_events = 0;
        let mut events = 0;
        for p in a.positions()? {
            let p = p.get();
            let bytes = data.get(p.offset as usize..).unwrap_or(&[]);
            let b = batch::decode(bytes).map_err(|bad| {
                Error::corruption(&a.path, 0, format!("batch at uncompressed offset {}: {bad}", p.offset))
            })?;
            if let Some(at) = self.erased_at(&b) {
                erased.add(b.stream_id, at, b.base_position, b.event_count);
                erased_events += u64::from(b.event_count);
            } else {
                events += u64::from(b.event_count);
                keep.push(build::batch_ref(&b, bytes));
            }
        }
        let mut audit = a.audit()?;
        audit.extend(erased.take());
        let sources = a.sources()?;
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
        let opts = self.build_opts();
        let pace = &mut *self.pace;
        let image = build::build(&plan, keep, opts, &mut |n| pace.done(n))?;
        part.io.write_atomic(&part.dir, &arc_format::file_name(h.base_position), &image)?;
        let fresh = Archive::open_checked(&a.path, &part.io, part.id, h.base_position, &part.archive_cache)?;
        slot.set_state(State::Archived(Arc::new(fresh)));
        let report = &mut self.report;
        report.archives_written += 1;
        report.archives_rewritten += 1;
        report.events_erased += erased_events;
        report.events_archived += events;
        report.bytes_out += image.len() as u64;
        Ok(())
    }
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

/// Applies the policy (or, with `force`, archives every sealed segment) to every partition,
/// each with its snapshots.
pub(crate) fn compact_store(
    partitions: &[(Arc<Partition>, &dyn SnapshotIndex)],
    opts: &CompactionOptions,
    force: bool,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(CompactionProgress),
) -> Result<CompactionReport> {
    crate::trace::span!(_compact, INFO, "strata::compaction", "compact", force, partitions = partitions.len());
    let started = Instant::now();
    let mut total = CompactionReport::default();
    let mut pace = Pace::new(opts.throttle, stop, progress);
    for (part, snapshots) in partitions {
        if stop.load(Ordering::Acquire) {
            break;
        }
        crate::trace::timer!(one, DEBUG);
        let r = compact_partition(part, *snapshots, opts, force, &mut pace);
        #[cfg(feature = "tracing")]
        trace_partition(part.id, &r, one.us());
        let r = r?;
        total.add(&r);
    }
    total.elapsed = started.elapsed();
    #[cfg(feature = "tracing")]
    trace_store(&total);
    Ok(total)
}

/// The trace event of one partition's compaction (feature `tracing`), and one warning per
/// file it skipped or for its failure.
#[cfg(feature = "tracing")]
fn trace_partition(partition: u32, r: &Result<CompactionReport>, duration_us: u64) {
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            crate::trace::event!(WARN, "strata::compaction", partition, error = %e, "compaction failed");
            return;
        }
    };
    for why in &r.skipped {
        crate::trace::event!(WARN, "strata::compaction", partition, reason = %why, "damaged file skipped");
    }
    crate::trace::event!(
        DEBUG,
        "strata::compaction",
        partition,
        segments = r.segments_archived,
        archives = r.archives_written,
        rewritten = r.archives_rewritten,
        events_archived = r.events_archived,
        events_erased = r.events_erased,
        bytes_in = r.bytes_in,
        bytes_out = r.bytes_out,
        skipped = r.skipped.len(),
        duration_us,
        "partition compacted"
    );
}

/// The trace event of a whole compaction (feature `tracing`): at INFO if it did something,
/// at DEBUG if not (the background compactor runs every `interval`).
#[cfg(feature = "tracing")]
fn trace_store(r: &CompactionReport) {
    let did = r.segments_archived + r.archives_written + r.events_erased + r.snapshots_erased > 0;
    macro_rules! done {
        ($level:ident) => {
            crate::trace::event!(
                $level,
                "strata::compaction",
                segments = r.segments_archived,
                archives = r.archives_written,
                rewritten = r.archives_rewritten,
                events_archived = r.events_archived,
                events_erased = r.events_erased,
                snapshots_erased = r.snapshots_erased,
                bytes_in = r.bytes_in,
                bytes_out = r.bytes_out,
                skipped = r.skipped.len(),
                duration_us = r.elapsed.as_micros() as u64,
                "compaction done"
            )
        };
    }
    if did || !r.skipped.is_empty() {
        done!(INFO);
    } else {
        done!(DEBUG);
    }
}
