//! `strata stats`: per partition, what is on disk and what it holds; projections and lag.

use std::io::Write;
use std::path::PathBuf;

use strata::compaction::CompactionOptions;
use strata::inspect::{self, Dump, Filter};
use strata::{Options, Store};

use crate::common::bar;

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// The store's directory.
    pub dir: PathBuf,
    /// Print one JSON object instead of the tables.
    #[arg(long)]
    pub json: bool,
}

/// The streams routed to `partition` with stream metadata in force (each stream's newest
/// record; the copies a grow left in earlier partitions are not counted again), and how many
/// of those read as soft-deleted now (not appended to since).
fn metadata_counts(store: &Store, dir: &std::path::Path, partition: u32) -> strata::Result<(u64, u64)> {
    let file = dir.join(format!("p{partition:05}")).join("stream-meta");
    let Ok(Dump::StreamMetadata { records, .. }) = inspect::dump(&file, &Filter::default()) else {
        return Ok((0, 0));
    };
    let streams: std::collections::BTreeSet<String> =
        records.into_iter().map(|(s, _)| s).filter(|s| store.partition_of(s) == partition).collect();
    let mut soft = 0;
    for s in &streams {
        soft += u64::from(store.is_soft_deleted(s)?);
    }
    Ok((streams.len() as u64, soft))
}

pub fn stats(args: StatsArgs) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(&args.dir, Options::default().compaction(CompactionOptions::default().interval(None)))?;
    let storage = store.storage()?;
    if !args.json {
        out!("store {}: {} partitions", args.dir.display(), store.partition_count());
    }
    let json = args.json;
    let row = |cells: [String; 13]| {
        if json {
            return;
        }
        out!(
            "{:>9} {:>8} {:>12} {:>8} {:>12} {:>8} {:>11} {:>11} {:>8} {:>6} {:>7} {:>8} {:>6}",
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
            cells[10],
            cells[11],
            cells[12]
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
        "soft-del",
        "meta",
    ]
    .map(String::from));
    let (mut heads, mut events, mut streams) = (Vec::new(), Vec::new(), Vec::new());
    let mut parts_json = Vec::new();
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
        let (with_meta, soft) = metadata_counts(&store, &args.dir, s.partition)?;
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
            soft.to_string(),
            with_meta.to_string(),
        ]);
        parts_json.push(serde_json::json!({
            "partition": s.partition,
            "segments": s.segments,
            "segment_bytes": s.segment_bytes,
            "archives": s.archives,
            "archive_bytes": s.archive_bytes,
            "archive_ratio": (s.archives > 0).then(|| s.archive_ratio()),
            "unreadable_archives": s.unreadable_archives,
            "head": head,
            "events": live,
            "streams": seen.len(),
            "erased_events": s.erased_events,
            "deleted_streams": s.deleted_streams,
            "soft_deleted_streams": soft,
            "streams_with_metadata": with_meta,
        }));
        if s.unreadable_archives > 0 && !json {
            out!("  partition {}: {} unreadable archive(s)", s.partition, s.unreadable_archives);
        }
        heads.push(head);
        events.push(live);
        streams.push(seen.len() as u64);
    }
    if json {
        let projections = projections_json(&args.dir, &heads)?;
        out!(
            "{}",
            serde_json::json!({
                "store": args.dir.display().to_string(),
                "partition_count": store.partition_count(),
                "partitions": parts_json,
                "projections": projections,
            })
        );
        return Ok(());
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

/// Each projection's checkpoints and lag, as JSON.
fn projections_json(dir: &std::path::Path, heads: &[u64]) -> std::io::Result<Vec<serde_json::Value>> {
    let projections = dir.join("projections");
    let mut out = Vec::new();
    if !projections.is_dir() {
        return Ok(out);
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(&projections)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for p in names {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        out.push(match inspect::dump(&p.join("checkpoints"), &Filter::default()) {
            Ok(Dump::Checkpoints { positions }) => {
                let lag: Vec<u64> = positions.iter().zip(heads).map(|(c, h)| h.saturating_sub(*c)).collect();
                serde_json::json!({ "name": name, "checkpoints": positions, "lag": lag })
            }
            Ok(_) => serde_json::json!({ "name": name, "checkpoints": null }),
            Err(e) => serde_json::json!({ "name": name, "error": e.to_string() }),
        });
    }
    Ok(out)
}
