//! The group-commit write path under concurrency: optimistic concurrency with many threads,
//! checks within one group, the async append, Buffered durability.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};

use common::*;
use strata::{Durability, Error, ExpectedVersion, Options, Store};

#[test]
fn many_threads_contending_exactly_one_winner_per_version() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(4, 16 << 10)).unwrap());
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut wins: Vec<(String, u64, Vec<u8>)> = Vec::new();
                let mut conflicts = 0usize;
                let private = format!("private-{t}");
                for i in 0..PER_THREAD {
                    // A private stream: no contention, versions strictly ours.
                    let payload = format!("{t}/{i}/p").into_bytes();
                    let exp = if i == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(i as u64 - 1) };
                    let r = store.append(&private, exp, &[ev("P", payload.clone())]).unwrap();
                    assert_eq!(r.first_version, i as u64);
                    wins.push((private.clone(), r.first_version, payload));
                    // A shared stream: read the version, append expecting it, retry on conflict.
                    let shared = format!("shared-{}", i % 3);
                    loop {
                        let current = store.stream_version(&shared).unwrap();
                        let exp = current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                        let payload = format!("{t}/{i}/s").into_bytes();
                        match store.append(&shared, exp, &[ev("S", payload.clone()), ev("S2", payload.clone())]) {
                            Ok(r) => {
                                assert_eq!(Some(r.first_version), current.map(|v| v + 1).or(Some(0)));
                                wins.push((shared.clone(), r.first_version, payload));
                                break;
                            }
                            Err(Error::WrongExpectedVersion { actual, .. }) => {
                                assert_ne!(actual, current, "a conflict must report a different version");
                                conflicts += 1;
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                (wins, conflicts)
            })
        })
        .collect();
    let mut wins = Vec::new();
    let mut conflicts = 0;
    for h in handles {
        let (w, c) = h.join().unwrap();
        wins.extend(w);
        conflicts += c;
    }
    eprintln!("{conflicts} conflicts retried");
    // The sequential model: for every stream, the winners ordered by version.
    let mut model: HashMap<String, Vec<(u64, Vec<u8>)>> = HashMap::new();
    for (s, v, p) in wins {
        model.entry(s).or_default().push((v, p));
    }
    let check = |store: &Store| {
        let mut seen = HashSet::new();
        for (stream, mut list) in model.clone() {
            list.sort();
            let events = store.read_stream(&stream, 0, usize::MAX).unwrap();
            let per = if stream.starts_with("shared") { 2 } else { 1 };
            assert_eq!(events.len(), list.len() * per, "{stream}");
            for (i, e) in events.iter().enumerate() {
                assert_eq!(e.version, i as u64, "{stream}: versions gapless and in order");
                let (v, p) = &list[i / per];
                assert_eq!((*v + (i % per) as u64, &e.payload), (e.version, p), "{stream}: the winner's bytes");
                assert!(seen.insert((stream.clone(), e.version)), "duplicate");
            }
        }
        let total: u64 = (0..store.partition_count()).map(|p| store.head(p).unwrap()).sum();
        assert_eq!(total as usize, seen.len(), "no event outside the model");
    };
    check(&store);
    drop(Arc::try_unwrap(store).unwrap());
    let store = Store::open(dir.path(), Options::default()).unwrap();
    check(&store);
}

#[test]
fn appends_in_one_group_are_checked_against_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20)).unwrap();
    for round in 0..50u64 {
        // Queued back to back, these usually share a group; the queue is FIFO either way.
        let base = round * 2;
        let first = if round == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(base - 1) };
        let a = store.append_async("s", first, &[ev("A", "a")]);
        let dup = store.append_async("s", first, &[ev("Dup", "dup")]);
        let b = store.append_async("s", ExpectedVersion::Exact(base), &[ev("B", "b")]);
        let stale = store.append_async("s", ExpectedVersion::Exact(base), &[ev("Stale", "stale")]);
        assert_eq!(a.wait().unwrap().first_version, base);
        assert!(matches!(dup.wait(), Err(Error::WrongExpectedVersion { actual, .. }) if actual == Some(base)));
        assert_eq!(b.wait().unwrap().first_version, base + 1);
        assert!(matches!(stale.wait(), Err(Error::WrongExpectedVersion { actual, .. }) if actual == Some(base + 1)));
    }
    let events = store.read_stream("s", 0, usize::MAX).unwrap();
    assert_eq!(events.len(), 100);
    assert!(events.iter().all(|e| e.event_type == "A" || e.event_type == "B"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_append_from_tokio() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(2, 1 << 20)).unwrap());
    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("task-{t}");
            let mut expected = ExpectedVersion::NoStream;
            for i in 0..20 {
                let r = store.append_async(&stream, expected, &[ev("T", format!("{i}"))]).await.unwrap();
                expected = r.next_expected();
            }
            // A conflict arrives through the future too.
            let err = store.append_async(&stream, ExpectedVersion::NoStream, &[ev("T", "x")]).await;
            assert!(matches!(err, Err(Error::WrongExpectedVersion { .. })));
            // So does invalid input, without reaching the writer.
            assert!(matches!(
                store.append_async("", ExpectedVersion::Any, &[ev("T", "x")]).await,
                Err(Error::InvalidStreamId { .. })
            ));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for t in 0..16 {
        assert_eq!(store.stream_version(&format!("task-{t}")).unwrap(), Some(19));
    }
}

/// The futures of one `append_many` share their answers: each can be awaited on its own, in
/// any order, from different tasks, or waited on from a thread, and each gets its own result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_many_futures_are_awaited_in_any_order_from_any_task() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(3, 1 << 20)).unwrap());
    store.append("s-5", ExpectedVersion::NoStream, &[ev("T", "x")]).unwrap();
    let event = [ev("T", "y")];
    let mut futures: Vec<_> = store
        .append_many((0..300).map(|i| (format!("s-{i}"), ExpectedVersion::NoStream, &event[..])))
        .into_iter()
        .collect();
    // The last ones first, each in a task of its own; the first ones from a blocking thread.
    let mut tasks = Vec::new();
    for i in (100..300).rev() {
        let f = futures.pop().unwrap();
        tasks.push(tokio::spawn(async move { (i, f.await) }));
    }
    let blocking = tokio::task::spawn_blocking(move || futures.into_iter().map(|f| f.wait()).collect::<Vec<_>>());
    for t in tasks {
        let (i, r) = t.await.unwrap();
        assert_eq!(r.unwrap().first_version, 0, "s-{i}");
    }
    for (i, r) in blocking.await.unwrap().into_iter().enumerate() {
        match i {
            5 => assert!(matches!(r, Err(Error::WrongExpectedVersion { .. })), "{r:?}"),
            _ => assert_eq!(r.unwrap().first_version, 0, "s-{i}"),
        }
    }
    assert_eq!(store.stream_count().unwrap(), 300);
}

#[test]
fn buffered_mode_acknowledges_and_syncs_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let buffered = Durability::Buffered { sync_interval: std::time::Duration::from_millis(5) };
    let store = Store::open(dir.path(), opts(2, 8 << 10).durability(buffered)).unwrap();
    let written = fill(&store, "b", 300);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(payloads(&store.read_stream("b", 0, 1000).unwrap()), written);
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(payloads(&store.read_stream("b", 0, 1000).unwrap()), written);
    assert!(store.recovery_report().is_empty(), "{:?}", store.recovery_report());
}

#[test]
fn the_store_is_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store>();
    send::<strata::AppendFuture>();
}

/// `append_many`: one message per partition, so each partition commits the set in one group;
/// each append is checked on its own (a wrong expected version fails alone), and an invalid
/// one fails at once without holding up the rest.
#[test]
fn append_many_commits_each_partition_in_one_group_and_checks_each_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(4, 1 << 20)).unwrap();
    store.append("account-7", ExpectedVersion::NoStream, &[ev("Opened", "x")]).unwrap();
    let before = store.write_stats();
    let deposit = [ev("Deposited", "5")];
    let mut appends: Vec<(String, ExpectedVersion, &[strata::EventData])> =
        (0..400).map(|i| (format!("account-{i}"), ExpectedVersion::NoStream, &deposit[..])).collect();
    appends.push((String::new(), ExpectedVersion::Any, &deposit[..]));
    let results: Vec<_> = store.append_many(appends).into_iter().map(|f| f.wait()).collect();
    let after = store.write_stats();
    assert!(matches!(results[7], Err(Error::WrongExpectedVersion { .. })), "{:?}", results[7]);
    assert!(matches!(results[400], Err(Error::InvalidStreamId { .. })), "{:?}", results[400]);
    for (i, r) in results.iter().enumerate().take(400).filter(|(i, _)| *i != 7) {
        let r = r.as_ref().unwrap();
        assert_eq!((r.first_version, r.partition), (0, store.partition_of(&format!("account-{i}"))));
    }
    assert_eq!(after.appends - before.appends, 399);
    assert!(after.group_commits - before.group_commits <= 4, "{before:?} {after:?}");
    assert_eq!(store.read_stream("account-7", 0, 10).unwrap().len(), 1);
    assert_eq!(store.read_stream("account-399", 0, 10).unwrap()[0].payload, b"5");
}

/// A large `append_many` is cut into messages within the group limits: groups stay bounded
/// (one write each), and a segment rolls between them.
#[test]
fn append_many_respects_the_group_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 64 << 10).group_limits(1 << 20, 100)).unwrap();
    let deposit = [ev("Deposited", vec![b'x'; 200])];
    let appends: Vec<_> = (0..1000).map(|i| (format!("a-{i}"), ExpectedVersion::NoStream, &deposit[..])).collect();
    for f in store.append_many(appends) {
        f.wait().unwrap();
    }
    let stats = store.write_stats();
    assert_eq!(stats.appends, 1000);
    assert!(stats.group_commits >= 10, "{stats:?}");
    assert!(segments(dir.path(), 0).len() > 1, "the segment never rolled");
}
