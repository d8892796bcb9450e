//! Growing the partition count online (`Store::grow_partitions`): which streams move, that
//! their reads and versions are unchanged, that appends and projections going on throughout
//! lose nothing and see nothing twice, and that the new layout survives reopening.
//!
//! - `grow_moves_only_the_streams_the_hash_moves_and_their_reads_are_unchanged`: a store of 4
//!   partitions with multi-event batches, archived segments and deleted streams, grown to 7,
//!   then to 12 after a reopen: only the streams jump consistent hash moves move, about
//!   `1 − n/m` of them; stream reads, versions and timestamps are unchanged; expected versions
//!   hold in the new partitions; deleted streams stay deleted; deleting a moved stream after the
//!   grow erases, once compacted, its events at its old positions too; a reopen finds the new
//!   layout; growing to the same count does nothing, to a lower one is refused.
//! - `grow_while_eight_writers_append_and_a_projection_runs`: two grows under concurrent appends
//!   with expected versions and a running projection: every acknowledged append is there, once,
//!   in order, and the projection sees every event once, in stream order; after a reopen the
//!   grown checkpoint file holds, the copies are not delivered, and a new projection sees every
//!   event once.
//! - `projections_registered_before_a_grow_cover_the_new_partitions`: the engine's only worker
//!   is held in a slow handler while the store grows from 2 to 6 and a second projection
//!   registers at once; the projection registered before the grow still gets all 6 partitions
//!   and is delivered an event appended to a new partition. It also checks that extensions of
//!   one projection's checkpoint file run one at a time and never shorten it.
//! - `an_interrupted_checkpoint_extension_is_finished_at_registration`: a checkpoint file left
//!   between the two steps of its extension is finished at the next registration.
//!
//! Elsewhere: `tests/faults.rs` (`every_failing_step_of_a_grow_is_survived`), `tests/crash.rs`
//! (`kill_9_during_grows_loses_no_acknowledged_append`), `tests/cli.rs` (`strata grow`),
//! `src/format/tests.rs` (the manifest's epoch records, a checkpoint file extended for a grow)
//! and the `manifest_decode` and `checkpoint_decode` fuzz targets. Not covered by a test: the
//! refusal of a count whose manifest would pass 16 MiB, a failed checkpoint extension,
//! `Store::copied_until` and `Store::cutover_heads`, and dead-letter replay across a grow.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{StreamOrder, ev, opts};
use strata::compaction::CompactionOptions;
use strata::projection::{HandlerError, ProjectionOptions};
use strata::routing::partition_for;
use strata::{Error, ExpectedVersion, Options, Projection, ProjectionEngine, RecordedEvent, Store};

/// What a stream read returns, without the partition and position (which a move changes).
type Read = Vec<(u64, u64, String, Vec<u8>, Vec<u8>)>;

fn read(store: &Store, stream: &str) -> strata::Result<Read> {
    Ok(store
        .read_stream(stream, 0, usize::MAX)?
        .into_iter()
        .map(|e| (e.version, e.timestamp_nanos, e.event_type, e.metadata, e.payload))
        .collect())
}

fn read_all(store: &Store, streams: &[String]) -> HashMap<String, std::result::Result<Read, String>> {
    streams.iter().map(|s| (s.clone(), read(store, s).map_err(|e| format!("{e:?}")))).collect()
}

/// A store of `partitions` partitions with `streams` streams: multi-event batches with
/// metadata, over several segments, some archived, two streams deleted.
fn populated(dir: &std::path::Path, partitions: u32, streams: usize) -> (Store, Vec<String>) {
    let compaction = CompactionOptions::default().interval(None).retention(Duration::ZERO).require_snapshots(false);
    let store = Store::open(dir, opts(partitions, 64 << 10).compaction(compaction)).unwrap();
    let names: Vec<String> = (0..streams).map(|i| format!("account-{i}")).collect();
    for round in 0..3 {
        for (i, s) in names.iter().enumerate() {
            let events: Vec<_> = (0..1 + (i + round) % 3)
                .map(|k| ev("Moved", format!("{s} round {round} event {k}")).with_metadata(format!("m{k}")))
                .collect();
            store.append(s, ExpectedVersion::Any, &events).unwrap();
        }
        if round == 1 {
            // Part of the history lives in archives.
            store.compact_with(true, &mut |_| {}).unwrap();
        }
    }
    for s in &names[..2] {
        assert!(store.delete_stream(s).unwrap());
    }
    (store, names)
}

#[test]
fn grow_moves_only_the_streams_the_hash_moves_and_their_reads_are_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (store, names) = populated(dir.path(), 4, 1500);
    let before = read_all(&store, &names);
    let versions: Vec<_> = names.iter().map(|s| store.stream_version(s).map_err(|e| e.to_string())).collect();
    let report = store.grow_partitions(7).unwrap();
    let moving = names.iter().filter(|s| partition_for(s, 4) != partition_for(s, 7)).count() as u64;
    assert_eq!((report.from, report.to, report.epoch, store.partition_count()), (4, 7, 1, 7));
    assert_eq!(report.moved_streams, moving, "{report:?}");
    // Jump consistent hash moves 1 - 4/7 of them: 643 of 1,500 expected, sd about 19.
    let expected = 1500.0 * (1.0 - 4.0 / 7.0);
    assert!((moving as f64 - expected).abs() < 100.0, "{moving} streams moved, about {expected} expected");
    assert_eq!(read_all(&store, &names), before);
    for s in &names {
        assert_eq!(store.partition_of(s), partition_for(s, 7));
    }
    let versions_after: Vec<_> = names.iter().map(|s| store.stream_version(s).map_err(|e| e.to_string())).collect();
    assert_eq!(versions_after, versions);
    assert!(matches!(store.read_stream(&names[0], 0, 1), Err(Error::StreamDeleted { .. })));
    // Expected versions hold in the new partitions.
    let moved = names[2..].iter().find(|s| partition_for(s, 4) != partition_for(s, 7)).unwrap();
    let v = store.stream_version(moved).unwrap().unwrap();
    assert!(matches!(
        store.append(moved, ExpectedVersion::Exact(v - 1), &[ev("Late", "x")]),
        Err(Error::WrongExpectedVersion { .. })
    ));
    let r = store.append(moved, ExpectedVersion::Exact(v), &[ev("After", "y")]).unwrap();
    assert_eq!((r.first_version, r.partition), (v + 1, partition_for(moved, 7)));
    let mut before = before;
    before.get_mut(moved).unwrap().as_mut().unwrap().push((
        v + 1,
        r.timestamp_nanos,
        "After".into(),
        vec![],
        b"y".to_vec(),
    ));
    assert_eq!(read_all(&store, &names), before);
    assert!(store.verify().is_empty());
    // Deleting a moved stream erases its history at its old positions too.
    let gone = names[2..].iter().rev().find(|s| partition_for(s, 4) != partition_for(s, 7)).unwrap();
    let old = partition_for(gone, 4);
    let holds =
        |store: &Store, p: u32| store.read_partition(p, 0, usize::MAX).unwrap().iter().any(|e| e.stream_id == *gone);
    assert!(holds(&store, old) && holds(&store, partition_for(gone, 7)));
    assert!(store.delete_stream(gone).unwrap());
    // Events in an active segment are erased once it is sealed: fill the old partition's.
    let filler = (0..).map(|i| format!("filler-{i}")).find(|s| partition_for(s, 7) == old).unwrap();
    for _ in 0..80 {
        store.append(&filler, ExpectedVersion::Any, &[ev("Pad", vec![b'.'; 1000])]).unwrap();
    }
    store.compact_with(true, &mut |_| {}).unwrap();
    store.compact_with(true, &mut |_| {}).unwrap();
    assert!(!holds(&store, old), "the moved stream's old events were not erased");
    before.insert(gone.clone(), Err(format!("{:?}", store.read_stream(gone, 0, 1).unwrap_err())));
    drop(store);

    // The new layout is what a reopen finds; a second grow stacks a second epoch.
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(store.partition_count(), 7);
    assert_eq!(read_all(&store, &names), before);
    let report = store.grow_partitions(12).unwrap();
    assert_eq!((report.epoch, store.partition_count()), (2, 12));
    // Every stream with events or a tombstone whose bucket changes: the accounts (deleted or
    // not) and the filler.
    let moving = names.iter().chain([&filler]).filter(|s| partition_for(s, 7) != partition_for(s, 12)).count() as u64;
    assert_eq!(report.moved_streams, moving);
    assert_eq!(read_all(&store, &names), before);
    assert!(store.grow_partitions(12).unwrap().copied_events == 0, "growing to the same count does nothing");
    assert!(matches!(store.grow_partitions(11), Err(Error::InvalidOptions(_))));
    drop(store);
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!((store.partition_count(), read_all(&store, &names)), (12, before));
}

/// Checks per-stream order and exactly-once delivery (`StreamOrder`), and counts.
#[derive(Default)]
struct Count(AtomicU64);

impl Projection for Count {
    fn handle(&self, _: &RecordedEvent) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[test]
fn grow_while_eight_writers_append_and_a_projection_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(2, 256 << 10)).unwrap());
    let engine = ProjectionEngine::new(store.clone(), 2);
    let order = Arc::new(StreamOrder::default());
    engine.register("order", order.clone(), ProjectionOptions::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                // Per stream: the payloads acknowledged, in order.
                let mut acked: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let s = format!("w{w}-stream-{}", i % 40);
                    let list = acked.entry(s.clone()).or_default();
                    let expected = match list.len() {
                        0 => ExpectedVersion::NoStream,
                        n => ExpectedVersion::Exact(n as u64 - 1),
                    };
                    let payload = format!("{s} #{i}").into_bytes();
                    let r = store.append(&s, expected, &[ev("E", payload.clone())]).unwrap();
                    assert_eq!(r.first_version, list.len() as u64, "{s}");
                    list.push(payload);
                    i += 1;
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let first = store.grow_partitions(5).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let second = store.grow_partitions(9).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Release);
    let mut acked: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for w in writers {
        acked.extend(w.join().unwrap());
    }
    assert!(first.copied_events > 0 && second.copied_events > 0, "{first:?} {second:?}");
    for r in [&first, &second] {
        eprintln!(
            "grow {}->{}: {} streams moved, {} events copied in {} rounds; appends paused {:?} for {} events",
            r.from, r.to, r.moved_streams, r.copied_events, r.rounds, r.cutover, r.cutover_events
        );
    }
    assert_eq!(store.partition_count(), 9);
    let mut total = 0;
    for (s, payloads) in &acked {
        let events = store.read_stream(s, 0, usize::MAX).unwrap();
        assert_eq!(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), *payloads, "{s}");
        assert!(events.iter().enumerate().all(|(i, e)| e.version == i as u64));
        total += payloads.len() as u64;
    }
    assert!(engine.wait_caught_up("order", Duration::from_secs(60)).unwrap());
    assert_eq!(order.violations.load(Ordering::Relaxed), 0, "a stream's events out of order or twice");
    let next = order.next.lock().unwrap().clone();
    for (s, payloads) in &acked {
        assert_eq!(next.get(s).copied(), Some(payloads.len() as u64), "{s}: every event once");
    }
    assert_eq!(next.values().sum::<u64>(), total);
    engine.stop().unwrap();
    let store = Arc::into_inner(store).unwrap();
    drop(store);

    // Reopened: the checkpoints (the file grew with the partitions) hold; the copies in the
    // new partitions are not delivered, only what is appended now.
    let store = Arc::new(Store::open(dir.path(), opts(2, 256 << 10)).unwrap());
    let engine = ProjectionEngine::new(store.clone(), 2);
    let count = Arc::new(Count::default());
    engine.register("order", count.clone(), ProjectionOptions::default()).unwrap();
    for s in acked.keys().take(30) {
        store.append(s, ExpectedVersion::Any, &[ev("E", "after reopen")]).unwrap();
    }
    assert!(engine.wait_caught_up("order", Duration::from_secs(60)).unwrap());
    assert_eq!(count.0.load(Ordering::Relaxed), 30);
    // A projection started from scratch sees every event once, in stream order.
    let fresh = Arc::new(StreamOrder::default());
    engine.register("fresh", fresh.clone(), ProjectionOptions::default()).unwrap();
    assert!(engine.wait_caught_up("fresh", Duration::from_secs(60)).unwrap());
    assert_eq!(fresh.violations.load(Ordering::Relaxed), 0);
    assert_eq!(fresh.next.lock().unwrap().values().sum::<u64>(), total + 30);
    engine.stop().unwrap();
}

/// A projection registered right after a grow, while the workers are busy in a slow handler:
/// the projections registered before still get the new partitions (registration must not
/// mark them covered for everyone).
#[test]
fn projections_registered_before_a_grow_cover_the_new_partitions() {
    struct Slow(AtomicU64, AtomicBool);
    impl Projection for Slow {
        fn handle(&self, _: &RecordedEvent) -> Result<(), HandlerError> {
            self.1.store(true, Ordering::Release);
            std::thread::sleep(Duration::from_millis(400));
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(2, 1 << 20)).unwrap());
    let engine = ProjectionEngine::new(store.clone(), 1);
    let slow = Arc::new(Slow(AtomicU64::new(0), AtomicBool::new(false)));
    engine.register("slow", slow.clone(), ProjectionOptions::default().batch(1)).unwrap();
    store.append("first", ExpectedVersion::Any, &[ev("E", "x")]).unwrap();
    while !slow.1.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(1));
    }
    // The only worker sleeps in the handler: grow, and register another projection at once.
    store.grow_partitions(6).unwrap();
    engine.register("count", Arc::new(Count::default()), ProjectionOptions::default()).unwrap();
    let late = (0..).map(|i| format!("late-{i}")).find(|s| store.partition_of(s) >= 2).unwrap();
    store.append(&late, ExpectedVersion::Any, &[ev("E", "y")]).unwrap();
    assert!(engine.wait_caught_up("slow", Duration::from_secs(30)).unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while slow.0.load(Ordering::Relaxed) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(engine.status("slow").unwrap().partitions.len(), 6);
    assert_eq!(slow.0.load(Ordering::Relaxed), 2, "the event in a new partition was never delivered");
    engine.stop().unwrap();
}

/// Buffered durability: copies are taken only from what is on disk, and the cutover syncs the
/// rest first; reads and versions are the same before and after the grow and after reopening.
#[test]
fn grow_under_buffered_durability() {
    let dir = tempfile::tempdir().unwrap();
    let buffered =
        || opts(3, 64 << 10).durability(strata::Durability::Buffered { sync_interval: Duration::from_secs(60) });
    let store = Store::open(dir.path(), buffered()).unwrap();
    let names: Vec<String> = (0..200).map(|i| format!("b-{i}")).collect();
    for round in 0..5 {
        for s in &names {
            store.append(s, ExpectedVersion::Any, &[ev("E", format!("{s} {round}"))]).unwrap();
        }
    }
    let before = read_all(&store, &names);
    let r = store.grow_partitions(5).unwrap();
    assert!(r.copied_events > 0 && r.cutover_events > 0, "with nothing synced, the cutover copies: {r:?}");
    assert_eq!(read_all(&store, &names), before);
    store.close().unwrap();
    let store = Store::open(dir.path(), buffered()).unwrap();
    assert_eq!((store.partition_count(), read_all(&store, &names)), (5, before));
}

/// A checkpoint file whose extension was interrupted (zeros appended for the new partitions,
/// header not yet rewritten) is taken up at the next registration, and the positions written
/// for the new partitions read back at the one after.
#[test]
fn an_interrupted_checkpoint_extension_is_finished_at_registration() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(2, 1 << 20)).unwrap());
    let run = |store: &Arc<Store>, expect: u64| {
        let engine = ProjectionEngine::new(store.clone(), 1);
        let count = Arc::new(Count::default());
        engine.register("count", count.clone(), ProjectionOptions::default()).unwrap();
        assert!(engine.wait_caught_up("count", Duration::from_secs(30)).unwrap());
        assert_eq!(count.0.load(Ordering::Relaxed), expect);
        engine.stop().unwrap();
    };
    for i in 0..40 {
        store.append(&format!("s-{i}"), ExpectedVersion::Any, &[ev("E", "x")]).unwrap();
    }
    run(&store, 40);
    store.grow_partitions(4).unwrap();
    let file = dir.path().join("projections/count/checkpoints");
    let mut bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len(), 64 + 2 * 64);
    bytes.resize(64 + 4 * 64, 0);
    std::fs::write(&file, &bytes).unwrap();
    for i in 40..80 {
        store.append(&format!("s-{i}"), ExpectedVersion::Any, &[ev("E", "x")]).unwrap();
    }
    run(&store, 40);
    run(&store, 0);
}

/// A manifest whose epoch record names a position past a partition's head (damage, with its
/// CRC fixed up) is refused at open, rather than making projections skip or wait forever.
#[test]
fn an_epoch_past_a_head_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(2, 1 << 20)).unwrap();
    for i in 0..50 {
        store.append(&format!("s-{i}"), ExpectedVersion::Any, &[ev("E", "x")]).unwrap();
    }
    store.grow_partitions(3).unwrap();
    drop(store);
    let path = dir.path().join("MANIFEST");
    let good = std::fs::read(&path).unwrap();
    // The epoch record at 60: from, to, cut[0], cut[1], live_from[0].
    let mut bad = good.clone();
    bad[60 + 8 + 16..60 + 8 + 24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let n = bad.len();
    let sum = crc32fast::hash(&bad[..n - 4]);
    bad[n - 4..].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    match Store::open(dir.path(), Options::default()) {
        Err(Error::Corruption { reason, .. }) => assert!(reason.contains("partition epoch"), "{reason}"),
        other => panic!("{other:?}"),
    }
    std::fs::write(&path, &good).unwrap();
    assert_eq!(Store::open(dir.path(), Options::default()).unwrap().partition_count(), 3);
}

/// A rebuild running while the store grows: the rebuilt projection ends up with every
/// partition and sees every event once, in stream order; the instance it replaced is not
/// started again.
#[test]
fn a_rebuild_during_a_grow() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(2, 256 << 10)).unwrap());
    let engine = Arc::new(ProjectionEngine::new(store.clone(), 2));
    let old = Arc::new(StreamOrder::default());
    engine.register("order", old.clone(), ProjectionOptions::default()).unwrap();
    let streams: Vec<String> = (0..300).map(|i| format!("r-{i}")).collect();
    let appends: Vec<_> = streams.iter().map(|s| (s.as_str(), ExpectedVersion::Any)).collect();
    let mut total = 0u64;
    let mut append_all = |store: &Store| {
        let e = [ev("E", "x")];
        for f in store.append_many(appends.iter().map(|(s, x)| (*s, *x, &e[..]))) {
            f.wait().unwrap();
        }
        total += appends.len() as u64;
    };
    for _ in 0..30 {
        append_all(&store);
    }
    let fresh = Arc::new(StreamOrder::default());
    let rebuild = {
        let (engine, fresh) = (engine.clone(), fresh.clone());
        std::thread::spawn(move || engine.rebuild("order", fresh).unwrap())
    };
    store.grow_partitions(5).unwrap();
    for _ in 0..5 {
        append_all(&store);
    }
    rebuild.join().unwrap();
    assert!(engine.wait_caught_up("order", Duration::from_secs(60)).unwrap());
    assert_eq!(engine.status("order").unwrap().partitions.len(), 5);
    assert_eq!(fresh.violations.load(Ordering::Relaxed), 0);
    assert_eq!(fresh.next.lock().unwrap().values().sum::<u64>(), total);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(old.violations.load(Ordering::Relaxed), 0, "the replaced instance was started again");
    Arc::into_inner(engine).unwrap().stop().unwrap();
}
