//! A projection's read model rebuilt from the log while writes go on, then swapped in.
//!
//! The read model holds account balances. The first version has a bug: it ignores
//! withdrawals. The fixed version is rebuilt from position 0 of every partition with
//! [`ProjectionEngine::rebuild`], in parallel on the engine's workers, while a writer thread
//! keeps appending and the buggy instance keeps serving reads; once the rebuild has caught
//! up it replaces the live one atomically. The example times the rebuild and checks that the
//! rebuilt balances equal what a full read of every stream says.
//!
//! ```sh
//! cargo run --example rebuild            # 40,000 events
//! cargo run --example rebuild -- 400000  # or STRATA_EXAMPLE_EVENTS=400000
//! ```

use std::collections::HashMap;
use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata::projection::{HandlerError, ProjectionOptions};
use strata::{EventData, ExpectedVersion, Options, Projection, ProjectionEngine, RecordedEvent, Store};

/// Accounts the writer appends to.
const ACCOUNTS: u64 = 500;
/// Events per append.
const PER_APPEND: u64 = 20;
/// Worker threads of the projection engine.
const WORKERS: usize = 2;

type Failure = Box<dyn Error + Send + Sync>;

/// Which rules a [`Balances`] instance applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rules {
    /// The first version: withdrawals are ignored (the bug).
    V1,
    /// The fix: withdrawals are subtracted.
    V2,
}

/// The read model: each account's balance.
struct Balances {
    rules: Rules,
    accounts: Mutex<HashMap<String, i64>>,
}

impl Balances {
    fn new(rules: Rules) -> Balances {
        Balances { rules, accounts: Mutex::new(HashMap::new()) }
    }

    fn snapshot(&self) -> HashMap<String, i64> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What an event does to its account's balance under `rules`.
fn delta(rules: Rules, e: &RecordedEvent) -> Result<i64, HandlerError> {
    let amount: i64 = std::str::from_utf8(&e.payload)?.parse()?;
    Ok(match (e.event_type.as_str(), rules) {
        ("Deposited", _) => amount,
        ("Withdrawn", Rules::V2) => -amount,
        _ => 0,
    })
}

impl Projection for Balances {
    fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        let d = delta(self.rules, e)?;
        *self.accounts.lock().unwrap_or_else(|e| e.into_inner()).entry(e.stream_id.clone()).or_insert(0) += d;
        Ok(())
    }

    fn reset(&self) -> Result<(), HandlerError> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }
}

fn main() -> Result<(), Failure> {
    let events = size(40_000)?;
    let dir = tempfile::tempdir()?;
    let options = Options::default().create_if_missing(true).partitions(4).segment_bytes(4 << 20);
    let store = Arc::new(Store::open(dir.path(), options)?);
    let engine = ProjectionEngine::new(store.clone(), WORKERS);
    let live = Arc::new(Balances::new(Rules::V1));
    engine.register("balances", live.clone(), ProjectionOptions::default())?;

    // Half the history before the fix ships.
    let appended = AtomicU64::new(0);
    append(&store, 0, events / 2, &appended)?;
    if !engine.wait_caught_up("balances", Duration::from_secs(60))? {
        return Err("the live projection did not catch up in 60 s".into());
    }
    let buggy_total: i64 = live.snapshot().values().sum();

    // The other half is appended while the fixed model is rebuilt beside the live one.
    let fresh = Arc::new(Balances::new(Rules::V2));
    let (report, during) = std::thread::scope(|s| -> Result<_, Failure> {
        let writer = s.spawn(|| append(&store, events / 2, events - events / 2, &appended));
        let at_start = appended.load(Ordering::Relaxed);
        // Readers keep getting the live (buggy) instance until the swap.
        let serving = engine.view::<Balances>("balances")?.projection;
        assert_eq!(serving.rules, Rules::V1, "the live instance serves reads during the rebuild");
        let report = engine.rebuild("balances", fresh.clone())?;
        let during = appended.load(Ordering::Relaxed) - at_start;
        writer.join().expect("writer panicked")?;
        Ok((report, during))
    })?;

    // The rebuilt instance serves reads now; let it handle what was appended after the swap.
    let view = engine.view::<Balances>("balances")?;
    assert!(Arc::ptr_eq(&view.projection, &fresh), "the rebuilt instance is swapped in");
    if !engine.wait_caught_up("balances", Duration::from_secs(60))? {
        return Err("the rebuilt projection did not catch up in 60 s".into());
    }

    // What a full read of every stream says, under the fixed rules.
    let read_started = Instant::now();
    let mut expected = HashMap::new();
    let mut read = 0u64;
    for stream in store.streams() {
        let stream = stream?;
        let mut balance = 0;
        for e in store.iter_stream(&stream, 0) {
            balance += delta(Rules::V2, &e?)?;
            read += 1;
        }
        expected.insert(stream, balance);
    }
    let read_took = read_started.elapsed();
    assert_eq!(read, events, "events in the store");
    let rebuilt = fresh.snapshot();
    assert_eq!(rebuilt.len(), expected.len(), "accounts in the rebuilt model");
    for (account, balance) in &expected {
        assert_eq!(rebuilt.get(account), Some(balance), "{account}: rebuilt balance against a full read");
    }
    let fixed_total: i64 = rebuilt.values().sum();
    engine.stop()?;
    store.close()?;

    let secs = report.duration.as_secs_f64();
    println!("rebuild: {events} events in {} accounts over 4 partitions, {WORKERS} workers", expected.len());
    println!(
        "  rebuilt {} events in {:.1} ms ({:.0} events/s) while {during} more were appended",
        report.events,
        secs * 1e3,
        report.events as f64 / secs.max(1e-9)
    );
    println!(
        "  sum of balances: {buggy_total} after {} events before the fix (withdrawals ignored), {fixed_total} after all {events} rebuilt",
        events / 2
    );
    println!(
        "  the rebuilt model equals a full read of every stream ({read} events read in {:.1} ms)",
        read_took.as_secs_f64() * 1e3
    );
    if cfg!(debug_assertions) {
        println!("  (a build with debug assertions: `cargo run --release --example rebuild` for real timings)");
    }
    Ok(())
}

/// Appends events `from..from + n`, `PER_APPEND` at a time to one account each, counting
/// them in `appended`: mostly deposits, every fourth a withdrawal.
fn append(store: &Store, from: u64, n: u64, appended: &AtomicU64) -> Result<(), Failure> {
    let mut i = from;
    while i < from + n {
        let account = format!("account-{}", (i / PER_APPEND) % ACCOUNTS);
        let k = PER_APPEND.min(from + n - i);
        let batch: Vec<EventData> = (i..i + k)
            .map(|j| {
                let kind = if j % 4 == 3 { "Withdrawn" } else { "Deposited" };
                EventData::new(kind, (1 + j % 100).to_string())
            })
            .collect();
        store.append(&account, ExpectedVersion::Any, &batch)?;
        appended.fetch_add(k, Ordering::Relaxed);
        i += k;
    }
    Ok(())
}

/// The size: the first argument, else `STRATA_EXAMPLE_EVENTS`, else `default`.
fn size(default: u64) -> Result<u64, Failure> {
    match std::env::args().nth(1).or_else(|| std::env::var("STRATA_EXAMPLE_EVENTS").ok()) {
        Some(s) => Ok(s.replace(['_', ','], "").parse().map_err(|e| format!("events {s:?}: {e}"))?),
        None => Ok(default),
    }
}
