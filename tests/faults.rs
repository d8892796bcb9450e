//! Injected I/O faults: a failed fsync poisons a partition, a full disk is refused without
//! losing anything, and reopening recovers. Needs `--features fault-injection`.
//!
//! `every_failing_step_of_a_grow_is_survived`: in separate runs, an I/O error injected into the
//! first, second or third occurrence of creating `p00003`, a rename in `p00002`, writing, syncing
//! and renaming the manifest's temporary file (so both manifest writes are hit), a write in
//! `p00003/`, a sync in `p00002/`, and a tombstone write: the grow returns the error, the store
//! goes on in the old layout with every read unchanged and appends working, reopens in the old
//! layout, and grows again (resuming or starting over), after which it reopens grown. The
//! directory `fsync`s after the commit's rename (the read-back rule, and the second `fsync`) are
//! `a_grow_whose_manifest_may_not_be_durable_refuses_appends`.

mod common;

use common::*;
use strata::faults::{FaultKind, FaultOp, FaultPlan};
use strata::{Durability, Error, ExpectedVersion, Options, RecoveryAction, SnapshotUse, Store};

fn with_plan(partitions: u32) -> (tempfile::TempDir, std::sync::Arc<FaultPlan>, Store) {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let store = Store::open(dir.path(), opts(partitions, 1 << 20).fault_plan(plan.clone())).unwrap();
    (dir, plan, store)
}

#[test]
fn failed_fsync_poisons_the_partition_and_reopen_recovers() {
    let (dir, plan, store) = with_plan(2);
    let p = store.partition_of("victim");
    let acked = fill(&store, "victim", 10);
    // Find another stream in the other partition.
    let bystander = (0..).map(|i| format!("other-{i}")).find(|s| store.partition_of(s) != p).unwrap();
    fill(&store, &bystander, 3);
    plan.inject(FaultOp::Sync, FaultKind::Eio, 0, Some(&format!("p{p:05}")), false);
    let err = store.append("victim", ExpectedVersion::Exact(9), &[ev("Lost", "never acknowledged")]).unwrap_err();
    match &err {
        Error::Poisoned { partition, cause } => {
            assert_eq!(*partition, p);
            assert!(cause.contains("fdatasync"), "{cause}");
        }
        other => panic!("expected Poisoned, got {other:?}"),
    }
    // Every later append to the partition fails the same way, even though fsync works again.
    for i in 0..3 {
        let r = store.append("victim", ExpectedVersion::Any, &[ev("Later", format!("{i}"))]);
        assert!(matches!(r, Err(Error::Poisoned { .. })), "{r:?}");
    }
    assert!(store.poisoned(p).unwrap().is_some());
    // Reads of durable data keep working; nothing unacknowledged is visible.
    assert_eq!(payloads(&store.read_stream("victim", 0, 100).unwrap()), acked);
    assert_eq!(store.head(p).unwrap(), 10);
    // The other partition is unaffected.
    assert!(store.poisoned(1 - p).unwrap().is_none());
    fill(&store, &bystander, 2);
    assert!(matches!(store.close(), Err(Error::Poisoned { .. })), "close reports the poisoned partition");
    // Reopening recovers: acknowledged data is intact and appends work again.
    let store = Store::open(dir.path(), Options::default()).unwrap();
    // The write whose fsync failed was cut off when the partition was poisoned: its pages may
    // still be in the page cache, and they must not come back as if they were durable.
    let got = store.read_stream("victim", 0, 100).unwrap();
    assert_eq!(payloads(&got), acked);
    fill(&store, "victim", 2);
}

#[test]
fn failed_background_sync_in_buffered_mode_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let buffered = Durability::Buffered { sync_interval: std::time::Duration::from_millis(1) };
    let store = Store::open(dir.path(), opts(1, 1 << 20).durability(buffered).fault_plan(plan.clone())).unwrap();
    fill(&store, "b", 3);
    // Wait until all three are durable: a subscription delivers only durable events. (A count
    // of syncs is not enough: a sync may have run after the first append only, and the cut
    // below would then take the other two as well.)
    let mut sub = store.subscribe_partition(0, 0, strata::Filter::all()).unwrap();
    let mut durable = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while durable < 3 {
        assert!(std::time::Instant::now() < deadline, "the background sync never ran");
        durable += sub.next_batch(10, std::time::Duration::from_millis(50)).unwrap().len();
    }
    drop(sub);
    plan.inject(FaultOp::Sync, FaultKind::Eio, 0, Some(".log"), true);
    let _ = store.append("b", ExpectedVersion::Any, &[ev("Acked", "in the page cache only")]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while store.poisoned(0).unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the background sync never ran");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(matches!(store.append("b", ExpectedVersion::Any, &[ev("x", "y")]), Err(Error::Poisoned { .. })));
    // The append that was cut back with the unsynced data is no longer counted or read: the
    // head, the stream's version and its reads show the durable data only.
    assert_eq!(store.head(0).unwrap(), 3, "the head counts a discarded append");
    assert_eq!(store.stream_version("b").unwrap(), Some(2));
    assert_eq!(store.read_stream("b", 0, 100).unwrap().len(), 3);
    let scanned: Vec<_> = store.iter_partition(0, 0).collect();
    assert!(scanned.len() == 3 && scanned.iter().all(Result::is_ok), "{scanned:?}");
    plan.clear();
}

#[test]
fn full_disk_refuses_the_append_and_loses_nothing() {
    let (dir, plan, store) = with_plan(1);
    let acked = fill(&store, "s", 5);
    plan.inject(FaultOp::Write, FaultKind::NoSpace, 0, Some(".log"), false);
    let r = store.append("s", ExpectedVersion::Exact(4), &[ev("Big", vec![7u8; 5000])]);
    assert!(matches!(r, Err(Error::StorageFull { .. })), "{r:?}");
    assert!(store.poisoned(0).unwrap().is_none(), "a refused write that was cut back does not poison");
    // Space is back: the same append succeeds with the same expected version.
    let r = store.append("s", ExpectedVersion::Exact(4), &[ev("Big", vec![7u8; 5000])]).unwrap();
    assert_eq!(r.first_version, 5);
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let got = store.read_stream("s", 0, 100).unwrap();
    assert_eq!(payloads(&got[..5]), acked);
    assert_eq!(got.len(), 6);
    assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
}

#[test]
fn short_write_poisons_and_the_half_write_is_cut_back() {
    let (dir, plan, store) = with_plan(1);
    let acked = fill(&store, "s", 5);
    let seg = segments(dir.path(), 0).pop().unwrap();
    plan.inject(FaultOp::Write, FaultKind::ShortWrite, 0, Some(".log"), false);
    let r = store.append("s", ExpectedVersion::Exact(4), &[ev("Torn", vec![1u8; 3000])]);
    assert!(matches!(r, Err(Error::Poisoned { .. })), "{r:?}");
    // Poisoning cut the segment back to its durable data: the half write is gone already.
    assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, data_end(&std::fs::read(&seg).unwrap()));
    assert!(matches!(store.close(), Err(Error::Poisoned { .. })), "close reports the poisoned partition");
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(payloads(&store.read_stream("s", 0, 100).unwrap()), acked);
    assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
    fill(&store, "s", 1);
}

#[test]
fn failures_while_rolling_a_segment() {
    // Fail the creation of the next segment: the append fails, the store stays usable.
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let store = Store::open(dir.path(), opts(1, 4096).fault_plan(plan.clone())).unwrap();
    let mut acked = fill(&store, "s", 40);
    plan.inject(FaultOp::Create, FaultKind::NoSpace, 0, Some(".tmp"), true);
    let mut refused = 0;
    for _ in 0..40 {
        let v = store.stream_version("s").unwrap().unwrap();
        match store.append("s", ExpectedVersion::Exact(v), &[ev("E", vec![3u8; 200])]) {
            Ok(_) => acked.push(vec![3u8; 200]),
            Err(Error::StorageFull { .. }) => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(refused > 0, "the roll should have been attempted");
    plan.clear();
    acked.extend(fill(&store, "s", 40));
    assert_eq!(payloads(&store.read_stream("s", 0, 1000).unwrap()), acked);
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(payloads(&store.read_stream("s", 0, 1000).unwrap()), acked);
    // Fail the directory fsync after the new segment's rename: the roll cannot be undone, so
    // the partition is poisoned; reopening recovers, rebuilding the unsealed segment's index.
    drop(store);
    // Without preallocation, so that the only syncs are the writer's.
    let store = Store::open(dir.path(), Options::default().preallocate(false).fault_plan(plan.clone())).unwrap();
    let active_len = || data_end(&std::fs::read(segments(dir.path(), 0).pop().unwrap()).unwrap());
    while active_len() < 4096 {
        acked.extend(fill(&store, "s", 1));
    }
    // The next append rolls: fsync of the temp segment (skipped), then of the directory (fails).
    plan.inject(FaultOp::Sync, FaultKind::Eio, 1, Some("p00000"), false);
    let r = store.append("s", ExpectedVersion::Any, &[ev("E", "x")]);
    assert!(matches!(r, Err(Error::Poisoned { ref cause, .. }) if cause.contains("directory")), "{r:?}");
    assert!(matches!(store.close(), Err(Error::Poisoned { .. })), "close reports the poisoned partition");
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(payloads(&store.read_stream("s", 0, 1000).unwrap()), acked);
    assert!(
        store.recovery_report().iter().any(|a| matches!(a, RecoveryAction::RebuiltIndex { .. })),
        "{:?}",
        store.recovery_report()
    );
    acked.extend(fill(&store, "s", 3));
    assert_eq!(payloads(&store.read_stream("s", 0, 1000).unwrap()), acked);
}

/// Every step of a snapshot write and of a sidecar rewrite, failed in turn: the failure is
/// reported by `flush_snapshots`, loads stay correct throughout (snapshots are derived data),
/// appends never notice, and a reopen recovers. After a failed fsync (of the sidecar or of the
/// directory after a rename) snapshots of the partition stop until reopen.
#[test]
fn every_failing_step_of_a_snapshot_write_is_survived() {
    type Agg = Tally<1, 1>;
    let steps: [(FaultOp, FaultKind, u64, &str, bool); 9] = [
        (FaultOp::Write, FaultKind::Eio, 0, "snapshots.snap", false),
        (FaultOp::Write, FaultKind::NoSpace, 0, "snapshots.snap", false),
        (FaultOp::Sync, FaultKind::Eio, 0, "snapshots.snap", true),
        (FaultOp::Create, FaultKind::Eio, 0, "snapshots.snap.tmp", false),
        (FaultOp::Write, FaultKind::Eio, 0, "snapshots.snap.tmp", false),
        (FaultOp::Write, FaultKind::ShortWrite, 0, "snapshots.snap.tmp", false),
        (FaultOp::Sync, FaultKind::Eio, 0, "snapshots.snap.tmp", false),
        (FaultOp::Rename, FaultKind::Eio, 0, "snapshots.snap", false),
        // The syncs in the partition after the fault is planted: the commit's, then the
        // snapshotter's of the sidecar, of the temp file, and of the directory.
        (FaultOp::Sync, FaultKind::Eio, 3, "p00000", true),
    ];
    for (op, kind, skip, path, stops) in steps {
        let step = format!("{op:?} {kind:?} #{} of {path}", skip + 1);
        let dir = tempfile::tempdir().unwrap();
        let plan = FaultPlan::new();
        let options = opts(1, 1 << 20).preallocate(false).snapshot_rewrite_bytes(0).fault_plan(plan.clone());
        let store = Store::open(dir.path(), options).unwrap();
        let mut agg = store.load::<Agg>("s").unwrap();
        store.commit(&mut agg, &[ev("E", "0")]).unwrap();
        store.flush_snapshots().unwrap();
        plan.inject(op, kind, skip, Some(path), false);
        // The second snapshot is appended, then superseded bytes equal live ones: a rewrite.
        store.commit(&mut agg, &[ev("E", "1")]).unwrap();
        let err = store.flush_snapshots().unwrap_err();
        assert!(matches!(err, Error::Io { .. } | Error::StorageFull { .. }), "{step}: {err:?}");
        let loaded = store.load::<Agg>("s").unwrap();
        assert_eq!(*loaded.state(), Tally::replayed(&store, "s"), "{step}");
        assert!(!dir.path().join("p00000/snapshots.snap.tmp").exists(), "{step}: temp file left behind");
        store.commit(&mut agg, &[ev("E", "2")]).unwrap();
        assert_eq!(store.flush_snapshots().is_err(), stops, "{step}");
        assert_eq!(*agg.state(), Tally::replayed(&store, "s"), "{step}");
        assert!(
            store.recovery_report().iter().any(|a| matches!(a, RecoveryAction::SnapshotWriteFailed { .. })),
            "{step}: {:?}",
            store.recovery_report()
        );
        drop(store);
        let store = Store::open(dir.path(), Options::default()).unwrap();
        let loaded = store.load::<Agg>("s").unwrap();
        assert_eq!(*loaded.state(), Tally::replayed(&store, "s"), "{step}");
        assert_eq!(loaded.version(), Some(2), "{step}");
        assert!(
            matches!(loaded.snapshot().clone(), SnapshotUse::Used { .. }),
            "{step}: {:?}",
            loaded.snapshot().clone()
        );
        let report = store.recovery_report();
        assert!(report.iter().all(|a| matches!(a, RecoveryAction::RemovedTempFile { .. })), "{step}: {report:?}");
    }
}

/// Every file operation of a compaction fails in turn (creating, writing, syncing and renaming
/// each archive, syncing the directory): the compaction reports the error, reads stay as they
/// were, and both a retry and a reopen get to the compacted store with nothing lost.
#[test]
fn every_failing_step_of_a_compaction_is_survived() {
    use strata::compaction::CompactionOptions;
    let compaction = CompactionOptions::default()
        .retention(std::time::Duration::ZERO)
        .require_snapshots(false)
        .interval(None)
        .max_archive_bytes(64 << 10);
    let read_all = |store: &Store| -> Vec<Vec<u8>> {
        let mut all = payloads(&store.read_partition(0, 0, usize::MAX).unwrap());
        all.extend(payloads(&store.read_stream("s-3", 0, usize::MAX).unwrap()));
        all
    };
    let mut failed_steps = 0;
    for (op, path) in [
        (FaultOp::Create, ".arc"),
        (FaultOp::Write, ".arc"),
        (FaultOp::Sync, ".arc"),
        (FaultOp::Rename, ".arc"),
        (FaultOp::Sync, "p00000"),
    ] {
        for skip in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let plan = FaultPlan::new();
            let options = || opts(1, 64 << 10).preallocate(false).compaction(compaction.clone());
            let store = Store::open(dir.path(), options().fault_plan(plan.clone())).unwrap();
            for i in 0..300 {
                let s = format!("s-{}", i % 20);
                let events: Vec<_> = (0..10)
                    .map(|k| {
                        ev("E", format!("{{\"n\":{i},\"k\":{k},\"s\":\"{s}\",\"memo\":\"{}\"}}", "pad ".repeat(i % 30)))
                    })
                    .collect();
                store.append(&s, ExpectedVersion::Any, &events).unwrap();
            }
            // Closed and reopened, so that no segment is still being sealed in the background:
            // the sealer's fsync would take a fault meant for the compaction (it did, on a
            // loaded machine). No preallocation either, for the same reason.
            drop(store);
            let store = Store::open(dir.path(), options().fault_plan(plan.clone())).unwrap();
            let before = read_all(&store);
            plan.inject(op, FaultKind::Eio, skip, Some(path), false);
            match store.compact() {
                Ok(_) => {
                    assert!(skip > 0, "{op:?} {path}: the first such step did not fail");
                    assert_eq!(read_all(&store), before, "{op:?} {path} skip {skip}: the fault did not fire");
                    continue;
                }
                Err(e) => assert!(matches!(e, Error::Io { .. }), "{op:?} {path} skip {skip}: {e}"),
            }
            failed_steps += 1;
            assert_eq!(read_all(&store), before, "{op:?} {path} skip {skip}: reads after the failure");
            // A retry (the fault fired once) completes the job.
            store.compact().unwrap();
            assert_eq!(read_all(&store), before, "{op:?} {path} skip {skip}: after a retry");
            drop(store);
            let store = Store::open(dir.path(), options()).unwrap();
            assert_eq!(read_all(&store), before, "{op:?} {path} skip {skip}: after reopening");
            assert!(store.storage().unwrap()[0].archives > 0);
        }
    }
    // Each of the 5 steps failed at least for its first occurrence; most for several.
    assert!(failed_steps >= 10, "only {failed_steps} injected faults hit a compaction step");
}

/// Each step of a grow fails in turn (creating the new partitions, the manifest writes, the
/// copies into the new partitions, moving a tombstone): the grow returns the error, the store
/// goes on in the old layout with nothing lost, reopens in the old layout (or the new one),
/// and growing again resumes and completes.
#[test]
fn every_failing_step_of_a_grow_is_survived() {
    let names: Vec<String> = (0..300).map(|i| format!("s-{i}")).collect();
    let read_all = |store: &Store| -> Vec<Result<Vec<Vec<u8>>, String>> {
        names
            .iter()
            .map(|s| store.read_stream(s, 0, usize::MAX).map(|e| payloads(&e)).map_err(|e| e.to_string()))
            .collect()
    };
    // A deleted stream that moves, so its tombstone moves.
    let deleted = names
        .iter()
        .find(|s| strata::routing::partition_for(s, 2) != strata::routing::partition_for(s, 4))
        .unwrap()
        .clone();
    let mut failed_steps = 0;
    for (op, path) in [
        (FaultOp::Create, "p00003"),
        (FaultOp::Rename, "p00002"),
        (FaultOp::Write, "MANIFEST"),
        (FaultOp::Sync, "MANIFEST"),
        (FaultOp::Rename, "MANIFEST"),
        (FaultOp::Write, "p00003/"),
        (FaultOp::Sync, "p00002/"),
        (FaultOp::Write, "tombstones"),
    ] {
        for skip in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let plan = FaultPlan::new();
            let store = Store::open(dir.path(), opts(2, 64 << 10).fault_plan(plan.clone())).unwrap();
            // Concurrent appends, so they are group-committed: the test stays fast.
            std::thread::scope(|scope| {
                for chunk in names.chunks(38) {
                    let store = &store;
                    scope.spawn(move || {
                        for round in 0..4 {
                            for s in chunk {
                                store.append(s, ExpectedVersion::Any, &[ev("E", format!("{s} {round}"))]).unwrap();
                            }
                        }
                    });
                }
            });
            store.delete_stream(&deleted).unwrap();
            let mut before = read_all(&store);
            plan.inject(op, FaultKind::Eio, skip, Some(path), false);
            let what = format!("{op:?} {path} skip {skip}");
            match store.grow_partitions(4) {
                Ok(_) => {
                    assert_eq!(read_all(&store), before, "{what}: the fault did not fire");
                    continue;
                }
                Err(e) => assert!(matches!(e, Error::Io { .. } | Error::Poisoned { .. }), "{what}: {e}"),
            }
            failed_steps += 1;
            // The store goes on in the old layout.
            assert_eq!(store.partition_count(), 2, "{what}");
            assert_eq!(read_all(&store), before, "{what}: reads after the failure");
            for (s, b) in names.iter().zip(before.iter_mut()).skip(1).step_by(7) {
                if let Ok(list) = b {
                    store.append(s, ExpectedVersion::Exact(list.len() as u64 - 1), &[ev("E", "after")]).unwrap();
                    list.push(b"after".to_vec());
                }
            }
            drop(store);
            let store = Store::open(dir.path(), Options::default()).unwrap();
            assert_eq!(store.partition_count(), 2, "{what}");
            assert_eq!(read_all(&store), before, "{what}: after reopening");
            // Growing again resumes what was recorded, or starts over.
            let r = store.grow_partitions(4).unwrap();
            assert_eq!((store.partition_count(), r.epoch), (4, 1), "{what}");
            assert_eq!(read_all(&store), before, "{what}: after the resumed grow");
            assert!(store.verify().is_empty(), "{what}");
            drop(store);
            let store = Store::open(dir.path(), Options::default()).unwrap();
            assert_eq!((store.partition_count(), read_all(&store)), (4, before), "{what}: reopened grown");
        }
    }
    eprintln!("{failed_steps} injected faults hit a grow step");
    assert!(failed_steps >= 12, "only {failed_steps} injected faults hit a grow step");
}

/// An append the writer is committing while `delete_stream` runs is answered, if at all,
/// before the delete returns: once it has returned, no append to the stream is acknowledged.
/// The publish delay holds a group between its checks (tombstone included) and its replies;
/// the append's future must be ready the moment the delete returns.
#[test]
fn no_append_is_acknowledged_after_its_stream_delete_returns() {
    use std::future::Future;
    let (_dir, plan, store) = with_plan(1);
    fill(&store, "doomed", 1);
    plan.delay_publish(std::time::Duration::from_millis(300));
    let mut pending = store.append_async("doomed", ExpectedVersion::Exact(0), &[ev("Late", "in the group")]);
    // The writer has checked the append (no tombstone yet) and waits to publish it.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(store.delete_stream("doomed").unwrap());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let answered = std::pin::Pin::new(&mut pending).poll(&mut cx);
    plan.delay_publish(std::time::Duration::ZERO);
    assert!(answered.is_ready(), "the delete returned before the append in the group was answered");
    let after = store.append("doomed", ExpectedVersion::Any, &[ev("After", "refused")]);
    assert!(matches!(after, Err(Error::StreamDeleted { .. })), "{after:?}");
    assert!(matches!(store.read_stream("doomed", 0, 10), Err(Error::StreamDeleted { .. })));
}

/// A sealed segment whose load fails on an I/O error (here: its index rebuild cannot create
/// the file) is not loaded again on every read: for a second, reads get the same error at
/// once, then a load is tried again, and succeeds once the error has passed.
#[test]
fn a_failed_segment_load_is_not_retried_on_every_read() {
    let dir = tempfile::tempdir().unwrap();
    let acked = {
        let store = Store::open(dir.path(), opts(1, 4096)).unwrap();
        let acked = fill(&store, "s", 200);
        store.close().unwrap();
        acked
    };
    let first_index = dir.path().join("p00000").join("00000000000000000000.idx");
    std::fs::remove_file(&first_index).unwrap();
    let plan = FaultPlan::new();
    let store = Store::open(dir.path(), Options::default().fault_plan(plan.clone())).unwrap();
    plan.inject(FaultOp::Create, FaultKind::Eio, 0, Some(".idx"), false);
    let first = store.read_stream("s", 0, 1);
    assert!(matches!(first, Err(Error::Io { .. })), "{first:?}");
    // The fault has fired (it was not sticky), but the next read does not load again yet.
    let second = store.read_stream("s", 0, 1);
    assert!(matches!(second, Err(Error::Io { .. })), "retried at once: {second:?}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let got = store.read_stream("s", 0, usize::MAX).unwrap();
    assert_eq!(payloads(&got), acked);
    assert!(first_index.exists(), "the index was rebuilt");
}

/// A grow whose manifest rename happened but whose directory fsync failed twice (the commit's
/// and its retry) has no layout known to survive a power loss: the old manifest may come back,
/// or the new one stay. Appends are then refused (an append acknowledged under either layout
/// could be lost under the other) until a reopen, which finds every acknowledged append in
/// whichever layout the disk kept. Each run fails the store directory's fsyncs from the
/// `skip + 1`-th on.
#[test]
fn a_grow_whose_manifest_may_not_be_durable_refuses_appends() {
    let mut hit = 0;
    for skip in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let plan = FaultPlan::new();
        let store = Store::open(dir.path(), opts(2, 1 << 20).fault_plan(plan.clone())).unwrap();
        let streams: Vec<String> = (0..12).map(|k| format!("s{k}")).collect();
        let mut acked: Vec<Vec<Vec<u8>>> = streams.iter().map(|s| fill(&store, s, 3)).collect();
        plan.inject_at(FaultOp::Sync, FaultKind::Eio, skip, dir.path(), true);
        let grown = store.grow_partitions(4);
        let on_disk = match strata::inspect::dump(&dir.path().join("MANIFEST"), &Default::default()).unwrap() {
            strata::inspect::Dump::Manifest { partition_count, .. } => partition_count,
            other => panic!("{other:?}"),
        };
        if grown.is_err() && on_disk == 4 {
            hit += 1;
            for s in &streams {
                let r = store.append(s, ExpectedVersion::Any, &[ev("After", "refused")]);
                assert!(r.is_err(), "skip {skip}: {s}: an append was acknowledged under an unsure layout: {r:?}");
            }
            let many = store.append_many([("s0", ExpectedVersion::Any, vec![ev("After", "refused")])]);
            assert!(many.into_iter().all(|f| f.wait().is_err()), "skip {skip}: append_many went through");
            assert!(store.delete_stream("s0").is_err(), "skip {skip}: a delete went through");
            assert!(store.grow_partitions(4).is_err(), "skip {skip}: a grow went through");
        } else if grown.is_err() {
            // Failed before the rename: the old layout goes on.
            for (s, a) in streams.iter().zip(&mut acked) {
                a.extend(fill(&store, s, 1));
            }
        }
        plan.clear();
        drop(store);
        let store = Store::open(dir.path(), Options::default()).unwrap();
        for (s, a) in streams.iter().zip(&acked) {
            assert_eq!(&payloads(&store.read_stream(s, 0, 100).unwrap()), a, "skip {skip}: {s}");
        }
    }
    assert!(hit > 0, "no run failed both fsyncs after the rename");
}

/// A poisoning writes a marker before it cuts the segment back: if the cut fails (or the
/// process dies before it), the next open cuts the bytes after the durable end, which may be
/// pages whose write-back failed, instead of keeping them as valid batches for new ones to
/// vouch for.
#[test]
fn a_failed_cut_back_is_finished_by_the_next_open() {
    // No preallocation: a zero fill's sync would take the injected fault.
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let store = Store::open(dir.path(), opts(1, 1 << 20).preallocate(false).fault_plan(plan.clone())).unwrap();
    let acked = fill(&store, "s", 3);
    plan.inject(FaultOp::Sync, FaultKind::Eio, 0, Some(".log"), false);
    plan.inject(FaultOp::SetLen, FaultKind::Eio, 0, Some(".log"), false);
    let r = store.append("s", ExpectedVersion::Exact(2), &[ev("Failed", "never acknowledged")]);
    assert!(matches!(r, Err(Error::Poisoned { .. })), "{r:?}");
    let marker = dir.path().join("p00000").join("POISON");
    assert!(marker.exists(), "no poison marker");
    match strata::inspect::dump(&marker, &Default::default()).unwrap() {
        strata::inspect::Dump::PoisonMarker { partition: 0, segment: 0, durable_end } => {
            assert!(durable_end > 64, "{durable_end}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(store.close(), Err(Error::Poisoned { .. })));
    drop(store);
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(payloads(&store.read_stream("s", 0, 100).unwrap()), acked, "the failed append's bytes were kept");
    assert!(!marker.exists(), "the marker outlived its cut");
    let cut = store
        .recovery_report()
        .into_iter()
        .any(|a| matches!(a, RecoveryAction::TruncatedTornTail { ref reason, .. } if reason.contains("POISON")));
    assert!(cut, "{:?}", store.recovery_report());
    fill(&store, "s", 2);
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(store.read_stream("s", 0, 100).unwrap().len(), 5);
    assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
}

/// A dead-letter queue rewrite whose rename happened but whose directory fsync failed: the
/// queue writes nothing more to its old file (now replaced), so every later discard fails
/// instead of vanishing; registering the projection again reads the new file, every pending
/// letter in it.
#[test]
fn a_dead_letter_rewrite_that_fails_after_its_rename_stops_the_queue() {
    use strata::projection::ProjectionOptions;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let store = std::sync::Arc::new(Store::open(dir.path(), opts(1, 1 << 20).fault_plan(plan.clone())).unwrap());
    fill(&store, "bad", 100);
    let options = ProjectionOptions::default().retry(1, std::time::Duration::ZERO);
    let engine = strata::ProjectionEngine::new(store.clone(), 1);
    engine.register("fails", std::sync::Arc::new(AlwaysFails), options.clone()).unwrap();
    assert!(engine.wait_caught_up("fails", std::time::Duration::from_secs(10)).unwrap());
    let ids: Vec<u64> = engine.dead_letters("fails").unwrap().iter().map(|l| l.id).collect();
    assert_eq!(ids.len(), 100);
    // The 51st discard makes 102 dead records against 49 pending (more than twice): the
    // rewrite, whose directory fsync fails; that discard itself is durable.
    let pdir = dir.path().join("projections").join("fails");
    plan.inject_at(FaultOp::Sync, FaultKind::Eio, 0, &pdir, true);
    let mut failed_at = None;
    for (k, id) in ids.iter().enumerate() {
        if engine.discard_dead_letters("fails", &[*id]).is_err() {
            failed_at = Some(k);
            break;
        }
    }
    let k = failed_at.expect("no discard failed after the rewrite");
    assert_eq!(k, 51, "the first discard after the failed rewrite fails");
    plan.clear();
    engine.stop().unwrap();
    let engine = strata::ProjectionEngine::new(store.clone(), 1);
    engine.register("fails", std::sync::Arc::new(AlwaysFails), options).unwrap();
    let pending: Vec<u64> = engine.dead_letters("fails").unwrap().iter().map(|l| l.id).collect();
    assert_eq!(pending, ids[51..], "the rewritten file holds every pending letter");
}
