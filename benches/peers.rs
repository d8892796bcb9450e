//! strata against peer engines on one event-store workload: SQLite (WAL, `synchronous=FULL`
//! and `NORMAL`), fjall (LSM tree), redb (copy-on-write B-tree), and "raw" (`write` +
//! `fdatasync` of the encoded records into one growing file, no index: the disk's ceiling).
//!
//! Workload: `PEERS_EVENTS` events (default 1,000,000) of 100-byte incompressible payloads over
//! `PEERS_EVENTS / 100` streams (10,000 by default): event `i` goes to stream `i % streams`, so
//! every stream ends with 100 events, versions 0..=99. Every write carries an optimistic
//! concurrency check: strata an `ExpectedVersion` (NoStream / Exact), SQLite and redb a unique
//! key on (stream, version) (redb's insert must find no previous value); fjall's insert is a
//! blind write (an LSM tree checks nothing on insert; a check would cost a read).
//!
//! Per engine, measured in a fresh directory each time and deleted afterwards:
//! 1. load: all events in durable commits of 1,000 events (1,000 streams, one event each;
//!    a peer's commit is one transaction, atomic; strata's is one `append_many` of 1,000
//!    independent appends, each atomic on its own, then all waited: one group commit per
//!    partition) → events/s;
//! 2. durable commits of one event, `PEERS_SINGLE` of them (default 2,000), into a fresh
//!    store → commits/s;
//! 3. 8 threads doing durable one-event commits to their own streams, `PEERS_CONCURRENT` in
//!    all (default 4,000), into a fresh store → commits/s (redb and SQLite admit one writer at
//!    a time: the threads queue);
//! 4. after the load, reading whole 100-event streams: 1,000 random streams, read once to warm
//!    and then timed → p50 and p99 in µs;
//! 5. after the load, a full scan of every event → events/s;
//! 6. bytes on disk after the load, store closed: allocated (`st_blocks * 512`) and, in the
//!    notes, the sum of file lengths;
//! 7. open time: after closing, open again and read one stream (page cache warm).
//!
//! The whole set runs `PEERS_ROUNDS` times (default 3), the engines interleaved within each
//! round (raw, strata, sqlite-full, sqlite-normal, fjall, redb, then again), because fsync
//! latency on the VMs we measure on flips between a fast and a slow state for minutes. stdout
//! gets a markdown table of the medians across rounds, each throughput with its ratio to raw,
//! and raw's per-round figures; progress goes to stderr.
//!
//! Run: `cargo bench --features peers --bench peers`. Knobs: `PEERS_EVENTS` (a multiple of
//! 1,000), `PEERS_SINGLE`, `PEERS_CONCURRENT`, `PEERS_ROUNDS`, `PEERS_ONLY=strata,raw` (a
//! subset of engines), `STRATA_PEERS_DIR` (where the stores go; default the temp dir, or
//! `target/peers` when that is a tmpfs, which would not measure the disk).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable};
use strata::{Durability, EventData, EventId, ExpectedVersion, Options, Store};

const PAYLOAD: usize = 100;
const EVENTS_PER_STREAM: u64 = 100;
const LOAD_COMMIT: usize = 1_000;
const WRITERS: usize = 8;
const READS: usize = 1_000;
const EVENT_TYPE: &str = "Deposited";
/// Streams of the single and concurrent commit tests (per writer): few, so most commits are
/// `Exact` appends to an existing stream rather than stream creations.
const SMALL_STREAMS: u64 = 100;

/// One event to commit; `version` is the stream's next version, known to the writer the way an
/// application knows it from the aggregate it just loaded.
struct Ev<'a> {
    stream: &'a str,
    version: u64,
    payload: &'a [u8],
}

/// A store under test, open in one directory.
trait Engine {
    /// A handle for one writer thread (SQLite: its own connection).
    fn writer(&self) -> Box<dyn Writer>;
    /// Reads all of `stream`, checking its versions run 0, 1, ...; the event count, or `None`
    /// for an engine without a per-stream index (raw).
    fn read_stream(&mut self, stream: &str) -> Option<u64>;
    /// Reads every event in the engine's natural order; the event count.
    fn scan(&mut self) -> u64;
    fn close(self: Box<Self>);
}

trait Writer: Send {
    /// Commits `events` durably (all of them, or panics).
    fn commit(&mut self, events: &[Ev<'_>]);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Raw,
    Strata,
    /// strata with one partition: one log, one fdatasync per commit.
    StrataP1,
    /// strata (8 partitions) with an id on every event: idempotent appends.
    StrataIds,
    SqliteFull,
    SqliteNormal,
    Fjall,
    Redb,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::Raw,
        Kind::Strata,
        Kind::StrataP1,
        Kind::StrataIds,
        Kind::SqliteFull,
        Kind::SqliteNormal,
        Kind::Fjall,
        Kind::Redb,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Strata => "strata",
            Kind::StrataP1 => "strata-p1",
            Kind::StrataIds => "strata-ids",
            Kind::SqliteFull => "sqlite-full",
            Kind::SqliteNormal => "sqlite-normal",
            Kind::Fjall => "fjall",
            Kind::Redb => "redb",
        }
    }

    /// Opens the engine's store in `dir`, creating it if it is not there.
    fn open(self, dir: &Path) -> Box<dyn Engine> {
        match self {
            Kind::Raw => Box::new(RawEngine::open(dir)),
            Kind::Strata => Box::new(StrataEngine::open(dir, strata::limits::DEFAULT_PARTITIONS, false)),
            Kind::StrataP1 => Box::new(StrataEngine::open(dir, 1, false)),
            Kind::StrataIds => Box::new(StrataEngine::open(dir, strata::limits::DEFAULT_PARTITIONS, true)),
            Kind::SqliteFull => Box::new(SqliteEngine::open(dir, "FULL")),
            Kind::SqliteNormal => Box::new(SqliteEngine::open(dir, "NORMAL")),
            Kind::Fjall => Box::new(FjallEngine::open(dir)),
            Kind::Redb => Box::new(RedbEngine::open(dir)),
        }
    }
}

/// Asserts `versions` run 0, 1, 2, ... and counts them.
fn check_versions(versions: impl Iterator<Item = u64>) -> u64 {
    let mut n = 0;
    for v in versions {
        assert_eq!(v, n, "stream read out of order");
        n += 1;
    }
    n
}

// ---------------------------------------------------------------------------------------------
// raw

/// The ceiling: records appended to one file with `write` + `fdatasync` per commit, nothing
/// else (no index, no checksum, no concurrency check). Concurrent writers reserve their range
/// with an atomic offset and each sync on their own, as naive code would.
struct RawEngine {
    path: PathBuf,
    file: Arc<File>,
    end: Arc<AtomicU64>,
}

/// u32 stream tag, u32 payload length, u64 version.
const RAW_HEADER: usize = 16;

impl RawEngine {
    fn open(dir: &Path) -> RawEngine {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("raw.log");
        let file = OpenOptions::new().create(true).read(true).write(true).truncate(false).open(&path).unwrap();
        let end = file.metadata().unwrap().len();
        RawEngine { path, file: Arc::new(file), end: Arc::new(AtomicU64::new(end)) }
    }
}

impl Engine for RawEngine {
    fn writer(&self) -> Box<dyn Writer> {
        Box::new(RawWriter { file: self.file.clone(), end: self.end.clone(), buf: Vec::new() })
    }

    fn read_stream(&mut self, _stream: &str) -> Option<u64> {
        None
    }

    fn scan(&mut self) -> u64 {
        // Big reads, records decoded in place: the cheapest sequential read, as a ceiling.
        let mut file = File::open(&self.path).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let (mut have, mut n) = (0, 0);
        loop {
            let got = file.read(&mut buf[have..]).unwrap();
            if got == 0 {
                break;
            }
            have += got;
            let mut at = 0;
            while have - at >= RAW_HEADER {
                let len = u32::from_le_bytes(buf[at + 4..at + 8].try_into().unwrap()) as usize;
                assert_eq!(len, PAYLOAD);
                if have - at < RAW_HEADER + len {
                    break;
                }
                at += RAW_HEADER + len;
                n += 1;
            }
            buf.copy_within(at..have, 0);
            have -= at;
        }
        assert_eq!(have, 0, "a torn record at the end of {}", self.path.display());
        n
    }

    fn close(self: Box<Self>) {}
}

struct RawWriter {
    file: Arc<File>,
    end: Arc<AtomicU64>,
    buf: Vec<u8>,
}

impl Writer for RawWriter {
    fn commit(&mut self, events: &[Ev<'_>]) {
        self.buf.clear();
        for e in events {
            self.buf.extend_from_slice(&(strata::routing::stream_hash(e.stream) as u32).to_le_bytes());
            self.buf.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(&e.version.to_le_bytes());
            self.buf.extend_from_slice(e.payload);
        }
        let at = self.end.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.file.write_all_at(&self.buf, at).unwrap();
        self.file.sync_data().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// strata

struct StrataEngine {
    store: Option<Arc<Store>>,
    /// Every event gets an id (derived from its stream and version): idempotent appends.
    ids: bool,
}

impl StrataEngine {
    fn open(dir: &Path, partitions: u32, ids: bool) -> StrataEngine {
        let opts = Options::default().create_if_missing(true).partitions(partitions).durability(Durability::Sync);
        StrataEngine { store: Some(Arc::new(Store::open(dir, opts).unwrap())), ids }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }
}

impl Engine for StrataEngine {
    fn writer(&self) -> Box<dyn Writer> {
        Box::new(StrataWriter { store: self.store.clone().unwrap(), pending: Vec::new(), ids: self.ids })
    }

    fn read_stream(&mut self, stream: &str) -> Option<u64> {
        let events = self.store().read_stream(stream, 0, EVENTS_PER_STREAM as usize).unwrap();
        Some(check_versions(events.iter().map(|e| e.version)))
    }

    fn scan(&mut self) -> u64 {
        let store = self.store();
        // `scan_partition`: events borrowed from the log, as the peers' iterators hand out
        // borrowed keys and values (`read_partition` would copy each out: four allocations).
        let mut n = 0;
        let mut bytes = 0;
        for p in 0..store.partition_count() {
            let head = store.head(p).unwrap();
            let seen = store
                .scan_partition(p, 0, usize::MAX, |e| {
                    bytes += e.payload.len();
                    std::ops::ControlFlow::Continue(())
                })
                .unwrap();
            assert_eq!(seen as u64, head, "partition {p}: scanned {seen} of {head} events");
            n += seen as u64;
        }
        assert_eq!(bytes as u64, n * PAYLOAD as u64);
        n
    }

    fn close(mut self: Box<Self>) {
        let store = Arc::into_inner(self.store.take().unwrap()).expect("a strata writer outlived its test");
        store.close().unwrap();
    }
}

struct StrataWriter {
    store: Arc<Store>,
    pending: Vec<(u64, strata::AppendFuture)>,
    ids: bool,
}

impl Writer for StrataWriter {
    fn commit(&mut self, events: &[Ev<'_>]) {
        // The whole commit in one `append_many`: each partition's writer gets its share as one
        // message and commits it as one group (one write, one fdatasync per partition), as an
        // application committing many aggregates at once would.
        let data: Vec<[EventData; 1]> = events
            .iter()
            .map(|e| {
                let d = EventData::new(EVENT_TYPE, e.payload);
                [if self.ids { d.with_id(EventId::derive(EventId::from_u128(1), e.stream, e.version)) } else { d }]
            })
            .collect();
        let appends = events.iter().zip(&data).map(|(e, d)| {
            let expected =
                if e.version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(e.version - 1) };
            (e.stream, expected, &d[..])
        });
        for (e, f) in events.iter().zip(self.store.append_many(appends)) {
            self.pending.push((e.version, f));
        }
        for (version, f) in self.pending.drain(..) {
            assert_eq!(f.wait().unwrap().first_version, version);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite

/// A rowid table: the rowid is the global position, which the full scan (and any projection)
/// reads in commit order, as strata's `read_partition`; the (stream, version) primary key is a
/// separate unique index, the concurrency check. This is the usual event-store schema; a
/// `WITHOUT ROWID` table would store events in stream order and have no log order to subscribe
/// to.
const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS events (
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (stream, version))";
const SQLITE_INSERT: &str = "INSERT INTO events (stream, version, type, data) VALUES (?1, ?2, ?3, ?4)";
const SQLITE_READ: &str = "SELECT version, type, data FROM events WHERE stream = ?1 ORDER BY version";

struct SqliteEngine {
    path: PathBuf,
    synchronous: &'static str,
    conn: rusqlite::Connection,
}

/// A connection in WAL mode; `synchronous` is per connection, so every one sets it.
fn sqlite_connect(path: &Path, synchronous: &str) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "synchronous", synchronous).unwrap();
    // Concurrent writers wait for the write lock instead of failing with SQLITE_BUSY.
    conn.busy_timeout(Duration::from_secs(60)).unwrap();
    conn
}

impl SqliteEngine {
    fn open(dir: &Path, synchronous: &'static str) -> SqliteEngine {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("events.db");
        let conn = sqlite_connect(&path, synchronous);
        conn.execute_batch(SQLITE_SCHEMA).unwrap();
        SqliteEngine { path, synchronous, conn }
    }
}

impl Engine for SqliteEngine {
    fn writer(&self) -> Box<dyn Writer> {
        Box::new(SqliteWriter { conn: sqlite_connect(&self.path, self.synchronous) })
    }

    fn read_stream(&mut self, stream: &str) -> Option<u64> {
        let mut stmt = self.conn.prepare_cached(SQLITE_READ).unwrap();
        let rows = stmt
            .query_map([stream], |r| {
                let data: Vec<u8> = r.get(2)?;
                assert_eq!(data.len(), PAYLOAD);
                r.get::<_, i64>(0)
            })
            .unwrap();
        Some(check_versions(rows.map(|v| v.unwrap() as u64)))
    }

    fn scan(&mut self) -> u64 {
        let mut stmt = self.conn.prepare("SELECT stream, version, type, data FROM events ORDER BY rowid").unwrap();
        let mut rows = stmt.query([]).unwrap();
        let mut n = 0;
        while let Some(r) = rows.next().unwrap() {
            assert_eq!(r.get_ref(3).unwrap().as_blob().unwrap().len(), PAYLOAD);
            n += 1;
        }
        n
    }

    fn close(self: Box<Self>) {
        self.conn.close().map_err(|(_, e)| e).unwrap();
    }
}

struct SqliteWriter {
    conn: rusqlite::Connection,
}

impl Writer for SqliteWriter {
    fn commit(&mut self, events: &[Ev<'_>]) {
        // IMMEDIATE takes the write lock up front: a deferred transaction that upgrades later
        // fails with SQLITE_BUSY at once when another writer holds it, busy timeout or not.
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        {
            let mut insert = tx.prepare_cached(SQLITE_INSERT).unwrap();
            for e in events {
                insert.execute(rusqlite::params![e.stream, e.version as i64, EVENT_TYPE, e.payload]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// fjall

/// Key: stream id then big-endian version, so a stream is one contiguous key range in version
/// order. A prefix scan on the id alone is exact only because all ids of a run have the same
/// length (`acct-0042` is no prefix of another id); variable-length ids would need a separator
/// or length prefix. Value: type length, type, payload.
fn kv_key(stream: &str, version: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(stream.len() + 8);
    k.extend_from_slice(stream.as_bytes());
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn kv_value(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + EVENT_TYPE.len() + payload.len());
    v.push(EVENT_TYPE.len() as u8);
    v.extend_from_slice(EVENT_TYPE.as_bytes());
    v.extend_from_slice(payload);
    v
}

fn kv_payload(value: &[u8]) -> &[u8] {
    &value[1 + value[0] as usize..]
}

struct FjallEngine {
    db: fjall::Database,
    events: fjall::Keyspace,
}

impl FjallEngine {
    fn open(dir: &Path) -> FjallEngine {
        let db = fjall::Database::builder(dir).open().unwrap();
        let events = db.keyspace("events", fjall::KeyspaceCreateOptions::default).unwrap();
        FjallEngine { db, events }
    }
}

impl Engine for FjallEngine {
    fn writer(&self) -> Box<dyn Writer> {
        Box::new(FjallWriter { db: self.db.clone(), events: self.events.clone() })
    }

    fn read_stream(&mut self, stream: &str) -> Option<u64> {
        let versions = self.events.prefix(stream.as_bytes()).map(|g| {
            let (k, v) = g.into_inner().unwrap();
            assert_eq!(kv_payload(&v).len(), PAYLOAD);
            u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap())
        });
        Some(check_versions(versions))
    }

    fn scan(&mut self) -> u64 {
        let mut n = 0;
        for g in self.events.iter() {
            let (_, v) = g.into_inner().unwrap();
            assert_eq!(kv_payload(&v).len(), PAYLOAD);
            n += 1;
        }
        n
    }

    fn close(self: Box<Self>) {
        // Dropping the last handle syncs the journal and stops the background workers.
    }
}

struct FjallWriter {
    db: fjall::Database,
    events: fjall::Keyspace,
}

impl Writer for FjallWriter {
    fn commit(&mut self, events: &[Ev<'_>]) {
        let mut batch = self.db.batch();
        for e in events {
            batch.insert(&self.events, kv_key(e.stream, e.version), kv_value(e.payload));
        }
        batch.commit().unwrap();
        // The batch is in the journal (and in the OS, flushed by the commit); this fdatasyncs
        // the journal. Done outside the commit (not `batch.durability(Some(SyncData))`, which
        // syncs while holding the journal lock) so a sync can cover other threads' batches.
        self.db.persist(fjall::PersistMode::SyncData).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// redb

const REDB_EVENTS: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("events");

struct RedbEngine {
    db: Arc<redb::Database>,
}

impl RedbEngine {
    fn open(dir: &Path) -> RedbEngine {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("events.redb");
        if path.exists() {
            // Not `create`, which would also cost the reopen a table-creating commit.
            return RedbEngine { db: Arc::new(redb::Database::open(&path).unwrap()) };
        }
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(REDB_EVENTS).unwrap();
        tx.commit().unwrap();
        RedbEngine { db: Arc::new(db) }
    }
}

impl Engine for RedbEngine {
    fn writer(&self) -> Box<dyn Writer> {
        Box::new(RedbWriter { db: self.db.clone() })
    }

    fn read_stream(&mut self, stream: &str) -> Option<u64> {
        let tx = self.db.begin_read().unwrap();
        let table = tx.open_table(REDB_EVENTS).unwrap();
        let versions = table.range((stream, 0u64)..=(stream, u64::MAX)).unwrap().map(|kv| {
            let (k, v) = kv.unwrap();
            assert_eq!(kv_payload(v.value()).len(), PAYLOAD);
            k.value().1
        });
        Some(check_versions(versions))
    }

    fn scan(&mut self) -> u64 {
        let tx = self.db.begin_read().unwrap();
        let table = tx.open_table(REDB_EVENTS).unwrap();
        let mut n = 0;
        for kv in table.iter().unwrap() {
            let (_, v) = kv.unwrap();
            assert_eq!(kv_payload(v.value()).len(), PAYLOAD);
            n += 1;
        }
        n
    }

    fn close(self: Box<Self>) {
        let db = Arc::into_inner(self.db).expect("a redb writer outlived its test");
        db.close().unwrap();
    }
}

struct RedbWriter {
    db: Arc<redb::Database>,
}

impl Writer for RedbWriter {
    fn commit(&mut self, events: &[Ev<'_>]) {
        // Default durability (Immediate): durable when `commit` returns. One write transaction
        // at a time: concurrent writers wait in `begin_write`.
        let tx = self.db.begin_write().unwrap();
        {
            let mut table = tx.open_table(REDB_EVENTS).unwrap();
            for e in events {
                let old = table.insert((e.stream, e.version), kv_value(e.payload).as_slice()).unwrap();
                assert!(old.is_none(), "{} v{} written twice", e.stream, e.version);
            }
        }
        tx.commit().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// the measurements

struct Config {
    events: u64,
    single: u64,
    concurrent: u64,
    rounds: usize,
    kinds: Vec<Kind>,
    base: PathBuf,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => s.replace('_', "").parse().unwrap_or_else(|_| panic!("{name}={s}: not a number")),
        Err(_) => default,
    }
}

impl Config {
    fn from_env() -> Config {
        let events = env_u64("PEERS_EVENTS", 1_000_000);
        assert!(
            events > 0 && events.is_multiple_of(LOAD_COMMIT as u64),
            "PEERS_EVENTS must be a positive multiple of {LOAD_COMMIT}"
        );
        let kinds = match std::env::var("PEERS_ONLY") {
            Ok(s) => {
                let names: Vec<&str> = s.split(',').map(str::trim).collect();
                for n in &names {
                    assert!(Kind::ALL.iter().any(|k| k.name() == *n), "PEERS_ONLY: no engine {n:?}");
                }
                Kind::ALL.into_iter().filter(|k| names.contains(&k.name())).collect()
            }
            Err(_) => Kind::ALL.to_vec(),
        };
        Config {
            events,
            single: env_u64("PEERS_SINGLE", 2_000).max(1),
            concurrent: env_u64("PEERS_CONCURRENT", 4_000).max(WRITERS as u64),
            rounds: env_u64("PEERS_ROUNDS", 3).max(1) as usize,
            kinds,
            base: base_dir(),
        }
    }

    fn streams(&self) -> u64 {
        self.events / EVENTS_PER_STREAM
    }
}

/// `STRATA_PEERS_DIR`, else the temp dir unless it is a tmpfs (fsync there is free, which would
/// flatter everyone), else `target/peers`.
fn base_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STRATA_PEERS_DIR") {
        return PathBuf::from(d);
    }
    let tmp = std::env::temp_dir();
    if fs_type(&tmp).as_deref() == Some("tmpfs") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("peers")
    } else {
        tmp
    }
}

/// The file system type of the mount holding `path`, from /proc/mounts.
fn fs_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(at).then(|| (at.len(), ty.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, ty)| ty)
}

/// The load's data, generated once so the timed loops only commit. Payloads are pseudo-random
/// bytes: fjall compresses its blocks (LZ4) and the others do not, so compressible payloads
/// would turn the disk-size row into a compression contest.
struct Data {
    stream_ids: Vec<String>,
    payloads: Vec<u8>,
}

impl Data {
    fn new(cfg: &Config) -> Data {
        let width = (cfg.streams() - 1).max(1).to_string().len().max(4);
        let stream_ids = (0..cfg.streams()).map(|s| format!("acct-{s:0width$}")).collect();
        let mut rng = Rng(0x5eed);
        let mut payloads = vec![0u8; cfg.events as usize * PAYLOAD];
        for chunk in payloads.chunks_mut(8) {
            let x = rng.next().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
        Data { stream_ids, payloads }
    }

    fn payload(&self, i: u64) -> &[u8] {
        let n = self.payloads.len() / PAYLOAD;
        let at = (i as usize % n) * PAYLOAD;
        &self.payloads[at..at + PAYLOAD]
    }
}

/// splitmix64: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One engine's figures in one round; `None` where the engine cannot do it (raw's reads).
#[derive(Clone, Default)]
struct Sample {
    load_eps: f64,
    single_cps: f64,
    concurrent_cps: f64,
    read_p50_us: Option<f64>,
    read_p99_us: Option<f64>,
    scan_eps: f64,
    disk_allocated: u64,
    disk_len: u64,
    open_ms: Option<f64>,
}

fn run_engine(kind: Kind, cfg: &Config, data: &Data, round: usize) -> Sample {
    let mut s = Sample::default();
    let tag = format!("{} round {round}", kind.name());
    let dir = cfg.base.join(format!("strata-peers-{}-{}-r{round}", std::process::id(), kind.name()));
    let _ = std::fs::remove_dir_all(&dir);

    // 1. The load.
    let load_dir = dir.join("load");
    let mut engine = kind.open(&load_dir);
    let mut writer = engine.writer();
    let start = Instant::now();
    let mut batch = Vec::with_capacity(LOAD_COMMIT);
    for first in (0..cfg.events).step_by(LOAD_COMMIT) {
        batch.clear();
        batch.extend((first..first + LOAD_COMMIT as u64).map(|i| Ev {
            stream: &data.stream_ids[(i % cfg.streams()) as usize],
            version: i / cfg.streams(),
            payload: data.payload(i),
        }));
        writer.commit(&batch);
    }
    let t = start.elapsed();
    drop(writer);
    s.load_eps = cfg.events as f64 / t.as_secs_f64();
    eprintln!("{tag}: load {} events in {:.2?}: {}/s", cfg.events, t, human(s.load_eps));

    // 4. Stream reads: the same random streams twice, the first pass untimed (warm cache).
    let mut rng = Rng(round as u64);
    let picks: Vec<&str> =
        (0..READS).map(|_| data.stream_ids[(rng.next() % cfg.streams()) as usize].as_str()).collect();
    let mut lat = Vec::with_capacity(READS);
    for pass in 0..2 {
        for stream in &picks {
            let t = Instant::now();
            let n = engine.read_stream(stream);
            let d = t.elapsed();
            if let Some(n) = n {
                assert_eq!(n, EVENTS_PER_STREAM, "{tag}: {stream} read {n} events");
                if pass == 1 {
                    lat.push(d.as_secs_f64() * 1e6);
                }
            }
        }
    }
    if !lat.is_empty() {
        lat.sort_by(f64::total_cmp);
        s.read_p50_us = Some(lat[lat.len() / 2]);
        s.read_p99_us = Some(lat[(lat.len() * 99 / 100).min(lat.len() - 1)]);
        eprintln!("{tag}: stream read p50 {:.1} us, p99 {:.1} us", s.read_p50_us.unwrap(), s.read_p99_us.unwrap());
    }

    // 5. Full scan.
    let t = Instant::now();
    let n = engine.scan();
    let t = t.elapsed();
    assert_eq!(n, cfg.events, "{tag}: the scan saw {n} events");
    s.scan_eps = n as f64 / t.as_secs_f64();
    eprintln!("{tag}: scan {n} events in {t:.2?}: {}/s", human(s.scan_eps));

    // 6. Size at rest, then 7. reopen and read one stream.
    engine.close();
    (s.disk_len, s.disk_allocated) = disk_usage(&load_dir);
    eprintln!("{tag}: on disk {} allocated, {} in file lengths", mib(s.disk_allocated), mib(s.disk_len));
    let t = Instant::now();
    let mut engine = kind.open(&load_dir);
    let n = engine.read_stream(picks[0]);
    let t = t.elapsed();
    if let Some(n) = n {
        assert_eq!(n, EVENTS_PER_STREAM);
        s.open_ms = Some(t.as_secs_f64() * 1e3);
        eprintln!("{tag}: open + first read {t:.2?}");
    }
    engine.close();
    std::fs::remove_dir_all(&load_dir).unwrap();

    // 2. One-event commits, one writer.
    let single_dir = dir.join("single");
    let engine = kind.open(&single_dir);
    let mut writer = engine.writer();
    let ids: Vec<String> = (0..SMALL_STREAMS).map(|s| format!("one-{s:04}")).collect();
    let start = Instant::now();
    for i in 0..cfg.single {
        let ev =
            Ev { stream: &ids[(i % SMALL_STREAMS) as usize], version: i / SMALL_STREAMS, payload: data.payload(i) };
        writer.commit(std::slice::from_ref(&ev));
    }
    let t = start.elapsed();
    drop(writer);
    engine.close();
    std::fs::remove_dir_all(&single_dir).unwrap();
    s.single_cps = cfg.single as f64 / t.as_secs_f64();
    eprintln!("{tag}: {} one-event commits in {t:.2?}: {}/s", cfg.single, human(s.single_cps));

    // 3. One-event commits, WRITERS threads.
    let conc_dir = dir.join("concurrent");
    let engine = kind.open(&conc_dir);
    let per = cfg.concurrent / WRITERS as u64;
    let barrier = Arc::new(Barrier::new(WRITERS + 1));
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut writer = engine.writer();
            let barrier = barrier.clone();
            let payloads: Vec<u8> = (0..per).flat_map(|i| data.payload(w as u64 * per + i).to_vec()).collect();
            std::thread::spawn(move || {
                let ids: Vec<String> = (0..SMALL_STREAMS).map(|s| format!("w{w}-{s:04}")).collect();
                barrier.wait();
                for i in 0..per {
                    let at = i as usize * PAYLOAD;
                    let ev = Ev {
                        stream: &ids[(i % SMALL_STREAMS) as usize],
                        version: i / SMALL_STREAMS,
                        payload: &payloads[at..at + PAYLOAD],
                    };
                    writer.commit(std::slice::from_ref(&ev));
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    let t = start.elapsed();
    engine.close();
    std::fs::remove_dir_all(&conc_dir).unwrap();
    let commits = per * WRITERS as u64;
    s.concurrent_cps = commits as f64 / t.as_secs_f64();
    eprintln!("{tag}: {commits} one-event commits from {WRITERS} threads in {t:.2?}: {}/s", human(s.concurrent_cps));

    let _ = std::fs::remove_dir_all(&dir);
    s
}

/// (sum of file lengths, allocated bytes) under `dir`.
fn disk_usage(dir: &Path) -> (u64, u64) {
    let mut len = 0;
    let mut allocated = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        if meta.is_dir() {
            let (l, a) = disk_usage(&entry.path());
            len += l;
            allocated += a;
        } else {
            len += meta.len();
            allocated += meta.blocks() * 512;
        }
    }
    (len, allocated)
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn median_opt(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = v.flatten().collect();
    (!v.is_empty()).then(|| median(v.into_iter()))
}

fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter by, so arguments are ignored.
    let cfg = Config::from_env();
    eprintln!(
        "peers: {} events over {} streams, {} rounds, engines {:?}, under {} ({})",
        cfg.events,
        cfg.streams(),
        cfg.rounds,
        cfg.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        cfg.base.display(),
        fs_type(&cfg.base).unwrap_or_else(|| "?".into()),
    );
    let data = Data::new(&cfg);
    let mut samples: Vec<Vec<(Kind, Sample)>> = Vec::new();
    for round in 1..=cfg.rounds {
        let mut this = Vec::new();
        for &kind in &cfg.kinds {
            this.push((kind, run_engine(kind, &cfg, &data, round)));
        }
        samples.push(this);
    }
    report(&cfg, &samples);
}

fn report(cfg: &Config, samples: &[Vec<(Kind, Sample)>]) {
    let of = |kind: Kind| -> Vec<Sample> {
        samples.iter().filter_map(|r| r.iter().find(|(k, _)| *k == kind).map(|(_, s)| s.clone())).collect()
    };
    let med = |kind: Kind, f: &dyn Fn(&Sample) -> f64| median(of(kind).iter().map(f));
    let has_raw = cfg.kinds.contains(&Kind::Raw);
    let throughput = |kind: Kind, f: &dyn Fn(&Sample) -> f64| {
        let x = med(kind, f);
        if has_raw && kind != Kind::Raw {
            format!("{} ({:.2}x raw)", human(x), x / med(Kind::Raw, f))
        } else {
            human(x)
        }
    };
    let opt = |v: Option<f64>, digits: usize| v.map_or("—".to_string(), |x| format!("{x:.digits$}"));

    println!(
        "\n## strata vs peers: {} events of {PAYLOAD} B over {} streams, medians of {} rounds\n",
        cfg.events,
        cfg.streams(),
        cfg.rounds
    );
    println!(
        "| engine | load, commits of {LOAD_COMMIT} (events/s) | 1-event commits (commits/s) \
         | {WRITERS} writers, 1-event commits (commits/s) | stream read p50 (µs) | stream read p99 (µs) \
         | full scan (events/s) | on disk, allocated | open + first read (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &kind in &cfg.kinds {
        let s = of(kind);
        let name = match kind {
            Kind::SqliteNormal => "sqlite-normal ¹",
            Kind::Strata => "strata ²",
            Kind::StrataP1 => "strata-p1 ²",
            Kind::StrataIds => "strata-ids ²",
            k => k.name(),
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            throughput(kind, &|s| s.load_eps),
            throughput(kind, &|s| s.single_cps),
            throughput(kind, &|s| s.concurrent_cps),
            opt(median_opt(s.iter().map(|s| s.read_p50_us)), 1),
            opt(median_opt(s.iter().map(|s| s.read_p99_us)), 1),
            throughput(kind, &|s| s.scan_eps),
            mib(med(kind, &|s| s.disk_allocated as f64) as u64),
            opt(median_opt(s.iter().map(|s| s.open_ms)), 1),
        );
    }
    println!(
        "\n¹ `synchronous=NORMAL` in WAL mode does not fsync at each commit (only at checkpoints): \
         a power loss can drop the last commits. Not durable per commit, unlike every other row."
    );
    println!(
        "² strata zero-fills each partition's active segment in chunks (4 MiB by default) ahead of \
         its writer while open, and gives that space back at a clean close: the sizes here, taken \
         after close, hold no preallocation."
    );
    println!(
        "\nFile lengths (median): {}.",
        cfg.kinds
            .iter()
            .map(|&k| format!("{} {}", k.name(), mib(med(k, &|s| s.disk_len as f64) as u64)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "Writers: redb and SQLite admit one write transaction at a time, so their {WRITERS} threads \
         queue (SQLite: a connection each, `BEGIN IMMEDIATE`, busy timeout); raw's threads each \
         write and fdatasync on their own; fjall's commit their batch and then persist the journal; \
         strata's append through group commit. Full scans: strata and SQLite (rowid) read in log \
         order, fjall and redb in key order, raw sequentially. fjall's inserts are blind (no \
         version check). Raw has no index: no stream reads, no open time."
    );
    if has_raw {
        println!("\nraw per round (fsync latency drifts, so compare within a round):\n");
        println!(
            "| round | load (events/s) | 1-event commits/s | {WRITERS} writers commits/s | full scan (events/s) |"
        );
        println!("|---|---|---|---|---|");
        for (i, s) in of(Kind::Raw).iter().enumerate() {
            println!(
                "| {} | {} | {} | {} | {} |",
                i + 1,
                human(s.load_eps),
                human(s.single_cps),
                human(s.concurrent_cps),
                human(s.scan_eps)
            );
        }
    }
}
