//! `strata grow`: raising a store's partition count (or resuming an interrupted grow).

use std::io::Write;
use std::path::PathBuf;

use strata::{Options, Store};

#[derive(clap::Args, Debug)]
pub struct GrowArgs {
    /// The store's directory.
    dir: PathBuf,
    /// The new partition count (at least the current one; the same count resumes an
    /// interrupted grow).
    #[arg(long)]
    partitions: u32,
}

pub fn grow(args: GrowArgs) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(&args.dir, Options::default())?;
    let r = store.grow_partitions(args.partitions)?;
    if r.from == r.to && !r.resumed {
        out!("{}: already {} partitions; nothing to do", args.dir.display(), r.to);
    } else {
        out!(
            "grew {} from {} to {} partitions (epoch {}){}: {} streams moved, {} events copied in {} rounds",
            args.dir.display(),
            r.from,
            r.to,
            r.epoch,
            if r.resumed { ", resuming an interrupted grow" } else { "" },
            r.moved_streams,
            r.copied_events,
            r.rounds
        );
        out!(
            "  cutover: appends paused {:.1} ms for {} events; {} batches were copied before",
            r.cutover.as_secs_f64() * 1e3,
            r.cutover_events,
            r.already_copied
        );
    }
    store.close()?;
    Ok(())
}
