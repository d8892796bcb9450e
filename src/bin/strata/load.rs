//! `strata load`, the end-to-end load: many concurrent clients sending commands through the
//! back-pressured command bus to bank-account aggregates (loaded from snapshots), with two
//! projections following (one read model served through a cache), live progress and a final
//! report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use strata::bus::BusOptions;
use strata::compaction::CompactionOptions;
use strata::projection::{Batch, BatchError, HandlerError, ProjectionOptions};
use strata::routing::stream_hash;
use strata::{
    Aggregate, ApplyError, Command as BusCommand, CommandBus, Durability, Error, EventData, Metrics, Options,
    Projection, ProjectionEngine, RecordedEvent, Store, ViewCache,
};

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
    /// Keep at most this many MiB of sealed segments per partition hot: older ones are
    /// archived even if some account in them was never snapshotted (a rarely used account
    /// may never reach its 100th event).
    #[arg(long, default_value_t = 16)]
    hot_mib: u64,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
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
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    let durability = match args.durability {
        DurabilityArg::Sync => Durability::Sync,
        DurabilityArg::Buffered => Durability::Buffered { sync_interval: Duration::from_millis(5) },
    };
    let opts = Options::default()
        .create_if_missing(true)
        .error_if_exists(true)
        .partitions(args.partitions)
        .durability(durability)
        .preallocate(!args.no_preallocate)
        .segment_bytes(args.segment_mib.max(1) << 20)
        .compaction(
            CompactionOptions::default()
                .retention(Duration::ZERO)
                .max_hot_bytes(Some(args.hot_mib << 20))
                .interval((args.compact_every > 0.0).then(|| Duration::from_secs_f64(args.compact_every))),
        );
    let store = Arc::new(Store::open(&dir, opts)?);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Two projections on a worker pool: the balances read model (critical: commands wait
    // while it lags past its SLA), served through a cache, and an activity counter.
    let engine = Arc::new(ProjectionEngine::new(store.clone(), cores));
    let cache = Arc::new(ViewCache::new(args.streams as usize / 4 + 1));
    let balances =
        Arc::new(Balances { shards: (0..64).map(|_| Mutex::new(HashMap::new())).collect(), cache: cache.clone() });
    engine.register("balances", balances.clone(), ProjectionOptions::default().sla(Duration::from_secs(5)))?;
    engine.register("activity", Arc::new(Activity::default()), ProjectionOptions::default())?;
    let bus_options = BusOptions::default().max_in_flight(args.writers * 2).gate_on("balances");
    let bus = Arc::new(CommandBus::new(store.clone(), Some(engine.clone()), bus_options)?);

    let commands_total = args.events.div_ceil(args.batch as u64);
    let next_command = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let deadline = args.duration.map(Duration::from_secs_f64);

    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(args.events) };
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} events ({per_sec}) {msg}")?);
    let start = Instant::now();
    let handles: Vec<_> = (0..args.writers)
        .map(|w| {
            let (bus, next_command, written, stop, histogram) =
                (bus.clone(), next_command.clone(), written.clone(), stop.clone(), histogram.clone());
            let (writers, streams, batch, payload) = (args.writers as u64, args.streams, args.batch, args.payload);
            std::thread::spawn(move || -> Result<(), strata::Error> {
                // This client works on accounts w, w + writers, ...: each command loads its
                // account (snapshot + events after it), decides, and appends with the loaded
                // version through the bus.
                let owned: Vec<u64> = (w as u64..streams).step_by(writers as usize).collect();
                let mut rng = fastrand::Rng::with_seed(w as u64);
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                while !stop.load(Ordering::Relaxed) && next_command.fetch_add(1, Ordering::Relaxed) < commands_total {
                    if owned.is_empty() {
                        break;
                    }
                    let k = rng.usize(..owned.len());
                    let amounts = (0..batch).map(|_| rng.i64(-120..=100)).collect();
                    let cmd = Transact { account: format!("account-{}", owned[k]), amounts, payload };
                    let t = Instant::now();
                    loop {
                        match bus.execute(&cmd) {
                            Ok(r) => {
                                let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                                if r.is_some() {
                                    written.fetch_add(batch as u64, Ordering::Relaxed);
                                }
                                break;
                            }
                            // Back-pressure: wait as told, then try again.
                            Err(Error::Overloaded { .. }) => std::thread::sleep(Duration::from_millis(1)),
                            Err(Error::RateLimited { retry_after } | Error::Lagging { retry_after, .. }) => {
                                std::thread::sleep(retry_after)
                            }
                            Err(Error::Rejected(_)) => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                histogram.lock().expect("histogram lock").add(&local).expect("same bounds");
                Ok(())
            })
        })
        .collect();
    // A reader serving balances from the read model, through the cache.
    let reader = {
        let (balances, stop, streams) = (balances.clone(), stop.clone(), args.streams);
        std::thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(7);
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..100 {
                    // Reads favour hot accounts: a few are read far more than the rest.
                    let hot = rng.u64(..streams.min(200));
                    let account = if rng.bool() { hot } else { rng.u64(..streams) };
                    std::hint::black_box(balances.balance(&format!("account-{account}")));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let mut max_lag = Duration::ZERO;
    let mut max_lag_events = 0;
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let n = written.load(Ordering::Relaxed);
        bar.set_position(n.min(args.events));
        for name in ["balances", "activity"] {
            let st = engine.status(name)?;
            max_lag = max_lag.max(st.max_lag);
            max_lag_events = max_lag_events.max(st.max_lag_events);
        }
        let s = store.write_stats();
        bar.set_message(format!("{:.1} appends/group, projection lag {max_lag_events} events", s.appends_per_group()));
        if deadline.is_some_and(|d| start.elapsed() >= d) {
            stop.store(true, Ordering::Relaxed);
        }
    }
    for h in handles {
        h.join().map_err(|_| "a writer thread panicked")??;
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    for name in ["balances", "activity"] {
        if !engine.wait_caught_up(name, Duration::from_secs(120))? {
            return Err(format!("projection {name} did not catch up").into());
        }
    }
    // A full parallel rebuild of the activity projection, timed.
    let rebuilt = Arc::new(Activity::default());
    let rebuild = engine.rebuild("activity", rebuilt.clone())?;
    bar.finish_and_clear();

    // Check what was acknowledged against what is there, and against the projections.
    let events = written.load(Ordering::Relaxed);
    let heads: u64 = (0..store.partition_count()).map(|p| store.head(p)).sum::<Result<u64, _>>()?;
    if heads != events {
        return Err(format!("{events} events acknowledged but the partitions hold {heads}").into());
    }
    let counted = rebuilt.deposits.load(Ordering::Relaxed) + rebuilt.withdrawals.load(Ordering::Relaxed);
    if counted < heads {
        return Err(format!("the rebuilt activity projection counted {counted} of {heads} events").into());
    }
    store.flush_snapshots()?;
    if args.compact_every > 0.0 {
        store.compact()?;
    }
    let storage = store.storage()?;
    let archive_bytes: u64 = storage.iter().map(|p| p.archive_bytes).sum();
    let archived_bytes: u64 = storage.iter().map(|p| p.archived_bytes).sum();
    let archived_events: u64 = storage.iter().map(|p| p.archived_events).sum();
    let archives: u64 = storage.iter().map(|p| p.archives).sum();
    let ratio = if archive_bytes > 0 { archived_bytes as f64 / archive_bytes as f64 } else { f64::NAN };
    let metrics = Metrics::collect(&store, Some(&engine), Some(&bus), &[("balances", cache.stats())]);
    let stats = metrics.write;
    let bus_stats = bus.stats();
    let cache_stats = cache.stats();
    let snapshots = metrics.snapshots;
    let hist = histogram.lock().map_err(|_| "histogram lock")?.clone();
    let append_p99 = metrics.append_latency.quantile_bound(0.99).map_or(f64::NAN, |b| b as f64 / 1000.0);
    drop(bus);
    Arc::try_unwrap(engine).map_err(|_| "engine still shared")?.stop()?;
    drop(balances);
    let store = Arc::try_unwrap(store).map_err(|_| "store still shared")?;
    store.close()?;
    let bytes = dir_bytes(&dir);
    let secs = elapsed.as_secs_f64();
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    if args.json {
        println!(
            "{{\"dir\":{:?},\"events\":{events},\"commands\":{},\"seconds\":{secs:.3},\"events_per_sec\":{:.0},\
\"command_latency_ms\":{{\"p50\":{:.3},\"p99\":{:.3},\"p999\":{:.3},\"max\":{:.3}}},\"append_p99_bucket_ms\":{append_p99:.3},\
\"appends_per_group\":{:.2},\"fsyncs\":{},\"max_projection_lag_ms\":{:.1},\"max_projection_lag_events\":{max_lag_events},\
\"rebuild_seconds\":{:.3},\"rebuild_events\":{},\"cache_hit_ratio\":{:.4},\"rejected\":{{\"overloaded\":{},\"rate_limited\":{},\
\"lagging\":{},\"business\":{}}},\"snapshots_written\":{},\"snapshot_loads\":{},\"bytes_on_disk\":{bytes},\"archive_ratio\":{},\"archives\":{archives},\"archived_events\":{archived_events},\
\"writers\":{},\"partitions\":{},\"payload\":{},\"batch\":{}}}",
            dir.display().to_string(),
            bus_stats.accepted,
            events as f64 / secs,
            q(0.5),
            q(0.99),
            q(0.999),
            hist.max() as f64 / 1000.0,
            stats.appends_per_group(),
            stats.syncs,
            max_lag.as_secs_f64() * 1000.0,
            rebuild.duration.as_secs_f64(),
            rebuild.events,
            cache_stats.hit_ratio(),
            bus_stats.overloaded,
            bus_stats.rate_limited,
            bus_stats.lagging,
            bus_stats.rejected,
            snapshots.written,
            snapshots.used,
            if ratio.is_nan() { "null".to_string() } else { format!("{ratio:.2}") },
            args.writers,
            args.partitions,
            args.payload,
            args.batch
        );
    } else {
        println!(
            "strata load: {} clients, {} partitions, {} accounts, commands of {} events of {} bytes",
            args.writers, args.partitions, args.streams, args.batch, args.payload
        );
        println!("  store                {}", dir.display());
        println!(
            "  durable events       {events} in {secs:.2} s = {:.0} events/s ({} commands)",
            events as f64 / secs,
            bus_stats.accepted
        );
        println!(
            "  command latency      p50 {:.3} ms   p99 {:.3} ms   p99.9 {:.3} ms   max {:.3} ms  (load + decide + durable append)",
            q(0.5),
            q(0.99),
            q(0.999),
            hist.max() as f64 / 1000.0
        );
        println!("  append latency       p99 <= {append_p99:.3} ms (histogram bucket)");
        println!(
            "  group commits        {} ({:.1} appends each), {} fdatasync",
            stats.group_commits,
            stats.appends_per_group(),
            stats.syncs
        );
        println!("  snapshots            {} written, {} loads started from one", snapshots.written, snapshots.used);
        println!(
            "  projections          max lag {:.1} ms ({max_lag_events} events); activity rebuilt in {:.2} s ({} events)",
            max_lag.as_secs_f64() * 1000.0,
            rebuild.duration.as_secs_f64(),
            rebuild.events
        );
        println!(
            "  read model cache     hit ratio {:.1}% ({} hits, {} misses)",
            cache_stats.hit_ratio() * 100.0,
            cache_stats.hits,
            cache_stats.misses
        );
        println!(
            "  rejections           overloaded {}, rate limited {}, lagging {}, business rule {}",
            bus_stats.overloaded, bus_stats.rate_limited, bus_stats.lagging, bus_stats.rejected
        );
        println!(
            "  bytes on disk        {:.1} MiB ({:.0} bytes per event)",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / events.max(1) as f64
        );
        if archives > 0 {
            println!(
                "  archives             {archives} holding {archived_events} events: {:.1} MiB of batches in {:.1} MiB, ratio {ratio:.2}",
                archived_bytes as f64 / (1 << 20) as f64,
                archive_bytes as f64 / (1 << 20) as f64
            );
        } else {
            println!("  archives             none (no sealed segment was snapshotted past yet)");
        }
    }
    Ok(())
}
