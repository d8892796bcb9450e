//! The sealer: one thread that turns full segments, which the writers roll away from, into
//! sealed ones (trimmed, indexed, mapped), off the writers' path.

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
