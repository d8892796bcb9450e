//! Metrics in one place: a snapshot of the store, its projections, command bus and caches
//! ([`Metrics`]), and its Prometheus text exposition (`prometheus`).

use crate::bus::{BusStats, CommandBus};
use crate::cache::CacheStats;
use crate::compaction::CompactionStats;
use crate::projection::{ProjectionEngine, ProjectionStatus};
use crate::snapshot::SnapshotStats;
use crate::store::{ArchiveCacheStats, Store};

mod prometheus;

pub use crate::store::{Histogram, LATENCY_BOUNDS_MICROS, PartitionMetrics, WriteStats};

/// Everything measured, at one moment.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Metrics {
    /// The write path's counters (appends, events, bytes, group commits, fsyncs).
    pub write: WriteStats,
    /// Latency of [`Store::append`] calls (submit to acknowledgement).
    pub append_latency: Histogram,
    /// Group commits by appends per group: element `i` counts groups of at most `2^i`
    /// appends (the last element, more than `2^(len - 2)`).
    pub group_sizes: Vec<u64>,
    /// Per partition.
    pub partitions: Vec<PartitionMetrics>,
    /// Snapshots.
    pub snapshots: SnapshotStats,
    /// Compactions since the store was opened.
    pub compaction: CompactionStats,
    /// The archive block cache (hits, misses, bytes held).
    pub archive_cache: ArchiveCacheStats,
    /// Projections (lag, dead letters, health).
    pub projections: Vec<ProjectionStatus>,
    /// The command bus.
    pub bus: Option<BusStats>,
    /// Caches, by name.
    pub caches: Vec<(String, CacheStats)>,
}

impl Metrics {
    /// Collects the metrics of `store` and, where given, of an engine's projections, a bus and
    /// named caches' stats.
    pub fn collect(
        store: &Store,
        engine: Option<&ProjectionEngine>,
        bus: Option<&CommandBus>,
        caches: &[(&str, CacheStats)],
    ) -> Metrics {
        Metrics {
            write: store.write_stats(),
            append_latency: store.append_latency(),
            group_sizes: store.group_sizes(),
            partitions: store.partition_metrics(),
            snapshots: store.snapshot_stats(),
            compaction: store.compaction_stats(),
            archive_cache: store.archive_cache_stats(),
            projections: engine.map_or_else(Vec::new, |e| e.names().iter().filter_map(|n| e.status(n).ok()).collect()),
            bus: bus.map(CommandBus::stats),
            caches: caches.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect(),
        }
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        prometheus::render(self)
    }
}
