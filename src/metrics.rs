//! Metrics in one place: a snapshot of the store, its projections, command bus and caches,
//! and its Prometheus text exposition.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::aggregate::SnapshotStats;
use crate::bus::{BusStats, CommandBus};
use crate::cache::CacheStats;
use crate::projection::{ProjectionEngine, ProjectionStatus};
use crate::store::{Store, WriteStats};

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
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

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
    pub compaction: crate::CompactionStats,
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
            projections: engine.map_or_else(Vec::new, |e| e.names().iter().filter_map(|n| e.status(n).ok()).collect()),
            bus: bus.map(CommandBus::stats),
            caches: caches.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect(),
        }
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut o = String::new();
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP strata_{name} {help}\n# TYPE strata_{name} counter\nstrata_{name} {v}");
        };
        let w = &self.write;
        counter(&mut o, "appends_total", "Appends acknowledged.", w.appends);
        counter(&mut o, "events_total", "Events appended.", w.events);
        counter(&mut o, "bytes_total", "Bytes written by appends.", w.bytes);
        counter(&mut o, "group_commits_total", "Group commits (one write each).", w.group_commits);
        counter(&mut o, "fsyncs_total", "fdatasync calls for appends.", w.syncs);
        let _ = writeln!(
            o,
            "# HELP strata_append_seconds Latency of Store::append.\n# TYPE strata_append_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, c) in self.append_latency.counts.iter().enumerate() {
            cumulative += c;
            let le = LATENCY_BOUNDS_MICROS.get(i).map_or("+Inf".to_owned(), |b| format!("{}", *b as f64 / 1e6));
            let _ = writeln!(o, "strata_append_seconds_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(o, "strata_append_seconds_sum {}", self.append_latency.sum_micros as f64 / 1e6);
        let _ = writeln!(o, "strata_append_seconds_count {cumulative}");
        let _ = writeln!(
            o,
            "# HELP strata_group_commit_appends Appends per group commit.\n# TYPE strata_group_commit_appends histogram"
        );
        let mut cumulative = 0;
        for (i, c) in self.group_sizes.iter().enumerate() {
            cumulative += c;
            let le = if i + 1 == self.group_sizes.len() { "+Inf".to_owned() } else { (1u64 << i).to_string() };
            let _ = writeln!(o, "strata_group_commit_appends_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(o, "strata_group_commit_appends_sum {}", self.write.appends);
        let _ = writeln!(o, "strata_group_commit_appends_count {cumulative}");
        let _ = writeln!(
            o,
            "# HELP strata_partition_events Events in each partition.\n# TYPE strata_partition_events gauge"
        );
        for p in &self.partitions {
            let _ = writeln!(o, "strata_partition_events{{partition=\"{}\"}} {}", p.partition, p.events);
        }
        let _ = writeln!(
            o,
            "# HELP strata_partition_bytes_written_total Bytes written per partition since open.\n# TYPE strata_partition_bytes_written_total counter"
        );
        for p in &self.partitions {
            let _ = writeln!(
                o,
                "strata_partition_bytes_written_total{{partition=\"{}\"}} {}",
                p.partition, p.bytes_written
            );
        }
        let s = &self.snapshots;
        counter(&mut o, "snapshots_written_total", "Snapshots written.", s.written);
        counter(&mut o, "snapshots_dropped_total", "Automatic snapshots dropped (queue full).", s.dropped);
        counter(&mut o, "snapshots_failed_total", "Snapshot writes that failed.", s.failed);
        let c = &self.compaction;
        counter(&mut o, "compaction_runs_total", "Compaction runs.", c.runs);
        counter(&mut o, "compaction_failures_total", "Compaction runs stopped by an error.", c.failures);
        counter(&mut o, "compaction_skipped_total", "Damaged files left unarchived.", c.skipped);
        counter(&mut o, "compaction_segments_archived_total", "Segments replaced by archives.", c.segments_archived);
        counter(&mut o, "compaction_bytes_in_total", "Segment bytes compacted.", c.bytes_in);
        counter(&mut o, "compaction_bytes_out_total", "Archive bytes written.", c.bytes_out);
        counter(&mut o, "compaction_events_erased_total", "Events of deleted streams erased.", c.events_erased);
        let _ = writeln!(
            o,
            "# HELP strata_projection_lag_events Events appended but not handled.\n# TYPE strata_projection_lag_events gauge"
        );
        for p in &self.projections {
            for q in &p.partitions {
                let _ = writeln!(
                    o,
                    "strata_projection_lag_events{{projection=\"{}\",partition=\"{}\"}} {}",
                    p.name, q.partition, q.lag_events
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP strata_projection_lag_seconds Age of the oldest unhandled event.\n# TYPE strata_projection_lag_seconds gauge"
        );
        for p in &self.projections {
            for q in &p.partitions {
                let _ = writeln!(
                    o,
                    "strata_projection_lag_seconds{{projection=\"{}\",partition=\"{}\"}} {}",
                    p.name,
                    q.partition,
                    q.lag.as_secs_f64()
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP strata_projection_dead_letters Events in the dead-letter queue.\n# TYPE strata_projection_dead_letters gauge"
        );
        for p in &self.projections {
            let _ = writeln!(o, "strata_projection_dead_letters{{projection=\"{}\"}} {}", p.name, p.dead_letters);
        }
        let _ = writeln!(
            o,
            "# HELP strata_projection_healthy 1 if within its SLA and running.\n# TYPE strata_projection_healthy gauge"
        );
        for p in &self.projections {
            let _ = writeln!(o, "strata_projection_healthy{{projection=\"{}\"}} {}", p.name, u8::from(p.healthy));
        }
        if let Some(b) = &self.bus {
            let _ =
                writeln!(o, "# HELP strata_commands_total Commands by outcome.\n# TYPE strata_commands_total counter");
            for (kind, v) in [
                ("accepted", b.accepted),
                ("overloaded", b.overloaded),
                ("rate_limited", b.rate_limited),
                ("lagging", b.lagging),
                ("rejected", b.rejected),
                ("failed", b.failed),
            ] {
                let _ = writeln!(o, "strata_commands_total{{outcome=\"{kind}\"}} {v}");
            }
            counter(&mut o, "command_conflicts_total", "Version conflicts met by commands.", b.conflicts);
        }
        let _ = writeln!(
            o,
            "# HELP strata_cache_reads_total Cache reads by result.\n# TYPE strata_cache_reads_total counter"
        );
        for (name, c) in &self.caches {
            let name = label(name);
            let _ = writeln!(o, "strata_cache_reads_total{{cache=\"{name}\",result=\"hit\"}} {}", c.hits);
            let _ = writeln!(o, "strata_cache_reads_total{{cache=\"{name}\",result=\"miss\"}} {}", c.misses);
        }
        let _ = writeln!(o, "# HELP strata_cache_entries Views cached.\n# TYPE strata_cache_entries gauge");
        for (name, c) in &self.caches {
            let _ = writeln!(o, "strata_cache_entries{{cache=\"{}\"}} {}", label(name), c.len);
        }
        let _ = writeln!(
            o,
            "# HELP strata_projection_handled_total Events handled since registration.\n# TYPE strata_projection_handled_total counter"
        );
        for p in &self.projections {
            let _ = writeln!(o, "strata_projection_handled_total{{projection=\"{}\"}} {}", p.name, p.handled);
        }
        if let Some(b) = &self.bus {
            let _ = writeln!(
                o,
                "# HELP strata_commands_in_flight Commands running now.\n# TYPE strata_commands_in_flight gauge\nstrata_commands_in_flight {}",
                b.in_flight
            );
        }
        o
    }
}
