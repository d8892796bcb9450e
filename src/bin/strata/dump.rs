//! `strata dump`: every header, batch and record of a file, or of every file of a store; with
//! `--stream` over a directory, that stream's whole history at the end, erasures included.

use std::io::Write;
use std::path::{Path, PathBuf};

use strata::inspect::{self, BatchInfo, Dump, Filter};

use crate::audit::Erasure;
use crate::common::{show, time};

#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// A segment (.log), index (.idx), index journal (.aix), archive (.arc), snapshot sidecar,
    /// tombstones, stream metadata or checkpoints file; or a store or partition directory
    /// (every file in it, in log order).
    path: PathBuf,
    /// Only this stream's batches (and snapshots). Over a directory, the files are followed by
    /// the stream's history per partition: its events in archives and segments, their
    /// versions and positions, and the erasure audit records about it.
    #[arg(long)]
    stream: Option<String>,
    /// Only batches with events at or after this position.
    #[arg(long)]
    from: Option<u64>,
    /// Only batches with events before this position.
    #[arg(long)]
    to: Option<u64>,
    /// Print batch headers only, not their events.
    #[arg(long)]
    headers: bool,
    /// Only the events of one flow: those whose correlation id, or own id, is this (a UUID).
    #[arg(long)]
    correlation: Option<strata::EventId>,
    /// Print one JSON object per file (one per line) instead of text.
    #[arg(long)]
    json: bool,
}

fn print_batches(batches: &[BatchInfo], headers_only: bool) {
    for b in batches {
        out!(
            "  @{:<10} position {:<10} {:?} v{}..={} ({} event{}) {} len {} crc ok{}",
            b.offset,
            b.position,
            b.stream,
            b.first_version,
            b.first_version + b.event_count - 1,
            b.event_count,
            if b.event_count == 1 { "" } else { "s" },
            time(b.timestamp),
            b.length,
            if b.unit_continues { " (atomic unit continues)" } else { "" }
        );
        if headers_only {
            continue;
        }
        for e in &b.events {
            let meta = if e.metadata.is_empty() { String::new() } else { format!(" meta {}", show(&e.metadata)) };
            let mut ids = String::new();
            for (name, id) in [("id", e.id), ("correlation", e.correlation_id), ("causation", e.causation_id)] {
                if let Some(id) = id {
                    ids.push_str(&format!(" {name} {id}"));
                }
            }
            out!("      [{}] {} {}{meta}{ids}", e.position, e.event_type, show(&e.payload));
        }
    }
}

/// One stream metadata record as text: its version, when, and each rule it sets.
pub fn meta_line(r: &strata::StreamMetaRecord) -> String {
    let m = &r.metadata;
    let mut line = format!("metadata v{} written {}", r.version, time(r.written_at));
    if let Some(n) = m.max_count {
        line.push_str(&format!(", max_count {n}"));
    }
    if let Some(a) = m.max_age {
        line.push_str(&format!(", max_age {a:?}"));
    }
    if let Some(t) = m.truncate_before {
        line.push_str(&format!(", truncate_before v{t}"));
    }
    if let Some(d) = r.soft_deleted_at {
        line.push_str(&format!(", soft-deleted {}", time(d)));
    }
    if !m.custom.is_empty() {
        line.push_str(&format!(", custom {}", show(&m.custom)));
    }
    line
}

fn dump_one(path: &Path, d: Dump, headers: bool, json: bool) {
    if json {
        let mut v = crate::json::dump(&d, headers);
        v["file"] = path.display().to_string().into();
        out!("{v}");
        return;
    }
    let name = path.display();
    match d {
        Dump::Segment { partition, base_position, created, batches, damage } => {
            out!(
                "== {name}: segment of partition {partition}, from position {base_position}, created {}",
                time(created)
            );
            print_batches(&batches, headers);
            match damage {
                None => out!("  end: clean"),
                Some((at, why)) => out!("  end: invalid bytes at byte {at}: {why}"),
            }
        }
        Dump::Index { partition, base_position, end_position, segment_len, stream_entries, position_entries } => {
            out!(
                "== {name}: index of partition {partition}, positions {base_position}..{end_position}, segment of \
                 {segment_len} bytes, {stream_entries} stream entries, {position_entries} position entries"
            );
        }
        Dump::Archive {
            partition,
            base_position,
            end_position,
            reason,
            created,
            blocks,
            data_len,
            file_len,
            sources,
            audit,
            batches,
            problems,
        } => {
            out!(
                "== {name}: archive of partition {partition}, positions {base_position}..{end_position}, created {}",
                time(created)
            );
            out!("  archived because: {reason}");
            out!(
                "  {blocks} blocks: {data_len} bytes of batches in {file_len} bytes (ratio {:.2})",
                data_len as f64 / file_len.max(1) as f64
            );
            for (base, bytes) in sources {
                out!("  made from segment {base} ({bytes} bytes)");
            }
            for a in audit {
                out!(
                    "  erased: stream {:?}, {} events at positions {}..={}, deleted {}, erased {}",
                    a.stream,
                    a.events,
                    a.first_position,
                    a.last_position,
                    time(a.deleted_at),
                    time(a.erased_at)
                );
            }
            print_batches(&batches, headers);
            for p in problems {
                out!("  PROBLEM: {p}");
            }
        }
        Dump::Snapshots { partition, rewrites, records, damage } => {
            out!("== {name}: snapshot sidecar of partition {partition}, rewritten {rewrites} times");
            for r in records {
                out!(
                    "  @{:<10} {:?} v{} schema {} aggregate {:#010x} state {} bytes, after position {} ({}), taken {}{}{}",
                    r.offset,
                    r.stream,
                    r.version,
                    r.schema,
                    r.aggregate,
                    r.state_len,
                    r.position,
                    time(r.event_time),
                    time(r.written),
                    if r.replaces { " (replaces)" } else { "" },
                    if r.superseded { " (superseded)" } else { "" }
                );
            }
            if let Some((at, why)) = damage {
                out!("  end: invalid bytes at byte {at}: {why}");
            }
        }
        Dump::ActiveIndex { partition, base_position, frozen, records, damage } => {
            out!("== {name}: index journal of partition {partition}, segment {base_position}");
            if let Some(f) = frozen {
                out!(
                    "  frozen: bytes {}..{}, positions {}..{}: {} batches of {} streams",
                    f.offsets.0,
                    f.offsets.1,
                    f.positions.0,
                    f.positions.1,
                    f.batches,
                    f.streams
                );
            }
            for r in records {
                out!(
                    "  bytes {}..{}, positions {}..{}: {} batches of {} streams",
                    r.offsets.0,
                    r.offsets.1,
                    r.positions.0,
                    r.positions.1,
                    r.batches,
                    r.streams
                );
            }
            if let Some((at, why)) = damage {
                out!("  end: invalid bytes at byte {at}: {why}");
            }
        }
        Dump::PoisonMarker { partition, segment, durable_end } => {
            out!(
                "== {name}: poison marker of partition {partition}: the next open cuts segment {segment} to byte {durable_end}"
            );
        }
        Dump::Tombstones { partition, deleted, damage } => {
            out!("== {name}: deleted streams of partition {partition}");
            for (stream, at) in deleted {
                out!("  {stream:?} deleted {}", time(at));
            }
            if let Some((at, why)) = damage {
                out!("  end: invalid bytes at byte {at}: {why}");
            }
        }
        Dump::StreamMetadata { partition, records, damage } => {
            out!("== {name}: stream metadata of partition {partition} (a stream's newest record is in force)");
            for (stream, r) in records {
                out!("  {stream:?} {}", meta_line(&r));
            }
            if let Some((at, why)) = damage {
                out!("  end: invalid bytes at byte {at}: {why}");
            }
        }
        Dump::Checkpoints { positions } => {
            out!("== {name}: projection checkpoints (next position per partition)");
            for (p, pos) in positions.iter().enumerate() {
                out!("  partition {p}: {pos}");
            }
        }
        Dump::DeadLetters { records, damage } => {
            out!("== {name}: dead-letter queue");
            for r in records {
                match r {
                    inspect::DeadLetterInfo::Letter {
                        offset,
                        id,
                        time: t,
                        partition,
                        position,
                        stream,
                        version,
                        attempts,
                        error,
                        ..
                    } => out!(
                        "  @{offset:<10} letter {id}: partition {partition} position {position} {stream:?} v{version}, \
                         {attempts} attempts, {}: {}",
                        time(t),
                        show(error.as_bytes())
                    ),
                    inspect::DeadLetterInfo::Resolution { offset, id, time: t, replayed, .. } => out!(
                        "  @{offset:<10} letter {id} {} {}",
                        if replayed { "replayed" } else { "discarded" },
                        time(t)
                    ),
                    _ => out!("  (a record of an unknown kind)"),
                }
            }
            if let Some((at, why)) = damage {
                out!("  end: invalid bytes at byte {at}: {why}");
            }
        }
        Dump::Manifest { partition_count, segment_bytes, created, partition_epoch, growing_to, epochs } => {
            out!(
                "== {name}: manifest: {partition_count} partitions, segments of {segment_bytes} bytes, created {}",
                time(created)
            );
            for (i, (from, to)) in epochs.iter().enumerate() {
                out!("  grow {}: {from} -> {to} partitions", i + 1);
            }
            if growing_to > 0 {
                out!("  a grow to {growing_to} partitions is in progress (epoch {partition_epoch})");
            }
        }
        _ => out!("== {name}: (unknown dump)"),
    }
}

/// The partition a file of a partition directory (`p00001/...`) belongs to.
fn partition_of(path: &Path) -> Option<u32> {
    let dir = path.parent()?.file_name()?.to_str()?;
    dir.strip_prefix('p').filter(|n| n.len() == 5).and_then(|n| n.parse().ok())
}

/// One partition's share of a stream's history: its batches in the order the files gave
/// them (position order: files by first position, each file's batches by position).
#[derive(Default)]
struct PartitionHistory {
    events: u64,
    archived: u64,
    archives: u64,
    segments: u64,
    positions: Option<(u64, u64)>,
    /// Contiguous runs of versions, `(first, last)`, in position order.
    versions: Vec<(u64, u64)>,
    erased: Vec<Erasure>,
    /// When the stream was deleted there, by the partition's tombstones.
    deleted_at: Option<u64>,
    /// Files of the partition that could not be read whole: the history may lack events.
    incomplete: Vec<PathBuf>,
}

/// What `dump DIR --stream S` adds after the files: S's whole history per partition, in
/// archives and segments alike, and the erasure audit records about it.
struct History {
    stream: String,
    partitions: std::collections::BTreeMap<u32, PartitionHistory>,
}

impl History {
    fn add(&mut self, path: &Path, d: &Dump) {
        let (partition, batches, archive, unread) = match d {
            Dump::Segment { partition, batches, damage, .. } => {
                // The active segment may end in a write in progress: not a gap in history.
                (*partition, batches, false, damage.is_some() && !self.is_last_segment(path))
            }
            Dump::Archive { partition, batches, problems, .. } => (*partition, batches, true, !problems.is_empty()),
            Dump::Tombstones { partition, deleted, .. } => {
                if let Some((_, at)) = deleted.iter().find(|(s, _)| *s == self.stream) {
                    self.partitions.entry(*partition).or_default().deleted_at = Some(*at);
                }
                return;
            }
            _ => return,
        };
        let h = self.partitions.entry(partition).or_default();
        h.erased.extend(Erasure::of(path, d).into_iter().filter(|e| e.record.stream == self.stream));
        if unread {
            h.incomplete.push(path.to_path_buf());
        }
        if batches.is_empty() {
            return;
        }
        if archive {
            h.archives += 1
        } else {
            h.segments += 1
        }
        for b in batches {
            h.events += b.event_count;
            if archive {
                h.archived += b.event_count;
            }
            let last = b.position + b.event_count - 1;
            h.positions = Some(h.positions.map_or((b.position, last), |(first, _)| (first, last)));
            let (from, to) = (b.first_version, b.first_version + b.event_count - 1);
            match h.versions.last_mut() {
                Some(run) if run.1.checked_add(1) == Some(from) => run.1 = to,
                _ => h.versions.push((from, to)),
            }
        }
    }

    fn failed(&mut self, path: &Path) {
        if let Some(p) = partition_of(path) {
            self.partitions.entry(p).or_default().incomplete.push(path.to_path_buf());
        }
    }

    /// Whether `path` is its partition's last segment (torn tails are repaired there, not lost).
    fn is_last_segment(&self, path: &Path) -> bool {
        let Some(dir) = path.parent() else { return false };
        let Ok(entries) = std::fs::read_dir(dir) else { return false };
        let last = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .max();
        last.as_deref() == Some(path)
    }

    fn print(mut self, json: bool) {
        self.partitions
            .retain(|_, h| h.events > 0 || !h.erased.is_empty() || h.deleted_at.is_some() || !h.incomplete.is_empty());
        if self.partitions.is_empty() {
            if json {
                out!("{}", serde_json::json!({ "kind": "stream_history", "stream": self.stream, "partition": null }));
            } else {
                out!("== history of stream {:?}: no events and no erasure records in these files", self.stream);
            }
            return;
        }
        for (partition, mut h) in self.partitions {
            h.erased.sort_by_key(|e| (e.record.first_position, e.record.erased_at));
            if json {
                out!(
                    "{}",
                    serde_json::json!({
                        "kind": "stream_history",
                        "stream": self.stream,
                        "partition": partition,
                        "events": h.events,
                        "archived_events": h.archived,
                        "segment_events": h.events - h.archived,
                        "archives": h.archives,
                        "segments": h.segments,
                        "versions": h.versions.iter().map(|(a, b)| [a, b]).collect::<Vec<_>>(),
                        "first_position": h.positions.map(|p| p.0),
                        "last_position": h.positions.map(|p| p.1),
                        "deleted_at": h.deleted_at.map(time),
                        "deleted_at_nanos": h.deleted_at,
                        "erased": h.erased.iter().map(Erasure::json).collect::<Vec<_>>(),
                        "incomplete": h.incomplete.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                    })
                );
                continue;
            }
            let held = match h.positions {
                None => "no events left".to_owned(),
                Some((first, last)) => {
                    let runs: Vec<String> = h.versions.iter().map(|(a, b)| format!("{a}..={b}")).collect();
                    format!(
                        "{} event{}, versions {}, positions {first}..={last}; {} in {} archive{}, {} in {} segment{}",
                        h.events,
                        if h.events == 1 { "" } else { "s" },
                        runs.join(", "),
                        h.archived,
                        h.archives,
                        if h.archives == 1 { "" } else { "s" },
                        h.events - h.archived,
                        h.segments,
                        if h.segments == 1 { "" } else { "s" },
                    )
                }
            };
            let deleted = h.deleted_at.map_or(String::new(), |t| format!(" (deleted {})", time(t)));
            out!("== history of stream {:?} in partition {partition}{deleted}: {held}", self.stream);
            for e in &h.erased {
                out!("  erased: {} ({})", e.what(), e.file.display());
            }
            for f in &h.incomplete {
                out!("  INCOMPLETE: {} could not be read whole (see above)", f.display());
            }
        }
    }
}

pub fn dump(args: DumpArgs) -> Result<(), Box<dyn std::error::Error>> {
    let filter = Filter { stream: args.stream.clone(), from: args.from, to: args.to, correlation: args.correlation };
    let files = if args.path.is_dir() { inspect::files(&args.path)? } else { vec![args.path.clone()] };
    if files.is_empty() {
        return Err(format!("{} holds no strata files", args.path.display()).into());
    }
    // A stream's whole history, when asked for over a directory's files.
    let mut history = match &args.stream {
        Some(s) if args.path.is_dir() => {
            Some(History { stream: s.clone(), partitions: std::collections::BTreeMap::new() })
        }
        _ => None,
    };
    let mut failed = 0;
    for f in files {
        match inspect::dump(&f, &filter) {
            Ok(d) => {
                if let Some(h) = history.as_mut() {
                    h.add(&f, &d);
                }
                dump_one(&f, d, args.headers, args.json);
            }
            Err(e) => {
                if args.json {
                    out!("{}", serde_json::json!({ "file": f.display().to_string(), "error": e.to_string() }));
                } else {
                    out!("== {}: {e}", f.display());
                }
                if let Some(h) = history.as_mut() {
                    h.failed(&f);
                }
                failed += 1;
            }
        }
    }
    if let Some(h) = history {
        h.print(args.json);
    }
    if failed > 0 {
        return Err(format!("{failed} file(s) could not be read").into());
    }
    Ok(())
}
