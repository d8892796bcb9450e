//! `strata load`, the end-to-end load: many concurrent clients sending commands through the
//! back-pressured command bus to bank-account aggregates (loaded from snapshots), with two
//! projections following (one read model served through a cache), live progress and a final
//! report.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use series::{Sample, Series};
use strata::bus::{BusOptions, BusStats};
use strata::cache::CacheStats;
use strata::compaction::CompactionOptions;
use strata::projection::{Batch, BatchError, HandlerError, ProjectionOptions, RebuildReport};
use strata::routing::stream_hash;
use strata::{
    Aggregate, ApplyError, Command as BusCommand, CommandBus, Durability, Error, EventData, EventId, Metrics, Options,
    Projection, ProjectionEngine, RecordedEvent, Store, ViewCache,
};

#[cfg(feature = "report")]
mod report;
mod series;

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum DurabilityArg {
    /// Acknowledge after fdatasync.
    Sync,
    /// Acknowledge after write; fdatasync every 5 ms.
    Buffered,
}

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Directory of the store (created; must not hold a store). Default: a new directory
    /// under ./strata-load/.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Total events to append.
    #[arg(long, default_value_t = 4_000_000)]
    events: u64,
    /// Number of streams (aggregates), spread over the writers.
    #[arg(long, default_value_t = 10_000)]
    streams: u64,
    /// Concurrent writer threads (clients).
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Partitions of the new store.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Events per command (one atomic append).
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Stop after this many seconds even if not all events are written.
    #[arg(long)]
    duration: Option<f64>,
    /// Durability of the appends.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Sync)]
    durability: DurabilityArg,
    /// Do not zero-fill segments ahead of the writer (see `Options::preallocate`).
    #[arg(long)]
    no_preallocate: bool,
    /// Segment size of the new store, in MiB: smaller segments seal (and so get archived)
    /// sooner.
    #[arg(long, default_value_t = 16)]
    segment_mib: u64,
    /// Seconds between background compactions (sealed segments whose accounts are all
    /// snapshotted past them become archives); 0 turns compaction off.
    #[arg(long, default_value_t = 2.0)]
    compact_every: f64,
    /// Share of the accounts in use at a time (0 to 1): the window of active accounts moves
    /// through all of them over the run, so the early ones go quiet (cold), as customers do.
    /// 1: every account all the time.
    #[arg(long, default_value_t = 0.125)]
    active_share: f64,
    /// Seconds after which events are old enough to archive: a sealed segment is archived once
    /// its newest event is this old and each of its accounts is snapshotted past it or cold (no
    /// command within this time either: an account that never reaches its 100th event does not
    /// keep its segments hot).
    #[arg(long, default_value_t = 2.0)]
    retention: f64,
    /// Keep at most this many MiB of sealed segments per partition hot, archiving the oldest
    /// whatever the policy says (0, the default: no bound).
    #[arg(long, default_value_t = 0)]
    hot_mib: u64,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also write DIR/index.html: a self-contained page of SVG plots of the run (events/s,
    /// command latency percentiles and histogram, projection lag against its SLA, cache hit
    /// ratio, compaction and archive bytes, sampled once per interval) under its parameters
    /// and this report. Needs a build with `--features report`.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Serve the store's metrics (Prometheus text, format 0.0.4) on `GET /metrics` at this
    /// address while the load runs, e.g. 127.0.0.1:9464; port 0 picks a free one. The
    /// address is printed on stderr at the start (`metrics: http://ADDR/metrics`). Loopback
    /// addresses only, unless --metrics-public.
    #[arg(long, value_name = "IP:PORT")]
    metrics_addr: Option<SocketAddr>,
    /// Allow a --metrics-addr that is not loopback (e.g. 0.0.0.0:9464): the metrics are then
    /// served to whoever can reach it, without authentication.
    #[arg(long, requires = "metrics_addr")]
    metrics_public: bool,
    /// Where the events go: `local`, a new directory (the default), or `jetstream`, a new
    /// store on a NATS JetStream cluster (a build with `--features jetstream`); --dir then
    /// holds only the projections' checkpoints.
    #[arg(long, value_enum, default_value_t = BackendArg::Local)]
    backend: BackendArg,
    /// The cluster's servers, comma-separated (with `--backend jetstream`).
    #[arg(long, value_delimiter = ',', default_value = "nats://127.0.0.1:4222")]
    servers: Vec<String>,
    /// Replicas of each partition's stream (with `--backend jetstream`).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
}

/// `load --backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BackendArg {
    Local,
    Jetstream,
}

fn default_dir() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    PathBuf::from("strata-load").join(format!("run-{secs}"))
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// A bank account: the aggregate the load's commands address.
#[derive(Default)]
struct Account {
    balance: i64,
    operations: u64,
}

fn amount_of(payload: &[u8]) -> i64 {
    payload.get(..8).and_then(|b| b.try_into().ok()).map_or(0, i64::from_le_bytes)
}

impl Aggregate for Account {
    const SCHEMA: u32 = 1;
    const SNAPSHOT_EVERY: u64 = 100;

    fn apply(&mut self, e: &RecordedEvent) -> Result<(), ApplyError> {
        match e.event_type.as_str() {
            "Deposited" => self.balance += amount_of(&e.payload),
            "Withdrawn" => self.balance -= amount_of(&e.payload),
            other => return Err(format!("unknown event type {other}").into()),
        }
        self.operations += 1;
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = self.balance.to_le_bytes().to_vec();
        v.extend_from_slice(&self.operations.to_le_bytes());
        v
    }

    fn decode(schema: u32, state: &[u8]) -> Option<Self> {
        if schema != 1 || state.len() != 16 {
            return None;
        }
        Some(Account {
            balance: i64::from_le_bytes(state.get(..8)?.try_into().ok()?),
            operations: u64::from_le_bytes(state.get(8..)?.try_into().ok()?),
        })
    }
}

/// `batch` deposits or withdrawals on one account; a withdrawal that would take the balance
/// under the overdraft limit is refused (a business rule: `Error::Rejected`).
struct Transact {
    /// Derived from the client and its command count: a command the bus pushes back and the
    /// client sends again keeps its id, so it is carried out at most once.
    id: EventId,
    account: String,
    amounts: Vec<i64>,
    payload: usize,
}

const OVERDRAFT_LIMIT: i64 = -5_000;

impl BusCommand for Transact {
    type Aggregate = Account;

    fn stream(&self) -> &str {
        &self.account
    }

    fn id(&self) -> Option<EventId> {
        Some(self.id)
    }

    fn decide(&self, a: &Account, _: Option<u64>) -> Result<Vec<EventData>, String> {
        let after = a.balance + self.amounts.iter().sum::<i64>();
        if after < OVERDRAFT_LIMIT {
            return Err(format!("{} would go to {after}, under the overdraft limit", self.account));
        }
        Ok(self
            .amounts
            .iter()
            .map(|&x| {
                let mut body = x.abs().to_le_bytes().to_vec();
                body.resize(self.payload.max(8), b' ');
                EventData::new(if x >= 0 { "Deposited" } else { "Withdrawn" }, body)
            })
            .collect())
    }
}

/// The balances read model: served through a `ViewCache`, invalidated as events are handled.
struct Balances {
    shards: Vec<Mutex<HashMap<String, i64>>>,
    cache: Arc<ViewCache<String, i64>>,
}

impl Balances {
    fn shard(&self, account: &str) -> &Mutex<HashMap<String, i64>> {
        &self.shards[stream_hash(account) as usize % self.shards.len()]
    }

    fn balance(&self, account: &str) -> i64 {
        self.cache
            .get_or_load(&account.to_owned(), |a| self.shard(a).lock().map_or(0, |m| m.get(a).copied().unwrap_or(0)))
    }
}

impl Projection for Balances {
    fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        let delta = if e.event_type == "Withdrawn" { -amount_of(&e.payload) } else { amount_of(&e.payload) };
        *self.shard(&e.stream_id).lock().map_err(|_| "poisoned")?.entry(e.stream_id.clone()).or_insert(0) += delta;
        self.cache.invalidate(&e.stream_id);
        Ok(())
    }
}

/// The activity projection: events by type.
#[derive(Default)]
struct Activity {
    deposits: AtomicU64,
    withdrawals: AtomicU64,
}

impl Projection for Activity {
    fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        let c = if e.event_type == "Withdrawn" { &self.withdrawals } else { &self.deposits };
        c.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn handle_batch(&self, batch: &Batch<'_>) -> Result<(), BatchError> {
        let w = batch.events.iter().filter(|e| e.event_type == "Withdrawn").count() as u64;
        self.withdrawals.fetch_add(w, Ordering::Relaxed);
        self.deposits.fetch_add(batch.events.len() as u64 - w, Ordering::Relaxed);
        Ok(())
    }
}

pub fn load(args: LoadArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.writers == 0 || args.streams == 0 || args.batch == 0 {
        return Err("writers, streams and batch must be positive".into());
    }
    if args.report.is_some() && !cfg!(feature = "report") {
        return Err(NO_REPORT.into());
    }
    // Bound before the store exists: a refused or busy address fails the load at once.
    let listener = args.metrics_addr.map(|a| crate::serve::bind(a, args.metrics_public)).transpose()?;
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    let store = Arc::new(open_store(&args, &dir)?);
    let (engine, balances, cache) = start_projections(&store, args.streams)?;
    let bus_options = BusOptions::default().max_in_flight(args.writers * 2).gate_on("balances");
    let bus = Arc::new(CommandBus::new(store.clone(), Some(engine.clone()), bus_options)?);
    let server = match listener {
        Some(listener) => {
            eprintln!("metrics: http://{}/metrics", listener.local_addr()?);
            let (store, engine, bus, cache) = (store.clone(), engine.clone(), bus.clone(), cache.clone());
            let render = move || {
                Metrics::collect(&store, Some(&engine), Some(&bus), &[("balances", cache.stats())]).prometheus()
            };
            Some(crate::serve::serve(listener, render))
        }
        None => None,
    };

    let shared = Arc::new(Shared {
        commands: args.events.div_ceil(args.batch as u64),
        next_command: AtomicU64::new(0),
        written: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        intervals: match args.report {
            Some(_) => (0..args.writers).map(|_| Mutex::new(series::interval_histogram())).collect(),
            None => Vec::new(),
        },
        started: Instant::now(),
        duration: args.duration.map(|d| Duration::from_secs_f64(d.max(0.0))),
    });
    let work = Work {
        writers: args.writers as u64,
        streams: args.streams,
        batch: args.batch,
        payload: args.payload,
        active_share: args.active_share.clamp(0.0, 1.0),
    };
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(args.events) };
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} events ({per_sec}) {msg}")?);
    let start = Instant::now();
    let clients: Vec<_> = (0..args.writers)
        .map(|w| {
            let (bus, shared) = (bus.clone(), shared.clone());
            std::thread::spawn(move || client(w as u64, work, &bus, &shared))
        })
        .collect();
    let reader = spawn_reader(balances.clone(), shared.clone(), args.streams);
    let watcher = Watch {
        shared: &shared,
        store: &store,
        engine: &engine,
        cache: &cache,
        bar: &bar,
        start,
        deadline: args.duration.map(Duration::from_secs_f64),
    };
    let mut series = args.report.as_ref().map(|_| Series::new());
    let lag = watcher.run(&clients, series.as_mut())?;
    for h in clients {
        h.join().map_err(|_| "a writer thread panicked")??;
    }
    let elapsed = start.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let (rebuild, rebuilt) = catch_up_and_rebuild(&engine)?;
    bar.finish_and_clear();

    let events = shared.written.load(Ordering::Relaxed);
    check_acknowledged(&store, events, &rebuilt)?;
    store.flush_snapshots()?;
    if args.compact_every > 0.0 && args.backend == BackendArg::Local {
        store.compact()?;
    }
    let mut report = Report {
        dir: dir.clone(),
        events,
        elapsed,
        latency: shared.latency.lock().map_err(|_| "histogram lock")?.clone(),
        metrics: Metrics::collect(&store, Some(&engine), Some(&bus), &[("balances", cache.stats())]),
        bus: bus.stats(),
        cache: cache.stats(),
        lag,
        rebuild,
        archives: match ArchiveTotals::of(&store) {
            Err(Error::Unsupported { .. }) => ArchiveTotals::default(),
            other => other?,
        },
        bytes: 0,
    };
    // The endpoint holds the store, engine and bus: it ends before they are closed.
    if let Some(server) = server {
        server.stop();
    }
    drop(bus);
    Arc::try_unwrap(engine).map_err(|_| "engine still shared")?.stop()?;
    drop(balances);
    Arc::try_unwrap(store).map_err(|_| "store still shared")?.close()?;
    report.bytes = dir_bytes(&dir);
    if args.json {
        report.print_json(&args);
    } else {
        print!("{}", report.text(&args));
    }
    if let (Some(out), Some(series)) = (&args.report, &series) {
        let page = write_report(out, &args, &report, series)?;
        eprintln!("report: {}", page.display());
    }
    Ok(())
}

const NO_REPORT: &str =
    "--report needs the report feature: build with `cargo build --release --features report` (plots by plotters)";

/// Writes `out/index.html`; returns its path.
#[cfg(feature = "report")]
fn write_report(
    out: &Path,
    args: &LoadArgs,
    report: &Report,
    series: &Series,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    report::write(out, args, report, series)
}

/// Without the feature, no page (refused before the load starts).
#[cfg(not(feature = "report"))]
fn write_report(_: &Path, _: &LoadArgs, _: &Report, _: &Series) -> Result<PathBuf, Box<dyn std::error::Error>> {
    Err(NO_REPORT.into())
}

/// A new store for the run: a directory, or a store of a fresh name on the cluster.
fn open_store(args: &LoadArgs, dir: &Path) -> Result<Store, Box<dyn std::error::Error>> {
    match args.backend {
        BackendArg::Local => Ok(Store::open(dir, store_options(args))?),
        #[cfg(feature = "jetstream")]
        BackendArg::Jetstream => {
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
            let options = strata::JetStreamOptions::new(args.servers.iter().cloned(), format!("load{stamp}"))
                .replicas(args.replicas)
                .partitions(args.partitions)
                .state_dir(dir);
            Ok(Store::connect(options)?)
        }
        #[cfg(not(feature = "jetstream"))]
        BackendArg::Jetstream => {
            Err("--backend jetstream needs the jetstream feature: `cargo build --release --features jetstream`".into())
        }
    }
}

/// The new store's options, from the command line.
fn store_options(args: &LoadArgs) -> Options {
    let durability = match args.durability {
        DurabilityArg::Sync => Durability::Sync,
        DurabilityArg::Buffered => Durability::Buffered { sync_interval: Duration::from_millis(5) },
    };
    Options::default()
        .create_if_missing(true)
        .error_if_exists(true)
        .partitions(args.partitions)
        .durability(durability)
        .preallocate(!args.no_preallocate)
        .segment_bytes(args.segment_mib.max(1) << 20)
        .compaction(
            CompactionOptions::default()
                .retention(Duration::from_secs_f64(args.retention.max(0.0)))
                .max_hot_bytes((args.hot_mib > 0).then_some(args.hot_mib << 20))
                .interval((args.compact_every > 0.0).then(|| Duration::from_secs_f64(args.compact_every))),
        )
}

/// The lag the balances projection may reach before the bus holds commands back.
const BALANCES_SLA: Duration = Duration::from_secs(5);

type Projections = (Arc<ProjectionEngine>, Arc<Balances>, Arc<ViewCache<String, i64>>);

/// Two projections on a worker pool: the balances read model (critical: commands wait while it
/// lags past its SLA), served through a cache, and an activity counter.
fn start_projections(store: &Arc<Store>, streams: u64) -> Result<Projections, Error> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let engine = Arc::new(ProjectionEngine::new(store.clone(), cores));
    let cache = Arc::new(ViewCache::new(streams as usize / 4 + 1));
    let balances =
        Arc::new(Balances { shards: (0..64).map(|_| Mutex::new(HashMap::new())).collect(), cache: cache.clone() });
    // Both are in-memory read models this process serves from, so each process keeps its own
    // over every partition (on JetStream too; the same on an embedded store).
    engine.register("balances", balances.clone(), ProjectionOptions::default().sla(BALANCES_SLA).per_process())?;
    engine.register("activity", Arc::new(Activity::default()), ProjectionOptions::default().per_process())?;
    Ok((engine, balances, cache))
}

/// What the clients share: how many commands to send and the next one's number, the events
/// acknowledged, the stop flag and the command latencies (µs): of the whole run, merged by
/// each client at its end, and (with `--report`) of the current interval, one histogram per
/// client, which only that client and the sampler lock.
struct Shared {
    commands: u64,
    next_command: AtomicU64,
    written: AtomicU64,
    stop: AtomicBool,
    latency: Mutex<Histogram<u64>>,
    intervals: Vec<Mutex<Histogram<u32>>>,
    /// When the clients started, and the run's time limit (which moves the active accounts
    /// when it, not the command count, ends the run).
    started: Instant,
    duration: Option<Duration>,
}

/// The shape of the clients' work.
#[derive(Clone, Copy)]
struct Work {
    writers: u64,
    streams: u64,
    batch: usize,
    payload: usize,
    active_share: f64,
}

/// Client `w`: it works on accounts `w`, `w + writers`, ...; each command loads its account
/// (snapshot + events after it), decides, and appends with the loaded version through the
/// bus, waiting as told when the bus pushes back.
fn client(w: u64, work: Work, bus: &CommandBus, shared: &Shared) -> Result<(), Error> {
    let owned: Vec<u64> = (w..work.streams).step_by(work.writers as usize).collect();
    let mut rng = fastrand::Rng::with_seed(w);
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let interval = shared.intervals.get(w as usize);
    let mut sent = 0u64;
    // The accounts in use: a window of `active_share` of them, moving from the first to the
    // last as the run goes on (by commands sent, or by time under a duration limit).
    let window = ((owned.len() as f64 * work.active_share).ceil() as usize).clamp(1, owned.len().max(1));
    while !owned.is_empty() && !shared.stop.load(Ordering::Relaxed) {
        // Taken only by a client that will send it, so the run sends exactly `commands`.
        let n = shared.next_command.fetch_add(1, Ordering::Relaxed);
        if n >= shared.commands {
            break;
        }
        let by_count = n as f64 / shared.commands.max(1) as f64;
        let by_time =
            shared.duration.map_or(0.0, |d| shared.started.elapsed().as_secs_f64() / d.as_secs_f64().max(1e-9));
        let progress = by_count.max(by_time).min(1.0);
        let start = ((owned.len() - window) as f64 * progress) as usize;
        let k = start + rng.usize(..window);
        let amounts = (0..work.batch).map(|_| rng.i64(-120..=100)).collect();
        sent += 1;
        let id = EventId::from_u128(u128::from(w) << 64 | u128::from(sent));
        let cmd = Transact { id, account: format!("account-{}", owned[k]), amounts, payload: work.payload };
        let t = Instant::now();
        loop {
            match bus.execute(&cmd) {
                Ok(r) => {
                    let micros = t.elapsed().as_micros().max(1) as u64;
                    let _ = local.record(micros);
                    if let Some(h) = interval {
                        let _ = h.lock().expect("histogram lock").record(micros);
                    }
                    if r.is_some() {
                        shared.written.fetch_add(work.batch as u64, Ordering::Relaxed);
                    }
                    break;
                }
                Err(Error::Overloaded { .. }) => std::thread::sleep(Duration::from_millis(1)),
                Err(Error::RateLimited { retry_after } | Error::Lagging { retry_after, .. }) => {
                    std::thread::sleep(retry_after)
                }
                Err(Error::Rejected(_)) => break,
                Err(e) => return Err(e),
            }
        }
    }
    shared.latency.lock().expect("histogram lock").add(&local).expect("same bounds");
    Ok(())
}

/// A reader serving balances from the read model, through the cache, until the load stops.
/// Reads favour hot accounts: a few are read far more than the rest.
fn spawn_reader(balances: Arc<Balances>, shared: Arc<Shared>, streams: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = fastrand::Rng::with_seed(7);
        while !shared.stop.load(Ordering::Relaxed) {
            for _ in 0..100 {
                let hot = rng.u64(..streams.min(200));
                let account = if rng.bool() { hot } else { rng.u64(..streams) };
                std::hint::black_box(balances.balance(&format!("account-{account}")));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    })
}

/// The largest projection lag seen while the load ran.
#[derive(Default)]
struct Lag {
    time: Duration,
    events: u64,
}

/// What the watching thread looks at.
struct Watch<'a> {
    shared: &'a Shared,
    store: &'a Store,
    engine: &'a ProjectionEngine,
    cache: &'a ViewCache<String, i64>,
    bar: &'a ProgressBar,
    start: Instant,
    deadline: Option<Duration>,
}

/// The projections whose lag is watched (and plotted), in this order.
const PROJECTIONS: [&str; 2] = ["balances", "activity"];

impl Watch<'_> {
    /// Until every client is done: shows progress and the projections' lag every 100 ms,
    /// stops the clients at the deadline and, given a series, samples into it at its
    /// interval (and once more at the end).
    fn run<T>(&self, clients: &[std::thread::JoinHandle<T>], mut series: Option<&mut Series>) -> Result<Lag, Error> {
        const POLL: Duration = Duration::from_millis(100);
        let mut lag = Lag::default();
        // The largest lag of each projection since the last sample.
        let mut interval_lag = [Duration::ZERO; 2];
        let mut next_sample = self.start + series.as_ref().map_or(POLL, |s| s.tick);
        while clients.iter().any(|h| !h.is_finished()) {
            let now = Instant::now();
            let wake = if series.is_some() { next_sample.min(now + POLL) } else { now + POLL };
            std::thread::sleep(wake.saturating_duration_since(now));
            let bar = self.bar;
            bar.set_position(self.shared.written.load(Ordering::Relaxed).min(bar.length().unwrap_or(u64::MAX)));
            for (name, seen) in PROJECTIONS.iter().zip(&mut interval_lag) {
                let st = self.engine.status(name)?;
                lag.time = lag.time.max(st.max_lag);
                lag.events = lag.events.max(st.max_lag_events);
                *seen = (*seen).max(st.max_lag);
            }
            let s = self.store.write_stats();
            bar.set_message(format!(
                "{:.1} appends/group, projection lag {} events",
                s.appends_per_group(),
                lag.events
            ));
            if let Some(series) = series.as_deref_mut()
                && Instant::now() >= next_sample
            {
                series.push(self.sample(std::mem::take(&mut interval_lag)));
                next_sample = self.start + series.samples.last().map_or(Duration::ZERO, |s| s.at) + series.tick;
            }
            if self.deadline.is_some_and(|d| self.start.elapsed() >= d) {
                self.shared.stop.store(true, Ordering::Relaxed);
            }
        }
        if let Some(series) = series {
            series.push(self.sample(interval_lag));
        }
        Ok(lag)
    }

    /// The load now; takes (and empties) the clients' interval histograms.
    fn sample(&self, lag: [Duration; 2]) -> Sample {
        let mut latency = series::interval_histogram();
        for h in &self.shared.intervals {
            let mut h = h.lock().expect("histogram lock");
            latency.add(&*h).expect("same bounds");
            h.reset();
        }
        let (cache, compaction) = (self.cache.stats(), self.store.compaction_stats());
        Sample {
            at: self.start.elapsed(),
            events: self.shared.written.load(Ordering::Relaxed),
            latency,
            lag,
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            compacted_bytes: compaction.bytes_in,
            archive_bytes: compaction.bytes_out,
        }
    }
}

/// Waits for both projections to catch up, then times a full parallel rebuild of the activity
/// projection.
fn catch_up_and_rebuild(
    engine: &ProjectionEngine,
) -> Result<(RebuildReport, Arc<Activity>), Box<dyn std::error::Error>> {
    for name in ["balances", "activity"] {
        if !engine.wait_caught_up(name, Duration::from_secs(120))? {
            return Err(format!("projection {name} did not catch up").into());
        }
    }
    let rebuilt = Arc::new(Activity::default());
    let report = engine.rebuild("activity", rebuilt.clone())?;
    Ok((report, rebuilt))
}

/// Checks what was acknowledged against what the partitions hold, and against the rebuilt
/// projection.
fn check_acknowledged(store: &Store, events: u64, rebuilt: &Activity) -> Result<(), Box<dyn std::error::Error>> {
    let heads: u64 = (0..store.partition_count()).map(|p| store.head(p)).sum::<Result<u64, _>>()?;
    if heads != events {
        return Err(format!("{events} events acknowledged but the partitions hold {heads}").into());
    }
    let counted = rebuilt.deposits.load(Ordering::Relaxed) + rebuilt.withdrawals.load(Ordering::Relaxed);
    if counted < heads {
        return Err(format!("the rebuilt activity projection counted {counted} of {heads} events").into());
    }
    Ok(())
}

/// The store's archives, summed over its partitions.
#[derive(Default)]
struct ArchiveTotals {
    archives: u64,
    events: u64,
    /// Bytes of the batches they hold.
    batch_bytes: u64,
    /// Bytes of the archive files.
    file_bytes: u64,
    /// Archives by why they were made (FORMAT.md §14.1).
    reasons: std::collections::BTreeMap<&'static str, u64>,
}

impl ArchiveTotals {
    fn of(store: &Store) -> Result<ArchiveTotals, Error> {
        let storage = store.storage()?;
        let mut reasons = std::collections::BTreeMap::new();
        for (reason, n) in storage.iter().flat_map(|p| &p.archives_by_reason) {
            *reasons.entry(reason_name(*reason)).or_default() += n;
        }
        Ok(ArchiveTotals {
            reasons,
            archives: storage.iter().map(|p| p.archives).sum(),
            events: storage.iter().map(|p| p.archived_events).sum(),
            batch_bytes: storage.iter().map(|p| p.archived_bytes).sum(),
            file_bytes: storage.iter().map(|p| p.archive_bytes).sum(),
        })
    }

    /// Batch bytes per archive byte; `None` without archives.
    fn ratio(&self) -> Option<f64> {
        (self.file_bytes > 0).then(|| self.batch_bytes as f64 / self.file_bytes as f64)
    }
}

/// The short name of an archive's reason, for the report.
fn reason_name(reason: strata::compaction::Reason) -> &'static str {
    use strata::compaction::Reason;
    match reason {
        Reason::RetainedAndSnapshotted => "snapshotted",
        Reason::RetainedCold => "cold",
        Reason::Retained => "aged",
        Reason::HotBytes => "hot_bytes",
        Reason::Erasure => "erasure",
        Reason::Forced => "forced",
        _ => "other",
    }
}

/// What a finished load measured.
struct Report {
    dir: PathBuf,
    events: u64,
    elapsed: Duration,
    /// Command latencies in µs (load + decide + durable append).
    latency: Histogram<u64>,
    metrics: Metrics,
    bus: BusStats,
    cache: CacheStats,
    lag: Lag,
    rebuild: RebuildReport,
    archives: ArchiveTotals,
    bytes: u64,
}

impl Report {
    fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    /// Command latency at quantile `q`, in ms.
    fn latency_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    fn max_latency_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }

    /// The upper bound of the append-latency bucket holding the 99th percentile, in ms; `None`
    /// when the store keeps no such histogram (a JetStream store).
    fn append_p99_ms(&self) -> Option<f64> {
        self.metrics.append_latency.quantile_bound(0.99).map(|b| b as f64 / 1000.0)
    }

    fn print_json(&self, args: &LoadArgs) {
        let (w, b, s, a) = (&self.metrics.write, &self.bus, &self.metrics.snapshots, &self.archives);
        let ratio = a.ratio().map_or("null".to_string(), |r| format!("{r:.2}"));
        println!(
            "{{\"dir\":{:?},\"events\":{},\"commands\":{},\"seconds\":{:.3},\"events_per_sec\":{:.0},\
\"command_latency_ms\":{{\"p50\":{:.3},\"p99\":{:.3},\"p999\":{:.3},\"max\":{:.3}}},\"append_p99_bucket_ms\":{},\
\"appends_per_group\":{:.2},\"fsyncs\":{},\"max_projection_lag_ms\":{:.1},\"max_projection_lag_events\":{},\
\"rebuild_seconds\":{:.3},\"rebuild_events\":{},\"cache_hit_ratio\":{:.4},\"rejected\":{{\"overloaded\":{},\"rate_limited\":{},\
\"lagging\":{},\"business\":{}}},\"snapshots_written\":{},\"snapshot_loads\":{},\"bytes_on_disk\":{},\"archive_ratio\":{ratio},\
\"archives\":{},\"archive_reasons\":{{{}}},\"archived_events\":{},\"writers\":{},\"partitions\":{},\"payload\":{},\"batch\":{}}}",
            self.dir.display().to_string(),
            self.events,
            b.accepted,
            self.elapsed.as_secs_f64(),
            self.events_per_sec(),
            self.latency_ms(0.5),
            self.latency_ms(0.99),
            self.latency_ms(0.999),
            self.max_latency_ms(),
            self.append_p99_ms().map_or("null".to_string(), |v| format!("{v:.3}")),
            w.appends_per_group(),
            w.syncs,
            self.lag.time.as_secs_f64() * 1000.0,
            self.lag.events,
            self.rebuild.duration.as_secs_f64(),
            self.rebuild.events,
            self.cache.hit_ratio(),
            b.overloaded,
            b.rate_limited,
            b.lagging,
            b.rejected,
            s.written,
            s.used,
            self.bytes,
            a.archives,
            a.reasons.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(","),
            a.events,
            args.writers,
            args.partitions,
            args.payload,
            args.batch
        );
    }

    /// The text report.
    fn text(&self, args: &LoadArgs) -> String {
        let mut t = String::new();
        let (w, b, s, a) = (&self.metrics.write, &self.bus, &self.metrics.snapshots, &self.archives);
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        let _ = writeln!(
            t,
            "strata load: {} clients, {} partitions, {} accounts, commands of {} events of {} bytes",
            args.writers, args.partitions, args.streams, args.batch, args.payload
        );
        let _ = writeln!(t, "  store                {}", self.dir.display());
        let _ = writeln!(
            t,
            "  durable events       {} in {:.2} s = {:.0} events/s ({} commands)",
            self.events,
            self.elapsed.as_secs_f64(),
            self.events_per_sec(),
            b.accepted
        );
        let _ = writeln!(
            t,
            "  command latency      p50 {:.3} ms   p99 {:.3} ms   p99.9 {:.3} ms   max {:.3} ms  (load + decide + durable append)",
            self.latency_ms(0.5),
            self.latency_ms(0.99),
            self.latency_ms(0.999),
            self.max_latency_ms()
        );
        match self.append_p99_ms() {
            Some(v) => {
                let _ = writeln!(t, "  append latency       p99 <= {v:.3} ms (histogram bucket)");
            }
            None => {
                let _ = writeln!(t, "  append latency       (not kept by this backend)");
            }
        }
        let _ = writeln!(
            t,
            "  group commits        {} ({:.1} appends each), {} fdatasync",
            w.group_commits,
            w.appends_per_group(),
            w.syncs
        );
        let _ = writeln!(t, "  snapshots            {} written, {} loads started from one", s.written, s.used);
        let _ = writeln!(
            t,
            "  projections          max lag {:.1} ms ({} events); activity rebuilt in {:.2} s ({} events)",
            self.lag.time.as_secs_f64() * 1000.0,
            self.lag.events,
            self.rebuild.duration.as_secs_f64(),
            self.rebuild.events
        );
        let _ = writeln!(
            t,
            "  read model cache     hit ratio {:.1}% ({} hits, {} misses)",
            self.cache.hit_ratio() * 100.0,
            self.cache.hits,
            self.cache.misses
        );
        let _ = writeln!(
            t,
            "  rejections           overloaded {}, rate limited {}, lagging {}, business rule {}",
            b.overloaded, b.rate_limited, b.lagging, b.rejected
        );
        let _ = writeln!(
            t,
            "  bytes on disk        {:.1} MiB ({:.0} bytes per event)",
            mib(self.bytes),
            self.bytes as f64 / self.events.max(1) as f64
        );
        let _ = match a.ratio() {
            Some(ratio) => writeln!(
                t,
                "  archives             {} holding {} events: {:.1} MiB of batches in {:.1} MiB, ratio {ratio:.2}; by \
                 reason: {}",
                a.archives,
                a.events,
                mib(a.batch_bytes),
                mib(a.file_bytes),
                a.reasons.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
            ),
            None => writeln!(t, "  archives             none (no sealed segment was snapshotted past yet)"),
        };
        t
    }
}
