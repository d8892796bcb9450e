//! The append-only record files (tombstones, dead-letter queues) under damage: one torn-tail
//! rule for both (FORMAT.md, "Append-only record files"). A torn last write (a sector that
//! never reached the disk, a file that ends at a sector boundary inside a record) is cut off
//! and reported; a flipped bit anywhere, the last record included, is refused as corruption.
//! Nothing is ever dropped without a [`RecoveryAction`].

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use strata::projection::{HandlerError, OnFailure, ProjectionOptions};
use strata::{Error, ExpectedVersion, Options, Projection, ProjectionEngine, RecordedEvent, RecoveryAction, Store};

fn tombstones(dir: &Path) -> PathBuf {
    dir.join("p00000").join("tombstones")
}

/// Record offsets of a record file whose header is 64 bytes (walking the length fields).
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 64;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if len == 0 || at + len > bytes.len() {
            break;
        }
        out.push(at);
        at += len;
    }
    out
}

/// A one-partition store with three deleted streams; the last one's id is long, so that its
/// record crosses the sector boundary at byte 512 of the file.
fn deleted_store() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20)).unwrap();
    let names = vec!["gone-1".to_string(), "gone-2".to_string(), format!("gone-3-{}", "x".repeat(700))];
    for n in &names {
        store.append(n, ExpectedVersion::NoStream, &[ev("Opened", "{}")]).unwrap();
        assert!(store.delete_stream(n).unwrap());
    }
    store.close().unwrap();
    (dir, names)
}

fn open_with(dir: &Path, bytes: &[u8]) -> (tempfile::TempDir, Result<Store, Error>) {
    let work = tempfile::tempdir().unwrap();
    copy_dir(dir, work.path());
    std::fs::write(tombstones(work.path()), bytes).unwrap();
    let store = Store::open(work.path(), Options::default());
    (work, store)
}

/// The bits to flip in a file with records at `offsets`: every bit of its records' first 64
/// bytes, and every 13th bit of the rest.
fn bits_to_flip(offsets: &[usize], len: usize) -> Vec<usize> {
    (64 * 8..len * 8).filter(|&b| b % 13 == 0 || offsets.iter().any(|&o| (o..o + 64).contains(&(b / 8)))).collect()
}

fn readable(store: &Store, stream: &str) -> bool {
    !matches!(store.read_stream(stream, 0, 10), Err(Error::StreamDeleted { .. }))
}

/// Every bit of every tombstone record, flipped: the store refuses to open, naming the file
/// and the damaged record. A deletion never comes back on damage alone.
#[test]
fn every_bit_flip_of_a_tombstone_is_refused() {
    let (dir, _) = deleted_store();
    let original = std::fs::read(tombstones(dir.path())).unwrap();
    let offsets = record_offsets(&original);
    assert_eq!(offsets.len(), 3);
    let work = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), work.path());
    for bit in bits_to_flip(&offsets, original.len()) {
        let mut bytes = original.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(tombstones(work.path()), &bytes).unwrap();
        match Store::open(work.path(), Options::default()) {
            Err(Error::Corruption { path, offset, .. }) => {
                assert!(path.ends_with("tombstones"), "{path:?}");
                let record = *offsets.iter().rev().find(|&&o| o <= bit / 8).unwrap();
                assert_eq!(offset as usize, record, "bit {bit}");
            }
            other => panic!("bit {bit} (byte {}): {:?}", bit / 8, other.map(|s| s.recovery_report())),
        }
    }
}

/// A torn last delete, as a disk leaves it: the file ends at the sector boundary inside the
/// record, or the record's second sector never reached the disk (zeros). It was never
/// acknowledged: it is cut off and reported, and the earlier deletions stand.
#[test]
fn a_torn_last_tombstone_is_cut_and_reported() {
    let (dir, names) = deleted_store();
    let original = std::fs::read(tombstones(dir.path())).unwrap();
    let last = *record_offsets(&original).last().unwrap();
    assert!(last < 512 && original.len() > 512, "the last record crosses byte 512");
    let short = original[..512].to_vec();
    let mut zeroed = original.clone();
    zeroed[512..].fill(0);
    for (what, bytes) in [("short", short), ("a lost sector", zeroed)] {
        let (_work, store) = open_with(dir.path(), &bytes);
        let store = store.unwrap_or_else(|e| panic!("{what}: {e}"));
        match &store.recovery_report()[..] {
            [RecoveryAction::TruncatedTornTail { path, offset, .. }] => {
                assert!(path.ends_with("tombstones"));
                assert_eq!(*offset as usize, last, "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert!(!readable(&store, &names[0]) && !readable(&store, &names[1]), "{what}");
        assert!(readable(&store, &names[2]), "{what}: the torn delete was never acknowledged");
        // Deleting again works, and survives a reopen.
        assert!(store.delete_stream(&names[2]).unwrap());
        store.close().unwrap();
        let store = Store::open(_work.path(), Options::default()).unwrap();
        assert!(store.recovery_report().is_empty(), "{what}: {:?}", store.recovery_report());
        assert!(!readable(&store, &names[2]));
    }
}

/// Fails on every event of streams named "bad-…".
struct Picky;

impl Projection for Picky {
    fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        match e.stream_id.as_str() {
            "bad-long" => Err(format!("cannot handle {}", "this ".repeat(120)).into()),
            s if s.starts_with("bad-") => Err(format!("cannot handle {s}").into()),
            _ => Ok(()),
        }
    }
}

fn picky_options() -> ProjectionOptions {
    ProjectionOptions::default().retry(1, Duration::ZERO).on_failure(OnFailure::DeadLetter)
}

/// A store whose projection "picky" has four dead letters; the last one's error text is long,
/// so that its record crosses byte 512 of the file.
fn dead_lettered_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(1, 1 << 20)).unwrap());
    for s in ["bad-0", "bad-1", "bad-2", "bad-long"] {
        store.append(s, ExpectedVersion::Any, &[ev("E", "x")]).unwrap();
    }
    let engine = ProjectionEngine::new(store.clone(), 1);
    engine.register("picky", Arc::new(Picky), picky_options()).unwrap();
    assert!(engine.wait_caught_up("picky", Duration::from_secs(10)).unwrap());
    assert_eq!(engine.dead_letters("picky").unwrap().len(), 4);
    engine.stop().unwrap();
    store.close().unwrap();
    dir
}

fn dlq(dir: &Path) -> PathBuf {
    dir.join("projections").join("picky").join("dlq")
}

/// A torn last dead letter (the file ends at a sector boundary inside it, or zeros follow the
/// last record): cut off at registration, and reported.
#[test]
fn a_torn_dead_letter_is_cut_and_reported() {
    let dir = dead_lettered_store();
    let original = std::fs::read(dlq(dir.path())).unwrap();
    let last = *record_offsets(&original).last().unwrap();
    assert!(last < 512 && original.len() > 512, "the last record crosses byte 512");
    let mut zeros = original.clone();
    zeros.extend_from_slice(&[0; 40]);
    for (what, bytes, kept) in [("short", original[..512].to_vec(), 3), ("zeros after", zeros, 4)] {
        let work = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), work.path());
        std::fs::write(dlq(work.path()), &bytes).unwrap();
        let store = Arc::new(Store::open(work.path(), Options::default()).unwrap());
        let engine = ProjectionEngine::new(store.clone(), 1);
        engine.register("picky", Arc::new(Picky), picky_options()).unwrap();
        assert_eq!(engine.dead_letters("picky").unwrap().len(), kept, "{what}");
        match &store.recovery_report()[..] {
            [RecoveryAction::TruncatedTornTail { path, offset, .. }] => {
                assert_eq!(*path, dlq(work.path()));
                assert_eq!(*offset as usize, if kept == 3 { last } else { original.len() }, "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
        engine.stop().unwrap();
    }
}

/// Every bit of a dead-letter queue flipped: registering either refuses the file (corruption)
/// or, for a torn-looking tail, cuts it and says so. Letters never vanish silently.
#[test]
fn every_bit_flip_of_a_dead_letter_queue_is_refused_or_reported() {
    let dir = dead_lettered_store();
    let original = std::fs::read(dlq(dir.path())).unwrap();
    let (mut refused, mut cut) = (0, 0);
    let work = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), work.path());
    let projection = work.path().join("projections").join("picky");
    let checkpoints = std::fs::read(projection.join("checkpoints")).unwrap();
    for bit in bits_to_flip(&record_offsets(&original), original.len()) {
        std::fs::write(projection.join("checkpoints"), &checkpoints).unwrap();
        let mut bytes = original.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(dlq(work.path()), &bytes).unwrap();
        let store = Arc::new(Store::open(work.path(), Options::default()).unwrap());
        let engine = ProjectionEngine::new(store.clone(), 1);
        match engine.register("picky", Arc::new(Picky), picky_options()) {
            Err(Error::Corruption { path, .. }) => {
                assert_eq!(path, dlq(work.path()));
                refused += 1;
            }
            Err(other) => panic!("bit {bit}: {other}"),
            Ok(()) => {
                let letters = engine.dead_letters("picky").unwrap().len();
                let reported = store
                    .recovery_report()
                    .iter()
                    .any(|a| matches!(a, RecoveryAction::TruncatedTornTail { path, .. } if *path == dlq(work.path())));
                assert!(letters == 4 || reported, "bit {bit}: {letters} letters and nothing reported");
                cut += usize::from(reported);
            }
        }
        engine.stop().unwrap();
    }
    eprintln!("{refused} flips refused, {cut} cut and reported");
    assert!(refused > 0);
}

/// A projection's checkpoint slot torn (the latest write of it never reached the disk): the
/// previous checkpoint stands, and registering says so.
#[test]
fn a_torn_checkpoint_slot_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Arc::new(Store::open(dir.path(), opts(1, 1 << 20)).unwrap());
        let engine = ProjectionEngine::new(store.clone(), 1);
        engine.register("picky", Arc::new(Picky), picky_options()).unwrap();
        for i in 0..3 {
            store.append(&format!("good-{i}"), ExpectedVersion::Any, &[ev("E", "x")]).unwrap();
            assert!(engine.wait_caught_up("picky", Duration::from_secs(10)).unwrap());
            std::thread::sleep(Duration::from_millis(30)); // one checkpoint round per event
        }
        engine.stop().unwrap();
    }
    let path = dir.path().join("projections").join("picky").join("checkpoints");
    let mut bytes = std::fs::read(&path).unwrap();
    // Partition 0's slots are at 64 and 96: flip a byte of the one with the higher seq.
    let seq = |at: usize| u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
    let newest = if seq(64) > seq(96) { 64 } else { 96 };
    assert!(seq(newest) >= 2, "two checkpoints were written");
    bytes[newest + 20] ^= 0x08;
    std::fs::write(&path, &bytes).unwrap();
    let store = Arc::new(Store::open(dir.path(), Options::default()).unwrap());
    let engine = ProjectionEngine::new(store.clone(), 1);
    engine.register("picky", Arc::new(Picky), picky_options()).unwrap();
    match &store.recovery_report()[..] {
        [RecoveryAction::IgnoredCheckpointSlot { path: p, offset, .. }] => {
            assert_eq!((p, *offset as usize), (&path, newest));
        }
        other => panic!("{other:?}"),
    }
    engine.stop().unwrap();
}
