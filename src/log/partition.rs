//! A partition: an append-only log of segment files (and archives), opened here — its
//! files listed, interrupted compactions reconciled, the active segment's tail recovered —
//! and appended to by its writer (`writer.rs`). Reads across its segments are in
//! `read.rs`; what open repairs, in `recovery.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::clock::now_nanos;
use crate::error::{Error, Result};
use crate::format::segment as seg_format;
use crate::io::Io;
use crate::log::active::OpenSegment;
use crate::log::block_cache::BlockCache;
use crate::log::journal::Journal;
use crate::log::recovery::{self, Files, Recovered};
use crate::log::segment::{Segment, State, View};
use crate::log::stream_meta::StreamMetas;
use crate::log::tombstones::Tombstones;
use crate::report::Report;
use crate::sync::HeadSignal;

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
    /// The partition's deleted streams.
    pub tombstones: Tombstones,
    /// The partition's stream metadata (retention rules, soft deletes).
    pub metas: StreamMetas,
    /// The store's cache of decompressed archive blocks, shared by every partition.
    pub(crate) archive_cache: Arc<BlockCache>,
    /// Held by a compaction of this partition.
    pub compaction: Mutex<()>,
    /// Bytes of the active segment that open scanned: what its journal did not cover.
    pub scanned_at_open: u64,
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
    /// The active segment's index journal, continued by the writer.
    pub journal: Journal,
}

/// Creates the directory and first (empty) segment of a new partition.
pub(crate) fn create(dir: &Path, id: u32, io: &Io) -> Result<()> {
    io.create_dir(dir)?;
    write_segment_file(dir, id, 0, io)?;
    Ok(())
}

/// Writes a new, empty segment file durably (temp name, fsync, rename, fsync the directory).
pub(crate) fn write_segment_file(dir: &Path, id: u32, base: u64, io: &Io) -> Result<PathBuf> {
    let header = seg_format::encode_header(id, base, now_nanos());
    let name = seg_format::file_name(base);
    io.write_atomic(dir, &name, &header)?;
    Ok(dir.join(name))
}

impl Partition {
    /// Opens partition `id` in `dir`: lists its files (removing temporary ones), finishes or
    /// rolls back interrupted compactions, checks that the files cover every position from
    /// 0, recovers the active segment's tail (truncating a torn last write), and leaves sealed
    /// segments to be mapped on first use, archives (their headers and footers checked) to
    /// have their meta sections checked on first use. Archive blocks are read through
    /// `archive_cache`.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        dir: PathBuf,
        id: u32,
        io: Io,
        report: Report,
        signal: Arc<HeadSignal>,
        journal_interval: u64,
        archive_cache: Arc<BlockCache>,
    ) -> Result<(Arc<Partition>, Tail)> {
        let Files { mut bases, indexes, archive_bases, journals } = recovery::list_files(&dir, id, &io, &report)?;
        let Some(&active_base) = bases.last() else {
            return Err(Error::corruption(&dir, 0, format!("partition {id} has no segment files")));
        };
        let archives = recovery::reconcile_archives(&dir, id, &io, &report, &mut bases, archive_bases, &archive_cache)?;
        let first = bases.iter().chain(archives.iter().map(|a| &a.0)).min().copied();
        if first != Some(0) {
            let first = first.unwrap_or(0);
            return Err(Error::corruption(
                dir.join(seg_format::file_name(first)),
                0,
                format!("partition {id} starts at position {first}: the segments before it are missing"),
            ));
        }
        if indexes.contains(&active_base) {
            recovery::stale_active_index(&dir, id, active_base, &io, &report)?;
        }
        let mut segments = recovery::slots(&dir, id, &bases, archives)?;
        recovery::stale_journals(&dir, active_base, &journals, &io)?;
        recovery::poison_marker(&dir, id, active_base, &io, &report)?;
        let recovered = recovery::recover_active(&dir, id, active_base, &io, &report, journal_interval)?;
        let Recovered { open, data_end, last_timestamp, file_len, journal, scanned } = recovered;
        let head = open.index.read().end_position;
        let open = Arc::new(open);
        let active = Arc::new(Segment::new(id, &dir, active_base, State::Open(open.clone())));
        if let Some(last) = segments.last_mut() {
            *last = active.clone();
        }
        let tombstones = Tombstones::open(&dir, id, io.clone(), &report)?;
        let metas = StreamMetas::open(&dir, id, io.clone(), &report)?;
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
            tombstones,
            metas,
            archive_cache,
            compaction: Mutex::new(()),
            scanned_at_open: scanned,
        });
        Ok((part, Tail { segment: active, open, data_end, last_timestamp, file_len, journal }))
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

    pub(crate) fn view(&self, seg: &Segment, end: u64) -> Result<View> {
        seg.view(end, &self.io, &self.report)
    }
}
