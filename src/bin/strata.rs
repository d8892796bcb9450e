//! The `strata` command-line tool.
//!
//! `strata load` is the end-to-end load: many concurrent writers appending durably to many
//! streams of a store in a local directory, with live progress and a final report.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use strata::{Durability, EventData, ExpectedVersion, Options, Store};

/// strata: an embeddable, log-structured event store.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a durable append load against a new store in a local directory and report
    /// throughput, latency percentiles and group-commit sizes.
    Load(LoadArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum DurabilityArg {
    /// Acknowledge after fdatasync.
    Sync,
    /// Acknowledge after write; fdatasync every 5 ms.
    Buffered,
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// Directory of the store (created; must not hold a store). Default: a new directory
    /// under ./strata-load/.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Total events to append.
    #[arg(long, default_value_t = 2_000_000)]
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
    /// Events per append (one atomic batch).
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
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load(args) => load(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
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

fn load(args: LoadArgs) -> Result<(), Box<dyn std::error::Error>> {
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
        .preallocate(!args.no_preallocate);
    let store = Arc::new(Store::open(&dir, opts)?);
    let appends_total = args.events.div_ceil(args.batch as u64);
    let next_append = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let deadline = args.duration.map(Duration::from_secs_f64);

    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(args.events) };
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} events ({per_sec}) {msg}")?);
    let start = Instant::now();
    let handles: Vec<_> = (0..args.writers)
        .map(|w| {
            let (store, next_append, written, stop, histogram) =
                (store.clone(), next_append.clone(), written.clone(), stop.clone(), histogram.clone());
            let (writers, streams, batch, payload) = (args.writers as u64, args.streams, args.batch, args.payload);
            std::thread::spawn(move || -> Result<(), strata::Error> {
                // This writer owns streams w, w + writers, ...: like a command handler per
                // aggregate, it knows their versions, so every append states its expectation.
                let owned: Vec<u64> = (w as u64..streams).step_by(writers as usize).collect();
                let mut versions = vec![None::<u64>; owned.len()];
                let mut rng = fastrand::Rng::with_seed(w as u64);
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                while !stop.load(Ordering::Relaxed) && next_append.fetch_add(1, Ordering::Relaxed) < appends_total {
                    if owned.is_empty() {
                        break;
                    }
                    let k = rng.usize(..owned.len());
                    let stream = format!("account-{}", owned[k]);
                    let events: Vec<EventData> = (0..batch)
                        .map(|i| {
                            let mut body = vec![0u8; payload];
                            rng.fill(&mut body);
                            EventData::new(if i % 2 == 0 { "Deposited" } else { "Withdrawn" }, body)
                        })
                        .collect();
                    let expected = versions[k].map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                    let t = Instant::now();
                    let r = store.append(&stream, expected, &events)?;
                    let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                    versions[k] = Some(r.last_version);
                    written.fetch_add(batch as u64, Ordering::Relaxed);
                }
                histogram.lock().expect("histogram lock").add(&local).expect("same bounds");
                Ok(())
            })
        })
        .collect();
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let n = written.load(Ordering::Relaxed);
        bar.set_position(n.min(args.events));
        let s = store.write_stats();
        bar.set_message(format!("{:.1} appends/group", s.appends_per_group()));
        if deadline.is_some_and(|d| start.elapsed() >= d) {
            stop.store(true, Ordering::Relaxed);
        }
    }
    for h in handles {
        h.join().map_err(|_| "a writer thread panicked")??;
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();

    // Check what was acknowledged against what is there.
    let events = written.load(Ordering::Relaxed);
    let heads: u64 = (0..store.partition_count()).map(|p| store.head(p)).sum::<Result<u64, _>>()?;
    if heads != events {
        return Err(format!("{events} events acknowledged but the partitions hold {heads}").into());
    }
    let stats = store.write_stats();
    let hist = histogram.lock().map_err(|_| "histogram lock")?.clone();
    let store = Arc::try_unwrap(store).map_err(|_| "store still shared")?;
    store.close()?;
    let bytes = dir_bytes(&dir);
    let secs = elapsed.as_secs_f64();
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    if args.json {
        println!(
            "{{\"dir\":{:?},\"events\":{events},\"appends\":{},\"seconds\":{secs:.3},\"events_per_sec\":{:.0},\
\"append_latency_ms\":{{\"p50\":{:.3},\"p99\":{:.3},\"p999\":{:.3},\"max\":{:.3}}},\"appends_per_group\":{:.2},\
\"fsyncs\":{},\"bytes_on_disk\":{bytes},\"writers\":{},\"partitions\":{},\"payload\":{},\"batch\":{}}}",
            dir.display().to_string(),
            stats.appends,
            events as f64 / secs,
            q(0.5),
            q(0.99),
            q(0.999),
            hist.max() as f64 / 1000.0,
            stats.appends_per_group(),
            stats.syncs,
            args.writers,
            args.partitions,
            args.payload,
            args.batch
        );
    } else {
        println!(
            "strata load: {} writers, {} partitions, {} streams, {} events of {} bytes per append",
            args.writers, args.partitions, args.streams, args.batch, args.payload
        );
        println!("  store                {}", dir.display());
        println!(
            "  durable events       {events} in {secs:.2} s = {:.0} events/s ({:.0} appends/s)",
            events as f64 / secs,
            stats.appends as f64 / secs
        );
        println!(
            "  append latency       p50 {:.3} ms   p99 {:.3} ms   p99.9 {:.3} ms   max {:.3} ms",
            q(0.5),
            q(0.99),
            q(0.999),
            hist.max() as f64 / 1000.0
        );
        println!(
            "  group commits        {} ({:.1} appends each), {} fdatasync",
            stats.group_commits,
            stats.appends_per_group(),
            stats.syncs
        );
        println!(
            "  bytes on disk        {:.1} MiB ({:.0} bytes per event)",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / events.max(1) as f64
        );
        println!("  projection lag       n/a (projections arrive with the projection engine)");
    }
    Ok(())
}
