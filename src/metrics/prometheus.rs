//! The Prometheus text exposition (format 0.0.4) of a [`Metrics`] snapshot, family by family.

use std::fmt::Write as _;

use crate::store::LATENCY_BOUNDS_MICROS;

use super::Metrics;

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The exposition being written.
struct Text(String);

impl Text {
    /// A family's `HELP` and `TYPE` lines.
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP strata_{name} {help}\n# TYPE strata_{name} {kind}");
    }

    /// One sample line: `strata_{name}{labels} {value}` (`labels` with its braces, or empty).
    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.0, "strata_{name}{labels} {value}");
    }

    /// A counter without labels: its family and its one sample.
    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.family(name, help, "counter");
        self.sample(name, "", v);
    }

    /// A histogram from non-cumulative bucket counts, with each bucket's `le` label.
    fn histogram(&mut self, name: &str, help: &str, counts: &[u64], le: impl Fn(usize) -> String, sum: String) {
        self.family(name, help, "histogram");
        let mut cumulative = 0;
        for (i, c) in counts.iter().enumerate() {
            cumulative += c;
            self.sample(&format!("{name}_bucket"), &format!("{{le=\"{}\"}}", le(i)), cumulative);
        }
        self.sample(&format!("{name}_sum"), "", sum);
        self.sample(&format!("{name}_count"), "", cumulative);
    }
}

pub(super) fn render(m: &Metrics) -> String {
    let mut t = Text(String::new());
    write_path(&mut t, m);
    partitions(&mut t, m);
    snapshots_and_compaction(&mut t, m);
    projections(&mut t, m);
    bus_commands(&mut t, m);
    caches(&mut t, m);
    handled_and_in_flight(&mut t, m);
    t.0
}

fn write_path(t: &mut Text, m: &Metrics) {
    let w = &m.write;
    t.counter("appends_total", "Appends acknowledged.", w.appends);
    t.counter("events_total", "Events appended.", w.events);
    t.counter("bytes_total", "Bytes written by appends.", w.bytes);
    t.counter("group_commits_total", "Group commits (one write each).", w.group_commits);
    t.counter("fsyncs_total", "fdatasync calls for appends.", w.syncs);
    let bound = |i: usize| LATENCY_BOUNDS_MICROS.get(i).map_or("+Inf".to_owned(), |b| format!("{}", *b as f64 / 1e6));
    let sum = format!("{}", m.append_latency.sum_micros as f64 / 1e6);
    t.histogram("append_seconds", "Latency of Store::append.", &m.append_latency.counts, bound, sum);
    let last = m.group_sizes.len();
    let size = |i: usize| if i + 1 == last { "+Inf".to_owned() } else { (1u64 << i).to_string() };
    let sum = m.write.appends.to_string();
    t.histogram("group_commit_appends", "Appends per group commit.", &m.group_sizes, size, sum);
}

fn partitions(t: &mut Text, m: &Metrics) {
    t.family("partition_events", "Events in each partition.", "gauge");
    for p in &m.partitions {
        t.sample("partition_events", &format!("{{partition=\"{}\"}}", p.partition), p.events);
    }
    let name = "partition_bytes_written_total";
    t.family(name, "Bytes written per partition since open.", "counter");
    for p in &m.partitions {
        t.sample(name, &format!("{{partition=\"{}\"}}", p.partition), p.bytes_written);
    }
}

fn snapshots_and_compaction(t: &mut Text, m: &Metrics) {
    let s = &m.snapshots;
    t.counter("snapshots_written_total", "Snapshots written.", s.written);
    t.counter("snapshots_dropped_total", "Automatic snapshots dropped (queue full).", s.dropped);
    t.counter("snapshots_failed_total", "Snapshot writes that failed.", s.failed);
    let c = &m.compaction;
    t.counter("compaction_runs_total", "Compaction runs.", c.runs);
    t.counter("compaction_failures_total", "Compaction runs stopped by an error.", c.failures);
    t.counter("compaction_skipped_total", "Damaged files left unarchived.", c.skipped);
    t.counter("compaction_segments_archived_total", "Segments replaced by archives.", c.segments_archived);
    t.counter("compaction_bytes_in_total", "Segment bytes compacted.", c.bytes_in);
    t.counter("compaction_bytes_out_total", "Archive bytes written.", c.bytes_out);
    t.counter("compaction_events_erased_total", "Events of deleted streams erased.", c.events_erased);
    let a = &m.archive_cache;
    t.counter("archive_cache_hits_total", "Archive block reads served from memory.", a.hits);
    t.counter("archive_cache_misses_total", "Archive block reads that decompressed the block.", a.misses);
    t.family("archive_cache_bytes", "Decompressed archive bytes held in memory.", "gauge");
    t.sample("archive_cache_bytes", "", a.bytes);
}

fn projections(t: &mut Text, m: &Metrics) {
    t.family("projection_lag_events", "Events appended but not handled.", "gauge");
    for p in &m.projections {
        for q in &p.partitions {
            let labels = format!("{{projection=\"{}\",partition=\"{}\"}}", p.name, q.partition);
            t.sample("projection_lag_events", &labels, q.lag_events);
        }
    }
    t.family("projection_lag_seconds", "Age of the oldest unhandled event.", "gauge");
    for p in &m.projections {
        for q in &p.partitions {
            let labels = format!("{{projection=\"{}\",partition=\"{}\"}}", p.name, q.partition);
            t.sample("projection_lag_seconds", &labels, q.lag.as_secs_f64());
        }
    }
    t.family("projection_dead_letters", "Events in the dead-letter queue.", "gauge");
    for p in &m.projections {
        t.sample("projection_dead_letters", &format!("{{projection=\"{}\"}}", p.name), p.dead_letters);
    }
    t.family("projection_healthy", "1 if within its SLA and running.", "gauge");
    for p in &m.projections {
        t.sample("projection_healthy", &format!("{{projection=\"{}\"}}", p.name), u8::from(p.healthy));
    }
}

fn bus_commands(t: &mut Text, m: &Metrics) {
    let Some(b) = &m.bus else { return };
    t.family("commands_total", "Commands by outcome.", "counter");
    for (kind, v) in [
        ("accepted", b.accepted),
        ("overloaded", b.overloaded),
        ("rate_limited", b.rate_limited),
        ("lagging", b.lagging),
        ("rejected", b.rejected),
        ("failed", b.failed),
    ] {
        t.sample("commands_total", &format!("{{outcome=\"{kind}\"}}"), v);
    }
    t.counter("command_conflicts_total", "Version conflicts met by commands.", b.conflicts);
}

fn caches(t: &mut Text, m: &Metrics) {
    t.family("cache_reads_total", "Cache reads by result.", "counter");
    for (name, c) in &m.caches {
        let name = label(name);
        t.sample("cache_reads_total", &format!("{{cache=\"{name}\",result=\"hit\"}}"), c.hits);
        t.sample("cache_reads_total", &format!("{{cache=\"{name}\",result=\"miss\"}}"), c.misses);
    }
    t.family("cache_entries", "Views cached.", "gauge");
    for (name, c) in &m.caches {
        t.sample("cache_entries", &format!("{{cache=\"{}\"}}", label(name)), c.len);
    }
}

fn handled_and_in_flight(t: &mut Text, m: &Metrics) {
    t.family("projection_handled_total", "Events handled since registration.", "counter");
    for p in &m.projections {
        t.sample("projection_handled_total", &format!("{{projection=\"{}\"}}", p.name), p.handled);
    }
    if let Some(b) = &m.bus {
        t.family("commands_in_flight", "Commands running now.", "gauge");
        t.sample("commands_in_flight", "", b.in_flight);
    }
}
