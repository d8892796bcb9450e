//! Compaction: sealed segments rewritten into zstd-compressed archives (the archive reader is
//! in the log, `log::archive`), by policy, in the background or on demand; and the erasure of
//! deleted streams' events. The policy (`policy`) is a decision about each sealed segment,
//! made from its index and its last batch; the job (`job`) carries it out crash-safely,
//! building each archive (`build`). The files and the protocol are FORMAT.md §14 and §15.
//!
//! The background compactor runs every `CompactionOptions::interval` (default 60 s);
//! `Store::compact` and `Store::compact_with` run the policy on the calling thread. One
//! compaction at a time runs in a partition (a per-partition lock); appends and reads go on
//! meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::log::{Partition, State};

mod build;
mod job;
mod options;
mod policy;

pub use options::CompactionOptions;

pub use crate::format::archive::{AuditRecord, Reason};
pub(crate) use job::compact_store;

/// What compaction needs of a partition's snapshots: how far a stream is snapshotted (the
/// policy archives only what loads will not read), and erasing deleted streams' snapshots.
pub(crate) trait SnapshotIndex {
    /// The version the latest snapshot of `stream` covers; `Err` says why it is not known.
    fn latest_version(&self, stream: &str) -> std::result::Result<Option<u64>, String>;
    /// Erases the snapshots of the streams `deleted` names; returns how many.
    fn erase(&self, deleted: &dyn Fn(&str) -> bool) -> Result<u64>;
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
    /// The archives by why they were made (FORMAT.md §14.1), in the order first met.
    pub archives_by_reason: Vec<(Reason, u64)>,
}

impl PartitionStorage {
    /// Uncompressed bytes per archive byte (0 with no archives).
    pub fn archive_ratio(&self) -> f64 {
        if self.archive_bytes == 0 { 0.0 } else { self.archived_bytes as f64 / self.archive_bytes as f64 }
    }
}

/// What `part` keeps on disk now.
pub(crate) fn storage(part: &Partition) -> Result<PartitionStorage> {
    let mut s = PartitionStorage {
        partition: part.id,
        deleted_streams: part.tombstones.all().len() as u64,
        ..PartitionStorage::default()
    };
    for (slot, _) in part.snapshot() {
        match slot.state() {
            State::Archived(a) if a.is_damaged() => s.unreadable_archives += 1,
            State::Archived(a) => {
                s.archives += 1;
                s.archive_bytes += a.file_len();
                s.archived_bytes += a.data_len();
                // (This checks each archive's meta section, if no read has yet.)
                s.archived_events += a.events().unwrap_or(0);
                s.erased_events =
                    a.audit().unwrap_or_default().iter().fold(s.erased_events, |sum, r| sum.saturating_add(r.events));
                match s.archives_by_reason.iter_mut().find(|(r, _)| *r == a.header.reason) {
                    Some((_, n)) => *n += 1,
                    None => s.archives_by_reason.push((a.header.reason, 1)),
                }
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
