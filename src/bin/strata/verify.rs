//! `strata verify`: every file checked on its own, then the store opened and read back.

use std::io::Write;
use std::path::{Path, PathBuf};

use strata::compaction::CompactionOptions;
use strata::inspect::{self, Dump, Filter};
use strata::{Options, Store};

#[derive(clap::Args, Debug)]
pub struct DirArgs {
    /// The store's directory.
    pub dir: PathBuf,
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
            // A sidecar's, tombstone or stream metadata file's last record may be a write a
            // crash cut short: the engine cuts it (and refuses to open if valid records follow
            // a bad one).
            Ok(
                Dump::Snapshots { damage: Some((at, why)), .. }
                | Dump::Tombstones { damage: Some((at, why)), .. }
                | Dump::StreamMetadata { damage: Some((at, why)), .. },
            ) => {
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
