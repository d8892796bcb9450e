//! Read-through cache hit throughput with concurrent readers, and the command bus's overhead
//! per command (against the same load -> decide -> commit done by hand).
//!
//! Run: `cargo bench --bench bus`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strata::bus::BusOptions;

use strata::{
    Aggregate, ApplyError, Command, CommandBus, Durability, EventData, Options, RecordedEvent, Store, ViewCache,
};

#[derive(Default)]
struct Counter(u64);

impl Aggregate for Counter {
    const SCHEMA: u32 = 1;
    fn apply(&mut self, _: &RecordedEvent) -> Result<(), ApplyError> {
        self.0 += 1;
        Ok(())
    }
    fn encode(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn decode(_: u32, b: &[u8]) -> Option<Self> {
        Some(Counter(u64::from_le_bytes(b.try_into().ok()?)))
    }
}

struct Increment(String);

impl Command for Increment {
    type Aggregate = Counter;
    fn stream(&self) -> &str {
        &self.0
    }
    fn decide(&self, _: &Counter, _: Option<u64>) -> Result<Vec<EventData>, String> {
        Ok(vec![EventData::new("Incremented", vec![0u8; 100])])
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // Cache: 10,000 hot keys, all cached; readers hit for 1 s each run.
    let cache: Arc<ViewCache<u64, Arc<String>>> = Arc::new(ViewCache::new(20_000));
    for k in 0..10_000u64 {
        cache.get_or_load(&k, |k| Arc::new(format!("view of {k}")));
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("| readers | cache hits/s (median of 3) |");
    println!("| ---: | ---: |");
    for readers in 1..=cores {
        let mut rates = Vec::new();
        for _ in 0..3 {
            let stop = AtomicBool::new(false);
            let hits = AtomicU64::new(0);
            let t = Instant::now();
            std::thread::scope(|s| {
                for r in 0..readers {
                    let (cache, stop, hits) = (&cache, &stop, &hits);
                    s.spawn(move || {
                        let mut k = r as u64 * 7919;
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            for _ in 0..1000 {
                                k = (k + 7919) % 10_000;
                                let v = cache.get_or_load(&k, |_| unreachable!());
                                std::hint::black_box(v);
                            }
                            n += 1000;
                        }
                        hits.fetch_add(n, Ordering::Relaxed);
                    });
                }
                std::thread::sleep(Duration::from_secs(1));
                stop.store(true, Ordering::Relaxed);
            });
            rates.push(hits.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64());
        }
        println!("| {readers} | {:.1} M |", median(rates) / 1e6);
    }

    // Bus overhead: Buffered durability, so the disk does not hide it; new streams each time.
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .create_if_missing(true)
        .partitions(4)
        .durability(Durability::Buffered { sync_interval: Duration::from_millis(50) });
    let store = Arc::new(Store::open(dir.path(), options).unwrap());
    let bus = CommandBus::new(store.clone(), None, BusOptions::default().rate_limit(1e9, 1e9)).unwrap();
    let n = 20_000;
    let (mut direct, mut via_bus) = (Vec::new(), Vec::new());
    for round in 0..5 {
        let t = Instant::now();
        for i in 0..n {
            let cmd = Increment(format!("d{round}-{i}"));
            let mut loaded = store.load::<Counter>(cmd.stream()).unwrap();
            let events = cmd.decide(loaded.state(), loaded.version()).unwrap();
            store.commit(&mut loaded, &events).unwrap();
        }
        direct.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
        let t = Instant::now();
        for i in 0..n {
            bus.execute(&Increment(format!("b{round}-{i}"))).unwrap();
        }
        via_bus.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    let (d, b) = (median(direct), median(via_bus));
    println!(
        "\ncommand, by hand: {d:.2} us; through the bus (in-flight and rate checks, no gate): {b:.2} us; overhead {:.2} us",
        b - d
    );
}
