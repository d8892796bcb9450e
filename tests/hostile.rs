//! Hostile files: zero-length files, length fields claiming GiBs, index offsets out of range,
//! a directory where a file should be, symlinks. Every case ends in a typed error or a
//! recovered store, never a panic, and no allocation in proportion to a claimed length (a
//! claim of GiBs would abort the test process).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use strata::compaction::CompactionOptions;
use strata::{Error, ExpectedVersion, Options, Store};

fn options() -> Options {
    Options::default().compaction(CompactionOptions::default().interval(None))
}

/// A closed store with archives, then sealed segments (with indexes) and an active one in
/// each partition; a snapshot sidecar and tombstones.
fn store() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let policy = CompactionOptions::default().interval(None).retention(Duration::ZERO).require_snapshots(false);
    let fill = |s: &Store, round: u32| {
        for i in 0..400 {
            let stream = format!("h-{}", i % 9);
            s.append(&stream, ExpectedVersion::Any, &[ev("E", format!("{{\"r\":{round},\"i\":{i}}}"))]).unwrap();
        }
    };
    let s = Store::open(&dir, opts(2, 4096).compaction(policy.clone())).unwrap();
    fill(&s, 0);
    s.close().unwrap();
    let s = Store::open(&dir, opts(2, 4096).compaction(policy)).unwrap();
    s.compact().unwrap();
    fill(&s, 1);
    s.delete_stream("h-3").unwrap();
    let mut t = s.load::<Tally>("h-1").unwrap();
    s.snapshot(&mut t).unwrap();
    s.flush_snapshots().unwrap();
    s.close().unwrap();
    (root, dir)
}

fn p(dir: &Path, partition: u32) -> PathBuf {
    dir.join(format!("p{partition:05}"))
}

fn first(dir: &Path, ext: &str) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|f| f.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v.into_iter().next().unwrap_or_else(|| panic!("no .{ext} in {}", dir.display()))
}

/// Opens the store and reads everything: each step may fail, but only with a typed error.
/// Returns the errors seen (none: it all worked).
fn exercise(dir: &Path) -> Vec<Error> {
    let mut errors = Vec::new();
    let store = match Store::open(dir, options()) {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    for part in 0..store.partition_count() {
        if let Err(e) = store.read_partition(part, 0, usize::MAX) {
            errors.push(e);
        }
    }
    for i in 0..9 {
        match store.read_stream(&format!("h-{i}"), 0, usize::MAX) {
            Ok(_) | Err(Error::StreamDeleted { .. }) => {}
            Err(e) => errors.push(e),
        }
    }
    if let Err(e) = store.load::<Tally>("h-1") {
        errors.push(e);
    }
    errors.extend(store.verify());
    if let Err(e) = store.append("h-new", ExpectedVersion::Any, &[ev("E", "after")]) {
        errors.push(e);
    }
    errors
}

fn typed(errors: &[Error], case: &str) {
    for e in errors {
        assert!(
            matches!(
                e,
                Error::Corruption { .. }
                    | Error::Io { .. }
                    | Error::NotAStore { .. }
                    | Error::UnsupportedVersion { .. }
            ),
            "{case}: {e:?}"
        );
    }
}

/// Applies `damage` to a fresh copy of the store, then exercises it.
fn case(name: &str, damage: impl FnOnce(&Path)) -> Vec<Error> {
    let (_root, dir) = store();
    damage(&dir);
    let errors = exercise(&dir);
    typed(&errors, name);
    errors
}

fn write_u32(path: &Path, at: usize, v: u32) {
    let mut b = std::fs::read(path).unwrap();
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    std::fs::write(path, b).unwrap();
}

#[test]
fn zero_length_files() {
    let e = case("empty manifest", |d| std::fs::write(d.join("MANIFEST"), b"").unwrap());
    assert!(!e.is_empty());
    let e = case("empty sealed segment", |d| std::fs::write(first(&p(d, 0), "log"), b"").unwrap());
    assert!(!e.is_empty(), "an empty sealed segment is damage");
    let e = case("empty index", |d| std::fs::write(first(&p(d, 0), "idx"), b"").unwrap());
    assert!(e.is_empty(), "an index is rebuilt: {e:?}");
    case("empty sidecar", |d| {
        std::fs::write(p(d, strata::routing::partition_for("h-1", 2)).join("snapshots.snap"), b"").unwrap()
    });
    let e = case("empty archive", |d| std::fs::write(first(&p(d, 1), "arc"), b"").unwrap());
    assert!(!e.is_empty());
    case("empty tombstones", |d| {
        for part in 0..2 {
            let t = p(d, part).join("tombstones");
            if t.exists() {
                std::fs::write(t, b"").unwrap();
            }
        }
    });
}

#[test]
fn length_fields_claiming_gibs() {
    // The last batch of the active segment claims 4 GiB: a torn tail, cut.
    case("batch length", |d| {
        let seg = segments(d, 0).last().unwrap().clone();
        let bytes = std::fs::read(&seg).unwrap();
        let last = *batch_offsets(&bytes).last().unwrap();
        write_u32(&seg, last + 4, 0xFFFF_FFF8);
    });
    // A sealed segment's batch claims 4 GiB: damage, reported.
    let e = case("sealed batch length", |d| {
        let seg = segments(d, 0)[0].clone();
        let bytes = std::fs::read(&seg).unwrap();
        write_u32(&seg, batch_offsets(&bytes)[2] + 4, 0xFFFF_FFF8);
    });
    assert!(!e.is_empty());
    // A snapshot record claims 2 GiB.
    case("snapshot length", |d| {
        let snap = p(d, strata::routing::partition_for("h-1", 2)).join("snapshots.snap");
        write_u32(&snap, 64 + 4, 0x8000_0000);
    });
    // An index claims 2^60 entries (its header CRC fixed up, so only the count is wrong).
    let e = case("index counts", |d| {
        let idx = first(&p(d, 0), "idx");
        let mut b = std::fs::read(&idx).unwrap();
        b[40..48].copy_from_slice(&(1u64 << 60).to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&idx, b).unwrap();
    });
    assert!(e.is_empty(), "a bad index is rebuilt: {e:?}");
    // An archive's footer claims 2^40 stream entries (CRC fixed up).
    let e = case("archive counts", |d| {
        let arc = first(&p(d, 1), "arc");
        let mut b = std::fs::read(&arc).unwrap();
        let f = b.len() - 64;
        b[f + 24..f + 32].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let crc = crc32fast::hash(&b[f..f + 52]);
        b[f + 52..f + 56].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&arc, b).unwrap();
    });
    assert!(!e.is_empty());
}

#[test]
fn index_offsets_out_of_range() {
    // Every stream entry of a sealed index points far past the segment (entries CRC fixed).
    let e = case("index offsets", |d| {
        let idx = first(&p(d, 0), "idx");
        let mut b = std::fs::read(&idx).unwrap();
        let streams = u64::from_le_bytes(b[40..48].try_into().unwrap()) as usize;
        for i in 0..streams {
            let at = 64 + i * 32 + 16;
            b[at..at + 8].copy_from_slice(&(u64::MAX - 7).to_le_bytes());
        }
        let crc = crc32fast::hash(&b[64..]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&idx, b).unwrap();
    });
    assert!(e.is_empty(), "a lying index is refused and rebuilt from its segment: {e:?}");
}

#[test]
fn a_directory_where_a_file_should_be() {
    for (name, target) in [
        ("manifest", PathBuf::from("MANIFEST")),
        ("sidecar", p(Path::new(""), 0).join("snapshots.snap")),
        ("tombstones", p(Path::new(""), 0).join("tombstones")),
    ] {
        case(name, |d| {
            let path = d.join(&target);
            let _ = std::fs::remove_file(&path);
            std::fs::create_dir_all(path.join("inside")).unwrap();
        });
    }
    let e = case("sealed segment", |d| {
        let seg = segments(d, 0)[0].clone();
        std::fs::remove_file(&seg).unwrap();
        std::fs::create_dir(&seg).unwrap();
    });
    assert!(!e.is_empty());
    let e = case("archive", |d| {
        let arc = first(&p(d, 1), "arc");
        std::fs::remove_file(&arc).unwrap();
        std::fs::create_dir(&arc).unwrap();
    });
    assert!(!e.is_empty());
}

#[test]
fn symlinks() {
    // A segment replaced by a link to a foreign file, and a link to itself (a loop).
    let e = case("link to a foreign file", |d| {
        let seg = segments(d, 0)[0].clone();
        std::fs::remove_file(&seg).unwrap();
        let foreign = d.join("foreign");
        std::fs::write(&foreign, vec![0x5a; 10_000]).unwrap();
        std::os::unix::fs::symlink(&foreign, &seg).unwrap();
    });
    assert!(!e.is_empty());
    let e = case("link loop", |d| {
        let seg = segments(d, 0)[1].clone();
        std::fs::remove_file(&seg).unwrap();
        std::os::unix::fs::symlink(&seg, &seg).unwrap();
    });
    assert!(!e.is_empty());
    // A link to the real file is followed and works.
    let e = case("link to the real file", |d| {
        let seg = segments(d, 0)[0].clone();
        let moved = d.join("moved.log");
        std::fs::rename(&seg, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &seg).unwrap();
    });
    assert!(e.is_empty(), "{e:?}");
}

/// An index whose entries check out (CRCs right, offsets in range) but point at the wrong
/// batches: reads that trust it fail typed, and `verify` names the index and the entry.
#[test]
fn an_index_pointing_at_the_wrong_batches_is_named_by_verify() {
    let (_root, dir) = store();
    let idx = first(&p(&dir, 0), "idx");
    let mut b = std::fs::read(&idx).unwrap();
    let streams = u64::from_le_bytes(b[40..48].try_into().unwrap()) as usize;
    assert!(streams >= 2);
    // Swap the offsets of the first two stream entries.
    let (a, c) = (64 + 16, 64 + 32 + 16);
    let first_offset: [u8; 8] = b[a..a + 8].try_into().unwrap();
    let second_offset: [u8; 8] = b[c..c + 8].try_into().unwrap();
    b[a..a + 8].copy_from_slice(&second_offset);
    b[c..c + 8].copy_from_slice(&first_offset);
    let crc = crc32fast::hash(&b[64..]);
    b[56..60].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32fast::hash(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&idx, b).unwrap();
    let store = Store::open(&dir, options()).unwrap();
    let problems = store.verify();
    assert!(
        problems.iter().any(|e| matches!(e, Error::Corruption { path, offset, .. } if path == &idx && *offset == 64)),
        "{problems:?}"
    );
}
