//! `strata compact`: the compaction policy applied now, with a progress bar.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use strata::compaction::CompactionOptions;
use strata::{Options, Store};

#[derive(clap::Args, Debug)]
pub struct CompactArgs {
    /// The store's directory.
    dir: PathBuf,
    /// Archive every sealed segment, whatever the policy.
    #[arg(long)]
    force: bool,
    /// Archive segments whose newest event is at least this many seconds old.
    #[arg(long, default_value_t = 7 * 86_400)]
    older_than: u64,
    /// Do not require every stream in a segment to be snapshotted past it.
    #[arg(long)]
    no_snapshot_check: bool,
    /// Also archive the oldest sealed segments while a partition holds more than this many
    /// MiB of them.
    #[arg(long)]
    hot_mib: Option<u64>,
    /// Compact at most this many MiB of segments per second.
    #[arg(long)]
    throttle_mib: Option<u64>,
}

pub fn compact(args: CompactArgs) -> Result<(), Box<dyn std::error::Error>> {
    let policy = CompactionOptions::default()
        .interval(None)
        .retention(Duration::from_secs(args.older_than))
        .require_snapshots(!args.no_snapshot_check)
        .max_hot_bytes(args.hot_mib.map(|m| m << 20))
        .throttle(args.throttle_mib.map(|m| m << 20));
    let store = Store::open(&args.dir, Options::default().compaction(policy))?;
    let progress = ProgressBar::new(0);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let r = store.compact_with(args.force, &mut |p| {
        progress.set_length(p.planned);
        progress.set_position(p.done);
    })?;
    progress.finish_and_clear();
    out!(
        "compacted {} segments into {} archives ({} rewritten to erase deleted streams) in {:.2} s",
        r.segments_archived,
        r.archives_written,
        r.archives_rewritten,
        r.elapsed.as_secs_f64()
    );
    out!(
        "  {} bytes of segments in {} bytes of archives (ratio {:.2}); {} events archived, {} erased, {} snapshots erased",
        r.bytes_in,
        r.bytes_out,
        r.ratio(),
        r.events_archived,
        r.events_erased,
        r.snapshots_erased
    );
    for s in &r.skipped {
        out!("  SKIPPED (damaged): {s}");
    }
    store.close()?;
    Ok(())
}
