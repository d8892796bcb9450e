//! When and how sealed segments become archives: the settings of the policy and of the
//! archives it writes.

use std::time::Duration;

use crate::error::{Error, Result};

/// When and how sealed segments become archives.
///
/// A sealed segment is archived when any of these holds:
/// - its newest event is older than [`retention`](CompactionOptions::retention) and, with
///   [`require_snapshots`](CompactionOptions::require_snapshots) (the default), every stream
///   with events in it has a snapshot at or past its last event there, or is cold: its newest
///   event anywhere is older than the retention period too (a cold aggregate, never
///   snapshotted, does not keep its segments hot for ever; its events stay readable from the
///   archive);
/// - the partition's sealed, unarchived segments hold more than
///   [`max_hot_bytes`](CompactionOptions::max_hot_bytes) (oldest first);
/// - it holds events of a deleted stream (they are erased).
///
/// ```
/// use std::time::Duration;
/// use strata::Options;
/// use strata::compaction::CompactionOptions;
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
    /// events there, or is cold (no event within the retention period) (default `true`): loads
    /// of aggregates in use then never read archives; loads of cold ones may.
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
