//! The JetStream backend (feature `jetstream`): a [`Store`](crate::Store) whose partitions are
//! JetStream streams on a NATS cluster, so that the same application code (appends with an
//! expected version, reads, aggregates, projections, the command bus, subscriptions) runs
//! when one machine is outgrown. The mapping of partitions, streams, versions and snapshots
//! onto JetStream is a protocol, written down in `docs/jetstream.md`; in short:
//!
//! - partition `n` is the JetStream stream `{prefix}_P{n}`, subjects `{prefix}.p{n}.>`, with
//!   `allow_atomic` and `allow_direct` set, deletes and purges denied, no limits;
//! - a strata stream is the subject `{prefix}.p{n}.{token}` ([`subject`]);
//! - position `p` is the JetStream stream sequence `p + 1` (strata's positions start at 0);
//! - an append is one message (one event) or one atomic batch, carrying its expected version
//!   as `Nats-Expected-Last-Subject-Sequence`, which the stream's leader checks;
//! - snapshots are KV entries of the bucket `{prefix}_SNAPSHOTS`, written by compare-and-set;
//! - projections are shared between the processes that register them: partition leases,
//!   checkpoints, consumers and dead letters on the cluster ([`shared`]).
//!
//! The backend runs its own tokio runtime (two worker threads); the blocking methods drive
//! their futures on it from the caller's thread.
//!
//! Reads go to any replica (direct gets). A replica can be behind the leader by the last
//! acknowledged writes, so a read checks the sequences it returns against what this process
//! knows was acknowledged (its own appends, and the heads it has seen) and asks again while
//! the replica is behind: a process always reads its own writes.

mod shared;
mod subject;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt;
use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::event::{AppendResult, EventData, EventView, ExpectedVersion, RecordedEvent};
use crate::format::batch::{self, Limits};
use crate::format::snapshot as snap_format;
use crate::io::Io;
use crate::report::{RecoveryAction, Report};
use crate::router;
use crate::snapshot::{Counters, Pending, SnapshotStats, Stored};
use crate::sync::HeadSignal;

use super::future::AppendFuture;
use super::options::{DEFAULT_MAX_APPEND_BYTES, DEFAULT_MAX_EVENT_BYTES, DEFAULT_PARTITIONS};
use super::seam::{Heads, Log, Origin, Select, Visible};
use wire::Decoded;

/// The oldest server the backend works with: atomic batch publish came in 2.12.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 12, 0);

/// The most events one append may hold on this backend: the server's limit on the messages
/// of one atomic batch.
pub const MAX_BATCH_EVENTS: usize = 1000;

/// The version of the mapping this build writes, stored in each stream's metadata.
const MAPPING_VERSION: &str = "1";

/// Events fetched per direct-get request.
const PAGE: usize = 256;

/// How often the head watcher asks for the partitions' heads.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// How to reach a JetStream cluster, and how a store on it is laid out.
///
/// ```no_run
/// use strata::{JetStreamOptions, Store};
/// let store = Store::connect(
///     JetStreamOptions::new(["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"], "bank").replicas(3),
/// )?;
/// # Ok::<(), strata::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    servers: Vec<String>,
    prefix: String,
    replicas: usize,
    partitions: u32,
    create_if_missing: bool,
    state_dir: Option<PathBuf>,
    timeout: Duration,
    retry_for: Duration,
    max_event_bytes: u64,
    max_append_bytes: u64,
    lease: Duration,
}

impl JetStreamOptions {
    /// A store named `prefix` (1 to 32 ASCII letters, digits, `-` or `_`) on the cluster whose
    /// servers are `servers` (`nats://host:port`; any of them will do, the client finds the
    /// others). Defaults: 3 replicas, 8 partitions (both used only when the store is created),
    /// created if missing, a 3 s request timeout, and retries for 30 s through a failover.
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>, prefix: impl Into<String>) -> JetStreamOptions {
        JetStreamOptions {
            servers: servers.into_iter().map(Into::into).collect(),
            prefix: prefix.into(),
            replicas: 3,
            partitions: DEFAULT_PARTITIONS,
            create_if_missing: true,
            state_dir: None,
            timeout: Duration::from_secs(3),
            retry_for: Duration::from_secs(30),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_append_bytes: DEFAULT_MAX_APPEND_BYTES,
            lease: shared::DEFAULT_LEASE,
        }
    }

    /// Replicas of each partition's stream and of the snapshot bucket, when they are created
    /// (1 to 5; 3 survives the loss of one server).
    pub fn replicas(mut self, n: usize) -> JetStreamOptions {
        self.replicas = n;
        self
    }

    /// The partition count of a store this creates; an existing store keeps its own.
    pub fn partitions(mut self, n: u32) -> JetStreamOptions {
        self.partitions = n;
        self
    }

    /// Whether a missing store is created (default) or refused with [`Error::NotAStore`].
    pub fn create_if_missing(mut self, yes: bool) -> JetStreamOptions {
        self.create_if_missing = yes;
        self
    }

    /// The local directory for what this process keeps of its own: the checkpoints and dead
    /// letters of its per-process projections ([`ProjectionOptions::per_process`](crate::projection::ProjectionOptions::per_process);
    /// shared ones keep theirs on the cluster), [`Store::path`](crate::Store::path). Default:
    /// `strata-jetstream-{prefix}` in the system's temporary directory.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> JetStreamOptions {
        self.state_dir = Some(dir.into());
        self
    }

    /// How long one request to the cluster may take before it is retried (default 3 s). A
    /// request to a server that died, or to a leader that lost its quorum, is retried after
    /// this, so it bounds how long an append stalls past a leader election; a retry that was
    /// not needed is safe (it carries the same message ids).
    pub fn timeout(mut self, t: Duration) -> JetStreamOptions {
        self.timeout = t;
        self
    }

    /// How long an append or read keeps retrying through timeouts and a leader election
    /// before it fails with [`Error::Remote`] (default 30 s). An append's retries carry the
    /// same message ids, so a retried append is written once.
    pub fn retry_for(mut self, t: Duration) -> JetStreamOptions {
        self.retry_for = t;
        self
    }

    /// Largest event (type + metadata + payload), as [`Options::max_event_bytes`](crate::Options::max_event_bytes);
    /// also bounded by the server's `max_payload`.
    pub fn max_event_bytes(mut self, n: u64) -> JetStreamOptions {
        self.max_event_bytes = n;
        self
    }

    /// Largest append, as [`Options::max_append_bytes`](crate::Options::max_append_bytes).
    pub fn max_append_bytes(mut self, n: u64) -> JetStreamOptions {
        self.max_append_bytes = n;
        self
    }

    /// How long a process holds a projection's partition without renewing its lease (default
    /// 10 s, at least 1 s), used when the store's lease bucket is created; an existing bucket
    /// keeps its own. A process running a shared projection renews its leases every quarter
    /// of this; when it dies, the others take its partitions within 1.25 times this (plus the
    /// server's expiry sweep, under a second). See [`ProjectionOptions::per_process`](crate::projection::ProjectionOptions::per_process).
    pub fn lease(mut self, t: Duration) -> JetStreamOptions {
        self.lease = t.max(Duration::from_secs(1));
        self
    }
}

/// What this process knows of a stream: its last version and that event's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Last {
    version: u64,
    seq: u64,
}

/// One stream's part of an append being published.
struct Part<'a> {
    stream: &'a str,
    /// Its last event when the append was checked (`None`: it has none).
    last: Option<Last>,
    events: &'a [EventData],
    /// The base of its events' message ids.
    id: String,
}

/// Streams whose last event this process remembers, at most.
const MAX_REMEMBERED: usize = 100_000;

/// Snapshot writes in flight, for `flush_snapshots`.
#[derive(Default)]
struct InFlight {
    n: Mutex<usize>,
    done: Condvar,
}

/// A store on a JetStream cluster.
pub(crate) struct Remote {
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
    partitions: u32,
    limits: Limits,
    timeout: Duration,
    retry_for: Duration,
    /// Per partition: the highest sequence this process knows was acknowledged.
    known: Vec<AtomicU64>,
    last: Mutex<HashMap<String, Last>>,
    snapshots: kv::Store,
    snapshot_writes: Arc<InFlight>,
    counters: Arc<Counters>,
    signal: Arc<HeadSignal>,
    closed: Arc<AtomicBool>,
    dir: PathBuf,
    io: Io,
    report: Report,
    servers: Vec<String>,
    server_version: String,
    replicas: usize,
    /// Lease time for a lease bucket this process creates.
    lease: Duration,
    /// This process's name among those sharing projections.
    owner: String,
    /// Shared projections' buckets and dead-letter stream, made on first use.
    coordination: Mutex<Option<Arc<shared::Coordination>>>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &"jetstream")
            .field("servers", &self.servers)
            .field("server_version", &self.server_version)
            .field("prefix", &self.prefix)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

fn remote(what: impl fmt::Display, e: impl fmt::Display) -> Error {
    Error::Remote { cause: format!("{what}: {e}") }
}

/// `"2.15.1"` (or `"2.12.0-beta.3"`) as numbers.
fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// Why a partition's stream as the server echoed it cannot serve as partition `n` of a store of
/// `count` partitions; `None` if it can.
fn config_mismatch(cfg: &stream::Config, prefix: &str, n: u32, count: u32) -> Option<String> {
    let subject = format!("{prefix}.p{n}.>");
    let meta = |k: &str| cfg.metadata.get(k).map(String::as_str);
    if !cfg.allow_atomic_publish {
        return Some("allow_atomic is not set (a server that ignores it would write half of a batch)".into());
    }
    if !cfg.allow_direct {
        return Some("allow_direct is not set".into());
    }
    if cfg.subjects != [subject.clone()] {
        return Some(format!("its subjects are {:?}, not [{subject:?}]", cfg.subjects));
    }
    if !cfg.deny_delete || !cfg.deny_purge {
        return Some("it allows deleting or purging messages".into());
    }
    if cfg.max_age != Duration::ZERO || cfg.max_messages > 0 || cfg.max_bytes > 0 || cfg.max_messages_per_subject > 0 {
        return Some("it has a limit that would discard events".into());
    }
    if cfg.retention != stream::RetentionPolicy::Limits {
        return Some(format!("its retention is {:?}, not limits", cfg.retention));
    }
    if meta("strata.mapping") != Some(MAPPING_VERSION) {
        return Some(format!("strata.mapping is {:?}, not {MAPPING_VERSION:?}", meta("strata.mapping")));
    }
    if meta("strata.partitions") != Some(count.to_string().as_str())
        || meta("strata.partition") != Some(n.to_string().as_str())
    {
        return Some(format!(
            "its metadata says partition {:?} of {:?}, not {n} of {count}",
            meta("strata.partition"),
            meta("strata.partitions")
        ));
    }
    None
}

impl Remote {
    /// Connects, checks the server and the store's streams (creating them if allowed), and
    /// starts the head watcher.
    pub(crate) fn connect(options: JetStreamOptions) -> Result<Remote> {
        if tokio::runtime::Handle::try_current().is_ok() {
            // Called from a thread of the caller's own tokio runtime, where blocking on (or
            // dropping) another runtime panics: connect from a plain thread.
            return std::thread::scope(|s| match s.spawn(|| Self::connect_here(options)).join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            });
        }
        Self::connect_here(options)
    }

    fn connect_here(options: JetStreamOptions) -> Result<Remote> {
        let o = options;
        if !subject::valid_prefix(&o.prefix) {
            return Err(Error::InvalidOptions(format!(
                "prefix {:?}: 1 to 32 ASCII letters, digits, '-' or '_'",
                o.prefix
            )));
        }
        if o.servers.is_empty() {
            return Err(Error::InvalidOptions("no servers given".into()));
        }
        if !(1..=5).contains(&o.replicas) {
            return Err(Error::InvalidOptions(format!("replicas: {} (1 to 5)", o.replicas)));
        }
        if o.partitions == 0 {
            return Err(Error::InvalidOptions("partitions: 0".into()));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strata-jetstream")
            .enable_all()
            .build()
            .map_err(|e| remote("starting the runtime", e))?;
        let connect = async_nats::ConnectOptions::new()
            .name("strata")
            .connection_timeout(o.timeout)
            .request_timeout(Some(o.timeout))
            .connect(o.servers.clone());
        let client = rt
            .block_on(connect)
            .map_err(|e| Error::Unreachable { servers: o.servers.join(","), cause: e.to_string() })?;
        let info = client.server_info();
        let found = parse_version(&info.version);
        if found.is_none_or(|v| v < MIN_SERVER_VERSION) {
            let (a, b, c) = MIN_SERVER_VERSION;
            return Err(Error::IncompatibleServer {
                server: info.version.clone(),
                reason: format!("strata needs nats-server {a}.{b}.{c} or later (atomic batch publish)"),
            });
        }
        if !info.jetstream {
            return Err(Error::IncompatibleServer {
                server: info.version.clone(),
                reason: "JetStream is not enabled on the server".into(),
            });
        }
        let max_payload = info.max_payload as u64;
        let js = {
            // The context spawns nothing, but wants to be made inside the runtime.
            let _in_runtime = rt.enter();
            jetstream::ContextBuilder::new().timeout(o.timeout).build(client.clone())
        };
        let partitions = rt.block_on(Self::layout(&js, &o))?;
        let snapshots = rt.block_on(Self::snapshot_bucket(&js, &o))?;
        let dir =
            o.state_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("strata-jetstream-{}", o.prefix)));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create_dir_all", &dir, e))?;
        // A message holds the event's type in a header and its metadata in another (base64):
        // leave room for them and the server's own headers under `max_payload`.
        let max_event_bytes = o.max_event_bytes.min(max_payload.saturating_sub(4096) / 4 * 3);
        let remote = Remote {
            rt: Some(rt),
            client,
            js,
            prefix: o.prefix.clone(),
            partitions,
            limits: Limits { max_event_bytes, max_append_bytes: o.max_append_bytes },
            timeout: o.timeout,
            retry_for: o.retry_for,
            known: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            last: Mutex::new(HashMap::new()),
            snapshots,
            snapshot_writes: Arc::default(),
            counters: Arc::default(),
            signal: Arc::default(),
            closed: Arc::new(AtomicBool::new(false)),
            dir,
            io: Io::with_faults(None),
            report: Report::default(),
            servers: o.servers.clone(),
            server_version: info.version.clone(),
            replicas: o.replicas,
            lease: o.lease,
            owner: format!("{}-{:x}", std::process::id(), wire::now_nanos()),
            coordination: Mutex::new(None),
        };
        for p in 0..partitions {
            let h = remote.fetch_heads(p)?;
            remote.note_known(p, h.head);
        }
        remote.start_watcher();
        Ok(remote)
    }

    /// The store's partition count: read from partition 0's metadata, or the partitions
    /// created. Every partition's stream is checked (and created if missing and allowed).
    async fn layout(js: &jetstream::Context, o: &JetStreamOptions) -> Result<u32> {
        let first = Self::get_stream(js, &stream_name(&o.prefix, 0), o.retry_for).await?;
        let count = match &first {
            Some(s) => {
                let meta = s.config.metadata.get("strata.partitions");
                meta.and_then(|m| m.parse::<u32>().ok()).filter(|&n| n > 0).ok_or_else(|| Error::NotAStore {
                    path: PathBuf::from(stream_name(&o.prefix, 0)),
                    reason: format!("a JetStream stream without strata's metadata (strata.partitions: {meta:?})"),
                })?
            }
            None if !o.create_if_missing => {
                return Err(Error::NotAStore {
                    path: PathBuf::from(stream_name(&o.prefix, 0)),
                    reason: "no such JetStream stream (create_if_missing is off)".into(),
                });
            }
            None => o.partitions,
        };
        for n in 0..count {
            let name = stream_name(&o.prefix, n);
            let info = match if n == 0 { first.clone() } else { Self::get_stream(js, &name, o.retry_for).await? } {
                Some(info) => info,
                None if o.create_if_missing => Self::create_stream(js, o, n, count).await?,
                None => {
                    return Err(Error::NotAStore {
                        path: PathBuf::from(name),
                        reason: "a partition's JetStream stream is missing".into(),
                    });
                }
            };
            if let Some(why) = config_mismatch(&info.config, &o.prefix, n, count) {
                return Err(Error::IncompatibleServer { server: name, reason: why });
            }
        }
        Ok(count)
    }

    /// Partition stream `name`'s configuration and state, `None` if there is no such stream;
    /// a cluster that does not answer (electing its leaders after a restart) is asked again
    /// for up to `retry_for`.
    async fn get_stream(js: &jetstream::Context, name: &str, retry_for: Duration) -> Result<Option<stream::Info>> {
        let deadline = Instant::now() + retry_for;
        loop {
            match js.get_stream(name).await {
                Ok(s) => return Ok(Some(s.cached_info().clone())),
                Err(e) => match e.kind() {
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                    {
                        return Ok(None);
                    }
                    _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                    _ => return Err(remote(format!("looking up stream {name}"), e)),
                },
            }
        }
    }

    /// Creates partition `n`'s stream and returns its configuration as the server echoed it
    /// (a concurrent creation by another process is as good).
    async fn create_stream(js: &jetstream::Context, o: &JetStreamOptions, n: u32, count: u32) -> Result<stream::Info> {
        let name = stream_name(&o.prefix, n);
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{}.p{n}.>", o.prefix)],
            num_replicas: o.replicas,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            allow_atomic_publish: true,
            allow_direct: true,
            deny_delete: true,
            deny_purge: true,
            duplicate_window: Duration::from_secs(120),
            metadata: [
                ("strata.mapping".to_string(), MAPPING_VERSION.to_string()),
                ("strata.partitions".to_string(), count.to_string()),
                ("strata.partition".to_string(), n.to_string()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        match js.create_stream(config).await {
            Ok(s) => Ok(s.cached_info().clone()),
            Err(e) => match Self::get_stream(js, &name, o.retry_for).await? {
                Some(info) => Ok(info),
                None => Err(remote(format!("creating stream {name}"), e)),
            },
        }
    }

    async fn snapshot_bucket(js: &jetstream::Context, o: &JetStreamOptions) -> Result<kv::Store> {
        let bucket = format!("{}_SNAPSHOTS", o.prefix);
        if let Ok(s) = js.get_key_value(&bucket).await {
            return Ok(s);
        }
        let config = kv::Config {
            bucket: bucket.clone(),
            history: 1,
            num_replicas: o.replicas,
            max_value_size: snap_format::MAX_RECORD_LEN.min(i32::MAX as usize) as i32,
            ..Default::default()
        };
        let deadline = Instant::now() + o.retry_for;
        loop {
            match js.create_key_value(config.clone()).await {
                Ok(s) => return Ok(s),
                Err(e) => match js.get_key_value(&bucket).await {
                    Ok(s) => return Ok(s),
                    Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(_) => return Err(remote(format!("creating bucket {bucket}"), e)),
                },
            }
        }
    }

    /// Polls the partitions' heads and bumps the signal when one moves, so that projections
    /// and subscriptions wake for other processes' appends too.
    fn start_watcher(&self) {
        let js = self.js.clone();
        let names: Vec<String> = (0..self.partitions).map(|p| stream_name(&self.prefix, p)).collect();
        let signal = self.signal.clone();
        let closed = self.closed.clone();
        let seen: Vec<u64> = self.known.iter().map(|k| k.load(Ordering::Acquire)).collect();
        self.runtime().spawn(async move {
            let mut last = seen;
            while !closed.load(Ordering::Acquire) {
                tokio::time::sleep(WATCH_EVERY).await;
                let mut moved = false;
                for (p, name) in names.iter().enumerate() {
                    if let Ok(s) = js.get_stream_no_info(name).await
                        && let Ok(info) = s.get_info().await
                        && let Some(l) = last.get_mut(p)
                        && info.state.last_sequence != *l
                    {
                        *l = info.state.last_sequence;
                        moved = true;
                    }
                }
                if moved {
                    signal.bump();
                }
            }
        });
    }

    /// Runs `f` to completion on the runtime, from a thread outside it (a thread of the
    /// caller's own tokio runtime blocks a helper thread instead).
    fn block<F: Future + Send>(&self, f: F) -> F::Output
    where
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| match s.spawn(|| self.runtime().block_on(f)).join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            })
        } else {
            self.runtime().block_on(f)
        }
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives as long as the store")
    }

    /// Sleeps on the calling thread.
    fn pause(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) { Err(Error::Closed) } else { Ok(()) }
    }

    fn check_partition(&self, partition: u32) -> Result<()> {
        self.check_open()?;
        if partition < self.partitions {
            Ok(())
        } else {
            Err(Error::NoSuchPartition { partition, count: self.partitions })
        }
    }

    fn subject(&self, partition: u32, stream: &str) -> String {
        format!("{}.p{partition}.{}", self.prefix, subject::escape(stream))
    }

    fn note_known(&self, partition: u32, seq: u64) {
        if let Some(k) = self.known.get(partition as usize) {
            k.fetch_max(seq, Ordering::AcqRel);
        }
    }

    fn remember(&self, stream: &str, last: Last) {
        let mut m = self.last.lock();
        if m.len() >= MAX_REMEMBERED && !m.contains_key(stream) {
            m.clear();
        }
        let e = m.entry(stream.to_owned()).or_insert(last);
        if last.seq >= e.seq {
            *e = last;
        }
    }

    fn forget(&self, stream: &str) {
        self.last.lock().remove(stream);
    }

    /// Where partition `p`'s stream stands, from its leader.
    fn fetch_heads(&self, partition: u32) -> Result<Heads> {
        let name = stream_name(&self.prefix, partition);
        let info = self.retrying(&format!("reading the state of {name}"), || async {
            let s = self.js.get_stream_no_info(&name).await.map_err(|e| e.to_string())?;
            s.get_info().await.map_err(|e| e.to_string())
        })?;
        let head = info.state.last_sequence;
        let time = if head == 0 { 0 } else { nanos(info.state.last_timestamp) };
        Ok(Heads { head, time, durable: head })
    }

    /// Runs `op` until it succeeds, retrying failures for `retry_for`.
    fn retrying<T: Send, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: Fn() -> Fut + Send + Sync,
        Fut: Future<Output = std::result::Result<T, String>> + Send,
    {
        let deadline = Instant::now() + self.retry_for;
        self.block(async {
            let mut pause = Duration::from_millis(20);
            loop {
                match op().await {
                    Ok(v) => return Ok(v),
                    Err(e) if Instant::now() >= deadline => return Err(remote(what, e)),
                    Err(_) => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(500));
                    }
                }
            }
        })
    }

    /// The last event of `stream` as the partition's leader has it.
    fn last_of(&self, partition: u32, stream: &str) -> Result<Option<Last>> {
        let name = stream_name(&self.prefix, partition);
        let subject = self.subject(partition, stream);
        let got = self.retrying(&format!("reading the last event of {stream:?}"), || async {
            let s = self.js.get_stream_no_info(&name).await.map_err(|e| e.to_string())?;
            match s.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => Ok(Some((m.sequence, m.headers))),
                Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })?;
        let Some((seq, headers)) = got else {
            self.forget(stream);
            return Ok(None);
        };
        let version = wire::version_of(&headers)
            .ok_or_else(|| Error::Remote { cause: format!("message {seq} of {name} has no Strata-Version header") })?;
        let last = Last { version, seq };
        self.remember(stream, last);
        self.note_known(partition, seq);
        Ok(Some(last))
    }

    /// Up to `max` messages of partition `p` from sequence `seq` on (of `subject`, a subject
    /// or a wildcard), from any replica; with how many matching messages the replica holds
    /// after them.
    async fn direct_batch(
        &self,
        partition: u32,
        seq: u64,
        max: usize,
        subject: &str,
    ) -> std::result::Result<(Vec<async_nats::Message>, u64), String> {
        self.direct_batch_of(&stream_name(&self.prefix, partition), seq, max, subject).await
    }

    /// Up to `max` messages of stream `name` from sequence `seq` on, as `direct_batch`.
    async fn direct_batch_of(
        &self,
        name: &str,
        seq: u64,
        max: usize,
        subject: &str,
    ) -> std::result::Result<(Vec<async_nats::Message>, u64), String> {
        let inbox = self.client.new_inbox();
        let mut sub = self.client.subscribe(inbox.clone()).await.map_err(|e| e.to_string())?;
        let request = serde_json::json!({ "seq": seq.max(1), "batch": max.max(1), "next_by_subj": subject });
        self.client
            .publish_with_reply(format!("$JS.API.DIRECT.GET.{name}"), inbox, request.to_string().into())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        loop {
            let m = match tokio::time::timeout(self.timeout, sub.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err("the subscription ended".into()),
                Err(_) => return Err(format!("no answer from {name} in {:?}", self.timeout)),
            };
            match m.status.map(u16::from) {
                None => out.push(m),
                Some(204) => {
                    let pending = m.headers.as_ref().and_then(|h| wire::header_u64(h, "Nats-Num-Pending")).unwrap_or(0);
                    return Ok((out, pending));
                }
                Some(404) => return Ok((out, 0)),
                Some(code) => return Err(format!("direct get from {name}: status {code} {:?}", m.description)),
            }
        }
    }

    /// The events of `subject` in partition `p` from sequence `seq` on, a page at a time, each
    /// handed to `f` until it breaks; `known`: the last sequence this process knows the subject
    /// holds (the read asks again while a replica is behind it). Returns whether `f` broke.
    fn visit_messages(
        &self,
        partition: u32,
        mut seq: u64,
        subject: &str,
        known: u64,
        max: usize,
        f: &mut dyn FnMut(&Decoded) -> Result<ControlFlow<()>>,
    ) -> Result<bool> {
        let mut given = 0usize;
        let deadline = Instant::now() + self.retry_for;
        loop {
            let want = (max - given).min(PAGE);
            if want == 0 {
                return Ok(false);
            }
            let (page, pending) =
                self.retrying(&format!("reading {subject}"), || self.direct_batch(partition, seq, want, subject))?;
            let got = page.len();
            for m in &page {
                let d = wire::decode(m, partition)?;
                seq = d.seq + 1;
                given += 1;
                if f(&d)?.is_break() {
                    return Ok(true);
                }
            }
            if pending > 0 && got > 0 {
                continue;
            }
            if seq > known || known == 0 {
                return Ok(false);
            }
            // The replica that answered is behind what was acknowledged: ask again.
            if Instant::now() >= deadline {
                return Err(Error::Remote {
                    cause: format!("every replica that answered for {subject} is behind sequence {known}"),
                });
            }
            self.pause(Duration::from_millis(5));
        }
    }

    /// Checks an append against the limits (the same rules as the embedded store).
    fn check_append(&self, stream: &str, events: &[EventData]) -> Result<()> {
        batch::checked_len(stream, events, self.limits)?;
        if events.len() > MAX_BATCH_EVENTS {
            return Err(Error::AppendTooLarge { size: events.len() as u64, limit: MAX_BATCH_EVENTS as u64 });
        }
        Ok(())
    }

    /// One attempt to publish the parts of an append, each after its `last`: one message, or
    /// one atomic batch; `Ok(None)` when a stream's last event was not its `last` any more.
    async fn publish(
        &self,
        partition: u32,
        parts: &[Part<'_>],
        append_id: &str,
        time: u64,
    ) -> std::result::Result<Option<wire::Ack>, String> {
        let total: usize = parts.iter().map(|p| p.events.len()).sum();
        let mut k = 0;
        let mut reply = None;
        for part in parts {
            let subject = self.subject(partition, part.stream);
            let first_version = part.last.map_or(0, |l| l.version + 1);
            for (i, e) in part.events.iter().enumerate() {
                let mut h: HeaderMap = wire::headers(e, first_version + i as u64, time, &wire::msg_id(e, &part.id, i));
                if i == 0 {
                    let expected = part.last.map_or(0, |l| l.seq);
                    h.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string().as_str());
                }
                k += 1;
                if total > 1 {
                    h.insert("Nats-Batch-Id", append_id);
                    h.insert("Nats-Batch-Sequence", k.to_string().as_str());
                }
                let payload = bytes::Bytes::copy_from_slice(&e.payload);
                if k == total {
                    if total > 1 {
                        h.insert("Nats-Batch-Commit", "1");
                    }
                    let r = self
                        .client
                        .request_with_headers(subject.clone(), h, payload)
                        .await
                        .map_err(|e| e.to_string())?;
                    reply = Some(r);
                } else {
                    self.client.publish_with_headers(subject.clone(), h, payload).await.map_err(|e| e.to_string())?;
                }
            }
        }
        let r = reply.ok_or("nothing to publish")?;
        match wire::ack(&r.payload)? {
            wire::Answer::Ack(a) => Ok(Some(a)),
            wire::Answer::WrongLastSequence => Ok(None),
        }
    }

    fn do_append(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<AppendResult> {
        let mut r = self.do_append_parts(&[(stream, expected, events)])?;
        r.pop().ok_or(Error::EmptyAppend)
    }

    /// Appends each part to its stream if every part's condition holds, all or nothing: one
    /// message or one atomic batch, the parts' events in order and contiguous.
    fn do_append_parts(&self, appends: &[(&str, ExpectedVersion, &[EventData])]) -> Result<Vec<AppendResult>> {
        self.check_open()?;
        let Some(&(first_stream, _, _)) = appends.first() else { return Ok(Vec::new()) };
        let partition = self.partition_of(first_stream);
        let mut all = Vec::new();
        for (j, &(stream, _, events)) in appends.iter().enumerate() {
            self.check_append(stream, events)?;
            if self.partition_of(stream) != partition || appends[..j].iter().any(|a| a.0 == stream) {
                return Err(Error::NotColocated {
                    reason: format!(
                        "{stream:?} lives in partition {} and {first_stream:?} in {partition}, or is named twice: give the streams one co-location key",
                        self.partition_of(stream)
                    ),
                });
            }
            all.extend_from_slice(events);
        }
        if appends.len() > 1 {
            // The unit is limited like one append.
            self.check_append(first_stream, &all)?;
        }
        let total = all.len() as u64;
        let append_id = wire::append_id();
        let time = wire::now_nanos();
        let deadline = Instant::now() + self.retry_for;
        let id_of = |j: usize| if appends.len() == 1 { append_id.clone() } else { format!("{append_id}/{j}") };
        // Each stream's last event as far as this process knows; checked by the server.
        let mut lasts = Vec::with_capacity(appends.len());
        let mut fresh = Vec::with_capacity(appends.len());
        for &(stream, expected, _) in appends {
            let remembered = self.last.lock().get(stream).copied();
            let (last, is_fresh) = match (expected, remembered) {
                (ExpectedVersion::NoStream, _) => (None, false),
                (_, Some(l)) => (Some(l), false),
                (_, None) => (self.last_of(partition, stream)?, true),
            };
            lasts.push(last);
            fresh.push(is_fresh);
        }
        let landed = |lasts: &[Option<Last>]| -> Option<Vec<AppendResult>> {
            appends
                .iter()
                .enumerate()
                .map(|(j, &(stream, _, events))| self.already_appended(partition, stream, lasts[j], events, &id_of(j)))
                .collect()
        };
        loop {
            let mut refused = None;
            for (j, &(stream, expected, _)) in appends.iter().enumerate() {
                let actual = lasts[j].map(|l| l.version);
                let ok = match expected {
                    ExpectedVersion::Any => true,
                    ExpectedVersion::NoStream => actual.is_none(),
                    ExpectedVersion::StreamExists => actual.is_some(),
                    ExpectedVersion::Exact(v) => actual == Some(v),
                };
                if !ok {
                    refused = Some((j, stream, expected, actual));
                    break;
                }
            }
            if let Some((j, stream, expected, actual)) = refused {
                if !fresh[j] {
                    // What this process remembered may be stale: ask the leader first.
                    lasts[j] = self.last_of(partition, stream)?;
                    fresh[j] = true;
                    continue;
                }
                if let Some(r) = landed(&lasts) {
                    return Ok(r);
                }
                return Err(Error::WrongExpectedVersion { stream: stream.to_owned(), expected, actual });
            }
            let parts: Vec<Part<'_>> = appends
                .iter()
                .enumerate()
                .map(|(j, &(stream, _, events))| Part { stream, last: lasts[j], events, id: id_of(j) })
                .collect();
            let publish = self.publish(partition, &parts, &append_id, time);
            let attempt = self.block(async { tokio::time::timeout(self.timeout, publish).await });
            match attempt {
                Ok(Ok(Some(ack))) if ack.duplicate => {
                    // The server had these messages already (an earlier attempt of this
                    // append, or a retry of one with the same event ids).
                    for (j, &(stream, _, _)) in appends.iter().enumerate() {
                        lasts[j] = self.last_of(partition, stream)?;
                    }
                    if let Some(r) = landed(&lasts) {
                        return Ok(r);
                    }
                    return Err(Error::IdempotencyConflict {
                        stream: first_stream.to_owned(),
                        reason: "the server holds these event ids, but not as the streams' last events".into(),
                    });
                }
                Ok(Ok(Some(ack))) => {
                    let mut position = ack.seq.saturating_sub(total);
                    let mut out = Vec::with_capacity(appends.len());
                    for (j, &(stream, _, events)) in appends.iter().enumerate() {
                        let n = events.len() as u64;
                        let first_version = lasts[j].map_or(0, |l| l.version + 1);
                        out.push(AppendResult {
                            partition,
                            first_position: position,
                            first_version,
                            last_version: first_version + n - 1,
                            timestamp_nanos: time,
                            duplicate: false,
                        });
                        position += n;
                        // Position p is sequence p + 1.
                        self.remember(stream, Last { version: first_version + n - 1, seq: position });
                    }
                    self.note_known(partition, ack.seq);
                    self.signal.bump();
                    return Ok(out);
                }
                Ok(Ok(None)) => {
                    // Someone appended after a `last`: read what the streams hold now.
                    for (j, &(stream, _, _)) in appends.iter().enumerate() {
                        lasts[j] = self.last_of(partition, stream)?;
                        fresh[j] = true;
                    }
                }
                Ok(Err(e)) if Instant::now() >= deadline => {
                    return Err(remote(format!("appending to {first_stream:?}"), e));
                }
                Err(_) if Instant::now() >= deadline => {
                    return Err(remote(format!("appending to {first_stream:?}"), "timed out"));
                }
                Ok(Err(_)) | Err(_) => {
                    // A timeout or a lost connection: the append may have landed. The retry
                    // carries the same batch and message ids; if a stream moved, the check
                    // against what it holds now tells a landed retry from a conflict.
                    self.pause(Duration::from_millis(100));
                    for (j, &(stream, _, _)) in appends.iter().enumerate() {
                        lasts[j] = self.last_of(partition, stream)?;
                        fresh[j] = true;
                    }
                    if let Some(r) = landed(&lasts) {
                        return Ok(r);
                    }
                }
            }
        }
    }

    /// If the stream's last events are `events` (by message id: the events' own ids, or
    /// those of this append), the append already happened (a retry whose first attempt
    /// landed, or an idempotent retry): its result.
    fn already_appended(
        &self,
        partition: u32,
        stream: &str,
        last: Option<Last>,
        events: &[EventData],
        append_id: &str,
    ) -> Option<AppendResult> {
        let last = last?;
        let n = events.len() as u64;
        let first_version = last.version.checked_sub(n - 1)?;
        let first_position = last.seq.checked_sub(n)?;
        let expect: Vec<String> = events.iter().enumerate().map(|(i, e)| wire::msg_id(e, append_id, i)).collect();
        let mut ids = Vec::with_capacity(events.len());
        let subject = self.subject(partition, stream);
        self.visit_messages(partition, first_position + 1, &subject, 0, usize::MAX, &mut |d| {
            if d.version >= first_version {
                ids.push(d.msg_id.clone().unwrap_or_default());
            }
            Ok(ControlFlow::Continue(()))
        })
        .ok()?;
        (ids == expect).then_some(AppendResult {
            partition,
            first_position,
            first_version,
            last_version: last.version,
            timestamp_nanos: 0,
            duplicate: true,
        })
    }

    // The store's methods (`Store` dispatches to these).

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn partition_count(&self) -> u32 {
        self.partitions
    }

    pub(crate) fn partition_of(&self, stream_id: &str) -> u32 {
        router::jump_consistent_hash(router::route_hash(router::HASH_ID, stream_id), self.partitions)
    }

    pub(crate) fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.wait_snapshots();
        let _ = self.block(self.client.flush());
        Ok(())
    }

    pub(crate) fn append(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<AppendResult> {
        self.do_append(stream, expected, events)
    }

    pub(crate) fn append_many<S: AsRef<str>, E: AsRef<[EventData]>>(
        &self,
        appends: impl IntoIterator<Item = (S, ExpectedVersion, E)>,
    ) -> Vec<AppendFuture> {
        let appends: Vec<(String, ExpectedVersion, Vec<EventData>)> =
            appends.into_iter().map(|(s, x, e)| (s.as_ref().to_owned(), x, e.as_ref().to_vec())).collect();
        // The appends are published from up to 64 scoped threads at a time, so that they wait
        // on the network together; each is answered on its own.
        let mut out = Vec::with_capacity(appends.len());
        for chunk in appends.chunks(64) {
            std::thread::scope(|s| {
                let handles: Vec<_> =
                    chunk.iter().map(|(st, x, e)| s.spawn(move || self.do_append(st, *x, e))).collect();
                for h in handles {
                    let r = h.join().unwrap_or_else(|_| Err(Error::Remote { cause: "an append panicked".into() }));
                    out.push(AppendFuture::ready(r));
                }
            });
        }
        out
    }

    pub(crate) fn append_atomic<S: AsRef<str>, E: AsRef<[EventData]>>(
        &self,
        appends: impl IntoIterator<Item = (S, ExpectedVersion, E)>,
    ) -> Result<Vec<AppendResult>> {
        let appends: Vec<_> = appends.into_iter().collect();
        let parts: Vec<(&str, ExpectedVersion, &[EventData])> =
            appends.iter().map(|(s, x, e)| (s.as_ref(), *x, e.as_ref())).collect();
        self.do_append_parts(&parts)
    }

    pub(crate) fn append_async(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> AppendFuture {
        AppendFuture::ready(self.do_append(stream, expected, events))
    }

    pub(crate) fn read_stream(&self, stream: &str, from_version: u64, max_count: usize) -> Result<Vec<RecordedEvent>> {
        let mut out = Vec::new();
        if max_count == 0 {
            return Ok(out);
        }
        self.visit_stream_events(stream, from_version, 0, &mut |e| {
            out.push(e.to_recorded());
            if out.len() >= max_count { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })?;
        Ok(out)
    }

    pub(crate) fn visit_stream(
        &self,
        stream: &str,
        from_version: u64,
        mut f: impl FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<usize> {
        let mut n = 0;
        self.visit_stream_events(stream, from_version, 0, &mut |e| {
            n += 1;
            f(e)
        })?;
        Ok(n)
    }

    fn visit_stream_events(
        &self,
        stream: &str,
        from_version: u64,
        min_position: u64,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<()> {
        self.check_open()?;
        batch::check_stream_id(stream)?;
        let partition = self.partition_of(stream);
        let subject = self.subject(partition, stream);
        let known = self.last.lock().get(stream).map_or(0, |l| l.seq);
        self.visit_messages(partition, min_position + 1, &subject, known, usize::MAX, &mut |d| {
            if d.version < from_version {
                return Ok(ControlFlow::Continue(()));
            }
            Ok(f(&d.view(stream)))
        })?;
        Ok(())
    }

    pub(crate) fn read_stream_backward(
        &self,
        stream: &str,
        from_version: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        // JetStream reads a subject forwards only: read it all, and turn it round.
        let mut all = self.read_stream(stream, 0, usize::MAX)?;
        let from = from_version.unwrap_or(u64::MAX);
        all.retain(|e| e.version <= from);
        all.reverse();
        all.truncate(max_count);
        Ok(all)
    }

    pub(crate) fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        self.check_open()?;
        batch::check_stream_id(stream)?;
        Ok(self.last_of(self.partition_of(stream), stream)?.map(|l| l.version))
    }

    pub(crate) fn read_partition(
        &self,
        partition: u32,
        from_position: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        Log::read_partition(self, partition, from_position, max_count)
    }

    pub(crate) fn scan_partition(
        &self,
        partition: u32,
        from_position: u64,
        max_count: usize,
        mut f: impl FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<usize> {
        self.scan(partition, from_position, max_count, &mut f)
    }

    fn scan(
        &self,
        partition: u32,
        from: u64,
        max: usize,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<usize> {
        self.check_partition(partition)?;
        let wildcard = format!("{}.p{partition}.>", self.prefix);
        let known = self.known.get(partition as usize).map_or(0, |k| k.load(Ordering::Acquire));
        let mut n = 0;
        self.visit_messages(partition, from + 1, &wildcard, known, max, &mut |d| {
            let token = d.subject.rsplit('.').next().unwrap_or_default();
            let stream = subject::unescape(token)
                .ok_or_else(|| Error::Remote { cause: format!("subject {:?} is not a strata stream's", d.subject) })?;
            n += 1;
            Ok(f(&d.view(&stream)))
        })?;
        Ok(n)
    }

    pub(crate) fn stream_count(&self) -> Result<u64> {
        let mut n = 0;
        for p in 0..self.partitions {
            n += self.partition_streams(p)?.len() as u64;
        }
        Ok(n)
    }

    pub(crate) fn partition_streams(&self, p: u32) -> Result<Vec<String>> {
        self.check_partition(p)?;
        let name = stream_name(&self.prefix, p);
        let filter = format!("{}.p{p}.>", self.prefix);
        let subjects = self.retrying(&format!("listing the subjects of {name}"), || async {
            let s = self.js.get_stream_no_info(&name).await.map_err(|e| e.to_string())?;
            let mut info = s.info_with_subjects(&filter).await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            while let Some(next) = info.next().await {
                out.push(next.map_err(|e| e.to_string())?.0);
            }
            Ok(out)
        })?;
        let mut ids: Vec<String> =
            subjects.iter().filter_map(|s| s.rsplit('.').next().and_then(subject::unescape)).collect();
        ids.sort();
        Ok(ids)
    }

    pub(crate) fn copied_until(&self, partition: u32) -> Result<u64> {
        self.check_partition(partition)?;
        Ok(0)
    }

    pub(crate) fn cutover_heads(&self, partition: u32) -> Result<Vec<u64>> {
        self.check_partition(partition)?;
        Ok(Vec::new())
    }

    pub(crate) fn head(&self, partition: u32) -> Result<u64> {
        Ok(self.heads(partition)?.head)
    }

    pub(crate) fn poisoned(&self, partition: u32) -> Result<Option<String>> {
        self.check_partition(partition)?;
        Ok(None)
    }

    pub(crate) fn recovery_report(&self) -> Vec<RecoveryAction> {
        Vec::new()
    }

    pub(crate) fn flush_snapshots(&self) -> Result<()> {
        self.wait_snapshots();
        Ok(())
    }

    pub(crate) fn snapshot_stats(&self) -> SnapshotStats {
        let c = &self.counters;
        SnapshotStats {
            written: c.written.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            used: c.used.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
            ..SnapshotStats::default()
        }
    }

    fn wait_snapshots(&self) {
        let mut n = self.snapshot_writes.n.lock();
        while *n > 0 {
            self.snapshot_writes.done.wait(&mut n);
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        // Without waiting: a store may be dropped on a thread of the caller's own runtime,
        // where blocking on ours would panic. What was queued is already acknowledged or
        // failed; snapshot writes still in flight are dropped (`close` waits for them).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The name of partition `n`'s JetStream stream.
fn stream_name(prefix: &str, n: u32) -> String {
    format!("{prefix}_P{n}")
}

fn nanos(t: time::OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos()).unwrap_or(0)
}

impl Log for Remote {
    fn partition_count(&self) -> u32 {
        self.partitions
    }

    fn partition_of(&self, stream: &str) -> u32 {
        Remote::partition_of(self, stream)
    }

    fn append(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<AppendResult> {
        self.do_append(stream, expected, events)
    }

    fn visit_stream(
        &self,
        stream: &str,
        from_version: u64,
        min_position: u64,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<()> {
        self.visit_stream_events(stream, from_version, min_position, f)
    }

    fn scan_partition(
        &self,
        partition: u32,
        from: u64,
        max: usize,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<usize> {
        self.scan(partition, from, max, f)
    }

    fn scan_streams(
        &self,
        partition: u32,
        from: u64,
        end: u64,
        max: usize,
        _select: Select<'_>,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<(usize, u64)> {
        // No index of streams to skip by here: every event in range is handed to `f`.
        let mut next = from;
        let mut broke = false;
        let span = usize::try_from(end.saturating_sub(from)).unwrap_or(usize::MAX).min(max);
        let n = self.scan(partition, from, span, &mut |e| {
            next = e.position + 1;
            let r = f(e);
            broke = r.is_break();
            r
        })?;
        if !broke && n < span {
            next = end;
        }
        Ok((n, next))
    }

    fn heads(&self, partition: u32) -> Result<Heads> {
        self.check_partition(partition)?;
        let h = self.fetch_heads(partition)?;
        self.note_known(partition, h.head);
        Ok(h)
    }

    fn head_signal(&self) -> &HeadSignal {
        &self.signal
    }

    fn origin(&self, _partition: u32) -> Option<Origin> {
        None
    }

    fn is_deleted(&self, _stream: &str) -> bool {
        false
    }

    fn visibility(&self, _stream: &str) -> Result<Visible> {
        Ok(Visible::ALL)
    }

    fn durable_visibility(&self, _stream: &str) -> Result<Visible> {
        Ok(Visible::ALL)
    }

    fn hides_any(&self) -> bool {
        false
    }

    fn latest_snapshot(&self, stream: &str) -> std::result::Result<Option<Stored>, String> {
        let key = subject::escape(stream);
        let entry = self
            .block(async { tokio::time::timeout(self.timeout, self.snapshots.entry(key)).await })
            .map_err(|_| "reading the snapshot bucket timed out".to_string())?
            .map_err(|e| format!("reading the snapshot bucket: {e}"))?;
        let Some(entry) = entry else { return Ok(None) };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let rec = snap_format::decode_record(&entry.value)?;
        if rec.stream != stream {
            return Err(format!("the snapshot under {stream:?}'s key is {:?}'s", rec.stream));
        }
        Ok(Some(Stored { meta: rec.meta, state: rec.state.to_vec() }))
    }

    fn queue_snapshot(&self, snapshot: Pending, _wait: bool) -> Result<bool> {
        self.check_open()?;
        let store = self.snapshots.clone();
        let counters = self.counters.clone();
        let in_flight = self.snapshot_writes.clone();
        *in_flight.n.lock() += 1;
        let timeout = self.timeout;
        self.runtime().spawn(async move {
            let ok =
                tokio::time::timeout(timeout * 3, write_snapshot(&store, &snapshot)).await.is_ok_and(|r| r.is_ok());
            let counter = if ok { &counters.written } else { &counters.failed };
            counter.fetch_add(1, Ordering::Relaxed);
            let mut n = in_flight.n.lock();
            *n -= 1;
            in_flight.done.notify_all();
        });
        Ok(true)
    }

    fn snapshot_counters(&self) -> &Counters {
        &self.counters
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self) -> &Io {
        &self.io
    }

    fn report(&self) -> &Report {
        &self.report
    }

    fn shared(&self) -> Option<&dyn super::seam::Shared> {
        Some(self)
    }
}

/// Writes `p` unless the bucket holds a snapshot it must not replace (the sidecar's rule: a
/// newer version, unless `p` replaces whatever is there), by compare-and-set on the entry's
/// revision, again on a race.
async fn write_snapshot(store: &kv::Store, p: &Pending) -> std::result::Result<(), String> {
    let key = subject::escape(&p.stream);
    let value: bytes::Bytes = snap_format::encode_record(&p.stream, &p.meta, &p.state).into();
    for _ in 0..8 {
        let current = store.entry(key.clone()).await.map_err(|e| e.to_string())?;
        let result = match current.filter(|e| e.operation == kv::Operation::Put) {
            None => store.create(&key, value.clone()).await.map(|_| ()).map_err(|e| e.to_string()),
            Some(e) => {
                if let Ok(rec) = snap_format::decode_record(&e.value)
                    && !p.meta.replaces
                    && rec.meta.version > p.meta.version
                {
                    return Ok(());
                }
                store.update(&key, value.clone(), e.revision).await.map(|_| ()).map_err(|e| e.to_string())
            }
        };
        if result.is_ok() {
            return Ok(());
        }
    }
    Err("the snapshot's entry kept changing".into())
}
