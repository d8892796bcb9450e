//! Segment preallocation: zero-filling the active segment ahead of the writer, in the
//! background (the protocol and its crash analysis are FORMAT.md §10.4).
//!
//! Writing into blocks that are already allocated and written leaves `fdatasync` nothing but
//! the data to flush (no block allocation, no file-size change in the journal). Measured here:
//! 1.3x to 1.7x more durable group commits per second than appending to a growing file (see
//! BENCHMARKS.md). Sparse `set_len` and `fallocate` do not give that gain, so the zeros are
//! really written; the price is that every byte of a segment is written twice. On copy-on-write
//! file systems (btrfs, ZFS) the blocks are not overwritten in place, and preallocation should
//! be turned off (`Options::preallocate(false)`).
//!
//! Each partition has its own preallocator thread (`strata-prealloc-{id}`), so no writer waits
//! behind another partition's fill. A fill opens the segment by its path, with a file
//! descriptor of its own, so that a write-back error about the writer's data is never collected
//! by a fill's `fdatasync`.
//!
//! The protocol keeps the zeros away from data: the writer asks for `[from, to)` only with
//! `from` a chunk past its own end of data, and writes nothing past `from` until the fill has
//! finished. Recovery treats zeros after the last batch as free space (see `format::segment`).

use std::path::PathBuf;

use crossbeam_channel::{Receiver, Sender};

use crate::error::Result;
use crate::io::{FileHandle, Io};

/// Zeros written (and synced) at a time.
const PIECE: usize = 512 << 10;

/// A request to zero-fill `[from, to)` of a segment and make it durable.
///
/// The fill opens the segment with a file descriptor of its own: Linux reports a write-back
/// error once per open file description, so a fill syncing through the writer's descriptor
/// could swallow an error about the writer's data, and the writer's next `fdatasync` would
/// then succeed and acknowledge data that never reached the disk. With separate descriptors
/// the writer sees every error itself, and a failed fill only means no preallocation.
pub(crate) struct FillJob {
    pub path: PathBuf,
    pub io: Io,
    pub from: u64,
    pub to: u64,
    pub done: oneshot::Sender<Result<()>>,
}

/// Runs the preallocator thread until every writer is gone.
pub(crate) fn run(rx: Receiver<FillJob>) {
    let zeros = vec![0u8; PIECE];
    while let Ok(job) = rx.recv() {
        let result = fill(&job, &zeros);
        let _ = job.done.send(result);
    }
}

/// Writes the zeros a piece at a time, syncing after each piece: the writer's own
/// `fdatasync` of the same file then never has more than one piece of zeros to flush with its
/// data.
fn fill(job: &FillJob, zeros: &[u8]) -> Result<()> {
    let file = job.io.open_rw(&job.path)?;
    let mut at = job.from;
    while at < job.to {
        let n = ((job.to - at) as usize).min(zeros.len());
        file.write_all_at(zeros.get(..n).unwrap_or(zeros), at)?;
        file.sync_data()?;
        at += n as u64;
    }
    Ok(())
}

/// Completion of a fill.
pub(crate) type FillDone = oneshot::Receiver<Result<()>>;

/// The writer's side: how far its segment is zero-filled, and the fill in flight.
pub(crate) struct Preallocator {
    jobs: Option<Sender<FillJob>>,
    chunk: u64,
    limit: u64,
    /// End of the zero-filled, durable region of the current segment.
    capacity: u64,
    pending: Option<(u64, u64, FillDone)>,
}

impl Preallocator {
    /// `jobs` is `None` when preallocation is off. Fills stop at `limit` (the roll size).
    pub fn new(jobs: Option<Sender<FillJob>>, segment_bytes: u64, capacity: u64) -> Preallocator {
        let chunk = (segment_bytes / 16).clamp(256 << 10, 4 << 20);
        Preallocator { jobs, chunk, limit: segment_bytes, capacity, pending: None }
    }

    /// Before writing up to `end`: if that reaches into a fill in flight, wait for it.
    pub fn make_room(&mut self, end: u64) {
        if self.pending.as_ref().is_some_and(|(from, _, _)| end > *from) {
            self.finish();
        }
    }

    /// Waits for the fill in flight, if any (before sealing or dropping the segment).
    pub fn finish(&mut self) {
        if let Some((_, to, rx)) = self.pending.take()
            && let Ok(Ok(())) = rx.recv()
        {
            self.capacity = self.capacity.max(to);
        }
    }

    /// After a group ended at `write_end`: notes a finished fill and, when less than two
    /// chunks of zeros are left ahead, asks for the next chunk (contiguous with the last one,
    /// or a chunk past the writer if the fills fell behind).
    pub fn after_write(&mut self, file: &FileHandle, io: &Io, write_end: u64) {
        if let Some((_, to, rx)) = &self.pending {
            match rx.try_recv() {
                Ok(Ok(())) => self.capacity = self.capacity.max(*to),
                Ok(Err(_)) | Err(oneshot::TryRecvError::Disconnected) => {}
                Err(oneshot::TryRecvError::Empty) => return,
            }
            self.pending = None;
        }
        let Some(jobs) = &self.jobs else { return };
        if self.capacity >= write_end + 2 * self.chunk || write_end >= self.limit {
            return;
        }
        // Leave the writer a chunk of room before the fill starts, so that it does not have to
        // wait for the fill (it writes into not-yet-filled space meanwhile, a little slower).
        let from = self.capacity.max(write_end + self.chunk);
        let to = (from + self.chunk).min(self.limit.max(from));
        if to <= from {
            return;
        }
        let (done, rx) = oneshot::channel();
        let job = FillJob { path: file.path().to_path_buf(), io: io.clone(), from, to, done };
        if jobs.send(job).is_ok() {
            self.pending = Some((from, to, rx));
        }
    }

    /// Hands over the fill in flight (to whoever must wait for it before touching the file)
    /// and forgets it.
    pub fn detach(&mut self) -> Option<FillDone> {
        self.pending.take().map(|(_, _, rx)| rx)
    }

    /// A new segment starts, zero-filled up to `capacity`.
    pub fn reset(&mut self, capacity: u64) {
        self.finish();
        self.capacity = capacity;
    }
}
