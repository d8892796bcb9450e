//! Compaction: archived reads equal the reads before; the snapshot policy; erasure of deleted
//! streams with an audit trail; every crash point of a compaction (hand-built from the files
//! before and after it); damaged archives; compaction while appending and projecting.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use strata::compaction::{CompactionOptions, Reason};
use strata::projection::ProjectionOptions;
use strata::{Error, EventData, ExpectedVersion, Options, ProjectionEngine, RecordedEvent, RecoveryAction, Store};

/// Archive every sealed segment, in pieces of at most 64 KiB, and nothing in the background.
fn eager() -> CompactionOptions {
    CompactionOptions::default()
        .retention(Duration::ZERO)
        .require_snapshots(false)
        .interval(None)
        .max_archive_bytes(64 << 10)
        .block_bytes(8 << 10)
}

fn store_opts(c: CompactionOptions) -> Options {
    // Buffered: these tests are about compaction, not about append durability (segments are
    // synced when they roll either way).
    opts(2, 128 << 10)
        .compaction(c)
        .durability(strata::Durability::Buffered { sync_interval: Duration::from_millis(5) })
}

/// The decompressed blocks of an archive file, read here from FORMAT.md's layout (not
/// through strata), as text.
fn archive_text(bytes: &[u8]) -> String {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let footer = bytes.len() - 64;
    let meta = u64_at(footer) as usize;
    let blocks = u32_at(footer + 16) as usize;
    let mut text = String::new();
    for i in 0..blocks {
        let e = meta + i * 32;
        let (at, len) = (u64_at(e) as usize, u32_at(e + 16) as usize);
        let data = zstd::decode_all(&bytes[at..at + len]).unwrap();
        text.push_str(&String::from_utf8_lossy(&data));
    }
    text
}

fn json(stream: &str, i: u64) -> Vec<u8> {
    format!(
        r#"{{"account":"{stream}","amount":{}.{:02},"currency":"EUR","memo":"transfer number {i}","at":"2026-11-26T20:{:02}:00Z"}}"#,
        (i * 7919) % 10_000,
        i % 100,
        i % 60
    )
    .into_bytes()
}

/// Appends `per_stream` events to each of `streams` streams, interleaved, in batches of 1 to
/// 3 events.
fn load(store: &Store, streams: usize, per_stream: u64) {
    let mut next = vec![0u64; streams];
    let mut round = 0u64;
    while next.iter().any(|&v| v < per_stream) {
        for (s, v) in next.iter_mut().enumerate() {
            if *v >= per_stream {
                continue;
            }
            let stream = format!("acct-{s}");
            let n = (1 + (round + s as u64) % 3).min(per_stream - *v);
            let events: Vec<EventData> = (*v..*v + n).map(|i| ev("Moved", json(&stream, i))).collect();
            let expected = if *v == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(*v - 1) };
            store.append(&stream, expected, &events).unwrap();
            *v += n;
        }
        round += 1;
    }
}

/// Everything a reader can see: each stream forward and backward, each partition.
#[derive(Debug, PartialEq)]
struct Seen {
    streams: Vec<Vec<RecordedEvent>>,
    backward: Vec<Vec<RecordedEvent>>,
    partitions: Vec<Vec<RecordedEvent>>,
    versions: Vec<Option<u64>>,
}

fn seen(store: &Store, streams: usize) -> Seen {
    let names: Vec<String> = (0..streams).map(|s| format!("acct-{s}")).collect();
    Seen {
        streams: names.iter().map(|s| store.read_stream(s, 0, usize::MAX).unwrap()).collect(),
        backward: names.iter().map(|s| store.read_stream_backward(s, Some(17), 9).unwrap()).collect(),
        partitions: (0..store.partition_count())
            .map(|p| {
                // In steps, as a subscriber reads.
                let mut all = Vec::new();
                loop {
                    let from = all.last().map_or(0, |e: &RecordedEvent| e.position + 1);
                    let got = store.read_partition(p, from, 97).unwrap();
                    if got.is_empty() {
                        break all;
                    }
                    all.extend(got);
                }
            })
            .collect(),
        versions: names.iter().map(|s| store.stream_version(s).unwrap()).collect(),
    }
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for p in 0..2 {
        for e in std::fs::read_dir(dir.join(format!("p{p:05}"))).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == ext) {
                v.push(path);
            }
        }
    }
    v.sort();
    v
}

#[test]
fn archived_reads_equal_the_reads_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), store_opts(eager())).unwrap();
    load(&store, 60, 100);
    // Reopened, every full segment is sealed (the sealer works in the background).
    drop(store);
    let store = Store::open(dir.path(), store_opts(eager())).unwrap();
    let before = seen(&store, 60);
    let r = store.compact().unwrap();
    assert!(r.segments_archived >= 4, "{r:?}");
    assert!(r.archives_written > r.segments_archived, "64 KiB pieces split 128 KiB segments: {r:?}");
    assert!(r.ratio() > 2.0, "{r:?}");
    assert!(!files(dir.path(), "arc").is_empty());
    assert_eq!(seen(&store, 60), before, "reads after compaction");
    // Appends go on after it, with the expected versions the archives hold.
    store.append("acct-3", ExpectedVersion::Exact(99), &[ev("Moved", json("acct-3", 100))]).unwrap();
    let err = store.append("acct-4", ExpectedVersion::Exact(3), &[ev("Moved", b"x".to_vec())]).unwrap_err();
    assert!(matches!(err, Error::WrongExpectedVersion { actual: Some(99), .. }), "{err}");
    let before = seen(&store, 60);
    let storage = store.storage().unwrap();
    drop(store);
    let store = Store::open(dir.path(), store_opts(eager())).unwrap();
    assert_eq!(seen(&store, 60), before, "reads after reopening");
    assert_eq!(store.storage().unwrap(), storage);
    let archived: u64 = storage.iter().map(|p| p.archived_events).sum();
    assert!(archived > 1000, "{storage:?}");
    // Compacting again finds nothing new to do.
    assert_eq!(store.compact().unwrap().segments_archived, 0);
    // The totals since this open, in the metrics too.
    let stats = store.compaction_stats();
    assert_eq!((stats.runs, stats.segments_archived, stats.failures), (1, 0, 0), "{stats:?}");
    let text = strata::Metrics::collect(&store, None, None, &[]).prometheus();
    assert!(text.contains("strata_compaction_runs_total 1"), "{text}");
}

/// An archive's stream entry stands for a span of a stream's batches in one block (FORMAT.md
/// §14.3): reads starting at any version, forwards and backwards, with any limit, give what
/// they gave from the segments.
#[test]
fn archived_stream_reads_from_any_version_equal_the_reads_before() {
    archived_reads_from_any_version(eager(), false);
}

/// The same with a zstd dictionary trained per archive, each column's frame compressed with it
/// (archives large enough to train one).
#[test]
fn archived_reads_with_a_dictionary_equal_the_reads_before() {
    archived_reads_from_any_version(eager().max_archive_bytes(4 << 20).dictionary(true), true);
}

fn archived_reads_from_any_version(c: CompactionOptions, dictionary: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), store_opts(c.clone())).unwrap();
    load(&store, 40, 100);
    drop(store);
    let store = Store::open(dir.path(), store_opts(c)).unwrap();
    let reads = |store: &Store| {
        let mut all = Vec::new();
        for s in 0..40 {
            let stream = format!("acct-{s}");
            for v in 0..=101u64 {
                for n in [1, 2, 7, 1000] {
                    all.push(store.read_stream(&stream, v, n).unwrap());
                    all.push(store.read_stream_backward(&stream, Some(v), n).unwrap());
                }
            }
            all.push(store.read_stream_backward(&stream, None, 3).unwrap());
        }
        all
    };
    let before = reads(&store);
    let r = store.compact().unwrap();
    assert!(r.segments_archived >= 2, "{r:?}");
    assert_eq!(reads(&store), before);
    // Every stream is in some archive, most as spans of several batches.
    let storage = store.storage().unwrap();
    assert!(storage.iter().map(|p| p.archived_events).sum::<u64>() > 2000, "{storage:?}");
    let problems = store.verify();
    assert!(problems.is_empty(), "{problems:?}");
    // The header's dict_len (FORMAT.md §14.1).
    let dict_lens: Vec<u32> = files(dir.path(), "arc")
        .iter()
        .map(|p| u32::from_le_bytes(std::fs::read(p).unwrap()[52..56].try_into().unwrap()))
        .collect();
    assert_eq!(dict_lens.iter().any(|&n| n > 0), dictionary, "{dict_lens:?}");
}

/// The position ranges of a partition's archives, and why each was made (read from the files).
fn archives(dir: &Path, partition: u32) -> Vec<(u64, u64, Reason)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join(format!("p{partition:05}"))).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "arc")
            && let strata::inspect::Dump::Archive { base_position, end_position, reason, .. } =
                strata::inspect::dump(&path, &Default::default()).unwrap()
        {
            out.push((base_position, end_position, reason));
        }
    }
    out
}

#[test]
fn age_and_snapshot_policy() {
    type T = Tally<5>;
    let dir = tempfile::tempdir().unwrap();
    // Long enough that a loaded machine does not take the in-use stream for a cold one.
    let retention = Duration::from_millis(1500);
    let policy = eager().require_snapshots(true).retention(retention);
    let store = Store::open(dir.path(), store_opts(policy.clone())).unwrap();
    // Streams committed through aggregates, snapshotted every 5 events, and one stream
    // never snapshotted, appended to alongside them.
    let lone = "acct-lone";
    for round in 0..60u64 {
        for s in 0..30 {
            let stream = format!("acct-{s}");
            let mut t = store.load::<T>(&stream).unwrap();
            store.commit(&mut t, &[ev("Moved", json(&stream, round))]).unwrap();
        }
        for i in 0..25 {
            store.append(lone, ExpectedVersion::Any, &[ev("Moved", json(lone, round * 25 + i))]).unwrap();
        }
    }
    store.flush_snapshots().unwrap();
    drop(store);
    std::thread::sleep(retention + Duration::from_millis(100));
    let store = Store::open(dir.path(), store_opts(policy.clone())).unwrap();
    // The lone stream is in use (appended to within the retention period): the segments
    // holding its events stay hot; the others are archived.
    store.append(lone, ExpectedVersion::Any, &[ev("Moved", json(lone, 1500))]).unwrap();
    let lp = store.partition_of(lone) as usize;
    let r = store.compact().unwrap();
    let storage = store.storage().unwrap();
    assert!(r.segments_archived > 0, "{r:?}");
    let lone_events = store.read_stream(lone, 0, 10_000).unwrap();
    let archived_lone = || {
        let ranges = archives(dir.path(), lp as u32);
        lone_events.iter().filter(|e| ranges.iter().any(|(from, to, _)| (*from..*to).contains(&e.position))).count()
    };
    assert_eq!(archived_lone(), 0, "no segment with the lone stream's events was archived: {storage:?}");
    // Idle for the retention period, it is cold: its segments are archived without a
    // snapshot, and it loads from the archives as it did from the segments.
    std::thread::sleep(retention + Duration::from_millis(100));
    let r = store.compact().unwrap();
    assert!(r.segments_archived > 0, "{r:?} {storage:?}");
    let after = store.storage().unwrap();
    assert!(after[lp].archived_events > storage[lp].archived_events, "{after:?}");
    assert!(archived_lone() > 0);
    let reasons: Vec<Reason> = archives(dir.path(), lp as u32).into_iter().map(|a| a.2).collect();
    assert!(reasons.contains(&Reason::RetainedCold), "{reasons:?}");
    assert!(after[lp].archives_by_reason.iter().any(|(r, n)| *r == Reason::RetainedCold && *n > 0), "{after:?}");
    assert_eq!(store.load::<T>(lone).unwrap().state(), &T::replayed(&store, lone));
    assert_eq!(store.read_stream(lone, 0, 10_000).unwrap(), lone_events);
    drop(store);
    // A long retention keeps everything hot.
    let store = Store::open(dir.path(), store_opts(policy.clone().retention(Duration::from_secs(3600)))).unwrap();
    assert_eq!(store.compact().unwrap().segments_archived, 0);
    drop(store);
    // The hot-bytes bound archives the oldest whatever their age.
    let store = Store::open(dir.path(), store_opts(policy.retention(Duration::from_secs(3600)).max_hot_bytes(Some(1))))
        .unwrap();
    // Fresh, unsnapshotted segments (the earlier rounds may have archived all there were).
    for i in 0..1500u64 {
        store.append("acct-more", ExpectedVersion::Any, &[ev("Moved", json("acct-more", i))]).unwrap();
    }
    let mut archived = 0;
    for _ in 0..500 {
        archived += store.compact().unwrap().segments_archived;
        if archived > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10)); // until the sealer has sealed one
    }
    assert!(archived > 0, "the hot-bytes bound archived nothing");
    for s in 0..30 {
        let stream = format!("acct-{s}");
        assert_eq!(store.load::<T>(&stream).unwrap().state(), &T::replayed(&store, &stream));
    }
}

#[test]
fn deleted_streams_are_refused_then_erased_with_an_audit_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), store_opts(eager().interval(None))).unwrap();
    load(&store, 40, 80);
    let gone = "acct-7";
    let before = store.read_stream(gone, 0, usize::MAX).unwrap();
    assert_eq!(before.len(), 80);
    // Its snapshot goes too.
    let mut t = store.load::<Tally>(gone).unwrap();
    store.snapshot(&mut t).unwrap();
    store.flush_snapshots().unwrap();
    let sidecar = dir.path().join(format!("p{:05}", store.partition_of(gone))).join("snapshots.snap");
    let holds = |needle: &[u8]| std::fs::read(&sidecar).unwrap().windows(needle.len()).any(|w| w == needle);
    assert!(holds(gone.as_bytes()));
    assert!(store.delete_stream(gone).unwrap());
    assert!(!store.delete_stream(gone).unwrap(), "deleting twice is a no-op");
    assert!(matches!(store.read_stream(gone, 0, 10), Err(Error::StreamDeleted { .. })));
    assert!(matches!(store.stream_version(gone), Err(Error::StreamDeleted { .. })));
    let err = store.append(gone, ExpectedVersion::Any, &[ev("Moved", b"again".to_vec())]).unwrap_err();
    assert!(matches!(err, Error::StreamDeleted { .. }), "{err}");
    // Until compaction the events are still in partition reads, like any event.
    let p = store.partition_of(gone);
    let in_log =
        |store: &Store| store.read_partition(p, 0, usize::MAX).unwrap().iter().filter(|e| e.stream_id == gone).count();
    assert_eq!(in_log(&store), 80);
    // Archive everything sealed so far (erasing), then delete a second stream whose events
    // are in archives only: its archives are rewritten.
    let r = store.compact().unwrap();
    let sealed_erased = r.events_erased;
    assert!(sealed_erased > 0, "{r:?}");
    assert_eq!(r.snapshots_erased, 1, "{r:?}");
    assert!(!holds(gone.as_bytes()), "the sidecar still names the deleted stream");
    assert!(r.skipped.is_empty(), "{r:?}");
    assert_eq!(in_log(&store) as u64, 80 - sealed_erased, "events left only in the active segment");
    let gone2 = "acct-8";
    assert!(store.delete_stream(gone2).unwrap());
    let r = store.compact().unwrap();
    assert!(r.archives_rewritten > 0 && r.events_erased > 0, "{r:?}");
    let others_before: Vec<_> = (0..40).filter(|s| *s != 7 && *s != 8).map(|s| format!("acct-{s}")).collect();
    let expect: Vec<_> = others_before.iter().map(|s| store.read_stream(s, 0, usize::MAX).unwrap()).collect();
    drop(store);
    let store = Store::open(dir.path(), store_opts(eager())).unwrap();
    assert!(matches!(store.read_stream(gone, 0, 10), Err(Error::StreamDeleted { .. })), "deletion survives a reopen");
    let got: Vec<_> = others_before.iter().map(|s| store.read_stream(s, 0, usize::MAX).unwrap()).collect();
    assert_eq!(got, expect);
    let erased: u64 = store.storage().unwrap().iter().map(|s| s.erased_events).sum();
    assert!(erased >= sealed_erased + r.events_erased, "audit records count every erased event: {erased}");
    // The erased bytes are gone from every archive: no decompressed block holds them.
    for path in files(dir.path(), "arc") {
        let bytes = std::fs::read(&path).unwrap();
        let text = archive_text(&bytes);
        assert!(!text.contains(r#""account":"acct-7""#), "{} still holds acct-7", path.display());
    }
}

/// A store with sealed segments, and a copy of it compacted: the files before and after.
fn before_and_after() -> (tempfile::TempDir, PathBuf, PathBuf, Seen) {
    let root = tempfile::tempdir().unwrap();
    let before = root.path().join("before");
    let store = Store::open(&before, store_opts(eager())).unwrap();
    load(&store, 50, 120);
    let expected = seen(&store, 50);
    drop(store);
    let after = root.path().join("after");
    copy_dir(&before, &after);
    let store = Store::open(&after, store_opts(eager())).unwrap();
    store.compact().unwrap();
    drop(store);
    (root, before, after, expected)
}

/// Builds the crash state "these archives written, these segments still there" in `at`,
/// opens it, and checks that every read is as before and the report says what was done.
fn check_crash_state(at: &Path, before: &Path, after: &Path, archives: usize, segments_kept: usize, expected: &Seen) {
    let _ = std::fs::remove_dir_all(at);
    copy_dir(before, at);
    let p = at.join("p00000");
    let new_archives: Vec<PathBuf> = std::fs::read_dir(after.join("p00000"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|x| x.extension().is_some_and(|e| e == "arc"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for a in new_archives.iter().take(archives) {
        std::fs::copy(a, p.join(a.file_name().unwrap())).unwrap();
    }
    // Remove the first segments (those the archives replace), keeping `segments_kept`.
    let replaced: Vec<PathBuf> = segments(before, 0)
        .into_iter()
        .filter(|s| !after.join("p00000").join(s.file_name().unwrap()).exists())
        .collect();
    for s in replaced.iter().take(replaced.len() - segments_kept) {
        let _ = std::fs::remove_file(p.join(s.file_name().unwrap()));
        let _ = std::fs::remove_file(p.join(s.file_name().unwrap()).with_extension("idx"));
    }
    let all_archives = archives >= new_archives.len();
    let store = Store::open(at, store_opts(eager())).unwrap();
    assert_eq!(&seen(&store, 50), expected, "archives {archives}, segments kept {segments_kept}");
    let report = store.recovery_report();
    let finished = report.iter().any(|r| matches!(r, RecoveryAction::CompactionFinished { .. }));
    let rolled_back = report.iter().any(|r| matches!(r, RecoveryAction::CompactionRolledBack { .. }));
    if archives == 0 {
        assert!(!finished && !rolled_back, "{report:?}");
    } else if all_archives && segments_kept > 0 {
        assert!(finished && !rolled_back, "archives {archives}, kept {segments_kept}: {report:?}");
    } else if !all_archives {
        assert!(rolled_back && !finished, "archives {archives}, kept {segments_kept}: {report:?}");
    }
    drop(store);
    // And the repaired store opens cleanly, reading the same.
    let store = Store::open(at, store_opts(eager())).unwrap();
    assert!(store.recovery_report().iter().all(|r| !matches!(
        r,
        RecoveryAction::CompactionFinished { .. } | RecoveryAction::CompactionRolledBack { .. }
    )));
    assert_eq!(&seen(&store, 50), expected);
}

#[test]
fn a_crash_at_every_step_of_a_compaction_is_finished_or_rolled_back() {
    let (root, before, after, expected) = before_and_after();
    let archives = files(&after, "arc").iter().filter(|p| p.starts_with(after.join("p00000"))).count();
    let replaced = segments(&before, 0).len() - segments(&after, 0).len();
    assert!(archives >= 3 && replaced >= 2, "{archives} archives for {replaced} segments");
    let at = root.path().join("crashed");
    // Archives written one by one (all segments there), then segments removed one by one.
    for k in 0..=archives {
        check_crash_state(&at, &before, &after, k, replaced, &expected);
    }
    for kept in (0..replaced).rev() {
        check_crash_state(&at, &before, &after, archives, kept, &expected);
    }
    // A torn temporary archive is removed.
    copy_dir(&before, &at.join("tmp"));
    let tmp = at.join("tmp/p00000").join("00000000000000000000.arc.tmp");
    std::fs::write(&tmp, b"STRATARC half an archive").unwrap();
    let store = Store::open(at.join("tmp"), store_opts(eager())).unwrap();
    assert!(!tmp.exists());
    assert_eq!(seen(&store, 50), expected);
}

#[test]
fn a_damaged_archive_gives_typed_errors_never_a_panic() {
    let (root, _before, after, _expected) = before_and_after();
    let arcs = files(&after, "arc");
    let first = arcs.iter().find(|p| p.starts_with(after.join("p00000"))).unwrap().clone();
    // A flipped byte in the first block: reads through it say corruption, with the file.
    let bytes = std::fs::read(&first).unwrap();
    let dict_len = u32::from_le_bytes(bytes[52..56].try_into().unwrap()) as usize;
    let block_at = (64 + dict_len).div_ceil(8) * 8 + 10;
    let damaged = root.path().join("damaged");
    copy_dir(&after, &damaged);
    let target = damaged.join("p00000").join(first.file_name().unwrap());
    let mut b = bytes.clone();
    b[block_at] ^= 0x40;
    std::fs::write(&target, &b).unwrap();
    let store = Store::open(&damaged, store_opts(eager())).unwrap();
    // (Only reads that need the block: a partition read decompresses the blocks holding the
    // positions it returns, so the whole partition is read here.)
    let err = store.read_partition(0, 0, usize::MAX).unwrap_err();
    assert!(matches!(&err, Error::Corruption { path, .. } if path == &target), "{err}");
    drop(store);
    // Every other byte position of the footer and meta section: open fails or reads fail,
    // typed, never a panic. (Truncations too.)
    let len = bytes.len();
    for cut in [len - 1, len - 64, len / 2, 70, 10] {
        std::fs::write(&target, &bytes[..cut]).unwrap();
        match Store::open(&damaged, store_opts(eager())) {
            Ok(store) => {
                let err = store.read_partition(0, 0, 10).unwrap_err();
                assert!(matches!(err, Error::Corruption { .. }), "cut at {cut}: {err}");
            }
            Err(e) => assert!(matches!(e, Error::Corruption { .. }), "cut at {cut}: {e}"),
        }
    }
    for at in (len - 200..len).step_by(7) {
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        std::fs::write(&target, &b).unwrap();
        if let Ok(store) = Store::open(&damaged, store_opts(eager())) {
            let _ = store.read_partition(0, 0, usize::MAX);
            let _ = store.read_stream("acct-1", 0, usize::MAX);
        }
    }
}

#[test]
fn compaction_while_appending_and_projecting() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), store_opts(eager())).unwrap());
    let engine = ProjectionEngine::new(store.clone(), 2);
    let counter = Arc::new(StreamOrder::default());
    engine.register("counter", counter.clone(), ProjectionOptions::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let store = store.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) || n < 400 {
                    let stream = format!("w{w}-{}", n % 25);
                    store.append(&stream, ExpectedVersion::Any, &[ev("Moved", json(&stream, n))]).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut compactions = 0;
    let mut archived = 0;
    while compactions < 20 || archived < 3 {
        let r = store.compact().unwrap();
        archived += r.segments_archived;
        compactions += 1;
        // A rebuild-like reader going through archives while they are being made.
        let _ = store.read_partition(0, 0, 500).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(compactions < 2000, "no segment was ever archived");
    }
    stop.store(true, Ordering::Relaxed);
    let total: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(engine.wait_caught_up("counter", Duration::from_secs(60)).unwrap());
    assert_eq!(counter.violations.load(Ordering::Relaxed), 0);
    let counts = counter.next.lock().unwrap().clone();
    assert_eq!(counts.values().sum::<u64>(), total);
    for (stream, n) in counts {
        assert_eq!(store.stream_version(&stream).unwrap(), Some(n - 1), "{stream}");
        assert_eq!(store.read_stream(&stream, 0, usize::MAX).unwrap().len() as u64, n);
    }
    // A rebuild from position 0 reads the archives.
    engine.rebuild("counter", Arc::new(StreamOrder::default())).unwrap();
    engine.stop().unwrap();
}

#[test]
fn verify_reads_back_everything_and_names_damage() {
    let (root, _before, after, _expected) = before_and_after();
    let store = Store::open(&after, store_opts(eager())).unwrap();
    assert!(store.verify().is_empty(), "{:?}", store.verify());
    drop(store);
    // A flipped byte inside an archive's last block.
    let damaged = root.path().join("damaged");
    copy_dir(&after, &damaged);
    let arc = files(&damaged, "arc")[0].clone();
    let mut bytes = std::fs::read(&arc).unwrap();
    let meta = u64::from_le_bytes(bytes[bytes.len() - 64..bytes.len() - 56].try_into().unwrap()) as usize;
    bytes[meta - 20] ^= 0x10;
    std::fs::write(&arc, &bytes).unwrap();
    let store = Store::open(&damaged, store_opts(eager())).unwrap();
    let problems = store.verify();
    assert!(problems.iter().any(|e| matches!(e, Error::Corruption { path, .. } if path == &arc)), "{problems:?}");
}

/// A deleted stream's events at the very end of the log, erased: a projection reading from
/// the start reaches the head (the positions are a gap, not work it waits on forever).
#[test]
fn a_projection_passes_positions_erased_at_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(1, 64 << 10).compaction(eager())).unwrap());
    for i in 0..100u64 {
        store.append("kept", ExpectedVersion::Any, &[ev("Moved", json("kept", i))]).unwrap();
    }
    // The deleted stream's events end the first segment. The writer rolls at the start of
    // the group after the segment is full: an append refused because the stream is deleted
    // rolls it, so the next segment starts empty.
    let mut n = 0;
    while store.write_stats().bytes < 64 << 10 {
        store.append("gone", ExpectedVersion::Any, &[ev("Moved", vec![b'x'; 1000])]).unwrap();
        n += 1;
        assert!(n < 200);
    }
    assert!(store.delete_stream("gone").unwrap());
    let refused = store.append("gone", ExpectedVersion::Any, &[ev("Moved", b"late".to_vec())]).unwrap_err();
    assert!(matches!(refused, Error::StreamDeleted { .. }), "{refused}");
    assert_eq!(segments(dir.path(), 0).len(), 2, "the refused append rolled the segment");
    let mut erased = 0;
    for _ in 0..500 {
        erased += store.compact().unwrap().events_erased;
        if erased > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10)); // until the sealer has sealed it
    }
    assert_eq!(erased, n);
    let engine = ProjectionEngine::new(store.clone(), 1);
    let counter = Arc::new(StreamOrder::default());
    engine.register("fresh", counter.clone(), ProjectionOptions::default()).unwrap();
    assert!(engine.wait_caught_up("fresh", Duration::from_secs(20)).unwrap(), "stuck before the erased tail");
    assert_eq!(counter.next.lock().unwrap().get("kept"), Some(&100));
    engine.stop().unwrap();
}

/// A damaged sealed segment is reported in the compaction report and left alone; the other
/// partitions (and the rest of its own) are still compacted.
#[test]
fn a_damaged_segment_does_not_stop_compaction_elsewhere() {
    let (root, before, _after, _expected) = before_and_after();
    let damaged = root.path().join("damaged-segment");
    copy_dir(&before, &damaged);
    let seg = segments(&damaged, 0)[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = batch_offsets(&bytes)[3] + 60;
    bytes[at] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    let store = Store::open(&damaged, store_opts(eager())).unwrap();
    let r = store.compact().unwrap();
    assert!(r.skipped.iter().any(|s| s.contains("00000000000000000000.log")), "{r:?}");
    let storage = store.storage().unwrap();
    assert!(storage[1].archives > 0, "{storage:?}");
    assert!(storage[0].archives > 0, "the segments after the damaged one are archived: {storage:?}");
    assert!(seg.exists());
}
