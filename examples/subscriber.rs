//! A subscriber that follows a store and keeps its cursor durably, so a restart resumes
//! exactly where it stopped: nothing is seen twice and nothing is missed.
//!
//! A writer thread appends events to a few hundred streams while the subscriber follows the
//! store with [`Store::subscribe_all`], storing its cursor ([`Cursor::to_bytes`]) in a file
//! after each batch (written to a temporary file, synced, renamed into place, the directory
//! synced). The subscriber stops halfway and starts again from the file while the writer goes
//! on; then the store itself is closed and reopened, more events are appended, and the
//! subscriber resumes once more. Every event is checked: each stream's versions must arrive
//! in order, each exactly once, and at the end every appended event must have been seen.
//!
//! ```sh
//! cargo run --example subscriber            # 20,000 events
//! cargo run --example subscriber -- 200000  # or STRATA_EXAMPLE_EVENTS=200000
//! ```

use std::collections::HashMap;
use std::error::Error;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use strata::subscription::{Cursor, Filter};
use strata::{EventData, ExpectedVersion, Options, Store};

/// Streams the writer appends to.
const STREAMS: u64 = 256;
/// Events per append.
const PER_APPEND: u64 = 20;
/// Events appended after the store is reopened.
const AFTER_REOPEN: u64 = 1_000;
/// A run that sees nothing for this long while it expects more fails.
const STALL: Duration = Duration::from_secs(30);

type Failure = Box<dyn Error + Send + Sync>;

fn main() -> Result<(), Failure> {
    let events = size(20_000)?;
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    let cursor_file = dir.path().join("subscriber.cursor");
    let options = || Options::default().create_if_missing(true).partitions(4).segment_bytes(4 << 20);
    let started = Instant::now();

    // What the subscriber has seen: for each stream, the next version it expects. A real
    // subscriber stores what it builds together with the cursor; this one keeps its check in
    // memory across the restarts it simulates.
    let mut seen = Seen::default();

    let store = Store::open(&store_dir, options())?;
    let writer_done = AtomicBool::new(false);
    let (first, second) = std::thread::scope(|s| -> Result<_, Failure> {
        let writer = s.spawn(|| {
            let appended = append(&store, 0, events);
            writer_done.store(true, Ordering::Release);
            appended
        });
        // First run: from the start (no cursor file yet), until half the events are in.
        let first = follow(&store, &cursor_file, &mut seen, |seen| seen.total >= events / 2)?;
        // "Restart": a new subscription from the stored cursor, until the writer is done and
        // everything it appended has been seen.
        let second = follow(&store, &cursor_file, &mut seen, |seen| {
            writer_done.load(Ordering::Acquire) && seen.total >= events
        })?;
        writer.join().expect("writer panicked")?;
        Ok((first, second))
    })?;
    store.close()?;
    drop(store);

    // A restart of the whole process: reopen the store, append more, resume from the file.
    let store = Store::open(&store_dir, options())?;
    append(&store, events, AFTER_REOPEN)?;
    let third = follow(&store, &cursor_file, &mut seen, |seen| seen.total >= events + AFTER_REOPEN)?;

    // Nothing is missed: every stream was seen up to its last version, and nothing more is
    // delivered from the stored cursor.
    let total = events + AFTER_REOPEN;
    assert_eq!(seen.total, total, "events seen");
    for (stream, next) in &seen.next {
        assert_eq!(store.stream_version(stream)?.map(|v| v + 1), Some(*next), "{stream}: seen up to its end");
    }
    assert_eq!(seen.next.len() as u64, store.stream_count()?, "every stream seen");
    let mut again = store.subscribe_all(load_cursor(&cursor_file)?, Filter::all());
    let extra = again.next_batch(1024, Duration::from_millis(200))?;
    assert!(extra.is_empty(), "{} events delivered again after the last stored cursor", extra.len());
    store.close()?;

    println!("subscriber: {total} events in {} streams over 4 partitions", seen.next.len());
    println!("  run 1 (from the start):           {first:>7} events, then stopped");
    println!("  run 2 (resumed, writer still on): {second:>7} events");
    println!("  run 3 (after the store reopened): {third:>7} events");
    println!(
        "  {} batches, a durable cursor after each; every stream in order, none seen twice, none missed ({:.2} s)",
        seen.batches,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What the subscriber has checked so far.
#[derive(Default)]
struct Seen {
    /// For each stream, the next version expected.
    next: HashMap<String, u64>,
    total: u64,
    batches: u64,
}

/// One run of the subscriber: resumes from the cursor file (or the start), checks each batch
/// and stores the cursor after it, until `done`. Returns how many events it saw.
fn follow(store: &Store, cursor_file: &Path, seen: &mut Seen, done: impl Fn(&Seen) -> bool) -> Result<u64, Failure> {
    let mut sub = store.subscribe_all(load_cursor(cursor_file)?, Filter::all());
    let before = seen.total;
    let mut last_event = Instant::now();
    while !done(seen) {
        let batch = sub.next_batch(512, Duration::from_millis(100))?;
        if batch.is_empty() {
            if last_event.elapsed() > STALL {
                return Err(format!("no events for {STALL:?} after {} (lag {})", seen.total, sub.lag()?).into());
            }
            continue;
        }
        last_event = Instant::now();
        for e in &batch {
            let next = seen.next.entry(e.stream_id.clone()).or_insert(0);
            assert_eq!(
                e.version, *next,
                "{}: version {} arrived when {} was expected (a duplicate or a gap)",
                e.stream_id, e.version, next
            );
            *next += 1;
        }
        seen.total += batch.len() as u64;
        seen.batches += 1;
        save_cursor(cursor_file, &sub.cursor())?;
    }
    Ok(seen.total - before)
}

/// The stored cursor, or the start if there is none yet.
fn load_cursor(path: &Path) -> Result<Cursor, Failure> {
    match fs::read(path) {
        Ok(bytes) => Ok(Cursor::from_bytes(&bytes)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::start()),
        Err(e) => Err(e.into()),
    }
}

/// Replaces the cursor file atomically and durably: a crash leaves the old cursor or the new
/// one, never a mix, and the new one survives a power cut once this returns.
fn save_cursor(path: &Path, cursor: &Cursor) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&cursor.to_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    // The rename is durable once the directory is synced.
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Appends events `from..from + n`, `PER_APPEND` at a time, round-robin over the streams.
fn append(store: &Store, from: u64, n: u64) -> Result<u64, Failure> {
    let mut i = from;
    while i < from + n {
        let stream = format!("order-{}", (i / PER_APPEND) % STREAMS);
        let k = PER_APPEND.min(from + n - i);
        let batch: Vec<EventData> = (i..i + k).map(|j| EventData::new("Touched", j.to_string())).collect();
        store.append(&stream, ExpectedVersion::Any, &batch)?;
        i += k;
    }
    Ok(n)
}

/// The size: the first argument, else `STRATA_EXAMPLE_EVENTS`, else `default`.
fn size(default: u64) -> Result<u64, Failure> {
    match std::env::args().nth(1).or_else(|| std::env::var("STRATA_EXAMPLE_EVENTS").ok()) {
        Some(s) => Ok(s.replace(['_', ','], "").parse().map_err(|e| format!("events {s:?}: {e}"))?),
        None => Ok(default),
    }
}
