//! The format is pinned: hash and partition test vectors (also in FORMAT.md), and a committed
//! store written by format version 1 that must keep opening and reading the same. Run with
//! `STRATA_BLESS=1` to regenerate the fixture store after a deliberate format change.

mod common;

use std::path::PathBuf;

use common::*;
use strata::routing::{jump_consistent_hash, partition_for, stream_hash};
use strata::{Error, ExpectedVersion, Options, Store};

#[test]
fn hash_and_partition_vectors() {
    let vectors: [(&str, u64, u32, u32, u32); 6] = [
        ("", 0x2d06800538d394c2, 0, 0, 52),
        ("a", 0xe6c632b61e964e1f, 1, 14, 14),
        ("order-1", 0x5fc46503368e2876, 3, 3, 47),
        ("account-42", 0xfe916896f1b4ecbf, 3, 8, 41),
        ("stream-0", 0x896d749d5b432f61, 5, 5, 79),
        ("😀", 0x0b4fecf421a0808e, 7, 7, 63),
    ];
    for (s, hash, p8, p16, p100) in vectors {
        assert_eq!(stream_hash(s), hash, "{s:?}");
        assert_eq!((partition_for(s, 8), partition_for(s, 16), partition_for(s, 100)), (p8, p16, p100), "{s:?}");
    }
    // Co-location keys (routing scheme 2, FORMAT.md §5): the part in the first braces, if not
    // empty, routes the stream; the identity hash is always of the whole id.
    let colocated: [(&str, &str, u32, u32, u32); 7] = [
        ("{order-1}/payments", "order-1", 3, 3, 47),
        ("{order-1}/shipping", "order-1", 3, 3, 47),
        ("shipping-{order-1}", "order-1", 3, 3, 47),
        ("{a}{order-1}", "a", 1, 14, 14),
        ("{}a", "{}a", 7, 11, 63),
        ("{a", "{a", 1, 1, 1),
        ("a}{", "a}{", 6, 10, 26),
    ];
    for (s, key, p8, p16, p100) in colocated {
        assert_eq!(strata::routing::colocation_key(s), key, "{s:?}");
        let got = (partition_for(s, 8), partition_for(s, 16), partition_for(s, 100));
        assert_eq!(got, (p8, p16, p100), "{s:?}");
    }
    let jumps = [(0u64, 1u32, 0u32), (1, 8, 6), (0xdeadbeef, 16, 5), (u64::MAX, 1000, 313), (42, 65536, 5747)];
    for (key, n, want) in jumps {
        assert_eq!(jump_consistent_hash(key, n), want, "jump({key:#x}, {n})");
    }
}

#[test]
fn growing_the_partition_count_moves_few_streams() {
    let streams: Vec<String> = (0..20_000).map(|i| format!("agg-{i}")).collect();
    for (from, to) in [(8u32, 10u32), (16, 17), (4, 8)] {
        let moved = streams.iter().filter(|s| partition_for(s, from) != partition_for(s, to)).count();
        let expected = streams.len() as f64 * (1.0 - f64::from(from) / f64::from(to));
        assert!(
            (moved as f64 - expected).abs() < expected * 0.1 + 50.0,
            "{from}->{to}: moved {moved}, expected ~{expected}"
        );
        // A stream only ever moves to a new partition.
        assert!(streams.iter().all(|s| partition_for(s, from) == partition_for(s, to) || partition_for(s, to) >= from));
    }
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-store")
}

/// The deterministic content of the fixture store: (stream, payloads).
fn fixture_content() -> Vec<(String, Vec<Vec<u8>>)> {
    (0..6)
        .map(|s| {
            let name = format!("account-{s}");
            let events = (0..(10 + s * 7))
                .map(|i| format!("{name} event {i} {}", "~".repeat((i * 13 + s) % 40)).into_bytes())
                .collect();
            (name, events)
        })
        .collect()
}

fn bless_fixture_store() {
    let dir = fixture_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir, opts(2, 4096)).unwrap();
    let content = fixture_content();
    let longest = content.iter().map(|(_, e)| e.len()).max().unwrap();
    for i in 0..longest {
        for (name, events) in &content {
            if let Some(p) = events.get(i) {
                let exp = if i == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(i as u64 - 1) };
                store
                    .append(
                        name,
                        exp,
                        &[ev(if i % 2 == 0 { "Deposited" } else { "Withdrawn" }, p.clone())
                            .with_metadata(format!("m{i}"))],
                    )
                    .unwrap();
            }
        }
    }
    store.close().unwrap();
    std::fs::remove_file(dir.join("LOCK")).unwrap();
}

#[test]
fn the_v1_fixture_store_still_reads() {
    if std::env::var_os("STRATA_BLESS").is_some() {
        bless_fixture_store();
    }
    let work = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir(), work.path());
    assert!(
        segments(work.path(), 0).len() > 1 && segments(work.path(), 1).len() > 1,
        "fixture must have sealed segments"
    );
    let store = Store::open(work.path(), Options::default()).unwrap();
    assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
    assert_eq!(store.partition_count(), 2);
    for (name, events) in fixture_content() {
        let got = store.read_stream(&name, 0, usize::MAX).unwrap();
        assert_eq!(payloads(&got), events, "{name}");
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.metadata, format!("m{i}").into_bytes());
            assert_eq!(e.event_type, if i % 2 == 0 { "Deposited" } else { "Withdrawn" });
            assert!(e.timestamp_nanos > 1_764_000_000_000_000_000, "written after 2025-11");
        }
    }
    let heads: Vec<u64> = (0..2).map(|p| store.head(p).unwrap()).collect();
    assert_eq!(heads.iter().sum::<u64>(), fixture_content().iter().map(|(_, e)| e.len() as u64).sum::<u64>());
    // The index files were read, not rebuilt.
    assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
}

#[test]
fn a_corrupted_copy_of_the_fixture_store_is_reported_exactly() {
    let work = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir(), work.path());
    let seg = segments(work.path(), 0).remove(0);
    let mut bytes = std::fs::read(&seg).unwrap();
    let offsets = batch_offsets(&bytes);
    let victim = offsets[3];
    bytes[victim + 60] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    let store = Store::open(work.path(), Options::default()).unwrap();
    match store.read_partition(0, 0, usize::MAX) {
        Err(Error::Corruption { path, offset, reason }) => {
            assert_eq!(path, seg);
            assert_eq!(offset as usize, victim, "{reason}");
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corruption, got {other:?}"),
    }
}
