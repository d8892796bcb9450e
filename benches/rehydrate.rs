//! Aggregate rehydration: loading an aggregate with 100,000 events of history from its latest
//! snapshot (interval 100, worst case: 99 events after it) and by full replay.
//!
//! The store has one partition whose log interleaves the measured streams with another
//! stream's events, in 16 MiB segments (so most of the history is in sealed, memory-mapped
//! segments). Everything is in the page cache: this is the warm path.
//!
//! Run: `cargo bench --bench rehydrate`.

use std::time::Duration;

use criterion::{Criterion, Throughput};
use strata::{Aggregate, ApplyError, Durability, EventData, ExpectedVersion, Options, RecordedEvent, Store};

const HISTORY: u64 = 100_000;
const BATCH: u64 = 100;

/// A bank account: balance, number of operations, and the last ten amounts.
#[derive(Debug, Clone, Default, PartialEq)]
struct Account<const EVERY: u64> {
    balance: i64,
    operations: u64,
    recent: Vec<i64>,
}

impl<const EVERY: u64> Aggregate for Account<EVERY> {
    const SCHEMA: u32 = 1;
    const SNAPSHOT_EVERY: u64 = EVERY;

    fn apply(&mut self, e: &RecordedEvent) -> Result<(), ApplyError> {
        let amount = i64::from_le_bytes(e.payload.get(..8).ok_or("short payload")?.try_into()?);
        match e.event_type.as_str() {
            "Deposited" => self.balance += amount,
            "Withdrawn" => self.balance -= amount,
            other => return Err(format!("unknown event type {other}").into()),
        }
        self.operations += 1;
        if self.recent.len() == 10 {
            self.recent.remove(0);
        }
        self.recent.push(amount);
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + 8 * self.recent.len());
        v.extend_from_slice(&self.balance.to_le_bytes());
        v.extend_from_slice(&self.operations.to_le_bytes());
        for a in &self.recent {
            v.extend_from_slice(&a.to_le_bytes());
        }
        v
    }

    fn decode(schema: u32, state: &[u8]) -> Option<Self> {
        if schema != 1 || state.len() < 16 || !state.len().is_multiple_of(8) {
            return None;
        }
        let word = |i: usize| i64::from_le_bytes(state[i * 8..i * 8 + 8].try_into().unwrap());
        Some(Account { balance: word(0), operations: word(1) as u64, recent: (2..state.len() / 8).map(word).collect() })
    }
}

/// Events `from..from + n` of an account: 100-byte payloads, the amount first.
fn events(from: u64, n: u64) -> Vec<EventData> {
    (from..from + n)
        .map(|i| {
            let mut payload = (i as i64 % 1000 + 1).to_le_bytes().to_vec();
            payload.resize(100, b' ');
            EventData::new(if i % 3 == 2 { "Withdrawn" } else { "Deposited" }, payload)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .create_if_missing(true)
        .partitions(1)
        .segment_bytes(16 << 20)
        .durability(Durability::Buffered { sync_interval: Duration::from_millis(50) });
    let store = Store::open(dir.path(), options).unwrap();
    // "snap" through the aggregate API (a snapshot every 100 events, the last at version
    // 99,900), then 99 more events appended without one: the worst case of the policy.
    // "replay": the same history, never snapshotted. "noise": interleaved with both.
    let mut snap = store.load::<Account<100>>("snap").unwrap();
    let mut replay = ExpectedVersion::NoStream;
    for k in 0..(HISTORY - BATCH) / BATCH {
        store.commit(&mut snap, &events(k * BATCH, BATCH)).unwrap();
        replay = store.append("replay", replay, &events(k * BATCH, BATCH)).unwrap().next_expected();
        store.append("noise", ExpectedVersion::Any, &events(k * BATCH, BATCH)).unwrap();
    }
    let tail = HISTORY - BATCH;
    store.append("snap", snap.expected(), &events(tail, BATCH - 1)).unwrap();
    store.append("replay", replay, &events(tail, BATCH)).unwrap();
    store.flush_snapshots().unwrap();

    let loaded = store.load::<Account<100>>("snap").unwrap();
    assert_eq!(*loaded.snapshot(), strata::SnapshotUse::Used { version: HISTORY - BATCH - 1 });
    assert_eq!((loaded.replayed(), loaded.version()), (BATCH - 1, Some(HISTORY - 2)));
    let full = store.load::<Account<0>>("replay").unwrap();
    assert_eq!((full.replayed(), full.version()), (HISTORY, Some(HISTORY - 1)));
    eprintln!("sidecar: {:?}", store.snapshot_stats());

    let mut g = c.benchmark_group("rehydrate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("snapshot+99", |b| {
        b.iter(|| {
            let a = store.load::<Account<100>>("snap").unwrap();
            debug_assert_eq!(a.replayed(), BATCH - 1);
            a
        })
    });
    g.sample_size(20);
    g.bench_function("full-replay-100k", |b| b.iter(|| store.load::<Account<0>>("replay").unwrap()));
    g.finish();
    store.close().unwrap();
}

fn main() {
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(5));
    bench(&mut c);
    c.final_summary();
}
