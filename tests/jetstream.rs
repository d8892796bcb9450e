//! The JetStream backend against a real NATS cluster (3 `nats-server`s on 127.0.0.1, started
//! and stopped by each test; `tests/common/nats.rs`). Behaviour that is the same on both
//! backends runs on both, from one function.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::nats::{Cluster, FakeServer, free_port};
use strata::projection::{HandlerError, ProjectionOptions};
use strata::subscription::{Cursor, Filter};
use strata::{
    Aggregate, ApplyError, Error, EventData, EventId, ExpectedVersion, JetStreamOptions, Options, Projection,
    ProjectionEngine, RecordedEvent, SnapshotUse, Store,
};

/// One cluster at a time: three servers each are enough for two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn connect(c: &Cluster, prefix: &str, replicas: usize, partitions: u32) -> Store {
    let dir = std::env::temp_dir().join(format!("strata-js-test-{prefix}-{}", std::process::id()));
    Store::connect(JetStreamOptions::new(c.urls(), prefix).replicas(replicas).partitions(partitions).state_dir(dir))
        .unwrap_or_else(|e| panic!("connect: {e}{}", c.logs()))
}

fn ev(t: &str, p: impl Into<Vec<u8>>) -> EventData {
    EventData::new(t, p)
}

// ---- What both backends do alike. ----

/// Appends with every kind of expected version, and reads them back by stream and by
/// partition.
fn appends_and_reads(store: &Store) {
    let r = store.append("order-1", ExpectedVersion::NoStream, &[ev("Placed", "a")]).unwrap();
    assert_eq!((r.first_version, r.last_version, r.duplicate), (0, 0, false));
    let r = store.append("order-1", r.next_expected(), &[ev("Paid", "b"), ev("Shipped", "c")]).unwrap();
    assert_eq!((r.first_version, r.last_version), (1, 2));
    store.append("order-1", ExpectedVersion::StreamExists, &[ev("Noted", "d")]).unwrap();
    store.append("order-1", ExpectedVersion::Any, &[ev("Noted", "e")]).unwrap();
    let stale = store.append("order-1", ExpectedVersion::Exact(1), &[ev("Late", "x")]);
    assert!(
        matches!(&stale, Err(Error::WrongExpectedVersion { actual: Some(4), expected: ExpectedVersion::Exact(1), .. })),
        "{stale:?}"
    );
    let none = store.append("order-2", ExpectedVersion::StreamExists, &[ev("X", "")]);
    assert!(matches!(none, Err(Error::WrongExpectedVersion { actual: None, .. })), "{none:?}");
    let twice = store.append("order-1", ExpectedVersion::NoStream, &[ev("X", "")]);
    assert!(matches!(twice, Err(Error::WrongExpectedVersion { actual: Some(4), .. })), "{twice:?}");
    assert!(matches!(store.append("", ExpectedVersion::Any, &[ev("X", "")]), Err(Error::InvalidStreamId { .. })));
    assert!(matches!(store.append("s", ExpectedVersion::Any, &[]), Err(Error::EmptyAppend)));

    let events = store.read_stream("order-1", 0, 100).unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Placed", "Paid", "Shipped", "Noted", "Noted"]);
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert_eq!(events[2].payload, b"c");
    assert_eq!(store.read_stream("order-1", 3, 1).unwrap()[0].payload, b"d");
    assert_eq!(store.stream_version("order-1").unwrap(), Some(4));
    assert_eq!(store.stream_version("order-9").unwrap(), None);
    assert!(store.read_stream("order-9", 0, 10).unwrap().is_empty());
    let back = store.read_stream_backward("order-1", None, 2).unwrap();
    assert_eq!(back.iter().map(|e| e.version).collect::<Vec<_>>(), [4, 3]);

    // Many appends at once, each answered on its own.
    let many: Vec<_> =
        (0..70).map(|i| (format!("many-{i}"), ExpectedVersion::NoStream, vec![ev("A", i.to_string())])).collect();
    let answers: Vec<_> = store.append_many(many).into_iter().map(|f| f.wait().unwrap()).collect();
    assert_eq!(answers.len(), 70);
    assert!(answers.iter().all(|r| r.first_version == 0 && !r.duplicate));
    assert_eq!(store.read_stream("many-69", 0, 10).unwrap()[0].payload, b"69");

    // Several co-located streams, all or nothing, contiguous.
    let done = store
        .append_atomic([
            ("{order-17}/payments", ExpectedVersion::NoStream, vec![ev("Paid", "42"), ev("Fee", "1")]),
            ("{order-17}/shipping", ExpectedVersion::NoStream, vec![ev("Requested", "{}")]),
        ])
        .unwrap();
    assert_eq!(done[1].first_position, done[0].first_position + 2);
    assert_eq!((done[0].last_version, done[1].last_version), (1, 0));
    let clash = store.append_atomic([
        ("{order-17}/payments", ExpectedVersion::Exact(1), vec![ev("Refunded", "42")]),
        ("{order-17}/shipping", ExpectedVersion::NoStream, vec![ev("Requested", "{}")]),
    ]);
    assert!(
        matches!(&clash, Err(Error::WrongExpectedVersion { stream, .. }) if stream == "{order-17}/shipping"),
        "{clash:?}"
    );
    assert_eq!(store.stream_version("{order-17}/payments").unwrap(), Some(1));
    let ok = store
        .append_atomic([
            ("{order-17}/payments", ExpectedVersion::Exact(1), vec![ev("Refunded", "42")]),
            ("{order-17}/shipping", ExpectedVersion::Exact(0), vec![ev("Cancelled", "")]),
        ])
        .unwrap();
    assert_eq!((ok[0].last_version, ok[1].last_version), (2, 1));
    let apart = (0..100)
        .map(|i| format!("apart-{i}"))
        .find(|s| store.partition_of(s) != store.partition_of("order-1"))
        .unwrap();
    let split = store.append_atomic([
        ("order-1", ExpectedVersion::Any, vec![ev("X", "")]),
        (apart.as_str(), ExpectedVersion::Any, vec![ev("X", "")]),
    ]);
    assert!(matches!(split, Err(Error::NotColocated { .. })), "{split:?}");

    // Ids, metadata and event types that are not plain ASCII come back as they went in.
    let id = EventId::from_bytes([7; 16]);
    let fancy = EventData::new("Prix fixé ✓", vec![0u8, 255, 10]).with_metadata(b"\r\nmeta\0".to_vec()).with_id(id);
    store.append("menu", ExpectedVersion::NoStream, std::slice::from_ref(&fancy)).unwrap();
    let got = &store.read_stream("menu", 0, 1).unwrap()[0];
    assert_eq!(
        (got.event_type.as_str(), &got.payload[..], &got.metadata[..], got.id),
        ("Prix fixé ✓", &[0u8, 255, 10][..], &b"\r\nmeta\0"[..], Some(id))
    );

    // A partition's events by position, contiguous, each once.
    let p = store.partition_of("order-1");
    let part = store.read_partition(p, 0, 1000).unwrap();
    let mine: Vec<_> = part.iter().filter(|e| e.stream_id == "order-1").collect();
    assert_eq!(mine.len(), 5);
    for w in part.windows(2) {
        assert!(w[1].position > w[0].position);
    }
    assert_eq!(store.head(p).unwrap(), part.last().unwrap().position + 1);
    let mut seen = 0;
    store
        .scan_partition(p, part[1].position, 2, |e| {
            assert_eq!(e.position, part[1 + seen].position);
            seen += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(seen, 2);
    assert!(matches!(store.read_partition(store.partition_count(), 0, 1), Err(Error::NoSuchPartition { .. })));
}

/// Stream ids with the characters NATS subjects give a meaning to.
fn awkward_stream_ids(store: &Store) {
    let ids = ["a.b", "a*", ">", "two words", "a=2Eb", "café", "日本-1", "{order-7}/pay", "x.>.*"];
    for (i, id) in ids.iter().enumerate() {
        store.append(id, ExpectedVersion::NoStream, &[ev("E", i.to_string())]).unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let got = store.read_stream(id, 0, 10).unwrap();
        assert_eq!(got.len(), 1, "{id}");
        assert_eq!((got[0].stream_id.as_str(), got[0].payload.clone()), (*id, i.to_string().into_bytes()));
    }
    // `a.b` and `a=2Eb` escape apart; `a*` and `>` are not wildcards.
    let mut all = Vec::new();
    for p in 0..store.partition_count() {
        all.extend(store.read_partition(p, 0, 10_000).unwrap().into_iter().map(|e| e.stream_id));
    }
    for id in ids {
        assert_eq!(all.iter().filter(|s| *s == id).count(), 1, "{id}");
    }
    let streams: HashSet<String> = store.streams().map(Result::unwrap).collect();
    assert!(ids.iter().all(|id| streams.contains(*id)), "{streams:?}");
}

#[derive(Default, Clone, Debug, PartialEq)]
struct Account {
    balance: i64,
}

impl Aggregate for Account {
    const SCHEMA: u32 = 1;
    const SNAPSHOT_EVERY: u64 = 5;

    fn apply(&mut self, e: &RecordedEvent) -> Result<(), ApplyError> {
        let n: i64 = std::str::from_utf8(&e.payload)?.parse()?;
        self.balance += n;
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        self.balance.to_le_bytes().to_vec()
    }

    fn decode(schema: u32, state: &[u8]) -> Option<Self> {
        let bytes: [u8; 8] = state.try_into().ok()?;
        (schema == 1).then_some(Account { balance: i64::from_le_bytes(bytes) })
    }
}

/// Aggregates load and commit, and load from a snapshot once one is written.
fn aggregates_and_snapshots(store: &Store) {
    for i in 1..=12 {
        let mut a = store.load::<Account>("acct-1").unwrap();
        store.commit(&mut a, &[ev("Deposited", i.to_string())]).unwrap();
    }
    store.flush_snapshots().unwrap();
    let a = store.load::<Account>("acct-1").unwrap();
    assert_eq!(a.state().balance, (1..=12).sum::<i64>());
    assert_eq!(a.version(), Some(11));
    assert!(matches!(a.snapshot(), SnapshotUse::Used { .. }), "{:?}", a.snapshot());
    assert!(a.replayed() < 12, "{}", a.replayed());
    // A stale aggregate's commit is refused.
    let mut old = store.load::<Account>("acct-1").unwrap();
    let mut new = store.load::<Account>("acct-1").unwrap();
    store.commit(&mut new, &[ev("Deposited", "1")]).unwrap();
    assert!(matches!(store.commit(&mut old, &[ev("Deposited", "1")]), Err(Error::WrongExpectedVersion { .. })));
}

#[derive(Default)]
struct Count {
    events: AtomicU64,
    per_stream: Mutex<BTreeMap<String, Vec<u64>>>,
}

impl Projection for Count {
    fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        self.events.fetch_add(1, Ordering::Relaxed);
        self.per_stream.lock().unwrap().entry(e.stream_id.clone()).or_default().push(e.version);
        Ok(())
    }
}

/// A projection sees every event once, in stream order; a subscription follows new ones.
fn projections_and_subscriptions(store: Arc<Store>) {
    let engine = ProjectionEngine::new(store.clone(), 2);
    let count = Arc::new(Count::default());
    engine.register("count", count.clone(), ProjectionOptions::default()).unwrap();
    let mut sub = store.subscribe_all(store.head_cursor().unwrap(), Filter::category("cart"));
    for i in 0..40 {
        let s = format!("cart-{}", i % 8);
        store.append(&s, ExpectedVersion::Any, &[ev("Added", i.to_string())]).unwrap();
    }
    assert!(engine.wait_caught_up("count", Duration::from_secs(30)).unwrap());
    let per = count.per_stream.lock().unwrap().clone();
    for i in 0..8 {
        let v = per.get(&format!("cart-{i}")).cloned().unwrap_or_default();
        assert_eq!(v, (0..5).collect::<Vec<u64>>(), "cart-{i}");
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 40 && Instant::now() < deadline {
        got.extend(sub.next_batch(100, Duration::from_millis(200)).unwrap());
    }
    assert_eq!(got.len(), 40);
    assert_eq!(sub.lag().unwrap(), 0);
    engine.stop().unwrap();
    let _ = Cursor::start();
}

fn every_shared_behaviour(store: Arc<Store>) {
    appends_and_reads(&store);
    awkward_stream_ids(&store);
    aggregates_and_snapshots(&store);
    projections_and_subscriptions(store);
}

#[test]
fn the_embedded_store_passes_the_shared_checks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), Options::default().create_if_missing(true).partitions(4)).unwrap());
    every_shared_behaviour(store);
}

#[test]
fn a_three_node_cluster_passes_the_shared_checks() {
    let _s = serial();
    let c = Cluster::start(3);
    let store = Arc::new(connect(&c, "shared", 3, 4));
    every_shared_behaviour(store.clone());
    // A second connection sees the same store, with the partition count it was created with.
    let other = Store::connect(JetStreamOptions::new(c.urls(), "shared").partitions(9)).unwrap();
    assert_eq!(other.partition_count(), 4);
    assert_eq!(other.stream_version("order-1").unwrap(), Some(4));
    assert_eq!(other.read_stream("acct-1", 0, 100).unwrap().len(), 13);
    // What only the embedded store does is refused by name.
    assert!(matches!(store.compact(), Err(Error::Unsupported { backend: "jetstream", .. })));
    assert!(matches!(store.grow_partitions(8), Err(Error::Unsupported { .. })));
    assert!(matches!(store.delete_stream("order-1"), Err(Error::Unsupported { .. })));
    store.close().unwrap();
    assert!(matches!(store.append("x", ExpectedVersion::Any, &[ev("E", "")]), Err(Error::Closed)));
}

// ---- Refusals at connect. ----

#[test]
fn servers_that_cannot_serve_are_refused_at_connect() {
    let _s = serial();
    // Nobody listening.
    let port = free_port();
    let e = Store::connect(
        JetStreamOptions::new([format!("nats://127.0.0.1:{port}")], "x").timeout(Duration::from_secs(2)),
    );
    assert!(matches!(e, Err(Error::Unreachable { .. })), "{e:?}");
    // Too old (2.9.10 ignores allow_atomic and would half-write a batch).
    let old = FakeServer::start("2.9.10", true);
    let e = Store::connect(JetStreamOptions::new([format!("nats://127.0.0.1:{}", old.port)], "x"));
    match e {
        Err(Error::IncompatibleServer { server, reason }) => {
            assert_eq!(server, "2.9.10");
            assert!(reason.contains("2.12.0"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A bad prefix.
    assert!(matches!(
        Store::connect(JetStreamOptions::new(["nats://127.0.0.1:1"], "a.b")),
        Err(Error::InvalidOptions(_))
    ));
}

#[test]
fn a_partition_stream_without_atomic_batches_is_refused() {
    let _s = serial();
    let c = Cluster::start(1);
    // Someone made the store's first stream by hand, without allow_atomic.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(c.urls()[0].as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "hand_P0".into(),
            subjects: vec!["hand.p0.>".into()],
            allow_direct: true,
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let e = Store::connect(JetStreamOptions::new(c.urls(), "hand").replicas(1));
    assert!(matches!(&e, Err(Error::NotAStore { .. })), "{e:?}");
    // And one with strata's metadata but a setting changed since.
    rt.block_on(async {
        let client = async_nats::connect(c.urls()[0].as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "edited_P0".into(),
            subjects: vec!["edited.p0.>".into()],
            allow_direct: true,
            metadata: [
                ("strata.partitions".to_string(), "1".to_string()),
                ("strata.partition".to_string(), "0".to_string()),
                ("strata.mapping".to_string(), "1".to_string()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let e = Store::connect(JetStreamOptions::new(c.urls(), "edited").replicas(1));
    match e {
        Err(Error::IncompatibleServer { reason, .. }) => assert!(reason.contains("allow_atomic"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A store that is not there, when creating it is not allowed.
    let e = Store::connect(JetStreamOptions::new(c.urls(), "fresh").replicas(1).create_if_missing(false));
    assert!(matches!(&e, Err(Error::NotAStore { .. })), "{e:?}");
}

// ---- Concurrency across processes, failover, restarts. ----

/// Run by `two_processes_race_on_one_stream` in a child process: appends `STRATA_CHILD_N`
/// events to one stream, each after the version it read, retrying on conflicts; prints what
/// it won and how often it lost.
#[test]
#[ignore = "run as a child process by two_processes_race_on_one_stream"]
fn child_appender() {
    let Ok(urls) = std::env::var("STRATA_CHILD_URLS") else { return };
    let n: u64 = std::env::var("STRATA_CHILD_N").unwrap().parse().unwrap();
    let me = std::env::var("STRATA_CHILD_NAME").unwrap();
    let store = Store::connect(JetStreamOptions::new(urls.split(','), "race")).unwrap();
    // Both children start appending at the same moment.
    let start: u128 = std::env::var("STRATA_CHILD_START").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    std::thread::sleep(Duration::from_millis(start.saturating_sub(now) as u64));
    let (mut won, mut lost) = (Vec::new(), 0u64);
    while (won.len() as u64) < n {
        let last = store.stream_version("contended").unwrap();
        match store.append("contended", ExpectedVersion::after(last), &[ev("Step", me.clone())]) {
            Ok(r) => won.push(r.last_version),
            Err(Error::WrongExpectedVersion { .. }) => lost += 1,
            Err(e) => panic!("{e}"),
        }
    }
    println!("RESULT {me} lost={lost} won={won:?}");
}

#[test]
fn two_processes_race_on_one_stream() {
    let _s = serial();
    let c = Cluster::start(3);
    drop(connect(&c, "race", 3, 2));
    let exe = std::env::current_exe().unwrap();
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 2000;
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            std::process::Command::new(&exe)
                .args(["--exact", "child_appender", "--ignored", "--nocapture", "--test-threads=1"])
                .env("STRATA_CHILD_URLS", c.urls().join(","))
                .env("STRATA_CHILD_N", "100")
                .env("STRATA_CHILD_START", start.to_string())
                .env("STRATA_CHILD_NAME", name)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut won = Vec::new();
    let mut lost = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text
            .lines()
            .find_map(|l| l.split_once("RESULT "))
            .map(|(_, r)| r.to_string())
            .unwrap_or_else(|| panic!("{text}"));
        lost += line.split("lost=").nth(1).unwrap().split(' ').next().unwrap().parse::<u64>().unwrap();
        let list = line.split("won=[").nth(1).unwrap().trim_end_matches(']');
        won.extend(list.split(", ").filter(|s| !s.is_empty()).map(|v| v.parse::<u64>().unwrap()));
    }
    // Every version was won by exactly one process, and the stream holds them all in order.
    won.sort();
    assert_eq!(won, (0..200).collect::<Vec<u64>>());
    assert!(lost > 0, "the two processes never raced");
    let store = connect(&c, "race", 3, 2);
    let events = store.read_stream("contended", 0, 1000).unwrap();
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), (0..200).collect::<Vec<u64>>());
    println!("two processes, 200 appends: {lost} stale expected versions refused");
}

/// Run by `killing_one_of_two_projection_processes_loses_nothing` in a child process: runs the
/// shared projection "audit", which writes a line per event it handles to `{name}.events`
/// (one `write` each, so a kill -9 leaves whole lines), and every 50 ms writes the partitions
/// it runs to `{name}.held`, until `stop` appears.
#[test]
#[ignore = "run as a child process by killing_one_of_two_projection_processes_loses_nothing"]
fn child_projector() {
    use std::io::Write;
    let Ok(urls) = std::env::var("STRATA_PROJ_URLS") else { return };
    let dir = std::path::PathBuf::from(std::env::var("STRATA_PROJ_DIR").unwrap());
    let me = std::env::var("STRATA_PROJ_NAME").unwrap();
    let options = JetStreamOptions::new(urls.split(','), "proj")
        .lease(Duration::from_secs(2))
        .state_dir(dir.join(format!("state-{me}")));
    let store = Arc::new(Store::connect(options).unwrap());
    struct Audit(Mutex<std::fs::File>);
    impl Projection for Audit {
        fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
            let line = format!("{} {} {} {}\n", e.partition, e.position, e.stream_id, e.version);
            self.0.lock().unwrap().write_all(line.as_bytes())?;
            std::thread::sleep(Duration::from_millis(3));
            Ok(())
        }
    }
    let out = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{me}.events"))).unwrap();
    // One worker, 3 ms an event: a is still busy when it is killed.
    let engine = ProjectionEngine::new(store.clone(), 1);
    engine.register("audit", Arc::new(Audit(Mutex::new(out))), ProjectionOptions::default().batch(50)).unwrap();
    while !dir.join("stop").exists() {
        let s = engine.status("audit").unwrap();
        let held: Vec<String> = s.partitions.iter().filter(|p| p.here).map(|p| p.partition.to_string()).collect();
        std::fs::write(dir.join(format!("{me}.held.tmp")), held.join(" ")).unwrap();
        std::fs::rename(dir.join(format!("{me}.held.tmp")), dir.join(format!("{me}.held"))).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    engine.stop().unwrap();
    println!("DONE {me}");
}

#[test]
fn killing_one_of_two_projection_processes_loses_nothing() {
    let _s = serial();
    let c = Cluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(
        JetStreamOptions::new(c.urls(), "proj")
            .partitions(8)
            .lease(Duration::from_secs(2))
            .state_dir(dir.path().join("parent")),
    )
    .unwrap();
    let mut appended: BTreeMap<String, u64> = BTreeMap::new();
    let mut append = |n: usize, from: usize| {
        for chunk in (from..from + n).collect::<Vec<_>>().chunks(100) {
            let appends: Vec<(String, ExpectedVersion, Vec<EventData>)> = chunk
                .iter()
                .map(|i| (format!("acct-{}", i % 40), ExpectedVersion::Any, vec![ev("Moved", i.to_string())]))
                .collect();
            let many = appends.iter().map(|(s, e, evs)| (s.as_str(), *e, evs.as_slice()));
            for (r, (s, _, _)) in store.append_many(many).into_iter().zip(&appends) {
                let r = r.wait().unwrap();
                appended.insert(s.clone(), r.last_version + 1);
            }
        }
    };
    append(200, 0);
    let exe = std::env::current_exe().unwrap();
    let spawn = |name: &str| {
        std::process::Command::new(&exe)
            .args(["--exact", "child_projector", "--ignored", "--nocapture", "--test-threads=1"])
            .env("STRATA_PROJ_URLS", c.urls().join(","))
            .env("STRATA_PROJ_DIR", dir.path())
            .env("STRATA_PROJ_NAME", name)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let held = |name: &str| -> Vec<u32> {
        std::fs::read_to_string(dir.path().join(format!("{name}.held")))
            .unwrap_or_default()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    };
    let lines = |name: &str| -> Vec<(u32, u64, String, u64)> {
        std::fs::read_to_string(dir.path().join(format!("{name}.events")))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].to_string(), f[3].parse().unwrap())
            })
            .collect()
    };
    let wait = |what: &str, secs: u64, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}{}", c.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut a = spawn("a");
    let b = spawn("b");
    // The two share the partitions: four each.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(held("a").len() == 4 && held("b").len() == 4) {
        assert!(
            Instant::now() < deadline,
            "the processes did not share the partitions: a {:?}, b {:?}",
            held("a"),
            held("b")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    append(3000, 200);
    wait("process a has handled 300 events", 60, &|| lines("a").len() >= 300);
    // a stalls (SIGSTOP) past its leases: b takes its partitions. When a resumes, the batch it
    // was in finishes, its checkpoint writes are refused, and it gives the partitions up; then
    // the two share again.
    let signal = |sig: &str, pid: u32| {
        assert!(std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    };
    signal("-STOP", a.id());
    let stalled = Instant::now();
    let before_stall = lines("a").len();
    append(1000, 3200);
    wait("process b runs a's partitions while a is stopped", 60, &|| held("b").len() == 8);
    let stall_takeover = stalled.elapsed();
    signal("-CONT", a.id());
    wait("the two share again", 60, &|| held("a").len() == 4 && held("b").len() == 4);
    let after = lines("a").len();
    append(1000, 4200);
    wait("process a handles again", 60, &|| lines("a").len() >= after + 300);
    let handled_before_kill = lines("a").len();
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    let killed = Instant::now();
    let orphaned = held("a");
    append(2000, 5200);
    wait("process b runs every partition", 60, &|| held("b").len() == 8);
    let takeover = killed.elapsed();
    let total: u64 = appended.values().sum();
    let handled = || {
        let mut seen: HashSet<(u32, u64)> = HashSet::new();
        for name in ["a", "b"] {
            seen.extend(lines(name).into_iter().map(|(p, pos, _, _)| (p, pos)));
        }
        seen.len() as u64
    };
    wait("every event is handled", 120, &|| handled() >= total);
    std::fs::write(dir.path().join("stop"), b"").unwrap();
    let out = b.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // Each process handled each stream in version order, and between them every version of
    // every stream, nothing else.
    let (mut union, mut twice) = (BTreeMap::<String, HashSet<u64>>::new(), 0usize);
    for name in ["a", "b"] {
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for (k, (_, _, s, v)) in lines(name).into_iter().enumerate() {
            // b in order throughout; a up to its stall (what it handles after it resumes starts
            // again from b's checkpoints, and may repeat the batch it was in).
            if let Some(&l) = last.get(&s)
                && (name == "b" || k < before_stall)
            {
                assert!(v > l, "process {name} handled {s} v{v} after v{l}");
            }
            last.insert(s.clone(), v);
            if !union.entry(s).or_default().insert(v) {
                twice += 1;
            }
        }
    }
    for (s, n) in &appended {
        let got = union.get(s).cloned().unwrap_or_default();
        assert_eq!(got, (0..*n).collect::<HashSet<u64>>(), "{s}");
    }
    assert_eq!(union.len(), appended.len());
    println!(
        "two projection processes, one killed: {total} events, all handled, in order per stream; \
         a had handled {handled_before_kill} and ran partitions {orphaned:?}; b ran all 8 {takeover:?} after the kill \
         and {stall_takeover:?} after a stalled (lease 2 s); {twice} events handled twice (past a's last stored \
         checkpoints, at the stall and at the kill)"
    );
}

/// Fails on events whose payload is "bad", unless it accepts them.
#[derive(Default)]
struct Fussy {
    accept_bad: bool,
    seen: Mutex<Vec<u64>>,
}

impl Projection for Fussy {
    fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        if e.payload == b"bad" && !self.accept_bad {
            return Err("bad".into());
        }
        self.seen.lock().unwrap().push(e.version);
        Ok(())
    }
}

#[test]
fn a_shared_projections_dead_letters_move_with_its_partitions() {
    let _s = serial();
    let c = Cluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let open = |tag: &str| {
        let o = JetStreamOptions::new(c.urls(), "dlq").partitions(2).lease(Duration::from_secs(2));
        Arc::new(Store::connect(o.state_dir(dir.path().join(tag))).unwrap())
    };
    let options =
        ProjectionOptions::default().on_failure(strata::projection::OnFailure::Park).retry(1, Duration::from_millis(1));
    // The first process: v1 fails and is dead-lettered, which parks the stream, so v2 follows it.
    let first = open("first");
    let engine = ProjectionEngine::new(first.clone(), 1);
    let fussy = Arc::new(Fussy::default());
    engine.register("fussy", fussy.clone(), options.clone()).unwrap();
    for p in ["ok", "bad", "ok"] {
        first.append("acct-1", ExpectedVersion::Any, &[ev("E", p)]).unwrap();
    }
    assert!(engine.wait_caught_up("fussy", Duration::from_secs(30)).unwrap());
    let letters = engine.dead_letters("fussy").unwrap();
    assert_eq!(letters.iter().map(|l| (l.version, l.attempts)).collect::<Vec<_>>(), [(1, 1), (2, 0)]);
    assert_eq!(*fussy.seen.lock().unwrap(), [0]);
    // Stopping gives the leases up: the second process takes the partitions at once.
    engine.stop().unwrap();
    let second = open("second");
    let engine = ProjectionEngine::new(second.clone(), 1);
    let fussy = Arc::new(Fussy { accept_bad: true, ..Default::default() });
    let registered = Instant::now();
    engine.register("fussy", fussy.clone(), options).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !engine.status("fussy").unwrap().partitions.iter().all(|p| p.here) {
        assert!(Instant::now() < deadline, "the second process did not take the partitions");
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = registered.elapsed();
    // It has the letters, and the stream is still parked: v3 joins them, unhandled.
    assert_eq!(engine.dead_letters("fussy").unwrap().len(), 2);
    second.append("acct-1", ExpectedVersion::Any, &[ev("E", "ok")]).unwrap();
    assert!(engine.wait_caught_up("fussy", Duration::from_secs(30)).unwrap());
    let letters = engine.dead_letters("fussy").unwrap();
    assert_eq!(letters.iter().map(|l| l.version).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(fussy.seen.lock().unwrap().is_empty());
    // Replayed in order, they unpark the stream: v4 is handled as it comes.
    let report = engine.replay_dead_letters("fussy", None).unwrap();
    assert_eq!((report.replayed, report.failed.len()), (3, 0));
    second.append("acct-1", ExpectedVersion::Any, &[ev("E", "ok")]).unwrap();
    assert!(engine.wait_caught_up("fussy", Duration::from_secs(30)).unwrap());
    assert_eq!(*fussy.seen.lock().unwrap(), [1, 2, 3, 4]);
    assert!(engine.dead_letters("fussy").unwrap().is_empty());
    let status = engine.status("fussy").unwrap();
    assert!(status.partitions.iter().all(|p| p.owner.is_some()));
    engine.stop().unwrap();
    // A third process reads an empty queue: the resolutions are on the cluster too.
    let third = open("third");
    let engine = ProjectionEngine::new(third, 1);
    engine.register("fussy", Arc::new(Fussy::default()), ProjectionOptions::default()).unwrap();
    assert!(engine.dead_letters("fussy").unwrap().is_empty());
    println!("shared dead letters: the second process ran both partitions {took:?} after registering");
}

#[test]
fn killing_the_stream_leader_loses_no_acknowledged_append() {
    let _s = serial();
    let mut c = Cluster::start(3);
    let store = Arc::new(connect(&c, "failover", 3, 1));
    let acked = Arc::new(Mutex::new(Vec::<(String, u64, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let last_ack = Arc::new(Mutex::new(Instant::now()));
    let worst_gap = Arc::new(Mutex::new(Duration::ZERO));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (store, acked, stop, last_ack, worst_gap) =
                (store.clone(), acked.clone(), stop.clone(), last_ack.clone(), worst_gap.clone());
            std::thread::spawn(move || {
                let stream = format!("writer-{w}");
                let mut expected = ExpectedVersion::NoStream;
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let payload = format!("{w}:{i}");
                    let e = ev("Tick", payload.clone())
                        .with_id(EventId::from_bytes([[w as u8; 8], i.to_le_bytes()].concat().try_into().unwrap()));
                    let r = store.append(&stream, expected, &[e]).unwrap_or_else(|e| panic!("writer {w}: {e}"));
                    expected = r.next_expected();
                    acked.lock().unwrap().push((stream.clone(), r.last_version, payload));
                    let now = Instant::now();
                    let mut last = last_ack.lock().unwrap();
                    let gap = now - *last;
                    *last = now;
                    let mut worst = worst_gap.lock().unwrap();
                    *worst = (*worst).max(gap);
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let before = acked.lock().unwrap().len();
    let leader = c.stream_leader("failover_P0").expect("a stream leader");
    let killed_at = Instant::now();
    c.nodes[leader].kill9();
    *worst_gap.lock().unwrap() = Duration::ZERO;
    // Wait for appends to flow again, then some more.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < before + 200 {
        assert!(Instant::now() < deadline, "appends did not resume after the leader died{}", c.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let resumed = killed_at.elapsed();
    c.restart(leader);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Release);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    // Every acknowledged append is there, once, at its version; no stream has anything else.
    let fresh = connect(&c, "failover", 3, 1);
    let mut by_stream: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for (s, v, p) in &acked {
        by_stream.entry(s.clone()).or_default().push((*v, p.clone()));
    }
    for (s, want) in &by_stream {
        let got: Vec<(u64, String)> = fresh
            .read_stream(s, 0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| (e.version, String::from_utf8(e.payload).unwrap()))
            .collect();
        assert_eq!(&got, want, "{s}");
    }
    println!(
        "leader kill: {} acknowledged appends from 8 writers, 0 lost, 0 duplicated; appends resumed {:?} after the kill, worst gap between acknowledgments {:?}",
        acked.len(),
        resumed,
        *worst_gap.lock().unwrap()
    );
}

#[test]
fn a_whole_cluster_restart_keeps_everything_acknowledged() {
    let _s = serial();
    let mut c = Cluster::start(3);
    let store = connect(&c, "restart", 3, 2);
    let mut acked = Vec::new();
    for i in 0..200u64 {
        let s = format!("s-{}", i % 10);
        let r = store.append(&s, ExpectedVersion::Any, &[ev("E", i.to_string())]).unwrap();
        acked.push((s, r.last_version, i));
    }
    drop(store);
    for n in &mut c.nodes {
        n.kill9();
    }
    for i in 0..3 {
        c.restart(i);
    }
    c.wait_ready(Duration::from_secs(60));
    let store = connect(&c, "restart", 3, 2);
    for (s, v, i) in acked {
        let e = store.read_stream(&s, v, 1).unwrap();
        assert_eq!(e.first().map(|e| e.payload.clone()), Some(i.to_string().into_bytes()), "{s} v{v}");
    }
}

#[test]
fn strata_load_runs_end_to_end_on_a_cluster() {
    let _s = serial();
    let c = Cluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["load", "--backend", "jetstream", "--servers", &c.urls().join(","), "--replicas", "3"])
        .args(["--events", "4000", "--streams", "200", "--writers", "8", "--compact-every", "0", "--json"])
        .arg("--dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}{}", String::from_utf8_lossy(&out.stderr), c.logs());
    let report: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    // The load itself checks that the partitions hold every acknowledged event and that the
    // rebuilt projection counted them all.
    assert_eq!(report["events"], 4000, "{report}");
}

#[test]
fn async_callers_are_served() {
    let _s = serial();
    let c = Cluster::start(1);
    let urls = c.urls();
    // Connecting, the blocking calls, an awaited append and dropping the store, all on a
    // thread of the caller's own tokio runtime.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let store = Store::connect(JetStreamOptions::new(urls, "async").replicas(1)).unwrap();
        store.append("a", ExpectedVersion::NoStream, &[ev("E", "1")]).unwrap();
        let r = store.append_async("a", ExpectedVersion::Exact(0), &[ev("E", "2")]).await.unwrap();
        assert_eq!(r.last_version, 1);
        assert_eq!(store.read_stream("a", 0, 10).unwrap().len(), 2);
        drop(store);
    });
}
