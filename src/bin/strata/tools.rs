//! `strata dump`, `verify`, `stats` and `compact`: looking into a store from the outside.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use strata::inspect::{self, BatchInfo, Dump, Filter};
use strata::{CompactionOptions, Options, Store};

/// `println!` that ends the program when stdout is closed (`strata dump | head`) instead of
/// panicking, with the status a shell gives a process killed by SIGPIPE.
macro_rules! out {
    ($($t:tt)*) => {
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(141)
        }
    };
}

#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// A segment (.log), index (.idx), archive (.arc), snapshot sidecar, tombstones or
    /// checkpoints file; or a store or partition directory (every file in it, in log order).
    path: PathBuf,
    /// Only this stream's batches (and snapshots).
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
}

#[derive(clap::Args, Debug)]
pub struct DirArgs {
    /// The store's directory.
    dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct CompactArgs {
    /// The store's directory.
    dir: PathBuf,
    /// Archive every sealed segment, whatever the policy.
    #[arg(long)]
    force: bool,
    /// Archive segments whose newest event is at least this many seconds old.
    #[arg(long, default_value_t = 7 * 86_400)]
    older_than: u64,
    /// Do not require every stream in a segment to be snapshotted past it.
    #[arg(long)]
    no_snapshot_check: bool,
    /// Also archive the oldest sealed segments while a partition holds more than this many
    /// MiB of them.
    #[arg(long)]
    hot_mib: Option<u64>,
    /// Compact at most this many MiB of segments per second.
    #[arg(long)]
    throttle_mib: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct GrowArgs {
    /// The store's directory.
    dir: PathBuf,
    /// The new partition count (at least the current one; the same count resumes an
    /// interrupted grow).
    #[arg(long)]
    partitions: u32,
}

/// A UTC date and time from nanoseconds since the Unix epoch.
fn time(nanos: u64) -> String {
    let secs = nanos / 1_000_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        nanos / 1_000_000 % 1000
    )
}

/// Bytes as text if they are UTF-8 without control characters, else as hex; long ones cut.
fn show(bytes: &[u8]) -> String {
    const MAX: usize = 160;
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            let cut: String = s.chars().take(MAX).collect();
            if cut.len() < s.len() { format!("{cut}... ({} bytes)", bytes.len()) } else { cut }
        }
        _ => {
            let hex: String = bytes.iter().take(MAX / 2).map(|b| format!("{b:02x}")).collect();
            if bytes.len() > MAX / 2 { format!("0x{hex}... ({} bytes)", bytes.len()) } else { format!("0x{hex}") }
        }
    }
}

fn print_batches(batches: &[BatchInfo], headers_only: bool) {
    for b in batches {
        out!(
            "  @{:<10} position {:<10} {:?} v{}..={} ({} event{}) {} len {} crc ok",
            b.offset,
            b.position,
            b.stream,
            b.first_version,
            b.first_version + b.events.len() as u64 - 1,
            b.events.len(),
            if b.events.len() == 1 { "" } else { "s" },
            time(b.timestamp),
            b.length
        );
        if headers_only {
            continue;
        }
        for (i, e) in b.events.iter().enumerate() {
            let meta = if e.metadata.is_empty() { String::new() } else { format!(" meta {}", show(&e.metadata)) };
            out!("      [{}] {} {}{meta}", b.position + i as u64, e.event_type, show(&e.payload));
        }
    }
}

fn dump_one(path: &Path, filter: &Filter, headers: bool) -> strata::Result<()> {
    let d = inspect::dump(path, filter)?;
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
        Dump::Tombstones { partition, deleted, damage } => {
            out!("== {name}: deleted streams of partition {partition}");
            for (stream, at) in deleted {
                out!("  {stream:?} deleted {}", time(at));
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
    Ok(())
}

pub fn dump(args: DumpArgs) -> Result<(), Box<dyn std::error::Error>> {
    let filter = Filter { stream: args.stream.clone(), from: args.from, to: args.to };
    let files = if args.path.is_dir() { inspect::files(&args.path)? } else { vec![args.path.clone()] };
    if files.is_empty() {
        return Err(format!("{} holds no strata files", args.path.display()).into());
    }
    let mut failed = 0;
    for f in files {
        if let Err(e) = dump_one(&f, &filter, args.headers) {
            out!("== {}: {e}", f.display());
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(format!("{failed} file(s) could not be read").into());
    }
    Ok(())
}

/// Every problem in a store: first each file on its own (read-only), then the store opened
/// and read back through its indexes. Returns the problems, one line each.
fn problems(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let files = match inspect::files(dir) {
        Ok(f) => f,
        Err(e) => return vec![e.to_string()],
    };
    // The last segment of a partition may end in a torn write, which open cuts off.
    let mut last_segment = std::collections::HashMap::new();
    for f in &files {
        if f.extension().is_some_and(|e| e == "log") {
            last_segment.insert(f.parent().map(Path::to_path_buf), f.clone());
        }
    }
    for f in &files {
        let name = f.display();
        match inspect::dump(f, &Filter { to: Some(0), ..Filter::default() }) {
            Err(e) => out.push(e.to_string()),
            Ok(Dump::Segment { damage: Some((at, why)), .. }) => {
                if last_segment.get(&f.parent().map(Path::to_path_buf)) != Some(f) {
                    out.push(format!("corruption in {name} at byte {at}: {why}"));
                }
            }
            Ok(Dump::Archive { problems, .. }) => out.extend(problems.into_iter().map(|p| format!("{name}: {p}"))),
            // A sidecar's or tombstone file's last record may be a write a crash cut short:
            // the engine cuts it (and refuses to open if valid records follow a bad one).
            Ok(Dump::Snapshots { damage: Some((at, why)), .. } | Dump::Tombstones { damage: Some((at, why)), .. }) => {
                out!("note: {name} ends in invalid bytes at byte {at} ({why}): a torn last write is cut off");
            }
            Ok(_) => {}
        }
    }
    match Store::open(dir, Options::default().compaction(CompactionOptions::default().interval(None))) {
        Ok(store) => {
            for e in store.verify() {
                // The same damage, seen file by file above, is listed once.
                let e = e.to_string();
                if !out.contains(&e) {
                    out.push(e);
                }
            }
            // Open repairs what a crash leaves (a torn tail, a half-done compaction, temp
            // files): noted. An index that had to be rebuilt, or a snapshot that could not be
            // read, was damage: a problem.
            for r in store.recovery_report() {
                match &r {
                    strata::RecoveryAction::RebuiltIndex { path, reason } => {
                        out.push(format!("corruption in {}: index rebuilt on open: {reason}", path.display()));
                    }
                    strata::RecoveryAction::SnapshotUnreadable { path, offset, reason, .. } => {
                        out.push(format!("corruption in {} at byte {offset}: {reason}", path.display()));
                    }
                    other => out!("note: repaired on open: {other:?}"),
                }
            }
        }
        Err(e) => out.push(format!("the store does not open: {e}")),
    }
    out
}

pub fn verify(args: DirArgs) -> Result<bool, Box<dyn std::error::Error>> {
    let problems = problems(&args.dir);
    if problems.is_empty() {
        out!("all ok");
        return Ok(true);
    }
    for p in &problems {
        out!("PROBLEM: {p}");
    }
    out!("{} problem(s)", problems.len());
    Ok(false)
}

fn bar(n: u64, max: u64, width: usize) -> String {
    let len = if max == 0 { 0 } else { ((n as f64 / max as f64) * width as f64).round() as usize };
    "#".repeat(len)
}

pub fn stats(args: DirArgs) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(&args.dir, Options::default().compaction(CompactionOptions::default().interval(None)))?;
    let storage = store.storage()?;
    out!("store {}: {} partitions", args.dir.display(), store.partition_count());
    let row = |cells: [String; 11]| {
        out!(
            "{:>9} {:>8} {:>12} {:>8} {:>12} {:>8} {:>11} {:>11} {:>8} {:>6} {:>7}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8],
            cells[9],
            cells[10]
        );
    };
    row([
        "partition",
        "segments",
        "seg bytes",
        "archives",
        "arc bytes",
        "ratio",
        "positions",
        "events",
        "streams",
        "erased",
        "deleted",
    ]
    .map(String::from));
    let (mut heads, mut events, mut streams) = (Vec::new(), Vec::new(), Vec::new());
    for s in &storage {
        let head = store.head(s.partition)?;
        // Count the partition's events and streams by reading it (no file holds the counts).
        let mut seen = std::collections::HashSet::new();
        let (mut from, mut live) = (0, 0u64);
        loop {
            let batch = store.read_partition(s.partition, from, 65_536)?;
            let Some(last) = batch.last() else { break };
            from = last.position + 1;
            live += batch.len() as u64;
            seen.extend(batch.into_iter().map(|e| e.stream_id));
        }
        row([
            s.partition.to_string(),
            s.segments.to_string(),
            s.segment_bytes.to_string(),
            s.archives.to_string(),
            s.archive_bytes.to_string(),
            if s.archives > 0 { format!("{:.2}", s.archive_ratio()) } else { "-".into() },
            head.to_string(),
            live.to_string(),
            seen.len().to_string(),
            s.erased_events.to_string(),
            s.deleted_streams.to_string(),
        ]);
        if s.unreadable_archives > 0 {
            out!("  partition {}: {} unreadable archive(s)", s.partition, s.unreadable_archives);
        }
        heads.push(head);
        events.push(live);
        streams.push(seen.len() as u64);
    }
    let (max_e, max_s) = (events.iter().copied().max().unwrap_or(0), streams.iter().copied().max().unwrap_or(0));
    out!("\nevents per partition");
    for (p, n) in events.iter().enumerate() {
        out!("  p{p:<5} {n:>12} {}", bar(*n, max_e, 40));
    }
    out!("streams per partition");
    for (p, n) in streams.iter().enumerate() {
        out!("  p{p:<5} {n:>12} {}", bar(*n, max_s, 40));
    }
    let projections = args.dir.join("projections");
    if projections.is_dir() {
        out!("projections (checkpoint = next position to handle; lag = head - checkpoint, in positions)");
        let mut names: Vec<PathBuf> =
            std::fs::read_dir(&projections)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for p in names {
            let file = p.join("checkpoints");
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match inspect::dump(&file, &Filter::default()) {
                Ok(Dump::Checkpoints { positions }) => {
                    let lag: Vec<String> =
                        positions.iter().zip(&heads).map(|(c, h)| format!("{}", h.saturating_sub(*c))).collect();
                    out!("  {name}: checkpoints {positions:?}, lag {}", lag.join(" "));
                }
                Ok(_) => out!("  {name}: no checkpoint file"),
                Err(e) => out!("  {name}: {e}"),
            }
        }
    }
    Ok(())
}

pub fn compact(args: CompactArgs) -> Result<(), Box<dyn std::error::Error>> {
    let policy = CompactionOptions::default()
        .interval(None)
        .retention(Duration::from_secs(args.older_than))
        .require_snapshots(!args.no_snapshot_check)
        .max_hot_bytes(args.hot_mib.map(|m| m << 20))
        .throttle(args.throttle_mib.map(|m| m << 20));
    let store = Store::open(&args.dir, Options::default().compaction(policy))?;
    let progress = ProgressBar::new(0);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let r = store.compact_with(args.force, &mut |p| {
        progress.set_length(p.planned);
        progress.set_position(p.done);
    })?;
    progress.finish_and_clear();
    out!(
        "compacted {} segments into {} archives ({} rewritten to erase deleted streams) in {:.2} s",
        r.segments_archived,
        r.archives_written,
        r.archives_rewritten,
        r.elapsed.as_secs_f64()
    );
    out!(
        "  {} bytes of segments in {} bytes of archives (ratio {:.2}); {} events archived, {} erased, {} snapshots erased",
        r.bytes_in,
        r.bytes_out,
        r.ratio(),
        r.events_archived,
        r.events_erased,
        r.snapshots_erased
    );
    for s in &r.skipped {
        out!("  SKIPPED (damaged): {s}");
    }
    store.close()?;
    Ok(())
}

pub fn grow(args: GrowArgs) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(&args.dir, Options::default())?;
    let r = store.grow_partitions(args.partitions)?;
    if r.from == r.to && !r.resumed {
        out!("{}: already {} partitions; nothing to do", args.dir.display(), r.to);
    } else {
        out!(
            "grew {} from {} to {} partitions (epoch {}){}: {} streams moved, {} events copied in {} rounds",
            args.dir.display(),
            r.from,
            r.to,
            r.epoch,
            if r.resumed { ", resuming an interrupted grow" } else { "" },
            r.moved_streams,
            r.copied_events,
            r.rounds
        );
        out!(
            "  cutover: appends paused {:.1} ms for {} events; {} batches were copied before",
            r.cutover.as_secs_f64() * 1e3,
            r.cutover_events,
            r.already_copied
        );
    }
    store.close()?;
    Ok(())
}
