//! The store's own counters: the write path's (appends, events, bytes, group commits, syncs,
//! group sizes, per partition) and the latency of acknowledged appends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::log::partition::GROUP_SIZE_BUCKETS;

use super::{Local, Store};

/// Counters of the write path (see [`Store::write_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteStats {
    /// Appends acknowledged.
    pub appends: u64,
    /// Events in them.
    pub events: u64,
    /// Bytes written for them (batch framing included).
    pub bytes: u64,
    /// Group commits: one write each.
    pub group_commits: u64,
    /// `fdatasync` calls made for appends (per group in `Sync` mode, per interval in `Buffered`).
    pub syncs: u64,
}

impl WriteStats {
    /// Average number of appends per group commit.
    pub fn appends_per_group(&self) -> f64 {
        if self.group_commits == 0 { 0.0 } else { self.appends as f64 / self.group_commits as f64 }
    }
}

/// Upper bounds (µs) of the append latency buckets; the last bucket is unbounded.
pub const LATENCY_BOUNDS_MICROS: [u64; 14] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000];

/// A lock-free latency histogram with fixed buckets (cumulative counts are derived).
#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, d: Duration) {
        // Rounded up, so a value never lands in a bucket whose bound is below it.
        let micros = d.as_nanos().div_ceil(1000).min(u128::from(u64::MAX)) as u64;
        let i = LATENCY_BOUNDS_MICROS.partition_point(|&b| b < micros);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Histogram {
        Histogram {
            counts: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// A histogram snapshot: counts per bucket of [`LATENCY_BOUNDS_MICROS`] (one more for the
/// values above the last bound).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Histogram {
    /// Count per bucket (not cumulative).
    pub counts: Vec<u64>,
    /// Sum of the values, in µs.
    pub sum_micros: u64,
}

impl Histogram {
    /// Number of values.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), in µs (`None` if empty
    /// or in the unbounded bucket).
    pub fn quantile_bound(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return LATENCY_BOUNDS_MICROS.get(i).copied();
            }
        }
        None
    }
}

/// One partition's share of the store: the distribution across partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionMetrics {
    /// The partition.
    pub partition: u32,
    /// Events in it (its head).
    pub events: u64,
    /// Events appended to it since open.
    pub appended: u64,
    /// Bytes written to it since open.
    pub bytes_written: u64,
    /// Bytes of its active segment that open scanned and checked batch by batch: what the
    /// segment's index journal did not cover (0 after a clean close; FORMAT.md §8.4).
    pub recovery_scanned_bytes: u64,
}

impl Local {
    pub(crate) fn write_stats(&self) -> WriteStats {
        let mut s = WriteStats::default();
        for p in self.shared.parts().iter() {
            let c = &p.stats;
            s.appends += c.appends.load(Ordering::Relaxed);
            s.events += c.events.load(Ordering::Relaxed);
            s.bytes += c.bytes.load(Ordering::Relaxed);
            s.group_commits += c.groups.load(Ordering::Relaxed);
            s.syncs += c.syncs.load(Ordering::Relaxed);
        }
        s
    }

    pub(crate) fn append_latency(&self) -> Histogram {
        self.shared.append_latency.snapshot()
    }

    pub(crate) fn group_sizes(&self) -> Vec<u64> {
        let mut out = vec![0; GROUP_SIZE_BUCKETS];
        for p in self.shared.parts().iter() {
            for (o, b) in out.iter_mut().zip(&p.stats.group_sizes) {
                *o += b.load(Ordering::Relaxed);
            }
        }
        out
    }

    pub(crate) fn partition_metrics(&self) -> Vec<PartitionMetrics> {
        self.shared
            .parts()
            .iter()
            .map(|p| PartitionMetrics {
                partition: p.id,
                events: p.head(),
                appended: p.stats.events.load(Ordering::Relaxed),
                bytes_written: p.stats.bytes.load(Ordering::Relaxed),
                recovery_scanned_bytes: p.scanned_at_open,
            })
            .collect()
    }
}

impl Store {
    /// Counters of the write path since open, summed over all partitions.
    pub fn write_stats(&self) -> WriteStats {
        self.local_opt().map(|l| l.write_stats()).unwrap_or_default()
    }

    /// Latency of acknowledged [`Store::append`] calls since open.
    pub fn append_latency(&self) -> Histogram {
        self.local_opt().map(|l| l.append_latency()).unwrap_or_default()
    }

    /// Group commits by size, summed over partitions: element `i` counts groups of at most
    /// `2^i` appends (the last, more).
    pub fn group_sizes(&self) -> Vec<u64> {
        self.local_opt().map(|l| l.group_sizes()).unwrap_or_default()
    }

    /// Per-partition counts: events held, appended and bytes written since open.
    pub fn partition_metrics(&self) -> Vec<PartitionMetrics> {
        self.local_opt().map(|l| l.partition_metrics()).unwrap_or_default()
    }
}
