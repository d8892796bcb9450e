//! The read side: stream metadata (retention rules, soft delete) on every read path,
//! subscriptions (catch-up then live, filters, cursors, grows, async), category and
//! event-type reads, loads as of a point in time.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use common::{ev, opts};
use strata::subscription::{Cursor, Filter};
use strata::{
    Aggregate, ApplyError, AsOf, Durability, Error, ExpectedVersion, Options, RecordedEvent, SnapshotIgnored,
    SnapshotUse, Store, StreamMetadata,
};

fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

fn append_n(store: &Store, stream: &str, n: u64) {
    for _ in 0..n {
        store.append(stream, ExpectedVersion::Any, &[ev("Tick", stream.to_string())]).unwrap();
    }
}

/// Sums the payloads (decimal numbers) of its events.
#[derive(Default, Debug)]
struct Sum(u64, u64);

impl Aggregate for Sum {
    const SNAPSHOT_EVERY: u64 = 4;
    const SCHEMA: u32 = 1;
    fn apply(&mut self, e: &RecordedEvent) -> Result<(), ApplyError> {
        self.0 += std::str::from_utf8(&e.payload)?.parse::<u64>().unwrap_or(1);
        self.1 += 1;
        Ok(())
    }
    fn encode(&self) -> Vec<u8> {
        [self.0.to_le_bytes(), self.1.to_le_bytes()].concat()
    }
    fn decode(_: u32, b: &[u8]) -> Option<Self> {
        Some(Sum(u64::from_le_bytes(b.get(..8)?.try_into().ok()?), u64::from_le_bytes(b.get(8..16)?.try_into().ok()?)))
    }
}

#[test]
fn metadata_hides_by_count_truncation_and_age_on_every_stream_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(2, 1 << 20)).unwrap();
    append_n(&store, "s-1", 10);
    let meta = StreamMetadata { max_count: Some(4), ..Default::default() };
    let r = store.set_stream_metadata("s-1", ExpectedVersion::NoStream, meta).unwrap();
    assert_eq!(r.version, 0);
    assert_eq!(versions(&store.read_stream("s-1", 0, 100).unwrap()), [6, 7, 8, 9]);
    assert_eq!(versions(&store.read_stream_backward("s-1", None, 100).unwrap()), [9, 8, 7, 6]);
    assert_eq!(versions(&store.read_stream("s-1", 8, 100).unwrap()), [8, 9]);
    // The version is still the stream's own: appends continue it.
    assert_eq!(store.stream_version("s-1").unwrap(), Some(9));
    append_n(&store, "s-1", 1);
    assert_eq!(versions(&store.read_stream("s-1", 0, 100).unwrap()), [7, 8, 9, 10]);

    // A stale metadata version writes nothing.
    let tb = StreamMetadata { truncate_before: Some(9), ..Default::default() };
    let err = store.set_stream_metadata("s-1", ExpectedVersion::NoStream, tb.clone()).unwrap_err();
    assert!(matches!(err, Error::WrongMetadataVersion { actual: Some(0), .. }), "{err}");
    assert_eq!(store.stream_metadata("s-1").unwrap().unwrap().metadata.max_count, Some(4));
    store.set_stream_metadata("s-1", ExpectedVersion::Exact(0), tb).unwrap();
    assert_eq!(versions(&store.read_stream("s-1", 0, 100).unwrap()), [9, 10]);

    // Age: the events before a pause are hidden once they are older than max_age.
    append_n(&store, "s-2", 3);
    std::thread::sleep(Duration::from_millis(400));
    append_n(&store, "s-2", 2);
    let age = StreamMetadata { max_age: Some(Duration::from_millis(300)), ..Default::default() };
    store.set_stream_metadata("s-2", ExpectedVersion::Any, age).unwrap();
    assert_eq!(versions(&store.read_stream("s-2", 0, 100).unwrap()), [3, 4]);
    assert_eq!(versions(&store.read_stream("s-2", 0, 1).unwrap()), [3]);
    assert_eq!(versions(&store.read_stream_backward("s-2", None, 100).unwrap()), [4, 3]);

    // Custom bytes come back as given; too many are refused.
    let custom = StreamMetadata { custom: b"{\"owner\":\"billing\"}".to_vec(), ..Default::default() };
    store.set_stream_metadata("s-3", ExpectedVersion::NoStream, custom.clone()).unwrap();
    assert_eq!(store.stream_metadata("s-3").unwrap().unwrap().metadata, custom);
    let big = StreamMetadata { custom: vec![0; strata::limits::MAX_STREAM_METADATA_BYTES + 1], ..Default::default() };
    assert!(matches!(store.set_stream_metadata("s-3", ExpectedVersion::Any, big), Err(Error::InvalidMetadata { .. })));

    // Durable: all of it holds after a reopen.
    drop(store);
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(versions(&store.read_stream("s-1", 0, 100).unwrap()), [9, 10]);
    assert_eq!(store.stream_metadata("s-1").unwrap().unwrap().version, 1);
    assert_eq!(store.stream_metadata("s-3").unwrap().unwrap().metadata, custom);
    assert_eq!(versions(&store.read_stream("s-2", 0, 100).unwrap()), [3, 4]);
}

#[test]
fn soft_delete_reads_as_empty_and_the_stream_can_be_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(2, 1 << 20)).unwrap();
    for i in 0..6 {
        store.append("acct-1", ExpectedVersion::Any, &[ev("Deposited", (10 * (i + 1)).to_string())]).unwrap();
    }
    append_n(&store, "acct-2", 2);
    let loaded = store.load::<Sum>("acct-1").unwrap();
    assert_eq!(loaded.state().0, 210);
    store.flush_snapshots().unwrap();
    let err = store.soft_delete("acct-1", ExpectedVersion::Exact(2)).unwrap_err();
    assert!(matches!(err, Error::WrongExpectedVersion { actual: Some(5), .. }), "{err}");
    let rec = store.soft_delete("acct-1", ExpectedVersion::Exact(5)).unwrap();
    assert!(rec.soft_deleted_at.is_some());
    assert!(store.is_soft_deleted("acct-1").unwrap());
    assert!(store.read_stream("acct-1", 0, 100).unwrap().is_empty());
    assert!(store.read_stream_backward("acct-1", None, 100).unwrap().is_empty());
    let mut ids: Vec<String> = store.streams().collect::<Result<_, _>>().unwrap();
    ids.sort();
    assert_eq!(ids, ["acct-2"]);
    // A load ignores the snapshot that folds the hidden events in, and stands at the last
    // version, so that a commit continues the stream.
    let mut loaded = store.load::<Sum>("acct-1").unwrap();
    assert_eq!((loaded.state().0, loaded.version()), (0, Some(5)));
    assert!(matches!(loaded.snapshot(), SnapshotUse::Ignored { reason: SnapshotIgnored::Retention, .. }));
    store.commit(&mut loaded, &[ev("Deposited", "7")]).unwrap();
    assert!(!store.is_soft_deleted("acct-1").unwrap());
    assert_eq!(versions(&store.read_stream("acct-1", 0, 100).unwrap()), [6]);
    let mut ids: Vec<String> = store.streams().collect::<Result<_, _>>().unwrap();
    ids.sort();
    assert_eq!(ids, ["acct-1", "acct-2"]);
    drop(loaded);
    drop(store);
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(store.load::<Sum>("acct-1").unwrap().state().0, 7);
    // A hard-deleted stream takes no metadata.
    store.delete_stream("acct-2").unwrap();
    assert!(matches!(store.soft_delete("acct-2", ExpectedVersion::Any), Err(Error::StreamDeleted { .. })));
}

#[test]
fn loads_as_of_a_version_or_a_time_and_reads_bounded_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20)).unwrap();
    let mut marks = Vec::new();
    for i in 1..=10u64 {
        store.append("acct-9", ExpectedVersion::Any, &[ev("Deposited", i.to_string())]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        marks.push(SystemTime::now());
        std::thread::sleep(Duration::from_millis(2));
    }
    // A snapshot at the end (every 4 events): as-of loads before it replay.
    store.load::<Sum>("acct-9").unwrap();
    store.flush_snapshots().unwrap();
    for v in 0..10u64 {
        let l = store.load_as_of::<Sum>("acct-9", AsOf::Version(v)).unwrap();
        assert_eq!((l.state().0, l.version()), ((1..=v + 1).sum(), Some(v)), "as of version {v}");
        let t = store.load_as_of::<Sum>("acct-9", AsOf::Time(marks[v as usize])).unwrap();
        assert_eq!((t.state().0, t.version()), ((1..=v + 1).sum(), Some(v)), "as of mark {v}");
        let read = store.read_stream_until("acct-9", 0, marks[v as usize], 100).unwrap();
        assert_eq!(read.len() as u64, v + 1);
    }
    let all = store.load_as_of::<Sum>("acct-9", AsOf::Version(100)).unwrap();
    assert_eq!(all.state().0, 55);
    let before = store.load_as_of::<Sum>("acct-9", AsOf::Time(SystemTime::UNIX_EPOCH)).unwrap();
    assert_eq!((before.state().0, before.version()), (0, None));
    // Compacted into archives, the same answers.
    store.compact().unwrap();
    let l = store.load_as_of::<Sum>("acct-9", AsOf::Version(4)).unwrap();
    assert_eq!(l.state().0, 15);
}

/// Reads everything a subscription delivers until it has `want` events or `timeout` passes.
fn drain(sub: &mut strata::Subscription<'_>, want: usize, timeout: Duration) -> Vec<RecordedEvent> {
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want && std::time::Instant::now() < deadline {
        out.extend(sub.next_batch(500, Duration::from_millis(50)).unwrap());
    }
    out
}

/// Every stream's versions in delivery order are 0, 1, 2, ... with no gap or repeat.
fn assert_stream_order(events: &[RecordedEvent]) -> BTreeMap<String, u64> {
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    for e in events {
        let n = next.entry(e.stream_id.clone()).or_insert(0);
        assert_eq!(e.version, *n, "stream {} delivered out of order or twice", e.stream_id);
        *n += 1;
    }
    next
}

#[test]
fn subscribe_all_catches_up_then_follows_live_without_gap_or_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(4, 64 << 10)).unwrap());
    for i in 0..2000 {
        store.append(&format!("s-{}", i % 37), ExpectedVersion::Any, &[ev("Old", vec![b'x'; 40])]).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 3000 {
                store.append(&format!("s-{}", n % 37), ExpectedVersion::Any, &[ev("New", vec![b'y'; 40])]).unwrap();
                n += 1;
            }
            n
        })
    };
    let mut sub = store.subscribe_all(Cursor::start(), Filter::all());
    let mut seen = drain(&mut sub, 2000, Duration::from_secs(20));
    let written = writer.join().unwrap();
    seen.extend(drain(&mut sub, 2000 + written - seen.len(), Duration::from_secs(20)));
    assert_eq!(seen.len(), 2000 + written);
    let per_stream = assert_stream_order(&seen);
    for (s, n) in per_stream {
        assert_eq!(Some(n - 1), store.stream_version(&s).unwrap());
    }
    assert_eq!(sub.lag().unwrap(), 0);
    assert!(sub.poll(10).unwrap().is_empty());
    // Resuming from the cursor sees only what comes after it.
    let cursor = Cursor::from_bytes(&sub.cursor().to_bytes()).unwrap();
    store.append("s-0", ExpectedVersion::Any, &[ev("Later", "z")]).unwrap();
    let mut again = store.subscribe_all(cursor, Filter::all());
    let later = drain(&mut again, 1, Duration::from_secs(5));
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].event_type, "Later");
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn filters_advance_the_cursor_past_what_they_skip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(3, 64 << 10)).unwrap();
    for i in 0..600u32 {
        let (stream, t) = match i % 3 {
            0 => (format!("order-{}", i % 10), "OrderPlaced"),
            1 => (format!("user-{}", i % 10), "Registered"),
            _ => (format!("order-{}", i % 10), "OrderPaid"),
        };
        store.append(&stream, ExpectedVersion::Any, &[ev(t, i.to_string())]).unwrap();
    }
    store.append("order", ExpectedVersion::Any, &[ev("OrderPlaced", "no category")]).unwrap();
    let mut orders = store.subscribe_all(Cursor::start(), Filter::category("order"));
    let got = drain(&mut orders, 400, Duration::from_secs(5));
    assert_eq!(got.len(), 400);
    assert!(got.iter().all(|e| e.stream_id.starts_with("order-")));
    // Past every event it judged: caught up, nothing to re-read after a restart.
    assert_eq!(orders.lag().unwrap(), 0);
    let heads = store.head_cursor().unwrap();
    assert_eq!(orders.cursor(), heads);

    let (placed, cursor) = store.read_event_type("OrderPlaced", &Cursor::start(), 1000).unwrap();
    assert_eq!(placed.len(), 201);
    assert_eq!(cursor, heads);
    let (page, next) = store.read_category("user", &Cursor::start(), 50).unwrap();
    assert_eq!(page.len(), 50);
    let (rest, _) = store.read_category("user", &next, 1000).unwrap();
    assert_eq!(rest.len(), 150);
    assert!(page.iter().chain(&rest).all(|e| e.event_type == "Registered"));
    let mut big = store.subscribe_all(Cursor::start(), Filter::predicate(|e| e.payload.len() == 3));
    assert_eq!(drain(&mut big, 501, Duration::from_secs(5)).len(), 500);
    let mut prefix = store.subscribe_all(Cursor::start(), Filter::stream_prefix("user-1"));
    assert_eq!(drain(&mut prefix, 21, Duration::from_secs(5)).len(), 20);
    let mut one = store.subscribe_partition(1, 0, Filter::all()).unwrap();
    let part1 = drain(&mut one, 10_000, Duration::from_millis(300));
    assert!(!part1.is_empty() && part1.iter().all(|e| e.partition == 1));
    assert!(matches!(store.subscribe_partition(3, 0, Filter::all()), Err(Error::NoSuchPartition { .. })));
}

#[test]
fn subscriptions_pass_over_deleted_and_hidden_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(2, 1 << 20)).unwrap();
    append_n(&store, "gone-1", 5);
    append_n(&store, "kept-1", 5);
    append_n(&store, "soft-1", 5);
    append_n(&store, "trim-1", 5);
    store.delete_stream("gone-1").unwrap();
    store.soft_delete("soft-1", ExpectedVersion::Any).unwrap();
    store
        .set_stream_metadata(
            "trim-1",
            ExpectedVersion::NoStream,
            StreamMetadata { max_count: Some(2), ..Default::default() },
        )
        .unwrap();
    let mut sub = store.subscribe_all(Cursor::start(), Filter::all());
    let got = drain(&mut sub, 8, Duration::from_secs(2));
    let mut by: HashMap<String, Vec<u64>> = HashMap::new();
    for e in &got {
        by.entry(e.stream_id.clone()).or_default().push(e.version);
    }
    assert_eq!(by.len(), 2, "{by:?}");
    assert_eq!(by["kept-1"], [0, 1, 2, 3, 4]);
    assert_eq!(by["trim-1"], [3, 4]);
    let (cat, _) = store.read_category("soft", &Cursor::start(), 100).unwrap();
    assert!(cat.is_empty());
}

#[test]
fn cursors_reject_foreign_and_damaged_bytes() {
    let c = Cursor::from_positions(vec![3, 1 << 40, 0, 17]);
    let bytes = c.to_bytes();
    assert_eq!(Cursor::from_bytes(&bytes).unwrap(), c);
    for i in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[i / 8] ^= 1 << (i % 8);
        assert!(matches!(Cursor::from_bytes(&b), Err(Error::InvalidCursor { .. })), "bit {i}");
    }
    for n in 0..bytes.len() {
        assert!(Cursor::from_bytes(&bytes[..n]).is_err(), "cut at {n}");
    }
    assert!(Cursor::from_bytes(b"hello").is_err());
}

#[test]
fn a_subscription_sees_each_event_once_in_stream_order_across_a_grow() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(2, 32 << 10)).unwrap());
    for i in 0..1500 {
        store.append(&format!("g-{}", i % 50), ExpectedVersion::Any, &[ev("Before", vec![b'b'; 30])]).unwrap();
    }
    let mut sub = store.subscribe_all(Cursor::start(), Filter::all());
    let mut seen = drain(&mut sub, 700, Duration::from_secs(10));
    let (saved, at_save) = (sub.cursor(), seen.len());
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..1500 {
                store.append(&format!("g-{}", i % 50), ExpectedVersion::Any, &[ev("During", vec![b'd'; 30])]).unwrap();
            }
        })
    };
    store.grow_partitions(5).unwrap();
    writer.join().unwrap();
    for i in 0..500 {
        store.append(&format!("g-{}", i % 50), ExpectedVersion::Any, &[ev("After", vec![b'a'; 30])]).unwrap();
    }
    // Going on with the subscription, and resuming a cursor saved before the grow, both
    // deliver every event once in stream order.
    seen.extend(drain(&mut sub, 3500 - seen.len(), Duration::from_secs(20)));
    assert_eq!(seen.len(), 3500);
    assert_stream_order(&seen);
    let mut resumed = store.subscribe_all(saved, Filter::all());
    let rest = drain(&mut resumed, 3500 - at_save, Duration::from_secs(20));
    assert_eq!(rest.len(), 3500 - at_save);
    let mut all = seen[..at_save].to_vec();
    all.extend(rest);
    assert_stream_order(&all);
    assert!(sub.poll(10).unwrap().is_empty());
}

#[test]
fn next_async_wakes_on_an_append_from_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(2, 1 << 20)).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let appender = {
        let store = store.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            store.append("late-1", ExpectedVersion::Any, &[ev("Arrived", "x")]).unwrap();
        })
    };
    let got = rt.block_on(async {
        let mut sub = store.subscribe_all(store.head_cursor().unwrap(), Filter::all());
        tokio::time::timeout(Duration::from_secs(10), sub.next_async(10)).await
    });
    appender.join().unwrap();
    let got = got.expect("woken within 10 s").unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].stream_id, "late-1");
}

#[test]
fn compaction_reclaims_what_metadata_hides_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 16 << 10)).unwrap();
    for i in 0..200u64 {
        for s in ["soft-1", "trim-1", "keep-1"] {
            store.append(s, ExpectedVersion::Any, &[ev("E", format!("{s}:{i}:{}", "x".repeat(40)))]).unwrap();
        }
    }
    store.soft_delete("soft-1", ExpectedVersion::Exact(199)).unwrap();
    store
        .set_stream_metadata(
            "trim-1",
            ExpectedVersion::NoStream,
            StreamMetadata { max_count: Some(10), ..Default::default() },
        )
        .unwrap();
    // Sealed segments holding only hidden batches of these streams are chosen for erasure.
    let report = store.compact().unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let sealed_events = report.events_archived + report.events_erased;
    assert!(report.events_erased > 200, "erased {} of {sealed_events}", report.events_erased);
    // What reads show did not change.
    assert!(store.read_stream("soft-1", 0, 1000).unwrap().is_empty());
    assert_eq!(versions(&store.read_stream("trim-1", 0, 1000).unwrap()), (190..200).collect::<Vec<_>>());
    assert_eq!(store.read_stream("keep-1", 0, 1000).unwrap().len(), 200);
    // Reclaimed is gone: loosening the rule brings back only what was not erased yet.
    store.set_stream_metadata("trim-1", ExpectedVersion::Exact(0), StreamMetadata::default()).unwrap();
    let back = store.read_stream("trim-1", 0, 1000).unwrap();
    assert!(back.len() < 200 && back.len() >= 10, "{} events of trim-1 after loosening", back.len());
    assert_eq!(back.last().unwrap().version, 199);
    // And the audit trail says what went.
    drop(store);
    let mut erased = 0;
    for f in strata::inspect::files(dir.path()).unwrap() {
        if let Ok(strata::inspect::Dump::Archive { audit, .. }) = strata::inspect::dump(&f, &Default::default()) {
            erased +=
                audit.iter().filter(|a| a.stream == "soft-1" || a.stream == "trim-1").map(|a| a.events).sum::<u64>();
        }
    }
    assert_eq!(erased, report.events_erased);
}

/// Category and event-type reads find their batches through the segment indexes and
/// event-type summaries (sealed, open and archived segments alike): page by page, they return
/// exactly what a filtered full scan finds, in the same order, and end with the cursor at the
/// heads.
#[test]
fn category_reads_through_the_indexes_match_a_filtered_scan() {
    use strata::compaction::CompactionOptions;
    let dir = tempfile::tempdir().unwrap();
    let compaction = CompactionOptions::default().retention(Duration::ZERO).require_snapshots(false).interval(None);
    let store = Store::open(dir.path(), opts(3, 8 << 10).compaction(compaction)).unwrap();
    let append = |from: u32, to: u32| {
        for i in from..to {
            let stream = match i % 7 {
                0 | 3 => format!("order-{}", i % 13),
                1 => format!("orderly-{}", i % 5),
                _ => format!("acct-{}", i % 17),
            };
            let n = 1 + (i % 3) as usize;
            let types = ["Placed", "Paid", "Shipped", "Noted"];
            let events: Vec<_> = (0..n).map(|k| ev(types[(i as usize + k) % 4], format!("{i}.{k}"))).collect();
            store.append(&stream, ExpectedVersion::Any, &events).unwrap();
        }
    };
    append(0, 900);
    // The older segments become archives; then more sealed segments and an open one.
    assert!(store.compact().unwrap().archives_written > 0);
    append(900, 1500);
    type Read = fn(&Store, &Cursor, usize) -> (Vec<RecordedEvent>, Cursor);
    let by_category: Read = |s, c, n| s.read_category("order", c, n).unwrap();
    let by_type: Read = |s, c, n| s.read_event_type("Shipped", c, n).unwrap();
    let keeps_category = |e: &strata::EventView<'_>| e.stream_id.starts_with("order-");
    let keeps_type = |e: &strata::EventView<'_>| e.event_type == "Shipped";
    for (read, keeps) in
        [(by_category, &keeps_category as &dyn Fn(&strata::EventView<'_>) -> bool), (by_type, &keeps_type)]
    {
        let mut reference = Vec::new();
        for p in 0..store.partition_count() {
            store
                .scan_partition(p, 0, usize::MAX, |e| {
                    if keeps(e) {
                        reference.push((e.partition, e.position, e.payload.to_vec()));
                    }
                    std::ops::ControlFlow::Continue(())
                })
                .unwrap();
        }
        assert!(reference.len() > 100);
        for page_size in [1usize, 7, 100, 10_000] {
            let (mut cursor, mut got) = (Cursor::start(), Vec::new());
            loop {
                let (page, next) = read(&store, &cursor, page_size);
                assert!(page.len() <= page_size);
                cursor = next;
                if page.is_empty() {
                    break;
                }
                got.extend(page.into_iter().map(|e| (e.partition, e.position, e.payload)));
            }
            let mut sorted = got.clone();
            sorted.sort();
            let mut want = reference.clone();
            want.sort();
            assert_eq!(sorted, want, "pages of {page_size}");
            // Within each partition, position order.
            for p in 0..3 {
                let positions: Vec<u64> = got.iter().filter(|e| e.0 == p).map(|e| e.1).collect();
                assert!(positions.windows(2).all(|w| w[0] < w[1]));
            }
            assert_eq!(cursor, store.head_cursor().unwrap(), "pages of {page_size}");
        }
    }
    // The open segment's type summary, built by the reads above, takes in what is appended
    // after it: a new type on a new stream and on an old one, and more of an old type.
    let end = store.head_cursor().unwrap();
    store.append("refund-1", ExpectedVersion::NoStream, &[ev("Refunded", "r1")]).unwrap();
    store.append("order-3", ExpectedVersion::Any, &[ev("Noted", "n"), ev("Refunded", "r2")]).unwrap();
    store.append("acct-2", ExpectedVersion::Any, &[ev("Shipped", "s1")]).unwrap();
    let payloads = |ty: &str| -> Vec<Vec<u8>> {
        let (page, _) = store.read_event_type(ty, &end, 100).unwrap();
        page.into_iter().map(|e| e.payload).collect()
    };
    let mut refunds = payloads("Refunded");
    refunds.sort();
    assert_eq!(refunds, [b"r1".to_vec(), b"r2".to_vec()]);
    assert_eq!(payloads("Shipped"), [b"s1".to_vec()]);
}

/// Metadata changes keep what a soft delete hid; a truncation beyond the delete point is kept
/// by the delete; `max_count: Some(0)` is refused with a typed error and changes nothing.
#[test]
fn soft_deletes_survive_later_metadata_and_bad_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20)).unwrap();
    append_n(&store, "cart-1", 5);
    store.soft_delete("cart-1", ExpectedVersion::Exact(4)).unwrap();
    let meta = StreamMetadata { max_count: Some(100), ..Default::default() };
    let rec = store.set_stream_metadata("cart-1", ExpectedVersion::Any, meta).unwrap();
    assert_eq!(rec.metadata.truncate_before, Some(5));
    assert!(store.read_stream("cart-1", 0, 100).unwrap().is_empty(), "the soft delete still hides v0..=4");
    append_n(&store, "cart-1", 2);
    assert_eq!(versions(&store.read_stream("cart-1", 0, 100).unwrap()), [5, 6]);

    append_n(&store, "cart-2", 3);
    let meta = StreamMetadata { truncate_before: Some(10), ..Default::default() };
    store.set_stream_metadata("cart-2", ExpectedVersion::NoStream, meta).unwrap();
    let rec = store.soft_delete("cart-2", ExpectedVersion::Any).unwrap();
    assert_eq!(rec.metadata.truncate_before, Some(10), "a soft delete never lowers a truncation");

    let zero = StreamMetadata { max_count: Some(0), ..Default::default() };
    let err = store.set_stream_metadata("cart-3", ExpectedVersion::Any, zero).unwrap_err();
    assert_eq!(err.kind(), strata::ErrorKind::InvalidMetadata, "{err}");
    assert_eq!(store.stream_metadata("cart-3").unwrap(), None);
}

/// A stream soft-deleted with all its events in sealed segments: compaction erases what the
/// delete hides but keeps the batch holding its last version, so after a reopen the stream's
/// version still continues, the recreated stream's events are visible, and a second
/// compaction erases none of them.
#[test]
fn compaction_after_a_soft_delete_keeps_the_streams_version() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), opts(1, 16 << 10)).unwrap();
        for i in 0..200u64 {
            store.append("soft-1", ExpectedVersion::Any, &[ev("E", format!("{i}:{}", "x".repeat(80)))]).unwrap();
        }
        store.soft_delete("soft-1", ExpectedVersion::Exact(199)).unwrap();
        // Fill on, so that every batch of soft-1 is in a sealed segment.
        append_n(&store, "other-1", 400);
        let report = store.compact().unwrap();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert_eq!(report.events_erased, 199, "all but the batch holding the last version");
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), opts(1, 16 << 10)).unwrap();
    assert_eq!(store.stream_version("soft-1").unwrap(), Some(199));
    assert!(store.read_stream("soft-1", 0, 1000).unwrap().is_empty());
    let r = store.append("soft-1", ExpectedVersion::Exact(199), &[ev("E", "again")]).unwrap();
    assert_eq!(r.first_version, 200);
    append_n(&store, "other-1", 400);
    let report = store.compact().unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(versions(&store.read_stream("soft-1", 0, 1000).unwrap()), [200]);
}

/// Under `Buffered` durability a subscription judges `max_count` against the stream's last
/// durable version: events not yet durable (which a crash may lose) do not push durable ones
/// out of what it delivers.
#[test]
fn max_count_in_a_subscription_counts_back_from_the_durable_end() {
    let dir = tempfile::tempdir().unwrap();
    let buffered = Durability::Buffered { sync_interval: Duration::from_secs(600) };
    {
        let store = Store::open(dir.path(), opts(1, 1 << 20).durability(buffered)).unwrap();
        append_n(&store, "s-1", 10);
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), opts(1, 1 << 20).durability(buffered)).unwrap();
    let meta = StreamMetadata { max_count: Some(2), ..Default::default() };
    store.set_stream_metadata("s-1", ExpectedVersion::NoStream, meta).unwrap();
    append_n(&store, "s-1", 5);
    // A read sees the buffered events: the newest two of 15.
    assert_eq!(versions(&store.read_stream("s-1", 0, 100).unwrap()), [13, 14]);
    // The subscription sees only the durable ten, and of those the newest two.
    let mut sub = store.subscribe_all(Cursor::start(), Filter::all());
    assert_eq!(versions(&sub.poll(100).unwrap()), [8, 9]);
}

/// What `visit_stream` hands over, copied out: it must be what `read_stream` returns.
fn visited(store: &Store, stream: &str, from: u64) -> Result<Vec<RecordedEvent>, Error> {
    let mut out = Vec::new();
    let n = store.visit_stream(stream, from, |e| {
        out.push(RecordedEvent {
            stream_id: e.stream_id.to_owned(),
            version: e.version,
            partition: e.partition,
            position: e.position,
            timestamp_nanos: e.timestamp_nanos,
            event_type: e.event_type.to_owned(),
            metadata: e.metadata.to_vec(),
            payload: e.payload.to_vec(),
            id: e.id,
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
        });
        std::ops::ControlFlow::Continue(())
    })?;
    assert_eq!(n, out.len(), "{stream}: visit_stream's count");
    Ok(out)
}

/// Checks `visit_stream` against `read_stream` for each stream from several versions, and
/// that a break stops it at once.
fn assert_visit_matches_read(store: &Store, streams: &[String]) {
    for s in streams {
        for from in [0, 1, 3, 7, 20, 1000] {
            let read = store.read_stream(s, from, usize::MAX).unwrap();
            assert_eq!(visited(store, s, from).unwrap(), read, "{s} from {from}");
            let mut seen = Vec::new();
            let n = store
                .visit_stream(s, from, |e| {
                    seen.push(e.version);
                    if seen.len() == 2 { std::ops::ControlFlow::Break(()) } else { std::ops::ControlFlow::Continue(()) }
                })
                .unwrap();
            assert_eq!(n, seen.len());
            assert_eq!(seen, versions(&read).into_iter().take(2).collect::<Vec<_>>(), "{s} from {from}, broken");
            // read_stream's limit, against the visit's order.
            assert_eq!(store.read_stream(s, from, 3).unwrap(), read.iter().take(3).cloned().collect::<Vec<_>>());
        }
    }
}

#[test]
fn visit_stream_shows_what_read_stream_shows_across_segments_metadata_and_archives() {
    use strata::compaction::CompactionOptions;
    let dir = tempfile::tempdir().unwrap();
    let compaction = CompactionOptions::default().retention(Duration::ZERO).require_snapshots(false).interval(None);
    // Small segments: each stream's events lie in several sealed segments and the open one.
    let store = Store::open(dir.path(), opts(2, 8 << 10).compaction(compaction)).unwrap();
    let streams: Vec<String> = (0..8).map(|i| format!("s-{i}")).collect();
    let append = |round: u64| {
        for (k, s) in streams.iter().enumerate() {
            // Batches of 1 to 3 events, some with ids, so that batches are cut inside.
            let n = 1 + (round as usize + k) % 3;
            let events: Vec<_> = (0..n)
                .map(|j| {
                    let e = ev(["A", "Bee", "A"][j], format!("{s}:{round}:{j}:{:>100}", ""))
                        .with_metadata(vec![j as u8; j]);
                    if (round + j as u64).is_multiple_of(2) {
                        e.with_id(strata::EventId::from_u128(u128::from(round) << 8 | j as u128 | (k as u128) << 32))
                    } else {
                        e
                    }
                })
                .collect();
            match store.append(s, ExpectedVersion::Any, &events) {
                Ok(_) | Err(Error::StreamDeleted { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
    };
    for round in 0..20 {
        append(round);
    }
    let sealed = common::segments(dir.path(), 0).len() + common::segments(dir.path(), 1).len();
    assert!(sealed > 4, "only {sealed} segments");
    assert_visit_matches_read(&store, &streams);

    // Metadata of every kind, a soft delete, a hard delete.
    store
        .set_stream_metadata("s-1", ExpectedVersion::Any, StreamMetadata { max_count: Some(5), ..Default::default() })
        .unwrap();
    store
        .set_stream_metadata(
            "s-2",
            ExpectedVersion::Any,
            StreamMetadata { truncate_before: Some(9), ..Default::default() },
        )
        .unwrap();
    store
        .set_stream_metadata(
            "s-3",
            ExpectedVersion::Any,
            StreamMetadata { max_count: Some(4), truncate_before: Some(2), ..Default::default() },
        )
        .unwrap();
    store.soft_delete("s-4", ExpectedVersion::Any).unwrap();
    assert!(store.delete_stream("s-5").unwrap());
    assert_eq!(versions(&store.read_stream("s-1", 0, 100).unwrap()).len(), 5);
    assert!(store.read_stream("s-4", 0, 100).unwrap().is_empty());
    assert!(matches!(visited(&store, "s-5", 0), Err(Error::StreamDeleted { .. })));
    let live: Vec<String> = streams.iter().filter(|s| *s != "s-5").cloned().collect();
    assert_visit_matches_read(&store, &live);

    // Age: events before a pause are hidden.
    std::thread::sleep(Duration::from_millis(300));
    append(20);
    store
        .set_stream_metadata(
            "s-6",
            ExpectedVersion::Any,
            StreamMetadata { max_age: Some(Duration::from_millis(200)), ..Default::default() },
        )
        .unwrap();
    let recent = store.read_stream("s-6", 0, 100).unwrap();
    assert!(!recent.is_empty() && recent.len() <= 3, "{:?}", versions(&recent));
    assert_visit_matches_read(&store, &live);

    // Through archives: the older segments are compacted, and more is appended after.
    assert!(store.compact().unwrap().archives_written > 0);
    for round in 21..24 {
        append(round);
    }
    assert_visit_matches_read(&store, &live);
    // And after a reopen.
    drop(store);
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_visit_matches_read(&store, &live);
    assert!(matches!(
        store.visit_stream("", 0, |_| std::ops::ControlFlow::Continue(())),
        Err(Error::InvalidStreamId { .. })
    ));
    assert_eq!(store.visit_stream("no-such-stream", 0, |_| std::ops::ControlFlow::Continue(())).unwrap(), 0);
}

/// The open segment's index is walked a chunk of batches at a time: reads that start, end or
/// are cut at any batch of a long stream there see every event once.
#[test]
fn stream_reads_of_a_long_stream_in_the_open_segment() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 64 << 20)).unwrap();
    append_n(&store, "other", 3);
    for i in 0..150u64 {
        let n = 1 + (i % 2) as usize;
        store.append("long", ExpectedVersion::Any, &vec![ev("Tick", i.to_string()); n]).unwrap();
        store.append("other", ExpectedVersion::Any, &[ev("Tock", i.to_string())]).unwrap();
    }
    let all = store.read_stream("long", 0, usize::MAX).unwrap();
    assert_eq!(versions(&all), (0..225).collect::<Vec<_>>());
    assert_visit_matches_read(&store, &["long".to_string(), "other".to_string()]);
    for from in [0u64, 30, 31, 32, 33, 47, 48, 49, 95, 96, 97, 200, 224, 225] {
        assert_eq!(visited(&store, "long", from).unwrap(), all.get(from as usize..).unwrap_or(&[]), "from {from}");
        for limit in [0usize, 1, 31, 32, 33, 64, 65, 100] {
            let got = store.read_stream("long", from, limit).unwrap();
            let want: Vec<_> = all.iter().skip(from as usize).take(limit).cloned().collect();
            assert_eq!(got, want, "from {from}, limit {limit}");
        }
    }
}
