//! Durable append throughput and latency, each measurement paired with a raw baseline.
//!
//! For every (writer threads, events per append) pair, each criterion sample of strata is
//! followed at once by two samples of the raw baseline: plain `write()` + `fdatasync` of groups
//! of the same size (the average group strata formed in that sample) in one file, appending to
//! a growing file ("raw") and writing into a file zero-filled beforehand ("raw-pre", the
//! machine's ceiling, and what strata's preallocation aims at). The samples are interleaved so
//! all see the same state of the disk (fsync latency here flips between a fast and a slow state
//! for minutes at a time); the summary at the end prints medians.
//!
//! Run: `cargo bench --bench append` (add `-- strata/w64` to filter).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use strata::{Durability, EventData, EventId, ExpectedVersion, Options, Store};

const PAYLOAD: usize = 100;

struct Pair {
    label: String,
    strata_eps: f64,
    raw_eps: f64,
    pre_eps: f64,
    group_appends: f64,
    group_bytes: f64,
}

static PAIRS: Mutex<Vec<Pair>> = Mutex::new(Vec::new());

fn open_store(dir: &std::path::Path, partitions: u32) -> Store {
    Store::open(dir, Options::default().create_if_missing(true).partitions(partitions).durability(Durability::Sync))
        .unwrap()
}

/// `appends` appends of `events` events each, spread over `writers` threads; returns the time.
fn strata_run(store: &Arc<Store>, writers: usize, events: usize, appends: u64, round: u64) -> Duration {
    let barrier = Arc::new(Barrier::new(writers + 1));
    let per = appends.div_ceil(writers as u64);
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                let batch: Vec<EventData> = (0..events).map(|_| EventData::new("E", vec![7u8; PAYLOAD])).collect();
                let stream = format!("writer-{w}-{round}");
                let mut expected = ExpectedVersion::NoStream;
                barrier.wait();
                for _ in 0..per {
                    expected = store.append(&stream, expected, &batch).unwrap().next_expected();
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

/// `groups` writes of `group_bytes` bytes, each followed by `fdatasync`, in one file; if
/// `prealloc`, the file is zero-filled and synced first (not timed).
fn raw_run(dir: &std::path::Path, group_bytes: usize, groups: u64, prealloc: bool) -> Duration {
    let path = dir.join("raw.bin");
    let f = OpenOptions::new().create(true).write(true).truncate(true).open(&path).unwrap();
    let buf = vec![7u8; group_bytes.max(1)];
    if prealloc {
        let zeros = vec![0u8; 1 << 20];
        let total = group_bytes as u64 * groups;
        let mut at = 0;
        while at < total {
            f.write_all_at(&zeros, at).unwrap();
            at += zeros.len() as u64;
        }
        f.sync_all().unwrap();
    }
    let start = Instant::now();
    let mut off = 0u64;
    for _ in 0..groups {
        f.write_all_at(&buf, off).unwrap();
        f.sync_data().unwrap();
        off += buf.len() as u64;
    }
    start.elapsed()
}

fn throughput(c: &mut Criterion, partitions: u32, writer_counts: &[usize], event_counts: &[usize]) {
    let mut group = c.benchmark_group(format!("durable_append_p{partitions}"));
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for &writers in writer_counts {
        for &events in event_counts {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(open_store(dir.path(), partitions));
            let raw_dir = tempfile::tempdir().unwrap();
            let mut round = 0u64;
            let mut samples: Vec<[f64; 5]> = Vec::new();
            group.throughput(Throughput::Elements(events as u64));
            group.bench_with_input(BenchmarkId::new(format!("strata/w{writers}"), events), &events, |b, &events| {
                b.iter_custom(|iters| {
                    round += 1;
                    let before = store.write_stats();
                    let t = strata_run(&store, writers, events, iters, round);
                    let after = store.write_stats();
                    let groups = (after.group_commits - before.group_commits).max(1);
                    let appends = after.appends - before.appends;
                    let group_bytes = (after.bytes - before.bytes) as f64 / groups as f64;
                    let raw = raw_run(raw_dir.path(), group_bytes as usize, groups, false);
                    let pre = raw_run(raw_dir.path(), group_bytes as usize, groups, true);
                    let ev = (appends * events as u64) as f64;
                    samples.push([
                        ev / t.as_secs_f64(),
                        ev / raw.as_secs_f64(),
                        ev / pre.as_secs_f64(),
                        appends as f64 / groups as f64,
                        group_bytes,
                    ]);
                    t
                })
            });
            if !samples.is_empty() {
                PAIRS.lock().unwrap().push(Pair {
                    label: format!("p{partitions} w{writers} e{events}"),
                    strata_eps: median(samples.iter().map(|s| s[0])),
                    raw_eps: median(samples.iter().map(|s| s[1])),
                    pre_eps: median(samples.iter().map(|s| s[2])),
                    group_appends: median(samples.iter().map(|s| s[3])),
                    group_bytes: median(samples.iter().map(|s| s[4])),
                });
            }
            drop(store);
        }
    }
    group.finish();
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn lone_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("lone_append");
    group.sample_size(20).measurement_time(Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), 1);
    let batch = [EventData::new("E", vec![7u8; PAYLOAD])];
    let mut expected = ExpectedVersion::NoStream;
    // Interleaved: one strata append, then one raw write+fdatasync of the same size.
    let raw_path = dir.path().join("raw.bin");
    let raw = OpenOptions::new().create(true).write(true).truncate(true).open(&raw_path).unwrap();
    let buf = vec![7u8; 176];
    let mut off = 0u64;
    let mut strata_lat = Vec::new();
    let mut raw_lat = Vec::new();
    group.bench_function("strata_vs_raw_pair", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                expected = store.append("lone", expected, &batch).unwrap().next_expected();
                let s = t.elapsed();
                let t = Instant::now();
                raw.write_all_at(&buf, off).unwrap();
                raw.sync_data().unwrap();
                let r = t.elapsed();
                off += buf.len() as u64;
                strata_lat.push(s.as_secs_f64());
                raw_lat.push(r.as_secs_f64());
                total += s;
            }
            total
        })
    });
    group.finish();
    let s = median(strata_lat.iter().copied());
    let r = median(raw_lat.iter().copied());
    let ratio = median(strata_lat.iter().zip(&raw_lat).map(|(s, r)| s / r));
    println!(
        "\nlone append: strata median {:.1} us, raw write+fdatasync median {:.1} us, median paired ratio {ratio:.2}",
        s * 1e6,
        r * 1e6
    );
}

/// The cost of a duplicate retry: an append whose ids are already committed is a lookup and a
/// read-back of its events, answered without a write or an fdatasync. Paired with a fresh
/// durable append of the same size.
fn duplicate_retry(c: &mut Criterion) {
    let mut group = c.benchmark_group("duplicate_retry");
    group.sample_size(20).measurement_time(Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), 1);
    let command = EventId::from_u128(42);
    let events: Vec<EventData> = (0..10)
        .map(|i| EventData::new("E", vec![7u8; PAYLOAD]).with_id(EventId::derive(command, "retried", i)))
        .collect();
    let first = store.append("retried", ExpectedVersion::NoStream, &events).unwrap();
    // A window's worth of other appends in between, as a late retry would find.
    for i in 0..2_000u64 {
        let e = [EventData::new("E", vec![7u8; PAYLOAD]).with_id(EventId::from_u128(u128::from(i) + 1000))];
        store.append("other", ExpectedVersion::Any, &e).unwrap();
    }
    group.bench_function("retry_of_10_events", |b| {
        b.iter(|| {
            let r = store.append("retried", ExpectedVersion::NoStream, &events).unwrap();
            assert!(r.duplicate && r.first_position == first.first_position);
        })
    });
    let mut n = 0u128;
    group.bench_function("fresh_durable_append_of_10_events", |b| {
        b.iter(|| {
            n += 1;
            let fresh: Vec<EventData> = (0..10)
                .map(|i| {
                    EventData::new("E", vec![7u8; PAYLOAD]).with_id(EventId::derive(EventId::from_u128(n), "fresh", i))
                })
                .collect();
            store.append("fresh", ExpectedVersion::Any, &fresh).unwrap();
        })
    });
    group.finish();
}

fn summary() {
    println!(
        "\n{:<16} {:>12} {:>12} {:>12} {:>9} {:>9} {:>11} {:>10}",
        "case", "strata ev/s", "raw ev/s", "raw-pre ev/s", "/raw", "/raw-pre", "appends/grp", "bytes/grp"
    );
    for p in PAIRS.lock().unwrap().iter() {
        println!(
            "{:<16} {:>12.0} {:>12.0} {:>12.0} {:>9.2} {:>9.2} {:>11.1} {:>10.0}",
            p.label,
            p.strata_eps,
            p.raw_eps,
            p.pre_eps,
            p.strata_eps / p.raw_eps,
            p.strata_eps / p.pre_eps,
            p.group_appends,
            p.group_bytes
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    lone_append(&mut c);
    duplicate_retry(&mut c);
    throughput(&mut c, 1, &[1, 4, 16, 64], &[1, 10, 100]);
    throughput(&mut c, 8, &[64], &[10]);
    c.final_summary();
    summary();
}
