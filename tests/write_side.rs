//! The write side: idempotent appends (event ids), atomic appends across co-located streams,
//! and correlation/causation ids: retries in every shape (at once, after reopen, partial,
//! outside the window, from eight threads), units all or nothing, and grows keeping
//! co-located streams together. The kill -9 test of retries is in `crash.rs`.

mod common;

use std::sync::{Arc, Barrier};

use common::*;
use strata::{Error, EventData, EventId, ExpectedVersion, Options, Store};

fn with_ids(command: u128, stream: &str, n: usize) -> Vec<EventData> {
    (0..n)
        .map(|i| {
            EventData::new("E", format!("{command}:{i}")).with_id(EventId::derive(
                EventId::from_u128(command),
                stream,
                i as u64,
            ))
        })
        .collect()
}

#[test]
fn a_retry_returns_the_first_result_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(2, 1 << 20)).unwrap();
    let events = with_ids(1, "acct-1", 3);
    let first = store.append("acct-1", ExpectedVersion::NoStream, &events).unwrap();
    assert!(!first.duplicate);
    store.append("acct-1", ExpectedVersion::Exact(2), &with_ids(2, "acct-1", 1)).unwrap();
    // The retry's expected version is stale: it is a retry, not a conflict.
    let retry = store.append("acct-1", ExpectedVersion::NoStream, &events).unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        (retry.partition, retry.first_position, retry.first_version, retry.last_version, retry.timestamp_nanos),
        (first.partition, first.first_position, first.first_version, first.last_version, first.timestamp_nanos)
    );
    assert_eq!(store.stream_version("acct-1").unwrap(), Some(3));
    let read = store.read_stream("acct-1", 0, 10).unwrap();
    assert_eq!(read.len(), 4);
    assert_eq!(read[0].id, events[0].id);
    assert_eq!(read[3].id, Some(EventId::derive(EventId::from_u128(2), "acct-1", 0)));
    // The same retry through append_many and append_async.
    let many = store.append_many([("acct-1", ExpectedVersion::Any, events.clone())]);
    assert!(many.into_iter().next().unwrap().wait().unwrap().duplicate);
    assert!(store.append_async("acct-1", ExpectedVersion::Any, &events).wait().unwrap().duplicate);
    assert_eq!(store.stream_version("acct-1").unwrap(), Some(3));
}

#[test]
fn a_retry_after_reopen_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let mut firsts = Vec::new();
    {
        // Small segments: the window reaches back over sealed segments too.
        let store = Store::open(dir.path(), opts(1, 4096)).unwrap();
        for c in 0..200u128 {
            let s = format!("acct-{}", c % 7);
            firsts.push(store.append(&s, ExpectedVersion::Any, &with_ids(c, &s, 1 + c as usize % 3)).unwrap());
        }
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let head = store.head(0).unwrap();
    for c in (0..200u128).rev() {
        let s = format!("acct-{}", c % 7);
        let r = store.append(&s, ExpectedVersion::Any, &with_ids(c, &s, 1 + c as usize % 3)).unwrap();
        assert!(r.duplicate, "command {c}");
        assert_eq!(r.first_position, firsts[c as usize].first_position);
        assert_eq!(r.first_version, firsts[c as usize].first_version);
    }
    assert_eq!(store.head(0).unwrap(), head, "a retry wrote");
}

#[test]
fn a_partial_match_is_a_conflict_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20)).unwrap();
    let events = with_ids(1, "s", 3);
    store.append("s", ExpectedVersion::NoStream, &events).unwrap();
    let head = store.head(0).unwrap();
    // A prefix, a longer list, another order, one new id among old ones, another stream.
    let mut longer = events.clone();
    longer.extend(with_ids(9, "s", 1));
    let reordered = vec![events[1].clone(), events[0].clone(), events[2].clone()];
    let mixed = vec![with_ids(5, "s", 1).remove(0), events[1].clone()];
    let attempts: Vec<(&str, Vec<EventData>)> = vec![
        ("s", events[..2].to_vec()),
        ("s", events[1..].to_vec()),
        ("s", longer),
        ("s", reordered),
        ("s", mixed),
        ("other", events.clone()),
    ];
    for (i, (stream, evs)) in attempts.into_iter().enumerate() {
        match store.append(stream, ExpectedVersion::Any, &evs) {
            Err(Error::IdempotencyConflict { stream: s, reason }) => {
                assert_eq!(s, stream);
                assert!(!reason.is_empty());
            }
            other => panic!("attempt {i}: {other:?}"),
        }
    }
    assert_eq!(store.head(0).unwrap(), head);
    // Events without ids, or only some with ids, are ordinary appends.
    let some = vec![events[0].clone(), EventData::new("E", "no id")];
    assert!(!store.append("s", ExpectedVersion::Any, &some).unwrap().duplicate);
}

#[test]
fn outside_the_window_the_expected_version_decides() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20).idempotency_window(3, 100)).unwrap();
    let events = with_ids(1, "s", 1);
    store.append("s", ExpectedVersion::NoStream, &events).unwrap();
    for c in 2..4u128 {
        store.append("t", ExpectedVersion::Any, &with_ids(c, "t", 1)).unwrap();
    }
    // Three appends since: still inside.
    assert!(store.append("s", ExpectedVersion::NoStream, &events).unwrap().duplicate);
    store.append("t", ExpectedVersion::Any, &[EventData::new("E", "no ids count too")]).unwrap();
    match store.append("s", ExpectedVersion::NoStream, &events) {
        Err(Error::WrongExpectedVersion { actual: Some(0), .. }) => {}
        other => panic!("{other:?}"),
    }
    // With `Any` it is written again: that is what the window bounds.
    let again = store.append("s", ExpectedVersion::Any, &events).unwrap();
    assert!(!again.duplicate);
    assert_eq!(again.first_version, 1);
    // The window bound survives reopen: the same retry, now in the window again, and an old one not.
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default().idempotency_window(3, 100)).unwrap();
    assert!(store.append("s", ExpectedVersion::Any, &events).unwrap().duplicate);
    let old = with_ids(2, "t", 1);
    assert!(!store.append("t", ExpectedVersion::Any, &old).unwrap().duplicate);
    // A window of 0 switches idempotency off.
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default().idempotency_window(0, 0)).unwrap();
    assert!(!store.append("s", ExpectedVersion::Any, &events).unwrap().duplicate);
}

#[test]
fn eight_threads_retrying_one_append_write_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(2, 1 << 20)).unwrap());
    for round in 0..50u128 {
        let stream = format!("acct-{round}");
        let events = Arc::new(with_ids(round, &stream, 2));
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (store, events, barrier, stream) = (store.clone(), events.clone(), barrier.clone(), stream.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.append(&stream, ExpectedVersion::NoStream, &events).unwrap()
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1, "round {round}: {results:?}");
        assert!(results.iter().all(|r| r.first_position == results[0].first_position && r.first_version == 0));
        assert_eq!(store.stream_version(&stream).unwrap(), Some(1));
    }
}

#[test]
fn correlation_and_causation_travel_with_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20)).unwrap();
    let root = EventData::new("OrderPlaced", "{}").with_id(EventId::from_u128(10));
    store.append("order-1", ExpectedVersion::NoStream, &[root]).unwrap();
    let parent = store.read_stream("order-1", 0, 1).unwrap().remove(0);
    let child = EventData::new("StockReserved", "{}").with_id(EventId::from_u128(11)).caused_by(&parent);
    store.append("stock-1", ExpectedVersion::NoStream, &[child]).unwrap();
    let child = store.read_stream("stock-1", 0, 1).unwrap().remove(0);
    let grandchild = EventData::new("Shipped", "{}").caused_by(&child);
    assert_eq!(grandchild.causation_id, Some(EventId::from_u128(11)));
    assert_eq!(grandchild.correlation_id, Some(EventId::from_u128(10)));
    store.append("ship-1", ExpectedVersion::NoStream, &[grandchild]).unwrap();
    let all = store.read_partition(0, 0, 10).unwrap();
    let got: Vec<_> = all.iter().map(|e| (e.id, e.correlation_id, e.causation_id)).collect();
    let id = |n| Some(EventId::from_u128(n));
    assert_eq!(got, vec![(id(10), None, None), (id(11), id(10), id(10)), (None, id(10), id(11))]);
}

#[test]
fn atomic_appends_are_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(8, 1 << 20)).unwrap();
    let a = "{order-17}/payments";
    let b = "{order-17}/shipping";
    let c = "{order-17}/invoices";
    assert_eq!(store.partition_of(a), store.partition_of(b));
    let p = store.partition_of(a);
    let done = store
        .append_atomic([
            (a, ExpectedVersion::NoStream, vec![EventData::new("Paid", "1"), EventData::new("Paid", "2")]),
            (b, ExpectedVersion::NoStream, vec![EventData::new("Requested", "3")]),
        ])
        .unwrap();
    assert_eq!((done[0].first_position, done[1].first_position), (done[0].first_position, done[0].first_position + 2));
    // One wrong version fails the whole unit, naming its stream.
    let head = store.head(p).unwrap();
    let clash = store.append_atomic([
        (c, ExpectedVersion::NoStream, vec![EventData::new("Issued", "4")]),
        (a, ExpectedVersion::NoStream, vec![EventData::new("Paid", "5")]),
    ]);
    match clash {
        Err(Error::WrongExpectedVersion { stream, .. }) => assert_eq!(stream, a),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.head(p).unwrap(), head);
    assert_eq!(store.stream_version(c).unwrap(), None);
    // Streams of different partitions, or one stream twice, are refused with the reason.
    let far = (0..100).map(|i| format!("order-{i}")).find(|s| store.partition_of(s) != p).unwrap();
    match store.append_atomic([
        (a, ExpectedVersion::Any, vec![ev("x", "")]),
        (far.as_str(), ExpectedVersion::Any, vec![ev("x", "")]),
    ]) {
        Err(Error::NotColocated { reason }) => assert!(reason.contains("co-location key"), "{reason}"),
        other => panic!("{other:?}"),
    }
    match store
        .append_atomic([(a, ExpectedVersion::Any, vec![ev("x", "")]), (a, ExpectedVersion::Any, vec![ev("x", "")])])
    {
        Err(Error::NotColocated { reason }) => assert!(reason.contains("twice"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.append_atomic(Vec::<(&str, ExpectedVersion, Vec<EventData>)>::new()),
        Err(Error::EmptyAppend)
    ));
    assert_eq!(store.head(p).unwrap(), head);
    // The unit is contiguous in the partition, and survives reopen whole.
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let run = store.read_partition(p, done[0].first_position, 3).unwrap();
    let streams: Vec<_> = run.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(streams, vec![a, a, b]);
}

#[test]
fn an_atomic_unit_with_ids_is_retried_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(4, 1 << 20)).unwrap();
    let a = "{cart-1}/items";
    let b = "{cart-1}/totals";
    let unit =
        || [(a, ExpectedVersion::NoStream, with_ids(1, a, 2)), (b, ExpectedVersion::NoStream, with_ids(1, b, 1))];
    let first = store.append_atomic(unit()).unwrap();
    let retry = store.append_atomic(unit()).unwrap();
    assert!(retry.iter().all(|r| r.duplicate));
    assert_eq!(retry[0].first_position, first[0].first_position);
    assert_eq!(retry[1].first_position, first[1].first_position);
    // Half a retry: one part committed, one new.
    let half = store
        .append_atomic([(a, ExpectedVersion::Any, with_ids(1, a, 2)), (b, ExpectedVersion::Any, with_ids(2, b, 1))]);
    assert!(matches!(half, Err(Error::IdempotencyConflict { .. })), "{half:?}");
    assert_eq!(store.stream_version(b).unwrap(), Some(0));
}

#[test]
fn a_torn_atomic_unit_is_dropped_whole() {
    // Write a unit, then cut the segment file inside its second batch, as a crash during the
    // group's write leaves it: open drops the first batch too.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), opts(1, 1 << 20).preallocate(false)).unwrap();
        store.append("solo", ExpectedVersion::NoStream, &[ev("E", "before")]).unwrap();
        store
            .append_atomic([
                ("{k}/a", ExpectedVersion::NoStream, vec![ev("E", "a".repeat(100))]),
                ("{k}/b", ExpectedVersion::NoStream, vec![ev("E", "b".repeat(100))]),
            ])
            .unwrap();
        store.close().unwrap();
    }
    let seg = segments(dir.path(), 0).pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let offsets = batch_offsets(&bytes);
    assert_eq!(offsets.len(), 3);
    let journals: Vec<_> = std::fs::read_dir(seg.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "aix"))
        .collect();
    for j in journals {
        std::fs::remove_file(j).unwrap();
    }
    for cut in [offsets[2] + 10, bytes.len() - 8] {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let seg_copy = copy.path().join(seg.strip_prefix(dir.path()).unwrap());
        std::fs::OpenOptions::new().write(true).open(&seg_copy).unwrap().set_len(cut as u64).unwrap();
        let store = Store::open(copy.path(), Options::default()).unwrap();
        assert_eq!(store.head(0).unwrap(), 1, "cut at {cut}");
        assert_eq!(store.stream_version("{k}/a").unwrap(), None);
        assert!(
            store.recovery_report().iter().any(|r| matches!(r, strata::RecoveryAction::TruncatedTornTail { offset, .. } if *offset == offsets[1] as u64)),
            "{:?}",
            store.recovery_report()
        );
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn a_grow_keeps_co_located_streams_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(2, 8192)).unwrap();
    let keys: Vec<String> = (0..60).map(|i| format!("order-{i}")).collect();
    for k in &keys {
        store
            .append_atomic([
                (format!("{{{k}}}/payments"), ExpectedVersion::NoStream, vec![ev("Paid", k.clone())]),
                (format!("{{{k}}}/shipping"), ExpectedVersion::NoStream, vec![ev("Requested", k.clone())]),
            ])
            .unwrap();
    }
    let mut moved = 0;
    for count in [3, 5, 11] {
        let before: Vec<u32> = keys.iter().map(|k| store.partition_of(&format!("{{{k}}}/payments"))).collect();
        store.grow_partitions(count).unwrap();
        for (k, was) in keys.iter().zip(&before) {
            let pa = store.partition_of(&format!("{{{k}}}/payments"));
            assert_eq!(pa, store.partition_of(&format!("{{{k}}}/shipping")), "{k} split at {count} partitions");
            assert_eq!(pa, strata::routing::partition_for(&format!("{{{k}}}/shipping"), count));
            moved += usize::from(pa != *was);
            // Both streams are readable where they live, and can be written together there.
            let v = store.stream_version(&format!("{{{k}}}/payments")).unwrap().unwrap();
            store
                .append_atomic([
                    (format!("{{{k}}}/payments"), ExpectedVersion::Exact(v), vec![ev("Paid", "again")]),
                    (format!("{{{k}}}/shipping"), ExpectedVersion::Exact(v), vec![ev("Requested", "again")]),
                ])
                .unwrap();
        }
    }
    assert!(moved > 0, "no stream moved");
    assert!(store.verify().is_empty());
}

#[test]
fn a_command_is_committed_at_most_once() {
    use strata::{Command, CommandBus, bus::BusOptions};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(2, 1 << 20)).unwrap());
    // Store::commit_command: a retry with the same loaded state (already past the events)
    // and one with a stale state (loaded before the first commit) both get the first result.
    let cmd = EventId::from_u128(77);
    let events = || vec![EventData::new("Tick", "a"), EventData::new("Tick", "b")];
    let mut stale = store.load::<Tally<0, 1>>("t-1").unwrap();
    let mut loaded = store.load::<Tally<0, 1>>("t-1").unwrap();
    let first = store.commit_command(&mut loaded, cmd, events()).unwrap();
    let again = store.commit_command(&mut loaded, cmd, events()).unwrap();
    assert!(again.duplicate && again.first_position == first.first_position);
    let late = store.commit_command(&mut stale, cmd, events()).unwrap();
    assert!(late.duplicate);
    assert_eq!(*stale.state(), Tally::replayed(&store, "t-1"));
    assert_eq!(*loaded.state(), Tally::replayed(&store, "t-1"));
    assert_eq!(store.stream_version("t-1").unwrap(), Some(1));
    let e = store.read_stream("t-1", 0, 1).unwrap().remove(0);
    assert_eq!((e.id, e.causation_id), (Some(EventId::derive(cmd, "t-1", 0)), Some(cmd)));

    // The bus: a command with an id, sent twice (a client retry), is carried out once.
    struct Tick(EventId);
    impl Command for Tick {
        type Aggregate = Tally<0, 1>;
        fn stream(&self) -> &str {
            "t-2"
        }
        fn decide(&self, _: &Tally<0, 1>, _: Option<u64>) -> Result<Vec<EventData>, String> {
            Ok(vec![EventData::new("Tick", "x")])
        }
        fn id(&self) -> Option<EventId> {
            Some(self.0)
        }
        fn correlation_id(&self) -> Option<EventId> {
            Some(EventId::from_u128(5))
        }
    }
    let bus = CommandBus::new(store.clone(), None, BusOptions::default()).unwrap();
    let a = bus.execute(&Tick(EventId::from_u128(1))).unwrap().unwrap();
    let b = bus.execute(&Tick(EventId::from_u128(1))).unwrap().unwrap();
    assert!(!a.duplicate && b.duplicate && a.first_position == b.first_position);
    assert!(!bus.execute(&Tick(EventId::from_u128(2))).unwrap().unwrap().duplicate);
    let got = store.read_stream("t-2", 0, 10).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].correlation_id, Some(EventId::from_u128(5)));
    assert_eq!(got[0].causation_id, Some(EventId::from_u128(1)));
}
