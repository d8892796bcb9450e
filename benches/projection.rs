//! Projection engine: rebuild throughput by worker count (`ProjectionEngine::rebuild` with a
//! trivial handler over a log already written, 8 partitions), and append-to-handled latency
//! under a moderate load (4 appenders at about 1,000 single-event appends/s each).
//!
//! Run: `cargo bench --bench projection` (`-- --quick` for a short run). Prints a table; the
//! runs of different worker counts are interleaved (1, 2, 1, 2, ...) and reported as medians.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use strata::projection::{Batch, BatchError, HandlerError, ProjectionOptions};
use strata::{Durability, EventData, ExpectedVersion, Options, Projection, ProjectionEngine, RecordedEvent, Store};

/// Counts events, and sums their payload lengths so the events are really looked at.
#[derive(Default)]
struct Trivial {
    events: AtomicU64,
    bytes: AtomicU64,
}

impl Projection for Trivial {
    fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        self.events.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(e.payload.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn handle_batch(&self, batch: &Batch<'_>) -> Result<(), BatchError> {
        let bytes: usize = batch.events.iter().map(|e| e.payload.len()).sum();
        self.events.fetch_add(batch.events.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Records, per event, now minus the event's append timestamp.
#[derive(Default)]
struct Latency {
    samples: Mutex<Vec<u64>>,
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

impl Projection for Latency {
    fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        self.samples.lock().push(now_nanos().saturating_sub(e.timestamp_nanos));
        Ok(())
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(v: &[u64], p: f64) -> f64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1e3
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let events: u64 = if quick { 400_000 } else { 4_000_000 };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .create_if_missing(true)
        .partitions(8)
        .durability(Durability::Buffered { sync_interval: Duration::from_millis(20) });
    let store = Arc::new(Store::open(dir.path(), options).unwrap());
    let payload = vec![b'x'; 100];
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..4u64 {
            let (store, payload) = (&store, &payload);
            s.spawn(move || {
                let batch: Vec<EventData> = (0..100).map(|_| EventData::new("Tick", payload.clone())).collect();
                for i in 0..events / 400 {
                    let stream = format!("s{}", (w * 1_000_003 + i * 7919) % 10_000);
                    store.append(&stream, ExpectedVersion::Any, &batch).unwrap();
                }
            });
        }
    });
    eprintln!("loaded {events} events in {:.1?}", t.elapsed());

    // Rebuild: a fresh projection from position 0, interleaving worker counts.
    let counts: Vec<usize> = (1..=cores).collect();
    let rounds = if quick { 2 } else { 5 };
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
    let mut run = 0;
    for _ in 0..rounds {
        for (k, &workers) in counts.iter().enumerate() {
            run += 1;
            let engine = ProjectionEngine::new(store.clone(), workers);
            // A live projection, caught up; then `rebuild` replays everything into a fresh
            // instance in parallel and swaps it in.
            let name = format!("model-{run}");
            engine.register(&name, Arc::new(Trivial::default()), ProjectionOptions::default()).unwrap();
            assert!(engine.wait_caught_up(&name, Duration::from_secs(600)).unwrap());
            let p = Arc::new(Trivial::default());
            let report = engine.rebuild(&name, p.clone()).unwrap();
            let secs = report.duration.as_secs_f64();
            assert_eq!(p.events.load(Ordering::Relaxed), events);
            rates[k].push(events as f64 / secs);
            eprintln!(
                "rebuild, {workers} workers: {:.2} M events/s ({:.2?})",
                events as f64 / secs / 1e6,
                report.duration
            );
            engine.stop().unwrap();
        }
    }
    println!(
        "| workers | rebuild events/s (median of {rounds}) | per worker | vs 1 worker (median of the rounds' ratios) |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    for (k, &workers) in counts.iter().enumerate() {
        let mut ratios: Vec<f64> = rates[k].iter().zip(&rates[0]).map(|(r, b)| r / b).collect();
        let m = median(&mut rates[k].clone());
        println!("| {workers} | {:.2} M | {:.2} M | {:.2}x |", m / 1e6, m / 1e6 / workers as f64, median(&mut ratios));
    }
    drop(store);

    // Latency: a durable (Sync) moderate load, 4 appenders at about 1,000 appends/s each.
    for durability in [Durability::Sync, Durability::Buffered { sync_interval: Duration::from_millis(20) }] {
        let dir = tempfile::tempdir().unwrap();
        let options = Options::default().create_if_missing(true).partitions(8).durability(durability);
        let store = Arc::new(Store::open(dir.path(), options).unwrap());
        let engine = ProjectionEngine::new(store.clone(), cores);
        let lat = Arc::new(Latency::default());
        engine.register("latency", lat.clone(), ProjectionOptions::default()).unwrap();
        let seconds = if quick { 2 } else { 5 };
        let appended = AtomicU64::new(0);
        std::thread::scope(|s| {
            for w in 0..4 {
                let (store, appended, payload) = (&store, &appended, &payload);
                s.spawn(move || {
                    let end = Instant::now() + Duration::from_secs(seconds);
                    let mut i = 0u64;
                    while Instant::now() < end {
                        let stream = format!("w{w}-{}", i % 100);
                        store.append(&stream, ExpectedVersion::Any, &[EventData::new("E", payload.clone())]).unwrap();
                        appended.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                        std::thread::sleep(Duration::from_micros(1000));
                    }
                });
            }
        });
        assert!(engine.wait_caught_up("latency", Duration::from_secs(60)).unwrap());
        let mut v = std::mem::take(&mut *lat.samples.lock());
        v.sort_unstable();
        let n = appended.load(Ordering::Relaxed);
        println!(
            "append-to-handled, {durability:?}, {n} events at {:.0}/s: p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
            n as f64 / seconds as f64,
            pct(&v, 0.5),
            pct(&v, 0.99),
            pct(&v, 0.999),
            pct(&v, 1.0)
        );
        engine.stop().unwrap();
    }
}
