//! `strata tail`: follow a store live, like a console consumer, printing one line per event.
//!
//! If no other process has the store open, `tail` opens it and follows it through
//! `Store::subscribe_all` (or `subscribe_partition`): durable events only, deleted and hidden
//! ones passed over, and the cursor it stopped at printed on exit (`--from` resumes it). If the
//! store is open in another process (its lock is held), `tail` follows the partitions' segment
//! files instead, read-only: a batch shows once its checksum holds, which may be before the
//! writing process has made it durable, and stream metadata and tombstones are not applied.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata::compaction::CompactionOptions;
use strata::subscription::{Cursor, Filter};
use strata::{Error, EventView, Options, RecordedEvent, Store};

use crate::common::{show, time};
use crate::json::{self, hex};

#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// The store's directory.
    pub dir: PathBuf,
    /// Follow one partition only.
    #[arg(long, conflicts_with = "all")]
    pub partition: Option<u32>,
    /// Follow every partition (the default).
    #[arg(long)]
    pub all: bool,
    /// Only the streams of this category (the part of the stream id before the first '-').
    #[arg(long)]
    pub category: Option<String>,
    /// Only events of this type.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Where to start: `start` (every event), `end` (what is appended from now on, the
    /// default), or a cursor as printed when a tail ends (hex).
    #[arg(long, default_value = "end")]
    pub from: String,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop once nothing new came for this many milliseconds.
    #[arg(long)]
    pub idle_ms: Option<u64>,
    /// Print each event as one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// One event as a line.
struct Line<'a> {
    partition: u32,
    position: u64,
    stream: &'a str,
    version: u64,
    timestamp: u64,
    event_type: &'a str,
    payload: &'a [u8],
}

impl Line<'_> {
    fn print(&self, json: bool) {
        if json {
            let mut v = serde_json::Map::new();
            v.insert("partition".into(), self.partition.into());
            v.insert("position".into(), self.position.into());
            v.insert("stream".into(), self.stream.into());
            v.insert("version".into(), self.version.into());
            json::put_time(&mut v, "timestamp", self.timestamp);
            v.insert("type".into(), self.event_type.into());
            json::put_bytes(&mut v, "payload", self.payload);
            out!("{}", serde_json::Value::Object(v));
        } else {
            out!(
                "p{} @{} {} {} v{} {}: {}",
                self.partition,
                self.position,
                time(self.timestamp),
                self.stream,
                self.version,
                self.event_type,
                show(self.payload)
            );
        }
    }
}

fn filter(args: &TailArgs) -> Filter {
    match (&args.category, &args.event_type) {
        (Some(c), Some(t)) => {
            let (c, t) = (c.clone(), t.clone());
            Filter::predicate(move |e| {
                e.event_type == t && e.stream_id.split_once('-').is_some_and(|(cat, _)| cat == c)
            })
        }
        (Some(c), None) => Filter::category(c.as_str()),
        (None, Some(t)) => Filter::event_type(t.as_str()),
        (None, None) => Filter::all(),
    }
}

pub fn tail(args: TailArgs) -> Result<(), Box<dyn std::error::Error>> {
    let opts = Options::default().compaction(CompactionOptions::default().interval(None));
    match Store::open(&args.dir, opts) {
        Ok(store) => follow_store(&store, &args),
        Err(Error::Locked { .. }) => {
            eprintln!("the store is open in another process: following its segment files (read-only)");
            follow_files(&args)
        }
        Err(e) => Err(e.into()),
    }
}

/// When to stop: after `count` events, or after `idle_ms` without one.
struct Stop {
    count: Option<u64>,
    idle: Option<Duration>,
    seen: u64,
    last: Instant,
}

impl Stop {
    fn new(args: &TailArgs) -> Stop {
        Stop { count: args.count, idle: args.idle_ms.map(Duration::from_millis), seen: 0, last: Instant::now() }
    }

    fn saw(&mut self) {
        self.seen += 1;
        self.last = Instant::now();
    }

    fn done(&self) -> bool {
        self.count.is_some_and(|c| self.seen >= c) || self.idle.is_some_and(|i| self.last.elapsed() >= i)
    }
}

fn follow_store(store: &Store, args: &TailArgs) -> Result<(), Box<dyn std::error::Error>> {
    let from = match args.from.as_str() {
        "start" => Cursor::start(),
        "end" => store.head_cursor()?,
        hexed => Cursor::from_bytes(&unhex(hexed).ok_or("--from: not start, end or a hex cursor")?)?,
    };
    let mut sub = match args.partition {
        Some(p) => store.subscribe_partition(p, from.position(p), filter(args))?,
        None => store.subscribe_all(from, filter(args)),
    };
    let mut stop = Stop::new(args);
    while !stop.done() {
        let room = stop.count.map_or(1024, |c| (c - stop.seen).min(1024)) as usize;
        sub.visit(room, |e: &EventView<'_>| {
            Line {
                partition: e.partition,
                position: e.position,
                stream: e.stream_id,
                version: e.version,
                timestamp: e.timestamp_nanos,
                event_type: e.event_type,
                payload: e.payload,
            }
            .print(args.json);
            stop.saw();
            std::ops::ControlFlow::Continue(())
        })?;
        if !stop.done() && sub.lag()? == 0 {
            // Caught up: wait for the next event (or the idle limit).
            let wait = stop.idle.map_or(Duration::from_millis(200), |i| i.saturating_sub(stop.last.elapsed()));
            let next: Vec<RecordedEvent> = sub.next_batch(1, wait.min(Duration::from_millis(200)))?;
            for e in &next {
                Line {
                    partition: e.partition,
                    position: e.position,
                    stream: &e.stream_id,
                    version: e.version,
                    timestamp: e.timestamp_nanos,
                    event_type: &e.event_type,
                    payload: &e.payload,
                }
                .print(args.json);
                stop.saw();
            }
        }
    }
    eprintln!("cursor {}", hex(&sub.cursor().to_bytes()));
    Ok(())
}

/// A partition's segment files, by base position.
fn segment_files(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let base = path.file_stem()?.to_str()?.parse().ok()?;
            (path.extension()? == "log").then_some((base, path))
        })
        .collect();
    out.sort();
    out
}

/// The batches of segment file `path` holding positions at or after `from`.
fn batches_from(path: &Path, from: u64) -> Vec<strata::inspect::BatchInfo> {
    let filter = strata::inspect::Filter { from: Some(from), ..Default::default() };
    match strata::inspect::dump(path, &filter) {
        Ok(strata::inspect::Dump::Segment { batches, .. }) => batches,
        _ => Vec::new(),
    }
}

fn follow_files(args: &TailArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut parts: Vec<(u32, PathBuf)> = std::fs::read_dir(&args.dir)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_prefix('p')?.parse().ok()?;
            e.path().is_dir().then_some((id, e.path()))
        })
        .filter(|(id, _)| args.partition.is_none_or(|p| p == *id))
        .collect();
    parts.sort();
    let cursor = match args.from.as_str() {
        "start" | "end" => None,
        hexed => Some(Cursor::from_bytes(&unhex(hexed).ok_or("--from: not start, end or a hex cursor")?)?),
    };
    // The next position to print, per partition.
    let mut next: Vec<u64> = parts
        .iter()
        .map(|(id, dir)| match (&cursor, args.from.as_str()) {
            (Some(c), _) => c.position(*id),
            (None, "start") => 0,
            _ => segment_files(dir).last().map_or(0, |(base, path)| {
                batches_from(path, *base).last().map_or(*base, |b| b.position + b.event_count)
            }),
        })
        .collect();
    let keep = filter(args);
    let mut stop = Stop::new(args);
    while !stop.done() {
        let mut printed = false;
        for ((id, dir), next) in parts.iter().zip(next.iter_mut()) {
            let files = segment_files(dir);
            for (k, (_, path)) in files.iter().enumerate() {
                // Only the files that may hold `next` or later (archived history is not followed).
                if files.get(k + 1).is_some_and(|(following, _)| *following <= *next) {
                    continue;
                }
                'batches: for b in batches_from(path, *next) {
                    for (i, e) in b.events.iter().enumerate() {
                        if e.position < *next {
                            continue;
                        }
                        // The cursor stays at the first event not shown.
                        if stop.done() {
                            break 'batches;
                        }
                        let view = EventView {
                            stream_id: &b.stream,
                            version: b.first_version + i as u64,
                            partition: *id,
                            position: e.position,
                            timestamp_nanos: b.timestamp,
                            event_type: &e.event_type,
                            metadata: &e.metadata,
                            payload: &e.payload,
                            id: e.id,
                            correlation_id: e.correlation_id,
                            causation_id: e.causation_id,
                        };
                        *next = e.position + 1;
                        if !keep.matches(&view) {
                            continue;
                        }
                        Line {
                            partition: *id,
                            position: e.position,
                            stream: &b.stream,
                            version: view.version,
                            timestamp: b.timestamp,
                            event_type: &e.event_type,
                            payload: &e.payload,
                        }
                        .print(args.json);
                        stop.saw();
                        printed = true;
                    }
                }
            }
        }
        if !printed && !stop.done() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let positions = parts.iter().map(|(id, _)| *id).zip(&next).fold(Vec::new(), |mut v, (id, n)| {
        v.resize(v.len().max(id as usize + 1), 0);
        v[id as usize] = *n;
        v
    });
    eprintln!("cursor {}", hex(&Cursor::from_positions(positions).to_bytes()));
    Ok(())
}
