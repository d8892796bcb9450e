//! The engine's shared state: each registered projection, each (projection, partition) task
//! a worker claims, and covering the partitions a grow adds (FORMAT.md §13.2, "After a grow").
//!
//! Covering is done by the workers and by registrations. Each worker, before it looks for work,
//! compares the store's partition count with the count the engine has covered; when the
//! store's is higher, it covers every registered projection (live ones and rebuild shadows) up
//! to it (`cover_new_partitions`). This is idempotent: a projection that already has a task for
//! a partition (its registration made one) gets no second one. What a projection needs is
//! prepared outside the task lock: its checkpoint file is extended, and, with
//! `Checkpoints::Projection`, `Projection::checkpoint(b)` is called there, since a projection's
//! own `checkpoint` may call into the engine. Then, under the lock, each task still missing is
//! added (only for projections still in the task list: a rebuild may have swapped one out), and
//! the covered count rises to the store's count as the worker read it, only once every
//! projection in the list has a task for every partition. A task added for a new partition
//! starts from an empty checkpoint (`seq` 0) with engine-kept checkpoints, or from
//! `Projection::checkpoint(b)`.
//!
//! A registration creates tasks for the partitions of the count it read first; if a grow has
//! committed since, it extends its checkpoint file to the count it reads then and creates the
//! new partitions' tasks too, all before it takes the task lock. It covers only its own
//! projection, and lowers the covered count, under the lock, to the count it read, so a
//! projection registered while a grow committed is covered by the next pass. A rebuild's swap
//! retires and unshadows the two projections' tasks as the list is at the swap.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::error::Result;
use crate::event::RecordedEvent;
use crate::format::checkpoint::Checkpoint;
use crate::io::{FileHandle, Io};
use crate::store::seam::{Claim, Log};
use crate::sync::HeadSignal;

use super::checkpoint::extend_checkpoints;
use super::dlq::DeadLetters;
use super::worker::stop_task;
use super::{Checkpoints, Projection, ProjectionOptions};

/// The directory of projection `name`, and those a rebuild uses beside it.
pub(super) fn dirs(root: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    (root.join(name), root.join(format!("{name}.old")), root.join(format!("{name}.rebuild")))
}

/// One (projection, partition): the unit a worker claims.
pub(super) struct Task {
    pub(super) projection: Arc<Registered>,
    pub(super) partition: u32,
    /// A rebuild not swapped in yet: run, but invisible to the name-based API.
    pub(super) shadow: AtomicBool,
    /// Replaced by a rebuild (or a failed one dropped): never run again. Set while claimed.
    pub(super) retired: AtomicBool,
    pub(super) claimed: AtomicBool,
    pub(super) next: AtomicU64,
    pub(super) last_time: AtomicU64,
    /// Times this partition's checkpoint was written (the checkpointer's alone).
    pub(super) seq: AtomicU64,
    /// The position the durable checkpoint holds.
    pub(super) durable: AtomicU64,
    pub(super) error: Mutex<Option<String>>,
    /// Reused from batch to batch, so reading allocates nothing once warm.
    pub(super) buffer: Mutex<Vec<RecordedEvent>>,
    /// For a partition a grow added: the heads the partitions before it had at the cutover.
    /// Its events wait until the projection has passed all of them, so that a moved stream's
    /// events after the cutover never overtake its events before.
    pub(super) gate: Option<Vec<u64>>,
    /// Set once the gate has been passed (it never closes again).
    pub(super) gate_open: AtomicBool,
    /// Whether this process runs the partition: always for a projection of its own; for a
    /// shared one, while it holds the partition's lease (`lease`).
    pub(super) held: AtomicBool,
    /// A shared projection's lease of the partition, while held.
    pub(super) lease: Mutex<Option<Claim>>,
    /// A shared projection's partition run by another process: that process, as its
    /// checkpoint names it.
    pub(super) owner: Mutex<Option<String>>,
}

impl Task {
    pub(super) fn claim(&self) -> bool {
        self.claimed.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }
    pub(super) fn release(&self) {
        self.claimed.store(false, Ordering::Release);
    }
    pub(super) fn is_shadow(&self) -> bool {
        self.shadow.load(Ordering::Acquire)
    }

    /// Whether this process may start a batch of the task: it runs the partition and, for a
    /// shared projection, its lease has a quarter of its time left at least (so the batch
    /// starts well before another process could take the partition).
    pub(super) fn runs_here(&self, inner: &Inner) -> bool {
        if !self.held.load(Ordering::Acquire) {
            return false;
        }
        if !self.projection.shared {
            return true;
        }
        let ttl = inner.lease_ttl();
        self.lease.lock().as_ref().is_some_and(|c| c.renewed.elapsed() < ttl - ttl / 4)
    }
}

pub(super) struct Registered {
    pub(super) name: String,
    pub(super) handler: Arc<dyn Projection>,
    /// The same instance, for [`ProjectionEngine::view`].
    pub(super) any: Arc<dyn std::any::Any + Send + Sync>,
    pub(super) options: ProjectionOptions,
    /// The engine's checkpoint file (with [`Checkpoints::Engine`]).
    pub(super) checkpoints: Option<FileHandle>,
    /// The dead-letter queue (unless [`OnFailure::Stop`]).
    pub(super) dlq: Option<DeadLetters>,
    pub(super) handled: AtomicU64,
    /// How long the rebuild that produced this instance took.
    pub(super) rebuilt: Mutex<Option<Duration>>,
    /// A checkpoint write or sync failed: the file is not written again.
    pub(super) checkpoint_failed: AtomicBool,
    /// Held while the checkpoint file is extended for a grown store (one extension at a time).
    pub(super) extending: Mutex<()>,
    /// Shared between the processes of a shared log: partitions by lease, checkpoints and
    /// dead letters on the log's cluster (`projection::shared`).
    pub(super) shared: bool,
}

impl Registered {
    /// Whether the engine writes the projection's checkpoints (to its file, or for a shared
    /// projection to the cluster).
    pub(super) fn engine_checkpoints(&self) -> bool {
        self.checkpoints.is_some() || (self.shared && self.options.checkpoints == Checkpoints::Engine)
    }
}

pub(super) struct Inner {
    pub(super) log: Arc<dyn Log>,
    /// Bumped whenever a task advances (for [`ProjectionEngine::wait_caught_up`]).
    pub(super) progress: HeadSignal,
    /// Bumped when a task with engine-kept checkpoints advances (wakes the checkpointer).
    pub(super) dirty: HeadSignal,
    pub(super) checkpointer_stop: AtomicBool,
    pub(super) io: Io,
    pub(super) tasks: RwLock<Arc<Vec<Arc<Task>>>>,
    /// Workers with an id at or above this exit after their current batch.
    pub(super) desired: AtomicUsize,
    pub(super) stop: AtomicBool,
    /// The partition count the tasks cover; below the store's after a grow, until the
    /// workers add the new partitions' tasks.
    pub(super) covered: AtomicU32,
    /// Tells the lease keeper (shared logs only) to give its leases up and end.
    pub(super) keeper_stop: AtomicBool,
    /// Wakes the lease keeper early (a registration, a stop).
    pub(super) keeper_wake: HeadSignal,
}

impl Inner {
    /// The lease time of a shared log (irrelevant otherwise).
    pub(super) fn lease_ttl(&self) -> Duration {
        self.log.shared().map_or(Duration::MAX, |s| s.lease_ttl())
    }
}

/// A task for `partition`, starting at checkpoint `c`.
pub(super) fn new_task(
    log: &dyn Log,
    reg: &Arc<Registered>,
    partition: u32,
    c: Checkpoint,
    shadow: bool,
) -> Result<Arc<Task>> {
    // A checkpoint past the head: the log lost a tail the projection had handled (a crash
    // under Buffered durability). Its positions will be reused by new events, which must not
    // be skipped.
    let head = log.heads(partition)?.head;
    let mut c = Checkpoint { position: c.position.min(head), ..c };
    // A partition a grow added begins with copies of moved streams' history, which the
    // projection has seen in their old partitions: never deliver them again.
    let gate = log.origin(partition).map(|o| {
        c.position = c.position.max(o.live_from);
        o.cut
    });
    Ok(Arc::new(Task {
        projection: reg.clone(),
        partition,
        shadow: AtomicBool::new(shadow),
        retired: AtomicBool::new(false),
        claimed: AtomicBool::new(false),
        next: AtomicU64::new(c.position),
        last_time: AtomicU64::new(c.time),
        seq: AtomicU64::new(c.seq),
        durable: AtomicU64::new(c.position),
        error: Mutex::new(None),
        buffer: Mutex::new(Vec::new()),
        gate_open: AtomicBool::new(gate.is_none()),
        gate,
        held: AtomicBool::new(!reg.shared),
        lease: Mutex::new(None),
        owner: Mutex::new(None),
    }))
}

/// Where `reg` starts in a partition it has no task for yet: its own checkpoint if it keeps
/// them, else the start (`new_task` moves it past a grown partition's copies).
pub(super) fn start_of(reg: &Registered, partition: u32) -> Checkpoint {
    match reg.options.checkpoints {
        Checkpoints::Engine => Checkpoint::default(),
        Checkpoints::Projection => Checkpoint { position: reg.handler.checkpoint(partition), ..Default::default() },
    }
}

/// After a grow: adds the new partitions' tasks for every projection (live or rebuilding),
/// starting where their own events begin. Idempotent (a registration adds its own), and
/// `covered` rises only once every projection in the task list has every partition, so a
/// projection registered while this ran is covered by the next pass.
pub(super) fn cover_new_partitions(inner: &Inner) {
    let count = inner.log.partition_count();
    if inner.covered.load(Ordering::Acquire) >= count {
        return;
    }
    let has = |tasks: &[Arc<Task>], reg: &Arc<Registered>, p: u32| {
        tasks.iter().any(|t| Arc::ptr_eq(&t.projection, reg) && t.partition == p)
    };
    let regs = |tasks: &[Arc<Task>]| {
        let mut regs: Vec<(Arc<Registered>, bool)> = Vec::new();
        for t in tasks {
            if !t.retired.load(Ordering::Acquire) && !regs.iter().any(|(r, _)| Arc::ptr_eq(r, &t.projection)) {
                regs.push((t.projection.clone(), t.is_shadow()));
            }
        }
        regs
    };
    // Prepared outside the lock: a projection's own `checkpoint` may call into the engine.
    let current = inner.tasks.read().clone();
    let mut added: Vec<Arc<Task>> = Vec::new();
    for (reg, shadow) in regs(&current) {
        let missing: Vec<u32> = (0..count).filter(|&p| !has(&current, &reg, p)).collect();
        if missing.is_empty() {
            continue;
        }
        let extended = if reg.checkpoint_failed.load(Ordering::Acquire) {
            Err("an earlier checkpoint write failed".to_string())
        } else {
            extend_checkpoints(&reg, count).map_err(|e| e.to_string())
        };
        if let Err(why) = &extended {
            // What the file holds is unknown: never write it again, and stop the projection
            // (as after a failed checkpoint write) rather than run ahead of its checkpoints.
            reg.checkpoint_failed.store(true, Ordering::Release);
            for t in current.iter().filter(|t| Arc::ptr_eq(&t.projection, &reg)) {
                stop_task(inner, t, format!("checkpoint file: {why}"));
            }
        }
        for p in missing {
            // Not routed to yet cannot happen (the count is read first): retried later.
            let Ok(t) = new_task(&*inner.log, &reg, p, start_of(&reg, p), shadow) else { return };
            if let Err(why) = &extended {
                *t.error.lock() = Some(format!("checkpoint file, extending it to {count} partitions: {why}"));
            }
            added.push(t);
        }
    }
    let mut tasks = inner.tasks.write();
    let mut all: Vec<Arc<Task>> = tasks.iter().cloned().collect();
    // Only for projections still in the list: a rebuild may have swapped one out, or dropped
    // a failed rebuild, since the list was read.
    let live = regs(&all);
    for t in added {
        if live.iter().any(|(r, _)| Arc::ptr_eq(r, &t.projection)) && !has(&all, &t.projection, t.partition) {
            all.push(t);
        }
    }
    let complete = regs(&all).iter().all(|(reg, _)| (0..count).all(|p| has(&all, reg, p)));
    *tasks = Arc::new(all);
    if complete {
        inner.covered.fetch_max(count, Ordering::AcqRel);
    }
}

/// Whether `t` may run: always, unless a grow added its partition and the projection has not
/// yet passed every older partition's cutover point.
pub(super) fn gate_open(inner: &Inner, t: &Task) -> bool {
    if t.gate_open.load(Ordering::Acquire) {
        return true;
    }
    let Some(cut) = &t.gate else { return true };
    let tasks = inner.tasks.read().clone();
    let passed = cut.iter().enumerate().all(|(a, &c)| {
        tasks.iter().any(|o| {
            Arc::ptr_eq(&o.projection, &t.projection) && o.partition == a as u32 && o.next.load(Ordering::Acquire) >= c
        })
    });
    if passed {
        t.gate_open.store(true, Ordering::Release);
    }
    passed
}
