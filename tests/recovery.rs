//! Recovery on real, damaged files: torn tails cut at every byte, every bit flipped, damaged
//! and missing indexes, leftovers of interrupted writes.

mod common;

use common::*;
use std::path::Path;

use strata::{Error, ExpectedVersion, Options, RecoveryAction, Store};

/// A one-partition store with `n` single-event appends to stream "s" in one active segment,
/// without the segment's index journal, as a crash before the writer journaled anything leaves
/// it: open scans the whole segment (tests/journal.rs tests opens that use a journal).
fn small_store(n: usize) -> (tempfile::TempDir, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20)).unwrap();
    let written = fill(&store, "s", n);
    store.close().unwrap();
    remove_journals(dir.path());
    (dir, written)
}

fn remove_journals(dir: &Path) {
    for e in std::fs::read_dir(dir.join("p00000")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "aix") {
            std::fs::remove_file(p).unwrap();
        }
    }
}

/// Every torn write of the last two batches, as a growing file leaves it (cut at each byte)
/// and as a preallocated one does (each byte from the cut on back to zero).
#[test]
fn truncation_at_every_byte_of_the_last_two_batches() {
    let (dir, written) = small_store(6);
    let seg = segments(dir.path(), 0).pop().unwrap();
    let file = std::fs::read(&seg).unwrap();
    // A clean close gives back the preallocated zeros; a crash would have left them, so the
    // preallocated case below puts them back.
    assert_eq!(file.len(), data_end(&file), "a clean close trims the active segment");
    let preallocated_len = file.len() + (256 << 10);
    let original = file[..data_end(&file)].to_vec();
    let offsets = batch_offsets(&original);
    assert_eq!(offsets.len(), 6);
    let from = offsets[4];
    for (cut, zeros) in (from..original.len()).flat_map(|c| [(c, false), (c, true)]) {
        let work = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), work.path());
        let wseg = segments(work.path(), 0).pop().unwrap();
        let mut torn = original[..cut].to_vec();
        if zeros {
            torn.resize(preallocated_len, 0);
        }
        std::fs::write(&wseg, &torn).unwrap();
        // A batch survives if its bytes do (the zeros may restore its zero padding).
        let intact =
            |&&o: &&usize| torn.get(o..o + next_len(&original, o)) == Some(&original[o..o + next_len(&original, o)]);
        let complete = offsets.iter().filter(intact).count();
        let store = Store::open(work.path(), Options::default().preallocate(false)).unwrap();
        let got = store.read_stream("s", 0, 100).unwrap();
        assert_eq!(payloads(&got), written[..complete].to_vec(), "cut at {cut}");
        let cut_off = store.recovery_report().iter().any(|a| matches!(a, RecoveryAction::TruncatedTornTail { .. }));
        // Nothing to cut if only zeros follow the surviving batches.
        let kept_end = complete.checked_sub(1).map_or(64, |k| offsets[k] + next_len(&original, offsets[k]));
        let clean = torn[kept_end..].iter().all(|&b| b == 0);
        assert_eq!(cut_off, !clean, "cut at {cut}: {:?}", store.recovery_report());
        // Appending continues where the complete batches end.
        let r = store.append("s", ExpectedVersion::Exact(complete as u64 - 1), &[ev("After", "tail")]).unwrap();
        assert_eq!(r.first_version, complete as u64);
        assert_eq!(r.first_position, complete as u64);
        store.close().unwrap();
        let store = Store::open(work.path(), Options::default().preallocate(false)).unwrap();
        assert_eq!(store.read_stream("s", 0, 100).unwrap().len(), complete + 1);
        assert!(store.recovery_report().is_empty(), "second open after {cut}: {:?}", store.recovery_report());
    }
}

fn next_len(bytes: &[u8], off: usize) -> usize {
    u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize
}

/// Flips every bit of the data of the active segment (and bits spread over its preallocated
/// zero tail).
#[test]
fn every_bit_flip_of_the_active_segment_is_detected() {
    let (dir, written) = small_store(4);
    let seg = segments(dir.path(), 0).pop().unwrap();
    let original = std::fs::read(&seg).unwrap();
    let end = data_end(&original);
    let offsets = batch_offsets(&original);
    let last = *offsets.last().unwrap();
    let bits: Vec<usize> = (0..end * 8).chain((end * 8..original.len() * 8).step_by(4099)).collect();
    let work = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), work.path());
    let wseg = segments(work.path(), 0).pop().unwrap();
    let (mut errors, mut torn) = (0, 0);
    for &bit in &bits {
        let mut bytes = original.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&wseg, &bytes).unwrap();
        match Store::open(work.path(), Options::default().preallocate(false)) {
            Err(Error::Corruption { path, offset, .. }) => {
                assert_eq!(path, wseg);
                assert!(bit / 8 < last, "bit {bit} in the last batch must be a torn tail, not an error");
                assert!(offset as usize <= bit / 8, "offset {offset} after the flipped byte {}", bit / 8);
                errors += 1;
            }
            Ok(store) => {
                assert!(bit / 8 >= last, "bit {bit} (byte {}) in durable data went unnoticed", bit / 8);
                let got = store.read_stream("s", 0, 100).unwrap();
                let kept = if bit / 8 >= end { 4 } else { 3 };
                assert_eq!(payloads(&got), written[..kept].to_vec(), "bit {bit}");
                torn += 1;
            }
            Err(other) => panic!("bit {bit}: unexpected error {other:?}"),
        }
    }
    assert_eq!(errors + torn, bits.len());
    assert_eq!(torn, bits.iter().filter(|&&b| b / 8 >= last).count());
}

#[test]
fn every_bit_flip_of_a_sealed_segment_is_detected_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 4096)).unwrap();
    let mut written = Vec::new();
    for i in 0..60 {
        written.push((format!("s{}", i % 3), fill(&store, &format!("s{}", i % 3), 1).remove(0)));
    }
    store.close().unwrap();
    let seg = segments(dir.path(), 0).remove(0);
    let original = std::fs::read(&seg).unwrap();
    let work = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), work.path());
    let wseg = work.path().join("p00000").join(seg.file_name().unwrap());
    let step = if cfg!(debug_assertions) { 3 } else { 1 };
    for bit in (0..original.len() * 8).step_by(step) {
        let mut bytes = original.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&wseg, &bytes).unwrap();
        let store = Store::open(work.path(), Options::default().preallocate(false)).unwrap();
        let all = store.read_partition(0, 0, usize::MAX);
        match all {
            Err(Error::Corruption { ref path, .. }) => assert_eq!(*path, wseg, "bit {bit}"),
            Err(e) => panic!("bit {bit}: unexpected error {e:?}"),
            Ok(events) => panic!("bit {bit}: flip went unnoticed ({} events read)", events.len()),
        }
        // Stream reads touching the damage fail too; none returns altered data.
        for s in ["s0", "s1", "s2"] {
            if let Ok(got) = store.read_stream(s, 0, usize::MAX) {
                let want: Vec<_> = written.iter().filter(|(n, _)| n == s).map(|(_, p)| p.clone()).collect();
                assert_eq!(payloads(&got), want, "bit {bit} stream {s}");
            }
        }
    }
}

#[test]
fn damaged_or_missing_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 4096)).unwrap();
    let a = fill(&store, "a", 50);
    let b = fill(&store, "b", 50);
    store.close().unwrap();
    let idx = segments(dir.path(), 0)[0].with_extension("idx");
    let good = std::fs::read(&idx).unwrap();
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let damage: Vec<(&str, Damage)> = vec![
        ("missing", Box::new(|_| {})),
        ("flipped entry", Box::new(|v| v[80] ^= 4)),
        ("flipped header", Box::new(|v| v[20] ^= 1)),
        ("cut short", Box::new(|v| v.truncate(v.len() - 5))),
        ("empty", Box::new(|v| v.clear())),
        ("garbage", Box::new(|v| v.iter_mut().for_each(|b| *b = 0xAB))),
    ];
    for (what, f) in damage {
        if what == "missing" {
            std::fs::remove_file(&idx).unwrap();
        } else {
            let mut v = good.clone();
            f(&mut v);
            std::fs::write(&idx, v).unwrap();
        }
        let store = Store::open(dir.path(), Options::default()).unwrap();
        assert_eq!(payloads(&store.read_stream("a", 0, 1000).unwrap()), a, "{what}");
        assert_eq!(payloads(&store.read_stream("b", 0, 1000).unwrap()), b, "{what}");
        assert!(
            store.recovery_report().iter().any(|r| matches!(r, RecoveryAction::RebuiltIndex { .. })),
            "{what}: {:?}",
            store.recovery_report()
        );
        store.close().unwrap();
        assert_eq!(std::fs::read(&idx).unwrap(), good, "{what}: the rebuilt index equals the original");
    }
}

#[test]
fn garbage_after_the_tail_is_cut_and_zeros_are_kept() {
    let (dir, written) = small_store(3);
    let seg = segments(dir.path(), 0).pop().unwrap();
    let file = std::fs::read(&seg).unwrap();
    let original = file[..data_end(&file)].to_vec();
    for tail in [vec![0xFF; 100], b"partial batch that never made it".to_vec(), [vec![0; 5000], vec![1]].concat()] {
        let mut bytes = original.clone();
        bytes.extend_from_slice(&tail);
        std::fs::write(&seg, &bytes).unwrap();
        let store = Store::open(Path::new(dir.path()), Options::default().preallocate(false)).unwrap();
        assert_eq!(payloads(&store.read_stream("s", 0, 100).unwrap()), written);
        assert!(matches!(store.recovery_report()[..], [RecoveryAction::TruncatedTornTail { .. }]));
        store.close().unwrap();
        assert_eq!(std::fs::read(&seg).unwrap(), original);
    }
    // Zeros after the data are preallocated space: kept, nothing to report.
    let mut bytes = original.clone();
    bytes.resize(original.len() + 8192, 0);
    std::fs::write(&seg, &bytes).unwrap();
    let store = Store::open(dir.path(), Options::default().preallocate(false)).unwrap();
    assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
    assert_eq!(payloads(&store.read_stream("s", 0, 100).unwrap()), written);
    fill(&store, "s", 2);
    let during = std::fs::read(&seg).unwrap();
    assert_eq!(during.len(), original.len() + 8192, "appends went into the zeros");
    store.close().unwrap();
    let after = std::fs::read(&seg).unwrap();
    assert_eq!(after.len(), data_end(&during), "a clean close trims the zeros");
    assert_eq!(after[..], during[..after.len()]);
    assert_eq!(batch_offsets(&after).len(), 5);
}

#[test]
fn leftovers_of_interrupted_writes_are_cleaned() {
    let (dir, written) = small_store(3);
    let p = dir.path().join("p00000");
    std::fs::write(p.join("00000000000000000003.log.tmp"), b"half a segment").unwrap();
    std::fs::write(dir.path().join("MANIFEST.tmp"), b"half a manifest").unwrap();
    // A stale index beside the active segment (a roll undone by a crash).
    std::fs::write(p.join("00000000000000000000.idx"), b"stale").unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(payloads(&store.read_stream("s", 0, 100).unwrap()), written);
    fill(&store, "s", 2);
    store.close().unwrap();
    assert!(!p.join("00000000000000000003.log.tmp").exists());
    assert!(!p.join("00000000000000000000.idx").exists());
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(store.read_stream("s", 0, 100).unwrap().len(), 5);
}

#[test]
fn a_lost_newest_segment_is_refused_not_papered_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 4096)).unwrap();
    fill(&store, "s", 200);
    store.close().unwrap();
    let mut segs = segments(dir.path(), 0);
    let last = segs.pop().unwrap();
    std::fs::remove_file(&last).unwrap();
    // The segment before it was sealed (its index exists): a newer one existed.
    match Store::open(dir.path(), Options::default()) {
        Err(Error::Corruption { path, reason, .. }) => {
            assert_eq!(path, segs.last().unwrap().with_extension("idx"));
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("expected Corruption, got {other:?}"),
    }
    // Nothing was removed by the refused open.
    assert!(segs.last().unwrap().with_extension("idx").exists());
}

#[test]
fn damage_in_a_middle_batch_is_corruption_not_truncation() {
    let (dir, _) = small_store(5);
    let seg = segments(dir.path(), 0).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let offsets = batch_offsets(&bytes);
    // Zero a whole middle batch, as a lost write in durable data would.
    for b in &mut bytes[offsets[2]..offsets[3]] {
        *b = 0;
    }
    std::fs::write(&seg, &bytes).unwrap();
    match Store::open(dir.path(), Options::default()) {
        Err(Error::Corruption { offset, .. }) => assert_eq!(offset as usize, offsets[2]),
        other => panic!("expected Corruption, got {other:?}"),
    }
}

/// Repairs made on first use are in the report without that use: the report checks the
/// sealed segments (and sidecars) not read yet.
#[test]
fn the_report_covers_files_not_read_yet() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 4096)).unwrap();
    let a = fill(&store, "a", 80);
    store.close().unwrap();
    let idx = segments(dir.path(), 0)[0].with_extension("idx");
    std::fs::remove_file(&idx).unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    match &store.recovery_report()[..] {
        [RecoveryAction::RebuiltIndex { path, .. }] => assert_eq!(*path, idx),
        other => panic!("{other:?}"),
    }
    assert!(idx.exists());
    assert_eq!(payloads(&store.read_stream("a", 0, 1000).unwrap()), a);
    assert_eq!(store.recovery_report().len(), 1, "reported once");
}

/// The active index journal's frozen section (FORMAT.md §8.4) torn, cut short, flipped, left
/// half-written under its temporary name, stale (from a later state of the segment than the
/// one beside it), or of another segment: open never fails and never loses or invents an event,
/// says it dropped the journal, scans, and the next clean close writes the section again.
#[test]
fn a_torn_truncated_flipped_or_stale_frozen_section_costs_only_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20)).unwrap();
    let early_written = fill(&store, "s", 20);
    store.close().unwrap();
    let early_segment = std::fs::read(segments(dir.path(), 0).pop().unwrap()).unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let mut written = early_written.clone();
    written.extend(fill(&store, "s", 10));
    store.close().unwrap();
    let seg = segments(dir.path(), 0).pop().unwrap();
    let aix = seg.with_extension("aix");
    let segment = std::fs::read(&seg).unwrap();
    let journal = std::fs::read(&aix).unwrap();
    assert_eq!(journal[8], 3, "a clean close leaves a frozen section");
    let check = |case: &str, seg_bytes: &[u8], journal: Option<&[u8]>, want: &[Vec<u8>], dropped: bool| {
        let work = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), work.path());
        let wseg = segments(work.path(), 0).pop().unwrap();
        std::fs::write(&wseg, seg_bytes).unwrap();
        match journal {
            Some(j) => std::fs::write(wseg.with_extension("aix"), j).unwrap(),
            None => std::fs::remove_file(wseg.with_extension("aix")).unwrap(),
        }
        let store = Store::open(work.path(), Options::default()).unwrap();
        let got = payloads(&store.read_stream("s", 0, usize::MAX).unwrap());
        assert_eq!(got, want, "{case}");
        assert_eq!(store.stream_version("s").unwrap(), Some(want.len() as u64 - 1), "{case}");
        let report = store.recovery_report();
        let was_dropped = report.iter().any(|a| matches!(a, RecoveryAction::DroppedActiveIndex { .. }));
        assert_eq!(was_dropped, dropped, "{case}: {report:?}");
        let scanned = store.partition_metrics()[0].recovery_scanned_bytes;
        assert_eq!(scanned == 0, case == "intact", "{case}: scanned {scanned}");
        assert!(scanned <= seg_bytes.len() as u64, "{case}");
        store.close().unwrap();
        let store = Store::open(work.path(), Options::default()).unwrap();
        assert_eq!(store.partition_metrics()[0].recovery_scanned_bytes, 0, "{case}: written again");
        assert_eq!(payloads(&store.read_stream("s", 0, usize::MAX).unwrap()), want, "{case}");
        store.close().unwrap();
    };
    check("intact", &segment, Some(&journal), &written, false);
    // Cut short anywhere: in the header, in the entries, by one byte.
    for len in (0..journal.len()).step_by(7).chain([journal.len() - 1, 64, 63]) {
        check(&format!("cut to {len}"), &segment, Some(&journal[..len]), &written, true);
    }
    // Flipped bits in the header and the entries.
    for bit in (0..journal.len() * 8).step_by(53) {
        let mut j = journal.clone();
        j[bit / 8] ^= 1 << (bit % 8);
        check(&format!("bit {bit}"), &segment, Some(&j), &written, true);
    }
    // Torn: zeros from some byte on (a file system that extended the file but lost the data).
    for at in [64, 100, journal.len() / 2] {
        let mut j = journal.clone();
        j[at..].fill(0);
        check(&format!("zeros from {at}"), &segment, Some(&j), &written, true);
    }
    // Stale: the section of 30 batches beside the segment as it was at 20 (the section
    // describes more than the segment holds): the segment wins.
    check("stale, ahead of the segment", &early_segment, Some(&journal), &early_written, true);
    // A half-written replacement under its temporary name, the old journal gone: the
    // temporary file is removed, the segment scanned.
    {
        let work = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), work.path());
        let wseg = segments(work.path(), 0).pop().unwrap();
        std::fs::remove_file(wseg.with_extension("aix")).unwrap();
        std::fs::write(wseg.with_extension("aix.tmp"), &journal[..journal.len() / 2]).unwrap();
        let store = Store::open(work.path(), Options::default()).unwrap();
        assert_eq!(payloads(&store.read_stream("s", 0, usize::MAX).unwrap()), written);
        assert!(!wseg.with_extension("aix.tmp").exists());
        store.close().unwrap();
    }
    // Of another segment or partition: the header names them, and the journal is dropped.
    let mut other = journal.clone();
    other[12] = 1;
    let sum = crc32fast::hash(&other[..60]);
    other[60..64].copy_from_slice(&sum.to_le_bytes());
    check("another partition's", &segment, Some(&other), &written, true);
    // No journal at all: a scan, and a journal written at the close.
    check("none", &segment, None, &written, false);
}
