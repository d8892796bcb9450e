//! How to open a store.

use std::sync::Arc;

use crate::compaction::CompactionOptions;
use crate::error::{Error, Result};
use crate::format::manifest::MAX_PARTITIONS;
use crate::io::faults::FaultPlan;
use crate::io::sim::SimDisk;
use crate::log::Durability;

/// Default number of partitions of a new store.
pub const DEFAULT_PARTITIONS: u32 = 8;
/// Default segment roll size: 256 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 256 << 20;
/// Default [`Options::recovery_scan_bytes`].
pub const DEFAULT_RECOVERY_SCAN_BYTES: u64 = 8 << 20;
/// Default [`Options::idempotency_window`]: the last 10,000 appends of each partition.
pub const DEFAULT_IDEMPOTENCY_APPENDS: usize = 10_000;
/// Default most event ids [`Options::idempotency_window`] remembers per partition.
pub const DEFAULT_IDEMPOTENCY_MAX_IDS: usize = 1_000_000;
/// Default largest event (type + metadata + payload): 16 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: u64 = 16 << 20;
/// Default largest append (one batch, encoded): 64 MiB.
pub const DEFAULT_MAX_APPEND_BYTES: u64 = 64 << 20;
/// Default [`Options::archive_cache_bytes`]: 64 MiB of decompressed archive blocks.
pub const DEFAULT_ARCHIVE_CACHE_BYTES: u64 = 64 << 20;

/// Options for [`Store::open`](crate::Store::open). Creation-only settings (partition count,
/// segment size) are recorded in the manifest; set when opening an existing store, they must
/// agree with it.
///
/// ```
/// use strata::{Durability, Options};
/// let opts = Options::default()
///     .create_if_missing(true)
///     .partitions(16)
///     .durability(Durability::Sync);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) create_if_missing: bool,
    pub(crate) error_if_exists: bool,
    pub(crate) partitions: u32,
    pub(crate) segment_bytes: u64,
    /// Whether `partitions` / `segment_bytes` were set (and must then match an existing store).
    pub(crate) partitions_set: bool,
    pub(crate) segment_bytes_set: bool,
    pub(crate) max_event_bytes: u64,
    pub(crate) max_append_bytes: u64,
    pub(crate) durability: Durability,
    pub(crate) preallocate: bool,
    pub(crate) max_group_bytes: usize,
    pub(crate) max_group_appends: usize,
    pub(crate) snapshot_rewrite_bytes: u64,
    pub(crate) recovery_scan_bytes: u64,
    pub(crate) idempotency_appends: usize,
    pub(crate) idempotency_max_ids: usize,
    pub(crate) compaction: CompactionOptions,
    pub(crate) archive_cache_bytes: u64,
    pub(crate) faults: Option<Arc<FaultPlan>>,
    pub(crate) sim: Option<Arc<SimDisk>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            create_if_missing: false,
            error_if_exists: false,
            partitions: DEFAULT_PARTITIONS,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            partitions_set: false,
            segment_bytes_set: false,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_append_bytes: DEFAULT_MAX_APPEND_BYTES,
            durability: Durability::Sync,
            preallocate: true,
            max_group_bytes: 4 << 20,
            max_group_appends: 4096,
            snapshot_rewrite_bytes: 4 << 20,
            recovery_scan_bytes: DEFAULT_RECOVERY_SCAN_BYTES,
            idempotency_appends: DEFAULT_IDEMPOTENCY_APPENDS,
            idempotency_max_ids: DEFAULT_IDEMPOTENCY_MAX_IDS,
            compaction: CompactionOptions::default(),
            archive_cache_bytes: DEFAULT_ARCHIVE_CACHE_BYTES,
            faults: None,
            sim: None,
        }
    }
}

impl Options {
    /// Bytes of decompressed archive blocks the store keeps in memory (default 64 MiB; 0:
    /// none kept, every archive read decompresses what it needs). One cache serves every
    /// partition and archive, so readers of different archives share it rather than evict
    /// each other; a block is decompressed once however many readers want it at a time. A
    /// partition read through an archive holds the blocks it has used until it returns, so
    /// readers stepping through archives in parallel read best with room here for one
    /// archive each (compaction's `max_archive_bytes`, 16 MiB by default).
    /// [`Store::archive_cache_stats`](crate::Store::archive_cache_stats) counts its hits and
    /// misses.
    pub fn archive_cache_bytes(mut self, bytes: u64) -> Options {
        self.archive_cache_bytes = bytes;
        self
    }

    /// Create the store if the directory holds none (default `false`: opening a path that is
    /// not a store is an error, so a typo never creates an empty store).
    pub fn create_if_missing(mut self, yes: bool) -> Options {
        self.create_if_missing = yes;
        self
    }

    /// Fail with [`Error::AlreadyExists`] if a store is already there (default `false`).
    pub fn error_if_exists(mut self, yes: bool) -> Options {
        self.error_if_exists = yes;
        self
    }

    /// Number of partitions of a new store (default 8), recorded in its manifest and raised
    /// only by [`Store::grow_partitions`](crate::Store::grow_partitions). Opening an existing
    /// store with this set to another number than it was created with or has now fails with
    /// [`Error::InvalidOptions`] (left unset, the store's own count is used).
    pub fn partitions(mut self, n: u32) -> Options {
        self.partitions = n;
        self.partitions_set = true;
        self
    }

    /// Segment roll size of a new store, in bytes (default 256 MiB, at least 4 KiB). A segment
    /// is sealed once it holds at least this many bytes; it may exceed it by one group commit.
    /// Recorded in the manifest: opening an existing store with this set to another size
    /// fails with [`Error::InvalidOptions`].
    pub fn segment_bytes(mut self, n: u64) -> Options {
        self.segment_bytes = n;
        self.segment_bytes_set = true;
        self
    }

    /// How much of each partition's active segment an open after a crash may have to scan
    /// (default 8 MiB, at least 4 KiB). Each writer journals its active segment's index
    /// (FORMAT.md §8.4) once this many bytes of it are durable and not journaled yet, and at a
    /// clean close, so open rebuilds the index from the journal and scans only what it does
    /// not cover: nothing after a clean close, and after a crash at most this plus the last
    /// group and what was never synced. Smaller means faster recovery and more, smaller
    /// journal writes.
    pub fn recovery_scan_bytes(mut self, n: u64) -> Options {
        self.recovery_scan_bytes = n;
        self
    }

    /// How far back a retried append is recognised (default: the last 10,000 appends of its
    /// partition, at most 1,000,000 event ids per partition; `appends` = 0 switches
    /// idempotency off).
    ///
    /// An append whose events all carry ids ([`EventData::with_id`](crate::EventData::with_id))
    /// and that repeats an append in the window exactly (the same stream, the same ids in the
    /// same order) is not written again: it returns the earlier append's
    /// [`AppendResult`](crate::AppendResult) with `duplicate` set, whatever its expected
    /// version, and waits for nothing but the lookup. One that repeats only some ids is
    /// [`Error::IdempotencyConflict`]. The window counts every append of the partition (with
    /// ids or without) and survives restarts: it is rebuilt from the log. **Outside the window**
    /// a retry is an ordinary append, and its expected version decides: retry with `Exact`,
    /// never `Any`, and a late retry fails with `WrongExpectedVersion` instead of writing
    /// twice. Memory: about 30–45 bytes per remembered id (`max_ids` bounds it), paid only by
    /// partitions that receive appends with ids.
    pub fn idempotency_window(mut self, appends: usize, max_ids: usize) -> Options {
        self.idempotency_appends = appends;
        self.idempotency_max_ids = max_ids;
        self
    }

    /// Largest event accepted (type + metadata + payload bytes; default 16 MiB).
    pub fn max_event_bytes(mut self, n: u64) -> Options {
        self.max_event_bytes = n;
        self
    }

    /// Largest append accepted (all its events, encoded; default 64 MiB, at most 2 GiB).
    pub fn max_append_bytes(mut self, n: u64) -> Options {
        self.max_append_bytes = n;
        self
    }

    /// When appends are acknowledged (default [`Durability::Sync`]).
    pub fn durability(mut self, d: Durability) -> Options {
        self.durability = d;
        self
    }

    /// Zero-fill the active segment ahead of the writer in the background (default `true`).
    /// Durable appends into already-written blocks sync faster (1.3x to 1.7x measured on ext4),
    /// at the cost of writing each segment's bytes twice. Turn it off on copy-on-write file
    /// systems (btrfs, ZFS), where pre-written blocks are not overwritten in place.
    pub fn preallocate(mut self, yes: bool) -> Options {
        self.preallocate = yes;
        self
    }

    /// Upper bounds of one group commit: bytes and appends (defaults 4 MiB and 4096). A group
    /// never waits to fill up: the writer takes whatever is queued, up to these bounds.
    pub fn group_limits(mut self, max_bytes: usize, max_appends: usize) -> Options {
        self.max_group_bytes = max_bytes;
        self.max_group_appends = max_appends;
        self
    }

    /// When a partition's snapshot sidecar is rewritten without its superseded snapshots:
    /// once they take at least this many bytes (default 4 MiB) and at least as many as the
    /// live ones (so a sidecar stays under about twice its live size).
    pub fn snapshot_rewrite_bytes(mut self, bytes: u64) -> Options {
        self.snapshot_rewrite_bytes = bytes;
        self
    }

    /// When and how sealed segments are compacted into archives (default: see
    /// [`CompactionOptions`]).
    pub fn compaction(mut self, c: CompactionOptions) -> Options {
        self.compaction = c;
        self
    }

    /// Injects I/O faults into every file operation of the store, for testing how an
    /// application copes with a failing disk.
    #[cfg(feature = "fault-injection")]
    pub fn fault_plan(mut self, plan: Arc<FaultPlan>) -> Options {
        self.faults = Some(plan);
        self
    }

    /// Records every file operation of the store on a simulated disk, which can then rebuild
    /// what a power cut at any step would have left ([`SimDisk::crash_image`]). Real syncs are
    /// skipped while it records.
    #[cfg(feature = "fault-injection")]
    pub fn sim_disk(mut self, sim: Arc<SimDisk>) -> Options {
        self.sim = Some(sim);
        self
    }

    /// Refuses creation settings that disagree with an existing store's manifest: `partitions`
    /// must be its count now or the count it was created with (`created_with`), and
    /// `segment_bytes` its roll size.
    pub(crate) fn check_against(&self, count: u32, created_with: u32, segment_bytes: u64) -> Result<()> {
        if self.partitions_set && self.partitions != count && self.partitions != created_with {
            return Err(Error::InvalidOptions(format!(
                "the store has {count} partitions, the options ask for {}: a store's partition count \
                 is raised with Store::grow_partitions (or leave Options::partitions unset)",
                self.partitions
            )));
        }
        if self.segment_bytes_set && self.segment_bytes != segment_bytes {
            return Err(Error::InvalidOptions(format!(
                "the store rolls segments at {segment_bytes} bytes, the options ask for {}: the size is \
                 fixed at creation (leave Options::segment_bytes unset)",
                self.segment_bytes
            )));
        }
        Ok(())
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(Error::InvalidOptions(format!("partitions must be 1..=65536, not {}", self.partitions)));
        }
        if self.segment_bytes < 4096 {
            return Err(Error::InvalidOptions(format!(
                "segment_bytes must be at least 4096, not {}",
                self.segment_bytes
            )));
        }
        if self.max_append_bytes > 1 << 31 || self.max_append_bytes < 64 {
            return Err(Error::InvalidOptions(format!(
                "max_append_bytes must be 64..=2 GiB, not {}",
                self.max_append_bytes
            )));
        }
        self.compaction.validate()?;
        if self.recovery_scan_bytes < 4096 {
            return Err(Error::InvalidOptions(format!(
                "recovery_scan_bytes must be at least 4096, not {}",
                self.recovery_scan_bytes
            )));
        }
        if self.max_event_bytes == 0 {
            return Err(Error::InvalidOptions("max_event_bytes must be positive".into()));
        }
        if self.max_group_appends == 0 {
            return Err(Error::InvalidOptions("a group must hold at least one append".into()));
        }
        if let Durability::Buffered { sync_interval } = self.durability
            && sync_interval.is_zero()
        {
            return Err(Error::InvalidOptions("Buffered sync_interval must be positive".into()));
        }
        Ok(())
    }
}
