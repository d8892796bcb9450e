//! CPU per appended event, with syncs out of the way: 1 M one-event appends over 10,000
//! streams, in `append_many` commits of 1,000 (the peers bench's load), to a store on
//! /dev/shm in `Buffered` mode with a 30 s sync interval. Prints events/s and the process's
//! CPU time per event (user + system, from /proc/self/stat). `IDS=1` gives every event an id
//! (idempotent appends). Run: `cargo bench --bench cpu_append` (and `IDS=1 cargo bench ...`).

use std::time::{Duration, Instant};
use strata::{Durability, EventData, ExpectedVersion, Options, Store};
/// This process's CPU seconds so far.
fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
fn main() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let opts = Options::default()
        .create_if_missing(true)
        .partitions(8)
        .durability(Durability::Buffered { sync_interval: Duration::from_secs(30) });
    let store = Store::open(dir.path(), opts).unwrap();
    let n = 1_000_000usize;
    let mut versions = vec![None::<u64>; 10_000];
    let (t, c) = (Instant::now(), cpu());
    let payload = vec![7u8; 100];
    let ids = std::env::var_os("IDS").is_some();
    // The names are made once: formatting them is the harness's cost, not strata's.
    let names: Vec<String> = (0..10_000).map(|s| format!("stream-{s}")).collect();
    for chunk in 0..n / 1000 {
        let appends: Vec<(&str, ExpectedVersion, [EventData; 1])> = (0..1000)
            .map(|i| {
                let s = (chunk * 1000 + i) % 10_000;
                (
                    names[s].as_str(),
                    ExpectedVersion::after(versions[s]),
                    [event(&payload, ids, (chunk * 1000 + i) as u64)],
                )
            })
            .collect();
        for (i, f) in store.append_many(appends.iter().map(|(s, e, d)| (*s, *e, &d[..]))).into_iter().enumerate() {
            let s = (chunk * 1000 + i) % 10_000;
            versions[s] = Some(f.wait().unwrap().last_version);
        }
    }
    let (wall, cpu_s) = (t.elapsed().as_secs_f64(), cpu() - c);
    println!("{:.0} ev/s wall, {:.0} ns cpu/event", n as f64 / wall, cpu_s * 1e9 / n as f64);
    store.close().unwrap();
}

/// An event, with an id if `ids`.
fn event(payload: &[u8], ids: bool, n: u64) -> EventData {
    let e = EventData::new("E", payload.to_vec());
    if ids { e.with_id(strata::EventId::from_u128(u128::from(n) + 1)) } else { e }
}
