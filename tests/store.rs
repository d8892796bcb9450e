//! The store's API on real files: round trips, rolls, reopen, optimistic concurrency, bad input.

mod common;

use common::backends::on_each_backend;
use common::*;
use strata::{Error, EventData, ExpectedVersion, Options, Store};

#[test]
fn round_trip_across_rolls_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(3, 4096)).unwrap();
    let streams: Vec<String> = (0..20).map(|i| format!("order-{i}")).collect();
    let mut written = std::collections::HashMap::new();
    for round in 0..30 {
        for s in &streams {
            let expected = if round == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(round * 2 - 1) };
            let batch =
                vec![ev("A", format!("{s}/{round}/a")), ev("B", format!("{s}/{round}/b")).with_metadata(b"m".to_vec())];
            let r = store.append(s, expected, &batch).unwrap();
            assert_eq!((r.first_version, r.last_version), (round * 2, round * 2 + 1));
            written.entry(s.clone()).or_insert_with(Vec::new).extend(batch);
        }
    }
    let check = |store: &Store| {
        for s in &streams {
            let got = store.read_stream(s, 0, usize::MAX).unwrap();
            let want = &written[s];
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(g.version, i as u64);
                assert_eq!(g.stream_id, *s);
                assert_eq!((&g.event_type, &g.metadata, &g.payload), (&w.event_type, &w.metadata, &w.payload));
            }
            assert_eq!(store.stream_version(s).unwrap(), Some(want.len() as u64 - 1));
            // A window in the middle, and backwards.
            let mid = store.read_stream(s, 17, 5).unwrap();
            assert_eq!(mid.iter().map(|e| e.version).collect::<Vec<_>>(), vec![17, 18, 19, 20, 21]);
            let back = store.read_stream_backward(s, Some(30), 4).unwrap();
            assert_eq!(back.iter().map(|e| e.version).collect::<Vec<_>>(), vec![30, 29, 28, 27]);
            let last = store.read_stream_backward(s, None, 1).unwrap();
            assert_eq!(last[0].version, want.len() as u64 - 1);
        }
        let mut total = 0;
        for p in 0..store.partition_count() {
            let all = store.read_partition(p, 0, usize::MAX).unwrap();
            assert_eq!(all.len() as u64, store.head(p).unwrap());
            for (i, e) in all.iter().enumerate() {
                assert_eq!(e.position, i as u64);
                assert_eq!(e.partition, p);
                assert_eq!(store.partition_of(&e.stream_id), p);
            }
            assert!(all.windows(2).all(|w| w[0].timestamp_nanos <= w[1].timestamp_nanos));
            // Reading from every position gives the suffix.
            for from in (0..all.len()).step_by(37) {
                let part = store.read_partition(p, from as u64, 10).unwrap();
                assert_eq!(part, all[from..(from + 10).min(all.len())].to_vec());
            }
            total += all.len();
        }
        assert_eq!(total, 20 * 30 * 2);
    };
    check(&store);
    store.close().unwrap();
    assert!(segments(dir.path(), 0).len() > 3, "the test should roll segments");
    let store = Store::open(dir.path(), Options::default()).unwrap();
    check(&store);
    // Appending continues after reopen, with versions and positions carrying on.
    let r = store.append("order-0", ExpectedVersion::Exact(59), &[ev("C", "after")]).unwrap();
    assert_eq!(r.first_version, 60);
    assert_eq!(r.first_position + 1, store.head(r.partition).unwrap());
}

#[test]
fn expected_version_conflicts_of_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(2, 1 << 20)).unwrap();
    let e = || [ev("E", "x")];
    let wrong = |r: strata::Result<strata::AppendResult>, exp: ExpectedVersion, actual: Option<u64>| match r {
        Err(Error::WrongExpectedVersion { expected, actual: a, stream }) => {
            assert_eq!((expected, a, stream.as_str()), (exp, actual, "s"));
        }
        other => panic!("expected a conflict, got {other:?}"),
    };
    wrong(store.append("s", ExpectedVersion::StreamExists, &e()), ExpectedVersion::StreamExists, None);
    wrong(store.append("s", ExpectedVersion::Exact(0), &e()), ExpectedVersion::Exact(0), None);
    store.append("s", ExpectedVersion::NoStream, &e()).unwrap();
    wrong(store.append("s", ExpectedVersion::NoStream, &e()), ExpectedVersion::NoStream, Some(0));
    wrong(store.append("s", ExpectedVersion::Exact(1), &e()), ExpectedVersion::Exact(1), Some(0));
    store.append("s", ExpectedVersion::StreamExists, &e()).unwrap();
    store.append("s", ExpectedVersion::Exact(1), &e()).unwrap();
    store.append("s", ExpectedVersion::Any, &e()).unwrap();
    wrong(store.append("s", ExpectedVersion::Exact(2), &e()), ExpectedVersion::Exact(2), Some(3));
    // Nothing of the rejected appends was written.
    assert_eq!(store.read_stream("s", 0, 100).unwrap().len(), 4);
    assert_eq!(store.head(store.partition_of("s")).unwrap(), 4);
    // The conflict survives a reopen: versions come from disk.
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    wrong(store.append("s", ExpectedVersion::NoStream, &e()), ExpectedVersion::NoStream, Some(3));
    store.append("s", ExpectedVersion::Exact(3), &e()).unwrap();
}

#[test]
fn versions_found_in_sealed_segments_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 4096)).unwrap();
    fill(&store, "old", 5);
    for i in 0..100 {
        fill(&store, &format!("filler-{i}"), 1);
    }
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(store.stream_version("old").unwrap(), Some(4));
    assert!(matches!(
        store.append("old", ExpectedVersion::NoStream, &[ev("x", "y")]),
        Err(Error::WrongExpectedVersion { actual: Some(4), .. })
    ));
    store.append("old", ExpectedVersion::Exact(4), &[ev("x", "y")]).unwrap();
    assert_eq!(store.read_stream("old", 0, 100).unwrap().len(), 6);
}

#[test]
fn second_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20)).unwrap();
    match Store::open(dir.path(), Options::default()) {
        Err(Error::Locked { holder, .. }) => assert!(holder.contains(&std::process::id().to_string()), "{holder}"),
        other => panic!("expected Locked, got {other:?}"),
    }
    store.close().unwrap();
    Store::open(dir.path(), Options::default()).unwrap();
}

#[test]
fn second_open_from_another_process_is_refused() {
    if let Ok(dir) = std::env::var("STRATA_TEST_OPEN_DIR") {
        // The child: try to open the store held by the parent.
        match Store::open(&dir, Options::default()) {
            Err(Error::Locked { .. }) => std::process::exit(42),
            other => panic!("child expected Locked, got {other:?}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(dir.path(), opts(1, 1 << 20)).unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["second_open_from_another_process_is_refused", "--exact", "--nocapture"])
        .env("STRATA_TEST_OPEN_DIR", dir.path())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(42));
}

#[test]
fn creation_is_explicit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo");
    assert!(matches!(Store::open(&path, Options::default()), Err(Error::NotAStore { .. })));
    assert!(!path.exists(), "a failed open must not create anything");
    // An existing empty directory is not a store either, and is left untouched.
    assert!(matches!(Store::open(dir.path(), Options::default()), Err(Error::NotAStore { .. })));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    Store::open(&path, Options::default().create_if_missing(true)).unwrap().close().unwrap();
    assert!(matches!(
        Store::open(&path, Options::default().create_if_missing(true).error_if_exists(true)),
        Err(Error::AlreadyExists { .. })
    ));
    // Creating in a directory holding other files is refused.
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), "mine").unwrap();
    assert!(matches!(Store::open(&busy, Options::default().create_if_missing(true)), Err(Error::AlreadyExists { .. })));
    assert_eq!(std::fs::read_to_string(busy.join("notes.txt")).unwrap(), "mine");
    // A plain file is not a store.
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(matches!(Store::open(&file, Options::default()), Err(Error::NotAStore { .. })));
}

#[test]
fn partition_count_is_fixed_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path(), opts(5, 1 << 20)).unwrap().close().unwrap();
    // Asking an existing store for another count (or segment size) is refused, not ignored.
    assert!(matches!(Store::open(dir.path(), Options::default().partitions(9)), Err(Error::InvalidOptions(_))));
    assert!(matches!(Store::open(dir.path(), Options::default().segment_bytes(8192)), Err(Error::InvalidOptions(_))));
    let store = Store::open(dir.path(), Options::default().partitions(5).segment_bytes(1 << 20)).unwrap();
    assert_eq!(store.partition_count(), 5);
    // After a grow, the count it was created with still opens it (options kept from creation).
    store.grow_partitions(7).unwrap();
    store.close().unwrap();
    for n in [5, 7] {
        assert_eq!(Store::open(dir.path(), Options::default().partitions(n)).unwrap().partition_count(), 7);
    }
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(store.partition_count(), 7);
    assert_eq!(
        strata::limits::DEFAULT_PARTITIONS,
        Store::open(tempfile::tempdir().unwrap().path(), Options::default().create_if_missing(true))
            .unwrap()
            .partition_count()
    );
}

#[test]
fn bad_input_is_a_typed_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20).max_event_bytes(1000).max_append_bytes(4096)).unwrap();
    let one = [ev("E", "x")];
    assert!(matches!(store.append("", ExpectedVersion::Any, &one), Err(Error::InvalidStreamId { .. })));
    let long = "s".repeat(strata::limits::MAX_STREAM_ID_LEN + 1);
    assert!(matches!(store.append(&long, ExpectedVersion::Any, &one), Err(Error::InvalidStreamId { .. })));
    store.append(&"s".repeat(strata::limits::MAX_STREAM_ID_LEN), ExpectedVersion::Any, &one).unwrap();
    assert!(matches!(store.append("a\0b", ExpectedVersion::Any, &one), Err(Error::InvalidStreamId { .. })));
    assert!(matches!(store.append("s", ExpectedVersion::Any, &[]), Err(Error::EmptyAppend)));
    assert!(matches!(
        store.append("s", ExpectedVersion::Any, &[ev("E", "ok"), ev("E", vec![0u8; 1001])]),
        Err(Error::EventTooLarge { index: 1, size: 1002, limit: 1000 })
    ));
    let many: Vec<EventData> = (0..10).map(|_| ev("E", vec![0u8; 900])).collect();
    assert!(matches!(store.append("s", ExpectedVersion::Any, &many), Err(Error::AppendTooLarge { .. })));
    let long_type = EventData::new("t".repeat(strata::limits::MAX_EVENT_TYPE_LEN + 1), "x");
    assert!(matches!(store.append("s", ExpectedVersion::Any, &[long_type]), Err(Error::InvalidEventType { .. })));
    assert!(matches!(store.read_stream("", 0, 1), Err(Error::InvalidStreamId { .. })));
    assert!(matches!(store.read_partition(7, 0, 1), Err(Error::NoSuchPartition { partition: 7, count: 1 })));
    assert_eq!(store.head(0).unwrap(), 1, "only the valid append was written");
    let other = tempfile::tempdir().unwrap();
    let zero = Options::default().partitions(0).create_if_missing(true);
    assert!(matches!(Store::open(other.path(), zero), Err(Error::InvalidOptions(_))));
}

#[test]
fn newer_format_and_foreign_manifest_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path(), opts(1, 1 << 20)).unwrap().close().unwrap();
    let manifest = dir.path().join("MANIFEST");
    let good = std::fs::read(&manifest).unwrap();
    let at_version = |v: u32| {
        let mut m = good.clone();
        m[8..12].copy_from_slice(&v.to_le_bytes());
        let sum = crc32fast::hash(&m[..60]);
        m[60..].copy_from_slice(&sum.to_le_bytes());
        m
    };
    // Format version 2 changed archives only, version 3 the active index journal only: a
    // manifest is written at 1, the newest version of a manifest there is (FORMAT.md §1.1);
    // one saying 2 is of a newer build.
    assert_eq!(strata::limits::FORMAT_VERSION, 3);
    assert_eq!(good[8..12], 1u32.to_le_bytes());
    std::fs::write(&manifest, at_version(2)).unwrap();
    assert!(matches!(
        Store::open(dir.path(), Options::default()),
        Err(Error::UnsupportedVersion { found: 2, supported: 1, .. })
    ));
    std::fs::write(&manifest, b"{\"this\": \"is somebody else's file\"}").unwrap();
    assert!(matches!(Store::open(dir.path(), Options::default()), Err(Error::NotAStore { .. })));
    let mut flipped = good.clone();
    flipped[17] ^= 1;
    std::fs::write(&manifest, &flipped).unwrap();
    assert!(matches!(Store::open(dir.path(), Options::default()), Err(Error::Corruption { .. })));
    std::fs::write(&manifest, &good[..40]).unwrap();
    assert!(matches!(Store::open(dir.path(), Options::default()), Err(Error::Corruption { .. })));
    std::fs::remove_file(&manifest).unwrap();
    std::fs::create_dir(&manifest).unwrap();
    assert!(matches!(Store::open(dir.path(), Options::default()), Err(Error::NotAStore { .. })));
}

#[test]
fn missing_partition_directory_and_foreign_segment_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(2, 1 << 20)).unwrap();
    fill(&store, "a", 3);
    store.close().unwrap();
    let p1 = dir.path().join("p00001");
    let moved = dir.path().join("elsewhere");
    std::fs::rename(&p1, &moved).unwrap();
    match Store::open(dir.path(), Options::default()) {
        Err(Error::Corruption { path, reason, .. }) => {
            assert_eq!(path, p1);
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("expected Corruption, got {other:?}"),
    }
    std::fs::rename(&moved, &p1).unwrap();
    // A foreign file where the active segment should be.
    let seg = segments(dir.path(), 1).pop().unwrap();
    let original = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, b"GIF89a not a segment at all, just some bytes .............................").unwrap();
    match Store::open(dir.path(), Options::default()) {
        Err(Error::Corruption { path, offset: 0, .. }) => assert_eq!(path, seg),
        other => panic!("expected Corruption, got {other:?}"),
    }
    // A segment of another partition.
    let other = segments(dir.path(), 0).pop().unwrap();
    std::fs::copy(&other, &seg).unwrap();
    assert!(matches!(Store::open(dir.path(), Options::default()), Err(Error::Corruption { .. })));
    // A directory where the segment should be.
    std::fs::remove_file(&seg).unwrap();
    std::fs::create_dir(&seg).unwrap();
    assert!(Store::open(dir.path(), Options::default()).is_err());
    std::fs::remove_dir(&seg).unwrap();
    std::fs::write(&seg, original).unwrap();
    Store::open(dir.path(), Options::default()).unwrap();
}

/// `scan_partition` sees what `read_partition` returns, borrowed, and stops when told to.
#[test]
fn scan_partition_matches_read_partition() {
    use std::ops::ControlFlow;
    on_each_backend(2, 64 << 10, |store| {
        for i in 0..600 {
            let events: Vec<_> =
                (0..1 + i % 3).map(|k| ev("T", format!("{i}-{k}")).with_metadata(vec![k as u8])).collect();
            store.append(&format!("s-{}", i % 17), strata::ExpectedVersion::Any, &events).unwrap();
        }
        for p in 0..2 {
            let read = store.read_partition(p, 5, usize::MAX).unwrap();
            let mut scanned = Vec::new();
            let n = store
                .scan_partition(p, 5, usize::MAX, |e| {
                    scanned.push(e.to_recorded());
                    ControlFlow::Continue(())
                })
                .unwrap();
            assert_eq!((n, &scanned), (read.len(), &read));
            let mut first = Vec::new();
            let n = store
                .scan_partition(p, 5, usize::MAX, |e| {
                    first.push(e.position);
                    if first.len() == 10 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
                })
                .unwrap();
            assert_eq!(n, 10);
            assert_eq!(first, read[..10].iter().map(|e| e.position).collect::<Vec<_>>());
        }
    });
}

/// A store shared through an `Arc` closes without being unwrapped: later calls fail with
/// `Error::Closed`, the lock is released at once, and closing again is a no-op.
#[test]
fn close_works_through_an_arc() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path(), opts(2, 1 << 20)).unwrap());
    let engine = strata::ProjectionEngine::new(store.clone(), 1);
    store.append("a", ExpectedVersion::NoStream, &[ev("E", "x")]).unwrap();
    store.close().unwrap();
    assert!(matches!(store.append("a", ExpectedVersion::Any, &[ev("E", "y")]), Err(Error::Closed)));
    assert!(matches!(store.read_stream("a", 0, 10), Err(Error::Closed)));
    assert!(matches!(store.head(0), Err(Error::Closed)));
    assert!(matches!(store.compact(), Err(Error::Closed)));
    assert!(matches!(store.flush_snapshots(), Err(Error::Closed)));
    store.close().unwrap();
    // The lock is gone while the Arc (and the engine's clone) still lives.
    let again = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(again.read_stream("a", 0, 10).unwrap().len(), 1);
    engine.stop().unwrap();
}

/// `streams` lists every live stream once (active and sealed segments, archives, after a
/// grow); `iter_stream` and `iter_partition` page internally up to the end as of their call.
#[test]
fn streams_are_listed_and_iterated() {
    let dir = tempfile::tempdir().unwrap();
    let compaction = strata::compaction::CompactionOptions::default().interval(None);
    let store = Store::open(dir.path(), opts(2, 4096).compaction(compaction)).unwrap();
    let mut names: Vec<String> = (0..40).map(|i| format!("acct-{i}")).collect();
    for round in 0..12 {
        for n in &names {
            store.append(n, ExpectedVersion::Any, &[ev("E", format!("{n} {round}"))]).unwrap();
        }
    }
    let listed = |store: &Store| {
        let mut v = store.streams().collect::<Result<Vec<_>, _>>().unwrap();
        v.sort();
        v
    };
    names.sort();
    assert_eq!(listed(&store), names);
    store.compact_with(true, &mut |_| {}).unwrap();
    assert_eq!(listed(&store), names, "after archiving");
    assert!(store.delete_stream("acct-3").unwrap());
    names.retain(|n| n != "acct-3");
    assert_eq!(listed(&store), names, "a deleted stream is not listed");
    store.grow_partitions(5).unwrap();
    assert_eq!(listed(&store), names, "a moved stream is listed once");
    assert_eq!(store.stream_count().unwrap(), names.len() as u64);

    let long: Vec<_> = (0..700).map(|i| ev("Tick", i.to_string())).collect();
    store.append("clock", ExpectedVersion::NoStream, &long).unwrap();
    let got: Vec<u64> = store.iter_stream("clock", 5).map(|e| e.unwrap().version).collect();
    assert_eq!(got, (5..700).collect::<Vec<_>>());
    assert_eq!(store.iter_stream("nobody", 0).count(), 0);
    assert!(matches!(store.iter_stream("acct-3", 0).collect::<Vec<_>>()[..], [Err(Error::StreamDeleted { .. })]));
    let p = store.partition_of("clock");
    let head = store.head(p).unwrap();
    let mut it = store.iter_partition(p, 0);
    store.append("clock", ExpectedVersion::Exact(699), &[ev("Tick", "late")]).unwrap();
    let positions: Vec<u64> = it.by_ref().map(|e| e.unwrap().position).collect();
    assert_eq!(positions.last(), Some(&(head - 1)), "stops at the head it started with");
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        positions,
        store
            .read_partition(p, 0, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.position)
            .filter(|&q| q < head)
            .collect::<Vec<_>>()
    );
}
