//! Typed events (feature `serde`): what a `DomainEvent` is stored as, byte for byte; every
//! variant shape in both codecs; typed errors for what does not decode; and events written at
//! schema 1 read after a rename and two upcasters through every typed read path: stream
//! reads, aggregate loads, projections, subscriptions and archived events.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use common::opts;
use serde::{Deserialize, Serialize};
use strata::compaction::CompactionOptions;
use strata::projection::{HandlerError, OnFailure, ProjectionOptions};
use strata::typed::{Codec, DomainEvent, ENVELOPE_LEN, Envelope, TypedAggregate, TypedProjection, Upcasters};
use strata::{
    ApplyError, Cursor, Error, EventData, EventId, ExpectedVersion, Filter, ProjectionEngine, RecordedEvent,
    SnapshotIgnored, SnapshotUse, Store,
};

const WAIT: Duration = Duration::from_secs(20);

/// Every variant shape serde has.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Shapes {
    Struct {
        a: u32,
        b: String,
    },
    Newtype(u64),
    Tuple(i8, bool),
    Unit,
    #[serde(rename = "renamed-variant")]
    Renamed {
        x: Option<u16>,
    },
}

impl DomainEvent for Shapes {}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum CompactShapes {
    Struct {
        a: u32,
        b: String,
    },
    Newtype(u64),
    Tuple(i8, bool),
    Unit,
    #[serde(rename = "renamed-variant")]
    Renamed {
        x: Option<u16>,
    },
}

impl DomainEvent for CompactShapes {
    const CODEC: Codec = Codec::Postcard;
    fn schema_version(&self) -> u32 {
        7
    }
}

impl From<&Shapes> for CompactShapes {
    fn from(s: &Shapes) -> CompactShapes {
        match s.clone() {
            Shapes::Struct { a, b } => CompactShapes::Struct { a, b },
            Shapes::Newtype(n) => CompactShapes::Newtype(n),
            Shapes::Tuple(a, b) => CompactShapes::Tuple(a, b),
            Shapes::Unit => CompactShapes::Unit,
            Shapes::Renamed { x } => CompactShapes::Renamed { x },
        }
    }
}

fn all_shapes() -> Vec<Shapes> {
    vec![
        Shapes::Struct { a: 7, b: "seven".into() },
        Shapes::Newtype(u64::MAX),
        Shapes::Tuple(-3, true),
        Shapes::Unit,
        Shapes::Renamed { x: Some(9) },
        Shapes::Renamed { x: None },
    ]
}

fn recorded(stream: &str, version: u64, data: &EventData) -> RecordedEvent {
    RecordedEvent {
        stream_id: stream.into(),
        version,
        partition: 0,
        position: version,
        timestamp_nanos: 0,
        event_type: data.event_type.clone(),
        metadata: data.metadata.clone(),
        payload: data.payload.clone(),
        id: None,
        correlation_id: None,
        causation_id: None,
    }
}

#[test]
fn json_events_are_stored_as_variant_name_and_content() {
    let expected = [
        ("Struct", r#"{"a":7,"b":"seven"}"#),
        ("Newtype", "18446744073709551615"),
        ("Tuple", "[-3,true]"),
        ("Unit", "null"),
        ("renamed-variant", r#"{"x":9}"#),
        ("renamed-variant", r#"{"x":null}"#),
    ];
    for (i, (e, (ty, json))) in all_shapes().iter().zip(expected).enumerate() {
        let data = EventData::encode(e).unwrap();
        assert_eq!(data.event_type, ty);
        assert_eq!(std::str::from_utf8(&data.payload).unwrap(), json);
        // The envelope: 0xFF "st", codec 1 (JSON), schema 1 (u32 LE), then nothing.
        assert_eq!(data.metadata, [0xFF, b's', b't', 1, 1, 0, 0, 0]);
        assert_eq!(recorded("s", i as u64, &data).decode::<Shapes>().unwrap(), *e);
    }
}

#[test]
fn postcard_events_round_trip_and_name_their_codec_and_schema() {
    for e in all_shapes() {
        let compact = CompactShapes::from(&e);
        let data = EventData::encode(&compact).unwrap();
        let json = EventData::encode(&e).unwrap();
        assert_eq!(data.event_type, json.event_type);
        assert_eq!(data.metadata, [0xFF, b's', b't', 2, 7, 0, 0, 0]);
        assert!(data.payload.len() <= json.payload.len(), "{e:?}");
        let env = Envelope::parse(&data.metadata).unwrap();
        assert_eq!((env.codec, env.schema, env.metadata), (Codec::Postcard, 7, &[][..]));
        assert_eq!(recorded("s", 0, &data).decode::<CompactShapes>().unwrap(), compact);
    }
    // A unit variant is no bytes at all, and the variant is in the type, not the payload.
    assert!(EventData::encode(&CompactShapes::Unit).unwrap().payload.is_empty());
}

/// The same variants, in another order: events are stored by variant name, so a reordered
/// enum reads the old events as they were (postcard alone would number the variants).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Reordered {
    #[serde(rename = "renamed-variant")]
    Renamed {
        x: Option<u16>,
    },
    Unit,
    Tuple(i8, bool),
    Newtype(u64),
    Struct {
        a: u32,
        b: String,
    },
}

impl DomainEvent for Reordered {
    const CODEC: Codec = Codec::Postcard;
}

#[test]
fn reordering_variants_changes_nothing_stored() {
    let data = EventData::encode(&CompactShapes::Struct { a: 1, b: "b".into() }).unwrap();
    assert_eq!(recorded("s", 0, &data).decode::<Reordered>().unwrap(), Reordered::Struct { a: 1, b: "b".into() });
    let data = EventData::encode(&CompactShapes::Newtype(5)).unwrap();
    assert_eq!(recorded("s", 0, &data).decode::<Reordered>().unwrap(), Reordered::Newtype(5));
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct ItemShipped {
    order: String,
    quantity: u32,
}

impl DomainEvent for ItemShipped {}

#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct Anonymous(HashMap<String, u32>);

impl DomainEvent for Anonymous {}

#[test]
fn struct_events_are_named_by_the_struct_and_nameless_values_are_refused() {
    let data = EventData::encode(&ItemShipped { order: "o-1".into(), quantity: 2 }).unwrap();
    assert_eq!(data.event_type, "ItemShipped");
    assert_eq!(data.payload, br#"{"order":"o-1","quantity":2}"#);
    assert!(ItemShipped::handles("ItemShipped") && !ItemShipped::handles("Other"));
    let e = EventData::encode(&Anonymous(HashMap::new())).unwrap_err();
    assert!(matches!(&e, Error::Codec { decoding: false, at: None, .. }), "{e}");
    assert!(e.to_string().contains("no name"), "{e}");
}

#[test]
fn what_does_not_decode_is_a_typed_error_naming_the_event() {
    let good = EventData::encode(&Shapes::Struct { a: 1, b: "x".into() }).unwrap();
    let check = |data: &EventData, says: &str| {
        let e = recorded("acct-1", 4, data).decode::<Shapes>().unwrap_err();
        match &e {
            Error::Codec { at: Some((stream, 4)), decoding: true, .. } if stream == "acct-1" => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(e.kind(), strata::ErrorKind::Codec);
        assert!(e.to_string().contains(says), "{e} should say {says}");
    };
    check(&EventData { event_type: "Missing".into(), ..good.clone() }, "unknown variant");
    check(&EventData { payload: br#"{"a":"one"}"#.to_vec(), ..good.clone() }, "invalid type");
    check(&EventData { payload: br#"{"a":1,"b":"x"} trailing"#.to_vec(), ..good.clone() }, "trailing");
    check(&EventData { metadata: vec![0xFF, b's', b't', 9, 1, 0, 0, 0], ..good.clone() }, "unknown codec 9");
    check(&EventData { metadata: vec![0xFF, b's', b't', 1], ..good.clone() }, "cut short");
    let mut compact = EventData::encode(&CompactShapes::Newtype(300)).unwrap();
    compact.payload.push(0);
    let e = recorded("acct-1", 4, &compact).decode::<CompactShapes>().unwrap_err();
    assert!(e.to_string().contains("bytes after the event"), "{e}");
}

#[test]
fn byte_api_events_decode_and_application_metadata_is_kept() {
    // Written through the byte API, by another tool say: JSON, schema 1, no envelope.
    let plain = EventData::new("Struct", br#"{"a":3,"b":"y"}"#.to_vec()).with_metadata(b"trace=1".to_vec());
    let r = recorded("s", 0, &plain);
    assert_eq!(r.decode::<Shapes>().unwrap(), Shapes::Struct { a: 3, b: "y".into() });
    assert_eq!(r.user_metadata(), b"trace=1");
    let typed = EventData::encode_with_metadata(&Shapes::Unit, b"trace=2").unwrap();
    assert_eq!(typed.metadata.len(), ENVELOPE_LEN + 7);
    assert_eq!(recorded("s", 0, &typed).user_metadata(), b"trace=2");
}

// ---- Schema evolution: a rename and two upcasters. ----

/// What the application wrote a year ago (schema 1 of every event).
#[derive(Serialize, Deserialize)]
enum AccountEventV1 {
    Opened { owner: String },
    MoneyIn { amount: u64 },
    Withdrawn { amount: u64 },
}

impl DomainEvent for AccountEventV1 {}

/// Today: `MoneyIn` is `Deposited`; amounts are cents (schema 2) with a currency (schema 3).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { cents: u64, currency: String },
    Withdrawn { cents: u64, currency: String },
}

#[derive(Deserialize)]
struct AmountV1 {
    amount: u64,
}

#[derive(Serialize)]
struct AmountV2 {
    cents: u64,
}

thread_local! {
    /// Upcaster calls on this thread (tests run in parallel).
    static CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl DomainEvent for AccountEvent {
    fn schema_version(&self) -> u32 {
        match self {
            AccountEvent::Opened { .. } => 1,
            _ => 3,
        }
    }

    fn upcasters() -> &'static Upcasters {
        static UP: LazyLock<Upcasters> = LazyLock::new(|| {
            let to_cents = |old: AmountV1| {
                CALLS.set(CALLS.get() + 1);
                AmountV2 { cents: old.amount * 100 }
            };
            let add_currency = |mut v: serde_json::Value| {
                v.as_object_mut().ok_or("not an object")?.insert("currency".into(), "EUR".into());
                Ok(v)
            };
            Upcasters::new()
                .rename("MoneyIn", 1, "Deposited")
                .add("Deposited", 1, to_cents)
                .add("Withdrawn", 1, to_cents)
                .add_json("Deposited", 2, add_currency)
                .add_json("Withdrawn", 2, add_currency)
        });
        &UP
    }
}

#[derive(Default, Serialize, Deserialize, Debug)]
struct Account {
    owner: String,
    cents: i64,
    events: u64,
}

impl TypedAggregate for Account {
    type Event = AccountEvent;
    const SNAPSHOT_EVERY: u64 = 10;

    fn name() -> &'static str {
        "account"
    }

    fn apply(&mut self, event: &AccountEvent) -> Result<(), ApplyError> {
        match event {
            AccountEvent::Opened { owner } => self.owner.clone_from(owner),
            AccountEvent::Deposited { cents, currency } if currency == "EUR" => self.cents += *cents as i64,
            AccountEvent::Withdrawn { cents, currency } if currency == "EUR" => self.cents -= *cents as i64,
            other => return Err(format!("not in euros: {other:?}").into()),
        }
        self.events += 1;
        Ok(())
    }
}

/// The same aggregate, after its state changed shape: snapshots of schema 1 are refused.
#[derive(Default, Serialize, Deserialize, Debug)]
struct AccountV2 {
    owner: String,
    balance_cents: i64,
}

impl TypedAggregate for AccountV2 {
    type Event = AccountEvent;
    const SCHEMA: u32 = 2;

    fn name() -> &'static str {
        "account"
    }

    fn apply(&mut self, event: &AccountEvent) -> Result<(), ApplyError> {
        match event {
            AccountEvent::Opened { owner } => self.owner.clone_from(owner),
            AccountEvent::Deposited { cents, .. } => self.balance_cents += *cents as i64,
            AccountEvent::Withdrawn { cents, .. } => self.balance_cents -= *cents as i64,
        }
        Ok(())
    }
}

/// Writes `accounts` accounts of old events: opened, then `deposits` deposits of `i + 1`
/// units, then one withdrawal of 1 unit. Returns each account's balance in cents.
fn write_old(store: &Store, accounts: usize, deposits: u64) -> HashMap<String, i64> {
    let mut balances = HashMap::new();
    for a in 0..accounts {
        let stream = format!("account-{a}");
        let mut events = vec![AccountEventV1::Opened { owner: format!("owner {a}") }];
        events.extend((0..deposits).map(|i| AccountEventV1::MoneyIn { amount: i + 1 }));
        events.push(AccountEventV1::Withdrawn { amount: 1 });
        let data: Vec<EventData> = events.iter().map(|e| EventData::encode(e).unwrap()).collect();
        store.append(&stream, ExpectedVersion::NoStream, &data).unwrap();
        balances.insert(stream, (deposits * (deposits + 1) / 2 * 100) as i64 - 100);
    }
    balances
}

#[test]
fn old_events_read_through_a_rename_and_two_upcasters() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(2, 64 << 10)).unwrap();
    let balances = write_old(&store, 3, 4);
    // On disk they stay what they were.
    let stored = store.read_stream("account-1", 0, 100).unwrap();
    assert_eq!(stored[1].event_type, "MoneyIn");
    assert_eq!(stored[1].payload, br#"{"amount":1}"#);
    // Read: renamed, in cents, with a currency.
    let decoded: Vec<AccountEvent> = stored.iter().map(|e| e.decode().unwrap()).collect();
    assert_eq!(decoded[0], AccountEvent::Opened { owner: "owner 1".into() });
    assert_eq!(decoded[2], AccountEvent::Deposited { cents: 200, currency: "EUR".into() });
    assert_eq!(decoded[5], AccountEvent::Withdrawn { cents: 100, currency: "EUR".into() });
    assert!(AccountEvent::handles("MoneyIn") && AccountEvent::handles("Deposited") && !AccountEvent::handles("Other"));

    // New events are written at schema 3 and need no upcaster.
    let mut acct = store.load::<Account>("account-1").unwrap();
    assert_eq!(acct.state().cents, balances["account-1"]);
    let before = CALLS.get();
    store.commit_typed(&mut acct, &[AccountEvent::Deposited { cents: 5, currency: "EUR".into() }]).unwrap();
    let last = store.read_stream("account-1", 6, 1).unwrap().remove(0);
    assert_eq!(
        (last.event_type.as_str(), last.payload.as_slice()),
        ("Deposited", &br#"{"cents":5,"currency":"EUR"}"#[..])
    );
    assert_eq!(Envelope::parse(&last.metadata).unwrap().schema, 3);
    assert_eq!(last.decode::<AccountEvent>().unwrap(), AccountEvent::Deposited { cents: 5, currency: "EUR".into() });
    assert!(before > 0);
    assert_eq!(CALLS.get(), before, "schema-3 events went through no upcaster");
    assert_eq!(acct.state().cents, balances["account-1"] + 5);
}

#[test]
fn loads_snapshot_typed_state_and_a_new_state_schema_rebuilds_from_upcast_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(2, 64 << 10)).unwrap();
    let balances = write_old(&store, 1, 20);
    let loaded = store.load::<Account>("account-0").unwrap();
    assert_eq!((loaded.state().cents, loaded.state().events), (balances["account-0"], 22));
    assert_eq!(loaded.replayed(), 22);
    store.flush_snapshots().unwrap();
    let again = store.load::<Account>("account-0").unwrap();
    assert_eq!(again.snapshot(), &SnapshotUse::Used { version: 21 });
    assert_eq!((again.state().cents, again.replayed()), (balances["account-0"], 0));
    // The state changed shape (SCHEMA 2): the old snapshot is refused, the events replayed.
    let v2 = store.load::<AccountV2>("account-0").unwrap();
    assert!(
        matches!(v2.snapshot(), SnapshotUse::Ignored { reason: SnapshotIgnored::Rejected { schema: 1 }, .. }),
        "{:?}",
        v2.snapshot()
    );
    assert_eq!((v2.state().balance_cents, v2.replayed()), (balances["account-0"], 22));
    store.flush_snapshots().unwrap();
    let v2 = store.load::<AccountV2>("account-0").unwrap();
    assert_eq!(v2.snapshot(), &SnapshotUse::Used { version: 21 });
}

#[test]
fn typed_commands_are_at_most_once_and_bad_events_fail_the_apply() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 64 << 10)).unwrap();
    let mut acct = store.load::<Account>("account-9").unwrap();
    let cmd = EventId::from_u128(42);
    let open =
        [AccountEvent::Opened { owner: "o".into() }, AccountEvent::Deposited { cents: 10, currency: "EUR".into() }];
    let first = store.commit_command_typed(&mut acct, cmd, &open).unwrap();
    let mut retry = store.load::<Account>("account-9").unwrap();
    let again = store.commit_command_typed(&mut retry, cmd, &open).unwrap();
    assert!(again.duplicate && !first.duplicate);
    assert_eq!(store.stream_version("account-9").unwrap(), Some(1));
    // An event the aggregate's apply refuses: appended, and the commit says so.
    let r = store.commit_typed(&mut acct, &[AccountEvent::Deposited { cents: 1, currency: "USD".into() }]);
    assert!(matches!(r, Err(Error::Apply { version: 2, .. })), "{r:?}");
    // An event of another type in the stream is an apply error naming it.
    store.append("account-9", ExpectedVersion::Any, &[EventData::new("Bogus", "{}")]).unwrap();
    let r = store.load::<Account>("account-9");
    assert!(matches!(&r, Err(Error::Apply { version: 2, .. })), "{r:?}");
}

/// Balances per account, from typed events.
#[derive(Default)]
struct Balances {
    cents: Mutex<HashMap<String, i64>>,
    seen: AtomicU64,
}

impl TypedProjection for Balances {
    type Event = AccountEvent;

    fn handle(&self, event: &AccountEvent, recorded: &RecordedEvent) -> Result<(), HandlerError> {
        self.seen.fetch_add(1, Ordering::Relaxed);
        let delta = match event {
            AccountEvent::Opened { .. } => 0,
            AccountEvent::Deposited { cents, .. } => *cents as i64,
            AccountEvent::Withdrawn { cents, .. } => -(*cents as i64),
        };
        *self.cents.lock().unwrap().entry(recorded.stream_id.clone()).or_default() += delta;
        Ok(())
    }

    fn wants(&self, recorded: &RecordedEvent) -> bool {
        recorded.stream_id.starts_with("account-")
    }
}

#[test]
fn projections_get_upcast_events_skip_others_and_dead_letter_what_does_not_decode() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(4, 64 << 10)).unwrap());
    let mut balances = write_old(&store, 20, 5);
    // New events, other aggregates' events, and one damaged event of the projection's type.
    for (stream, b) in balances.iter_mut() {
        let data = EventData::encode(&AccountEvent::Deposited { cents: 1, currency: "EUR".into() }).unwrap();
        store.append(stream, ExpectedVersion::Any, &[data]).unwrap();
        *b += 1;
    }
    for i in 0..10 {
        store
            .append(&format!("order-{i}"), ExpectedVersion::Any, &[EventData::new("OrderPlaced", "not json")])
            .unwrap();
    }
    store.append("account-3", ExpectedVersion::Any, &[EventData::new("Deposited", "{oops")]).unwrap();
    // Another aggregate's event with a colliding type name, outside the streams it wants.
    store.append("ledger-1", ExpectedVersion::Any, &[EventData::new("Deposited", "not json")]).unwrap();
    let engine = ProjectionEngine::new(store.clone(), 2);
    let p = Arc::new(Balances::default());
    let options = ProjectionOptions::default().retry(2, Duration::from_millis(1)).on_failure(OnFailure::DeadLetter);
    engine.register("balances", p.clone(), options).unwrap();
    assert!(engine.wait_caught_up("balances", WAIT).unwrap());
    assert_eq!(*p.cents.lock().unwrap(), balances);
    assert_eq!(p.seen.load(Ordering::Relaxed), 20 * 8, "each account's 8 events, no order's");
    let dead = engine.dead_letters("balances").unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!((dead[0].stream.as_str(), dead[0].version), ("account-3", 8));
    assert!(dead[0].error.contains("could not be decoded"), "{}", dead[0].error);
}

#[test]
fn subscriptions_and_archived_events_read_through_the_upcasters() {
    let dir = tempfile::tempdir().unwrap();
    let compaction = CompactionOptions::default()
        .retention(Duration::ZERO)
        .require_snapshots(false)
        .interval(None)
        .max_archive_bytes(64 << 10)
        .block_bytes(8 << 10);
    let store = Store::open(dir.path(), opts(2, 16 << 10).compaction(compaction)).unwrap();
    let balances = write_old(&store, 40, 30);
    for i in 0..5 {
        store.append(&format!("order-{i}"), ExpectedVersion::Any, &[EventData::new("OrderPlaced", "{}")]).unwrap();
    }

    // A subscription to the account events (old names included), decoded.
    let filter = Filter::domain::<AccountEvent>();
    assert!(format!("{filter:?}").contains("MoneyIn"), "{filter:?}");
    let mut sub = store.subscribe_all(Cursor::start(), filter);
    let mut sums: HashMap<String, i64> = HashMap::new();
    let mut n = 0;
    loop {
        let batch = sub.poll(500).unwrap();
        if batch.is_empty() {
            break;
        }
        for e in batch {
            n += 1;
            let delta = match e.decode::<AccountEvent>().unwrap() {
                AccountEvent::Deposited { cents, .. } => cents as i64,
                AccountEvent::Withdrawn { cents, .. } => -(cents as i64),
                AccountEvent::Opened { .. } => 0,
            };
            *sums.entry(e.stream_id.clone()).or_default() += delta;
        }
    }
    assert_eq!(n, 40 * 32);
    assert_eq!(sums, balances);

    // Archived: the same reads, from the compressed archives.
    let r = store.compact().unwrap();
    assert!(r.segments_archived > 0, "{r:?}");
    for (stream, cents) in &balances {
        let acct = store.load::<Account>(stream).unwrap();
        assert_eq!(acct.state().cents, *cents, "{stream}");
        let events = store.read_stream(stream, 0, 100).unwrap();
        assert_eq!(events[1].event_type, "MoneyIn");
        assert_eq!(
            events[1].decode::<AccountEvent>().unwrap(),
            AccountEvent::Deposited { cents: 100, currency: "EUR".into() }
        );
    }
    let mut visited = 0;
    store
        .visit_stream("account-7", 0, |e| {
            e.decode::<AccountEvent>().unwrap();
            visited += 1;
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(visited, 32);
}
