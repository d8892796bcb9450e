//! The snapshotter and the queue in front of it. Loads and commits queue snapshots (encoded
//! on their own thread); the snapshotter (one thread, `strata-snapshotter`) drains the queue,
//! writes each partition's snapshots with one write and one `fdatasync`, and rewrites sidecars
//! whose superseded records pile up. FORMAT.md §12.5 gives what reaches the disk.
//!
//! The queue holds at most 4096 jobs (`QUEUE`: snapshots and flushes). An automatic snapshot
//! (every `SNAPSHOT_EVERY` events, or replacing an ignored one) is dropped, and counted in
//! `SnapshotStats::dropped`, when the queue is full or when its state would bring the state
//! waiting in the queue past 64 MiB (`QUEUE_BYTES`); the `Loaded` keeps its count, so the next
//! commit tries again. `Store::snapshot` waits for room in the queue and is not held back by the
//! byte limit. A state larger than `MAX_SNAPSHOT_BYTES` is never queued (`Store::snapshot`
//! returns `Error::SnapshotTooLarge`; an automatic snapshot is skipped), nor is a snapshot of a
//! deleted stream. `Store::flush_snapshots` returns once everything queued before it is written
//! and durable, or failed, with the first failure since the previous flush.
//!
//! Each round takes what is queued (up to 4097 jobs) and, per partition, keeps one snapshot per
//! stream: if none is flagged `REPLACES`, the one with the highest version (of equal ones, the
//! last queued); otherwise, of the last flagged one and those queued after it, the one with the
//! highest version, with the flag set. The sidecar drops it unless it supersedes the stream's
//! live record. Failures are reported as `RecoveryAction::SnapshotWriteFailed` and counted in
//! `SnapshotStats::failed`; once a sidecar has stopped (its `fdatasync` or cut failed), later
//! rounds count its snapshots as failed without reporting them again. After a successful
//! append, a sidecar is rewritten when its superseded records take at least
//! `max(Options::snapshot_rewrite_bytes, live bytes)` (default 4 MiB; superseded bytes = data
//! end − 64 − live bytes), so that it stays under about twice its live size; a failed rewrite
//! is tried again after a later append.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::format::snapshot::Meta;
use crate::report::RecoveryAction;
use crate::snapshot::{Counters, Job, Pending, Sidecar, SnapshotStats};

/// How many snapshots may wait for the snapshotter.
const QUEUE: usize = 4096;
/// How many bytes of snapshot state may wait for it, beyond which automatic snapshots are
/// dropped (an explicit one still waits for room in the queue).
const QUEUE_BYTES: u64 = 64 << 20;

/// A store's snapshots: one sidecar per partition, and the queue to the snapshotter.
#[derive(Debug)]
pub(crate) struct Snapshots {
    /// By partition; grows with the store's partitions.
    sidecars: RwLock<Arc<Vec<Arc<Sidecar>>>>,
    /// `None` once closed.
    tx: RwLock<Option<Sender<Job>>>,
    counters: Counters,
}

impl Snapshots {
    /// The sidecars of a store's partitions, and the receiving end of their queue, for the
    /// snapshotter ([`run`]).
    pub fn new(sidecars: Vec<Arc<Sidecar>>) -> (Snapshots, Receiver<Job>) {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let s = Snapshots {
            sidecars: RwLock::new(Arc::new(sidecars)),
            tx: RwLock::new(Some(tx)),
            counters: Counters::default(),
        };
        (s, rx)
    }

    /// Adds the sidecar of a partition a grow added (its id is the next one).
    pub fn add(&self, sidecar: Arc<Sidecar>) {
        let mut all = self.sidecars.write();
        let mut grown: Vec<Arc<Sidecar>> = all.iter().cloned().collect();
        grown.push(sidecar);
        *all = Arc::new(grown);
    }

    /// The sidecar of `partition`.
    pub fn of(&self, partition: u32) -> Option<Arc<Sidecar>> {
        self.sidecars.read().get(partition as usize).cloned()
    }

    /// Every sidecar, by partition.
    pub fn all(&self) -> Arc<Vec<Arc<Sidecar>>> {
        self.sidecars.read().clone()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Stops taking jobs: the snapshotter ends once it has done those queued.
    pub fn close(&self) {
        *self.tx.write() = None;
    }

    /// Queues a job for the snapshotter; `wait`: block while the queue is full, otherwise
    /// count the snapshot as dropped. Returns whether it was queued.
    pub fn queue(&self, job: Job, wait: bool) -> Result<bool> {
        let tx = self.tx.read().clone().ok_or(Error::Closed)?;
        let counters = &self.counters;
        let bytes = match &job {
            Job::Write(p) => p.state.len() as u64,
            Job::Flush(_) => 0,
        };
        if !wait && counters.queued_bytes.load(Ordering::Relaxed) + bytes > QUEUE_BYTES {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        counters.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let sent = if wait {
            tx.send(job).map_err(|_| Error::Closed)
        } else {
            match tx.try_send(job) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => {
                    counters.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(false);
                }
                Err(TrySendError::Disconnected(_)) => Err(Error::Closed),
            }
        };
        if sent.is_err() {
            counters.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        sent.map(|()| true)
    }

    /// Waits until every snapshot queued before this call is written and durable; returns
    /// the first write failure since the previous flush.
    pub fn flush(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.queue(Job::Flush(reply), true)?;
        rx.recv().map_err(|_| Error::Closed)?
    }

    /// The counters, and the size of the sidecars loaded so far.
    pub fn stats(&self) -> SnapshotStats {
        let c = &self.counters;
        let mut s = SnapshotStats {
            written: c.written.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            rewrites: c.rewrites.load(Ordering::Relaxed),
            used: c.used.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
            ..Default::default()
        };
        for sidecar in self.all().iter() {
            let (bytes, streams) = sidecar.sizes();
            s.sidecar_bytes += bytes;
            s.streams += streams;
        }
        s
    }
}

/// How many jobs the snapshotter takes in one round.
const ROUND: usize = 4096;

/// The snapshotter: drains the queue, writes each partition's snapshots with one write and
/// one `fdatasync`, and rewrites sidecars whose superseded records pile up. Ends when every
/// sender is gone.
/// The partitions' sidecars are taken at the start of each round (the partition count may
/// grow while the store is open).
pub(crate) fn run(rx: Receiver<Job>, snapshots: &Snapshots, min_rewrite: u64) {
    let counters = &snapshots.counters;
    let mut first_error: Option<Error> = None;
    while let Ok(job) = rx.recv() {
        let sidecars = snapshots.all();
        let mut writes: Vec<Vec<Pending>> = (0..sidecars.len()).map(|_| Vec::new()).collect();
        let mut flushes = Vec::new();
        let mut take = |job: Job| match job {
            Job::Write(p) => {
                counters.queued_bytes.fetch_sub(p.state.len() as u64, Ordering::Relaxed);
                if let Some(w) = writes.get_mut(p.partition as usize) {
                    w.push(p);
                }
            }
            Job::Flush(reply) => flushes.push(reply),
        };
        take(job);
        for job in rx.try_iter().take(ROUND) {
            take(job);
        }
        for (sidecar, mut pending) in sidecars.iter().zip(writes) {
            if pending.is_empty() {
                continue;
            }
            // One record per stream and round: the last queued if it replaces, else the newest.
            // (A stable sort keeps the queue order within a stream.)
            pending.sort_by(|a, b| a.stream.cmp(&b.stream));
            let mut one: Vec<Pending> = Vec::with_capacity(pending.len());
            for p in pending {
                match one.last_mut() {
                    Some(last) if last.stream == p.stream => {
                        if p.meta.replaces || (!last.meta.replaces && p.meta.version >= last.meta.version) {
                            *last = p;
                        } else if last.meta.replaces && p.meta.version > last.meta.version {
                            // A newer snapshot after a replacing one still replaces.
                            *last = Pending { meta: Meta { replaces: true, ..p.meta }, ..p };
                        }
                    }
                    _ => one.push(p),
                }
            }
            let pending = one;
            let n = pending.len() as u64;
            if let Some(e) = sidecar.stopped() {
                // Reported once, when it stopped; counted from then on.
                counters.failed.fetch_add(n, Ordering::Relaxed);
                first_error.get_or_insert(e);
                continue;
            }
            match sidecar.append(&pending) {
                Ok(written) => {
                    counters.written.fetch_add(written, Ordering::Relaxed);
                }
                Err(e) => {
                    counters.failed.fetch_add(n, Ordering::Relaxed);
                    sidecar
                        .note(RecoveryAction::SnapshotWriteFailed { path: sidecar.path.clone(), error: e.to_string() });
                    first_error.get_or_insert(e);
                    continue;
                }
            }
            if sidecar.wants_rewrite(min_rewrite) {
                match sidecar.rewrite() {
                    Ok(()) => {
                        counters.rewrites.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        sidecar.note(RecoveryAction::SnapshotWriteFailed {
                            path: sidecar.path.clone(),
                            error: e.to_string(),
                        });
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        // A flush reports the failures since the previous flush.
        let replied = !flushes.is_empty();
        for reply in flushes {
            let _ = reply.send(first_error.clone().map_or(Ok(()), Err));
        }
        if replied {
            first_error = None;
        }
    }
}
