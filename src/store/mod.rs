//! The store: one facade ([`Store`]) over a backend, and what its methods return besides
//! events. The embedded backend (`Local`) is one directory, its partitions and the threads
//! that serve them; with the `jetstream` feature, `jetstream/` is a NATS JetStream cluster.
//! Each public method is documented once, on `Store`, and dispatches to the backend's method
//! of the same name (`dispatch!`); what only the embedded store does is `Error::Unsupported`
//! elsewhere. Its children add to it: opening (`open`), appending (`append`, and `future` for
//! what an asynchronous append returns), reading (`read`), growing the partition count
//! (`grow`), maintenance (`maintenance`: deletion, compaction, verification, reports),
//! counters (`stats`), the log seam (`seam`), through which the features above the store
//! reach the log, and the backends' implementations of it (`logs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};

use crate::compaction::{self, CompactionOptions};
use crate::error::{Error, Result};
use crate::format::batch::{self, Limits};
use crate::format::manifest::Manifest;
use crate::io::Io;
use crate::io::lock::DirLock;
use crate::log::sealer::SealJob;
use crate::log::{Partition, Queued, WriterConfig};
use crate::report::Report;
use crate::router;
use crate::snapshot::Snapshots;
use crate::sync::HeadSignal;

/// Calls the method of the same name on whichever backend the store has.
macro_rules! dispatch {
    ($store:expr, $method:ident($($arg:expr),*)) => {
        match &$store.backend {
            $crate::store::Backend::Local(b) => b.$method($($arg),*),
            #[cfg(feature = "jetstream")]
            $crate::store::Backend::JetStream(b) => b.$method($($arg),*),
        }
    };
}

mod append;
mod future;
mod grow;
#[cfg(feature = "jetstream")]
pub(crate) mod jetstream;
mod logs;
mod maintenance;
mod metadata;
mod open;
mod options;
mod read;
pub(crate) mod seam;
mod stats;

pub use future::AppendFuture;
pub use grow::GrowReport;
#[cfg(feature = "jetstream")]
pub use jetstream::{JetStreamOptions, MAX_BATCH_EVENTS, MIN_SERVER_VERSION};
pub use options::{
    DEFAULT_ARCHIVE_CACHE_BYTES, DEFAULT_MAX_APPEND_BYTES, DEFAULT_MAX_EVENT_BYTES, DEFAULT_PARTITIONS,
    DEFAULT_SEGMENT_BYTES, Options,
};
pub use read::{PartitionEvents, StreamEvents, Streams};
pub use stats::{Histogram, LATENCY_BOUNDS_MICROS, PartitionMetrics, WriteStats};

pub use crate::log::block_cache::ArchiveCacheStats;
pub use crate::snapshot::SnapshotStats;

/// What the store's parts share with its background threads.
pub(crate) struct Shared {
    dir: PathBuf,
    /// The manifest as it is on disk.
    manifest: Mutex<Manifest>,
    /// Every open partition: those streams are routed to, then (while a grow is copying)
    /// the new ones they are not routed to yet. Only ever grows.
    partitions: RwLock<Arc<Vec<Arc<Partition>>>>,
    /// How many partitions streams are routed to (the manifest's partition count).
    routed: AtomicU32,
    limits: Limits,
    report: Report,
    /// Each partition's snapshot sidecar, and the snapshotter's queue.
    snapshots: Arc<Snapshots>,
    append_latency: stats::LatencyHistogram,
    compaction: CompactionOptions,
    compactions: compaction::Counters,
    /// Set by `close`: calls from then on fail with `Error::Closed`, and a running
    /// compaction stops throttling and starts no new partition.
    closing: AtomicBool,
    /// Set when no layout is known to survive a power loss (a grow's manifest rename whose
    /// directory fsync failed twice): every append, delete and grow fails with this cause until
    /// reopen. `refusing` says whether it is set, without a lock on the append path.
    appends_refused: std::sync::OnceLock<String>,
    refusing: AtomicBool,
    io: Io,
    signal: Arc<HeadSignal>,
    writer_cfg: WriterConfig,
    /// The manifest's routing scheme (`router::route_hash`).
    hash_id: u32,
    /// Released by `close` (or when the last owner drops the store).
    lock: Mutex<Option<DirLock>>,
    /// The cache of decompressed archive blocks that every partition reads through.
    archive_cache: Arc<crate::log::BlockCache>,
}

impl Shared {
    /// `Err` if appends are refused until reopen (see `appends_refused`).
    fn check_appends(&self, partition: u32) -> Result<()> {
        if !self.refusing.load(Ordering::Acquire) {
            return Ok(());
        }
        let cause = self.appends_refused.get().cloned().unwrap_or_default();
        Err(Error::Poisoned { partition, cause })
    }

    /// From now on, appends, deletes and grows fail with `cause` until reopen.
    fn refuse_appends(&self, cause: String) {
        let _ = self.appends_refused.set(cause);
        self.refusing.store(true, Ordering::Release);
    }

    /// Every open partition (see `partitions`).
    fn parts(&self) -> Arc<Vec<Arc<Partition>>> {
        self.partitions.read().clone()
    }
}

/// The embedded backend: one directory, exclusively locked while open, its partitions and
/// the threads that serve them.
pub(crate) struct Local {
    shared: Arc<Shared>,
    /// The partition writers' queues, one per open partition. An append holds this for
    /// reading while it routes and queues; a grow's cutover holds it for writing, so that no
    /// append is routed by the old partition map once the cutover has begun.
    senders: RwLock<Vec<Sender<Queued>>>,
    /// The sealer's queue, for the writers of partitions a grow adds.
    seal_tx: Mutex<Option<Sender<SealJob>>>,
    /// Dropped to stop the background compactor.
    compactor_stop: Mutex<Option<Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<Result<()>>>>,
    /// Held by a grow: one at a time.
    growing: Mutex<()>,
}

/// An open event store: either one directory on this machine, exclusively locked while open
/// ([`Store::open`]), or a NATS JetStream cluster (`Store::connect`, feature `jetstream`).
/// The same methods serve both, and the features on top (aggregates, projections, the
/// command bus, subscriptions) run unchanged on either; what only the embedded store can do
/// (compaction, growing the partition count, deletion and stream metadata, its file-level
/// counters) is [`Error::Unsupported`] on the other.
///
/// `Store` is `Send + Sync`: share it between threads with an `Arc` (or by reference), and
/// append from as many threads as you like; appends to one partition are group-committed.
///
/// ```
/// use strata::{EventData, ExpectedVersion, Options, Store};
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
/// let r = store.append("order-1", ExpectedVersion::NoStream, &[EventData::new("Placed", b"{}".to_vec())])?;
/// store.append("order-1", r.next_expected(), &[EventData::new("Paid", b"{}".to_vec())])?;
/// let events = store.read_stream("order-1", 0, 100)?;
/// assert_eq!(events.len(), 2);
/// assert_eq!(events[1].event_type, "Paid");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Store {
    backend: Backend,
}

/// Where a [`Store`]'s events live.
pub(crate) enum Backend {
    /// Files in a directory on this machine.
    Local(Local),
    /// A NATS JetStream cluster.
    #[cfg(feature = "jetstream")]
    JetStream(Box<jetstream::Remote>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Local(b) => b.fmt(f),
            #[cfg(feature = "jetstream")]
            Backend::JetStream(b) => b.fmt(f),
        }
    }
}

impl Store {
    /// The embedded backend, or `Error::Unsupported` naming `operation` on another.
    fn local(&self, operation: &'static str) -> Result<&Local> {
        match &self.backend {
            Backend::Local(b) => {
                let _ = operation;
                Ok(b)
            }
            #[cfg(feature = "jetstream")]
            Backend::JetStream(_) => Err(Error::Unsupported { operation, backend: "jetstream" }),
        }
    }

    /// Connects to the store named by `options` on a NATS JetStream cluster (feature
    /// `jetstream`), creating its streams if they are missing (and allowed). The returned
    /// store serves the same methods as an embedded one; see `docs/jetstream.md` for how
    /// partitions, streams, versions and snapshots map onto JetStream.
    ///
    /// Errors: [`Error::Unreachable`] if no server answers; [`Error::IncompatibleServer`] for a
    /// server older than [`MIN_SERVER_VERSION`], without JetStream, or a partition's stream
    /// whose configuration (as the server echoes it) lacks what the backend relies on
    /// (`allow_atomic`, `allow_direct`, no limits, deletes denied, strata's metadata);
    /// [`Error::NotAStore`] for a stream of that name that is not a strata partition, or a
    /// missing store with `create_if_missing(false)`.
    #[cfg(feature = "jetstream")]
    pub fn connect(options: JetStreamOptions) -> Result<Store> {
        Ok(Store { backend: Backend::JetStream(Box::new(jetstream::Remote::connect(options)?)) })
    }

    /// The embedded backend, if the store has it.
    fn local_opt(&self) -> Option<&Local> {
        match &self.backend {
            Backend::Local(b) => Some(b),
            #[cfg(feature = "jetstream")]
            Backend::JetStream(_) => None,
        }
    }
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.shared.dir)
            .field("partitions", &self.partition_count())
            .finish_non_exhaustive()
    }
}

impl Local {
    pub(crate) fn path(&self) -> &Path {
        &self.shared.dir
    }

    pub(crate) fn partition_count(&self) -> u32 {
        self.shared.routed.load(Ordering::Acquire)
    }

    pub(crate) fn partition_of(&self, stream_id: &str) -> u32 {
        self.partition_given(stream_id, router::stream_hash(stream_id))
    }

    /// The hash `stream` is routed by (its co-location key's, in stores of routing scheme 2).
    pub(crate) fn route_hash(&self, stream: &str) -> u64 {
        router::route_hash(self.shared.hash_id, stream)
    }

    /// The partition of `stream`, whose [`router::stream_hash`] is `hash`.
    pub(crate) fn partition_given(&self, stream: &str, hash: u64) -> u32 {
        let route = router::route_hash_given(self.shared.hash_id, stream, hash);
        router::jump_consistent_hash(route, self.partition_count())
    }

    /// `Error::Closed` once [`Store::close`] has begun.
    fn check_open(&self) -> Result<()> {
        if self.shared.closing.load(Ordering::Acquire) { Err(Error::Closed) } else { Ok(()) }
    }

    /// A partition streams are routed to.
    fn partition(&self, id: u32) -> Result<Arc<Partition>> {
        self.check_open()?;
        let count = self.partition_count();
        let parts = self.shared.parts();
        parts.get(id as usize).filter(|_| id < count).cloned().ok_or(Error::NoSuchPartition { partition: id, count })
    }

    /// The stream id checked, its hash, and the partition it is routed to.
    fn route(&self, stream: &str) -> Result<(u64, Arc<Partition>)> {
        batch::check_stream_id(stream)?;
        let hash = router::stream_hash(stream);
        Ok((hash, self.partition(self.partition_of(stream))?))
    }

    /// Where partition `id` came from, if a grow added it: the first position of its own
    /// events (those before are copies of moved streams' history) and the heads of the
    /// partitions that existed before, at the cutover.
    fn partition_origin(&self, id: u32) -> Option<(u64, Vec<u64>)> {
        let m = self.shared.manifest.lock();
        let e = m.epochs.iter().find(|e| (e.from..e.to).contains(&id))?;
        Some((*e.live_from.get((id - e.from) as usize)?, e.cut.clone()))
    }

    /// Routes streams to `count` partitions from now on (a grow's cutover).
    fn set_routed(&self, count: u32) {
        self.shared.routed.store(count, Ordering::Release);
    }

    pub(crate) fn close(&self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        if self.shared.closing.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.senders.write().clear();
        *self.seal_tx.lock() = None;
        self.shared.snapshots.close();
        *self.compactor_stop.lock() = None;
        let mut result = Ok(());
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = result.and(Err(e)),
                Err(_) => result = result.and(Err(Error::Closed)),
            }
        }
        // Unmap and close the files before the lock goes: a reader that still holds a
        // partition keeps it until it lets go.
        *self.shared.partitions.write() = Arc::new(Vec::new());
        *self.shared.lock.lock() = None;
        result
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl Store {
    /// The store's directory.
    pub fn path(&self) -> &Path {
        dispatch!(self, path())
    }

    /// Number of partitions streams are routed to: set at creation, raised by
    /// [`Store::grow_partitions`].
    pub fn partition_count(&self) -> u32 {
        dispatch!(self, partition_count())
    }

    /// The partition that holds `stream_id`. Streams whose ids share a co-location key
    /// (`{order-17}/payments`, `{order-17}/shipping`: the part in braces) always share one.
    pub fn partition_of(&self, stream_id: &str) -> u32 {
        dispatch!(self, partition_of(stream_id))
    }

    /// Closes the store: stops the writers after they finish what is queued, syncs what is
    /// unsynced (Buffered mode), stops the background threads, and releases the lock (another
    /// process may open the store from then on). Returns the first failure of that final
    /// sync (a poisoned partition).
    ///
    /// It works through a shared reference, so a store shared with an `Arc` (by a
    /// [`ProjectionEngine`](crate::ProjectionEngine), say) can be closed without unwrapping
    /// it: every later call on it fails with [`Error::Closed`] (closing again does nothing and
    /// returns `Ok`). Dropping the last owner closes it too, ignoring the result.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use strata::{Error, EventData, ExpectedVersion, Options, ProjectionEngine, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Arc::new(Store::open(dir.path(), Options::default().create_if_missing(true))?);
    /// let engine = ProjectionEngine::new(store.clone(), 1);
    /// store.close()?;
    /// assert!(matches!(store.append("a", ExpectedVersion::Any, &[EventData::new("E", "")]), Err(Error::Closed)));
    /// engine.stop()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&self) -> Result<()> {
        dispatch!(self, close())
    }
}
