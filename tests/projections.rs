//! The projection engine: per-stream (and per-partition) order under many workers, resume
//! from durable checkpoints, live rebalancing while appending, a failing handler that stops
//! only its partition, exactly-once with projection-kept checkpoints, lag, and appends that
//! never wait for a projection.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::backends::on_each_backend;
use common::*;
use strata::projection::{Batch, BatchError, Checkpoints, HandlerError, OnFailure, ProjectionOptions};
use strata::{ExpectedVersion, Options, Projection, ProjectionEngine, RecordedEvent, Store};

const WAIT: Duration = Duration::from_secs(30);

/// Records every event it sees, and every order violation: a stream's versions must come
/// 0, 1, 2, ... and a partition's positions in increasing order (with gaps only where events
/// went to the dead-letter queue).
#[derive(Default)]
struct Recorder {
    seen: Mutex<HashMap<(u32, u64), u32>>,
    next_version: Mutex<HashMap<String, u64>>,
    next_position: Mutex<HashMap<u32, u64>>,
    violations: Mutex<Vec<String>>,
    count: AtomicU64,
    /// Positions whose handling fails (every attempt).
    poison: Mutex<Vec<(u32, u64)>>,
    /// While set, `handle` blocks.
    gate: AtomicBool,
    /// While set (a dead-letter replay), positions may go back.
    replaying: AtomicBool,
}

impl Recorder {
    fn duplicates(&self) -> usize {
        self.seen.lock().unwrap().values().filter(|&&n| n > 1).count()
    }
}

impl Projection for Recorder {
    fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        while self.gate.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if self.poison.lock().unwrap().contains(&(e.partition, e.position)) {
            return Err(format!("poison at {}", e.position).into());
        }
        {
            let mut nv = self.next_version.lock().unwrap();
            let want = nv.entry(e.stream_id.clone()).or_insert(0);
            if e.version != *want {
                self.violations.lock().unwrap().push(format!("{} v{} after v{}", e.stream_id, e.version, *want));
            }
            *want = e.version + 1;
        }
        {
            let mut np = self.next_position.lock().unwrap();
            let want = np.entry(e.partition).or_insert(e.position);
            if e.position < *want && !self.replaying.load(Ordering::Acquire) {
                self.violations
                    .lock()
                    .unwrap()
                    .push(format!("p{} position {} after {}", e.partition, e.position, *want));
            }
            *want = (*want).max(e.position + 1);
        }
        *self.seen.lock().unwrap().entry((e.partition, e.position)).or_insert(0) += 1;
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Appends `per_thread` events from each of `threads` threads, over `streams` streams each,
/// in batches of 1 to 3; returns the number of events per stream.
fn append_load(store: &Store, threads: usize, streams: usize, per_thread: usize, tag: &str) -> HashMap<String, u64> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut counts: HashMap<String, u64> = HashMap::new();
                    let mut i = 0;
                    while i < per_thread {
                        let stream = format!("{tag}-t{t}-s{}", i % streams);
                        let n = (1 + i % 3).min(per_thread - i);
                        let evs: Vec<_> = (0..n).map(|k| ev("E", format!("{stream}/{}", i + k))).collect();
                        store.append(&stream, ExpectedVersion::Any, &evs).unwrap();
                        *counts.entry(stream).or_default() += n as u64;
                        i += n;
                    }
                    counts
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

fn check(rec: &Recorder, counts: &HashMap<String, u64>) {
    assert!(
        rec.violations.lock().unwrap().is_empty(),
        "{:?}",
        &rec.violations.lock().unwrap()[..5.min(rec.violations.lock().unwrap().len())]
    );
    let nv = rec.next_version.lock().unwrap();
    for (s, n) in counts {
        assert_eq!(nv.get(s), Some(n), "{s}");
    }
}

#[test]
fn per_stream_order_holds_under_many_workers() {
    on_each_backend(8, 64 << 10, |store| {
        let engine = ProjectionEngine::new(store.clone(), 6);
        let rec = Arc::new(Recorder::default());
        engine.register("order", rec.clone(), ProjectionOptions::default().batch(7)).unwrap();
        let counts = append_load(&store, 4, 10, 1500, "a");
        assert!(engine.wait_caught_up("order", WAIT).unwrap());
        check(&rec, &counts);
        assert_eq!(rec.count.load(Ordering::Relaxed), 6000);
        assert_eq!(rec.duplicates(), 0);
        let status = engine.status("order").unwrap();
        assert!(status.healthy && status.caught_up() && status.handled == 6000, "{status:?}");
        // The checkpointer follows, in the background.
        let deadline = std::time::Instant::now() + WAIT;
        while engine.status("order").unwrap().partitions.iter().any(|p| p.checkpointed != p.head) {
            assert!(std::time::Instant::now() < deadline, "{:?}", engine.status("order"));
            std::thread::sleep(Duration::from_millis(2));
        }
    });
}

#[test]
fn a_restart_resumes_from_the_durable_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    let mut counts = HashMap::new();
    for round in 0..3 {
        let store = Arc::new(Store::open(dir.path(), opts(4, 32 << 10)).unwrap());
        let engine = ProjectionEngine::new(store.clone(), 2);
        engine.register("resume", rec.clone(), ProjectionOptions::default().batch(50)).unwrap();
        for (s, n) in append_load(&store, 2, 5, 400, &format!("r{round}")) {
            *counts.entry(s).or_insert(0) += n;
        }
        assert!(engine.wait_caught_up("resume", WAIT).unwrap());
        engine.stop().unwrap();
        drop(store);
    }
    check(&rec, &counts);
    // Every stop was clean, so every checkpoint was durable: nothing twice, nothing lost.
    assert_eq!((rec.count.load(Ordering::Relaxed), rec.duplicates()), (2400, 0));
    // The checkpoints survive on disk: a new engine has nothing to do.
    let store = Arc::new(Store::open(dir.path(), Options::default()).unwrap());
    let engine = ProjectionEngine::new(store.clone(), 1);
    engine.register("resume", rec.clone(), ProjectionOptions::default()).unwrap();
    assert!(engine.status("resume").unwrap().caught_up());
}

#[test]
fn workers_rebalance_live_while_appending() {
    on_each_backend(8, 64 << 10, |store| {
        let engine = ProjectionEngine::new(store.clone(), 1);
        let rec = Arc::new(Recorder::default());
        engine.register("live", rec.clone(), ProjectionOptions::default().batch(16)).unwrap();
        let done = AtomicBool::new(false);
        let counts = std::thread::scope(|s| {
            let load = s.spawn(|| {
                let c = append_load(&store, 4, 8, 1000, "l");
                done.store(true, Ordering::Release);
                c
            });
            for n in [4, 2, 3, 1, 5].iter().cycle() {
                if done.load(Ordering::Acquire) {
                    break;
                }
                engine.set_workers(*n);
                assert_eq!(engine.workers(), *n);
                std::thread::sleep(Duration::from_millis(20));
            }
            load.join().unwrap()
        });
        assert!(engine.wait_caught_up("live", WAIT).unwrap());
        check(&rec, &counts);
        assert_eq!((rec.count.load(Ordering::Relaxed), rec.duplicates()), (4000, 0));
    });
}

#[test]
fn a_failing_event_stops_only_its_partition() {
    on_each_backend(4, 1 << 20, |store| {
        fill(&store, "victim", 5);
        let p = store.partition_of("victim");
        let poison = store.read_stream("victim", 2, 1).unwrap()[0].position;
        let rec = Arc::new(Recorder::default());
        rec.poison.lock().unwrap().push((p, poison));
        let engine = ProjectionEngine::new(store.clone(), 2);
        let options = ProjectionOptions::default().retry(3, Duration::from_millis(1)).on_failure(OnFailure::Stop);
        engine.register("fragile", rec.clone(), options).unwrap();
        let others: Vec<String> = (0..40).map(|i| format!("other-{i}")).collect();
        for s in &others {
            fill(&store, s, 3);
        }
        let r = engine.wait_caught_up("fragile", WAIT);
        assert!(r.is_err(), "{r:?}");
        // Wait for the other partitions to finish.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let st = engine.status("fragile").unwrap();
            if st.partitions.iter().filter(|x| x.partition != p).all(|x| x.lag_events == 0) {
                assert!(!st.healthy);
                let mine = &st.partitions[p as usize];
                assert_eq!(mine.next_position, poison, "stopped at the failing event");
                assert!(mine.error.as_deref().is_some_and(|e| e.contains("failed 3 times")), "{mine:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{st:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let nv = rec.next_version.lock().unwrap();
        assert_eq!(nv.get("victim"), Some(&2), "events before the failing one were handled");
        for s in others.iter().filter(|s| store.partition_of(s) != p) {
            assert_eq!(nv.get(s.as_str()), Some(&3), "{s}");
        }
    });
}

/// Keeps its state and its checkpoints together, as a database transaction would.
#[derive(Default)]
struct Transactional {
    /// (state: events per stream, checkpoints: next position per partition)
    db: Mutex<(HashMap<String, u64>, HashMap<u32, u64>)>,
    /// Fail every batch after this many (simulating a crash mid-way); 0: never.
    fail_after: AtomicU64,
    batches: AtomicU64,
}

impl Projection for Transactional {
    fn handle(&self, _: &RecordedEvent) -> Result<(), HandlerError> {
        unreachable!("handle_batch is overridden")
    }

    fn handle_batch(&self, batch: &Batch<'_>) -> Result<(), BatchError> {
        let limit = self.fail_after.load(Ordering::Relaxed);
        if limit > 0 && self.batches.fetch_add(1, Ordering::Relaxed) >= limit {
            return Err(BatchError { index: 0, error: "crashed".into() });
        }
        let mut db = self.db.lock().unwrap();
        for e in batch.events {
            *db.0.entry(e.stream_id.clone()).or_insert(0) += 1;
        }
        if !batch.replay {
            db.1.insert(batch.partition, batch.next_position());
        }
        Ok(())
    }

    fn checkpoint(&self, partition: u32) -> u64 {
        self.db.lock().unwrap().1.get(&partition).copied().unwrap_or(0)
    }
}

#[test]
fn projection_kept_checkpoints_give_exactly_once_effects() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(4, 1 << 20)).unwrap());
    let counts = append_load(&store, 2, 6, 600, "x");
    let proj = Arc::new(Transactional::default());
    proj.fail_after.store(5, Ordering::Relaxed);
    let options = ProjectionOptions::default()
        .batch(20)
        .retry(1, Duration::ZERO)
        .checkpoints(Checkpoints::Projection)
        .on_failure(OnFailure::Stop);
    let engine = ProjectionEngine::new(store.clone(), 2);
    engine.register("tx", proj.clone(), options.clone()).unwrap();
    // Some batches go through, then every batch fails: the "crash".
    assert!(engine.wait_caught_up("tx", WAIT).is_err());
    engine.stop().unwrap();
    assert!(!dir.path().join("projections/tx/checkpoints").exists(), "the engine keeps no checkpoints for it");
    proj.fail_after.store(0, Ordering::Relaxed);
    let engine = ProjectionEngine::new(store.clone(), 2);
    engine.register("tx", proj.clone(), options).unwrap();
    assert!(engine.wait_caught_up("tx", WAIT).unwrap());
    assert_eq!(proj.db.lock().unwrap().0, counts, "each event's effect exactly once");
}

#[test]
fn lag_is_measured_and_appends_never_wait() {
    on_each_backend(2, 1 << 20, |store| {
        let rec = Arc::new(Recorder::default());
        rec.gate.store(true, Ordering::Release);
        let engine = ProjectionEngine::new(store.clone(), 2);
        engine.register("slow", rec.clone(), ProjectionOptions::default().sla(Duration::from_millis(5))).unwrap();
        // The projection is stuck; appends go on regardless.
        fill(&store, "a", 1);
        std::thread::sleep(Duration::from_millis(20));
        let acked = fill(&store, "a", 200).len() + fill(&store, "b", 200).len();
        assert_eq!(acked, 400);
        let st = engine.status("slow").unwrap();
        assert!(!st.healthy, "{st:?}");
        assert!(st.max_lag_events >= 200 && st.max_lag >= Duration::from_millis(5), "{st:?}");
        rec.gate.store(false, Ordering::Release);
        assert!(engine.wait_caught_up("slow", WAIT).unwrap());
        let st = engine.status("slow").unwrap();
        assert!(st.healthy && st.max_lag_events == 0 && st.max_lag == Duration::ZERO, "{st:?}");
        assert!(st.partitions.iter().all(|p| p.last_handled.is_some() || p.head == 0));
    });
}

#[test]
fn names_are_checked() {
    on_each_backend(1, 1 << 20, |store| {
        let engine = ProjectionEngine::new(store, 1);
        for bad in ["", ".hidden", "a/b", "a.rebuild", &"x".repeat(65)] {
            assert!(engine.register(bad, Arc::new(Recorder::default()), Default::default()).is_err(), "{bad:?}");
        }
        engine.register("ok", Arc::new(Recorder::default()), Default::default()).unwrap();
        assert!(engine.register("ok", Arc::new(Recorder::default()), Default::default()).is_err());
    });
}

/// Waits until every partition has handled up to its head (dead letters count as handled).
fn settle(engine: &ProjectionEngine, name: &str) {
    assert!(engine.wait_caught_up(name, WAIT).unwrap(), "{:?}", engine.status(name));
}

#[test]
fn a_poison_event_goes_to_the_dead_letter_queue_and_the_rest_goes_on() {
    on_each_backend(4, 1 << 20, |store| {
        fill(&store, "victim", 5);
        let p = store.partition_of("victim");
        let at = |v: u64| store.read_stream("victim", v, 1).unwrap()[0].position;
        let rec = Arc::new(Recorder::default());
        rec.poison.lock().unwrap().extend([(p, at(2)), (p, at(4))]);
        let engine = ProjectionEngine::new(store.clone(), 2);
        let options = ProjectionOptions::default().retry(3, Duration::from_millis(1));
        engine.register("dlq", rec.clone(), options.clone()).unwrap();
        for i in 0..20 {
            fill(&store, &format!("other-{i}"), 3);
        }
        settle(&engine, "dlq");
        let st = engine.status("dlq").unwrap();
        assert!(st.healthy && st.dead_letters == 2, "{st:?}");
        let letters = engine.dead_letters("dlq").unwrap();
        assert_eq!(
            letters.iter().map(|l| (l.stream.as_str(), l.version, l.attempts)).collect::<Vec<_>>(),
            [("victim", 2, 3), ("victim", 4, 3)]
        );
        assert!(letters[0].error.contains("poison") && letters[0].position == at(2), "{letters:?}");
        // Without parking, the stream went on past its dead letters.
        assert_eq!(*rec.violations.lock().unwrap(), ["victim v3 after v2".to_string()]);
        assert_eq!(rec.count.load(Ordering::Relaxed), 3 + 60);
        // Fixed: replay one, discard the other; both leave the queue, durably.
        rec.poison.lock().unwrap().clear();
        rec.replaying.store(true, Ordering::Release);
        let r = engine.replay_dead_letters("dlq", Some("victim")).unwrap();
        rec.replaying.store(false, Ordering::Release);
        assert_eq!((r.replayed, r.failed.len()), (2, 0));
        assert_eq!(engine.discard_dead_letters("dlq", &[letters[1].id]).unwrap(), 0, "already replayed");
        assert_eq!(rec.count.load(Ordering::Relaxed), 5 + 60);
        engine.stop().unwrap();
        let engine = ProjectionEngine::new(store.clone(), 1);
        engine.register("dlq", rec.clone(), options).unwrap();
        assert!(engine.dead_letters("dlq").unwrap().is_empty());
        assert_eq!(engine.status("dlq").unwrap().dead_letters, 0);
    });
}

#[test]
fn a_parked_stream_keeps_its_order_through_the_dead_letter_queue() {
    on_each_backend(4, 1 << 20, |store| {
        fill(&store, "victim", 6);
        let p = store.partition_of("victim");
        let poison = store.read_stream("victim", 2, 1).unwrap()[0].position;
        let rec = Arc::new(Recorder::default());
        rec.poison.lock().unwrap().push((p, poison));
        let options = ProjectionOptions::default().retry(2, Duration::from_millis(1)).on_failure(OnFailure::Park);
        let engine = ProjectionEngine::new(store.clone(), 2);
        engine.register("park", rec.clone(), options.clone()).unwrap();
        for i in 0..20 {
            fill(&store, &format!("other-{i}"), 3);
        }
        settle(&engine, "park");
        let versions = |engine: &ProjectionEngine| -> Vec<(u64, u32)> {
            engine.dead_letters("park").unwrap().iter().map(|l| (l.version, l.attempts)).collect()
        };
        assert_eq!(versions(&engine), [(2, 2), (3, 0), (4, 0), (5, 0)]);
        // A restart keeps the queue and the parking.
        engine.stop().unwrap();
        let engine = ProjectionEngine::new(store.clone(), 2);
        engine.register("park", rec.clone(), options).unwrap();
        fill(&store, "victim", 2);
        settle(&engine, "park");
        assert_eq!(versions(&engine), [(2, 2), (3, 0), (4, 0), (5, 0), (6, 0), (7, 0)]);
        assert_eq!(rec.next_version.lock().unwrap().get("victim"), Some(&2));
        // Still failing: the replay stops at the first letter and keeps them all.
        let r = engine.replay_dead_letters("park", None).unwrap();
        assert_eq!((r.replayed, r.failed.len()), (0, 1));
        rec.poison.lock().unwrap().clear();
        rec.replaying.store(true, Ordering::Release);
        let r = engine.replay_dead_letters("park", None).unwrap();
        rec.replaying.store(false, Ordering::Release);
        assert_eq!((r.replayed, r.failed.len()), (6, 0));
        // Unparked: the next event goes straight to the projection, after the replayed ones.
        fill(&store, "victim", 1);
        settle(&engine, "park");
        assert!(engine.dead_letters("park").unwrap().is_empty());
        assert_eq!(rec.next_version.lock().unwrap().get("victim"), Some(&9));
        assert!(rec.violations.lock().unwrap().is_empty(), "{:?}", rec.violations.lock().unwrap());
        assert_eq!(rec.duplicates(), 0);
    });
}

#[test]
fn a_rebuild_runs_in_parallel_and_swaps_in_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(8, 64 << 10)).unwrap());
    let engine = ProjectionEngine::new(store.clone(), 2);
    let live = Arc::new(Recorder::default());
    engine.register("model", live.clone(), ProjectionOptions::default().batch(64)).unwrap();
    let mut counts = append_load(&store, 2, 8, 1000, "before");
    settle(&engine, "model");
    let fresh = Arc::new(Recorder::default());
    let during = std::thread::scope(|s| {
        let load = s.spawn(|| append_load(&store, 2, 8, 500, "during"));
        // Readers keep the old instance until the swap.
        assert!(Arc::ptr_eq(&engine.view::<Recorder>("model").unwrap().projection, &live));
        let report = engine.rebuild("model", fresh.clone()).unwrap();
        assert!(report.events >= 2000 && report.duration > Duration::ZERO, "{report:?}");
        load.join().unwrap()
    });
    counts.extend(during);
    let view = engine.view::<Recorder>("model").unwrap();
    assert!(Arc::ptr_eq(&view.projection, &fresh), "the rebuilt instance serves reads");
    assert!(view.status.last_rebuild.is_some());
    settle(&engine, "model");
    check(&fresh, &counts);
    assert_eq!((fresh.count.load(Ordering::Relaxed), fresh.duplicates()), (3000, 0));
    // The old instance gets nothing after the swap.
    let old_count = live.count.load(Ordering::Relaxed);
    fill(&store, "after", 10);
    settle(&engine, "model");
    assert_eq!(live.count.load(Ordering::Relaxed), old_count);
    assert_eq!(fresh.count.load(Ordering::Relaxed), 3010);
    let names: Vec<String> = std::fs::read_dir(dir.path().join("projections"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["model"]);
    // Its checkpoints are the live ones now.
    engine.stop().unwrap();
    let engine = ProjectionEngine::new(store.clone(), 1);
    engine.register("model", fresh.clone(), ProjectionOptions::default()).unwrap();
    assert!(engine.status("model").unwrap().caught_up());
    assert!(engine.view::<Transactional>("model").is_err(), "asking for the wrong type is an error");
}

#[test]
fn a_rebuild_interrupted_by_a_crash_is_finished_or_dropped_at_registration() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(2, 1 << 20)).unwrap());
    fill(&store, "s", 30);
    let root = dir.path().join("projections");
    {
        let engine = ProjectionEngine::new(store.clone(), 1);
        engine.register("m", Arc::new(Recorder::default()), Default::default()).unwrap();
        settle(&engine, "m");
    }
    // Crashed mid-rebuild: a half-built directory beside the live one is dropped.
    std::fs::create_dir(root.join("m.rebuild")).unwrap();
    std::fs::write(root.join("m.rebuild/checkpoints"), b"half").unwrap();
    {
        let engine = ProjectionEngine::new(store.clone(), 1);
        engine.register("m", Arc::new(Recorder::default()), Default::default()).unwrap();
        assert!(engine.status("m").unwrap().caught_up());
        assert!(!root.join("m.rebuild").exists());
    }
    // Crashed between the swap's two renames: the rebuilt one (complete) is put in place.
    std::fs::rename(root.join("m"), root.join("m.rebuild")).unwrap();
    std::fs::create_dir(root.join("m.old")).unwrap();
    let engine = ProjectionEngine::new(store.clone(), 1);
    engine.register("m", Arc::new(Recorder::default()), Default::default()).unwrap();
    assert!(engine.status("m").unwrap().caught_up());
    assert!(root.join("m").exists() && !root.join("m.old").exists() && !root.join("m.rebuild").exists());
}

/// Panics on one event.
struct Panicky {
    inner: Recorder,
    at: (u32, u64),
}

impl Projection for Panicky {
    fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        if (e.partition, e.position) == self.at {
            panic!("boom at {}", e.position);
        }
        self.inner.handle(e)
    }
}

#[test]
fn a_panicking_handler_is_a_failing_one() {
    on_each_backend(2, 1 << 20, |store| {
        fill(&store, "s", 10);
        let at = store.read_stream("s", 4, 1).unwrap()[0].position;
        let p = Arc::new(Panicky { inner: Recorder::default(), at: (store.partition_of("s"), at) });
        let engine = ProjectionEngine::new(store.clone(), 1);
        engine.register("panicky", p.clone(), ProjectionOptions::default().retry(2, Duration::ZERO)).unwrap();
        settle(&engine, "panicky");
        let letters = engine.dead_letters("panicky").unwrap();
        assert_eq!(letters.len(), 1);
        assert!(letters[0].error.contains("panicked: boom"), "{letters:?}");
        // The worker survived and the partition is not stuck.
        fill(&store, "s", 3);
        settle(&engine, "panicky");
        // 13 events, one dead-lettered; the four before it in its batch were delivered again
        // (one by one, to find the panicking event): at least once.
        assert_eq!((p.inner.count.load(Ordering::Relaxed), p.inner.duplicates()), (16, 4));
        assert_eq!(engine.workers(), 1);
    });
}

/// The dead-letter queue is bounded: past `max_dead_letters` pending letters the partition
/// stops, saying why, instead of holding more; discarding letters lets a new registration go
/// on. Resolved letters do not stay in the file: it is rewritten with the pending ones, and
/// letter ids are never given twice, across rewrites and reopens.
#[test]
fn the_dead_letter_queue_is_bounded_and_its_file_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(1, 1 << 20)).unwrap());
    fill(&store, "bad", 700);
    let options = ProjectionOptions::default().retry(1, Duration::ZERO).max_dead_letters(600);
    let engine = ProjectionEngine::new(store.clone(), 1);
    engine.register("fails", Arc::new(AlwaysFails), options.clone()).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let stopped = loop {
        let st = engine.status("fails").unwrap();
        if let Some(e) = st.partitions[0].error.clone() {
            break (st, e);
        }
        assert!(std::time::Instant::now() < deadline, "{st:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(stopped.0.dead_letters, 600, "{:?}", stopped.0);
    assert!(stopped.1.contains("limit of 600"), "{}", stopped.1);
    let file = dir.path().join("projections").join("fails").join("dlq");
    let full = std::fs::metadata(&file).unwrap().len();
    // Discard all but the 50 newest: the file is rewritten along the way, and keeps those.
    let ids: Vec<u64> = engine.dead_letters("fails").unwrap().iter().map(|l| l.id).collect();
    assert_eq!(engine.discard_dead_letters("fails", &ids[..550]).unwrap(), 550);
    let after = std::fs::metadata(&file).unwrap().len();
    assert!(after < full / 2, "the file kept resolved letters: {full} -> {after} bytes");
    engine.stop().unwrap();
    let engine = ProjectionEngine::new(store.clone(), 1);
    engine.register("fails", Arc::new(AlwaysFails), options.clone()).unwrap();
    // (The partition goes on meanwhile, adding letters for the events after the stop.)
    let kept: Vec<u64> = engine.dead_letters("fails").unwrap().iter().map(|l| l.id).take(50).collect();
    assert_eq!(kept, ids[550..], "the rewrite lost pending letters");
    assert_eq!(engine.discard_dead_letters("fails", &kept).unwrap(), 50);
    engine.stop().unwrap();
    // A new registration goes on from the stopped event; new ids follow the old ones.
    let engine = ProjectionEngine::new(store.clone(), 1);
    engine.register("fails", Arc::new(AlwaysFails), options).unwrap();
    settle(&engine, "fails");
    let letters = engine.dead_letters("fails").unwrap();
    assert_eq!(letters.len(), 100);
    assert!(letters.iter().all(|l| l.id > 600), "an id was given twice: {:?}", letters.first());
    assert_eq!(letters[0].version, 600);
}
