//! Projections on a NATS JetStream cluster (feature `jetstream`): how fast a projection catches
//! up with a store's history, shared (read through its durable consumers) and per-process (read
//! through direct gets), and how long one new event takes to reach it.
//!
//! ```sh
//! cargo run --release --features jetstream --example jetstream_projection -- nats://127.0.0.1:4222 3 100000
//! ```
//!
//! Arguments: the servers (comma-separated), the replicas of the store it creates (a fresh one
//! per run, 8 partitions), the events to append first (100 bytes each, over 1,000 streams). The
//! two kinds run in turn, three times, each under a fresh projection name, with a trivial handler (it
//! counts). It exits non-zero if a projection misses an event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strata::projection::{HandlerError, ProjectionOptions};
use strata::{EventData, ExpectedVersion, JetStreamOptions, Projection, ProjectionEngine, RecordedEvent, Store};

#[derive(Default)]
struct Count(AtomicU64);

impl Projection for Count {
    fn handle(&self, _: &RecordedEvent) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let servers: Vec<String> =
        args.next().unwrap_or("nats://127.0.0.1:4222".into()).split(',').map(String::from).collect();
    let replicas: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let events: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let store = Arc::new(Store::connect(
        JetStreamOptions::new(servers, format!("proj{stamp}")).replicas(replicas).partitions(8),
    )?);
    let started = Instant::now();
    for chunk in (0..events).collect::<Vec<_>>().chunks(1000) {
        let appends: Vec<_> = chunk
            .iter()
            .map(|i| (format!("s-{}", i % 1000), ExpectedVersion::Any, vec![EventData::new("Tick", vec![b'x'; 100])]))
            .collect();
        for f in store.append_many(appends) {
            f.wait()?;
        }
    }
    println!(
        "{events} events appended in {:.1} s ({replicas} replicas, 8 partitions)",
        started.elapsed().as_secs_f64()
    );
    for round in 0..3 {
        for shared in [true, false] {
            // An engine of its own, stopped after: the runs do not compete.
            let engine = ProjectionEngine::new(store.clone(), 2);
            let kind = if shared { "shared" } else { "per-process" };
            let name = format!("count-{kind}-{round}");
            let count = Arc::new(Count::default());
            let options =
                if shared { ProjectionOptions::default() } else { ProjectionOptions::default().per_process() };
            let total: u64 = (0..store.partition_count()).map(|p| store.head(p)).sum::<Result<u64, _>>()?;
            let t = Instant::now();
            engine.register(&name, count.clone(), options)?;
            if !engine.wait_caught_up(&name, Duration::from_secs(600))? {
                return Err(format!("{name} did not catch up").into());
            }
            let secs = t.elapsed().as_secs_f64();
            let got = count.0.load(Ordering::Relaxed);
            if got < total {
                return Err(format!("{name} counted {got} of {total}").into());
            }
            // One event at a time: from its append's acknowledgment until the handler saw it.
            let mut lags = Vec::new();
            for i in 0..50 {
                let before = count.0.load(Ordering::Relaxed);
                store.append(&format!("lag-{i}"), ExpectedVersion::Any, &[EventData::new("Tick", vec![b'x'; 100])])?;
                let t = Instant::now();
                while count.0.load(Ordering::Relaxed) == before {
                    if t.elapsed() > Duration::from_secs(30) {
                        return Err(format!("{name} did not see a new event").into());
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                lags.push(t.elapsed());
            }
            lags.sort();
            println!(
                "round {round}, {kind:>11}: caught up with {total} events in {secs:.2} s ({:.0} events/s); one new event reached it in p50 {:?}, p99 {:?}",
                total as f64 / secs,
                lags[lags.len() / 2],
                lags[lags.len() * 99 / 100],
            );
            engine.stop()?;
        }
    }
    Ok(())
}
