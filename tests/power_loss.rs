//! Power cuts on a simulated disk (`strata::faults::SimDisk`): a workload runs once on a store
//! whose every file operation is recorded; the trace is then cut at random steps, each cut
//! rebuilt as a disk would hold it after the power failed (unsynced writes lost, kept, torn or
//! scattered by sector; unsynced directory entries kept or lost), and each image is opened
//! with the real code and checked:
//! - open succeeds on every image made after the store was created;
//! - every acknowledged append is there, byte for byte, and each stream holds exactly a prefix
//!   of the appends submitted to it, whole (no batch partly visible, nothing never submitted);
//! - a refused append (wrong expected version) never appears;
//! - a stream whose deletion was acknowledged reads as deleted;
//! - a second open after a clean close repairs nothing (a torn tail only after the cut);
//! - every projection checkpoint is at or behind the partition's head, and every poison event
//!   a checkpoint has passed (in every partition holding it) is in the dead-letter queue;
//! - an aggregate loads to the state a full replay gives, and uses a snapshot only at a
//!   version the stream has;
//! - `verify` finds nothing, and the projection registers again (the engine reading its own
//!   files) and runs.
//!
//! `every_relied_on_sync_is_needed` treats one sync at a time as never issued and insists that
//! some cut then fails: the twelve syncs FORMAT.md §18.1 lists.
//!
//! The workload covers appends, `append_many`, contended expected versions, segment rolls and
//! seals, snapshots with sidecar rewrites, projection checkpoints, dead letters and their
//! discards (rewriting the queue's file), compaction into archives, `delete_stream` and grows.
//! One workload in four has a segment `fdatasync` fail (a poisoning, its marker and cut-back);
//! every other one starts from an earlier cut's image (so cuts land inside open's repairs). Background threads (writer,
//! preallocator, sealer, snapshotter, projection workers) interleave, so the trace of a
//! workload seed varies a little between runs; a failing image is kept under
//! `target/power-loss/` with the cut's seed and step, for `strata dump`.
//!
//! `STRATA_POWER_CUTS` sets the number of cuts (default 240), `STRATA_POWER_SEED` the first
//! workload seed (default: from the clock, printed).
#![cfg(feature = "fault-injection")]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use strata::compaction::CompactionOptions;
use strata::faults::{CutReport, FaultKind, FaultOp, FaultPlan, SimDisk, StepKind};
use strata::inspect::{DeadLetterInfo, Dump, Filter};
use strata::projection::{HandlerError, OnFailure, ProjectionOptions};
use strata::{Error, EventData, EventId, ExpectedVersion, Options, Projection, ProjectionEngine, RecordedEvent, Store};

type Agg = Tally<4, 1>;

/// Fails on every event whose payload starts with `poison`.
struct Audit;

impl Projection for Audit {
    fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        if e.payload.starts_with(b"poison") { Err("poisoned event".into()) } else { Ok(()) }
    }
}

/// Dead letters discarded, by (stream, version): the step before the discard began.
type Discarded = HashMap<(String, u64), u64>;

/// Events of one append: (event type, payload).
type Events = Vec<(String, Vec<u8>)>;

/// The `acked` of an append whose outcome is unknown (it failed on I/O): it may or may not
/// be there, whole.
const UNKNOWN: u64 = u64::MAX;

/// One append, as submitted (successful, or of unknown outcome).
#[derive(Debug, Clone)]
struct Append {
    events: Vec<(String, Vec<u8>)>,
    /// `SimDisk::steps()` once it was acknowledged.
    acked: u64,
}

/// What the workload did, for the checks.
#[derive(Debug, Default)]
struct Log {
    /// Steps once the store had been created.
    created: u64,
    /// Per stream, its successful appends in order.
    streams: BTreeMap<String, Vec<Append>>,
    /// Payloads of appends that were refused.
    refused: HashSet<Vec<u8>>,
    /// Deleted streams, with the step once the delete was acknowledged.
    deleted: HashMap<String, u64>,
    /// Aggregate streams.
    aggregates: Vec<String>,
    /// Dead letters discarded, by (stream, version), with the step before the discard began.
    discarded: Discarded,
    /// Payloads the store held when the workload began (a base image's, deleted streams'
    /// included).
    baseline: HashSet<Vec<u8>>,
    /// Atomic units (`append_atomic`): per part, its stream and its first payload. A cut
    /// keeps all of a unit's parts or none.
    units: Vec<Vec<(String, Vec<u8>)>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
}

impl Log {
    /// The model as text (one fact per line), kept beside a failing image for its replay.
    fn save(&self, step: u64, preallocate: bool) -> String {
        let mut out = format!("step {step}\npreallocate {preallocate}\ncreated {}\n", self.created);
        for (s, appends) in &self.streams {
            for a in appends {
                let events: Vec<String> = a.events.iter().map(|(t, p)| format!("{t}:{}", hex(p))).collect();
                out += &format!("append {s} {} {}\n", a.acked, events.join(" "));
            }
        }
        for p in &self.refused {
            out += &format!("refused {}\n", hex(p));
        }
        for (s, at) in &self.deleted {
            out += &format!("deleted {s} {at}\n");
        }
        for s in &self.aggregates {
            out += &format!("aggregate {s}\n");
        }
        for p in &self.baseline {
            out += &format!("baseline {}\n", hex(p));
        }
        for ((s, v), at) in &self.discarded {
            out += &format!("discarded {s} {v} {at}\n");
        }
        for u in &self.units {
            let parts: Vec<String> = u.iter().map(|(s, p)| format!("{s}:{}", hex(p))).collect();
            out += &format!("unit {}\n", parts.join(" "));
        }
        out
    }

    /// Reads [`Log::save`]'s text: the model, the cut's step, and the preallocation setting.
    fn load(text: &str) -> (Log, u64, bool) {
        let (mut log, mut step, mut preallocate) = (Log::default(), 0, false);
        for line in text.lines() {
            let mut words = line.split(' ');
            match words.next() {
                Some("step") => step = words.next().unwrap().parse().unwrap(),
                Some("preallocate") => preallocate = words.next().unwrap() == "true",
                Some("created") => log.created = words.next().unwrap().parse().unwrap(),
                Some("append") => {
                    let s = words.next().unwrap().to_owned();
                    let acked = words.next().unwrap().parse().unwrap();
                    let events = words
                        .map(|e| {
                            let (t, p) = e.split_once(':').unwrap();
                            (t.to_owned(), unhex(p))
                        })
                        .collect();
                    log.streams.entry(s).or_default().push(Append { events, acked });
                }
                Some("refused") => {
                    log.refused.insert(unhex(words.next().unwrap()));
                }
                Some("deleted") => {
                    let s = words.next().unwrap().to_owned();
                    log.deleted.insert(s, words.next().unwrap().parse().unwrap());
                }
                Some("aggregate") => log.aggregates.push(words.next().unwrap().to_owned()),
                Some("baseline") => {
                    log.baseline.insert(unhex(words.next().unwrap()));
                }
                Some("unit") => {
                    let parts = words
                        .map(|w| {
                            let (s, p) = w.rsplit_once(':').unwrap();
                            (s.to_owned(), unhex(p))
                        })
                        .collect();
                    log.units.push(parts);
                }
                Some("discarded") => {
                    let s = words.next().unwrap().to_owned();
                    let v = words.next().unwrap().parse().unwrap();
                    log.discarded.insert((s, v), words.next().unwrap().parse().unwrap());
                }
                _ => {}
            }
        }
        (log, step, preallocate)
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn options(sim: Option<Arc<SimDisk>>, preallocate: bool) -> Options {
    let compaction = CompactionOptions::default()
        .interval(None)
        .retention(Duration::ZERO)
        .require_snapshots(false)
        .max_archive_bytes(64 << 10);
    let o = Options::default()
        .partitions(2)
        .segment_bytes(16 << 10)
        .recovery_scan_bytes(4 << 10)
        .snapshot_rewrite_bytes(4 << 10)
        .preallocate(preallocate)
        .compaction(compaction);
    match sim {
        Some(sim) => o.create_if_missing(true).sim_disk(sim),
        None => o,
    }
}

fn projection_options() -> ProjectionOptions {
    ProjectionOptions::default().batch(16).retry(1, Duration::ZERO).on_failure(OnFailure::DeadLetter)
}

/// Runs the workload of `seed` on a store in `root`, recorded by the returned disk. With
/// `base`, the store starts as a copy of that directory (the image of an earlier power cut,
/// not yet opened), so cuts also land in the repairs its open makes.
/// An event with `payload`, with an id derived from its payload (unique per workload) if `ids`.
fn event(event_type: &str, payload: &[u8], ids: bool) -> EventData {
    let e = EventData::new(event_type, payload.to_vec());
    if !ids {
        return e;
    }
    let id = EventId::derive(EventId::from_u128(0x9e37), std::str::from_utf8(payload).unwrap(), 0);
    e.with_id(id)
}

fn workload(seed: u64, root: &Path, base: Option<(&Path, &Discarded)>) -> (Arc<SimDisk>, Log, bool) {
    let mut rng = Rng(seed | 1);
    let preallocate = rng.below(2) == 0;
    match base {
        Some((base, _)) => copy_dir(base, root),
        None => std::fs::create_dir_all(root).unwrap(),
    }
    let sim = SimDisk::new(root);
    // One workload in four has a segment fdatasync fail: its partition is poisoned, the
    // append's outcome unknown, and the workload stops there (cuts then land between the
    // failure, the cut-back and the close).
    let plan = FaultPlan::new();
    let faulty = rng.below(4) == 0;
    let store = Arc::new(Store::open(root, options(Some(sim.clone()), preallocate).fault_plan(plan.clone())).unwrap());
    if faulty {
        plan.inject(FaultOp::Sync, FaultKind::Eio, rng.below(40), Some(".log"), false);
    }
    let mut log = Log { created: sim.steps(), ..Log::default() };
    if let Some((_, discarded)) = base {
        // What the earlier cut left is the baseline: every cut of this run must keep it,
        // including the dead letters its workload had discarded by then.
        log.created = 0;
        log.discarded = discarded.keys().map(|k| (k.clone(), 0)).collect();
        for s in store.streams() {
            let s = s.unwrap();
            let events: Vec<(String, Vec<u8>)> = match store.read_stream(&s, 0, usize::MAX) {
                Err(Error::StreamDeleted { .. }) => {
                    log.deleted.insert(s, 0);
                    continue;
                }
                r => r.unwrap().into_iter().map(|e| (e.event_type, e.payload)).collect(),
            };
            if s.starts_with("tally-") {
                log.aggregates.push(s.clone());
            }
            log.streams.insert(s, vec![Append { events, acked: 0 }]);
        }
        for p in 0..store.partition_count() {
            for e in store.iter_partition(p, 0) {
                log.baseline.insert(e.unwrap().payload);
            }
        }
    }
    let engine = ProjectionEngine::new(store.clone(), 1);
    engine.register("audit", Arc::new(Audit), projection_options()).unwrap();
    let mut unique = 0u64;
    let mut payload = |rng: &mut Rng, poison: bool| {
        unique += 1;
        let pad = rng.below(300) as usize;
        let head = if poison { "poison" } else { "ev" };
        format!("{head}:{seed}:{unique}:{}", "p".repeat(pad)).into_bytes()
    };
    let stream_names: Vec<String> = (0..10).map(|k| format!("acct-{k}")).collect();
    let version = |log: &Log, s: &str| -> ExpectedVersion {
        let n: usize = log.streams.get(s).map_or(0, |a| a.iter().map(|a| a.events.len()).sum());
        if n == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(n as u64 - 1) }
    };
    let steps = 60 + rng.below(100);
    let grow_at = rng.below(steps * 2);
    // Ends the workload at the first failure (only a faulty one may fail).
    macro_rules! or_stop {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => {
                    assert!(faulty, "seed {seed}: {e}");
                    break;
                }
            }
        };
    }
    for step in 0..steps {
        match rng.below(100) {
            0..39 => {
                let s = stream_names[rng.below(10) as usize].clone();
                let poison = rng.below(12) == 0;
                let events: Vec<(String, Vec<u8>)> =
                    (0..1 + rng.below(3)).map(|_| ("Happened".to_string(), payload(&mut rng, poison))).collect();
                // Half the appends carry ids; some of those are retried at once, which must
                // write nothing.
                let ids = rng.below(2) == 0;
                let data: Vec<EventData> = events.iter().map(|(t, p)| event(t, p, ids)).collect();
                let expected = version(&log, &s);
                let r = store.append(&s, expected, &data);
                let acked = if r.is_ok() { sim.steps() } else { UNKNOWN };
                log.streams.entry(s.clone()).or_default().push(Append { events, acked });
                let first = or_stop!(r);
                if ids && rng.below(3) == 0 {
                    let again = or_stop!(store.append(&s, expected, &data));
                    assert!(again.duplicate && again.first_position == first.first_position, "seed {seed}: {again:?}");
                }
            }
            39..45 => {
                // An atomic unit over co-located streams, with ids, sometimes retried.
                let key = rng.below(3);
                let parts: Vec<String> =
                    ["a", "b", "c"].iter().take(2 + rng.below(2) as usize).map(|p| format!("{{u{key}}}/{p}")).collect();
                let batches: Vec<(String, ExpectedVersion, Events)> = parts
                    .iter()
                    .map(|s| {
                        let events =
                            (0..1 + rng.below(2)).map(|_| ("Unit".to_string(), payload(&mut rng, false))).collect();
                        (s.clone(), version(&log, s), events)
                    })
                    .collect();
                let data = || {
                    batches.iter().map(|(s, e, ev)| {
                        (s.as_str(), *e, ev.iter().map(|(t, p)| event(t, p, true)).collect::<Vec<_>>())
                    })
                };
                let r = store.append_atomic(data());
                let acked = if r.is_ok() { sim.steps() } else { UNKNOWN };
                log.units.push(batches.iter().map(|(s, _, ev)| (s.clone(), ev[0].1.clone())).collect());
                for (s, _, events) in batches.iter().cloned() {
                    log.streams.entry(s).or_default().push(Append { events, acked });
                }
                let first = or_stop!(r);
                if rng.below(3) == 0 {
                    let again = or_stop!(store.append_atomic(data()));
                    assert!(again.iter().zip(&first).all(|(a, f)| a.duplicate && a.first_position == f.first_position));
                }
            }
            45..53 => {
                // A contended append: an expected version another writer already used.
                let s = stream_names[rng.below(10) as usize].clone();
                let stale = match version(&log, &s) {
                    ExpectedVersion::Exact(0) | ExpectedVersion::NoStream => ExpectedVersion::Exact(5_000),
                    ExpectedVersion::Exact(v) => ExpectedVersion::Exact(v - 1),
                    other => other,
                };
                let p = payload(&mut rng, false);
                let r = store.append(&s, stale, &[EventData::new("Stale", p.clone())]);
                if faulty && !matches!(r, Err(Error::WrongExpectedVersion { .. })) {
                    break;
                }
                assert!(matches!(r, Err(Error::WrongExpectedVersion { .. })), "{r:?}");
                log.refused.insert(p);
            }
            53..65 => {
                let mut picked: Vec<String> = Vec::new();
                for _ in 0..2 + rng.below(4) {
                    let s = stream_names[rng.below(10) as usize].clone();
                    if !picked.contains(&s) {
                        picked.push(s);
                    }
                }
                let batches: Vec<(String, ExpectedVersion, Events)> = picked
                    .iter()
                    .map(|s| {
                        let events =
                            (0..1 + rng.below(2)).map(|_| ("Many".to_string(), payload(&mut rng, false))).collect();
                        (s.clone(), version(&log, s), events)
                    })
                    .collect();
                let futures = store.append_many(batches.iter().map(|(s, e, ev)| {
                    (s.as_str(), *e, ev.iter().map(|(t, p)| EventData::new(t.as_str(), p.clone())).collect::<Vec<_>>())
                }));
                let results: Vec<_> = futures.into_iter().map(|f| f.wait()).collect();
                let acked = sim.steps();
                let mut failed = None;
                for ((s, _, events), r) in batches.into_iter().zip(results) {
                    let acked = if r.is_ok() { acked } else { UNKNOWN };
                    log.streams.entry(s).or_default().push(Append { events, acked });
                    failed = failed.or(r.err());
                }
                or_stop!(failed.map_or(Ok(()), Err));
            }
            65..77 => {
                let s = format!("tally-{}", rng.below(3));
                if !log.aggregates.contains(&s) {
                    log.aggregates.push(s.clone());
                }
                let mut agg = or_stop!(store.load::<Agg>(&s));
                let events = vec![("Tallied".to_string(), payload(&mut rng, false))];
                let r = store.commit(&mut agg, &[EventData::new("Tallied", events[0].1.clone())]);
                let acked = if r.is_ok() { sim.steps() } else { UNKNOWN };
                log.streams.entry(s).or_default().push(Append { events, acked });
                or_stop!(r);
            }
            77..81 => or_stop!(store.flush_snapshots()),
            81..88 => {
                or_stop!(store.compact());
            }
            88..93 => {
                let s = format!("doomed-{seed}-{step}");
                let events = vec![("Doomed".to_string(), payload(&mut rng, false))];
                let r = store.append(&s, ExpectedVersion::NoStream, &[EventData::new("Doomed", events[0].1.clone())]);
                let acked = if r.is_ok() { sim.steps() } else { UNKNOWN };
                log.streams.entry(s.clone()).or_default().push(Append { events, acked });
                or_stop!(r);
                log.deleted.insert(s.clone(), UNKNOWN);
                assert!(or_stop!(store.delete_stream(&s)));
                log.deleted.insert(s, sim.steps());
            }
            93..97 => {
                let _ = engine.wait_caught_up("audit", Duration::from_secs(5));
            }
            _ => {
                // A burst of poison events, then every pending dead letter discarded: enough
                // resolutions over a run that the queue's file is rewritten.
                let s = stream_names[rng.below(10) as usize].clone();
                let events: Vec<(String, Vec<u8>)> =
                    (0..8).map(|_| ("Poison".to_string(), payload(&mut rng, true))).collect();
                let data: Vec<EventData> = events.iter().map(|(t, p)| EventData::new(t.as_str(), p.clone())).collect();
                let r = store.append(&s, version(&log, &s), &data);
                let acked = if r.is_ok() { sim.steps() } else { UNKNOWN };
                log.streams.entry(s).or_default().push(Append { events, acked });
                or_stop!(r);
                let _ = engine.wait_caught_up("audit", Duration::from_secs(5));
                let letters = or_stop!(engine.dead_letters("audit"));
                let before = sim.steps();
                for l in &letters {
                    log.discarded.entry((l.stream.clone(), l.version)).or_insert(before);
                }
                let ids: Vec<u64> = letters.iter().map(|l| l.id).collect();
                or_stop!(engine.discard_dead_letters("audit", &ids));
            }
        }
        if step == grow_at && store.partition_count() < 4 {
            or_stop!(store.grow_partitions(store.partition_count() + 1));
        }
    }
    let _ = engine.wait_caught_up("audit", Duration::from_secs(5));
    let stopped = engine.stop();
    let closed = store.close();
    assert!(faulty || (stopped.is_ok() && closed.is_ok()), "seed {seed}: {stopped:?} {closed:?}");
    drop(store);
    (sim, log, preallocate)
}

/// Opens `image` (a power cut at `step`) and checks it against what the workload did.
fn check(image: &Path, step: u64, log: &Log, preallocate: bool) -> Result<(), String> {
    let store = match Store::open(image, options(None, preallocate)) {
        Ok(s) => s,
        Err(Error::NotAStore { .. }) if step < log.created => return Ok(()),
        Err(e) => return Err(format!("open failed: {e}")),
    };
    // Checkpoints and dead letters, as the files say (before any projection runs again).
    let audit = image.join("projections").join("audit");
    let checkpoints = match strata::inspect::dump(&audit.join("checkpoints"), &Filter::default()) {
        Ok(Dump::Checkpoints { positions }) => positions,
        Ok(other) => return Err(format!("checkpoints file: {other:?}")),
        Err(_) if !audit.join("checkpoints").exists() => Vec::new(),
        Err(e) => return Err(format!("checkpoints file: {e}")),
    };
    let mut letters: HashSet<(String, u64)> = HashSet::new();
    match strata::inspect::dump(&audit.join("dlq"), &Filter::default()) {
        Ok(Dump::DeadLetters { records, .. }) => {
            for r in records {
                if let DeadLetterInfo::Letter { stream, version, .. } = r {
                    letters.insert((stream, version));
                }
            }
        }
        Ok(other) => return Err(format!("dead letters file: {other:?}")),
        Err(_) if !audit.join("dlq").exists() => {}
        Err(e) => return Err(format!("dead letters file: {e}")),
    }
    // Streams: each holds a whole prefix of its appends, at least the acknowledged ones.
    let mut submitted: HashSet<&[u8]> = log.baseline.iter().map(|p| &p[..]).collect();
    for (s, appends) in &log.streams {
        for a in appends {
            for (_, p) in &a.events {
                submitted.insert(p);
            }
        }
        let deleted_at = log.deleted.get(s);
        let events = match store.read_stream(s, 0, usize::MAX) {
            Err(Error::StreamDeleted { .. }) if deleted_at.is_some() => continue,
            Err(e) => return Err(format!("{s}: read: {e}")),
            Ok(_) if deleted_at.is_some_and(|&d| d <= step) => {
                return Err(format!(
                    "{s}: its deletion was acknowledged at step {}, yet it reads",
                    deleted_at.unwrap()
                ));
            }
            Ok(ev) => ev,
        };
        let acked = appends.iter().filter(|a| a.acked <= step).count();
        let mut at = 0;
        let mut whole = 0;
        for a in appends {
            if at == events.len() {
                break;
            }
            for (t, p) in &a.events {
                let Some(e) = events.get(at) else {
                    return Err(format!("{s}: append {whole} is partly visible ({at} events)"));
                };
                if e.event_type != *t || e.payload != *p || e.version != at as u64 {
                    return Err(format!("{s}: event {at} differs from what was appended"));
                }
                at += 1;
            }
            whole += 1;
        }
        if at != events.len() {
            return Err(format!("{s}: {} events more than were appended", events.len() - at));
        }
        if whole < acked {
            return Err(format!("{s}: {acked} appends were acknowledged, {whole} are there"));
        }
    }
    // Partitions: nothing never submitted, nothing refused; where poison events lie; each
    // atomic unit all there or not at all.
    let mut poison: HashMap<(String, u64), Vec<(u32, u64)>> = HashMap::new();
    let mut present: HashSet<Vec<u8>> = HashSet::new();
    for p in 0..store.partition_count() {
        for e in store.iter_partition(p, 0) {
            let e = e.map_err(|e| format!("partition {p}: read: {e}"))?;
            if e.event_type == "Unit" {
                present.insert(e.payload.clone());
            }
            if log.refused.contains(&e.payload) {
                return Err(format!("partition {p}: a refused append is there, at position {}", e.position));
            }
            if !submitted.contains(&e.payload[..]) {
                return Err(format!("partition {p}: position {} was never submitted", e.position));
            }
            if e.payload.starts_with(b"poison") {
                poison.entry((e.stream_id.clone(), e.version)).or_default().push((p, e.position));
            }
        }
    }
    for u in &log.units {
        let there: Vec<bool> = u.iter().map(|(_, p)| present.contains(p)).collect();
        if there.iter().any(|&t| t) && !there.iter().all(|&t| t) {
            let parts: Vec<_> = u.iter().zip(&there).map(|((s, _), t)| format!("{s}: {t}")).collect();
            return Err(format!("an atomic unit is partly there: {}", parts.join(", ")));
        }
    }
    for (p, &c) in checkpoints.iter().enumerate() {
        let head = store.head(p as u32).map_err(|e| e.to_string())?;
        if c > head {
            return Err(format!("projection checkpoint {c} of partition {p} is past its head {head}"));
        }
    }
    for ((s, v), at) in &poison {
        let passed = at.iter().all(|(p, pos)| checkpoints.get(*p as usize).is_some_and(|c| c > pos));
        let discarded = log.discarded.get(&(s.clone(), *v)).is_some_and(|&d| d <= step);
        if passed && !letters.contains(&(s.clone(), *v)) && !discarded {
            return Err(format!("{s}@{v}: its checkpoints passed it ({at:?}), yet no dead letter holds it"));
        }
    }
    for s in &log.aggregates {
        let loaded = store.load::<Agg>(s).map_err(|e| format!("{s}: load: {e}"))?;
        if *loaded.state() != Agg::replayed(&store, s) {
            return Err(format!("{s}: the loaded state is not the replayed one ({:?})", loaded.snapshot()));
        }
        if let strata::SnapshotUse::Used { version } = loaded.snapshot()
            && store.stream_version(s).ok().flatten().is_none_or(|v| v < *version)
        {
            return Err(format!("{s}: a snapshot at version {version} was used past the stream's end"));
        }
    }
    let problems = store.verify();
    if !problems.is_empty() {
        return Err(format!("verify: {problems:?}"));
    }
    // The projection registers again on what the cut left (its checkpoints and dead letters
    // read by the engine itself), and runs.
    let store = Arc::new(store);
    let engine = ProjectionEngine::new(store.clone(), 1);
    engine
        .register("audit", Arc::new(Audit), projection_options())
        .map_err(|e| format!("registering the projection: {e}"))?;
    let _ = engine.wait_caught_up("audit", Duration::from_secs(5));
    engine.stop().map_err(|e| format!("stopping the projection: {e}"))?;
    store.close().map_err(|e| format!("close: {e}"))?;
    drop(store);
    let again = Store::open(image, options(None, preallocate)).map_err(|e| format!("second open: {e}"))?;
    let repaired = again.recovery_report();
    if !repaired.is_empty() {
        return Err(format!("the second open repaired something: {repaired:?}"));
    }
    Ok(())
}

#[derive(Default)]
struct Tallies {
    cuts: u64,
    by_kind: BTreeMap<String, u64>,
    by_style: BTreeMap<&'static str, u64>,
    choices: CutReport,
    /// Cuts whose segments' lost sectors read as random bytes.
    garbage_cuts: u64,
}

impl Tallies {
    fn add(&mut self, r: &CutReport) {
        self.cuts += 1;
        let file = r
            .path
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| {
                let n = n.to_string_lossy();
                match n.rsplit_once('.') {
                    Some((_, ext)) if n.starts_with("000") => format!(".{ext}"),
                    _ => n.into_owned(),
                }
            })
            .unwrap_or_default();
        *self.by_kind.entry(format!("{:?} {file}", r.kind.unwrap_or(StepKind::End))).or_default() += 1;
        *self.by_style.entry(r.style).or_default() += 1;
        let c = &mut self.choices;
        c.writes_lost += r.writes_lost;
        c.writes_kept += r.writes_kept;
        c.writes_torn += r.writes_torn;
        self.garbage_cuts += u64::from(r.garbage);
        c.writes_scattered += r.writes_scattered;
        c.extensions_kept += r.extensions_kept;
        c.set_len_kept += r.set_len_kept;
        c.set_len_lost += r.set_len_lost;
        c.entries_kept += r.entries_kept;
        c.entries_lost += r.entries_lost;
    }

    fn print(&self) {
        println!(
            "{} cuts ({} with garbage in segments' lost sectors); by survival style: {:?}",
            self.cuts, self.garbage_cuts, self.by_style
        );
        println!("cut before (step kind, file): {:?}", self.by_kind);
        let c = &self.choices;
        println!(
            "unsynced writes: {} lost, {} kept, {} torn, {} scattered; {} lost writes left the file longer; set_len: {} kept, {} lost; directory entries: {} kept, {} lost",
            c.writes_lost,
            c.writes_kept,
            c.writes_torn,
            c.writes_scattered,
            c.extensions_kept,
            c.set_len_kept,
            c.set_len_lost,
            c.entries_kept,
            c.entries_lost
        );
    }
}

/// A temporary directory in memory where there is one: the images are opened with real
/// `fsync`s, which cost nothing there, and nothing about them needs a disk.
fn scratch() -> tempfile::TempDir {
    match std::path::Path::new("/dev/shm") {
        shm if shm.is_dir() => tempfile::tempdir_in(shm).unwrap_or_else(|_| tempfile::tempdir().unwrap()),
        _ => tempfile::tempdir().unwrap(),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `cuts` power cuts over fresh workloads from `first_seed` on; returns the failures.
fn run_cuts(first_seed: u64, cuts: u64, per_workload: u64, ignore_syncs_of: Option<&str>) -> (Tallies, Vec<String>) {
    let mut tallies = Tallies::default();
    let mut failures = Vec::new();
    let mut seed = first_seed;
    let mut done = 0;
    // Every other workload starts from an image an earlier cut left.
    let mut base: Option<(tempfile::TempDir, Discarded)> = None;
    while done < cuts {
        let tmp = scratch();
        let root = tmp.path().join("store");
        let (sim, log, preallocate) = workload(seed, &root, base.as_ref().map(|(b, d)| (b.path(), d)));
        base = None;
        let untracked = sim.untracked();
        assert!(untracked.is_empty(), "seed {seed}: file operations outside the I/O seam: {untracked:?}");
        let total = sim.steps();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9) | 1);
        for _ in 0..per_workload.min(cuts - done) {
            let step = rng.below(total + 1);
            let cut_seed = rng.next();
            let image = tmp.path().join(format!("cut-{step}-{cut_seed}"));
            let report = sim.crash_image(step, cut_seed, &image, ignore_syncs_of).unwrap();
            tallies.add(&report);
            if let Err(why) = check(&image, step, &log, preallocate) {
                let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("power-loss").join(format!(
                    "seed-{seed}-step-{step}-cut-{cut_seed}{}",
                    ignore_syncs_of.map_or(String::new(), |i| { format!("-without-{}", i.replace(['/', '.'], "_")) })
                ));
                // The image as the cut left it (the check repaired its copy), and the model.
                let _ = std::fs::remove_dir_all(&kept);
                sim.crash_image(step, cut_seed, &kept.join("image"), ignore_syncs_of).unwrap();
                std::fs::write(kept.join("model"), log.save(step, preallocate)).unwrap();
                failures.push(format!(
                    "workload seed {seed}, cut at step {step} of {total} ({:?} {:?}, {}), cut seed {cut_seed}: {why}; \
                     replay: STRATA_POWER_REPLAY={} cargo test --features fault-injection --test power_loss replay",
                    report.kind,
                    report.path,
                    report.style,
                    kept.display()
                ));
                if ignore_syncs_of.is_some() {
                    return (tallies, failures);
                }
            }
            let _ = std::fs::remove_dir_all(&image);
            done += 1;
            if ignore_syncs_of.is_none() && base.is_none() && step >= log.created && seed.is_multiple_of(2) {
                let b = scratch();
                sim.crash_image(step, cut_seed, b.path(), None).unwrap();
                let discarded =
                    log.discarded.iter().filter(|(_, d)| **d <= step).map(|(k, d)| (k.clone(), *d)).collect();
                base = Some((b, discarded));
            }
        }
        seed = seed.wrapping_add(1);
    }
    (tallies, failures)
}

#[test]
fn power_cuts_lose_nothing_acknowledged() {
    let cuts = env_u64("STRATA_POWER_CUTS").unwrap_or(240);
    let first_seed = env_u64("STRATA_POWER_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000_007
    });
    println!("power cuts: {cuts}, first workload seed {first_seed} (STRATA_POWER_SEED={first_seed} to rerun)");
    let started = Instant::now();
    let (tallies, failures) = run_cuts(first_seed, cuts, 30, None);
    tallies.print();
    println!("{} failures in {:.1} s", failures.len(), started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{} of {cuts} cuts failed:\n{}", failures.len(), failures.join("\n"));
}

/// Each sync the protocols rely on (FORMAT.md's crash tables) is needed: with it treated as
/// never issued, some cut loses an acknowledged write or fails to open.
#[test]
fn every_relied_on_sync_is_needed() {
    let first_seed = env_u64("STRATA_POWER_SEED").unwrap_or(7);
    // `STRATA_POWER_IGNORE=pattern`: try one sync of your choice instead, and only report.
    if let Ok(pattern) = std::env::var("STRATA_POWER_IGNORE") {
        let (tallies, failures) = run_cuts(first_seed, 3000, 60, Some(&pattern));
        match failures.first() {
            Some(f) => println!("without syncs of {pattern}: failed after {} cuts: {f}", tallies.cuts),
            None => println!("without syncs of {pattern}: nothing in {} cuts", tallies.cuts),
        }
        return;
    }
    let mut missing = Vec::new();
    for (what, ignored) in [
        ("segment fdatasync", ".log"),
        ("partition directory fsync", "p00000"),
        ("store directory fsync", "/"),
        ("manifest file fsync", "MANIFEST.tmp"),
        ("tombstones fsync", "tombstones.tmp"),
        ("dead-letter queue fdatasync", "dlq"),
        ("archive fsync before its rename", ".arc.tmp"),
        ("new segment's fsync before its rename", ".log.tmp"),
        ("checkpoint slot fdatasync", "checkpoints"),
        ("checkpoint file fsync before its rename", "checkpoints.tmp"),
        ("dead-letter queue fsync before its rename", "dlq.tmp"),
        ("projection directory fsync", "audit"),
    ] {
        let (tallies, failures) = run_cuts(first_seed, 3000, 60, Some(ignored));
        match failures.first() {
            Some(f) => println!("without the {what} ({ignored}): failed after {} cuts: {f}", tallies.cuts),
            None => missing.push(format!("{what} ({ignored}): {} cuts found nothing", tallies.cuts)),
        }
    }
    assert!(missing.is_empty(), "syncs the simulator could not show needed:\n{}", missing.join("\n"));
}

/// Replays a kept failure: `STRATA_POWER_REPLAY=<dir printed by a failing cut>` checks a copy
/// of its image against its model again (without it, nothing to do).
#[test]
fn replay() {
    let Ok(kept) = std::env::var("STRATA_POWER_REPLAY") else { return };
    let kept = PathBuf::from(kept);
    let (log, step, preallocate) = Log::load(&std::fs::read_to_string(kept.join("model")).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("image");
    copy_dir(&kept.join("image"), &image);
    check(&image, step, &log, preallocate).unwrap();
}
