//! kill -9 crash test: a child process appends durably from several threads and logs every
//! acknowledged append (stream, first version, count, payload padding); the supervisor kills it
//! with SIGKILL at a random moment, reopens the store and checks that every acknowledged event
//! is there with its exact bytes, that no partial batch is visible, and that versions are
//! gapless. The child compacts as it goes, so kills also interrupt compactions.
//! `STRATA_CRASHES` sets the number of crashes (default 20).
//!
//! `kill_9_during_grows_loses_no_acknowledged_append`: a child appends while it grows the store
//! one partition at a time, from 2 up to 32, and is killed with SIGKILL at random times (a fresh
//! store every 8 kills, so kills keep landing in grows); every reopen (the next child resuming an
//! interrupted grow) finds every acknowledged append, and `verify` is clean. With 500 kills
//! (`STRATA_CRASHES=1000`), 142 left a grow in progress. These are process crashes: the page
//! cache survives them, so neither the durable-head rule of a grow's copy rounds nor the
//! limitation of a failed commit `fsync` (FORMAT.md §17.6) is exercised.
//!
//! `kill_9_of_a_subscriber_resumes_from_its_stored_cursor`: a child follows a store through
//! `subscribe_all` while it appends, storing its cursor (atomically, by rename) after every
//! fourth batch, and is killed with SIGKILL; each restart resumes from the stored cursor.
//! Nothing durable is missed, nothing is delivered before the cursor a run started from, and
//! what a restart delivers twice is exactly what followed the last stored cursor (on a
//! 2-core run, 11 kills over about 50,000 events: 24 events delivered twice).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use strata::{EventData, ExpectedVersion, Options, Store};

const THREADS: usize = 4;
const STREAMS_PER_THREAD: usize = 5;

/// The child: appends until killed, logging "stream first_version count" after each ack,
/// while the background compactor archives every sealed segment within 20 ms (so kills land
/// in the middle of compactions too). With `grow`, a thread also grows the store one
/// partition at a time (up to 32), so kills land in the middle of grows.
fn child(dir: &Path, acks: &Path, grow: bool) {
    let compaction = strata::compaction::CompactionOptions::default()
        .interval(Some(Duration::from_millis(20)))
        .retention(Duration::ZERO)
        .require_snapshots(false)
        .max_archive_bytes(64 << 10);
    // Journal records every 8 KiB, so kills also land between and inside them.
    let store =
        Arc::new(Store::open(dir, opts(2, 64 << 10).recovery_scan_bytes(8 << 10).compaction(compaction)).unwrap());
    let log = Arc::new(Mutex::new(std::fs::OpenOptions::new().append(true).create(true).open(acks).unwrap()));
    let seed = std::process::id() as u64;
    for t in 0..THREADS {
        let (store, log) = (store.clone(), log.clone());
        std::thread::spawn(move || {
            let mut rng = seed.wrapping_mul(6364136223846793005).wrapping_add(t as u64 + 1);
            let streams: Vec<String> = (0..STREAMS_PER_THREAD).map(|k| format!("t{t}-s{k}")).collect();
            let mut versions: Vec<Option<u64>> = streams.iter().map(|s| store.stream_version(s).unwrap()).collect();
            loop {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let k = (rng % STREAMS_PER_THREAD as u64) as usize;
                let count = 1 + (rng >> 8) % 3;
                let first = versions[k].map_or(0, |v| v + 1);
                let pad = (rng >> 16) as usize % 300;
                let events: Vec<EventData> =
                    (0..count).map(|i| EventData::new("E", payload(&streams[k], first + i, count, pad))).collect();
                let expected = versions[k].map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                let r = match store.append(&streams[k], expected, &events) {
                    Ok(r) if r.first_version == first => r,
                    other => {
                        // Exit with a code the supervisor recognises: it was not our kill.
                        eprintln!("child append failed: {other:?}");
                        std::process::exit(3);
                    }
                };
                versions[k] = Some(r.last_version);
                // One write(2) per line: a kill leaves at most the last line torn.
                let line = format!("{} {} {} {}\n", streams[k], first, count, pad);
                log.lock().unwrap().write_all(line.as_bytes()).unwrap();
            }
        });
    }
    let mut rng = seed | 1;
    while grow && store.partition_count() < 32 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(rng % 60));
        let count = store.partition_count();
        // After a kill in the middle of a grow, this resumes it (its target is count + 1).
        if let Err(e) = store.grow_partitions(count + 1) {
            eprintln!("child grow failed: {e}");
            std::process::exit(3);
        }
    }
    // The appenders run until the supervisor's SIGKILL.
    loop {
        std::thread::park();
    }
}

/// Checks the reopened store against the child's log of acknowledged appends: every one is
/// there byte for byte, versions are gapless and no batch is partly visible. Returns the
/// number of acknowledged appends checked.
fn check_acknowledged(store: &Store, acks: &Path, crash: usize) -> usize {
    // Read every stream once: versions gapless, no batch partially visible.
    let mut stored: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for t in 0..THREADS {
        for k in 0..STREAMS_PER_THREAD {
            let stream = format!("t{t}-s{k}");
            let all = store.read_stream(&stream, 0, usize::MAX).unwrap();
            let mut i = 0;
            while i < all.len() {
                assert_eq!(all[i].version, i as u64, "crash {crash}: {stream} has a gap");
                let text = String::from_utf8_lossy(&all[i].payload).into_owned();
                let count: usize = text.split('|').nth(2).unwrap().parse().unwrap();
                assert!(i + count <= all.len(), "crash {crash}: partial batch of {stream} at v{i}");
                i += count;
            }
            stored.insert(stream, all.into_iter().map(|e| e.payload).collect());
        }
    }
    // Every acknowledged append is there, byte for byte (the last line may be torn).
    let log = std::fs::read_to_string(acks).unwrap_or_default();
    let mut lines = 0;
    for line in log.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let [stream, first, count, pad] = parts[..] else { continue };
        let (Ok(first), Ok(count), Ok(pad)) = (first.parse::<u64>(), count.parse::<u64>(), pad.parse::<usize>()) else {
            continue;
        };
        lines += 1;
        let have = stored.get(stream).map_or(&[][..], Vec::as_slice);
        for v in first..first + count {
            assert_eq!(
                have.get(v as usize),
                Some(&payload(stream, v, count, pad)),
                "crash {crash}: acknowledged {stream} v{v} missing or altered"
            );
        }
    }
    lines
}

/// The payload of version `v` of `stream` in a batch of `count`: checkable from its position.
fn payload(stream: &str, v: u64, count: u64, pad: usize) -> Vec<u8> {
    format!("{stream}|{v}|{count}|{}", "#".repeat(pad)).into_bytes()
}

/// Runs this test binary's test `name` as a child with `env` set, lets it work for a random
/// `min_ms..min_ms + spread_ms`, and kills it with SIGKILL (checking it did not stop by itself).
fn run_and_kill<V: AsRef<std::ffi::OsStr>>(
    name: &str,
    env: &[(&str, V)],
    min_ms: u64,
    spread_ms: u64,
    rng: &mut u64,
    crash: usize,
) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--nocapture"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    std::thread::sleep(Duration::from_millis(min_ms + *rng % spread_ms));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "crash {crash}: the child stopped by itself ({status})"
    );
}

#[test]
fn kill_9_loses_no_acknowledged_append() {
    if let (Ok(dir), Ok(acks)) = (std::env::var("STRATA_CRASH_DIR"), std::env::var("STRATA_CRASH_ACKS")) {
        child(Path::new(&dir), Path::new(&acks), false);
        return;
    }
    let crashes: usize = std::env::var("STRATA_CRASHES").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("store");
    let acks = work.path().join("acks.log");
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut total_acked = 0usize;
    let (mut finished, mut rolled_back) = (0, 0);
    for crash in 0..crashes {
        let env = [("STRATA_CRASH_DIR", dir.as_path()), ("STRATA_CRASH_ACKS", acks.as_path())];
        run_and_kill("kill_9_loses_no_acknowledged_append", &env, 150, 350, &mut rng, crash);

        let store = Store::open(&dir, Options::default()).unwrap();
        for r in store.recovery_report() {
            match r {
                strata::RecoveryAction::CompactionFinished { .. } => finished += 1,
                strata::RecoveryAction::CompactionRolledBack { .. } => rolled_back += 1,
                _ => {}
            }
        }
        let lines = check_acknowledged(&store, &acks, crash);
        total_acked = lines;
        if crash % 100 == 99 {
            eprintln!(
                "{} crashes: {lines} acknowledged appends checked; compactions finished {finished}, rolled back {rolled_back}",
                crash + 1
            );
        }
        if crash + 1 == crashes {
            let archives: u64 = store.storage().unwrap().iter().map(|p| p.archives).sum();
            eprintln!(
                "{crashes} crashes, {total_acked} acknowledged appends checked after the last; {archives} archives; \
                 open finished {finished} interrupted compactions and rolled back {rolled_back}"
            );
            assert!(archives > 0, "the child never compacted");
            assert!(store.verify().is_empty());
        }
        store.close().unwrap();
    }
    assert!(total_acked > 0, "the child never got to append");
}

/// kill -9 while the store grows its partition count: every acknowledged append survives,
/// whether the kill left the old layout with a grow in progress (resumed by the next child) or
/// the new one.
#[test]
fn kill_9_during_grows_loses_no_acknowledged_append() {
    if let (Ok(dir), Ok(acks)) = (std::env::var("STRATA_GROW_CRASH_DIR"), std::env::var("STRATA_GROW_CRASH_ACKS")) {
        child(Path::new(&dir), Path::new(&acks), true);
        return;
    }
    let crashes: usize = std::env::var("STRATA_CRASHES").ok().and_then(|s| s.parse().ok()).unwrap_or(20) / 2;
    let work = tempfile::tempdir().unwrap();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let (mut in_progress, mut grown) = (0, 0);
    for crash in 0..crashes {
        // A fresh store every 8 kills: one that reached 32 partitions no longer grows.
        let dir = work.path().join(format!("store-{}", crash / 8));
        let acks = work.path().join(format!("acks-{}.log", crash / 8));
        let env = [("STRATA_GROW_CRASH_DIR", dir.as_path()), ("STRATA_GROW_CRASH_ACKS", acks.as_path())];
        run_and_kill("kill_9_during_grows_loses_no_acknowledged_append", &env, 100, 300, &mut rng, crash);
        // A kill during the store's creation: nothing was acknowledged yet.
        let Ok(manifest) = std::fs::read(dir.join("MANIFEST")) else {
            assert!(std::fs::read_to_string(&acks).unwrap_or_default().is_empty());
            continue;
        };
        // A grow in progress: `growing_to` (manifest bytes 48..52) is not zero.
        if manifest[48..52] != [0; 4] {
            in_progress += 1;
        }
        let store = Store::open(&dir, Options::default()).unwrap();
        let checked = check_acknowledged(&store, &acks, crash);
        if store.partition_count() > 2 {
            grown += 1;
        }
        assert!(store.verify().is_empty(), "crash {crash}");
        if crash + 1 == crashes {
            eprintln!(
                "{crashes} crashes: {checked} acknowledged appends checked after the last; {grown} reopens found \
                 a grown store; {in_progress} kills left a grow in progress"
            );
            assert!(grown > 0, "the child never grew the store");
        }
        store.close().unwrap();
    }
}

/// The child of the snapshot crash test: commits through the aggregate API from several
/// threads, snapshotting after every other event, with a sidecar rewrite after nearly every
/// round, until killed.
fn snapshot_child(dir: &Path) {
    let store = Arc::new(Store::open(dir, opts(2, 64 << 10).snapshot_rewrite_bytes(0)).unwrap());
    for t in 0..THREADS {
        let store = store.clone();
        std::thread::spawn(move || {
            let streams: Vec<String> = (0..STREAMS_PER_THREAD).map(|k| format!("t{t}-s{k}")).collect();
            let mut aggs: Vec<_> = streams.iter().map(|s| store.load::<Tally<2, 1>>(s).unwrap()).collect();
            let mut i = 0u64;
            loop {
                i += 1;
                let a = &mut aggs[(i % STREAMS_PER_THREAD as u64) as usize];
                let events = vec![EventData::new("E", format!("{i}")); 1 + (i % 3) as usize];
                if let Err(e) = store.commit(a, &events) {
                    eprintln!("child commit failed: {e:?}");
                    std::process::exit(3);
                }
            }
        });
    }
    loop {
        std::thread::park();
    }
}

#[test]
fn kill_9_during_snapshot_rewrites_leaves_loadable_aggregates() {
    if let Ok(dir) = std::env::var("STRATA_SNAP_CRASH_DIR") {
        snapshot_child(Path::new(&dir));
        return;
    }
    let crashes: usize = std::env::var("STRATA_CRASHES").ok().and_then(|s| s.parse().ok()).unwrap_or(20) / 2;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("store");
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let (mut used, mut discarded) = (0, 0);
    for crash in 0..crashes.max(1) {
        let name = "kill_9_during_snapshot_rewrites_leaves_loadable_aggregates";
        run_and_kill(name, &[("STRATA_SNAP_CRASH_DIR", dir.as_path())], 200, 400, &mut rng, crash);
        let store = Store::open(&dir, Options::default()).unwrap();
        for t in 0..THREADS {
            for k in 0..STREAMS_PER_THREAD {
                let stream = format!("t{t}-s{k}");
                let a = store.load::<Tally<2, 1>>(&stream).unwrap();
                assert_eq!(
                    *a.state(),
                    Tally::replayed(&store, &stream),
                    "crash {crash}: {stream} {:?}",
                    a.snapshot().clone()
                );
                assert_eq!(a.version(), store.stream_version(&stream).unwrap(), "crash {crash}: {stream}");
                used += usize::from(matches!(a.snapshot().clone(), strata::SnapshotUse::Used { .. }));
            }
        }
        for action in store.recovery_report() {
            match action {
                // A snapshot record torn by the kill: cut off, the stream replays further.
                strata::RecoveryAction::SnapshotsDiscarded { offset, .. } if offset > 0 => discarded += 1,
                strata::RecoveryAction::SnapshotsDiscarded { .. }
                | strata::RecoveryAction::SnapshotUnreadable { .. } => {
                    panic!("crash {crash}: {action:?}")
                }
                _ => {}
            }
        }
        store.close().unwrap();
        if (crash + 1) % 100 == 0 {
            eprintln!("{} crashes so far: {used} loads from a snapshot, {discarded} torn tails", crash + 1);
        }
    }
    // The header counts the rewrites that produced the file.
    let header = std::fs::read(sidecar(&dir, 0)).unwrap();
    let rewrites = u64::from_le_bytes(header[24..32].try_into().unwrap());
    eprintln!("{crashes} crashes: {used} loads from a snapshot, {discarded} torn sidecar tails, {rewrites} rewrites");
    assert!(used > 0, "no load ever used a snapshot");
    assert!(rewrites > 0, "the sidecar was never rewritten");
}

/// Logs each handled event's (partition, position), one `write` per batch.
struct Logging(Mutex<std::fs::File>);

impl strata::Projection for Logging {
    fn handle(&self, _: &strata::RecordedEvent) -> Result<(), strata::projection::HandlerError> {
        unreachable!("handle_batch is overridden")
    }

    fn handle_batch(&self, batch: &strata::projection::Batch<'_>) -> Result<(), strata::projection::BatchError> {
        let text: String = batch.events.iter().map(|e| format!("{} {}\n", e.partition, e.position)).collect();
        self.0.lock().unwrap().write_all(text.as_bytes()).unwrap();
        Ok(())
    }
}

/// The child of the projection crash test: appends from two threads while a projection with
/// engine-kept checkpoints logs what it handles, until killed.
fn projection_child(dir: &Path, log: &Path) {
    let store = Arc::new(Store::open(dir, opts(4, 64 << 10).recovery_scan_bytes(8 << 10)).unwrap());
    let engine = strata::ProjectionEngine::new(store.clone(), 2);
    let file = std::fs::OpenOptions::new().append(true).create(true).open(log).unwrap();
    engine
        .register(
            "logged",
            Arc::new(Logging(Mutex::new(file))),
            strata::projection::ProjectionOptions::default().batch(100),
        )
        .unwrap();
    for t in 0..2 {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0u64.. {
                let events = vec![EventData::new("E", format!("{i}")); 1 + (i % 4) as usize];
                store.append(&format!("c{t}-{}", i % 50), ExpectedVersion::Any, &events).unwrap();
            }
        });
    }
    loop {
        std::thread::park();
    }
}

/// The next position of each partition in a checkpoint file (format in FORMAT.md).
fn read_checkpoints(path: &Path) -> Vec<u64> {
    let Ok(bytes) = std::fs::read(path) else { return vec![0; 4] };
    let partitions = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    (0..partitions)
        .map(|p| {
            let slot = |s: usize| {
                let at = 64 + 64 * p + 32 * s;
                let seq = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
                (seq, u64::from_le_bytes(bytes[at + 16..at + 24].try_into().unwrap()))
            };
            let (a, b) = (slot(0), slot(1));
            if a.0 > b.0 { a.1 } else { b.1 }
        })
        .collect()
}

#[test]
fn kill_9_of_a_projection_redelivers_only_what_followed_its_checkpoint() {
    if let (Ok(dir), Ok(log)) = (std::env::var("STRATA_PROJ_CRASH_DIR"), std::env::var("STRATA_PROJ_CRASH_LOG")) {
        projection_child(Path::new(&dir), Path::new(&log));
        return;
    }
    let crashes: usize = std::env::var("STRATA_CRASHES").ok().and_then(|s| s.parse().ok()).unwrap_or(20) / 4;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("store");
    let mut rng = 0x1234_5678_9ABC_DEF1u64;
    let mut redelivered = 0usize;
    for crash in 0..crashes.max(1) {
        let log = work.path().join(format!("handled-{crash}.log"));
        let name = "kill_9_of_a_projection_redelivers_only_what_followed_its_checkpoint";
        let env = [("STRATA_PROJ_CRASH_DIR", dir.as_path()), ("STRATA_PROJ_CRASH_LOG", log.as_path())];
        run_and_kill(name, &env, 300, 500, &mut rng, crash);
        // What the killed process handled, per partition, in order.
        let mut before: HashMap<u32, Vec<u64>> = HashMap::new();
        for line in std::fs::read_to_string(&log).unwrap_or_default().lines() {
            let mut it = line.split(' ');
            if let (Some(Ok(p)), Some(Ok(pos)), None) =
                (it.next().map(str::parse::<u32>), it.next().map(str::parse::<u64>), it.next())
            {
                before.entry(p).or_default().push(pos);
            }
        }
        let resume = read_checkpoints(&dir.join("projections/logged/checkpoints"));
        // Restart here, logging to another file, and let it catch up.
        let after_log = work.path().join(format!("after-{crash}.log"));
        let store = Arc::new(Store::open(&dir, Options::default()).unwrap());
        let engine = strata::ProjectionEngine::new(store.clone(), 2);
        let file = std::fs::OpenOptions::new().append(true).create(true).open(&after_log).unwrap();
        engine.register("logged", Arc::new(Logging(Mutex::new(file))), Default::default()).unwrap();
        assert!(engine.wait_caught_up("logged", Duration::from_secs(60)).unwrap());
        engine.stop().unwrap();
        let mut after: HashMap<u32, Vec<u64>> = HashMap::new();
        for line in std::fs::read_to_string(&after_log).unwrap().lines() {
            let (p, pos) = line.split_once(' ').unwrap();
            after.entry(p.parse().unwrap()).or_default().push(pos.parse().unwrap());
        }
        for p in 0..store.partition_count() {
            let head = store.head(p).unwrap();
            let b = before.remove(&p).unwrap_or_default();
            let a = after.remove(&p).unwrap_or_default();
            let c = resume[p as usize];
            // Before the kill: 0, 1, 2, ... in order, each once (earlier rounds' logs aside:
            // each round starts where the previous one's checkpoint left it).
            if let Some(&first) = b.first() {
                assert!(
                    b.iter().copied().eq(first..first + b.len() as u64),
                    "crash {crash} p{p}: gaps or repeats before"
                );
            }
            let handled_before = b.last().map_or(0, |&x| x + 1);
            // After: exactly from the durable checkpoint to the head.
            assert!(
                a.iter().copied().eq(c..head),
                "crash {crash} p{p}: resumed {:?}.. instead of {c}..{head}",
                a.first()
            );
            // So what is delivered twice is what was handled after the last durable checkpoint.
            assert!(
                c <= handled_before || b.is_empty(),
                "crash {crash} p{p}: checkpoint {c} ahead of handled {handled_before}"
            );
            redelivered += handled_before.saturating_sub(c) as usize;
        }
        drop(store);
    }
    eprintln!("{crashes} crashes: {redelivered} events delivered twice in all");
}

/// The child of `kill_9_retries_write_each_command_once`: four threads carry out commands
/// `start, start + 1, ...` (each thread every fourth), each an append of one to three events
/// whose ids derive from the command, with `ExpectedVersion::Any`, so only the ids can keep a
/// retry from writing twice. Logs "try C" before each append and "ack C position" after.
fn retry_child(dir: &Path, log: &Path, start: u64) {
    let store = Arc::new(Store::open(dir, retry_options()).unwrap());
    let log = Arc::new(Mutex::new(std::fs::OpenOptions::new().append(true).create(true).open(log).unwrap()));
    for t in 0..THREADS as u64 {
        let (store, log) = (store.clone(), log.clone());
        std::thread::spawn(move || {
            let mut c = start + t;
            loop {
                let (stream, events) = command(c);
                log.lock().unwrap().write_all(format!("try {c}\n").as_bytes()).unwrap();
                let r = match store.append(&stream, ExpectedVersion::Any, &events) {
                    Ok(r) if !r.duplicate => r,
                    other => {
                        eprintln!("child append failed: {other:?}");
                        std::process::exit(3);
                    }
                };
                log.lock().unwrap().write_all(format!("ack {c} {}\n", r.first_position).as_bytes()).unwrap();
                c += THREADS as u64;
            }
        });
    }
    loop {
        std::thread::park();
    }
}

fn retry_options() -> Options {
    opts(2, 64 << 10).recovery_scan_bytes(8 << 10).idempotency_window(1 << 20, 1 << 22)
}

/// Command `c`: its stream and its events (ids derived from the command).
fn command(c: u64) -> (String, Vec<EventData>) {
    let stream = format!("acct-{}", c % 16);
    let id = strata::EventId::from_u128(u128::from(c) + 1);
    let events = (0..1 + c % 3)
        .map(|i| EventData::new("E", format!("{c}:{i}")).with_id(strata::EventId::derive(id, &stream, i)))
        .collect();
    (stream, events)
}

/// kill -9 between a durable write and its acknowledgement, then retry: a client that does not
/// know whether its command was written sends it again, with the same ids, after the restart.
/// Every retry of an acknowledged command returns the original position, marked duplicate; a
/// retry of an unacknowledged one is written or recognised, never both; and after every crash
/// each command tried so far is in the store exactly once, its events together.
#[test]
fn kill_9_retries_write_each_command_once() {
    if let (Ok(dir), Ok(log), Ok(start)) = (
        std::env::var("STRATA_RETRY_CRASH_DIR"),
        std::env::var("STRATA_RETRY_CRASH_LOG"),
        std::env::var("STRATA_RETRY_CRASH_START"),
    ) {
        retry_child(Path::new(&dir), Path::new(&log), start.parse().unwrap());
        return;
    }
    let crashes: usize = std::env::var("STRATA_CRASHES").ok().and_then(|s| s.parse().ok()).unwrap_or(20) / 2;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("store");
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = 0u64;
    let mut acked: HashMap<u64, u64> = HashMap::new();
    let (mut unacked_found, mut unacked_written, mut acked_retried) = (0, 0, 0);
    for crash in 0..crashes {
        let log = work.path().join(format!("run-{crash}.log"));
        let start_text = next.to_string();
        let env = [
            ("STRATA_RETRY_CRASH_DIR", dir.as_os_str()),
            ("STRATA_RETRY_CRASH_LOG", log.as_os_str()),
            ("STRATA_RETRY_CRASH_START", std::ffi::OsStr::new(&start_text)),
        ];
        run_and_kill("kill_9_retries_write_each_command_once", &env, 150, 250, &mut rng, crash);

        let store = Store::open(&dir, retry_options()).unwrap();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let mut tried: Vec<u64> = Vec::new();
        let mut run_acks: HashMap<u64, u64> = HashMap::new();
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[..] {
                ["try", c] => tried.extend(c.parse::<u64>().ok()),
                ["ack", c, p] => {
                    if let (Ok(c), Ok(p)) = (c.parse(), p.parse()) {
                        run_acks.insert(c, p);
                    }
                }
                _ => {}
            }
        }
        // The client retries everything it sent in this run.
        for &c in &tried {
            let (stream, events) = command(c);
            let r = store.append(&stream, ExpectedVersion::Any, &events).unwrap();
            match run_acks.get(&c) {
                Some(&p) => {
                    assert!(r.duplicate, "crash {crash}: acknowledged command {c} written again");
                    assert_eq!(r.first_position, p, "crash {crash}: command {c}");
                    acked_retried += 1;
                }
                None if r.duplicate => unacked_found += 1,
                None => unacked_written += 1,
            }
            acked.insert(c, r.first_position);
        }
        next = tried.iter().max().map_or(next, |m| m + 1).max(next);
        // Every command tried so far is there exactly once, its events together and in order.
        let mut seen: HashMap<u64, Vec<u64>> = HashMap::new();
        for s in 0..16 {
            for e in store.read_stream(&format!("acct-{s}"), 0, usize::MAX).unwrap() {
                let text = String::from_utf8(e.payload).unwrap();
                let (c, i) = text.split_once(':').unwrap();
                seen.entry(c.parse().unwrap()).or_default().push(i.parse().unwrap());
            }
        }
        for &c in acked.keys() {
            let want: Vec<u64> = (0..1 + c % 3).collect();
            assert_eq!(seen.get(&c), Some(&want), "crash {crash}: command {c} not there exactly once");
        }
        assert_eq!(seen.len(), acked.len(), "crash {crash}: events of commands never tried");
        store.close().unwrap();
    }
    eprintln!(
        "{crashes} crashes: {acked_retried} acknowledged commands retried (each a duplicate); of the unacknowledged, \
         {unacked_found} had been written (the retry found them) and {unacked_written} had not"
    );
    assert!(acked_retried > 0, "the child never got to append");
}

/// The subscriber child: appends from a thread forever, and follows the store with
/// `subscribe_all` from the cursor in `dir/../cursor`, logging "start <cursor>" once, then
/// "ev partition position stream version" per event delivered, and storing the cursor
/// (write to a temporary name, rename) after every fourth batch is logged.
fn subscriber_child(dir: &Path, log: &Path) {
    use strata::subscription::{Cursor, Filter};
    let store = Arc::new(Store::open(dir, Options::default().create_if_missing(true).partitions(3)).unwrap());
    let appender = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            loop {
                let stream = format!("s-{}", i % 23);
                let events: Vec<EventData> = (0..1 + i % 3).map(|_| EventData::new("E", vec![b'p'; 20])).collect();
                store.append(&stream, ExpectedVersion::Any, &events).unwrap();
                i += 1;
            }
        })
    };
    let cursor_path = dir.parent().unwrap().join("cursor");
    let cursor = std::fs::read(&cursor_path).map(|b| Cursor::from_bytes(&b).unwrap()).unwrap_or_default();
    let mut out = std::fs::OpenOptions::new().append(true).create(true).open(log).unwrap();
    let start: Vec<String> = cursor.positions().iter().map(u64::to_string).collect();
    out.write_all(format!("start {}\n", start.join(",")).as_bytes()).unwrap();
    let mut sub = store.subscribe_all(cursor, Filter::all());
    for round in 0u64.. {
        let batch = sub.next_batch(64, Duration::from_millis(20)).unwrap();
        let mut text = String::new();
        for e in &batch {
            text.push_str(&format!("ev {} {} {} {}\n", e.partition, e.position, e.stream_id, e.version));
        }
        out.write_all(text.as_bytes()).unwrap();
        // Not after every batch, so that kills leave delivered events past the stored cursor.
        if round % 4 != 3 {
            continue;
        }
        let tmp = cursor_path.with_extension("tmp");
        std::fs::write(&tmp, sub.cursor().to_bytes()).unwrap();
        std::fs::rename(&tmp, &cursor_path).unwrap();
        if appender.is_finished() {
            panic!("the appender stopped");
        }
    }
}

/// A subscriber killed with SIGKILL at random points while appends go on, and restarted
/// from its stored cursor each time: every durable event is delivered at least once; within
/// a run nothing is delivered twice or out of stream order; and no run delivers anything
/// before the cursor it started from (what is delivered twice is what followed the last
/// stored cursor). Every delivered event is in the store afterwards: only durable events are
/// delivered.
#[test]
fn kill_9_of_a_subscriber_resumes_from_its_stored_cursor() {
    if let (Ok(dir), Ok(log)) = (std::env::var("STRATA_SUB_CRASH_DIR"), std::env::var("STRATA_SUB_CRASH_LOG")) {
        subscriber_child(Path::new(&dir), Path::new(&log));
        return;
    }
    use strata::subscription::{Cursor, Filter};
    let crashes: usize = std::env::var("STRATA_CRASHES").ok().and_then(|s| s.parse().ok()).unwrap_or(20) / 2;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("store");
    let log = work.path().join("delivered.log");
    let mut rng = 0x0DDB_1A5E_5BAD_5EEDu64;
    for crash in 0..crashes.max(2) {
        let name = "kill_9_of_a_subscriber_resumes_from_its_stored_cursor";
        let env = [("STRATA_SUB_CRASH_DIR", dir.as_path()), ("STRATA_SUB_CRASH_LOG", log.as_path())];
        run_and_kill(name, &env, 200, 400, &mut rng, crash);
    }
    // A last run here, to the end, from the stored cursor.
    let store = Store::open(&dir, Options::default()).unwrap();
    let cursor = std::fs::read(work.path().join("cursor")).map(|b| Cursor::from_bytes(&b).unwrap()).unwrap_or_default();
    let mut text = format!("start {}\n", cursor.positions().iter().map(u64::to_string).collect::<Vec<_>>().join(","));
    let mut sub = store.subscribe_all(cursor, Filter::all());
    loop {
        let batch = sub.poll(4096).unwrap();
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            text.push_str(&format!("ev {} {} {} {}\n", e.partition, e.position, e.stream_id, e.version));
        }
    }
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    drop(file);

    let mut delivered: HashMap<(u32, u64), (String, u64)> = HashMap::new();
    let (mut runs, mut twice) = (0usize, 0usize);
    let mut start: Vec<u64> = Vec::new();
    let mut in_run: std::collections::HashSet<(u32, u64)> = Default::default();
    let mut next_version: HashMap<String, u64> = HashMap::new();
    // A kill may cut the last line of a run short: only whole lines count.
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["start", c] => {
                runs += 1;
                start = c.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
                in_run.clear();
                next_version.clear();
            }
            ["ev", p, pos, stream, v] => {
                let (Ok(p), Ok(pos), Ok(v)) = (p.parse::<u32>(), pos.parse::<u64>(), v.parse::<u64>()) else {
                    continue;
                };
                let from = start.get(p as usize).copied().unwrap_or(0);
                assert!(pos >= from, "run {runs}: p{p} position {pos} delivered again, before its start cursor {from}");
                assert!(in_run.insert((p, pos)), "run {runs}: p{p} position {pos} delivered twice");
                if let Some(&n) = next_version.get(*stream) {
                    assert!(v >= n, "run {runs}: {stream} v{v} after v{}", n - 1);
                }
                next_version.insert(stream.to_string(), v + 1);
                if delivered.insert((p, pos), (stream.to_string(), v)).is_some() {
                    twice += 1;
                }
            }
            _ => {}
        }
    }
    assert!(runs > crashes.max(2), "{runs} runs logged");
    let mut total = 0usize;
    for p in 0..store.partition_count() {
        store
            .scan_partition(p, 0, usize::MAX, |e| {
                total += 1;
                let got = delivered.remove(&(p, e.position));
                assert_eq!(
                    got,
                    Some((e.stream_id.to_owned(), e.version)),
                    "p{p} position {} never delivered",
                    e.position
                );
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
    }
    assert!(
        delivered.is_empty(),
        "delivered events the store does not hold: {:?}",
        delivered.keys().take(5).collect::<Vec<_>>()
    );
    assert!(total > 1000, "only {total} events appended");
    eprintln!("{runs} runs, {total} events, {twice} delivered twice (after a kill, past the stored cursor)");
}
