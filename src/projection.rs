//! The projection engine: registered projections run on a pool of worker threads that
//! follow the partitions' logs, one worker at a time per (projection, partition), in
//! position order, with durable checkpoints. Appends never wait for it: workers read what
//! is durable and are woken by the writers' head signal.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use crate::dlq::DeadLetters;
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::format::checkpoint::{self as ckp, Checkpoint};
use crate::format::dlq::Outcome;
use crate::io::{FileHandle, Io};
use crate::partition::HeadSignal;
use crate::segment::{blank_event, fill_event};
use crate::store::{RecoveryAction, Store, now_nanos};

/// The error a projection handler returns.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Events of one partition handed to a projection, in position order (the positions of
/// events sent to the dead-letter queue are skipped).
#[derive(Debug)]
#[non_exhaustive]
pub struct Batch<'a> {
    /// The partition.
    pub partition: u32,
    /// The events, in position order.
    pub events: &'a [RecordedEvent],
    /// A dead letter handed back by [`ProjectionEngine::replay_dead_letters`]: its position
    /// is behind the projection's, so a projection keeping its own checkpoints must not store
    /// [`Batch::next_position`] for it.
    pub replay: bool,
}

impl Batch<'_> {
    /// The position after the batch's last event: what a projection that keeps its own
    /// checkpoints ([`Checkpoints::Projection`]) stores with the effects of this batch, in
    /// the same transaction.
    pub fn next_position(&self) -> u64 {
        self.events.last().map_or(0, |e| e.position + 1)
    }
}

/// A batch failed at one of its events: the ones before it count as handled.
#[derive(Debug)]
pub struct BatchError {
    /// Index in [`Batch::events`] of the event that failed.
    pub index: usize,
    /// Why.
    pub error: HandlerError,
}

/// A read model (or any consumer) fed by the engine.
///
/// The engine calls a projection from several worker threads, but never concurrently for the
/// same partition, and always in position order within a partition (so in version order
/// within a stream). Delivery is **at least once** with [`Checkpoints::Engine`]: after a
/// crash, the events of the last batch whose checkpoint was not yet durable are delivered
/// again; make handling idempotent, or keep your own checkpoints
/// ([`Checkpoints::Projection`]) in the same transaction as your effects for exactly-once
/// effects.
///
/// A handler that panics is treated as failing on the event; after a panic in a batch of
/// several events, the batch is handed over again one event at a time (so the events before
/// the panicking one are delivered twice).
///
/// Keep the state of a projection with engine-kept checkpoints durable (a database, a
/// file): the checkpoints say what was handled, and an in-memory state would be empty after
/// a restart. An in-memory read model should be rebuilt at start ([`ProjectionEngine::rebuild`],
/// or a fresh name) or keep its own checkpoints.
pub trait Projection: Send + Sync + 'static {
    /// Handles one event.
    fn handle(&self, event: &RecordedEvent) -> std::result::Result<(), HandlerError>;

    /// Handles a batch of one partition's events (by default, one by one with
    /// [`Projection::handle`]). Override it to apply a batch in one transaction.
    fn handle_batch(&self, batch: &Batch<'_>) -> std::result::Result<(), BatchError> {
        for (index, e) in batch.events.iter().enumerate() {
            self.handle(e).map_err(|error| BatchError { index, error })?;
        }
        Ok(())
    }

    /// Clears the projection's state, before a [`ProjectionEngine::rebuild`] replays every
    /// event into it (by default, nothing to clear).
    fn reset(&self) -> std::result::Result<(), HandlerError> {
        Ok(())
    }

    /// With [`Checkpoints::Projection`]: the next position to handle in `partition`, as
    /// stored with the projection's own state (0 if it has none). Not called otherwise.
    fn checkpoint(&self, partition: u32) -> u64 {
        let _ = partition;
        0
    }
}

/// Who keeps a projection's checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpoints {
    /// The engine, in `projections/<name>/checkpoints`, written by a background checkpointer
    /// right after batches are handled (at-least-once: after a crash, the events handled
    /// since the last durable checkpoint, a round's batches at most, are delivered again).
    #[default]
    Engine,
    /// The projection, with its effects, in one transaction of its own (exactly-once
    /// effects): it stores [`Batch::next_position`] and returns it from
    /// [`Projection::checkpoint`].
    Projection,
}

/// What happens to an event the projection keeps failing on (after the retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// It goes to the projection's durable dead-letter queue and the projection goes on.
    #[default]
    DeadLetter,
    /// As `DeadLetter`, and its stream is parked: the stream's later events go to the
    /// dead-letter queue too, in order, unhandled, until its dead letters are replayed or
    /// discarded. Per-stream order is never broken.
    Park,
    /// The partition stops at the event (the others go on) until the projection is
    /// registered again.
    Stop,
}

/// How a projection is run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProjectionOptions {
    /// Most events per batch (default 4096).
    pub batch: usize,
    /// Attempts per event before the partition stops (default 3).
    pub attempts: u32,
    /// Wait before the first retry, doubled for each next one (default 10 ms).
    pub backoff: Duration,
    /// Lag (head time minus last handled time) above which the projection is unhealthy
    /// (default 5 s).
    pub sla: Duration,
    /// Who keeps checkpoints.
    pub checkpoints: Checkpoints,
    /// What happens to an event that keeps failing.
    pub on_failure: OnFailure,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            batch: 4096,
            attempts: 3,
            backoff: Duration::from_millis(10),
            sla: Duration::from_secs(5),
            checkpoints: Checkpoints::Engine,
            on_failure: OnFailure::DeadLetter,
        }
    }
}

impl ProjectionOptions {
    /// Sets the batch size.
    pub fn batch(mut self, events: usize) -> Self {
        self.batch = events.max(1);
        self
    }
    /// Sets the retry policy.
    pub fn retry(mut self, attempts: u32, backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self
    }
    /// Sets the lag SLA.
    pub fn sla(mut self, sla: Duration) -> Self {
        self.sla = sla;
        self
    }
    /// Sets who keeps checkpoints.
    pub fn checkpoints(mut self, who: Checkpoints) -> Self {
        self.checkpoints = who;
        self
    }
    /// Sets what happens to an event that keeps failing.
    pub fn on_failure(mut self, what: OnFailure) -> Self {
        self.on_failure = what;
        self
    }
}

/// Where a projection stands in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionStatus {
    /// The partition.
    pub partition: u32,
    /// The next position to handle (everything before it is handled).
    pub next_position: u64,
    /// The position the durable checkpoint holds (where a restart resumes).
    pub checkpointed: u64,
    /// The partition's head (one past its last durable position).
    pub head: u64,
    /// Events appended but not handled yet.
    pub lag_events: u64,
    /// How far behind in time: the head's timestamp minus the last handled event's (zero
    /// when caught up).
    pub lag: Duration,
    /// Timestamp of the last handled event (`None` before the first).
    pub last_handled: Option<SystemTime>,
    /// Why the partition stopped, if it did (a handler that kept failing).
    pub error: Option<String>,
}

/// Where a projection stands: per partition, and summed up against its SLA.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// The projection.
    pub name: String,
    /// Per partition.
    pub partitions: Vec<PartitionStatus>,
    /// Events handled since registration.
    pub handled: u64,
    /// The largest lag in events.
    pub max_lag_events: u64,
    /// The largest lag in time.
    pub max_lag: Duration,
    /// Events waiting in the dead-letter queue.
    pub dead_letters: u64,
    /// How long the rebuild that produced the live instance took (`None`: not rebuilt).
    pub last_rebuild: Option<Duration>,
    /// Within its SLA, and no partition stopped.
    pub healthy: bool,
}

impl ProjectionStatus {
    /// Whether every partition has handled everything up to its head as of this status.
    pub fn caught_up(&self) -> bool {
        self.partitions.iter().all(|p| p.lag_events == 0)
    }
}

/// An event a projection could not handle, waiting in its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its id in the queue (for [`ProjectionEngine::discard_dead_letters`]).
    pub id: u64,
    /// Where the event is.
    pub partition: u32,
    /// Its position.
    pub position: u64,
    /// Its stream.
    pub stream: String,
    /// Its version.
    pub version: u64,
    /// How many times the handler failed on it (0: its stream was parked).
    pub attempts: u32,
    /// The handler's last error (or why it was not handled).
    pub error: String,
    /// When it was added.
    pub time: SystemTime,
}

impl From<crate::format::dlq::Letter> for DeadLetter {
    fn from(l: crate::format::dlq::Letter) -> Self {
        DeadLetter {
            id: l.id,
            partition: l.partition,
            position: l.position,
            stream: l.stream,
            version: l.version,
            attempts: l.attempts,
            error: l.error,
            time: UNIX_EPOCH + Duration::from_nanos(l.time),
        }
    }
}

/// What [`ProjectionEngine::replay_dead_letters`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Dead letters handled and removed from the queue.
    pub replayed: usize,
    /// Those that failed again: id and error (they stay in the queue).
    pub failed: Vec<(u64, String)>,
}

/// What [`ProjectionEngine::rebuild`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RebuildReport {
    /// From the start of the rebuild to the swap.
    pub duration: Duration,
    /// Events the rebuilt instance handled before the swap.
    pub events: u64,
}

/// A projection's live instance and how stale it is (see [`ProjectionEngine::view`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct View<P> {
    /// The instance serving reads.
    pub projection: Arc<P>,
    /// Where it stands: per partition, the last handled position and time, the lag, errors.
    pub status: ProjectionStatus,
}

/// The directory of projection `name`, and those a rebuild uses beside it.
fn dirs(root: &std::path::Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    (root.join(name), root.join(format!("{name}.old")), root.join(format!("{name}.rebuild")))
}

/// One (projection, partition): the unit a worker claims.
struct Task {
    projection: Arc<Registered>,
    partition: u32,
    /// A rebuild not swapped in yet: run, but invisible to the name-based API.
    shadow: AtomicBool,
    /// Replaced by a rebuild (or a failed one dropped): never run again. Set while claimed.
    retired: AtomicBool,
    claimed: AtomicBool,
    next: AtomicU64,
    last_time: AtomicU64,
    /// Times this partition's checkpoint was written (the checkpointer's alone).
    seq: AtomicU64,
    /// The position the durable checkpoint holds.
    durable: AtomicU64,
    error: Mutex<Option<String>>,
    /// Reused from batch to batch, so reading allocates nothing once warm.
    buffer: Mutex<Vec<RecordedEvent>>,
    /// For a partition a grow added: the heads the partitions before it had at the cutover.
    /// Its events wait until the projection has passed all of them, so that a moved stream's
    /// events after the cutover never overtake its events before.
    gate: Option<Vec<u64>>,
    /// Set once the gate has been passed (it never closes again).
    gate_open: AtomicBool,
}

impl Task {
    fn claim(&self) -> bool {
        self.claimed.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }
    fn release(&self) {
        self.claimed.store(false, Ordering::Release);
    }
    fn is_shadow(&self) -> bool {
        self.shadow.load(Ordering::Acquire)
    }
}

struct Registered {
    name: String,
    handler: Arc<dyn Projection>,
    /// The same instance, for [`ProjectionEngine::view`].
    any: Arc<dyn std::any::Any + Send + Sync>,
    options: ProjectionOptions,
    /// The engine's checkpoint file (with [`Checkpoints::Engine`]).
    checkpoints: Option<FileHandle>,
    /// The dead-letter queue (unless [`OnFailure::Stop`]).
    dlq: Option<DeadLetters>,
    handled: AtomicU64,
    /// How long the rebuild that produced this instance took.
    rebuilt: Mutex<Option<Duration>>,
    /// A checkpoint write or sync failed: the file is not written again.
    checkpoint_failed: AtomicBool,
    /// Held while the checkpoint file is extended for a grown store (one extension at a time).
    extending: Mutex<()>,
}

struct Inner {
    store: Arc<Store>,
    signal: Arc<HeadSignal>,
    /// Bumped whenever a task advances (for [`ProjectionEngine::wait_caught_up`]).
    progress: HeadSignal,
    /// Bumped when a task with engine-kept checkpoints advances (wakes the checkpointer).
    dirty: HeadSignal,
    checkpointer_stop: AtomicBool,
    io: Io,
    tasks: RwLock<Arc<Vec<Arc<Task>>>>,
    /// Workers with an id at or above this exit after their current batch.
    desired: AtomicUsize,
    stop: AtomicBool,
    /// The partition count the tasks cover; below the store's after a grow, until the
    /// workers add the new partitions' tasks.
    covered: std::sync::atomic::AtomicU32,
}

/// Runs projections over a store's partitions on a pool of worker threads.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use strata::{EventData, ExpectedVersion, HandlerError, Options, Projection, ProjectionEngine, RecordedEvent, Store};
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
    inner: Arc<Inner>,
    workers: Mutex<Vec<(usize, JoinHandle<()>)>>,
    /// Serializes `set_workers`, `register` and `rebuild` (one change of the set at a time).
    resizing: Mutex<()>,
    /// Names being rebuilt.
    rebuilding: Mutex<Vec<String>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ProjectionEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionEngine").field("workers", &self.workers()).finish_non_exhaustive()
    }
}

impl ProjectionEngine {
    /// An engine over `store` with `workers` worker threads (at least one).
    pub fn new(store: Arc<Store>, workers: usize) -> ProjectionEngine {
        let signal = store.head_signal();
        let io = store.io();
        let inner = Arc::new(Inner {
            store,
            signal,
            progress: HeadSignal::default(),
            dirty: HeadSignal::default(),
            checkpointer_stop: AtomicBool::new(false),
            io,
            tasks: RwLock::new(Arc::new(Vec::new())),
            desired: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            covered: std::sync::atomic::AtomicU32::new(0),
        });
        let checkpointer = {
            let inner = inner.clone();
            std::thread::Builder::new().name("strata-checkpointer".into()).spawn(move || run_checkpointer(inner)).ok()
        };
        let engine = ProjectionEngine {
            inner,
            workers: Mutex::new(Vec::new()),
            resizing: Mutex::new(()),
            rebuilding: Mutex::new(Vec::new()),
            checkpointer: Mutex::new(checkpointer),
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
        self.inner.signal.bump();
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
        let root = self.inner.store.path().join("projections");
        if !root.exists() {
            std::fs::create_dir_all(&root).map_err(|e| Error::io("create directory", &root, e))?;
            self.inner.io.sync_dir(self.inner.store.path())?;
        }
        let (dir, old, shadow) = dirs(&root, name);
        // Finish or clean up a rebuild that a crash interrupted (see `rebuild`).
        let report = self.inner.store.report_to();
        let swapped_half = !dir.exists() && old.exists() && shadow.exists();
        if swapped_half {
            self.inner.io.rename(&shadow, &dir)?;
            self.inner.io.sync_dir(&root)?;
        }
        if old.exists() || shadow.exists() {
            // The rebuilt files stand if they replaced the live ones (only the old ones are
            // left to remove); a rebuild directory beside the live one was never swapped in.
            let finished = swapped_half || !shadow.exists();
            report.lock().push(RecoveryAction::InterruptedRebuild { path: dir.clone(), finished });
        }
        for leftover in [&old, &shadow] {
            if leftover.exists() {
                std::fs::remove_dir_all(leftover).map_err(|e| Error::io("remove", leftover, e))?;
            }
        }
        self.register_in(name, &dir, projection, options, false)?;
        Ok(())
    }

    /// Registers `projection` with its files in `dir`; a `shadow` one (a rebuild) is run but
    /// not seen by the name-based API until it is swapped in.
    fn register_in<P: Projection>(
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
        let partitions = self.inner.store.partition_count();
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        if let Some(parent) = dir.parent() {
            self.inner.io.sync_dir(parent)?;
        }
        let dlq = match options.on_failure {
            OnFailure::Stop => None,
            other => {
                Some(DeadLetters::open(dir, &self.inner.io, self.inner.store.report_to(), other == OnFailure::Park)?)
            }
        };
        let (checkpoints, start) = match options.checkpoints {
            Checkpoints::Engine => {
                let (file, start) = self.open_checkpoints(dir, partitions)?;
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
        });
        let mut mine: Vec<Arc<Task>> = Vec::new();
        for (p, c) in start.into_iter().enumerate() {
            mine.push(new_task(&self.inner.store, &registered, p as u32, c, shadow)?);
        }
        // A grow may have completed since `partitions` was read.
        let now = self.inner.store.partition_count();
        if now > partitions {
            extend_checkpoints(&registered, now)?;
            for p in partitions..now {
                mine.push(new_task(&self.inner.store, &registered, p, start_of(&registered, p), shadow)?);
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
        self.inner.signal.bump();
        Ok(registered)
    }

    /// Rebuilds the projection from position 0 of every partition, in parallel on the worker
    /// pool, into `fresh` (a new, empty instance), while the live instance keeps handling new
    /// events and serving reads. Once the rebuild has caught up with the heads, it replaces
    /// the live instance atomically: its checkpoints and dead-letter queue replace the live
    /// ones on disk (one directory rename), and [`ProjectionEngine::view`] returns `fresh` from
    /// then on. Blocks until then; returns how long it took (also in the status).
    ///
    /// A crash during a rebuild leaves the live projection as it was (the half-built one is
    /// removed at the next registration), or, if it came after the swap began, the rebuilt
    /// one.
    pub fn rebuild<P: Projection>(&self, name: &str, fresh: Arc<P>) -> Result<RebuildReport> {
        let (live, _) = self.registered(name)?;
        {
            let mut rebuilding = self.rebuilding.lock();
            if rebuilding.iter().any(|n| n == name) {
                return Err(Error::InvalidOptions(format!("{name:?} is being rebuilt already")));
            }
            rebuilding.push(name.to_owned());
        }
        let result = self.rebuild_from_scratch(name, live, fresh);
        self.rebuilding.lock().retain(|n| n != name);
        result
    }

    fn rebuild_from_scratch<P: Projection>(
        &self,
        name: &str,
        live: Arc<Registered>,
        fresh: Arc<P>,
    ) -> Result<RebuildReport> {
        fresh.reset().map_err(|e| Error::ProjectionStopped {
            projection: name.to_owned(),
            partition: None,
            reason: format!("resetting the rebuilt instance failed: {e}"),
        })?;
        let started = Instant::now();
        let root = self.inner.store.path().join("projections");
        let (dir, old, shadow_dir) = dirs(&root, name);
        if shadow_dir.exists() {
            std::fs::remove_dir_all(&shadow_dir).map_err(|e| Error::io("remove", &shadow_dir, e))?;
        }
        let shadow = self.register_in(name, &shadow_dir, fresh, live.options.clone(), true)?;
        let shadow_tasks: Vec<Arc<Task>> =
            self.inner.tasks.read().iter().filter(|t| Arc::ptr_eq(&t.projection, &shadow)).cloned().collect();
        // Catch up with the heads as they are now (the live one goes on meanwhile).
        let heads: Vec<u64> = shadow_tasks
            .iter()
            .map(|t| self.inner.store.partition_ref(t.partition).map(|p| p.head()))
            .collect::<Result<_>>()?;
        loop {
            let seen = self.inner.progress.seq();
            if let Some((partition, e)) =
                shadow_tasks.iter().find_map(|t| t.error.lock().clone().map(|e| (t.partition, e)))
            {
                self.retire(&shadow, &shadow_tasks);
                return Err(Error::ProjectionStopped {
                    projection: name.to_owned(),
                    partition: Some(partition),
                    reason: format!("the rebuild stopped: {e}"),
                });
            }
            if shadow_tasks.iter().zip(&heads).all(|(t, h)| t.next.load(Ordering::Acquire) >= *h) {
                break;
            }
            if self.inner.stop.load(Ordering::Acquire) {
                self.retire(&shadow, &shadow_tasks);
                return Err(Error::Closed);
            }
            self.inner.progress.wait(seen, Duration::from_millis(100));
        }
        // Swap: hold every task of both, so no batch runs; let the checkpointer make the
        // rebuilt positions durable; then one rename puts the rebuilt files in place.
        // Re-read both task lists: a grow may have added partitions since the rebuild began.
        let (live_tasks, shadow_tasks): (Vec<Arc<Task>>, Vec<Arc<Task>>) = {
            let tasks = self.inner.tasks.read();
            let of = |r: &Arc<Registered>| tasks.iter().filter(|t| Arc::ptr_eq(&t.projection, r)).cloned().collect();
            (of(&live), of(&shadow))
        };
        let all: Vec<&Arc<Task>> = live_tasks.iter().chain(&shadow_tasks).collect();
        for t in &all {
            while !t.claim() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let renamed = (|| -> Result<()> {
            // The rebuilt positions durable (as far as the log is), within a bounded wait.
            let deadline = Instant::now() + Duration::from_secs(60);
            let durable = |t: &Arc<Task>| {
                let on_disk =
                    self.inner.store.partition_ref(t.partition).map_or(0, |p| p.durable_head.load(Ordering::Acquire));
                t.durable.load(Ordering::Acquire) >= t.next.load(Ordering::Acquire).min(on_disk)
            };
            while shadow.checkpoints.is_some() && !shadow_tasks.iter().all(durable) {
                if shadow.checkpoint_failed.load(Ordering::Acquire) || Instant::now() >= deadline {
                    return Err(Error::ProjectionStopped {
                        projection: name.to_owned(),
                        partition: None,
                        reason: "the rebuilt instance could not make its checkpoints durable".into(),
                    });
                }
                self.inner.dirty.bump();
                std::thread::sleep(Duration::from_millis(1));
            }
            self.inner.io.rename(&dir, &old)?;
            if let Err(e) = self.inner.io.rename(&shadow_dir, &dir) {
                // Put the live files back; the rebuild is dropped.
                let _ = self.inner.io.rename(&old, &dir);
                return Err(e);
            }
            Ok(())
        })();
        if renamed.is_ok() {
            // From here the rebuilt files are the projection's: commit in memory whatever the
            // cleanup below does (registration finishes it after a crash).
            let mut tasks = self.inner.tasks.write();
            let kept: Vec<Arc<Task>> = tasks.iter().filter(|t| !Arc::ptr_eq(&t.projection, &live)).cloned().collect();
            // Every task of each, as the list is now (a grow may have added some since).
            for t in tasks.iter() {
                if Arc::ptr_eq(&t.projection, &live) {
                    t.retired.store(true, Ordering::Release);
                } else if Arc::ptr_eq(&t.projection, &shadow) {
                    t.shadow.store(false, Ordering::Release);
                }
            }
            *tasks = Arc::new(kept);
        } else {
            for t in &shadow_tasks {
                t.retired.store(true, Ordering::Release);
            }
            self.drop_tasks(&shadow);
        }
        for t in &all {
            t.release();
        }
        renamed?;
        self.inner.io.sync_dir(&root)?;
        std::fs::remove_dir_all(&old).map_err(|e| Error::io("remove", &old, e))?;
        let report = RebuildReport { duration: started.elapsed(), events: shadow.handled.load(Ordering::Relaxed) };
        *shadow.rebuilt.lock() = Some(report.duration);
        self.inner.signal.bump();
        Ok(report)
    }

    /// Takes a projection's tasks out of the pool for good (waiting for any batch in flight).
    fn retire(&self, reg: &Arc<Registered>, tasks: &[Arc<Task>]) {
        for t in tasks {
            while !t.claim() {
                std::thread::sleep(Duration::from_micros(200));
            }
            t.retired.store(true, Ordering::Release);
            t.release();
        }
        self.drop_tasks(reg);
    }

    fn drop_tasks(&self, reg: &Arc<Registered>) {
        let mut tasks = self.inner.tasks.write();
        let kept: Vec<Arc<Task>> = tasks.iter().filter(|t| !Arc::ptr_eq(&t.projection, reg)).cloned().collect();
        *tasks = Arc::new(kept);
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

    fn open_checkpoints(&self, dir: &std::path::Path, partitions: u32) -> Result<(FileHandle, Vec<Checkpoint>)> {
        let io = &self.inner.io;
        let path = dir.join(ckp::FILE_NAME);
        let report = self.inner.store.report_to();
        let (mut start, header_count) = match std::fs::read(&path) {
            Ok(bytes) => {
                let mut ignored = Vec::new();
                let start = ckp::decode_noting(&bytes, &mut ignored)
                    .map_err(|(offset, why)| Error::corruption(&path, offset, why))?;
                for (offset, reason) in ignored {
                    report.lock().push(RecoveryAction::IgnoredCheckpointSlot { path: path.clone(), offset, reason });
                }
                (start, ckp::header_fields(&bytes).map(|(count, _)| count))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), None),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        if header_count.is_some_and(|count| count as usize != start.len()) {
            // Slots past the header's count: an extension interrupted before its header was
            // rewritten (see `format::checkpoint`). Rewritten below.
            report.lock().push(RecoveryAction::FinishedCheckpointExtension { path: path.clone() });
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
            let part = self.inner.store.partition_ref(t.partition)?;
            let head = part.head();
            let head_time = part.head_time.load(Ordering::Acquire);
            let next = t.next.load(Ordering::Acquire).min(head);
            let last = t.last_time.load(Ordering::Acquire);
            let lag_events = head - next;
            // How old the oldest unhandled event is (so a stuck projection's lag keeps growing).
            let lag = if lag_events == 0 {
                Duration::ZERO
            } else {
                let oldest = self
                    .inner
                    .store
                    .read_partition(t.partition, next, 1)
                    .ok()
                    .and_then(|v| v.first().map(|e| e.timestamp_nanos))
                    .unwrap_or(head_time);
                Duration::from_nanos(now_nanos().saturating_sub(oldest))
            };
            let error = t.error.lock().clone();
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
                last_handled: (last > 0).then(|| UNIX_EPOCH + Duration::from_nanos(last)),
                error,
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

    fn registered(&self, name: &str) -> Result<(Arc<Registered>, Vec<Arc<Task>>)> {
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
        Ok(reg.dlq.as_ref().map_or_else(Vec::new, |d| d.pending().into_iter().map(DeadLetter::from).collect()))
    }

    /// Hands the dead letters (of `stream` only, if given) to the projection again, oldest
    /// first, each while holding its partition (no worker runs the partition meanwhile). One
    /// that succeeds leaves the queue; once a stream fails, its later letters are not tried
    /// (order is kept). A parked stream with no letters left is unparked, and its next events
    /// go to the projection again.
    pub fn replay_dead_letters(&self, name: &str, stream: Option<&str>) -> Result<ReplayReport> {
        let (reg, tasks) = self.registered(name)?;
        let Some(dlq) = &reg.dlq else { return Ok(ReplayReport::default()) };
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
                for l in dlq.pending().into_iter().filter(|l| l.partition == t.partition) {
                    if stream.is_some_and(|s| s != l.stream) || failed_streams.contains(&l.stream) {
                        continue;
                    }
                    let event = self.inner.store.read_partition(l.partition, l.position, 1)?.pop();
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
        self.inner.signal.bump();
        Ok(report)
    }

    /// Removes the dead letters with these ids from the queue without handling them;
    /// returns how many were there. A parked stream with none left is unparked.
    pub fn discard_dead_letters(&self, name: &str, ids: &[u64]) -> Result<usize> {
        let (reg, _) = self.registered(name)?;
        let Some(dlq) = &reg.dlq else { return Ok(0) };
        let mut n = 0;
        for &id in ids {
            n += usize::from(dlq.resolve(id, Outcome::Discarded)?);
        }
        self.inner.signal.bump();
        Ok(n)
    }

    /// Stops the workers after their current batches, then makes their checkpoints durable.
    pub fn stop(self) -> Result<()> {
        self.shutdown();
        Ok(())
    }

    fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.signal.bump();
        for (_, h) in self.workers.lock().drain(..) {
            let _ = h.join();
        }
        self.inner.checkpointer_stop.store(true, Ordering::Release);
        self.inner.dirty.bump();
        if let Some(h) = self.checkpointer.lock().take() {
            let _ = h.join();
        }
    }
}

impl Drop for ProjectionEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A worker: claims (projection, partition) tasks with work, handles a batch of each, and
/// sleeps on the head signal when there is nothing to do.
/// A task for `partition`, starting at checkpoint `c`.
fn new_task(store: &Store, reg: &Arc<Registered>, partition: u32, c: Checkpoint, shadow: bool) -> Result<Arc<Task>> {
    // A checkpoint past the head: the log lost a tail the projection had handled (a crash
    // under Buffered durability). Its positions will be reused by new events, which must not
    // be skipped.
    let head = store.partition_ref(partition)?.head();
    let mut c = Checkpoint { position: c.position.min(head), ..c };
    // A partition a grow added begins with copies of moved streams' history, which the
    // projection has seen in their old partitions: never deliver them again.
    let origin = store.partition_origin(partition);
    let gate = origin.map(|(live_from, cut)| {
        c.position = c.position.max(live_from);
        cut
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
    }))
}

/// Where `reg` starts in a partition it has no task for yet: its own checkpoint if it keeps
/// them, else the start (`new_task` moves it past a grown partition's copies).
fn start_of(reg: &Registered, partition: u32) -> Checkpoint {
    match reg.options.checkpoints {
        Checkpoints::Engine => Checkpoint::default(),
        Checkpoints::Projection => Checkpoint { position: reg.handler.checkpoint(partition), ..Default::default() },
    }
}

/// Makes `reg`'s checkpoint file (if the engine keeps it) cover `count` partitions, in place:
/// zeros to the new length, then the header (see `format::checkpoint`).
fn extend_checkpoints(reg: &Registered, count: u32) -> Result<()> {
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

/// After a grow: adds the new partitions' tasks for every projection (live or rebuilding),
/// starting where their own events begin. Idempotent (a registration adds its own), and
/// `covered` rises only once every projection in the task list has every partition, so a
/// projection registered while this ran is covered by the next pass.
fn cover_new_partitions(inner: &Inner) {
    let count = inner.store.partition_count();
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
            let Ok(t) = new_task(&inner.store, &reg, p, start_of(&reg, p), shadow) else { return };
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
fn gate_open(inner: &Inner, t: &Task) -> bool {
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

fn run(inner: Arc<Inner>, id: usize) {
    let mut turn = id;
    loop {
        if inner.stop.load(Ordering::Acquire) || id >= inner.desired.load(Ordering::Acquire) {
            return;
        }
        if inner.store.partition_count() > inner.covered.load(Ordering::Acquire) {
            cover_new_partitions(&inner);
        }
        let seen = inner.signal.seq();
        let tasks = inner.tasks.read().clone();
        let mut worked = false;
        let n = tasks.len();
        for k in 0..n {
            let Some(t) = tasks.get((turn + k) % n) else { continue };
            if !has_work(&inner, t) || !t.claim() {
                continue;
            }
            // Check again under the claim: another worker may have just handled it.
            if has_work(&inner, t) {
                handle(&inner, t);
                worked = true;
            }
            t.release();
            if inner.stop.load(Ordering::Acquire) {
                return;
            }
        }
        turn = turn.wrapping_add(1);
        if !worked {
            inner.signal.wait(seen, Duration::from_millis(100));
        }
    }
}

fn has_work(inner: &Inner, t: &Task) -> bool {
    let Ok(part) = inner.store.partition_ref(t.partition) else { return false };
    !t.retired.load(Ordering::Acquire)
        && t.next.load(Ordering::Acquire) < part.head()
        && t.error.lock().is_none()
        && gate_open(inner, t)
}

/// Handles one batch of a claimed task: read, hand to the projection (retrying failures),
/// advance, checkpoint.
fn handle(inner: &Inner, t: &Task) {
    let reg = &t.projection;
    let mut buffer = t.buffer.lock();
    let from = t.next.load(Ordering::Acquire);
    let head_before = inner.store.partition_ref(t.partition).map_or(from, |p| p.head());
    let mut n = 0usize;
    let read = inner.store.partition_ref(t.partition).and_then(|part| {
        part.visit_from(from, reg.options.batch, &mut |b, skip, take| {
            for (i, e) in b.events().enumerate().skip(skip).take(take) {
                match buffer.get_mut(n) {
                    Some(slot) => fill_event(slot, b, i, &e),
                    None => {
                        let mut slot = blank_event(t.partition);
                        fill_event(&mut slot, b, i, &e);
                        buffer.push(slot);
                    }
                }
                n += 1;
            }
            ControlFlow::Continue(())
        })
    });
    match read {
        // The store was closed under the engine: nothing to read any more, nothing wrong.
        Err(Error::Closed) => return,
        Err(e) => {
            stop_task(inner, t, format!("reading partition {}: {e}", t.partition));
            return;
        }
        Ok(_) => {}
    }
    if n == 0 && head_before > from {
        // Nothing at [from, head): compaction erased those positions (a deleted stream's
        // events). Move past the gap, or the task would look busy forever.
        t.next.store(head_before, Ordering::Release);
        inner.progress.bump();
        if reg.checkpoints.is_some() {
            inner.dirty.bump();
        }
        return;
    }
    let events = buffer.get(..n).unwrap_or(&[]);
    let mut start = 0usize;
    while start < events.len() {
        // Events of parked streams go to the dead-letter queue, in order, unhandled.
        let parked = |e: &RecordedEvent| reg.dlq.as_ref().is_some_and(|d| d.is_parked(&e.stream_id));
        if let Some(e) = events.get(start).filter(|e| parked(e)) {
            if let Err(why) = dead_letter(reg, e, 0, "its stream is parked") {
                stop_task(inner, t, why);
                return;
            }
            advance(inner, t, std::slice::from_ref(e));
            start += 1;
            continue;
        }
        let end = events.iter().skip(start).position(parked).map_or(events.len(), |k| start + k);
        let run = events.get(start..end).unwrap_or(&[]);
        match handle_run(inner, t, run) {
            Ok(()) => start = end,
            Err(None) => return, // stopping: the rest is handled after a restart
            Err(Some((failed, attempts, error))) => {
                let Some(e) = run.get(failed) else { return };
                let why = format!(
                    "event at position {} ({:?} v{}) failed {attempts} times: {error}",
                    e.position, e.stream_id, e.version
                );
                if reg.dlq.is_none() {
                    stop_task(inner, t, why);
                    return;
                }
                if let Err(why) = dead_letter(reg, e, attempts, &error.to_string()) {
                    stop_task(inner, t, why);
                    return;
                }
                // The dead letter is durable: the projection goes on past the event.
                advance(inner, t, std::slice::from_ref(e));
                start += failed + 1;
            }
        }
    }
}

/// Hands `run` to the projection, retrying a failing event per the policy. On success every
/// event is advanced past. On failure, the events before the failing one are advanced past
/// and the error says which one failed (its index in `run`), after how many attempts, and
/// why; `Err(None)` if the engine is stopping.
fn handle_run(
    inner: &Inner,
    t: &Task,
    run: &[RecordedEvent],
) -> std::result::Result<(), Option<(usize, u32, HandlerError)>> {
    let reg = &t.projection;
    let mut start = 0usize;
    let mut attempts = 0u32;
    // After a panic, which event caused it is unknown: go on one event per call.
    let mut one_by_one = false;
    while start < run.len() {
        let events = run.get(start..).unwrap_or(&[]);
        let events = if one_by_one { events.get(..1).unwrap_or(&[]) } else { events };
        let batch = Batch { partition: t.partition, events, replay: false };
        match guarded(|| reg.handler.handle_batch(&batch), events.len()) {
            Ok(()) if one_by_one => {
                advance(inner, t, events);
                start += events.len();
                attempts = 0;
            }
            Ok(()) => break,
            Err(None) if !one_by_one && events.len() > 1 => {
                // The batch's events before the panic may have had effects: they are
                // delivered again, one by one (at least once).
                one_by_one = true;
            }
            Err(e) => {
                let BatchError { index, error } = e.unwrap_or_else(|| BatchError { index: 0, error: "panic".into() });
                let failed = start + index.min(batch.events.len().saturating_sub(1));
                if failed > start {
                    // Progress before the failure counts; the failing event gets fresh attempts.
                    advance(inner, t, run.get(start..failed).unwrap_or(&[]));
                    start = failed;
                    attempts = 0;
                }
                attempts += 1;
                if inner.stop.load(Ordering::Acquire) {
                    return Err(None);
                }
                if attempts >= reg.options.attempts {
                    return Err(Some((failed, attempts, error)));
                }
                let wait = reg.options.backoff.saturating_mul(2u32.saturating_pow(attempts - 1).min(1 << 10));
                std::thread::sleep(wait.min(Duration::from_secs(60)));
            }
        }
    }
    advance(inner, t, run.get(start..).unwrap_or(&[]));
    Ok(())
}

/// Runs a handler call, so a panicking projection neither kills its worker nor leaves its
/// partition claimed: `Err(None)` for a panic in a batch of several events (which one is
/// unknown), a handler error at index 0 for a panic on a single event.
fn guarded(
    f: impl FnOnce() -> std::result::Result<(), BatchError>,
    events: usize,
) -> std::result::Result<(), Option<BatchError>> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(Some),
        Err(_) if events > 1 => Err(None),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(Some(BatchError { index: 0, error: format!("the handler panicked: {what}").into() }))
        }
    }
}

/// Adds `e` to the projection's dead-letter queue (durably), parking its stream if the
/// projection parks failing streams. Returns why it could not.
fn dead_letter(reg: &Registered, e: &RecordedEvent, attempts: u32, error: &str) -> std::result::Result<(), String> {
    let Some(dlq) = &reg.dlq else { return Err(format!("no dead-letter queue for: {error}")) };
    dlq.add(e, attempts, error, reg.options.on_failure == OnFailure::Park)
        .map_err(|err| format!("writing the dead letter for position {} failed: {err}", e.position))
}

/// Stops a task (until the projection is registered again) and wakes whoever waits on it.
fn stop_task(inner: &Inner, t: &Task, why: String) {
    *t.error.lock() = Some(why);
    inner.progress.bump();
}

/// Records `done` as handled: the task's position, then its durable checkpoint.
fn advance(inner: &Inner, t: &Task, done: &[RecordedEvent]) {
    let Some(last) = done.last() else { return };
    let reg = &t.projection;
    reg.handled.fetch_add(done.len() as u64, Ordering::Relaxed);
    t.last_time.store(last.timestamp_nanos, Ordering::Release);
    t.next.store(last.position + 1, Ordering::Release);
    inner.progress.bump();
    if reg.checkpoints.is_some() {
        inner.dirty.bump();
    }
}

/// The checkpointer: makes the tasks' positions durable, one `fdatasync` per projection per
/// round however many partitions moved, so handling never waits for a checkpoint's disk
/// write. After a crash, a projection resumes at its last durable checkpoint: the events
/// handled since (at most the batches of one round) are delivered again.
fn run_checkpointer(inner: Arc<Inner>) {
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
            let Ok(part) = inner.store.partition_ref(t.partition) else { continue };
            let time = t.last_time.load(Ordering::Acquire);
            // Never past what is on disk: under Buffered durability the log may still lose
            // its unsynced tail, and a checkpoint beyond it would skip the positions reused.
            let next = t.next.load(Ordering::Acquire).min(part.durable_head.load(Ordering::Acquire));
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
