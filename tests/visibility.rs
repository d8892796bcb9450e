//! One visibility rule for every read path: an event becomes visible to stream reads (forward
//! and backward), `stream_version`, partition reads and scans, aggregate loads and projections
//! at the same instant, when the partition's head covers it. So no read may ever return an
//! event at or past a head read after it.
//!
//! Appenders race readers of every path, in `Sync` and in `Buffered` mode; every read checks
//! what it got against `head` read right after it. Segments are small, so rolls happen under
//! the readers too. The run lasts `STRATA_VISIBILITY_MS` per mode (default 1500).

mod common;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use strata::compaction::CompactionOptions;
use strata::faults::FaultPlan;
use strata::projection::{HandlerError, ProjectionOptions};
use strata::{
    Aggregate, ApplyError, Durability, ExpectedVersion, Projection, ProjectionEngine, RecordedEvent, SnapshotIgnored,
    SnapshotUse, Store,
};

/// Remembers the highest position it applied.
#[derive(Default)]
struct Highest {
    position: Option<u64>,
    events: u64,
}

impl Aggregate for Highest {
    const SCHEMA: u32 = 1;
    const SNAPSHOT_EVERY: u64 = 1;
    fn apply(&mut self, e: &RecordedEvent) -> Result<(), ApplyError> {
        self.position = Some(self.position.map_or(e.position, |p| p.max(e.position)));
        self.events += 1;
        Ok(())
    }
    fn encode(&self) -> Vec<u8> {
        let mut b = self.position.map_or(u64::MAX, |p| p).to_le_bytes().to_vec();
        b.extend_from_slice(&self.events.to_le_bytes());
        b
    }
    fn decode(_: u32, b: &[u8]) -> Option<Self> {
        let p = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let events = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
        Some(Highest { position: (p != u64::MAX).then_some(p), events })
    }
}

/// Counts the reads, on every path, that saw an event the head did not cover yet.
#[derive(Default)]
struct Violations {
    reads: AtomicU64,
    ahead: AtomicU64,
    first: std::sync::Mutex<Option<String>>,
}

impl Violations {
    /// `position` was returned by a read; `head` was read after it.
    fn check(&self, path: &str, position: u64, head: u64) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if position >= head {
            self.ahead.fetch_add(1, Ordering::Relaxed);
            self.first
                .lock()
                .unwrap()
                .get_or_insert_with(|| format!("{path}: position {position} with the head at {head}"));
        }
    }
}

/// Checks, in the handler, each event against the head read there.
struct HeadCheck {
    store: Arc<Store>,
    v: Arc<Violations>,
}

impl Projection for HeadCheck {
    fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        let head = self.store.head(e.partition)?;
        self.v.check("projection", e.position, head);
        Ok(())
    }
}

/// Runs the race for a while; with `delay`, each group commit waits that long between updating
/// its index and publishing its head, which makes a read that trusts the index instead of the
/// head fail at once rather than once in a while.
fn race(durability: Durability, delay: Option<Duration>) {
    let ms: u64 = std::env::var("STRATA_VISIBILITY_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(1500);
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    if let Some(d) = delay {
        plan.delay_publish(d);
    }
    let options = opts(1, 64 << 10)
        .durability(durability)
        .compaction(CompactionOptions::default().interval(None))
        .fault_plan(plan);
    let store = Arc::new(Store::open(dir.path(), options).unwrap());
    let v = Arc::new(Violations::default());
    let engine = ProjectionEngine::new(store.clone(), 1);
    engine
        .register(
            "check",
            Arc::new(HeadCheck { store: store.clone(), v: v.clone() }),
            ProjectionOptions::default().batch(16),
        )
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Positions of stream "s"'s versions, as its appender learns them (0: not yet known).
    let positions: Arc<Vec<AtomicU64>> = Arc::new((0..1 << 20).map(|_| AtomicU64::new(0)).collect());
    let stale = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    {
        // Stream "s": single events, each one's position recorded once acknowledged.
        let (store, stop, positions) = (store.clone(), stop.clone(), positions.clone());
        threads.push(std::thread::spawn(move || {
            let mut expected = ExpectedVersion::NoStream;
            while !stop.load(Ordering::Relaxed) {
                let r = store.append("s", expected, &[ev("E", "s")]).unwrap();
                if let Some(slot) = positions.get(r.first_version as usize) {
                    slot.store(r.first_position + 1, Ordering::Release);
                }
                expected = r.next_expected();
            }
        }));
    }
    {
        // Stream "agg": commits of an aggregate snapshotted after every event.
        let (store, stop) = (store.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut a = store.load::<Highest>("agg").unwrap();
                store.commit(&mut a, &[ev("E", "agg")]).unwrap();
            }
        }));
    }
    // Readers of every path.
    for reader in 0..2 {
        let (store, stop, v, positions, stale) =
            (store.clone(), stop.clone(), v.clone(), positions.clone(), stale.clone());
        threads.push(std::thread::spawn(move || {
            let mut round = reader;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let head = |store: &Store| store.head(0).unwrap();
                match round % 6 {
                    0 => {
                        // stream_version, then the version's position once its appender knows it.
                        let Some(version) = store.stream_version("s").unwrap() else { continue };
                        let h = head(&store);
                        let slot = &positions[version as usize];
                        let started = Instant::now();
                        let position = loop {
                            match slot.load(Ordering::Acquire) {
                                0 if started.elapsed() < Duration::from_secs(5) => std::thread::yield_now(),
                                0 => panic!("version {version} of s was never acknowledged"),
                                p => break p - 1,
                            }
                        };
                        v.check("stream_version", position, h);
                    }
                    1 => {
                        let from = store.stream_version("s").unwrap().map_or(0, |v| v.saturating_sub(3));
                        let got = store.read_stream("s", from, 10).unwrap();
                        let h = head(&store);
                        if let Some(e) = got.last() {
                            v.check("read_stream", e.position, h);
                        }
                    }
                    2 => {
                        let got = store.read_stream_backward("s", None, 3).unwrap();
                        let h = head(&store);
                        if let Some(e) = got.first() {
                            v.check("read_stream_backward", e.position, h);
                        }
                    }
                    3 => {
                        let from = head(&store).saturating_sub(3);
                        let got = store.read_partition(0, from, 100).unwrap();
                        let h = head(&store);
                        if let Some(e) = got.last() {
                            v.check("read_partition", e.position, h);
                        }
                    }
                    4 => {
                        let from = head(&store).saturating_sub(3);
                        let mut last = None;
                        store
                            .scan_partition(0, from, 100, |e| {
                                last = Some(e.position);
                                ControlFlow::Continue(())
                            })
                            .unwrap();
                        let h = head(&store);
                        if let Some(p) = last {
                            v.check("scan_partition", p, h);
                        }
                    }
                    _ => {
                        let a = store.load::<Highest>("agg").unwrap();
                        let h = head(&store);
                        if let SnapshotUse::Ignored { reason: SnapshotIgnored::Stale, .. } = a.snapshot() {
                            stale.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(p) = a.state().position {
                            v.check("load", p, h);
                        }
                    }
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(ms));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(engine.wait_caught_up("check", Duration::from_secs(10)).unwrap());
    engine.stop().unwrap();
    let (reads, ahead) = (v.reads.load(Ordering::Relaxed), v.ahead.load(Ordering::Relaxed));
    eprintln!(
        "{durability:?}, publish delay {delay:?}: {reads} reads checked, {ahead} ahead of the head, {} stale snapshots",
        stale.load(Ordering::Relaxed)
    );
    assert!(reads > 1000, "too few reads to mean anything: {reads}");
    assert_eq!(ahead, 0, "{ahead} of {reads} reads saw past the head; the first: {:?}", v.first.lock().unwrap());
    // Without a crash, every snapshot a load finds covers an event the log holds.
    assert_eq!(stale.load(Ordering::Relaxed), 0, "loads called a snapshot of a visible event stale");
}

const BUFFERED: Durability = Durability::Buffered { sync_interval: Duration::from_millis(5) };

#[test]
fn no_read_sees_past_the_head_in_sync_mode() {
    race(Durability::Sync, None);
}

#[test]
fn no_read_sees_past_the_head_in_buffered_mode() {
    race(BUFFERED, None);
}

#[test]
fn no_read_sees_past_a_slow_head_in_sync_mode() {
    race(Durability::Sync, Some(Duration::from_micros(300)));
}

#[test]
fn no_read_sees_past_a_slow_head_in_buffered_mode() {
    race(BUFFERED, Some(Duration::from_micros(300)));
}
