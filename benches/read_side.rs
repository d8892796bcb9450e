//! The read side, on the peers workload (1 M events of 100 B over 10,000 streams, 8
//! partitions; `READ_SIDE_EVENTS` to change the count):
//!
//! 1. `subscribe_all` catch-up from the start, borrowed (`Subscription::visit`) and copied
//!    (`Subscription::poll`), against a full scan of every partition (`scan_partition`);
//! 2. a filtered catch-up matching 1% of the events (category `order`: 100 of the 10,000
//!    streams), against the unfiltered one and against reading only the matching events
//!    (`read_stream` of each matching stream); and the same events selected by event type
//!    (`read_event_type`), its first call (which builds the type summaries) apart;
//! 3. the read-path cost of stream metadata: warm 100-event `read_stream` p50 on the store,
//!    and on a second one built alike with `max_count` set on every stream (hiding nothing:
//!    the lookups are the whole cost), the two read in turn over rounds;
//! 4. warm whole-stream reads (100 events at the default size), p50: `read_stream` (owned events) against `visit_stream`
//!    (borrowed), in turn over rounds (`READ_SIDE_STREAMS_ONLY=1` runs only this part);
//! 5. end-to-end latency from append to subscriber (append timestamp to delivery), p50 and p99,
//!    with 1 and 64 subscribers, under `Sync` and `Buffered` (10 ms) durability: one appender
//!    thread doing 2,000 single-event appends/s.
//!
//! Run: `cargo bench --bench read_side` (`READ_SIDE_ROUNDS`, default 3). Prints medians.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata::subscription::{Cursor, Filter};
use strata::{Durability, EventData, ExpectedVersion, Options, Store, StreamMetadata};

const STREAMS: u64 = 10_000;
const PAYLOAD: usize = 100;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn stream_id(i: u64) -> String {
    // 1% of the streams are orders.
    if i.is_multiple_of(100) { format!("order-{i}") } else { format!("acct-{i}") }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn build(dir: &std::path::Path, events: u64) -> Store {
    let opts = Options::default().create_if_missing(true).partitions(8).durability(Durability::Sync);
    let store = Store::open(dir, opts).unwrap();
    let payload = vec![b'p'; PAYLOAD];
    let mut futures = Vec::new();
    for first in (0..events).step_by(1000) {
        let appends: Vec<(String, ExpectedVersion, Vec<EventData>)> = (first..(first + 1000).min(events))
            .map(|i| {
                let stream = stream_id(i % STREAMS);
                let ty = if stream.starts_with("order-") { "OrderPlaced" } else { "Happened" };
                (stream, ExpectedVersion::Any, vec![EventData::new(ty, payload.clone())])
            })
            .collect();
        futures.extend(store.append_many(appends));
        if futures.len() >= 8000 {
            for f in futures.drain(..) {
                f.wait().unwrap();
            }
        }
    }
    for f in futures {
        f.wait().unwrap();
    }
    store
}

fn catch_up(store: &Store, events: u64, rounds: usize) {
    let (mut scan, mut visit, mut poll, mut filtered, mut only) = (vec![], vec![], vec![], vec![], vec![]);
    let mut typed = vec![];
    let orders: Vec<String> = (0..STREAMS).filter(|i| i.is_multiple_of(100)).map(stream_id).collect();
    for _ in 0..rounds {
        let t = Instant::now();
        let mut n = 0u64;
        for p in 0..store.partition_count() {
            n += store.scan_partition(p, 0, usize::MAX, |_| ControlFlow::Continue(())).unwrap() as u64;
        }
        assert_eq!(n, events);
        scan.push(n as f64 / t.elapsed().as_secs_f64());

        let t = Instant::now();
        let mut sub = store.subscribe_all(Cursor::start(), Filter::all());
        let mut n = 0u64;
        loop {
            let k = sub.visit(64 * 1024, |_| ControlFlow::Continue(())).unwrap();
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        assert_eq!(n, events);
        visit.push(n as f64 / t.elapsed().as_secs_f64());

        let t = Instant::now();
        let mut sub = store.subscribe_all(Cursor::start(), Filter::all());
        let mut n = 0u64;
        loop {
            let k = sub.poll(4096).unwrap().len();
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        assert_eq!(n, events);
        poll.push(n as f64 / t.elapsed().as_secs_f64());

        // Every page of a paged read from the start: how many events, in how many ms.
        let pages = |read: &dyn Fn(&Cursor) -> (Vec<strata::RecordedEvent>, Cursor)| {
            let t = Instant::now();
            let (mut cursor, mut n) = (Cursor::start(), 0u64);
            loop {
                let (page, next) = read(&cursor);
                if page.is_empty() {
                    break;
                }
                n += page.len() as u64;
                cursor = next;
            }
            (n, t.elapsed().as_secs_f64() * 1e3)
        };
        let (n, ms) = pages(&|c| store.read_category("order", c, 4096).unwrap());
        assert_eq!(n, events / 100);
        filtered.push(ms);

        // The same 1%, selected by event type (the first call builds each sealed segment's
        // type summary).
        let (n, ms) = pages(&|c| store.read_event_type("OrderPlaced", c, 4096).unwrap());
        assert_eq!(n, events / 100);
        typed.push(ms);

        let t = Instant::now();
        let mut n = 0u64;
        for s in &orders {
            n += store.read_stream(s, 0, usize::MAX).unwrap().len() as u64;
        }
        assert_eq!(n, events / 100);
        only.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let all_ms = events as f64 / median(&mut poll) * 1e3;
    println!("catch-up over {events} events, medians of {rounds} rounds:");
    println!("  full scan (scan_partition, 8 partitions): {:.1} M ev/s", median(&mut scan) / 1e6);
    println!("  subscribe_all, visit (borrowed):          {:.1} M ev/s", median(&mut visit) / 1e6);
    println!("  subscribe_all, poll (copied out):         {:.1} M ev/s ({all_ms:.0} ms)", median(&mut poll) / 1e6);
    let (f, o) = (median(&mut filtered), median(&mut only));
    println!("  read_category matching 1%:                {f:.0} ms");
    println!("  read_stream of only the matching streams: {o:.0} ms (category / matching-only = {:.1}x)", f / o);
    let first = typed.remove(0);
    let later = if typed.is_empty() { first } else { median(&mut typed) };
    println!("  read_event_type matching 1%, first call:  {first:.0} ms ({:.1}x matching-only)", first / o);
    println!("  read_event_type matching 1%, later calls: {later:.0} ms ({:.1}x matching-only)", later / o);
}

fn metadata_cost(plain: &Store, ruled: &Store, events: u64, rounds: usize) {
    let per_stream = (events / STREAMS) as usize;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let picks: Vec<String> = (0..2000)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            stream_id(rng % STREAMS)
        })
        .collect();
    let read = |store: &Store| {
        for s in &picks {
            store.read_stream(s, 0, per_stream).unwrap();
        }
        let mut lat: Vec<f64> = picks
            .iter()
            .map(|s| {
                let t = Instant::now();
                let n = store.read_stream(s, 0, per_stream).unwrap().len();
                assert_eq!(n, per_stream);
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        median(&mut lat)
    };
    let (mut without, mut with) = (vec![], vec![]);
    for _ in 0..rounds {
        without.push(read(plain));
        with.push(read(ruled));
    }
    let (a, b) = (median(&mut without), median(&mut with));
    println!(
        "warm {per_stream}-event read_stream p50 ({} reads a round, {rounds} rounds each, interleaved):",
        picks.len()
    );
    println!("  store without metadata:              {a:.1} us");
    println!("  max_count (hiding nothing) on every stream: {b:.1} us ({:+.1}%)", (b / a - 1.0) * 100.0);
}

fn stream_reads(store: &Store, events: u64, rounds: usize) {
    let per_stream = (events / STREAMS) as usize;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let picks: Vec<String> = (0..2000)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            stream_id(rng % STREAMS)
        })
        .collect();
    let p50 = |visit: bool| {
        let mut lat: Vec<f64> = picks
            .iter()
            .map(|s| {
                let t = Instant::now();
                let n = if visit {
                    let mut bytes = 0;
                    let n = store
                        .visit_stream(s, 0, |e| {
                            bytes += e.payload.len();
                            ControlFlow::Continue(())
                        })
                        .unwrap();
                    assert_eq!(bytes, n * PAYLOAD);
                    n
                } else {
                    store.read_stream(s, 0, per_stream).unwrap().len()
                };
                let us = t.elapsed().as_secs_f64() * 1e6;
                assert_eq!(n, per_stream);
                us
            })
            .collect();
        median(&mut lat)
    };
    // Warm: every picked stream read once each way.
    p50(false);
    p50(true);
    let (mut read, mut visit) = (vec![], vec![]);
    for _ in 0..rounds {
        read.push(p50(false));
        visit.push(p50(true));
    }
    println!(
        "warm {per_stream}-event stream reads, p50 ({} reads a round, {rounds} rounds each, interleaved):",
        picks.len()
    );
    println!("  read_stream (owned events):     {:.1} us", median(&mut read));
    println!("  visit_stream (borrowed events): {:.1} us", median(&mut visit));
}

fn latency(durability: Durability, subscribers: usize, seconds: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().create_if_missing(true).partitions(8).durability(durability);
    let store = Arc::new(Store::open(dir.path(), opts).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let start = store.head_cursor().unwrap();
    let mut handles = Vec::new();
    for _ in 0..subscribers {
        let (store, stop, start) = (store.clone(), stop.clone(), start.clone());
        handles.push(std::thread::spawn(move || {
            let mut sub = store.subscribe_all(start, Filter::all());
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for e in sub.next_batch(1024, Duration::from_millis(50)).unwrap() {
                    lat.push(now_nanos().saturating_sub(e.timestamp_nanos));
                }
            }
            lat
        }));
    }
    let t = Instant::now();
    let mut i = 0u64;
    while t.elapsed() < Duration::from_secs(seconds) {
        store
            .append(&stream_id(i % STREAMS), ExpectedVersion::Any, &[EventData::new("Tick", vec![b't'; PAYLOAD])])
            .unwrap();
        i += 1;
        // 2,000 appends a second.
        let due = Duration::from_micros(500 * i);
        if let Some(wait) = due.checked_sub(t.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert_eq!(all.len() as u64, i * subscribers as u64, "every subscriber saw every event");
    all.sort_unstable();
    let p = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)] as f64 / 1e3;
    (p(0.5), p(0.99))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let events = env_u64("READ_SIDE_EVENTS", 1_000_000);
    let rounds = env_u64("READ_SIDE_ROUNDS", 3) as usize;
    let seconds = env_u64("READ_SIDE_LATENCY_SECS", 5);
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let store = build(dir.path(), events);
    println!("built {events} events over {STREAMS} streams, 8 partitions, in {:.1?}", t.elapsed());
    stream_reads(&store, events, rounds);
    if std::env::var_os("READ_SIDE_STREAMS_ONLY").is_some() {
        return;
    }
    catch_up(&store, events, rounds);
    let dir2 = tempfile::tempdir().unwrap();
    let ruled = build(dir2.path(), events);
    let meta = StreamMetadata { max_count: Some(1_000_000), ..Default::default() };
    for i in 0..STREAMS {
        ruled.set_stream_metadata(&stream_id(i), ExpectedVersion::NoStream, meta.clone()).unwrap();
    }
    metadata_cost(&store, &ruled, events, rounds);
    drop((store, ruled));
    println!("append -> subscriber latency (2,000 appends/s for {seconds} s), p50 / p99:");
    for durability in [Durability::Sync, Durability::Buffered { sync_interval: Duration::from_millis(10) }] {
        for subscribers in [1usize, 64] {
            let (p50, p99) = latency(durability, subscribers, seconds);
            let name = if durability == Durability::Sync { "Sync" } else { "Buffered 10 ms" };
            println!("  {name:>14}, {subscribers:>2} subscribers: {p50:>8.0} us / {p99:>8.0} us");
        }
    }
}
