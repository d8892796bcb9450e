//! What strata repaired in a store's files, for the operator to see: each repair is a
//! [`RecoveryAction`], and a store gathers them in one [`Report`] (see
//! `Store::recovery_report`). Nothing here loses acknowledged data: a torn tail is a write
//! that was never acknowledged as durable.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

/// Something opening (or lazily loading part of) a store had to repair, for the operator to
/// see. Nothing here loses acknowledged data: a torn tail is a write that was never
/// acknowledged as durable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryAction {
    /// The active segment ended in an incomplete or damaged write, which was cut off.
    TruncatedTornTail {
        /// The segment.
        path: PathBuf,
        /// Where valid data ends (the new file length).
        offset: u64,
        /// How many bytes were cut.
        discarded_bytes: u64,
        /// What was wrong with the first discarded batch.
        reason: String,
    },
    /// A sealed segment ended in zeros after its data (preallocated space left by a crash
    /// before it was sealed), which were cut.
    TrimmedSegment {
        /// The segment.
        path: PathBuf,
        /// Length before.
        from_len: u64,
        /// Length after.
        to_len: u64,
    },
    /// A sealed segment's index was missing or damaged and was rebuilt from the segment.
    RebuiltIndex {
        /// The index file.
        path: PathBuf,
        /// What was wrong with the old one.
        reason: String,
    },
    /// A damaged index file beside the active segment (a leftover, not a valid index) was
    /// removed.
    RemovedStaleIndex {
        /// The index file.
        path: PathBuf,
    },
    /// The active segment's index journal (`{base}.aix`, derived data) did not check out from
    /// `offset` on (0: not at all): that part was dropped, and open scanned the segment from
    /// where the valid part ends. Expected after a power loss; nothing in the log is lost.
    DroppedActiveIndex {
        /// The journal file.
        path: PathBuf,
        /// Where its invalid bytes start, or 0 if it was dropped whole.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A projection's checkpoint slot did not check out (a torn write of it): the partition's
    /// other slot, the previous checkpoint, stands, and the projection resumes there (events
    /// after it are delivered again). The slot is overwritten by the next checkpoint.
    IgnoredCheckpointSlot {
        /// The checkpoint file.
        path: PathBuf,
        /// The slot's offset.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A projection's checkpoint file was found part-way through an extension to more
    /// partitions (a crash between its two steps): the extension was finished.
    FinishedCheckpointExtension {
        /// The checkpoint file.
        path: PathBuf,
    },
    /// A projection rebuild that a crash interrupted was finished (the rebuilt files had
    /// begun to replace the live ones) or dropped (they had not), at registration.
    InterruptedRebuild {
        /// The projection's directory.
        path: PathBuf,
        /// Whether the rebuilt files were kept (`true`) or removed.
        finished: bool,
    },
    /// A temporary file of an interrupted atomic write was removed.
    RemovedTempFile {
        /// The file.
        path: PathBuf,
    },
    /// A snapshot sidecar held bytes that are not valid records from `offset` on (a torn
    /// write, or damage), or (at offset 0) an unusable header. They were cut off, or the file
    /// replaced by an empty one. Snapshots are derived data: the streams they covered are
    /// loaded by replaying their events, and snapshotted again.
    SnapshotsDiscarded {
        /// The sidecar.
        path: PathBuf,
        /// Where the invalid bytes start.
        offset: u64,
        /// How many bytes were dropped.
        discarded_bytes: u64,
        /// What was wrong.
        reason: String,
    },
    /// A snapshot the sidecar's index lists could not be read back (I/O error or damage):
    /// the stream was loaded by replay.
    SnapshotUnreadable {
        /// The sidecar.
        path: PathBuf,
        /// The record's offset.
        offset: u64,
        /// The stream.
        stream: String,
        /// What went wrong.
        reason: String,
    },
    /// Writing to a snapshot sidecar failed. After a failed fsync, snapshots of that
    /// partition stop until the store is reopened (loads go on, by replay past the last
    /// good snapshot).
    SnapshotWriteFailed {
        /// The sidecar.
        path: PathBuf,
        /// The error.
        error: String,
    },
    /// Reading a snapshot sidecar failed (an I/O error, not damage): until the store is
    /// reopened, none of the partition's snapshots is used and none is taken.
    SnapshotsUnavailable {
        /// The sidecar.
        path: PathBuf,
        /// The error.
        error: String,
    },
    /// Sealing a full segment (writing its index) failed; it stays readable and is indexed
    /// again on the next open.
    SealFailed {
        /// The segment.
        path: PathBuf,
        /// The error.
        error: String,
    },
    /// A compaction had written all its archives when it was interrupted: the segments they
    /// replace were removed, finishing it.
    CompactionFinished {
        /// The segment files (and indexes) removed.
        removed: Vec<PathBuf>,
    },
    /// A compaction was interrupted before all its archives were written: while all the
    /// segments it was replacing were still there, its archives were removed, rolling it back.
    /// (An archive that cannot be read is never removed.)
    CompactionRolledBack {
        /// The archive files removed.
        removed: Vec<PathBuf>,
        /// Why they could not stand.
        reason: String,
    },
}

/// Where a store's repairs are gathered: shared by everything that reads its files.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report(Arc<Mutex<Vec<RecoveryAction>>>);

impl Report {
    /// Records a repair.
    pub fn push(&self, action: RecoveryAction) {
        self.0.lock().push(action);
    }

    /// Every repair recorded so far, oldest first.
    pub fn all(&self) -> Vec<RecoveryAction> {
        self.0.lock().clone()
    }
}
