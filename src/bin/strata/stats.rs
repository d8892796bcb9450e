//! `strata stats`: per partition, what is on disk and what it holds; projections and lag.

use std::io::Write;
use std::path::PathBuf;

use strata::compaction::CompactionOptions;
use strata::inspect::{self, Dump, Filter};
use strata::{Options, Store};

use crate::common::bar;
use crate::verify::DirArgs;

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
