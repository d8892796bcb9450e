//! Snapshots and aggregate loading: a load equals a full replay whatever the history, a
//! damaged, truncated, stale or foreign-schema snapshot is never trusted, and the sidecar
//! rewrite keeps the file small without losing the latest snapshots.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::backends::on_each_backend;
use common::*;
use proptest::prelude::*;
use strata::{ExpectedVersion, Options, RecoveryAction, SnapshotIgnored, SnapshotUse, Store};

type T10 = Tally<10, 1>;

/// Commits `n` single-event commands to `stream` through the aggregate API.
fn commit_n<const E: u64, const S: u32>(store: &Store, stream: &str, n: usize) {
    let mut agg = store.load::<Tally<E, S>>(stream).unwrap();
    for i in 0..n {
        store.commit(&mut agg, &[ev("Tallied", format!("{stream}/{i}"))]).unwrap();
    }
    assert_eq!(*agg.state(), Tally::replayed(store, stream));
}

fn check_loads<const E: u64, const S: u32>(store: &Store, streams: &[&str]) {
    for s in streams {
        let a = store.load::<Tally<E, S>>(s).unwrap();
        assert_eq!(*a.state(), Tally::replayed(store, s), "{s}: {:?}", a.snapshot().clone());
        assert_eq!(a.version(), store.stream_version(s).unwrap(), "{s}");
    }
}

fn discarded(store: &Store) -> Vec<(u64, u64, String)> {
    store
        .recovery_report()
        .into_iter()
        .filter_map(|a| match a {
            RecoveryAction::SnapshotsDiscarded { offset, discarded_bytes, reason, .. } => {
                Some((offset, discarded_bytes, reason))
            }
            _ => None,
        })
        .collect()
}

/// Offsets of the records of a sidecar file (walking their length fields).
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut off = 64;
    while off + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        if len == 0 || off + len > bytes.len() {
            break;
        }
        out.push(off);
        off += len;
    }
    out
}

#[test]
fn load_starts_from_the_latest_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(2, 1 << 20)).unwrap();
    let fresh = store.load::<T10>("acct").unwrap();
    assert_eq!((fresh.version(), fresh.replayed(), &fresh.snapshot().clone()), (None, 0, &SnapshotUse::None));
    assert_eq!(fresh.expected(), ExpectedVersion::NoStream);
    commit_n::<10, 1>(&store, "acct", 25);
    store.flush_snapshots().unwrap();
    let check = |store: &Store| {
        let a = store.load::<T10>("acct").unwrap();
        assert_eq!(a.snapshot().clone(), SnapshotUse::Used { version: 19 });
        assert_eq!((a.version(), a.replayed()), (Some(24), 5));
        assert_eq!(*a.state(), Tally::replayed(store, "acct"));
    };
    check(&store);
    let stats = store.snapshot_stats();
    // One or two records: the snapshots at 9 and 19 may share a round of the snapshotter.
    assert!((1..=2).contains(&stats.written) && stats.streams == 1, "{stats:?}");
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    check(&store);
    assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
}

#[test]
fn a_load_that_replays_many_events_snapshots_them() {
    on_each_backend(1, 1 << 20, |store| {
        // Appended without the aggregate API: no snapshot yet.
        fill(&store, "bulk", 35);
        let a = store.load::<T10>("bulk").unwrap();
        assert_eq!((a.snapshot().clone(), a.replayed()), (SnapshotUse::None, 35));
        store.flush_snapshots().unwrap();
        let b = store.load::<T10>("bulk").unwrap();
        assert_eq!((b.snapshot().clone(), b.replayed()), (SnapshotUse::Used { version: 34 }, 0));
        assert_eq!(*b.state(), *a.state());
        // An explicit snapshot is taken whatever the policy.
        let mut c = store.load::<Tally<0, 1>>("bulk").unwrap();
        store.commit(&mut c, &[ev("Closed", "!")]).unwrap();
        store.snapshot(&mut c).unwrap();
        store.flush_snapshots().unwrap();
        assert_eq!(store.load::<T10>("bulk").unwrap().snapshot().clone(), SnapshotUse::Used { version: 35 });
    });
}

#[test]
fn a_schema_change_rebuilds_and_resnapshots() {
    on_each_backend(2, 1 << 20, |store| {
        commit_n::<5, 1>(&store, "order", 12);
        store.flush_snapshots().unwrap();
        let v2 = store.load::<Tally<5, 2>>("order").unwrap();
        assert_eq!(
            v2.snapshot().clone(),
            SnapshotUse::Ignored { version: Some(9), reason: SnapshotIgnored::Rejected { schema: 1 } }
        );
        assert_eq!((v2.replayed(), *v2.state()), (12, Tally::replayed(&store, "order")));
        store.flush_snapshots().unwrap();
        let again = store.load::<Tally<5, 2>>("order").unwrap();
        assert_eq!((again.snapshot().clone(), again.replayed()), (SnapshotUse::Used { version: 11 }, 0));
        assert_eq!(store.snapshot_stats().ignored, 1);
    });
}

/// One partition, `n` streams of 9 events each snapshotted at versions 3 and 7, in stream
/// order; closed.
fn snapshotted_store(dir: &Path, n: usize) -> Vec<String> {
    let store = Store::open(dir, opts(1, 1 << 20)).unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    for s in &names {
        let mut agg = store.load::<Tally<4, 1>>(s).unwrap();
        for i in 0..9 {
            store.commit(&mut agg, &[ev("Tallied", format!("{s}/{i}"))]).unwrap();
            // One round of the snapshotter per snapshot, so none is merged with the next.
            store.flush_snapshots().unwrap();
        }
    }
    store.close().unwrap();
    names
}

#[test]
fn a_damaged_record_is_cut_off_and_loading_replays() {
    let dir = tempfile::tempdir().unwrap();
    let names = snapshotted_store(dir.path(), 6);
    let path = sidecar(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let offsets = record_offsets(&bytes);
    assert_eq!(offsets.len(), 12, "two snapshots per stream");
    let victim = offsets[7];
    bytes[victim + 60] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    // The snapshots before the damage are still used (and this load queues no new one).
    assert_eq!(store.load::<Tally<4, 1>>("s0").unwrap().snapshot().clone(), SnapshotUse::Used { version: 7 });
    assert_eq!(std::fs::metadata(&path).unwrap().len(), victim as u64, "cut at the damage");
    let d = discarded(&store);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].0, d[0].1), (victim as u64, (bytes.len() - victim) as u64));
    assert!(d[0].2.contains("checksum"), "{}", d[0].2);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    check_loads::<4, 1>(&store, &names);
}

#[test]
fn a_truncated_sidecar_loses_only_its_torn_record() {
    let dir = tempfile::tempdir().unwrap();
    let names = snapshotted_store(dir.path(), 3);
    let path = sidecar(dir.path(), 0);
    let len = std::fs::metadata(&path).unwrap().len();
    let last = *record_offsets(&std::fs::read(&path).unwrap()).last().unwrap() as u64;
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 5).unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    // The stream whose latest snapshot was torn falls back to the one before.
    assert_eq!(store.load::<Tally<4, 1>>("s2").unwrap().snapshot().clone(), SnapshotUse::Used { version: 3 });
    let d = discarded(&store);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].0, last);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    check_loads::<4, 1>(&store, &names);
}

#[test]
fn a_damaged_header_replaces_the_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let names = snapshotted_store(dir.path(), 3);
    let path = sidecar(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for s in &names {
        let a = store.load::<Tally<4, 1>>(s).unwrap();
        assert_eq!(a.snapshot().clone(), SnapshotUse::None);
        assert_eq!(*a.state(), Tally::replayed(&store, s));
    }
    let d = discarded(&store);
    assert_eq!((d.len(), d[0].0, d[0].1), (1, 0, bytes.len() as u64), "{d:?}");
    // The loads snapshotted again (9 events replayed >= 4), into the new sidecar.
    store.flush_snapshots().unwrap();
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    for s in &names {
        assert_eq!(store.load::<Tally<4, 1>>(s).unwrap().snapshot().clone(), SnapshotUse::Used { version: 8 });
    }
    assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
}

#[test]
fn damage_after_open_is_caught_when_the_snapshot_is_read() {
    let dir = tempfile::tempdir().unwrap();
    snapshotted_store(dir.path(), 2);
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(store.load::<Tally<4, 1>>("s1").unwrap().snapshot().clone(), SnapshotUse::Used { version: 7 });
    let path = sidecar(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = *record_offsets(&bytes).last().unwrap();
    bytes[last + 58] ^= 0x10; // inside the state (after the 2-byte stream id)
    std::fs::write(&path, &bytes).unwrap();
    let a = store.load::<Tally<4, 1>>("s1").unwrap();
    assert!(
        matches!(
            &a.snapshot().clone(),
            SnapshotUse::Ignored { version: None, reason: SnapshotIgnored::Unreadable { .. } }
        ),
        "{:?}",
        a.snapshot().clone()
    );
    assert_eq!(*a.state(), Tally::replayed(&store, "s1"));
    assert!(
        store.recovery_report().iter().any(
            |r| matches!(r, RecoveryAction::SnapshotUnreadable { offset, stream, .. } if *offset == last as u64 && stream == "s1")
        ),
        "{:?}",
        store.recovery_report()
    );
    // The load queued a new snapshot, which supersedes the damaged one.
    store.flush_snapshots().unwrap();
    assert_eq!(store.load::<Tally<4, 1>>("s1").unwrap().snapshot().clone(), SnapshotUse::Used { version: 8 });
}

#[test]
fn a_snapshot_of_events_the_log_does_not_hold_is_stale() {
    let work = tempfile::tempdir().unwrap();
    let (a, b, c) = (work.path().join("a"), work.path().join("b"), work.path().join("c"));
    {
        let store = Store::open(&a, opts(1, 1 << 20)).unwrap();
        commit_n::<0, 1>(&store, "s", 30);
        let mut agg = store.load::<T10>("s").unwrap();
        store.snapshot(&mut agg).unwrap();
        store.close().unwrap();
    }
    // `b` holds fewer events of the stream, `c` as many but other ones (other timestamps).
    for (dir, n) in [(&b, 10), (&c, 40)] {
        let store = Store::open(dir, opts(1, 1 << 20)).unwrap();
        fill(&store, "s", n);
        store.close().unwrap();
        std::fs::copy(sidecar(&a, 0), sidecar(dir, 0)).unwrap();
        let store = Store::open(dir, Options::default()).unwrap();
        let l = store.load::<T10>("s").unwrap();
        assert_eq!(
            l.snapshot().clone(),
            SnapshotUse::Ignored { version: Some(29), reason: SnapshotIgnored::Stale },
            "{n}"
        );
        assert_eq!((l.replayed(), *l.state()), (n as u64, Tally::replayed(&store, "s")));
        // The load replaced the stale snapshot, even with one of a lower version (in `b`).
        store.flush_snapshots().unwrap();
        let again = store.load::<T10>("s").unwrap();
        assert_eq!(again.snapshot().clone(), SnapshotUse::Used { version: n as u64 - 1 }, "{n}");
        store.close().unwrap();
        let store = Store::open(dir, Options::default()).unwrap();
        assert_eq!(
            store.load::<T10>("s").unwrap().snapshot().clone(),
            SnapshotUse::Used { version: n as u64 - 1 },
            "{n}"
        );
    }
}

#[test]
fn the_sidecar_is_rewritten_without_superseded_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20).snapshot_rewrite_bytes(2048)).unwrap();
    let names = ["a", "b", "c", "d"];
    let mut aggs: Vec<_> = names.iter().map(|s| store.load::<Tally<1, 1>>(s).unwrap()).collect();
    let mut max_len = 0;
    for round in 0..150 {
        for a in &mut aggs {
            store.commit(a, &[ev("Tick", format!("{round}"))]).unwrap();
        }
        store.flush_snapshots().unwrap();
        max_len = max_len.max(std::fs::metadata(sidecar(dir.path(), 0)).unwrap().len());
    }
    let stats = store.snapshot_stats();
    assert!(stats.rewrites >= 10, "{stats:?}");
    assert_eq!(stats.written, 600, "{stats:?}");
    // Live: 4 records of 80 bytes. Dead: under 2048 plus one round before a rewrite.
    assert!(max_len < 64 + 2048 + 2 * 4 * 80, "{max_len}");
    check_loads::<1, 1>(&store, &names);
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    for s in names {
        assert_eq!(store.load::<Tally<1, 1>>(s).unwrap().snapshot().clone(), SnapshotUse::Used { version: 149 });
    }
    assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
}

#[test]
fn a_crash_at_any_step_of_a_rewrite_leaves_a_loadable_store() {
    let base = tempfile::tempdir().unwrap();
    let names = snapshotted_store(base.path(), 4);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let old = std::fs::read(sidecar(base.path(), 0)).unwrap();
    // What a completed rewrite would have written: the header and each stream's latest record.
    let offsets = record_offsets(&old);
    let mut new = old[..64].to_vec();
    for pair in offsets.chunks(2) {
        let (o, end) = (pair[1], offsets.iter().find(|&&x| x > pair[1]).copied().unwrap_or(old.len()));
        new.extend_from_slice(&old[o..end]);
    }
    // Crash points: temp file created (empty), partly written, written and synced but not
    // renamed, renamed (the directory entry may or may not be durable: either file is whole).
    // (step, the temp file if any, the sidecar)
    type CrashState<'a> = (&'a str, Option<&'a [u8]>, &'a [u8]);
    let states: [CrashState<'_>; 5] = [
        ("created", Some(&[]), &old),
        ("partly written", Some(&new[..new.len() / 2]), &old),
        ("written, not renamed", Some(&new), &old),
        ("renamed", None, &new),
        ("rename not durable", None, &old),
    ];
    for (step, tmp, current) in states {
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.path(), work.path());
        std::fs::write(sidecar(work.path(), 0), current).unwrap();
        if let Some(tmp) = tmp {
            std::fs::write(work.path().join("p00000/snapshots.snap.tmp"), tmp).unwrap();
        }
        let store = Store::open(work.path(), Options::default()).unwrap();
        for s in &names {
            let a = store.load::<Tally<4, 1>>(s).unwrap();
            assert_eq!(a.snapshot().clone(), SnapshotUse::Used { version: 7 }, "{step}: {s}");
            assert_eq!(*a.state(), Tally::replayed(&store, s), "{step}: {s}");
        }
        let report = store.recovery_report();
        assert_eq!(
            report.iter().filter(|a| matches!(a, RecoveryAction::RemovedTempFile { .. })).count(),
            usize::from(tmp.is_some()),
            "{step}: {report:?}"
        );
        assert!(discarded(&store).is_empty(), "{step}: {report:?}");
        assert!(!work.path().join("p00000/snapshots.snap.tmp").exists());
    }
}

#[test]
fn a_snapshot_is_offered_only_to_the_aggregate_type_that_took_it() {
    /// Same schema tag and same encoding as `Tally`, but another type.
    #[derive(Debug, Default, Clone, Copy, PartialEq)]
    struct Impostor(Tally<5, 1>);
    impl strata::Aggregate for Impostor {
        const SCHEMA: u32 = 1;
        const SNAPSHOT_EVERY: u64 = 0;
        fn apply(&mut self, e: &strata::RecordedEvent) -> Result<(), strata::ApplyError> {
            strata::Aggregate::apply(&mut self.0, e)
        }
        fn encode(&self) -> Vec<u8> {
            strata::Aggregate::encode(&self.0)
        }
        fn decode(schema: u32, state: &[u8]) -> Option<Self> {
            <Tally<5, 1> as strata::Aggregate>::decode(schema, state).map(Impostor)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20)).unwrap();
    commit_n::<5, 1>(&store, "shared", 7);
    store.flush_snapshots().unwrap();
    let other = store.load::<Impostor>("shared").unwrap();
    assert_eq!(*other.snapshot(), SnapshotUse::Ignored { version: Some(4), reason: SnapshotIgnored::OtherAggregate });
    assert_eq!((other.replayed(), other.state().0), (7, Tally::replayed(&store, "shared")));
}

#[test]
fn an_unreadable_sidecar_sets_snapshots_aside_until_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let names = snapshotted_store(dir.path(), 2);
    // A directory where the sidecar should be: reading it fails (not damage, an I/O error).
    let path = sidecar(dir.path(), 0);
    std::fs::rename(&path, dir.path().join("saved")).unwrap();
    std::fs::create_dir(&path).unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    for s in &names {
        let a = store.load::<Tally<4, 1>>(s).unwrap();
        assert_eq!(*a.snapshot(), SnapshotUse::None);
        assert_eq!(*a.state(), Tally::replayed(&store, s));
    }
    commit_n::<4, 1>(&store, "s0", 5);
    assert!(store.flush_snapshots().is_err(), "snapshots are stopped, and say so");
    let unavailable =
        store.recovery_report().iter().filter(|a| matches!(a, RecoveryAction::SnapshotsUnavailable { .. })).count();
    assert_eq!(unavailable, 1, "reported once: {:?}", store.recovery_report());
    store.close().unwrap();
    std::fs::remove_dir(&path).unwrap();
    std::fs::rename(dir.path().join("saved"), &path).unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let a = store.load::<Tally<4, 1>>("s1").unwrap();
    assert_eq!((a.snapshot().clone(), *a.state()), (SnapshotUse::Used { version: 7 }, Tally::replayed(&store, "s1")));
}

#[derive(Debug, Clone)]
enum Op {
    Commit { stream: u8, events: u8 },
    Raw { stream: u8, events: u8 },
    Snapshot { stream: u8 },
    Flush,
    Reopen,
    Load { stream: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..4, 1u8..4).prop_map(|(stream, events)| Op::Commit { stream, events }),
        2 => (0u8..4, 1u8..6).prop_map(|(stream, events)| Op::Raw { stream, events }),
        1 => (0u8..4).prop_map(|stream| Op::Snapshot { stream }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        3 => (0u8..4).prop_map(|stream| Op::Load { stream }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever mix of commits, plain appends, snapshots and reopens, a load gives the state
    /// of a full replay, at the stream's version.
    #[test]
    fn load_equals_a_full_replay(ops in prop::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Some(Store::open(dir.path(), opts(2, 4096).snapshot_rewrite_bytes(256)).unwrap());
        let mut counts: HashMap<u8, u64> = HashMap::new();
        for op in ops {
            let s = store.as_ref().unwrap();
            match op {
                Op::Commit { stream, events } => {
                    let name = format!("agg-{stream}");
                    let mut a = s.load::<Tally<3, 1>>(&name).unwrap();
                    let evs: Vec<_> = (0..events).map(|i| ev("C", format!("{stream}:{i}"))).collect();
                    s.commit(&mut a, &evs).unwrap();
                    *counts.entry(stream).or_default() += u64::from(events);
                    prop_assert_eq!(*a.state(), Tally::replayed(s, &name));
                }
                Op::Raw { stream, events } => {
                    let name = format!("agg-{stream}");
                    fill(s, &name, events as usize);
                    *counts.entry(stream).or_default() += u64::from(events);
                }
                Op::Snapshot { stream } => {
                    let mut a = s.load::<Tally<3, 1>>(&format!("agg-{stream}")).unwrap();
                    s.snapshot(&mut a).unwrap();
                }
                Op::Flush => s.flush_snapshots().unwrap(),
                Op::Reopen => {
                    store.take().unwrap().close().unwrap();
                    store = Some(Store::open(dir.path(), Options::default()).unwrap());
                }
                Op::Load { stream } => {
                    let name = format!("agg-{stream}");
                    let a = s.load::<Tally<3, 1>>(&name).unwrap();
                    let n = counts.get(&stream).copied().unwrap_or(0);
                    prop_assert_eq!(*a.state(), Tally::replayed(s, &name));
                    prop_assert_eq!(a.state().events, n);
                    prop_assert_eq!(a.version(), n.checked_sub(1));
                }
            }
        }
        let s = store.unwrap();
        prop_assert!(s.recovery_report().iter().all(|a| matches!(a, RecoveryAction::RemovedTempFile { .. })), "{:?}", s.recovery_report());
    }
}

/// `inspect` shows each snapshot's anchor (the position and time of the event it was taken
/// after) as the log has them, so a snapshot can be checked from outside.
#[test]
fn inspect_shows_each_snapshots_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let names = snapshotted_store(dir.path(), 2);
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let dump = strata::inspect::dump(&sidecar(dir.path(), 0), &strata::inspect::Filter::default()).unwrap();
    let strata::inspect::Dump::Snapshots { records, .. } = dump else { panic!("{dump:?}") };
    assert_eq!(records.len(), 4, "two snapshots of each stream");
    for r in &records {
        assert!(names.contains(&r.stream));
        let e = store.read_stream(&r.stream, r.version, 1).unwrap().remove(0);
        assert_eq!((r.position, r.event_time), (e.position, e.timestamp_nanos), "{r:?}");
        assert!(r.written >= r.event_time && !r.replaces);
        assert_eq!(r.superseded, r.version == 3, "{r:?}");
    }
}
