//! The `tracing` feature: what an append, a load, a projection batch, a compaction, a grow
//! and an open send, with the field values promised in the crate docs, seen by a small
//! hand-written subscriber that records every span and event.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use strata::compaction::CompactionOptions;
use strata::projection::{HandlerError, OnFailure, ProjectionOptions};
use strata::{
    Aggregate, ApplyError, Durability, ExpectedVersion, Projection, ProjectionEngine, RecordedEvent, RecoveryAction,
    Store,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record as SpanValues};
use tracing::{Event, Metadata, Subscriber};

/// A span opened or an event sent.
#[derive(Debug, Clone)]
struct Rec {
    span: bool,
    target: String,
    level: tracing::Level,
    /// The span's name, or the event's message.
    name: String,
    fields: BTreeMap<String, String>,
    /// The innermost span entered on the thread at the time (its name).
    parent: Option<String>,
}

impl Rec {
    fn get(&self, field: &str) -> &str {
        self.fields.get(field).map_or_else(|| panic!("no field {field:?} in {self:?}"), String::as_str)
    }
    fn u64(&self, field: &str) -> u64 {
        self.get(field).parse().unwrap_or_else(|_| panic!("{field:?} is not a u64 in {self:?}"))
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.to_string());
    }
}

/// Records everything, from every thread (installed as the global default).
#[derive(Default)]
struct Recorder {
    next_id: AtomicU64,
    names: Mutex<BTreeMap<u64, String>>,
    recs: Mutex<Vec<Rec>>,
}

thread_local! {
    static ENTERED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Recorder {
    /// What was recorded (a test that failed while looking does not spoil the next one).
    fn recs(&self) -> MutexGuard<'_, Vec<Rec>> {
        self.recs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn clear(&self) {
        self.recs().clear();
    }

    fn current(&self) -> Option<String> {
        let id = ENTERED.with(|s| s.borrow().last().copied())?;
        self.names.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = BTreeMap::new();
        span.record(&mut Fields(&mut fields));
        let meta = span.metadata();
        self.names.lock().unwrap_or_else(|e| e.into_inner()).insert(id, meta.name().into());
        let rec = Rec {
            span: true,
            target: meta.target().into(),
            level: *meta.level(),
            name: meta.name().into(),
            fields,
            parent: self.current(),
        };
        self.recs().push(rec);
        Id::from_u64(id)
    }
    fn record(&self, _: &Id, _: &SpanValues<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let meta = event.metadata();
        let name = fields.remove("message").unwrap_or_default();
        let rec = Rec {
            span: false,
            target: meta.target().into(),
            level: *meta.level(),
            name,
            fields,
            parent: self.current(),
        };
        self.recs().push(rec);
    }
    fn enter(&self, span: &Id) {
        ENTERED.with(|s| s.borrow_mut().push(span.into_u64()));
    }
    fn exit(&self, span: &Id) {
        ENTERED.with(|s| {
            let mut s = s.borrow_mut();
            if let Some(i) = s.iter().rposition(|&x| x == span.into_u64()) {
                s.remove(i);
            }
        });
    }
}

static RECORDER: OnceLock<Arc<Recorder>> = OnceLock::new();
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The recorder, installed once, emptied; and a lock: one test at a time, so each sees only
/// what its own store sends.
fn recording() -> (&'static Recorder, MutexGuard<'static, ()>) {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let r = RECORDER.get_or_init(|| {
        let r = Arc::new(Recorder::default());
        tracing::subscriber::set_global_default(Dispatch(r.clone())).unwrap();
        r
    });
    r.clear();
    (r, guard)
}

/// The recorder behind an `Arc`, as a subscriber.
struct Dispatch(Arc<Recorder>);

impl Subscriber for Dispatch {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.0.enabled(m)
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.0.new_span(span)
    }
    fn record(&self, id: &Id, values: &SpanValues<'_>) {
        self.0.record(id, values)
    }
    fn record_follows_from(&self, a: &Id, b: &Id) {
        self.0.record_follows_from(a, b)
    }
    fn event(&self, event: &Event<'_>) {
        self.0.event(event)
    }
    fn enter(&self, span: &Id) {
        self.0.enter(span)
    }
    fn exit(&self, span: &Id) {
        self.0.exit(span)
    }
}

impl Recorder {
    /// The records named `name` (span or message) that pass `pred`, waiting up to 10 s for
    /// at least `n` of them (events of background threads come a little after the call
    /// they belong to returns).
    fn wait(&self, n: usize, name: &str, pred: impl Fn(&Rec) -> bool) -> Vec<Rec> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<Rec> = self.recs().iter().filter(|r| r.name == name && pred(r)).cloned().collect();
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The records named `name` so far.
    fn named(&self, name: &str) -> Vec<Rec> {
        self.wait(0, name, |_| true)
    }

    /// The one record named `name` that passes `pred` (waiting for it).
    fn one(&self, name: &str, pred: impl Fn(&Rec) -> bool) -> Rec {
        let found = self.wait(1, name, pred);
        let all = self.recs().clone();
        assert_eq!(found.len(), 1, "{name}: {found:#?}\nall: {all:#?}");
        found.into_iter().next().unwrap()
    }
}

#[test]
fn a_group_commit_sends_its_size_and_times() {
    let (rec, _one) = recording();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20)).unwrap();
    let events = [ev("A", "1"), ev("B", "22"), ev("C", "333")];
    let r = store.append("s-1", ExpectedVersion::NoStream, &events).unwrap();
    let g = rec.one("group commit", |r| r.fields.get("events").is_some_and(|e| e == "3"));
    assert_eq!((g.target.as_str(), g.level, g.span), ("strata::append", tracing::Level::DEBUG, false));
    assert_eq!((g.u64("partition"), g.u64("appends"), g.u64("accepted")), (0, 1, 1));
    assert_eq!((g.u64("first_position"), g.get("durability")), (r.first_position, "sync"));
    // One batch: a header, the stream id and three events, at least.
    assert!(g.u64("bytes") > 3 + "s-1".len() as u64, "{g:?}");
    g.u64("write_us");
    g.u64("sync_us");
    // A refused append is in a group too: nothing accepted, nothing written.
    store.append("s-1", ExpectedVersion::NoStream, &[ev("D", "4")]).unwrap_err();
    let g = rec.one("group commit", |r| r.fields.get("accepted").is_some_and(|e| e == "0"));
    assert_eq!((g.u64("appends"), g.u64("events"), g.u64("bytes")), (1, 0, 0));
    store.close().unwrap();

    // Buffered: the group is not synced, the background sync is an event of its own.
    let dir = tempfile::tempdir().unwrap();
    let buffered = Durability::Buffered { sync_interval: Duration::from_millis(1) };
    let store = Store::open(dir.path(), opts(1, 1 << 20).durability(buffered)).unwrap();
    store.append("s-2", ExpectedVersion::NoStream, &events[..2]).unwrap();
    let g = rec.one("group commit", |r| r.fields.get("durability").is_some_and(|d| d == "buffered"));
    assert_eq!((g.u64("events"), g.u64("sync_us")), (2, 0));
    let s = rec.wait(1, "background sync", |_| true);
    assert_eq!(s.first().map(|s| s.u64("bytes")), Some(g.u64("bytes")), "{s:?}");
}

/// Sums its events' payloads.
#[derive(Default, Debug)]
struct Sum(u64);

impl Aggregate for Sum {
    const SCHEMA: u32 = 1;
    const SNAPSHOT_EVERY: u64 = 0;
    fn apply(&mut self, e: &RecordedEvent) -> Result<(), ApplyError> {
        self.0 += std::str::from_utf8(&e.payload)?.parse::<u64>()?;
        tracing::info!(version = e.version, "applied");
        Ok(())
    }
    fn encode(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn decode(_: u32, b: &[u8]) -> Option<Self> {
        Some(Sum(u64::from_le_bytes(b.try_into().ok()?)))
    }
}

/// Another aggregate type over the same streams.
#[derive(Default)]
struct Count(u64);

impl Aggregate for Count {
    const SCHEMA: u32 = 1;
    const SNAPSHOT_EVERY: u64 = 0;
    fn apply(&mut self, _: &RecordedEvent) -> Result<(), ApplyError> {
        self.0 += 1;
        Ok(())
    }
    fn encode(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn decode(_: u32, b: &[u8]) -> Option<Self> {
        Some(Count(u64::from_le_bytes(b.try_into().ok()?)))
    }
}

#[test]
fn a_load_sends_what_it_replayed_and_what_became_of_the_snapshot() {
    let (rec, _one) = recording();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(2, 1 << 20)).unwrap();
    let mut acct = store.load::<Sum>("acct-1").unwrap();
    store.commit(&mut acct, &(1..=5).map(|i| ev("Added", i.to_string())).collect::<Vec<_>>()).unwrap();
    rec.clear();
    let loaded = store.load::<Sum>("acct-1").unwrap();
    assert_eq!(loaded.state().0, 15);
    let span = rec.one("load", |r| r.span);
    assert_eq!(
        (span.target.as_str(), span.get("stream"), span.get("aggregate")),
        ("strata::load", "acct-1", Sum::name())
    );
    let l = rec.one("loaded", |_| true);
    assert_eq!((l.u64("version"), l.u64("replayed"), l.get("snapshot"), l.get("as_of")), (4, 5, "none", "false"));
    assert!(!l.fields.contains_key("snapshot_version") && !l.fields.contains_key("ignored"), "{l:?}");
    assert_eq!(l.parent.as_deref(), Some("load"));
    l.u64("duration_us");
    // The aggregate's own events are inside the load's span.
    let applied = rec.named("applied");
    assert_eq!(applied.len(), 5);
    assert!(applied.iter().all(|a| a.parent.as_deref() == Some("load")), "{applied:?}");

    // From a snapshot: only the events after it are replayed.
    let mut loaded = loaded;
    store.snapshot(&mut loaded).unwrap();
    store.flush_snapshots().unwrap();
    store.commit(&mut loaded, &[ev("Added", "6"), ev("Added", "7")]).unwrap();
    rec.clear();
    assert_eq!(store.load::<Sum>("acct-1").unwrap().state().0, 28);
    let l = rec.one("loaded", |_| true);
    assert_eq!((l.u64("version"), l.u64("replayed"), l.get("snapshot"), l.u64("snapshot_version")), (6, 2, "used", 4));

    // Another aggregate type's snapshot is ignored, and says why.
    rec.clear();
    assert_eq!(store.load::<Count>("acct-1").unwrap().state().0, 7);
    let l = rec.one("loaded", |_| true);
    assert_eq!((l.get("snapshot"), l.get("ignored"), l.u64("snapshot_version")), ("ignored", "OtherAggregate", 4));
    assert_eq!(l.u64("replayed"), 7);
}

/// Fails (every attempt) at the positions it is given; sends an event per event handled.
struct Failing(Vec<u64>);

impl Projection for Failing {
    fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        if self.0.contains(&e.position) {
            return Err(format!("poison at {}", e.position).into());
        }
        tracing::info!(position = e.position, "handled");
        Ok(())
    }
}

#[test]
fn a_projection_batch_sends_its_range_and_outcome() {
    let (rec, _one) = recording();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(1, 1 << 20)).unwrap());
    for i in 0..4 {
        store.append(&format!("s-{i}"), ExpectedVersion::NoStream, &[ev("E", "x")]).unwrap();
    }
    let engine = ProjectionEngine::new(store.clone(), 1);
    engine.register("clean", Arc::new(Failing(vec![])), ProjectionOptions::default()).unwrap();
    let retry = ProjectionOptions::default().retry(2, Duration::from_millis(1));
    engine.register("poisoned", Arc::new(Failing(vec![1])), retry.clone()).unwrap();
    let stop = retry.on_failure(OnFailure::Stop);
    engine.register("stopping", Arc::new(Failing(vec![2])), stop).unwrap();
    assert!(engine.wait_caught_up("clean", Duration::from_secs(30)).unwrap());
    assert!(engine.wait_caught_up("poisoned", Duration::from_secs(30)).unwrap());

    let of = |name: &'static str| move |r: &Rec| r.fields.get("projection").is_some_and(|p| p == name);
    let span = rec.one("batch", |r| r.span && of("clean")(r));
    assert_eq!((span.target.as_str(), span.u64("partition"), span.u64("from")), ("strata::projection", 0, 0));
    let b = rec.one("batch", |r| !r.span && of("clean")(r));
    assert_eq!((b.u64("events"), b.u64("first_position"), b.u64("next_position")), (4, 0, 4));
    assert_eq!((b.get("outcome"), b.u64("dead_lettered"), b.parent.as_deref()), ("ok", 0, Some("batch")));
    b.u64("duration_us");
    // The handler's own events are inside the batch's span.
    let handled = rec.wait(4 + 3 + 2, "handled", |_| true);
    assert!(handled.iter().all(|h| h.parent.as_deref() == Some("batch")), "{handled:?}");

    // Position 1 fails twice (at index 1 of the batch, then at index 0 of the retry), and is
    // dead-lettered; the batch goes on past it.
    let failed = rec.wait(2, "handler failed", of("poisoned"));
    let seen: Vec<_> = failed.iter().map(|f| (f.u64("position"), f.u64("index"), f.u64("attempt"))).collect();
    assert_eq!(seen, [(1, 1, 1), (1, 0, 2)], "{failed:?}");
    assert!(failed.iter().all(|f| f.level == tracing::Level::WARN && f.get("error") == "poison at 1"));
    let d = rec.one("dead-lettered", of("poisoned"));
    assert_eq!((d.u64("position"), d.get("stream"), d.u64("attempts"), d.level), (1, "s-1", 2, tracing::Level::WARN));
    let b = rec.one("batch", |r| !r.span && of("poisoned")(r));
    assert_eq!((b.get("outcome"), b.u64("dead_lettered"), b.u64("next_position")), ("dead_lettered", 1, 4));

    // With `Stop`, the partition stops at the failing event.
    let s = rec.one("projection stopped", of("stopping"));
    assert_eq!((s.u64("position"), s.level), (2, tracing::Level::WARN));
    assert!(s.get("reason").contains("poison at 2"), "{s:?}");
    let b = rec.one("batch", |r| !r.span && of("stopping")(r));
    assert_eq!((b.get("outcome"), b.u64("events"), b.u64("next_position")), ("stopped", 4, 2));
    engine.stop().unwrap();
}

#[test]
fn a_compaction_sends_what_it_archived() {
    let (rec, _one) = recording();
    let dir = tempfile::tempdir().unwrap();
    let eager = CompactionOptions::default().retention(Duration::ZERO).require_snapshots(false).interval(None);
    let o = || opts(2, 16 << 10).compaction(eager.clone());
    let store = Store::open(dir.path(), o()).unwrap();
    for i in 0..400 {
        store.append(&format!("s-{}", i % 7), ExpectedVersion::Any, &[ev("E", "y".repeat(100))]).unwrap();
    }
    // Reopened, every full segment is sealed.
    drop(store);
    let store = Store::open(dir.path(), o()).unwrap();
    rec.clear();
    let r = store.compact().unwrap();
    assert!(r.segments_archived >= 2, "{r:?}");
    let span = rec.one("compact", |r| r.span);
    assert_eq!(
        (span.target.as_str(), span.level, span.get("force"), span.u64("partitions")),
        ("strata::compaction", tracing::Level::INFO, "false", 2)
    );
    let parts = rec.named("partition compacted");
    assert_eq!(parts.iter().map(|p| p.u64("partition")).collect::<Vec<_>>(), [0, 1]);
    let sum = |f: &str| parts.iter().map(|p| p.u64(f)).sum::<u64>();
    assert_eq!(
        (sum("segments"), sum("archives"), sum("events_archived")),
        (r.segments_archived, r.archives_written, r.events_archived)
    );
    assert_eq!((sum("bytes_in"), sum("bytes_out")), (r.bytes_in, r.bytes_out));
    assert!(parts.iter().all(|p| p.parent.as_deref() == Some("compact")));
    let done = rec.one("compaction done", |_| true);
    assert_eq!(done.level, tracing::Level::INFO);
    assert_eq!(
        (done.u64("segments"), done.u64("bytes_in"), done.u64("bytes_out")),
        (r.segments_archived, r.bytes_in, r.bytes_out)
    );
    assert_eq!(done.u64("duration_us"), r.elapsed.as_micros() as u64);
    // Nothing left to do: the summary is only a debug event.
    rec.clear();
    assert_eq!(store.compact().unwrap().segments_archived, 0);
    assert_eq!(rec.one("compaction done", |_| true).level, tracing::Level::DEBUG);
}

#[test]
fn a_grow_sends_its_counts() {
    let (rec, _one) = recording();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(2, 1 << 20)).unwrap();
    for i in 0..40 {
        store.append(&format!("order-{i}"), ExpectedVersion::NoStream, &[ev("Placed", "{}")]).unwrap();
    }
    rec.clear();
    let report = store.grow_partitions(5).unwrap();
    let span = rec.one("grow", |r| r.span);
    assert_eq!((span.target.as_str(), span.u64("from"), span.u64("to")), ("strata::grow", 2, 5));
    let g = rec.one("grow done", |_| true);
    assert_eq!((g.u64("from"), g.u64("to"), g.u64("epoch"), g.level), (2, 5, 1, tracing::Level::INFO));
    assert!(report.moved_streams > 0, "{report:?}");
    assert_eq!((g.u64("moved_streams"), g.u64("copied_events")), (report.moved_streams, report.copied_events));
    assert_eq!((g.u64("rounds"), g.u64("cutover_events")), (report.rounds as u64, report.cutover_events));
    assert_eq!((g.get("resumed"), g.parent.as_deref()), ("false", Some("grow")));
    assert_eq!(rec.named("copy round").len() as u32, report.rounds);
    // The new partitions are recovered (empty) inside the grow's span.
    let new: Vec<_> =
        rec.named("active segment recovered").iter().map(|r| (r.u64("partition"), r.parent.clone())).collect();
    let grow = Some("grow".to_string());
    assert_eq!(new, [(2, grow.clone()), (3, grow.clone()), (4, grow)]);
}

#[test]
fn an_open_sends_what_recovery_scanned_and_cut() {
    let (rec, _one) = recording();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(2, 1 << 20)).unwrap();
    let created = rec.one("store opened", |_| true);
    assert_eq!((created.u64("partitions"), created.u64("positions"), created.u64("torn_bytes")), (2, 0, 0));
    assert_eq!((created.level, created.parent.as_deref()), (tracing::Level::INFO, Some("open")));
    for i in 0..30 {
        store.append(&format!("s-{i}"), ExpectedVersion::NoStream, &[ev("E", "z")]).unwrap();
    }
    store.close().unwrap();

    // A clean reopen: the journal covers the segments, nothing is scanned or cut.
    rec.clear();
    drop(Store::open(dir.path(), opts(2, 1 << 20)).unwrap());
    let span = rec.one("open", |r| r.span);
    assert_eq!(
        (span.target.as_str(), span.get("dir")),
        ("strata::recovery", dir.path().display().to_string().as_str())
    );
    let parts = rec.named("active segment recovered");
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert!(parts.iter().all(|p| p.u64("torn_bytes") == 0 && p.u64("scanned_bytes") == 0), "{parts:?}");
    assert!(parts.iter().all(|p| p.u64("journaled_bytes") == p.u64("data_end") - 64), "{parts:?}");
    let opened = rec.one("store opened", |_| true);
    assert_eq!((opened.u64("positions"), opened.u64("scanned_bytes"), opened.u64("torn_bytes")), (30, 0, 0));
    opened.u64("duration_us");

    // A torn last batch in partition 0: it is cut, and the open says how much.
    let seg = segments(dir.path(), 0).pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let last = *batch_offsets(&bytes).last().unwrap();
    std::fs::write(&seg, &bytes[..last + 10]).unwrap();
    rec.clear();
    let store = Store::open(dir.path(), opts(2, 1 << 20)).unwrap();
    let cut: u64 = store
        .recovery_report()
        .iter()
        .map(|a| match a {
            RecoveryAction::TruncatedTornTail { discarded_bytes, .. } => *discarded_bytes,
            _ => 0,
        })
        .sum();
    assert_eq!(cut, 10);
    let p0 = rec.one("active segment recovered", |r| r.fields.get("partition").is_some_and(|p| p == "0"));
    assert_eq!((p0.u64("torn_bytes"), p0.u64("data_end")), (10, last as u64));
    assert!(p0.u64("scanned_bytes") > 0, "the journal no longer matches: the segment is scanned: {p0:?}");
    let opened = rec.one("store opened", |_| true);
    assert_eq!((opened.u64("positions"), opened.u64("torn_bytes")), (29, 10));
    assert!(opened.u64("repairs") >= 1, "{opened:?}");
}
