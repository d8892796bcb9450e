//! Concurrency stress: aggregates committed (and snapshotted) from several threads, loads
//! checked against full replays, a projection following, compaction forced in a loop, all at
//! once for a bounded time (`STRATA_STRESS_SECS`, default 3), with the invariants checked
//! throughout and at the end.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use strata::compaction::CompactionOptions;
use strata::projection::ProjectionOptions;
use strata::{Durability, Error, ProjectionEngine, Store};

type T = Tally<4>;

#[test]
fn appenders_loads_projections_and_compaction_at_once() {
    let secs: u64 = std::env::var("STRATA_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let compaction = CompactionOptions::default()
        .interval(None)
        .retention(Duration::ZERO)
        .require_snapshots(false)
        .max_archive_bytes(64 << 10);
    let options = opts(2, 32 << 10)
        .compaction(compaction)
        .durability(Durability::Buffered { sync_interval: Duration::from_millis(2) });
    let store = Arc::new(Store::open(dir.path(), options).unwrap());
    let engine = ProjectionEngine::new(store.clone(), 2);
    let order = Arc::new(StreamOrder::default());
    engine.register("order", order.clone(), ProjectionOptions::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut threads = Vec::new();
    // Writers: each owns its streams, loads (from a snapshot), commits, and checks that the
    // load equals a full replay every so often.
    for w in 0..3 {
        let (store, stop) = (store.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut committed = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let stream = format!("w{w}-{}", i % 16);
                let mut t = store.load::<T>(&stream).unwrap();
                if i.is_multiple_of(29) {
                    assert_eq!(t.state(), &T::replayed(&store, &stream), "load of {stream} differs from replay");
                }
                store
                    .commit(&mut t, &[ev("E", format!("{{\"w\":{w},\"i\":{i},\"pad\":\"{}\"}}", "p".repeat(40)))])
                    .unwrap();
                committed += 1;
                i += 1;
            }
            committed
        }));
    }
    // Compaction, forced, in a loop; and a reader going through the partitions.
    {
        let (store, stop) = (store.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut archived = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = store.compact_with(true, &mut |_| {}).unwrap();
                assert!(r.skipped.is_empty(), "{:?}", r.skipped);
                archived += r.segments_archived;
                for p in 0..2 {
                    let events = store.read_partition(p, 0, 2000).unwrap();
                    assert!(events.windows(2).all(|w| w[0].position < w[1].position));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            archived
        }));
    }
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(order.violations.load(Ordering::Relaxed), 0, "a projection saw a stream out of order");
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let committed: u64 = results[..3].iter().sum();
    let archived = results[3];
    assert!(archived > 0, "compaction archived nothing while the writers ran");
    assert!(engine.wait_caught_up("order", Duration::from_secs(60)).unwrap());
    assert_eq!(order.violations.load(Ordering::Relaxed), 0);
    let seen = order.next.lock().unwrap().clone();
    assert_eq!(seen.values().sum::<u64>(), committed, "the projection saw every committed event once");
    for (stream, n) in &seen {
        assert_eq!(store.stream_version(stream).unwrap(), Some(n - 1));
        assert_eq!(store.load::<T>(stream).unwrap().state(), &T::replayed(&store, stream));
    }
    assert!(store.verify().is_empty());
    engine.stop().unwrap();
    // A deleted stream, under the same load, ends erased everywhere.
    let victim = seen.keys().next().unwrap().clone();
    store.delete_stream(&victim).unwrap();
    assert!(matches!(store.load::<T>(&victim), Err(Error::StreamDeleted { .. })));
    eprintln!("stress: {committed} commits, {archived} segments archived in {secs} s");
}
