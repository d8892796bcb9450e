//! The sealer: one thread for the store that turns full segments, which the writers roll away
//! from, into sealed ones (trimmed, indexed, mapped), off the writers' path, one segment at a
//! time in the order they were handed over (FORMAT.md §10.3).
//!
//! At a roll the writer keeps its segment's zero fill in flight known until the new segment is
//! in place (a roll that fails before the rename goes on writing to the old segment, which must
//! still respect the fill's range), then lets go of it (`Preallocator::detach`) and hands the
//! old segment to the sealer with the fill's completion (`SealJob.fill`). The sealer waits for
//! that fill, whatever its outcome, drops the read map the segment had while it was active
//! (`log::active`), trims and fsyncs the file, writes the index, then maps the segment and the
//! index, validates the index and switches readers to the maps. A failure is reported as
//! `RecoveryAction::SealFailed`; the segment stays readable through its in-memory index.

use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::log::active::OpenSegment;
use crate::log::partition::Partition;
use crate::log::prealloc::FillDone;
use crate::log::segment::Segment;
use crate::report::RecoveryAction;

/// A segment that was rolled away from and must be sealed.
pub(crate) struct SealJob {
    pub segment: Arc<Segment>,
    pub open: Arc<OpenSegment>,
    pub partition: Arc<Partition>,
    /// The zero-fill still running on the segment, to be waited for before trimming it.
    pub fill: Option<FillDone>,
}

/// Seals a segment (the sealer thread's work); a failure is reported and leaves the segment
/// readable in its open form, to be indexed again on the next open.
pub(crate) fn seal(job: SealJob) {
    if let Some(fill) = job.fill {
        let _ = fill.recv();
    }
    if let Err(e) = job.segment.seal(&job.open, &job.partition.io) {
        job.partition.report.push(RecoveryAction::SealFailed { path: job.segment.path.clone(), error: e.to_string() });
    }
}

/// Runs the sealer thread until every writer is gone.
pub(crate) fn run_sealer(rx: Receiver<SealJob>) {
    while let Ok(job) = rx.recv() {
        seal(job);
    }
}
