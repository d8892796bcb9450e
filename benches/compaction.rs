//! Compaction throughput and ratio on JSON-like events, and the latency of reading a
//! 100-event stream from archives (against the same read from segments).
//!
//! The store: 2,000 streams of 100 events (200,000 events, about 60 MB of batches), each
//! event a ~250-byte JSON payload with a correlation id in its metadata, appended one event
//! per append, interleaved across streams as live traffic would be.
//!
//! Before the timed runs it prints the ratio and throughput of one compaction of that store,
//! and of the same store with random bytes in place of each event's payload and metadata
//! (where the goal is to lose nothing: archives no larger than the segments).
//!
//! `cargo bench --bench compaction`; `STRATA_BENCH_DICT=1` also measures per-archive
//! dictionaries.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use strata::compaction::CompactionOptions;
use strata::{Durability, EventData, ExpectedVersion, Options, Store};

const STREAMS: usize = 2_000;
const PER_STREAM: u64 = 100;

fn options(c: CompactionOptions) -> Options {
    Options::default()
        .create_if_missing(true)
        .partitions(4)
        .segment_bytes(2 << 20)
        .durability(Durability::Buffered { sync_interval: Duration::from_millis(50) })
        .compaction(c.interval(None))
}

/// A deterministic pseudo-random stream of numbers (no dependency for the bench).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn event(rng: &mut Rng, account: usize, version: u64) -> EventData {
    const TYPES: [&str; 4] = ["FundsDeposited", "FundsWithdrawn", "TransferSent", "TransferReceived"];
    const CHANNELS: [&str; 4] = ["mobile", "web", "branch", "api"];
    let kind = TYPES[(rng.next() % 4) as usize];
    let cents = rng.next() % 500_000;
    let secs = 1_764_115_200 + version * 37 + (rng.next() % 30);
    let payload = format!(
        r#"{{"accountId":"acc-{account:06}","amount":{{"value":{}.{:02},"currency":"{}"}},"reference":"INV-2026-{:06}","channel":"{}","balanceAfter":{}.{:02},"occurredAt":"2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z"}}"#,
        cents / 100,
        cents % 100,
        if account.is_multiple_of(5) { "USD" } else { "EUR" },
        rng.next() % 1_000_000,
        CHANNELS[(rng.next() % 4) as usize],
        rng.next() % 10_000_000,
        rng.next() % 100,
        20 + (secs / 86_400) % 10,
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        rng.next() % 1000,
    );
    let metadata =
        format!(r#"{{"correlationId":"{:016x}{:016x}","user":"u-{}"}}"#, rng.next(), rng.next(), account % 97);
    EventData::new(kind, payload.into_bytes()).with_metadata(metadata.into_bytes())
}

/// An event of the same sizes as [`event`]'s, its payload and metadata random bytes.
fn random_event(rng: &mut Rng, account: usize, version: u64) -> EventData {
    let json = event(rng, account, version);
    let mut noise = |n: usize| (0..n).map(|_| rng.next() as u8).collect::<Vec<u8>>();
    EventData::new(json.event_type, noise(json.payload.len())).with_metadata(noise(json.metadata.len()))
}

/// Fills a store at `dir` with `event`s and closes it.
fn build(dir: &Path, event: fn(&mut Rng, usize, u64) -> EventData) {
    let store = Store::open(dir, options(CompactionOptions::default())).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for version in 0..PER_STREAM {
        let pending: Vec<_> = (0..STREAMS)
            .map(|s| {
                let expected =
                    if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version - 1) };
                store.append_async(&format!("account-{s}"), expected, &[event(&mut rng, s, version)])
            })
            .collect();
        for p in pending {
            p.wait().unwrap();
        }
    }
    store.close().unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Compacts a copy of `template` at `dir` once, printing the ratio and throughput.
fn probe(name: &str, template: &Path, dir: &Path, cfg: &CompactionOptions) -> strata::compaction::CompactionReport {
    let _ = std::fs::remove_dir_all(dir);
    copy_dir(template, dir);
    let store = Store::open(dir, options(cfg.clone())).unwrap();
    let r = store.compact_with(true, &mut |_| {}).unwrap();
    let storage = store.storage().unwrap();
    let archived: u64 = storage.iter().map(|p| p.archived_bytes).sum();
    let archive_bytes: u64 = storage.iter().map(|p| p.archive_bytes).sum();
    eprintln!(
        "{name}: {} segments ({} MB) -> {} archives ({} MB): ratio {:.3} (segment bytes / archive bytes), \
         {:.3} (batch bytes / archive bytes), {:.0} MB/s",
        r.segments_archived,
        r.bytes_in >> 20,
        r.archives_written,
        r.bytes_out >> 20,
        r.ratio(),
        archived as f64 / archive_bytes as f64,
        r.bytes_in as f64 / r.elapsed.as_secs_f64() / 1e6,
    );
    r
}

fn bench(c: &mut Criterion) {
    let root = tempfile::tempdir().unwrap();
    let template = root.path().join("template");
    build(&template, event);
    let random = root.path().join("random");
    build(&random, random_event);
    probe("random-zstd3-64k", &random, &root.path().join("probe"), &CompactionOptions::default());
    let mut configs = vec![("zstd3-64k", CompactionOptions::default())];
    if std::env::var_os("STRATA_BENCH_DICT").is_some() {
        configs.push(("zstd3-64k-dict", CompactionOptions::default().dictionary(true)));
        configs.push(("zstd3-256k", CompactionOptions::default().block_bytes(256 << 10)));
        configs.push(("zstd3-16k", CompactionOptions::default().block_bytes(16 << 10)));
        configs.push(("zstd3-16k-dict", CompactionOptions::default().block_bytes(16 << 10).dictionary(true)));
        configs.push(("zstd9-64k", CompactionOptions::default().level(9)));
        configs.push(("zstd19-64k", CompactionOptions::default().level(19)));
    }
    // Compaction throughput, per configuration: a fresh copy of the store each time.
    let mut group = c.benchmark_group("compaction");
    group.sample_size(10);
    for (name, cfg) in &configs {
        // One untimed run for the ratio (and the throughput unit).
        let r = probe(name, &template, &root.path().join("probe"), cfg);
        group.throughput(Throughput::Bytes(r.bytes_in));
        group.bench_function(BenchmarkId::new("compact", name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = root.path().join("run");
                    let _ = std::fs::remove_dir_all(&dir);
                    copy_dir(&template, &dir);
                    let store = Store::open(&dir, options(cfg.clone())).unwrap();
                    let started = Instant::now();
                    store.compact_with(true, &mut |_| {}).unwrap();
                    total += started.elapsed();
                }
                total
            })
        });
    }
    group.finish();

    // Reading a 100-event stream: from segments (mapped) and from archives (one or more
    // blocks decompressed, or found in the store's block cache). Streams are read in turn.
    let archived = root.path().join("archived");
    copy_dir(&template, &archived);
    {
        let store = Store::open(&archived, options(CompactionOptions::default())).unwrap();
        store.compact_with(true, &mut |_| {}).unwrap();
    }
    let mut group = c.benchmark_group("read_100_event_stream");
    // The store's block cache (64 MiB by default) ends up holding most of the archived data
    // here; without it every read decompresses the blocks it needs.
    let default_cache = strata::limits::DEFAULT_ARCHIVE_CACHE_BYTES;
    for (name, dir, cache) in [
        ("segments", &template, default_cache),
        ("archives", &archived, default_cache),
        ("archives-uncached", &archived, 0),
    ] {
        let store = Store::open(dir, options(CompactionOptions::default()).archive_cache_bytes(cache)).unwrap();
        let mut i = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 7919) % STREAMS;
                let events = store.read_stream(&format!("account-{i}"), 0, 100).unwrap();
                assert_eq!(events.len(), 100);
                events
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
