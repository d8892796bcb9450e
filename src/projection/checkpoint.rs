//! The engine's checkpoints: per projection, one file holding each partition's next
//! position (`format::checkpoint`, FORMAT.md §13.2), opened at registration, extended when the
//! store grows, and written by a background checkpointer, one `fdatasync` per projection per
//! round.
//!
//! `open_checkpoints` reads the file, reporting each damaged slot it reads past as
//! `RecoveryAction::IgnoredCheckpointSlot`, and rewrites it whole when its partitions are not
//! the store's count (a file found mid-extension is reported as
//! `RecoveryAction::FinishedCheckpointExtension`). Workers only move positions in memory; one
//! thread per engine (`strata-checkpointer`, `run_checkpointer`) writes every slot, so handling
//! never waits for a disk write. It runs a round (`checkpoint_round`) 5 ms after a worker has
//! advanced a projection with engine-kept checkpoints (gathering what else moves meanwhile), at
//! least every second, and once more after the workers have stopped, when the engine stops. The
//! positions a round made durable show as `PartitionStatus::checkpointed`. After a failed write
//! or `fdatasync` every partition of the projection stops (`PartitionStatus::error`: "checkpoint
//! write failed") until it is registered again, in a new engine, which reads the file anew.
//!
//! `extend_checkpoints` runs one extension of a file at a time (two workers, or a worker and a
//! registration, may extend at once, for different counts) and never shortens a file. If an
//! extension fails, every task of the projection, the new partitions' included, is stopped with
//! an error (`PartitionStatus::error`, "checkpoint file: …"); a projection whose checkpoint
//! writes had already failed is treated the same way, without touching the file.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::clock::now_nanos;
use crate::error::{Error, Result};
use crate::format::checkpoint::{self as ckp, Checkpoint};
use crate::io::FileHandle;
use crate::report::RecoveryAction;

use super::state::{Inner, Registered, Task};
use super::worker::stop_task;

pub(super) fn open_checkpoints(inner: &Inner, dir: &Path, partitions: u32) -> Result<(FileHandle, Vec<Checkpoint>)> {
    let io = &inner.io;
    let path = dir.join(ckp::FILE_NAME);
    let report = inner.log.report();
    let (mut start, header_count) = match std::fs::read(&path) {
        Ok(bytes) => {
            let mut ignored = Vec::new();
            let start = ckp::decode_noting(&bytes, &mut ignored).map_err(|m| m.into_corruption(&path))?;
            for m in ignored {
                let action =
                    RecoveryAction::IgnoredCheckpointSlot { path: path.clone(), offset: m.offset, reason: m.what };
                report.push(action);
            }
            (start, ckp::header_fields(&bytes).map(|(count, _)| count))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), None),
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    if header_count.is_some_and(|count| count as usize != start.len()) {
        // Slots past the header's count: an extension interrupted before its header was
        // rewritten (see `format::checkpoint`). Rewritten below.
        report.push(RecoveryAction::FinishedCheckpointExtension { path: path.clone() });
    }
    // Also when only the header is behind: slots written past the header's count would
    // read as damage.
    if start.len() != partitions as usize || header_count != Some(partitions) {
        // New, or made for another partition count: (re)write it, keeping what it had.
        start.resize(partitions as usize, Checkpoint::default());
        io.write_atomic(dir, ckp::FILE_NAME, &ckp::encode_file(partitions, now_nanos(), &start))?;
    }
    Ok((io.open_rw(&path)?, start))
}

/// Makes `reg`'s checkpoint file (if the engine keeps it) cover `count` partitions, in place:
/// zeros to the new length, then the header (see `format::checkpoint`).
pub(super) fn extend_checkpoints(reg: &Registered, count: u32) -> Result<()> {
    let Some(file) = &reg.checkpoints else { return Ok(()) };
    // Two workers (or a worker and a registration) may extend at once, for different counts:
    // one at a time, and never shorter than the file is.
    let _one = reg.extending.lock();
    let mut header = [0u8; ckp::HEADER_LEN];
    file.read_exact_at(&mut header, 0)?;
    let (have, created) = ckp::header_fields(&header).unwrap_or_default();
    if have >= count {
        return Ok(());
    }
    if file.len()? < ckp::file_len(count) as u64 {
        file.set_len(ckp::file_len(count) as u64)?;
        file.sync_data()?;
    }
    file.write_all_at(&ckp::encode_header(count, created), 0)?;
    file.sync_data()
}

/// The checkpointer: makes the tasks' positions durable, one `fdatasync` per projection per
/// round however many partitions moved, so handling never waits for a checkpoint's disk
/// write. After a crash, a projection resumes at its last durable checkpoint: the events
/// handled since (at most the batches of one round) are delivered again.
pub(super) fn run_checkpointer(inner: Arc<Inner>) {
    loop {
        let seen = inner.dirty.seq();
        checkpoint_round(&inner);
        if inner.checkpointer_stop.load(Ordering::Acquire) {
            // The workers are gone: one last round for what they did last.
            checkpoint_round(&inner);
            return;
        }
        inner.dirty.wait(seen, Duration::from_secs(1));
        // Group what moved in the next few milliseconds into the next round: a sync per
        // batch would make the file system's journal compete with the workers for CPU.
        if !inner.checkpointer_stop.load(Ordering::Acquire) {
            std::thread::sleep(CHECKPOINT_GATHER);
        }
    }
}

/// How long the checkpointer gathers moves before a round.
const CHECKPOINT_GATHER: Duration = Duration::from_millis(5);

fn checkpoint_round(inner: &Inner) {
    shared_round(inner);
    let tasks = inner.tasks.read().clone();
    let mut projections: Vec<&Arc<Registered>> = Vec::new();
    for t in tasks.iter() {
        if t.projection.checkpoints.is_some() && !projections.iter().any(|p| Arc::ptr_eq(p, &t.projection)) {
            projections.push(&t.projection);
        }
    }
    for reg in projections {
        let Some(file) = &reg.checkpoints else { continue };
        if reg.checkpoint_failed.load(Ordering::Acquire) {
            continue;
        }
        let mine: Vec<&Arc<Task>> = tasks.iter().filter(|t| Arc::ptr_eq(&t.projection, reg)).collect();
        let mut written = Vec::new();
        let mut result = Ok(());
        for t in &mine {
            let Ok(heads) = inner.log.heads(t.partition) else { continue };
            let time = t.last_time.load(Ordering::Acquire);
            // Never past what is on disk: under Buffered durability the log may still lose
            // its unsynced tail, and a checkpoint beyond it would skip the positions reused.
            let next = t.next.load(Ordering::Acquire).min(heads.durable);
            if next <= t.durable.load(Ordering::Acquire) {
                continue;
            }
            // One write per partition between two syncs: the other slot stays intact.
            let seq = t.seq.load(Ordering::Relaxed) + 1;
            let c = Checkpoint { seq, position: next, time };
            result = file.write_all_at(&ckp::encode_slot(t.partition, &c), ckp::slot_offset(t.partition, seq));
            if result.is_err() {
                break;
            }
            written.push((t, next, seq));
        }
        if result.is_ok() && !written.is_empty() {
            result = file.sync_data();
        }
        match result {
            Ok(()) => {
                for (t, next, seq) in written {
                    t.seq.store(seq, Ordering::Relaxed);
                    t.durable.store(next, Ordering::Release);
                }
            }
            Err(e) => {
                // What the file holds is unknown: never write it again (a second write could
                // hit the slot holding the last durable checkpoint), and stop the projection
                // rather than run ahead of its checkpoints.
                reg.checkpoint_failed.store(true, Ordering::Release);
                for t in &mine {
                    stop_task(inner, t, format!("checkpoint write failed: {e}"));
                }
            }
        }
    }
}

/// The checkpoints of shared projections that this process runs: each partition's stored on
/// the cluster by compare-and-set. A write that fails because another process claimed the
/// partition since (this one stalled past its lease) gives the partition up here; one that
/// fails otherwise (the cluster unreachable) is tried again next round, and the lease's own
/// deadline stops the partition if that goes on.
fn shared_round(inner: &Inner) {
    let Some(shared) = inner.log.shared() else { return };
    let tasks = inner.tasks.read().clone();
    for t in tasks.iter().filter(|t| t.projection.shared && t.projection.engine_checkpoints()) {
        let next = t.next.load(Ordering::Acquire);
        if next <= t.durable.load(Ordering::Acquire) {
            continue;
        }
        let time = t.last_time.load(Ordering::Acquire);
        // Not held across the write: the workers read the claim before each batch.
        let Some(mut claim) = t.lease.lock().clone() else { continue };
        match shared.store_checkpoint(&t.projection.name, t.partition, &mut claim, next, time) {
            Ok(true) => {
                if let Some(c) = t.lease.lock().as_mut() {
                    c.checkpoint = c.checkpoint.max(claim.checkpoint);
                }
                t.durable.store(next, Ordering::Release);
            }
            Ok(false) => {
                *t.lease.lock() = None;
                t.held.store(false, Ordering::Release);
                crate::trace::event!(
                    WARN,
                    "strata::projection",
                    projection = %t.projection.name,
                    partition = t.partition,
                    "another process took the partition"
                );
            }
            Err(_) => {}
        }
    }
}
