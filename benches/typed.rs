//! What typed events cost (feature `serde`): encoding and decoding one event in each codec,
//! decoding through two upcasters, and loading a 100-event aggregate (no snapshot) typed
//! against the same aggregate over bytes.
//!
//! Run: `cargo bench --features serde --bench typed`.

use std::hint::black_box;
use std::sync::LazyLock;
use std::time::Duration;

use criterion::Criterion;
use serde::{Deserialize, Serialize};
use strata::typed::{Codec, DomainEvent, TypedAggregate, Upcasters};
use strata::{Aggregate, ApplyError, Durability, EventData, ExpectedVersion, Options, RecordedEvent, Store};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum AccountEvent {
    Deposited { cents: u64, currency: String, memo: String },
    Withdrawn { cents: u64, currency: String, memo: String },
}

#[derive(Deserialize)]
struct V1 {
    amount: u64,
    memo: String,
}

#[derive(Serialize)]
struct V2 {
    cents: u64,
    memo: String,
}

impl DomainEvent for AccountEvent {
    fn schema_version(&self) -> u32 {
        3
    }

    fn upcasters() -> &'static Upcasters {
        static UP: LazyLock<Upcasters> = LazyLock::new(|| {
            Upcasters::new().add("Deposited", 1, |o: V1| V2 { cents: o.amount * 100, memo: o.memo }).add_json(
                "Deposited",
                2,
                |mut v| {
                    v.as_object_mut().ok_or("not an object")?.insert("currency".into(), "EUR".into());
                    Ok(v)
                },
            )
        });
        &UP
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Compact {
    Deposited { cents: u64, currency: String, memo: String },
    Withdrawn { cents: u64, currency: String, memo: String },
}

impl DomainEvent for Compact {
    const CODEC: Codec = Codec::Postcard;
}

#[derive(Default, Serialize, Deserialize)]
struct Typed {
    balance: i64,
}

impl TypedAggregate for Typed {
    type Event = AccountEvent;
    const SNAPSHOT_EVERY: u64 = 0;

    fn apply(&mut self, e: &AccountEvent) -> Result<(), ApplyError> {
        match e {
            AccountEvent::Deposited { cents, .. } => self.balance += *cents as i64,
            AccountEvent::Withdrawn { cents, .. } => self.balance -= *cents as i64,
        }
        Ok(())
    }
}

/// The same aggregate, parsing the JSON by hand (what the byte API leaves to the user).
#[derive(Default)]
struct Bytes {
    balance: i64,
}

impl Aggregate for Bytes {
    const SCHEMA: u32 = 1;
    const SNAPSHOT_EVERY: u64 = 0;

    fn apply(&mut self, e: &RecordedEvent) -> Result<(), ApplyError> {
        let text = std::str::from_utf8(&e.payload)?;
        let digits = text.strip_prefix(r#"{"cents":"#).and_then(|t| t.split(',').next()).ok_or("no cents")?;
        let cents: i64 = digits.parse()?;
        match e.event_type.as_str() {
            "Deposited" => self.balance += cents,
            "Withdrawn" => self.balance -= cents,
            other => return Err(format!("unknown event {other}").into()),
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        self.balance.to_le_bytes().to_vec()
    }

    fn decode(_: u32, _: &[u8]) -> Option<Self> {
        None
    }
}

fn recorded(data: EventData) -> RecordedEvent {
    RecordedEvent {
        stream_id: "account-1".into(),
        version: 0,
        partition: 0,
        position: 0,
        timestamp_nanos: 0,
        event_type: data.event_type,
        metadata: data.metadata,
        payload: data.payload,
        id: None,
        correlation_id: None,
        causation_id: None,
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(3));
    let event = AccountEvent::Deposited { cents: 12_345, currency: "EUR".into(), memo: "transfer number 42".into() };
    let compact = Compact::Deposited { cents: 12_345, currency: "EUR".into(), memo: "transfer number 42".into() };
    let json = recorded(EventData::encode(&event).unwrap());
    let post = recorded(EventData::encode(&compact).unwrap());
    let old = recorded(EventData::new("Deposited", br#"{"amount":123,"memo":"transfer number 42"}"#.to_vec()));
    println!("payload bytes: JSON {}, postcard {}", json.payload.len(), post.payload.len());

    let mut g = c.benchmark_group("typed_event");
    g.bench_function("encode_json", |b| b.iter(|| EventData::encode(black_box(&event)).unwrap()));
    g.bench_function("encode_postcard", |b| b.iter(|| EventData::encode(black_box(&compact)).unwrap()));
    g.bench_function("decode_json", |b| b.iter(|| black_box(&json).decode::<AccountEvent>().unwrap()));
    g.bench_function("decode_postcard", |b| b.iter(|| black_box(&post).decode::<Compact>().unwrap()));
    g.bench_function("decode_json_two_upcasters", |b| b.iter(|| black_box(&old).decode::<AccountEvent>().unwrap()));
    g.finish();

    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .create_if_missing(true)
        .partitions(1)
        .durability(Durability::Buffered { sync_interval: Duration::from_millis(50) });
    let store = Store::open(dir.path(), options).unwrap();
    let events: Vec<EventData> = (0..100u64)
        .map(|i| {
            let memo = format!("transfer number {i}");
            EventData::encode(&AccountEvent::Deposited { cents: i, currency: "EUR".into(), memo }).unwrap()
        })
        .collect();
    store.append("account-1", ExpectedVersion::NoStream, &events).unwrap();
    let mut g = c.benchmark_group("load_100_events");
    g.bench_function("typed", |b| b.iter(|| store.load::<Typed>("account-1").unwrap().state().balance));
    g.bench_function("bytes_hand_parsed", |b| b.iter(|| store.load::<Bytes>("account-1").unwrap().state().balance));
    g.finish();
    c.final_summary();
}
