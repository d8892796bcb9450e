//! `strata audit`: what was erased and when, across every partition's archives.
//!
//! A deleted stream's events are erased when compaction archives or rewrites the range that
//! held them, and each write that erases some leaves an audit record in the archive it writes
//! (FORMAT.md §14.3, §15.3): the stream, how many events, the first and last position, when the
//! stream was deleted and when its events were erased. This lists them all, read-only through
//! `strata::inspect` (safe beside a running store), oldest erasure first.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use strata::compaction::AuditRecord;
use strata::inspect::{self, Dump, Filter};

use crate::common::time;
use crate::json::put_time;

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// The store's directory (or one partition's directory).
    dir: PathBuf,
    /// Only the records about this stream.
    #[arg(long)]
    stream: Option<String>,
    /// One JSON object per line: each record (`"kind": "erasure"`), each problem
    /// (`"problem"`), then the summary (`"summary"`).
    #[arg(long)]
    json: bool,
}

/// One erasure audit record, with the archive it was found in.
#[derive(Debug, Clone)]
pub struct Erasure {
    /// The archive file.
    pub file: PathBuf,
    /// Its partition.
    pub partition: u32,
    /// The record, as the archive holds it.
    pub record: AuditRecord,
}

impl Erasure {
    /// The audit records of an archive's dump (none for any other file).
    pub fn of(file: &Path, d: &Dump) -> Vec<Erasure> {
        let Dump::Archive { partition, audit, .. } = d else {
            return Vec::new();
        };
        audit.iter().map(|a| Erasure { file: file.to_path_buf(), partition: *partition, record: a.clone() }).collect()
    }

    /// "N events at positions a..=b, deleted T, erased T'": what `dump` prints too.
    pub fn what(&self) -> String {
        format!(
            "{} event{} at positions {}..={}, deleted {}, erased {}",
            self.record.events,
            if self.record.events == 1 { "" } else { "s" },
            self.record.first_position,
            self.record.last_position,
            time(self.record.deleted_at),
            time(self.record.erased_at)
        )
    }

    /// As JSON, times as text and `*_nanos`.
    pub fn json(&self) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("kind".into(), "erasure".into());
        o.insert("partition".into(), self.partition.into());
        o.insert("file".into(), self.file.display().to_string().into());
        o.insert("stream".into(), self.record.stream.clone().into());
        o.insert("events".into(), self.record.events.into());
        o.insert("first_position".into(), self.record.first_position.into());
        o.insert("last_position".into(), self.record.last_position.into());
        put_time(&mut o, "deleted_at", self.record.deleted_at);
        put_time(&mut o, "erased_at", self.record.erased_at);
        Value::Object(o)
    }
}

/// Lists every erasure audit record; `Ok(false)` when an archive could not be read (whole or
/// in part), which is reported, the others listed all the same.
pub fn audit(args: AuditArgs) -> Result<bool, Box<dyn std::error::Error>> {
    if !args.dir.is_dir() {
        return Err(format!("{} is not a directory", args.dir.display()).into());
    }
    let files = inspect::files(&args.dir)?;
    if files.is_empty() {
        return Err(format!("{} holds no strata files", args.dir.display()).into());
    }
    let mut records = Vec::new();
    let mut problems: Vec<(PathBuf, String)> = Vec::new();
    let mut read = 0u64;
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "arc")) {
        // No batch is kept; the blocks are still decompressed and checked, so that damage to
        // them is reported (the audit records are in the meta section, under its own CRC).
        match inspect::dump(f, &Filter { to: Some(0), ..Filter::default() }) {
            Ok(d @ Dump::Archive { .. }) => {
                read += 1;
                let kept = Erasure::of(f, &d);
                records
                    .extend(kept.into_iter().filter(|r| args.stream.as_deref().is_none_or(|s| s == r.record.stream)));
                if let Dump::Archive { problems: p, .. } = d {
                    problems.extend(p.into_iter().map(|p| (f.clone(), format!("{}: {p}", f.display()))));
                }
            }
            Ok(_) => problems.push((f.clone(), format!("{}: not an archive", f.display()))),
            Err(e) => problems.push((f.clone(), e.to_string())),
        }
    }
    records.sort_by(|a, b| {
        (a.record.erased_at, a.partition, a.record.first_position, &a.record.stream).cmp(&(
            b.record.erased_at,
            b.partition,
            b.record.first_position,
            &b.record.stream,
        ))
    });
    let streams = records.iter().map(|r| r.record.stream.as_str()).collect::<std::collections::BTreeSet<_>>().len();
    let events: u64 = records.iter().map(|r| r.record.events).sum();
    if args.json {
        for r in &records {
            out!("{}", r.json());
        }
        for (file, error) in &problems {
            out!("{}", json!({ "kind": "problem", "file": file.display().to_string(), "error": error }));
        }
        out!(
            "{}",
            json!({
                "kind": "summary",
                "records": records.len(),
                "streams": streams,
                "events_erased": events,
                "archives_read": read,
                "problems": problems.len(),
            })
        );
    } else {
        for r in &records {
            out!(
                "erased {}: {:?} of partition {}, {} event{} at positions {}..={}, deleted {} ({})",
                time(r.record.erased_at),
                r.record.stream,
                r.partition,
                r.record.events,
                if r.record.events == 1 { "" } else { "s" },
                r.record.first_position,
                r.record.last_position,
                time(r.record.deleted_at),
                r.file.display()
            );
        }
        for (_, p) in &problems {
            out!("PROBLEM: {p}");
        }
        out!(
            "{} erasure record{} of {} stream{}, {} events erased; {} archive{} read{}",
            records.len(),
            if records.len() == 1 { "" } else { "s" },
            streams,
            if streams == 1 { "" } else { "s" },
            events,
            read,
            if read == 1 { "" } else { "s" },
            if problems.is_empty() { String::new() } else { format!(", {} problem(s)", problems.len()) }
        );
    }
    Ok(problems.is_empty())
}
