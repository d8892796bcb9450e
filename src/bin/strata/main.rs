//! The `strata` command-line tool: `load` (the end-to-end load, in `load.rs`) and the tools
//! that look into a store from the outside, one file each: `dump`, `audit`, `verify`, `stats`,
//! `compact`, `grow` and `tail`.

use clap::{Parser, Subcommand};

/// `println!` that ends the program when stdout is closed (`strata dump | head`) instead of
/// panicking, with the status a shell gives a process killed by SIGPIPE.
macro_rules! out {
    ($($t:tt)*) => {
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(141)
        }
    };
}

mod audit;
mod common;
mod compact;
mod dump;
mod grow;
mod json;
mod load;
mod serve;
mod stats;
mod tail;
mod verify;

/// strata: an embeddable, log-structured event store.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an end-to-end load against a new store in a local directory (commands through the
    /// bus, snapshots, two projections, a cached read model) and report throughput, latency,
    /// projection lag, rebuild time, cache hit ratio and rejections.
    Load(load::LoadArgs),
    /// Print a file's (or every file of a store or partition directory's) headers, batches
    /// and records: positions, streams, versions, types, sizes, payloads as text or hex. On
    /// archives, what they were made from, why, and what was erased from them. With `--stream`
    /// over a directory, ends with that stream's whole history per partition (archived and hot
    /// events, versions, positions) and the erasure audit records about it.
    Dump(dump::DumpArgs),
    /// List what was erased and when: every erasure audit record of every partition's
    /// archives (stream, events, positions, when deleted, when erased), oldest erasure first,
    /// then a summary; read-only, safe beside a running store. Exits 1 if an archive could not
    /// be read, listing the others.
    Audit(audit::AuditArgs),
    /// Check every CRC, index, snapshot sidecar and archive of a store; print "all ok" and
    /// exit 0, or list each problem with its file and offset and exit 1.
    Verify(verify::DirArgs),
    /// Partitions, segments, archives, sizes, events and streams per partition, hard and soft
    /// deletes, streams with metadata, projection checkpoints and lag (`--json` for one
    /// object).
    Stats(stats::StatsArgs),
    /// Run the compaction policy now, with progress.
    Compact(compact::CompactArgs),
    /// Follow a store live, one line per event (or JSON with `--json`): every partition or
    /// one, filtered by category or event type, from the start, the end or a saved cursor.
    Tail(tail::TailArgs),
    /// Raise the partition count: move the streams whose partition changes (jump consistent
    /// hash moves about 1 - old/new of them), keeping their versions; resumes a grow that was
    /// interrupted.
    Grow(grow::GrowArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load(args) => load::load(args),
        Command::Dump(args) => dump::dump(args),
        Command::Audit(args) => match audit::audit(args) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e),
        },
        Command::Verify(args) => match verify::verify(args) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e),
        },
        Command::Stats(args) => stats::stats(args),
        Command::Compact(args) => compact::compact(args),
        Command::Grow(args) => grow::grow(args),
        Command::Tail(args) => tail::tail(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
