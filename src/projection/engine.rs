//! The engine's API: the worker pool, registering projections, their status and lag, the
//! dead-letter queue, and stopping.
//!
//! `register` first finishes or drops a rebuild a crash interrupted (FORMAT.md §13.4, reported
//! as `RecoveryAction::InterruptedRebuild`), then creates the projection's directory and opens
//! its files. With `Checkpoints::Projection` the engine keeps no checkpoint file: the projection
//! stores `Batch::next_position` with its effects and returns it from `Projection::checkpoint`.
//!
//! `replay_dead_letters` hands the pending letters (of one stream, if one is given) to the
//! projection again partition by partition, in the order of the projection's tasks, which is
//! increasing partition number (a grow's new partitions are numbered above the ones it found),
//! each partition held as a worker holds it, and within a partition in file order. A letter
//! whose position no longer holds its stream and version fails. A letter the projection handles
//! without error is resolved (outcome `replayed`); `discard_dead_letters` resolves letters with
//! outcome `discarded`. Once a letter of a stream fails, the stream's later letters are not
//! tried, in that partition or in any later one: a stream a grow moved has its letters from
//! before the cutover in its old partition and those from after it in its new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::clock::{now_nanos, system_time};
use crate::error::{Error, Result};
use crate::format::checkpoint::{self as ckp, Checkpoint};
use crate::format::dlq::Outcome;
use crate::report::RecoveryAction;
use crate::store::Store;
use crate::store::seam::Log;
use crate::sync::HeadSignal;

use super::checkpoint::{extend_checkpoints, open_checkpoints, run_checkpointer};
use super::dlq::DeadLetters;
use super::shared::run_keeper;
use super::state::{Inner, Registered, Task, dirs, new_task, start_of};
use super::worker::{guarded, run};
use super::{
    Batch, Checkpoints, DeadLetter, OnFailure, PartitionStatus, Projection, ProjectionOptions, ProjectionStatus,
    ReplayReport, View,
};

/// Runs projections over a store's partitions on a pool of worker threads.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use strata::projection::HandlerError;
/// use strata::{EventData, ExpectedVersion, Options, Projection, ProjectionEngine, RecordedEvent, Store};
///
/// #[derive(Default)]
/// struct Count(AtomicU64);
/// impl Projection for Count {
///     fn handle(&self, _: &RecordedEvent) -> Result<(), HandlerError> {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         Ok(())
///     }
/// }
///
/// let dir = tempfile::tempdir()?;
/// let store = Arc::new(Store::open(dir.path(), Options::default().create_if_missing(true))?);
/// let engine = ProjectionEngine::new(store.clone(), 2);
/// let count = Arc::new(Count::default());
/// engine.register("count", count.clone(), Default::default())?;
/// store.append("a", ExpectedVersion::Any, &[EventData::new("E", "x")])?;
/// assert!(engine.wait_caught_up("count", std::time::Duration::from_secs(5))?);
/// assert_eq!(count.0.load(Ordering::Relaxed), 1);
/// engine.stop()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ProjectionEngine {
    pub(super) inner: Arc<Inner>,
    pub(super) workers: Mutex<Vec<(usize, JoinHandle<()>)>>,
    /// Serializes `set_workers`, `register` and `rebuild` (one change of the set at a time).
    pub(super) resizing: Mutex<()>,
    /// Names being rebuilt.
    pub(super) rebuilding: Mutex<Vec<String>>,
    pub(super) checkpointer: Mutex<Option<JoinHandle<()>>>,
    /// For a shared log: the thread that holds, renews, takes and gives up leases.
    pub(super) keeper: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ProjectionEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionEngine").field("workers", &self.workers()).finish_non_exhaustive()
    }
}
impl ProjectionEngine {
    /// An engine over `store` with `workers` worker threads (at least one).
    pub fn new(store: Arc<Store>, workers: usize) -> ProjectionEngine {
        let io = store.io().clone();
        let inner = Arc::new(Inner {
            log: store,
            progress: HeadSignal::default(),
            dirty: HeadSignal::default(),
            checkpointer_stop: AtomicBool::new(false),
            io,
            tasks: RwLock::new(Arc::new(Vec::new())),
            desired: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            covered: AtomicU32::new(0),
            keeper_stop: AtomicBool::new(false),
            keeper_wake: HeadSignal::default(),
        });
        let checkpointer = {
            let inner = inner.clone();
            std::thread::Builder::new().name("strata-checkpointer".into()).spawn(move || run_checkpointer(inner)).ok()
        };
        let keeper = inner.log.shared().is_some().then(|| {
            let inner = inner.clone();
            std::thread::Builder::new().name("strata-leases".into()).spawn(move || run_keeper(inner)).ok()
        });
        let engine = ProjectionEngine {
            inner,
            workers: Mutex::new(Vec::new()),
            resizing: Mutex::new(()),
            rebuilding: Mutex::new(Vec::new()),
            checkpointer: Mutex::new(checkpointer),
            keeper: Mutex::new(keeper.flatten()),
        };
        engine.set_workers(workers.max(1));
        engine
    }

    /// Changes the number of worker threads, live. Partitions are not assigned to workers:
    /// a worker claims any (projection, partition) with events to handle, one worker at a
    /// time, so adding or removing workers rebalances at once, without a pause, and never
    /// puts two workers on one partition.
    pub fn set_workers(&self, n: usize) {
        let n = n.max(1);
        let _one_at_a_time = self.resizing.lock();
        self.inner.desired.store(n, Ordering::Release);
        // Those with ids >= n exit after their current batch; joined without holding the
        // list, so a handler asking for `workers()` meanwhile does not deadlock.
        self.inner.log.head_signal().bump();
        let gone: Vec<_> = {
            let mut workers = self.workers.lock();
            let (keep, gone): (Vec<_>, Vec<_>) = workers.drain(..).partition(|(id, _)| *id < n);
            *workers = keep;
            gone
        };
        for (_, h) in gone {
            let _ = h.join();
        }
        let mut workers = self.workers.lock();
        let running: Vec<usize> = workers.iter().map(|(id, _)| *id).collect();
        for id in (0..n).filter(|id| !running.contains(id)) {
            let inner = self.inner.clone();
            match std::thread::Builder::new().name(format!("strata-projection-{id}")).spawn(move || run(inner, id)) {
                Ok(h) => workers.push((id, h)),
                Err(_) => break,
            }
        }
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers.lock().len()
    }

    /// Registers a projection under `name` (1 to 64 of `A-Z a-z 0-9 _ -`) and starts
    /// running it from its checkpoints (position 0 in each partition the first time).
    ///
    /// Errors: [`Error::InvalidOptions`] for a bad or taken name; [`Error::Corruption`] for a
    /// damaged checkpoint file (the projection is not started: fix or remove the file, which
    /// means a rebuild from position 0).
    pub fn register<P: Projection>(&self, name: &str, projection: Arc<P>, options: ProjectionOptions) -> Result<()> {
        let _one_at_a_time = self.resizing.lock();
        if !ckp::valid_name(name) {
            return Err(Error::InvalidOptions(format!("{name:?} is not a valid projection name")));
        }
        if self.inner.tasks.read().iter().any(|t| t.projection.name == name && !t.is_shadow()) {
            return Err(Error::InvalidOptions(format!("a projection named {name:?} is registered already")));
        }
        let root = self.inner.log.dir().join("projections");
        if !root.exists() {
            self.inner.io.create_dir_all(&root)?;
            self.inner.io.sync_dir(self.inner.log.dir())?;
        }
        let (dir, old, shadow) = dirs(&root, name);
        // Finish or clean up a rebuild that a crash interrupted (see `rebuild`).
        let report = self.inner.log.report();
        let swapped_half = !dir.exists() && old.exists() && shadow.exists();
        if swapped_half {
            self.inner.io.rename(&shadow, &dir)?;
            self.inner.io.sync_dir(&root)?;
        }
        if old.exists() || shadow.exists() {
            // The rebuilt files stand if they replaced the live ones (only the old ones are
            // left to remove); a rebuild directory beside the live one was never swapped in.
            let finished = swapped_half || !shadow.exists();
            report.push(RecoveryAction::InterruptedRebuild { path: dir.clone(), finished });
        }
        for leftover in [&old, &shadow] {
            if leftover.exists() {
                self.inner.io.remove_dir_all(leftover)?;
            }
        }
        self.register_in(name, &dir, projection, options, false)?;
        Ok(())
    }

    /// Registers `projection` with its files in `dir`; a `shadow` one (a rebuild) is run but
    /// not seen by the name-based API until it is swapped in.
    pub(super) fn register_in<P: Projection>(
        &self,
        name: &str,
        dir: &std::path::Path,
        projection: Arc<P>,
        options: ProjectionOptions,
        shadow: bool,
    ) -> Result<Arc<Registered>> {
        let mut options = options;
        options.batch = options.batch.max(1);
        options.attempts = options.attempts.max(1);
        let partitions = self.inner.log.partition_count();
        let shared = !options.per_process && self.inner.log.shared().is_some();
        if shared && shadow {
            return Err(Error::Unsupported { operation: "rebuild of a shared projection", backend: "jetstream" });
        }
        self.inner.io.create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            self.inner.io.sync_dir(parent)?;
        }
        let park = options.on_failure == OnFailure::Park;
        let dlq = match options.on_failure {
            OnFailure::Stop => None,
            _ if shared => {
                Some(DeadLetters::open_shared(self.inner.log.clone(), name, park, options.max_dead_letters)?)
            }
            _ => Some(DeadLetters::open(dir, &self.inner.io, self.inner.log.report(), park, options.max_dead_letters)?),
        };
        let (checkpoints, start) = match options.checkpoints {
            // Held on the cluster, read when a lease is taken (`projection::shared`).
            _ if shared => (None, (0..partitions).map(|_| Checkpoint::default()).collect()),
            Checkpoints::Engine => {
                let (file, start) = open_checkpoints(&self.inner, dir, partitions)?;
                (Some(file), start)
            }
            Checkpoints::Projection => (
                None,
                (0..partitions)
                    .map(|p| Checkpoint { position: projection.checkpoint(p), ..Default::default() })
                    .collect(),
            ),
        };
        let any: Arc<dyn std::any::Any + Send + Sync> = projection.clone();
        let registered = Arc::new(Registered {
            name: name.to_owned(),
            handler: projection,
            any,
            options,
            checkpoints,
            dlq,
            handled: AtomicU64::new(0),
            rebuilt: Mutex::new(None),
            checkpoint_failed: AtomicBool::new(false),
            extending: Mutex::new(()),
            shared,
        });
        let mut mine: Vec<Arc<Task>> = Vec::new();
        for (p, c) in start.into_iter().enumerate() {
            mine.push(new_task(&*self.inner.log, &registered, p as u32, c, shadow)?);
        }
        // A grow may have completed since `partitions` was read.
        let now = self.inner.log.partition_count();
        if now > partitions {
            extend_checkpoints(&registered, now)?;
            for p in partitions..now {
                mine.push(new_task(&*self.inner.log, &registered, p, start_of(&registered, p), shadow)?);
            }
        }
        let mut tasks = self.inner.tasks.write();
        if !shadow && tasks.iter().any(|t| t.projection.name == name && !t.is_shadow()) {
            return Err(Error::InvalidOptions(format!("a projection named {name:?} is registered already")));
        }
        let mut all: Vec<Arc<Task>> = tasks.iter().cloned().collect();
        all.extend(mine);
        *tasks = Arc::new(all);
        // A grow may have committed after `now` was read, and a worker covered it before this
        // projection was in the list: have the workers cover again (covering is idempotent,
        // and raises `covered` under this same lock).
        self.inner.covered.fetch_min(now, Ordering::AcqRel);
        drop(tasks);
        self.inner.log.head_signal().bump();
        if shared {
            // Take a share of the partitions now rather than at the next round.
            self.inner.keeper_wake.bump();
        }
        Ok(registered)
    }

    /// The projection's live instance, with how stale it is: read it whatever state the
    /// projection is in (running, failing, stopped, rebuilding), and use the status to say
    /// how far behind the answer may be.
    ///
    /// Errors: [`Error::NoSuchProjection`] if no projection of type `P` is registered as `name`.
    pub fn view<P: Projection>(&self, name: &str) -> Result<View<P>> {
        let (reg, _) = self.registered(name)?;
        let projection = Arc::downcast::<P>(reg.any.clone())
            .map_err(|_| Error::NoSuchProjection { name: name.to_owned(), wrong_type: true })?;
        Ok(View { projection, status: self.status(name)? })
    }

    /// Where the projection stands: per partition, its position, lag (in events and in time)
    /// and any error; overall, against its SLA. Works whether the projection is running,
    /// stopped or failing, so readers of its view can say how stale it is.
    pub fn status(&self, name: &str) -> Result<ProjectionStatus> {
        let tasks = self.inner.tasks.read().clone();
        // One instance's tasks (during a rebuild's swap a snapshot could hold both).
        let reg = tasks
            .iter()
            .find(|t| t.projection.name == name && !t.is_shadow())
            .map(|t| t.projection.clone())
            .ok_or_else(|| Error::NoSuchProjection { name: name.to_owned(), wrong_type: false })?;
        let mine: Vec<&Arc<Task>> = tasks.iter().filter(|t| Arc::ptr_eq(&t.projection, &reg)).collect();
        let first = mine.first().ok_or_else(|| Error::NoSuchProjection { name: name.to_owned(), wrong_type: false })?;
        let sla = first.projection.options.sla;
        let mut status = ProjectionStatus {
            name: name.to_owned(),
            partitions: Vec::with_capacity(mine.len()),
            handled: first.projection.handled.load(Ordering::Relaxed),
            max_lag_events: 0,
            max_lag: Duration::ZERO,
            dead_letters: first.projection.dlq.as_ref().map_or(0, |d| d.len() as u64),
            last_rebuild: *first.projection.rebuilt.lock(),
            healthy: true,
        };
        for t in mine {
            let heads = self.inner.log.heads(t.partition)?;
            let (head, head_time) = (heads.head, heads.time);
            let next = t.next.load(Ordering::Acquire).min(head);
            let last = t.last_time.load(Ordering::Acquire);
            let lag_events = head - next;
            // How old the oldest unhandled event is (so a stuck projection's lag keeps growing).
            let lag = if lag_events == 0 {
                Duration::ZERO
            } else {
                let oldest = self
                    .inner
                    .log
                    .read_partition(t.partition, next, 1)
                    .ok()
                    .and_then(|v| v.first().map(|e| e.timestamp_nanos))
                    .unwrap_or(head_time);
                Duration::from_nanos(now_nanos().saturating_sub(oldest))
            };
            let error = t.error.lock().clone();
            let here = t.held.load(Ordering::Acquire);
            let owner = if !t.projection.shared {
                None
            } else if here {
                self.inner.log.shared().map(|s| s.owner().to_owned())
            } else {
                t.owner.lock().clone()
            };
            status.healthy &= error.is_none() && lag <= sla;
            status.max_lag_events = status.max_lag_events.max(lag_events);
            status.max_lag = status.max_lag.max(lag);
            status.partitions.push(PartitionStatus {
                partition: t.partition,
                next_position: next,
                checkpointed: t.durable.load(Ordering::Acquire),
                head,
                lag_events,
                lag,
                last_handled: (last > 0).then(|| system_time(last)),
                error,
                owner,
                here,
            });
        }
        Ok(status)
    }

    /// Waits until the projection has handled everything durable when this is called, or
    /// `timeout` passes (returns `false`), or a partition stops
    /// ([`Error::ProjectionStopped`]).
    pub fn wait_caught_up(&self, name: &str, timeout: Duration) -> Result<bool> {
        let deadline =
            Instant::now().checked_add(timeout).unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 30));
        let heads: Vec<u64> = self.status(name)?.partitions.iter().map(|p| p.head).collect();
        loop {
            let seen = self.inner.progress.seq();
            let s = self.status(name)?;
            if let Some((partition, reason)) =
                s.partitions.iter().find_map(|p| p.error.clone().map(|e| (p.partition, e)))
            {
                return Err(Error::ProjectionStopped {
                    projection: name.to_owned(),
                    partition: Some(partition),
                    reason,
                });
            }
            if s.partitions.iter().zip(&heads).all(|(p, h)| p.next_position >= *h) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.inner.progress.wait(seen, deadline - now);
        }
    }

    pub(super) fn registered(&self, name: &str) -> Result<(Arc<Registered>, Vec<Arc<Task>>)> {
        let all = self.inner.tasks.read().clone();
        let reg = all
            .iter()
            .find(|t| t.projection.name == name && !t.is_shadow())
            .map(|t| t.projection.clone())
            .ok_or_else(|| Error::NoSuchProjection { name: name.to_owned(), wrong_type: false })?;
        let tasks = all.iter().filter(|t| Arc::ptr_eq(&t.projection, &reg)).cloned().collect();
        Ok((reg, tasks))
    }

    /// The names of the registered projections.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.inner.tasks.read().iter().filter(|t| !t.is_shadow()).map(|t| t.projection.name.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// The projection's lag SLA.
    pub(crate) fn sla(&self, name: &str) -> Result<Duration> {
        Ok(self.registered(name)?.0.options.sla)
    }

    /// The events waiting in the projection's dead-letter queue, oldest first.
    pub fn dead_letters(&self, name: &str) -> Result<Vec<DeadLetter>> {
        let (reg, _) = self.registered(name)?;
        let Some(d) = &reg.dlq else { return Ok(Vec::new()) };
        d.refresh()?;
        Ok(d.pending().into_iter().map(DeadLetter::from).collect())
    }

    /// Hands the dead letters (of `stream` only, if given) to the projection again, oldest
    /// first, each while holding its partition (no worker runs the partition meanwhile). One
    /// that succeeds leaves the queue; once a stream fails, its later letters are not tried
    /// (order is kept). A parked stream with no letters left is unparked, and its next events
    /// go to the projection again.
    pub fn replay_dead_letters(&self, name: &str, stream: Option<&str>) -> Result<ReplayReport> {
        let (reg, tasks) = self.registered(name)?;
        let Some(dlq) = &reg.dlq else { return Ok(ReplayReport::default()) };
        dlq.refresh()?;
        let mut report = ReplayReport::default();
        // Across partitions: a stream a grow moved has letters in its old partition and its
        // new one, and the new one's come later.
        let mut failed_streams: Vec<String> = Vec::new();
        for t in &tasks {
            // Hold the partition, as a worker would.
            while !t.claim() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let result = (|| -> Result<()> {
                if t.retired.load(Ordering::Acquire) {
                    return Ok(()); // replaced by a rebuild meanwhile
                }
                if !t.held.load(Ordering::Acquire) {
                    // A shared projection's partition another process runs: its letters are
                    // replayed there, in order with its events.
                    return Ok(());
                }
                for l in dlq.pending().into_iter().filter(|l| l.partition == t.partition) {
                    if stream.is_some_and(|s| s != l.stream) || failed_streams.contains(&l.stream) {
                        continue;
                    }
                    let event = self.inner.log.read_partition(l.partition, l.position, 1)?.pop();
                    let outcome = match event {
                        Some(e) if e.stream_id == l.stream && e.version == l.version => {
                            let batch =
                                Batch { partition: e.partition, events: std::slice::from_ref(&e), replay: true };
                            guarded(|| reg.handler.handle_batch(&batch), 1)
                                .map_err(|b| b.map_or_else(|| "the handler panicked".into(), |b| b.error))
                        }
                        _ => Err(format!("event at position {} is not in the log", l.position).into()),
                    };
                    match outcome {
                        Ok(()) => {
                            dlq.resolve(l.id, Outcome::Replayed)?;
                            report.replayed += 1;
                        }
                        Err(e) => {
                            report.failed.push((l.id, e.to_string()));
                            failed_streams.push(l.stream);
                        }
                    }
                }
                Ok(())
            })();
            t.release();
            result?;
        }
        self.inner.log.head_signal().bump();
        Ok(report)
    }

    /// Removes the dead letters with these ids from the queue without handling them;
    /// returns how many were there. A parked stream with none left is unparked.
    pub fn discard_dead_letters(&self, name: &str, ids: &[u64]) -> Result<usize> {
        let (reg, _) = self.registered(name)?;
        let Some(dlq) = &reg.dlq else { return Ok(0) };
        dlq.refresh()?;
        let mut n = 0;
        for &id in ids {
            n += usize::from(dlq.resolve(id, Outcome::Discarded)?);
        }
        self.inner.log.head_signal().bump();
        Ok(n)
    }

    /// Stops the workers after their current batches, then makes their checkpoints durable.
    pub fn stop(self) -> Result<()> {
        self.shutdown();
        Ok(())
    }

    fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.log.head_signal().bump();
        for (_, h) in self.workers.lock().drain(..) {
            let _ = h.join();
        }
        self.inner.checkpointer_stop.store(true, Ordering::Release);
        self.inner.dirty.bump();
        if let Some(h) = self.checkpointer.lock().take() {
            let _ = h.join();
        }
        // Last, with every checkpoint stored: give the leases up, so that the other
        // processes take the partitions at once rather than when the leases expire.
        self.inner.keeper_stop.store(true, Ordering::Release);
        self.inner.keeper_wake.bump();
        if let Some(h) = self.keeper.lock().take() {
            let _ = h.join();
        }
    }
}

impl Drop for ProjectionEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
