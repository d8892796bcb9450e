//! Appends and reads against a NATS JetStream cluster (feature `jetstream`): `WRITERS` threads
//! each append 200 times to a stream of their own with the version they hold (one event an
//! append, then ten), then each stream of ten-event appends is read back whole.
//!
//! ```sh
//! cargo run --release --features jetstream --example jetstream_appends -- nats://127.0.0.1:4222 3 64
//! ```
//!
//! Arguments: the servers (comma-separated), the replicas of the store it creates (a fresh
//! one per run), the number of writers. It checks what it reads and exits non-zero on a
//! failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata::{EventData, ExpectedVersion, JetStreamOptions, Store};

const APPENDS: usize = 200;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let servers: Vec<String> =
        args.next().unwrap_or("nats://127.0.0.1:4222".into()).split(',').map(String::from).collect();
    let replicas: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let writers: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let store = Arc::new(Store::connect(
        JetStreamOptions::new(servers, format!("appends{stamp}")).replicas(replicas).partitions(8),
    )?);
    println!("{writers} writers, {replicas} replicas, 100-byte events");
    for batch in [1usize, 10] {
        let started = Instant::now();
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let store = store.clone();
                std::thread::spawn(move || -> strata::Result<Vec<Duration>> {
                    let stream = format!("batch{batch}-{w}");
                    let (mut expected, mut latencies) = (ExpectedVersion::NoStream, Vec::with_capacity(APPENDS));
                    for _ in 0..APPENDS {
                        let events: Vec<_> = (0..batch).map(|_| EventData::new("Tick", vec![b'x'; 100])).collect();
                        let t = Instant::now();
                        expected = store.append(&stream, expected, &events)?.next_expected();
                        latencies.push(t.elapsed());
                    }
                    Ok(latencies)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for t in threads {
            latencies.extend(t.join().map_err(|_| "a writer panicked")??);
        }
        let secs = started.elapsed().as_secs_f64();
        latencies.sort();
        let n = latencies.len();
        println!(
            "appends of {batch:>2}: {:>6.0} appends/s, {:>6.0} events/s; latency p50 {:?} p99 {:?}",
            n as f64 / secs,
            (n * batch) as f64 / secs,
            latencies[n / 2],
            latencies[n * 99 / 100]
        );
    }
    let mut reads = Vec::new();
    for w in 0..writers {
        let t = Instant::now();
        let events = store.read_stream(&format!("batch10-{w}"), 0, usize::MAX)?;
        reads.push(t.elapsed());
        if events.len() != APPENDS * 10 || events.iter().enumerate().any(|(i, e)| e.version != i as u64) {
            return Err(format!("stream batch10-{w}: {} events, not versions 0..{}", events.len(), APPENDS * 10).into());
        }
    }
    reads.sort();
    println!("reading a stream of {} events: p50 {:?}", APPENDS * 10, reads[reads.len() / 2]);
    store.close()?;
    Ok(())
}
