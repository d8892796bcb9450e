//! Reads through archives: one block cache per store, shared by readers of different
//! archives; an unreadable archive fails only the reads that need it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use strata::compaction::CompactionOptions;
use strata::{Error, ExpectedVersion, Options, Store};

fn store_opts() -> Options {
    opts(1, 128 << 10)
        .compaction(
            CompactionOptions::default()
                .retention(Duration::ZERO)
                .require_snapshots(false)
                .interval(None)
                .max_archive_bytes(64 << 10)
                .block_bytes(8 << 10),
        )
        .durability(strata::Durability::Buffered { sync_interval: Duration::from_millis(5) })
}

fn append(store: &Store, stream: &str, n: u64, tag: &str) {
    for _ in 0..n {
        let payload = format!("{tag}:{}", "x".repeat(180));
        store.append(stream, ExpectedVersion::Any, &[ev("Moved", payload)]).unwrap();
    }
}

fn archives(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("p00000"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "arc"))
        .collect();
    v.sort();
    v
}

#[test]
fn readers_in_two_archives_of_a_partition_do_not_evict_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), store_opts()).unwrap();
    for i in 0..8 {
        append(&store, &format!("s{i}"), 700, "e");
    }
    assert!(store.compact().unwrap().archives_written >= 4);
    let head = store.read_partition(0, 0, usize::MAX).unwrap().len() as u64;
    // Two readers, one at the start, one half-way through, reading in turns, in steps.
    let (mut a, mut b) = (0u64, head / 2);
    let step = |from: &mut u64| {
        let got = store.read_partition(0, *from, 50).unwrap();
        *from = got.last().map_or(*from, |e| e.position + 1);
    };
    for _ in 0..20 {
        step(&mut a);
        step(&mut b);
    }
    let warm = store.archive_cache_stats();
    assert!(warm.misses > 0 && warm.bytes > 0, "{warm:?}");
    // Again, from where they started: every block they need is still in memory.
    let (mut a, mut b) = (0u64, head / 2);
    for _ in 0..20 {
        step(&mut a);
        step(&mut b);
    }
    let second = store.archive_cache_stats();
    assert_eq!(second.misses, warm.misses, "the second pass decompressed nothing: {second:?}");
    assert!(second.hits > warm.hits, "{second:?}");
    // And two stream readers in the archives, in turns.
    for _ in 0..5 {
        assert_eq!(store.read_stream("s0", 0, 100).unwrap().len(), 100);
        assert_eq!(store.read_stream("s7", 0, 100).unwrap().len(), 100);
    }
    let after = store.archive_cache_stats();
    assert!(after.hits > warm.hits, "{after:?}");
    let stream_misses = after.misses - warm.misses;
    // The stream reads' first round may decompress its blocks; the next four, nothing.
    let again = store.archive_cache_stats();
    for _ in 0..4 {
        store.read_stream("s0", 0, 100).unwrap();
        store.read_stream("s7", 0, 100).unwrap();
    }
    assert_eq!(store.archive_cache_stats().misses, again.misses, "warm readers decompress nothing");
    assert!(stream_misses < 40, "{stream_misses} blocks for two 100-event streams");
    drop(store);
    // With no room for blocks, each read decompresses again (the counters see it), but each
    // block it needs once, not once per batch: the reading thread keeps the last one.
    let store = Store::open(dir.path(), store_opts().archive_cache_bytes(0)).unwrap();
    store.read_stream("s0", 0, 100).unwrap();
    let first = store.archive_cache_stats();
    assert!(first.misses > 0 && first.misses * 10 < first.hits, "{first:?}");
    store.read_stream("s7", 0, 100).unwrap();
    let s7 = store.archive_cache_stats().misses - first.misses;
    store.read_stream("s0", 0, 100).unwrap();
    assert_eq!(store.archive_cache_stats().misses, 2 * first.misses + s7, "{first:?}");
}

/// A store whose partition holds stream `x` (versions 0..300) before and after a stretch of
/// filler events of stream `z` alone, all archived; the path of an archive holding only `z`.
fn store_with_a_filler_archive(dir: &Path) -> PathBuf {
    let store = Store::open(dir, store_opts()).unwrap();
    append(&store, "x", 300, "x-early");
    append(&store, "z", 2_500, "z-fill");
    append(&store, "x", 300, "x-late");
    append(&store, "y", 700, "y-tail");
    store.compact().unwrap();
    drop(store);
    archives(dir)
        .into_iter()
        .find(|p| {
            // Decompressed here from FORMAT.md's layout, not through strata.
            let bytes = std::fs::read(p).unwrap();
            let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
            let f = bytes.len() - 64;
            let meta = u64_at(f) as usize;
            let text: Vec<u8> = (0..u32_at(f + 16) as usize)
                .flat_map(|i| {
                    let e = meta + i * 32;
                    let (at, len) = (u64_at(e) as usize, u32_at(e + 16) as usize);
                    zstd::decode_all(&bytes[at..at + len]).unwrap()
                })
                .collect();
            let text = String::from_utf8_lossy(&text);
            text.contains("z-fill") && !text.contains("x-") && !text.contains("y-")
        })
        .expect("an archive of filler events alone")
}

#[test]
fn an_unreadable_archive_fails_only_the_reads_that_need_it() {
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    let target = store_with_a_filler_archive(&pristine);
    let name = target.file_name().unwrap().to_owned();
    let len = std::fs::metadata(&target).unwrap().len() as usize;
    // A byte of the meta section (found on first use), of the footer (found at open), of the
    // header (found at open).
    let meta_offset = {
        let b = std::fs::read(&target).unwrap();
        u64::from_le_bytes(b[len - 64..len - 56].try_into().unwrap()) as usize
    };
    for (what, at) in [("meta section", meta_offset + 40), ("footer", len - 30), ("header", 20)] {
        let damaged = root.path().join(what.replace(' ', "-"));
        copy_dir(&pristine, &damaged);
        let path = damaged.join("p00000").join(&name);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let store = Store::open(&damaged, store_opts()).unwrap();
        let is_its = |e: &Error| matches!(e, Error::Corruption { path: p, .. } if p == &path);
        // `x` has versions on both sides of the archive's range, and they follow each other:
        // the archive holds none of them.
        let x = store.read_stream("x", 0, usize::MAX).unwrap();
        assert_eq!(x.len(), 600, "{what}");
        assert!(x.iter().enumerate().all(|(i, e)| e.version == i as u64), "{what}");
        assert_eq!(store.read_stream_backward("x", None, 1_000).unwrap().len(), 600, "{what}");
        assert_eq!(store.stream_version("x").unwrap(), Some(599), "{what}");
        store.append("x", ExpectedVersion::Exact(599), &[ev("Moved", "after")]).unwrap();
        // `y` begins after it at version 0.
        assert_eq!(store.read_stream("y", 0, usize::MAX).unwrap().len(), 700, "{what}");
        // `z` may be in it: its reads fail, naming the file.
        let err = store.read_stream("z", 0, usize::MAX).unwrap_err();
        assert!(is_its(&err), "{what}: {err}");
        // So do partition reads of its range; those after it do not.
        let err = store.read_partition(0, 0, usize::MAX).unwrap_err();
        assert!(is_its(&err), "{what}: {err}");
        let late = store.read_stream("y", 0, 1).unwrap()[0].position;
        assert_eq!(store.read_partition(0, late, 10).unwrap().len(), 10, "{what}");
        let storage = store.storage().unwrap();
        assert_eq!(storage[0].unreadable_archives, 1, "{what}: {storage:?}");
    }
}
