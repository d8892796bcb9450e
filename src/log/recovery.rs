//! What opening a partition repairs: temporary files of interrupted writes are removed,
//! compactions a crash interrupted are finished or rolled back (every position then lives in
//! exactly one file), a stale index beside the active segment goes, and the active segment's
//! torn tail is cut. Damage anywhere else is an error naming the file and offset. FORMAT.md §9.1
//! gives the steps.
//!
//! `reconcile_archives` (FORMAT.md §15.4) opens every archive of the directory first: an I/O
//! error fails the open, while an archive whose bytes do not check out is kept, as an
//! unreadable slot that fails the reads reaching it. `Store::storage` counts such archives
//! (`PartitionStorage::unreadable_archives`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::active_index as aix;
use crate::format::archive as arc_format;
use crate::format::batch;
use crate::format::index;
use crate::format::index::StreamEntry;
use crate::format::poison;
use crate::format::segment::{self as seg_format, End, Mode};
use crate::io::{FileHandle, Io, mmap};
use crate::log::active::{self, Frozen, MemIndex, OpenSegment, run_last_version};
use crate::log::archive::Archive;
use crate::log::block_cache::BlockCache;
use crate::log::journal::Journal;
use crate::log::segment::{Segment, State};
use crate::report::{RecoveryAction, Report};
use crate::router::stream_hash;

/// The files of a partition directory, by kind: first positions of its segments (sorted),
/// of its index files and of its archives.
pub(crate) struct Files {
    pub bases: Vec<u64>,
    pub indexes: Vec<u64>,
    pub archive_bases: Vec<u64>,
    /// First positions of active index journals (FORMAT.md §8.4).
    pub journals: Vec<u64>,
}

fn parse_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) { stem.parse().ok() } else { None }
}

/// Lists the partition's files, removing (and reporting) temporary files of interrupted
/// atomic writes.
pub(crate) fn list_files(dir: &Path, id: u32, io: &Io, report: &Report) -> Result<Files> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::corruption(dir, 0, format!("partition {id} directory is missing")));
        }
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut files = Files { bases: Vec::new(), indexes: Vec::new(), archive_bases: Vec::new(), journals: Vec::new() };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            io.remove_file(&entry.path())?;
            report.push(RecoveryAction::RemovedTempFile { path: entry.path() });
        } else if let Some(base) = parse_name(name, ".log") {
            files.bases.push(base);
        } else if let Some(base) = parse_name(name, ".idx") {
            files.indexes.push(base);
        } else if let Some(base) = parse_name(name, ".arc") {
            files.archive_bases.push(base);
        } else if let Some(base) = parse_name(name, ".aix") {
            files.journals.push(base);
        }
    }
    files.bases.sort_unstable();
    Ok(files)
}

/// An index file beside the active segment. An index is written only after the next segment's
/// file is durable, so a valid one means a newer segment was lost: refuse, rather than reuse
/// its positions. One that does not check out is a leftover and goes.
pub(crate) fn stale_active_index(dir: &Path, id: u32, active_base: u64, io: &Io, report: &Report) -> Result<()> {
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
    io.sync_dir(dir)?;
    report.push(RecoveryAction::RemovedStaleIndex { path });
    Ok(())
}

/// Applies a poison marker (FORMAT.md §10.5), if the partition has one: the active segment is
/// cut to the durable end the poisoned writer recorded (the bytes after it were written before
/// a failed `fdatasync` or write, and may be pages whose write-back failed), the cut made
/// durable, and the marker removed. A marker that does not check out is `Corruption`: it is
/// written atomically, so damage to it is damage.
pub(crate) fn poison_marker(dir: &Path, id: u32, active_base: u64, io: &Io, report: &Report) -> Result<()> {
    let path = dir.join(poison::FILE_NAME);
    if !path.exists() {
        return Ok(());
    }
    // Through `Io`, like every other file open reads; one byte more than a marker holds, so a
    // longer file reads as one (and is refused).
    let file = io.open_read(&path)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file.std(), 65), &mut bytes)
        .map_err(|e| Error::io("read", &path, e))?;
    let m = poison::decode(&bytes).map_err(|e| e.into_error(&path))?;
    if m.partition != id {
        return Err(Error::corruption(&path, 12, format!("poison marker of partition {}", m.partition)));
    }
    // A marker naming an older segment: a roll failed after its new segment's rename, and
    // poisoned with the old, fully synced segment named. Nothing to cut.
    if m.segment == active_base {
        let seg = dir.join(seg_format::file_name(active_base));
        let file = io.open_rw(&seg)?;
        let len = file.len()?;
        if len > m.durable_end {
            file.set_len(m.durable_end)?;
            file.sync_data()?;
            crate::trace::event!(
                WARN,
                "strata::recovery",
                partition = id,
                segment = active_base,
                cut_bytes = len - m.durable_end,
                "poison marker applied: cut to the durable end"
            );
            report.push(RecoveryAction::TruncatedTornTail {
                path: seg,
                offset: m.durable_end,
                discarded_bytes: len - m.durable_end,
                reason: "written before a failed fdatasync or write: the partition was poisoned (POISON marker)".into(),
            });
        }
    }
    io.remove_file(&path)?;
    io.sync_dir(dir)
}

/// Removes journals of segments that are no longer active (a crash between a roll and the
/// removal of the full segment's journal): only the active segment's journal is read.
pub(crate) fn stale_journals(dir: &Path, active_base: u64, journals: &[u64], io: &Io) -> Result<()> {
    for &base in journals.iter().filter(|&&b| b != active_base) {
        io.remove_file(&dir.join(aix::file_name(base)))?;
    }
    Ok(())
}

/// The partition's segment slots in position order: one per segment (not loaded yet; the
/// last, the active one, is replaced by its open form) and one per archive (or its error).
/// An archive stands for its whole range: the next file must start where it ends.
pub(crate) fn slots(dir: &Path, id: u32, bases: &[u64], archives: Vec<OpenedArchive>) -> Result<Vec<Arc<Segment>>> {
    let mut segments: Vec<Arc<Segment>> =
        bases.iter().map(|&b| Arc::new(Segment::new(id, dir, b, State::Unloaded))).collect();
    for (base, archive) in archives {
        let state = match archive {
            Ok(a) => State::Archived(a),
            Err(e) => State::Failed(e),
        };
        segments.push(Arc::new(Segment::archived(id, dir, base, state)));
    }
    segments.sort_by_key(|s| s.base);
    for pair in segments.windows(2) {
        if let [a, next] = pair
            && let State::Archived(arc) = a.state()
            && arc.header.end_position != next.base
        {
            return Err(Error::corruption(
                &a.path,
                24,
                format!("archive ends at position {}, the next file starts at {}", arc.header.end_position, next.base),
            ));
        }
    }
    Ok(segments)
}

/// What recovering the active segment leaves for the writer.
pub(crate) struct Recovered {
    pub open: OpenSegment,
    pub data_end: u64,
    pub last_timestamp: u64,
    pub file_len: u64,
    pub journal: Journal,
    /// Bytes of the segment the scan read (what its journal did not cover).
    pub scanned: u64,
}

/// Recovers the active segment: rebuilds its in-memory index from its journal (FORMAT.md
/// §8.4) and a scan of what the journal does not cover, truncates a torn tail, makes what
/// remains durable, and journals what the scan found.
pub(crate) fn recover_active(
    dir: &Path,
    id: u32,
    base: u64,
    io: &Io,
    report: &Report,
    journal_interval: u64,
) -> Result<Recovered> {
    crate::trace::timer!(started, DEBUG);
    let path = dir.join(seg_format::file_name(base));
    let file = io.open_rw(&path)?;
    let file_len = file.len()?;
    let mut mem = MemIndex::new(base);
    let mut found: Vec<(Arc<str>, u64, u32, u32)> = Vec::new();
    let mut frozen: Option<Frozen> = None;
    let (end, journaled, start) = {
        // Dropped before any truncation (see `mmap::recovering`).
        let map = mmap::recovering(&file)?;
        let header = seg_format::decode_header(&map).map_err(|e| e.into_error(&path))?;
        if header.partition != id || header.base_position != base {
            return Err(Error::corruption(
                &path,
                0,
                format!("segment header says partition {} base {}", header.partition, header.base_position),
            ));
        }
        let mut journaled = read_journal(dir, id, base, &map, &mut mem, &mut frozen, io, report);
        loop {
            let (start, next, mut last_timestamp) = journaled
                .as_ref()
                .map_or((seg_format::HEADER_LEN as u64, base, 0), |j| (j.covered.0, j.covered.1, j.last_timestamp));
            let mut refused = None;
            let start_at = usize::try_from(start).unwrap_or(usize::MAX);
            let scanned = {
                let mut frozen_last = |stream: &str| match &frozen {
                    Some(f) => frozen_last_version(f.streams(), &map, stream)
                        .ok_or_else(|| "an indexed batch has no readable stream id".to_owned()),
                    None => Ok(None),
                };
                seg_format::scan_from(&map, start_at, next, Mode::Active, |off, b| {
                    last_timestamp = b.timestamp;
                    match (&refused, mem.scanned_after(off, b, &mut frozen_last)) {
                        (None, Err(why)) => refused = Some((off, why)),
                        (_, Ok(key)) => found.push((key, b.first_version, b.event_count, b.length as u32)),
                        _ => {}
                    }
                })
            };
            let failed = match (scanned, refused) {
                (Err(e), _) => Err(Error::corruption(&path, e.offset, e.reason)),
                (Ok(_), Some((offset, why))) => Err(Error::corruption(&path, offset, why)),
                (Ok(end), None) => Ok(end),
            };
            match failed {
                Ok(end) => break ((end, last_timestamp), journaled, start),
                // The journal may be what disagrees with the segment (a section or record
                // consistent with itself but not with the batches after it): the segment
                // wins. The journal is dropped whole and the segment scanned from its start,
                // which fails open only if the segment itself is damaged.
                Err(e) if journaled.is_some() => {
                    report.push(RecoveryAction::DroppedActiveIndex {
                        path: dir.join(aix::file_name(base)),
                        offset: 0,
                        reason: format!("the segment after it does not follow it: {e}"),
                    });
                    journaled = None;
                    frozen = None;
                    mem = MemIndex::new(base);
                    found.clear();
                }
                Err(e) => return Err(e),
            }
        }
    };
    let (end, last_timestamp) = end;
    let data_end = end.data_end();
    // Zeros after the data are preallocated space and stay; a torn write is cut off.
    let mut file_len = file_len;
    #[cfg(feature = "tracing")]
    let torn_bytes = if matches!(end, End::TornTail { .. }) { file_len - data_end } else { 0 };
    if let End::TornTail { reason, .. } = end {
        file.set_len(data_end)?;
        report.push(RecoveryAction::TruncatedTornTail {
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
    // The journal goes on where its valid records end; what the scan found (now durable) is
    // journaled at once, so the next open need not scan it again.
    let journal_path = dir.join(aix::file_name(base));
    if journaled.is_none() && found.is_empty() && journal_path.exists() {
        // A dropped journal of a segment with nothing to journal: nothing will replace it.
        io.remove_file(&journal_path)?;
    }
    let covered = journaled.as_ref().map_or((seg_format::HEADER_LEN as u64, base), |j| j.covered);
    let frozen_only = journaled.as_ref().is_some_and(|j| j.frozen_only);
    let journal_file = journaled.and_then(|j| j.file);
    let mut journal = Journal::new(dir.to_path_buf(), id, base, journal_file, covered, journal_interval);
    if frozen_only && found.is_empty() {
        journal.set_frozen_only();
    }
    for (key, first_version, count, len) in found {
        journal.push(key, first_version, count, len, last_timestamp);
    }
    journal.write(io);
    let scanned = data_end.saturating_sub(start);
    crate::trace::event!(
        DEBUG,
        "strata::recovery",
        partition = id,
        segment = base,
        data_end,
        journaled_bytes = start.saturating_sub(seg_format::HEADER_LEN as u64),
        scanned_bytes = scanned,
        torn_bytes,
        duration_us = started.us(),
        "active segment recovered"
    );
    let open = OpenSegment::with_frozen(Arc::new(file), frozen, mem);
    Ok(Recovered { open, data_end, last_timestamp, file_len, journal, scanned })
}

/// A usable journal of the active segment.
struct Journaled {
    /// Segment offset and position its records cover up to.
    covered: (u64, u64),
    last_timestamp: u64,
    /// The file, open for appending after its valid records, if it is to be appended to.
    file: Option<(FileHandle, u64)>,
    /// It holds a frozen section and no record.
    frozen_only: bool,
}

/// The last version of `stream` in a frozen section's sorted `entries`, its ids read from the
/// segment `map`; `None` (outer) if an id there cannot be read.
fn frozen_last_version(entries: &[StreamEntry], map: &[u8], stream: &str) -> Option<Option<u64>> {
    let run = active::find_run(entries, stream_hash(stream), |offset| {
        let id = usize::try_from(offset).ok().and_then(|o| map.get(o..)).and_then(batch::peek_stream_id);
        id.map(|id| id == stream).ok_or(())
    })
    .ok()?;
    Some(run_last_version(run))
}

/// Rebuilds `mem` from the active segment's journal, if there is one that checks out: its
/// frozen section (mapped, into `frozen`, not rebuilt: `mem` then holds what follows it), and
/// its records, which chain from the section's end or the segment's start, each continuing the
/// stream versions of the ones before; the last batch covered must be in the segment as
/// described. A journal that fails is dropped from its first bad record on (reported; `mem`
/// keeps what came before); one whose frozen section does not check out, or whose contents do
/// not match the segment, is dropped whole, and `mem` is emptied again.
#[allow(clippy::too_many_arguments)]
fn read_journal(
    dir: &Path,
    id: u32,
    base: u64,
    map: &[u8],
    mem: &mut MemIndex,
    frozen: &mut Option<Frozen>,
    io: &Io,
    report: &Report,
) -> Option<Journaled> {
    let path = dir.join(aix::file_name(base));
    // Through `Io`, like every other file open reads (fault plans see it). Unreadable: none.
    let file = io.open_read(&path).ok()?;
    let jmap = mmap::active_index(&file).ok()?;
    drop(file);
    let dropped = |offset: u64, reason: String| {
        report.push(RecoveryAction::DroppedActiveIndex { path: path.clone(), offset, reason });
    };
    let scanned = match aix::scan(&jmap, id, base) {
        Ok(s) => s,
        Err(m) => {
            dropped(0, m.what);
            return None;
        }
    };
    let mut covered = (seg_format::HEADER_LEN as u64, base);
    let mut last = None;
    let mut last_timestamp = 0;
    let frozen_entries = scanned.frozen.as_ref().map_or(&[][..], |f| f.streams);
    if let Some(fv) = &scanned.frozen {
        // The section must describe this segment: its last batch is there, whole, where the
        // section ends, and listed.
        let h = fv.header;
        let b =
            usize::try_from(h.last_offset).ok().and_then(|o| map.get(o..)).and_then(|rest| batch::decode(rest).ok());
        let listed = |v: &batch::BatchView<'_>| {
            let hash = stream_hash(v.stream_id);
            let lo = fv.streams.partition_point(|e| e.get().stream_hash < hash);
            fv.streams.get(lo..).unwrap_or(&[]).iter().map(|e| e.get()).take_while(|e| e.stream_hash == hash).any(|e| {
                e.offset == h.last_offset && e.first_version == v.first_version && e.event_count == v.event_count
            })
        };
        match b {
            Some(v)
                if h.last_offset + v.length as u64 == h.to_offset
                    && v.base_position + u64::from(v.event_count) == h.to_position
                    && listed(&v) =>
            {
                covered = (h.to_offset, h.to_position);
                last_timestamp = v.timestamp;
            }
            _ => {
                let at = h.last_offset;
                dropped(0, format!("its frozen section's last batch (at byte {at}) is not in the segment as listed"));
                return None;
            }
        }
        *mem = MemIndex::after_section(fv);
    }
    for r in &scanned.records {
        let mut frozen_last = |stream: &str| frozen_last_version(frozen_entries, map, stream).ok_or(());
        if let Err(stream) = mem.extend_journaled(r, &mut frozen_last) {
            *mem = MemIndex::new(base);
            dropped(0, format!("stream {stream:?} does not continue its versions"));
            return None;
        }
        last = Some((r.streams.get(r.last.stream as usize).copied().unwrap_or_default(), r.last));
        covered = (r.to_offset, r.to_position);
        last_timestamp = r.last_timestamp;
    }
    let frozen_only = scanned.frozen.is_some() && scanned.records.is_empty() && scanned.damage.is_none();
    let (valid_end, why) = (scanned.valid_end, scanned.damage.clone());
    let section = scanned.frozen.map(|f| (f.header, f.streams.len(), f.end));
    drop(scanned);
    // The journal must describe this segment: its last batch is there, whole and as listed.
    if let Some((stream, b)) = last {
        let matches = usize::try_from(b.offset)
            .ok()
            .and_then(|o| map.get(o..))
            .and_then(|rest| batch::decode(rest).ok())
            .is_some_and(|v| {
                v.length == b.len as usize
                    && v.base_position == b.position
                    && v.first_version == b.first_version
                    && v.event_count == b.event_count
                    && v.stream_id == stream
                    && v.timestamp == last_timestamp
            });
        if !matches {
            *mem = MemIndex::new(base);
            dropped(0, format!("its last batch (at byte {}) is not in the segment as listed", b.offset));
            return None;
        }
    }
    // New records go after the valid ones: cut whatever follows them. If the file cannot be
    // reopened or cut, the journal is dropped whole, and open scans the segment.
    let valid_end = valid_end as u64;
    let file = io.open_rw(&path).and_then(|f| {
        if why.is_some() {
            f.set_len(valid_end)?;
        }
        Ok(f)
    });
    let Ok(file) = file else {
        *mem = MemIndex::new(base);
        dropped(0, "it could not be opened for appending".into());
        return None;
    };
    if let Some(why) = why {
        dropped(valid_end, why);
    }
    *frozen = section.map(|(header, streams, end)| Frozen::new(jmap, header, streams, end));
    Some(Journaled { covered, last_timestamp, file: Some((file, valid_end)), frozen_only })
}

/// An archive file, opened, or the error that kept it from opening.
pub(crate) type OpenedArchive = (u64, Result<Arc<Archive>>);

/// Finishes or rolls back compactions interrupted by a crash, leaving every position in
/// exactly one place. A compaction writes all its archives (each durably, under a temporary
/// name, then renamed) before it removes a segment. Each archive names the segments it was
/// made from (its sources) and where the whole compaction's range ends, so the archives of one
/// compaction are known; while any of their sources is still there, the compaction was
/// interrupted: if its archives tile its range it is finished (the sources go), otherwise it
/// is rolled back (the archives go). An archive that cannot be read is never removed here:
/// reads of its range fail, typed, until someone looks at it.
pub(crate) fn reconcile_archives(
    dir: &Path,
    id: u32,
    io: &Io,
    report: &Report,
    bases: &mut Vec<u64>,
    archive_bases: Vec<u64>,
    cache: &Arc<BlockCache>,
) -> Result<Vec<OpenedArchive>> {
    let mut archives = open_archives(dir, id, io, archive_bases, cache)?;
    check_where_interrupted(&mut archives, bases)?;
    let mut finished = Vec::new();
    let mut rolled_back = Vec::new();
    let mut drop_archives = Vec::new();
    for ((start, end), (sources, pieces)) in interrupted_jobs(&archives, bases) {
        let mut at = start;
        for &k in &pieces {
            if let Some((b, Ok(a))) = archives.get(k)
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
                dir.join(arc_format::file_name(start)),
                0,
                format!(
                    "a compaction of positions {start}..{end} was interrupted after removing segments, \
                     and its archives do not cover that range (one is missing or unreadable)"
                ),
            ));
        }
        if at == end {
            // Finish it: the archives tile the range, the sources go.
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
            // Roll it back: every source is still there, the archives go.
            for &k in &pieces {
                let Some((base, _)) = archives.get(k) else { continue };
                let path = dir.join(arc_format::file_name(*base));
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
        report.push(RecoveryAction::CompactionRolledBack { removed: rolled_back, reason });
    }
    if !finished.is_empty() {
        report.push(RecoveryAction::CompactionFinished { removed: finished });
    }
    check_no_overlap(&archives, bases)?;
    Ok(archives)
}

/// Opens the partition's archives, by first position, reading each one's header and footer
/// only. An I/O error (too many open files) says nothing about an archive: it fails the open
/// rather than have reconciliation decide on partial knowledge. Damage is kept, as the
/// archive's error.
fn open_archives(
    dir: &Path,
    id: u32,
    io: &Io,
    archive_bases: Vec<u64>,
    cache: &Arc<BlockCache>,
) -> Result<Vec<OpenedArchive>> {
    let mut archives: Vec<OpenedArchive> = archive_bases
        .into_iter()
        .map(|b| {
            let path = dir.join(arc_format::file_name(b));
            (b, Archive::open(&path, io, id, b, cache).map(Arc::new))
        })
        .collect();
    archives.sort_by_key(|a| a.0);
    fail_on_io(&archives)?;
    Ok(archives)
}

fn fail_on_io(archives: &[OpenedArchive]) -> Result<()> {
    match archives.iter().find(|(_, a)| matches!(a, Err(Error::Io { .. } | Error::StorageFull { .. }))) {
        Some((_, Err(e))) => Err(e.clone()),
        _ => Ok(()),
    }
}

/// Checks the meta section (FORMAT.md §14.5 steps 10–14) of each archive that may belong to
/// an interrupted compaction, as every archive's was before its sources were read: one that
/// does not check out becomes unreadable (its error kept), as if it had not opened. The
/// others keep theirs for their first use.
///
/// Which ones may: a compaction's archives share its `job_end` (a header field), and its
/// range `[first source's base, job_end)` holds nothing but its sources and its archives
/// (it was a run of consecutive segments). So if one of its sources is still there, it is
/// reached from each of its archives, in the files sorted by first position, through that
/// compaction's archives only: a segment below `job_end` found that way, stepping over
/// archives with the same `job_end` (or unreadable ones, which might be its), marks the
/// archives stepped over. That finds every archive that `interrupted_jobs` would group,
/// and, after a clean close, only those beside a segment left unarchived (a damaged one,
/// say): open reads 128 bytes of the others.
fn check_where_interrupted(archives: &mut [OpenedArchive], bases: &[u64]) -> Result<()> {
    // Every file by first position: `Some(k)` the archive `archives[k]`, `None` a segment.
    let mut files: Vec<(u64, Option<usize>)> = bases.iter().map(|&b| (b, None)).collect();
    files.extend(archives.iter().enumerate().map(|(k, (b, _))| (*b, Some(k))));
    files.sort_unstable();
    let job_end = |k: usize| archives.get(k).and_then(|(_, a)| a.as_ref().ok()).map(|a| a.header.job_end);
    let mut check = vec![false; archives.len()];
    let mut i = 0;
    while i < files.len() {
        let Some((_, Some(k))) = files.get(i).copied() else {
            i += 1;
            continue;
        };
        let Some(end) = job_end(k) else {
            i += 1;
            continue;
        };
        // The run of files around `i` that may be this compaction's archives.
        let same = |f: Option<&(u64, Option<usize>)>| match f {
            Some((_, Some(j))) => job_end(*j).is_none_or(|e| e == end),
            _ => false,
        };
        let (mut lo, mut hi) = (i, i + 1);
        while lo > 0 && same(files.get(lo - 1)) {
            lo -= 1;
        }
        while same(files.get(hi)) {
            hi += 1;
        }
        let segment_below = |f: Option<&(u64, Option<usize>)>| matches!(f, Some((b, None)) if *b < end);
        if (lo > 0 && segment_below(files.get(lo - 1))) || segment_below(files.get(hi)) {
            for (_, k) in files.get(lo..hi).unwrap_or(&[]) {
                if let Some(c) = k.and_then(|k| check.get_mut(k)) {
                    *c = true;
                }
            }
        }
        i = hi;
    }
    for ((_, a), _) in archives.iter_mut().zip(&check).filter(|(_, c)| **c) {
        if let Ok(archive) = a
            && let Err(e) = archive.checked()
        {
            *a = Err(e);
        }
    }
    fail_on_io(archives)
}

/// The compactions with a source segment still present, by (first source, job end): each
/// with its sources and the indexes (in `archives`) of the archives it wrote.
type Jobs = BTreeMap<(u64, u64), (Vec<u64>, Vec<usize>)>;

fn interrupted_jobs(archives: &[OpenedArchive], bases: &[u64]) -> Jobs {
    let mut jobs = Jobs::new();
    for (k, (_, a)) in archives.iter().enumerate() {
        let Ok(a) = a else { continue };
        // Only archives `check_where_interrupted` checked can have a source present.
        if !a.is_checked() {
            continue;
        }
        let sources: Vec<u64> = a.sources().unwrap_or_default().iter().map(|s| s.base_position).collect();
        let Some(&first) = sources.first() else { continue };
        if sources.iter().any(|s| bases.contains(s)) {
            let job = jobs.entry((first, a.header.job_end)).or_insert_with(|| (sources.clone(), Vec::new()));
            job.1.push(k);
        }
    }
    jobs
}

/// What remains after reconciliation must not overlap: archives among themselves, or a
/// segment.
fn check_no_overlap(archives: &[OpenedArchive], bases: &[u64]) -> Result<()> {
    // By first position (the archives come sorted so, and have distinct names): one
    // overlapping another overlaps the next one after it, or the one before reaches into it.
    let ranges: Vec<(u64, u64, &Path)> = archives
        .iter()
        .filter_map(|(b, a)| a.as_ref().ok().map(|a| (*b, a.header.end_position, a.path.as_path())))
        .collect();
    let mut sorted_bases = bases.to_vec();
    sorted_bases.sort_unstable();
    let mut reach = 0u64;
    for (i, (lo, hi, path)) in ranges.iter().enumerate() {
        let next_inside = ranges.get(i + 1).is_some_and(|(l, _, _)| l < hi);
        let segment_inside = sorted_bases.get(sorted_bases.partition_point(|b| b < lo)).is_some_and(|b| b < hi);
        if next_inside || reach > *lo || segment_inside {
            return Err(Error::corruption(path, 16, format!("archive range {lo}..{hi} overlaps another file's")));
        }
        reach = reach.max(*hi);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::format::archive::{Header, Parts, Reason, Source};
    use crate::log::partition::{self, Partition};
    use crate::sync::HeadSignal;

    /// A partition of `n` archives, each standing for one position and holding no batch (as
    /// if its events were erased), then the active segment at `n`.
    fn partition_of_archives(dir: &Path, n: u64) {
        let io = Io::default();
        io.create_dir(dir).unwrap();
        for base in 0..n {
            let h = Header {
                version: arc_format::ARCHIVE_VERSION,
                partition: 0,
                base_position: base,
                end_position: base + 1,
                created: 0,
                job_end: base + 1,
                reason: Reason::Forced,
                dict_len: 0,
                block_bytes: 0,
            };
            let sources = [Source { base_position: base, bytes: 4096 }];
            let parts =
                Parts { dictionary: &[], blocks: &[], streams: &[], positions: &[], sources: &sources, audit: &[] };
            std::fs::write(dir.join(arc_format::file_name(base)), arc_format::encode(&h, &parts)).unwrap();
        }
        partition::write_segment_file(dir, 0, n, &io).unwrap();
    }

    fn open(dir: &Path) -> (Duration, Arc<Partition>, Arc<BlockCache>) {
        let cache = BlockCache::new(1 << 20);
        let started = Instant::now();
        let (p, _tail) = Partition::open(
            dir.to_path_buf(),
            0,
            Io::default(),
            Report::default(),
            Arc::new(HeadSignal::default()),
            8 << 20,
            cache.clone(),
        )
        .unwrap();
        (started.elapsed(), p, cache)
    }

    #[test]
    fn open_reads_no_archive_meta_section_and_stays_flat_with_10_000_archives() {
        let root = tempfile::tempdir().unwrap();
        let (small, large) = (root.path().join("small"), root.path().join("large"));
        partition_of_archives(&small, 100);
        partition_of_archives(&large, 10_000);
        let (t_small, p, cache) = open(&small);
        assert_eq!(p.head(), 100);
        assert_eq!(cache.stats().metas_loaded, 0);
        let (t_large, p, cache) = open(&large);
        assert_eq!((p.head(), p.segments.read().len()), (10_000, 10_001));
        assert_eq!(cache.stats().metas_loaded, 0, "open read only headers and footers");
        // Per archive, opening 10,000 costs about what opening 100 does (no step looks at
        // every pair of files); generous, for a loaded machine.
        let per = |t: Duration, n: u32| t / n;
        eprintln!("open: 100 archives {t_small:?}, 10,000 archives {t_large:?}");
        assert!(
            per(t_large, 10_000) < per(t_small, 100) * 5 + Duration::from_micros(200),
            "100 archives: {t_small:?}, 10,000: {t_large:?}"
        );
        // The meta sections are checked on first use: a read of the last position's archive.
        assert_eq!(p.read_from(9_999, 10).unwrap().len(), 0);
        assert_eq!(cache.stats().metas_loaded, 1);
    }

    #[test]
    fn an_interrupted_compaction_is_still_found_among_many_archives() {
        // Archives 0..50 of finished jobs, then a job whose single source (at 50) is still
        // there beside its two pieces: finished at open, its source removed.
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("p");
        partition_of_archives(&dir, 50);
        let io = Io::default();
        for (base, end) in [(50u64, 53u64), (53, 60)] {
            let h = Header {
                version: arc_format::ARCHIVE_VERSION,
                partition: 0,
                base_position: base,
                end_position: end,
                created: 0,
                job_end: 60,
                reason: Reason::Forced,
                dict_len: 0,
                block_bytes: 0,
            };
            let sources = [Source { base_position: 50, bytes: 4096 }];
            let parts =
                Parts { dictionary: &[], blocks: &[], streams: &[], positions: &[], sources: &sources, audit: &[] };
            std::fs::write(dir.join(arc_format::file_name(base)), arc_format::encode(&h, &parts)).unwrap();
        }
        // The segment at 50 (written as the active one) is the source; the active one is at 60.
        partition::write_segment_file(&dir, 0, 60, &io).unwrap();
        let (_, p, cache) = open(&dir);
        assert!(!dir.join(seg_format::file_name(50)).exists(), "the source of the finished job is gone");
        assert_eq!(p.head(), 60);
        assert_eq!(cache.stats().metas_loaded, 2, "only the interrupted job's archives were checked at open");
        assert!(p.report.all().iter().any(|a| matches!(a, RecoveryAction::CompactionFinished { .. })));
    }
}
