//! The active segment's index journal (FORMAT.md §8.4): open rebuilds the active segment's
//! index from it and scans only what it does not cover. Tested on real files: a clean close,
//! a crash (the store's files copied while it runs, as kill -9 leaves them), every bit of the
//! journal flipped, and damage to the segment under it.

mod common;

use common::*;
use std::path::{Path, PathBuf};

use strata::{Error, ExpectedVersion, Options, RecordedEvent, RecoveryAction, Store};

const STREAMS: usize = 7;

fn journal(dir: &Path) -> PathBuf {
    let seg = segments(dir, 0).pop().unwrap();
    seg.with_extension("aix")
}

/// Everything in partition 0, as (stream, version, position, type, payload).
fn everything(store: &Store) -> Vec<(String, u64, u64, String, Vec<u8>)> {
    let all: Vec<RecordedEvent> = store.read_partition(0, 0, usize::MAX).unwrap();
    all.into_iter()
        .map(|e| (e.stream_id.to_string(), e.version, e.position, e.event_type.to_string(), e.payload))
        .collect()
}

/// Appends `n` events round-robin over the test's streams, some in batches of three.
fn append_some(store: &Store, n: usize, round: usize) {
    for i in 0..n {
        let stream = format!("s-{}", i % STREAMS);
        let events: Vec<_> = (0..1 + (i % 3 == 0) as usize * 2)
            .map(|k| ev("T", format!("{round}:{i}:{k}:{}", "y".repeat(i % 50))))
            .collect();
        store.append(&stream, ExpectedVersion::Any, &events).unwrap();
    }
}

fn scanned(store: &Store) -> u64 {
    store.partition_metrics()[0].recovery_scanned_bytes
}

#[test]
fn a_clean_close_leaves_nothing_to_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 30)).unwrap();
    append_some(&store, 500, 0);
    let before = everything(&store);
    store.close().unwrap();
    assert!(journal(dir.path()).exists());
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(scanned(&store), 0);
    assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
    assert_eq!(everything(&store), before);
    // Versions come from the rebuilt index: appends continue them.
    let r =
        store.append("s-3", ExpectedVersion::Exact(store.stream_version("s-3").unwrap().unwrap()), &[ev("T", "more")]);
    assert!(r.is_ok());
    append_some(&store, 100, 1);
    let before = everything(&store);
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(scanned(&store), 0);
    assert_eq!(everything(&store), before);
}

/// The store's files copied while it runs are what kill -9 leaves (the page cache survives):
/// open scans at most `recovery_scan_bytes` plus the last group of the active segment.
#[test]
fn after_a_crash_open_scans_only_what_the_journal_does_not_cover() {
    let interval = 64 << 10;
    for appends in [10, 300, 1_000, 3_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), opts(1, 1 << 30).recovery_scan_bytes(interval)).unwrap();
        append_some(&store, appends, 0);
        let before = everything(&store);
        let crashed = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), crashed.path());
        store.close().unwrap();
        let store = Store::open(crashed.path(), Options::default()).unwrap();
        let data = std::fs::metadata(segments(crashed.path(), 0).pop().unwrap()).unwrap().len();
        assert!(scanned(&store) <= interval + 4096, "{appends} appends: scanned {} of {data}", scanned(&store));
        assert_eq!(everything(&store), before, "{appends} appends");
        // What the scan found is journaled at once: the next open scans nothing.
        append_some(&store, 10, 1);
        let before = everything(&store);
        drop(store);
        let store = Store::open(crashed.path(), Options::default()).unwrap();
        assert_eq!(scanned(&store), 0);
        assert_eq!(everything(&store), before);
    }
}

/// Every bit of the journal flipped: open never fails and never loses or invents an event;
/// it drops the journal from the bad record on, says so, scans, and writes the journal again.
#[test]
fn every_bit_flip_of_the_journal_costs_only_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 30).recovery_scan_bytes(64 << 10)).unwrap();
    append_some(&store, 60, 0);
    // A clean close leaves a frozen section; after it, 40 appends and a crash; the open after
    // the crash journals them as a record after the section: a flip in either is tried.
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    append_some(&store, 40, 1);
    let before = everything(&store);
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    store.close().unwrap();
    let store = Store::open(crashed.path(), Options::default()).unwrap();
    assert!(scanned(&store) > 0);
    let original = std::fs::read(journal(crashed.path())).unwrap();
    let segment = std::fs::read(segments(crashed.path(), 0).pop().unwrap()).unwrap();
    store.close().unwrap();
    assert_eq!(original[8], 3, "a frozen section");
    let work = tempfile::tempdir().unwrap();
    copy_dir(crashed.path(), work.path());
    let wj = journal(work.path());
    let wseg = segments(work.path(), 0).pop().unwrap();
    // Every bit of the header and of the record; of the frozen section's entries (32 bytes a
    // batch, under one CRC), every 17th (every 37th in a debug build): each open and close
    // here writes the section again, durably.
    let step = if cfg!(debug_assertions) { 7 } else { 1 };
    let entries_step = if cfg!(debug_assertions) { 37 } else { 17 };
    let section_end = (64 + 32 * u32::from_le_bytes(original[24..28].try_into().unwrap()) as usize) * 8;
    let bits = (0..original.len() * 8).filter(|&b| {
        let in_entries = (64 * 8..section_end).contains(&b);
        b % if in_entries { entries_step } else { step } == 0
    });
    let mut dropped = 0;
    for bit in bits {
        let mut bytes = original.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&wj, &bytes).unwrap();
        std::fs::write(&wseg, &segment).unwrap();
        let store = Store::open(work.path(), Options::default()).unwrap();
        assert_eq!(everything(&store), before, "bit {bit}");
        let report = store.recovery_report();
        assert!(
            matches!(report[..], [RecoveryAction::DroppedActiveIndex { .. }]),
            "bit {bit}: a flip must be noticed: {report:?}"
        );
        dropped += 1;
        store.close().unwrap();
        let store = Store::open(work.path(), Options::default()).unwrap();
        assert_eq!(scanned(&store), 0, "bit {bit}: the journal was written again");
        assert!(store.recovery_report().is_empty());
        drop(store);
    }
    assert!(dropped > 0);
}

/// The journal vouches for the segment no more than a sealed segment's index does: a damaged
/// batch under it fails the reads that reach it (typed), never open, and is never dropped.
/// A journal that does not describe the segment is dropped, and the scan finds the damage.
#[test]
fn damage_under_the_journal_fails_reads_and_a_foreign_journal_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 30)).unwrap();
    let written = fill(&store, "a", 6);
    store.close().unwrap();
    let seg = segments(dir.path(), 0).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let offsets = batch_offsets(&bytes);
    bytes[offsets[2] + 60] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(scanned(&store), 0);
    assert_eq!(payloads(&store.read_stream("a", 0, 2).unwrap()), written[..2].to_vec());
    match store.read_stream("a", 0, 100) {
        Err(Error::Corruption { path, offset, .. }) => assert_eq!((path, offset as usize), (seg.clone(), offsets[2])),
        other => panic!("expected Corruption, got {other:?}"),
    }
    drop(store);

    // The last batch changed (another segment's journal, or a segment rewritten by hand):
    // the journal is dropped and the scan decides, here that the damage is durable data.
    let last = *offsets.last().unwrap();
    bytes[last + 60] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    let j = journal(dir.path());
    let journal_bytes = std::fs::read(&j).unwrap();
    match Store::open(dir.path(), Options::default()) {
        Err(Error::Corruption { path, offset, .. }) => assert_eq!((path, offset as usize), (seg.clone(), offsets[2])),
        other => panic!("expected Corruption, got {other:?}"),
    }
    assert_eq!(std::fs::read(&j).unwrap(), journal_bytes, "a refused open changes nothing");
}

/// A journal left beside a segment that is no longer active (a crash between a roll and its
/// removal) is removed at open; a roll removes the full segment's journal itself.
#[test]
fn only_the_active_segment_has_a_journal() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 8192)).unwrap();
    fill(&store, "a", 20);
    store.close().unwrap();
    let journals = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d.join("p00000"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "aix"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(journals(dir.path()), vec![journal(dir.path())]);
    let first = segments(dir.path(), 0)[0].with_extension("aix");
    std::fs::copy(journal(dir.path()), &first).unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(journals(dir.path()), vec![journal(dir.path())]);
    assert_eq!(store.read_stream("a", 0, 100).unwrap().len(), 20);
}

/// A journal that does not check out beside a segment with no batches is removed (nothing
/// would replace it), so it is reported once, not at every open.
#[test]
fn a_bad_journal_of_an_empty_segment_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path(), opts(1, 1 << 20)).unwrap().close().unwrap();
    let j = journal(dir.path());
    std::fs::write(&j, b"not a journal at all, but long enough to be looked at: 64 bytes or more").unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert!(matches!(store.recovery_report()[..], [RecoveryAction::DroppedActiveIndex { .. }]));
    assert!(!j.exists());
    drop(store);
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
}

/// `strata dump` (through `inspect::dump`) describes a journal: its records and what they cover.
#[test]
fn dump_shows_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20)).unwrap();
    fill(&store, "a", 5);
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    fill(&store, "b", 2);
    store.close().unwrap();
    let filter = strata::inspect::Filter::default();
    match strata::inspect::dump(&journal(dir.path()), &filter).unwrap() {
        // A clean close leaves the whole index as a frozen section, and no record.
        strata::inspect::Dump::ActiveIndex {
            partition: 0,
            base_position: 0,
            frozen: Some(f),
            records,
            damage: None,
        } => {
            assert_eq!((f.positions, f.batches, f.streams), ((0, 7), 7, 2));
            assert_eq!(f.offsets.0, 64);
            assert!(records.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

/// Every read the store offers, as (stream, version, position, type, payload) lists: each
/// stream forward, from its middle and backward, its version, the stream list, the partition
/// from several positions, and subscriptions selecting by type and by stream prefix.
fn every_read(store: &Store) -> Vec<String> {
    let key =
        |e: &RecordedEvent| format!("{}:{}:{}:{}:{:?}", e.stream_id, e.version, e.position, e.event_type, e.payload);
    let keys = |v: Vec<RecordedEvent>| v.iter().map(key).collect::<Vec<_>>().join(",");
    let mut out = Vec::new();
    let mut ids: Vec<String> = store.streams().collect::<Result<_, _>>().unwrap();
    ids.sort();
    out.push(format!("streams {ids:?}"));
    for s in &ids {
        let last = store.stream_version(s).unwrap();
        out.push(format!("{s} version {last:?}"));
        out.push(keys(store.read_stream(s, 0, usize::MAX).unwrap()));
        let mid = last.unwrap_or(0) / 2;
        out.push(keys(store.read_stream(s, mid, 3).unwrap()));
        out.push(keys(store.read_stream_backward(s, None, 5).unwrap()));
        out.push(keys(store.read_stream_backward(s, Some(mid), 2).unwrap()));
    }
    let head = store.head(0).unwrap();
    for from in [0, 1, head / 3, head / 2, head.saturating_sub(1)] {
        out.push(keys(store.read_partition(0, from, 7).unwrap()));
    }
    for filter in [strata::Filter::event_types(["T2"]), strata::Filter::stream_prefix("s-2")] {
        let mut sub = store.subscribe_partition(0, head / 4, filter).unwrap();
        let mut got = Vec::new();
        loop {
            let batch = sub.poll(1000).unwrap();
            if batch.is_empty() {
                break;
            }
            got.extend(batch);
        }
        out.push(keys(got));
    }
    out
}

/// After a clean close the active segment's index is its journal's frozen section, used in
/// place: every read gives what it gave before, appends check versions against it, and the
/// segment seals (its index merged from the section and what came after) and rolls as before.
#[test]
fn reads_after_a_clean_close_equal_the_reads_before() {
    let dir = tempfile::tempdir().unwrap();
    // Big enough for a few hundred appends per segment: the later appends roll it.
    let store = Store::open(dir.path(), opts(1, 256 << 10)).unwrap();
    let typed = |store: &Store, n: usize, round: usize| {
        for i in 0..n {
            let stream = format!("s-{}", i % STREAMS);
            let events: Vec<_> =
                (0..1 + i % 3).map(|k| ev(&format!("T{}", (i + k) % 3), format!("{round}:{i}:{k}"))).collect();
            store.append(&stream, ExpectedVersion::Any, &events).unwrap();
        }
    };
    typed(&store, 300, 0);
    let before = every_read(&store);
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(scanned(&store), 0);
    assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
    assert_eq!(every_read(&store), before);
    // Expected versions are checked against the frozen section: a wrong one is refused.
    let v = store.stream_version("s-4").unwrap().unwrap();
    assert!(store.append("s-4", ExpectedVersion::Exact(v + 1), &[ev("T0", "no")]).is_err());
    assert!(store.append("s-4", ExpectedVersion::NoStream, &[ev("T0", "no")]).is_err());
    store.append("s-4", ExpectedVersion::Exact(v), &[ev("T0", "yes")]).unwrap();
    store.append("new", ExpectedVersion::NoStream, &[ev("T1", "first")]).unwrap();
    // Reads over the section and what follows it.
    let both = every_read(&store);
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(every_read(&store), both);
    // Enough to roll the segment: the frozen one is sealed, and reads stay the same.
    typed(&store, 3000, 1);
    let rolled = every_read(&store);
    assert!(segments(dir.path(), 0).len() > 1);
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(every_read(&store), rolled);
    assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
    store.close().unwrap();
}

/// kill -9 after a clean close and more appends: open maps the frozen section, applies the
/// records written since, and scans at most `recovery_scan_bytes` plus the last group
/// (FORMAT.md §8.4, §9.1 step 4): never the part the section covers.
#[test]
fn after_a_crash_following_a_clean_close_open_scans_only_past_the_section_and_records() {
    let interval = 64 << 10;
    for appends in [10, 300, 1_000, 3_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), opts(1, 1 << 30).recovery_scan_bytes(interval)).unwrap();
        append_some(&store, 2_000, 0);
        store.close().unwrap();
        let frozen_len = std::fs::metadata(journal(dir.path())).unwrap().len();
        let store = Store::open(dir.path(), Options::default().recovery_scan_bytes(interval)).unwrap();
        assert_eq!(scanned(&store), 0);
        append_some(&store, appends, 1);
        let before = everything(&store);
        let crashed = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), crashed.path());
        store.close().unwrap();
        let journal_len = std::fs::metadata(journal(crashed.path())).unwrap().len();
        assert!(journal_len >= frozen_len, "records go after the section");
        let store = Store::open(crashed.path(), Options::default()).unwrap();
        let data = std::fs::metadata(segments(crashed.path(), 0).pop().unwrap()).unwrap().len();
        assert!(scanned(&store) <= interval + 4096, "{appends} appends: scanned {} of {data}", scanned(&store));
        assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
        assert_eq!(everything(&store), before, "{appends} appends");
        // Versions continue across the section, the records and the scan.
        let v = store.stream_version("s-3").unwrap().unwrap();
        store.append("s-3", ExpectedVersion::Exact(v), &[ev("T", "more")]).unwrap();
        assert!(store.append("s-3", ExpectedVersion::Exact(v), &[ev("T", "stale")]).is_err());
        store.close().unwrap();
    }
}

/// Found by the fuzzer: a frozen section consistent with itself and with its last batch, but
/// not with the batches after it (a stream's versions there crafted one higher, the CRCs
/// fixed). The scan after it refused the next batch of that stream and open failed; now the
/// segment wins: the journal is dropped, the segment scanned from its start, nothing lost.
#[test]
fn a_section_that_the_batches_after_it_do_not_follow_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 30)).unwrap();
    for i in 0..20 {
        let s = if i % 2 == 0 { "b" } else { "a" };
        store.append(s, ExpectedVersion::Any, &[ev("T", format!("{i}"))]).unwrap();
    }
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    store.append("b", ExpectedVersion::Exact(9), &[ev("T", "after")]).unwrap();
    let before = everything(&store);
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    store.close().unwrap();
    // Every entry of "b" (the last batch is "a"'s) one version higher.
    let path = journal(crashed.path());
    let mut j = std::fs::read(&path).unwrap();
    assert_eq!(j[8], 3);
    let s = u32::from_le_bytes(j[24..28].try_into().unwrap()) as usize;
    let p = u32::from_le_bytes(j[28..32].try_into().unwrap()) as usize;
    let b_hash = {
        // The 10 entries of one hash that are not the last batch's stream: find by count.
        let hashes: Vec<u64> =
            (0..s).map(|k| u64::from_le_bytes(j[64 + 32 * k..72 + 32 * k].try_into().unwrap())).collect();
        let last_offset = u64::from_le_bytes(j[48..56].try_into().unwrap());
        let last_hash = (0..s)
            .find(|&k| u64::from_le_bytes(j[80 + 32 * k..88 + 32 * k].try_into().unwrap()) == last_offset)
            .map(|k| hashes[k])
            .unwrap();
        *hashes.iter().find(|&&h| h != last_hash).unwrap()
    };
    for k in 0..s {
        let e = 64 + 32 * k;
        if u64::from_le_bytes(j[e..e + 8].try_into().unwrap()) == b_hash {
            let v = u64::from_le_bytes(j[e + 8..e + 16].try_into().unwrap()) + 1;
            j[e + 8..e + 16].copy_from_slice(&v.to_le_bytes());
        }
    }
    let sum = crc32fast::hash(&j[64..64 + 32 * s + 16 * p]);
    j[56..60].copy_from_slice(&sum.to_le_bytes());
    let sum = crc32fast::hash(&j[..60]);
    j[60..64].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(&path, &j).unwrap();
    let store = Store::open(crashed.path(), Options::default()).unwrap();
    assert_eq!(everything(&store), before);
    assert_eq!(store.stream_version("b").unwrap(), Some(10));
    let report = store.recovery_report();
    assert!(matches!(report[..], [RecoveryAction::DroppedActiveIndex { .. }]), "{report:?}");
    store.close().unwrap();
    let store = Store::open(crashed.path(), Options::default()).unwrap();
    assert_eq!(scanned(&store), 0);
    assert_eq!(everything(&store), before);
}
