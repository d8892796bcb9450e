//! The store: opening and creating it, routing appends to partition writers, and reads.

use std::fs;
use std::future::Future;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};

use crate::compaction::CompactionReport;
use crate::error::{Error, Result};
use crate::event::{AppendResult, EventData, ExpectedVersion, RecordedEvent};
use crate::format::batch::{self, Limits};
use crate::format::manifest::{self, Manifest, ManifestError};
use crate::format::segment as seg_format;
use crate::io::Io;
use crate::lock::{self, DirLock};
use crate::options::Options;
use crate::partition::{self, Partition};
use crate::router::{self, stream_hash};
use crate::segment::Report;
use crate::snapshot;
use crate::writer::{self, AppendRequest, Queued, Reply, SealJob, Writer, WriterConfig};

/// Nanoseconds since the Unix epoch, now.
pub(crate) fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

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

/// Counters of the write path (see [`Store::write_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteStats {
    /// Appends acknowledged.
    pub appends: u64,
    /// Events in them.
    pub events: u64,
    /// Bytes written for them (batch framing included).
    pub bytes: u64,
    /// Group commits: one write each.
    pub group_commits: u64,
    /// `fdatasync` calls made for appends (per group in `Sync` mode, per interval in `Buffered`).
    pub syncs: u64,
}

impl WriteStats {
    /// Average number of appends per group commit.
    pub fn appends_per_group(&self) -> f64 {
        if self.group_commits == 0 { 0.0 } else { self.appends as f64 / self.group_commits as f64 }
    }
}

pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    /// The manifest as it is on disk.
    pub(crate) manifest: Mutex<Manifest>,
    /// Every open partition: those streams are routed to, then (while a grow is copying)
    /// the new ones they are not routed to yet. Only ever grows.
    partitions: RwLock<Arc<Vec<Arc<Partition>>>>,
    /// How many partitions streams are routed to (the manifest's partition count).
    routed: std::sync::atomic::AtomicU32,
    pub(crate) limits: Limits,
    pub(crate) report: Report,
    snapshots: Arc<snapshot::Counters>,
    append_latency: crate::metrics::LatencyHistogram,
    compaction: crate::CompactionOptions,
    compactions: crate::compaction::Counters,
    /// Set by `close`: calls from then on fail with `Error::Closed`, and a running
    /// compaction stops throttling and starts no new partition.
    closing: std::sync::atomic::AtomicBool,
    pub(crate) io: Io,
    pub(crate) signal: Arc<partition::HeadSignal>,
    pub(crate) writer_cfg: WriterConfig,
    /// Released by `close` (or when the last owner drops the store).
    lock: Mutex<Option<DirLock>>,
}

impl Shared {
    /// Every open partition (see `partitions`).
    pub(crate) fn parts(&self) -> Arc<Vec<Arc<Partition>>> {
        self.partitions.read().clone()
    }
}

/// How many snapshots may wait for the snapshotter.
const SNAPSHOT_QUEUE: usize = 4096;
/// How many bytes of snapshot state may wait for it, beyond which automatic snapshots are
/// dropped (an explicit one still waits for room in the queue).
const SNAPSHOT_QUEUE_BYTES: u64 = 64 << 20;

/// An open event store: one directory, exclusively locked while open.
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
    pub(crate) shared: Arc<Shared>,
    /// The partition writers' queues, one per open partition. An append holds this for
    /// reading while it routes and queues; a grow's cutover holds it for writing, so that no
    /// append is routed by the old partition map once the cutover has begun.
    pub(crate) senders: RwLock<Vec<Sender<Queued>>>,
    /// The sealer's queue, for the writers of partitions a grow adds.
    seal_tx: Mutex<Option<Sender<SealJob>>>,
    snapshot_tx: RwLock<Option<Sender<snapshot::Job>>>,
    /// Dropped to stop the background compactor.
    compactor_stop: Mutex<Option<Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<Result<()>>>>,
    /// Held by a grow: one at a time.
    pub(crate) growing: Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.shared.dir)
            .field("partitions", &self.partition_count())
            .finish_non_exhaustive()
    }
}

fn manifest_error(path: &Path, e: ManifestError) -> Error {
    match e {
        ManifestError::Foreign(why) => Error::NotAStore { path: path.to_path_buf(), reason: why },
        ManifestError::Version(found) => {
            Error::UnsupportedVersion { path: path.to_path_buf(), found, supported: crate::format::FORMAT_VERSION }
        }
        ManifestError::Corrupt(offset, why) => Error::corruption(path, offset, why),
    }
}

/// Whether `dir` holds only what an interrupted creation can leave: the lock, temp files and
/// partition directories with nothing but an empty first segment. Returns the first other entry.
fn foreign_entry(dir: &Path) -> Result<Option<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name == lock::FILE_NAME || name.ends_with(".tmp") {
            continue;
        }
        let is_partition = name.len() == 6 && name.starts_with('p') && name[1..].bytes().all(|b| b.is_ascii_digit());
        if !is_partition || !path.is_dir() {
            return Ok(Some(path));
        }
        for inner in fs::read_dir(&path).map_err(|e| Error::io("list", &path, e))? {
            let inner = inner.map_err(|e| Error::io("list", &path, e))?;
            let iname = inner.file_name().to_string_lossy().into_owned();
            let empty_first = iname == seg_format::file_name(0)
                && inner.metadata().is_ok_and(|m| m.len() <= seg_format::HEADER_LEN as u64);
            if !empty_first && !iname.ends_with(".tmp") {
                return Ok(Some(inner.path()));
            }
        }
    }
    Ok(None)
}

/// Reads a small file whole, refusing one longer than `limit` (a foreign file must not make
/// open allocate without bound).
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

impl Store {
    /// Opens the store in `dir`, or creates it if [`Options::create_if_missing`] is set.
    ///
    /// Opening recovers from a crash: the tail of each partition's active segment is scanned,
    /// an incomplete last write is cut off (see [`Store::recovery_report`]), and damage
    /// anywhere else is an [`Error::Corruption`] naming the file and offset. Sealed segments
    /// are not read at open; they are mapped and checked on first use.
    ///
    /// Errors: [`Error::NotAStore`] for a directory without a store (or a foreign manifest),
    /// [`Error::UnsupportedVersion`] for a store of a newer format, [`Error::Locked`] if the
    /// store is open elsewhere, [`Error::AlreadyExists`] with `error_if_exists`.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Store> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let io = Io::with_faults(options.faults.clone());
        let manifest_path = dir.join(manifest::FILE_NAME);
        let (manifest, lock) = match read_bounded(&manifest_path, manifest::MAX_LEN) {
            Ok(bytes) => {
                if options.error_if_exists {
                    return Err(Error::AlreadyExists { path: dir, reason: "a store exists there".into() });
                }
                Manifest::decode(&bytes).map_err(|e| manifest_error(&manifest_path, e))?;
                let lock = lock::acquire(&dir)?;
                // Read again under the lock: the holder it waited for may have grown the store.
                let bytes = read_bounded(&manifest_path, manifest::MAX_LEN)
                    .map_err(|e| Error::io("read", &manifest_path, e))?;
                (Manifest::decode(&bytes).map_err(|e| manifest_error(&manifest_path, e))?, lock)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if !options.create_if_missing {
                    let reason = if dir.is_dir() { "no MANIFEST file" } else { "no such directory" };
                    return Err(Error::NotAStore { path: dir, reason: reason.into() });
                }
                Self::create(&dir, &options, &io)?
            }
            Err(e) if e.kind() == ErrorKind::NotADirectory => {
                return Err(Error::NotAStore { path: dir, reason: "not a directory".into() });
            }
            Err(e) if manifest_path.is_dir() => {
                return Err(Error::NotAStore { path: manifest_path, reason: format!("MANIFEST is not a file ({e})") });
            }
            Err(e) => return Err(Error::io("read", &manifest_path, e)),
        };
        let created_with = manifest.epochs.first().map_or(manifest.partition_count, |e| e.from);
        options.check_against(manifest.partition_count, created_with, manifest.segment_bytes)?;
        let report: Report = Arc::new(Mutex::new(Vec::new()));
        let signal = Arc::new(partition::HeadSignal::default());
        let opened: Vec<Result<_>> = std::thread::scope(|s| {
            // Recover partitions in parallel, a bounded number at a time; with a grow in
            // progress, its new partitions too (not routed to until it completes).
            let ids: Vec<u32> = (0..manifest.partition_count.max(manifest.growing_to)).collect();
            let mut results = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(16) {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|&id| {
                        let pdir = dir.join(partition::dir_name(id));
                        let (io, report, signal) = (io.clone(), report.clone(), signal.clone());
                        std::thread::Builder::new()
                            .name(format!("strata-open-{id}"))
                            .spawn_scoped(s, move || Partition::open(pdir, id, io, report, signal))
                            .map_err(|e| Error::io("spawn recovery thread", &dir, e))
                    })
                    .collect();
                for h in handles {
                    results.push(h.and_then(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::io("recover partition", &dir, std::io::Error::other("recovery thread panicked")))
                        })
                    }));
                }
            }
            results
        });
        let mut partitions = Vec::with_capacity(opened.len());
        let mut tails = Vec::with_capacity(opened.len());
        for r in opened {
            let (p, t) = r?;
            partitions.push(p);
            tails.push(t);
        }
        // Every grow committed only once its cut and copied positions were on disk: a head
        // behind one of them means a damaged manifest (or lost data), and projections would
        // skip or wait forever.
        for e in &manifest.epochs {
            let behind =
                e.cut.iter().enumerate().chain(e.live_from.iter().enumerate().map(|(i, v)| (i + e.from as usize, v)));
            for (id, &pos) in behind {
                if let Some(p) = partitions.get(id).filter(|p| p.head() < pos) {
                    return Err(Error::corruption(
                        &manifest_path,
                        manifest::LEN as u64,
                        format!(
                            "partition epoch {}..{} names position {pos} of partition {id}, whose head is {}",
                            e.from,
                            e.to,
                            p.head()
                        ),
                    ));
                }
            }
        }
        let limits = Limits { max_event_bytes: options.max_event_bytes, max_append_bytes: options.max_append_bytes };
        let cfg = WriterConfig {
            durability: options.durability,
            preallocate: options.preallocate,
            segment_bytes: manifest.segment_bytes,
            max_group_bytes: options.max_group_bytes,
            max_group_appends: options.max_group_appends,
        };
        // The store exists before its threads do: if spawning one fails, dropping it stops and
        // joins those already running before the lock is released.
        let snapshots = Arc::new(snapshot::Counters::default());
        let routed = manifest.partition_count;
        let shared = Arc::new(Shared {
            dir,
            manifest: Mutex::new(manifest),
            partitions: RwLock::new(Arc::new(partitions)),
            routed: routed.into(),
            limits,
            report,
            snapshots,
            append_latency: Default::default(),
            compaction: options.compaction.clone(),
            compactions: Default::default(),
            closing: Default::default(),
            io,
            signal,
            writer_cfg: cfg,
            lock: Mutex::new(Some(lock)),
        });
        let (seal_tx, seal_rx) = crossbeam_channel::unbounded();
        let mut store = Store {
            shared: shared.clone(),
            senders: RwLock::new(Vec::new()),
            seal_tx: Mutex::new(Some(seal_tx)),
            snapshot_tx: RwLock::new(None),
            compactor_stop: Mutex::new(None),
            threads: Mutex::new(Vec::new()),
            growing: Mutex::new(()),
        };
        let spawn = |name: String, f: Box<dyn FnOnce() -> Result<()> + Send>| {
            std::thread::Builder::new().name(name).spawn(f).map_err(|e| Error::io("spawn thread", &shared.dir, e))
        };
        for (part, tail) in shared.parts().iter().zip(tails) {
            store.start_writer(part, tail)?;
        }
        store.threads.get_mut().push(spawn(
            "strata-sealer".into(),
            Box::new(move || {
                writer::run_sealer(seal_rx);
                Ok(())
            }),
        )?);
        let (snap_tx, snap_rx) = crossbeam_channel::bounded(SNAPSHOT_QUEUE);
        let counters = shared.snapshots.clone();
        let min_rewrite = options.snapshot_rewrite_bytes;
        let of = shared.clone();
        store.threads.get_mut().push(spawn(
            "strata-snapshotter".into(),
            Box::new(move || {
                let sidecars = || of.parts().iter().map(|p| p.snapshots.clone()).collect();
                snapshot::run(snap_rx, sidecars, counters, min_rewrite);
                Ok(())
            }),
        )?);
        *store.snapshot_tx.get_mut() = Some(snap_tx);
        if let Some(every) = options.compaction.interval {
            let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
            let shared = shared.clone();
            store.threads.get_mut().push(spawn(
                "strata-compactor".into(),
                Box::new(move || {
                    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(every) {
                        let r = crate::compaction::compact_store(
                            &shared.parts(),
                            &shared.compaction,
                            false,
                            &shared.closing,
                            &mut |_| {},
                        );
                        shared.compactions.record(&r);
                    }
                    Ok(())
                }),
            )?);
            *store.compactor_stop.get_mut() = Some(stop_tx);
        }
        Ok(store)
    }

    /// Starts the writer (and its preallocator) of an open partition, and appends its queue
    /// to `senders`. Writer threads hold the only senders of the sealer's and preallocators'
    /// queues, so those threads end after the writers (joining them in any order is safe once
    /// the append senders are gone). Each partition has its own preallocator, so no writer
    /// ever waits for another partition's zero-fill.
    pub(crate) fn start_writer(&self, part: &Arc<Partition>, tail: partition::Tail) -> Result<()> {
        let seal_tx = self.seal_tx.lock().clone().ok_or(Error::Closed)?;
        let spawn = |name: String, f: Box<dyn FnOnce() -> Result<()> + Send>| {
            std::thread::Builder::new().name(name).spawn(f).map_err(|e| Error::io("spawn thread", &self.shared.dir, e))
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let (fill_tx, fill_rx) = crossbeam_channel::unbounded();
        let w = Writer::new(part.clone(), tail, self.shared.writer_cfg, seal_tx, fill_tx);
        let mut threads = self.threads.lock();
        // The queue is published last, once both threads run (if the writer fails to start,
        // dropping it ends the preallocator).
        threads.push(spawn(
            format!("strata-prealloc-{}", part.id),
            Box::new(move || {
                crate::prealloc::run(fill_rx);
                Ok(())
            }),
        )?);
        threads.push(spawn(format!("strata-writer-{}", part.id), Box::new(move || w.run(rx)))?);
        self.senders.write().push(tx);
        Ok(())
    }

    /// Adds an opened partition (one a grow creates) to the store's partitions, not routed to
    /// yet, and starts its writer. Its id must be the next one.
    pub(crate) fn add_partition(&self, part: Arc<Partition>, tail: partition::Tail) -> Result<()> {
        // Writer first: the partition's queue must be `senders[id]` before the partition is
        // `partitions[id]` (a retry starts from the number of partitions).
        if self.senders.read().len() != part.id as usize || self.shared.parts().len() != part.id as usize {
            return Err(Error::io(
                "add partition",
                &part.dir,
                std::io::Error::other("the store's partitions and writers are out of step"),
            ));
        }
        self.start_writer(&part, tail)?;
        let mut parts = self.shared.partitions.write();
        let mut grown: Vec<Arc<Partition>> = parts.iter().cloned().collect();
        grown.push(part);
        *parts = Arc::new(grown);
        Ok(())
    }

    /// Routes streams to `count` partitions from now on (a grow's cutover).
    pub(crate) fn set_routed(&self, count: u32) {
        self.shared.routed.store(count, Ordering::Release);
    }

    /// Creates a store: lock, partitions with their first segments, then the manifest, written
    /// atomically last, so a store without a manifest is never half-made.
    fn create(dir: &Path, options: &Options, io: &Io) -> Result<(Manifest, DirLock)> {
        let foreign = |dir: &Path| -> Result<()> {
            match foreign_entry(dir)? {
                Some(other) => Err(Error::AlreadyExists {
                    path: dir.to_path_buf(),
                    reason: format!("the directory is not empty and not a store: it holds {}", other.display()),
                }),
                None => Ok(()),
            }
        };
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
            // Make the new directory's own entry durable.
            match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => io.sync_dir(p)?,
                _ => io.sync_dir(Path::new("."))?,
            }
        } else if !dir.is_dir() {
            return Err(Error::NotAStore { path: dir.to_path_buf(), reason: "not a directory".into() });
        } else {
            // Refuse someone else's directory before leaving a LOCK file in it.
            foreign(dir)?;
        }
        let lock = lock::acquire(dir)?;
        foreign(dir)?;
        let manifest = Manifest {
            partition_count: options.partitions,
            hash_id: router::HASH_ID,
            segment_bytes: options.segment_bytes,
            created: now_nanos(),
            partition_epoch: 0,
            growing_to: 0,
            epochs: Vec::new(),
        };
        for id in 0..manifest.partition_count {
            partition::create(&dir.join(partition::dir_name(id)), id, io)?;
        }
        io.sync_dir(dir)?;
        io.write_atomic(dir, manifest::FILE_NAME, &manifest.encode())?;
        Ok((manifest, lock))
    }

    /// `Error::Closed` once [`Store::close`] has begun.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.shared.closing.load(Ordering::Acquire) { Err(Error::Closed) } else { Ok(()) }
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.shared.dir
    }

    /// Number of partitions streams are routed to: set at creation, raised by
    /// [`Store::grow_partitions`].
    pub fn partition_count(&self) -> u32 {
        self.shared.routed.load(Ordering::Acquire)
    }

    /// The partition that holds `stream_id`.
    pub fn partition_of(&self, stream_id: &str) -> u32 {
        router::partition_for(stream_id, self.partition_count())
    }

    fn partition(&self, id: u32) -> Result<Arc<Partition>> {
        self.check_open()?;
        let count = self.partition_count();
        let parts = self.shared.parts();
        parts.get(id as usize).filter(|_| id < count).cloned().ok_or(Error::NoSuchPartition { partition: id, count })
    }

    /// An append request for the writers: the events encoded and checked against the limits.
    fn request(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<(AppendRequest, Reply)> {
        let batch = batch::encode(stream, events, self.shared.limits)?;
        Ok(AppendRequest::new(stream, stream_hash(stream), expected, batch, events.len() as u32))
    }

    fn submit(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<Reply> {
        let (req, rx) = self.request(stream, expected, events)?;
        // Route and queue under the senders' read lock: a grow's cutover waits for it.
        let senders = self.senders.read();
        let p = router::jump_consistent_hash(req.hash, self.partition_count());
        let sender = senders.get(p as usize).ok_or(Error::Closed)?;
        sender.send(Queued::One(req)).map_err(|_| Error::Closed)?;
        Ok(rx)
    }

    /// Appends `events` to `stream` atomically (all or none), if the stream's version
    /// satisfies `expected`; returns once the events are durable under the configured
    /// [`Durability`](crate::Durability).
    ///
    /// Errors: [`Error::WrongExpectedVersion`] (nothing written), [`Error::InvalidStreamId`],
    /// [`Error::EventTooLarge`], [`Error::AppendTooLarge`], [`Error::EmptyAppend`],
    /// [`Error::StorageFull`], [`Error::Poisoned`] after a failed fsync.
    ///
    /// The validation and concurrency errors mean nothing was written. After an I/O error
    /// ([`Error::Io`], [`Error::StorageFull`], [`Error::Poisoned`]) the outcome is unknown in
    /// general (the bytes may or may not be on disk): retry with an `Exact` expected version,
    /// never with `Any`, so a retry cannot append twice.
    pub fn append(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<AppendResult> {
        let started = std::time::Instant::now();
        let rx = self.submit(stream, expected, events)?;
        let r = rx.recv().map_err(|_| Error::Closed)?;
        if r.is_ok() {
            self.shared.append_latency.record(started.elapsed());
        }
        r
    }

    /// Submits several appends at once, each to its own stream with its own expected version,
    /// and returns one future per append, in order. Appends bound for the same partition
    /// reach its writer together, so they share one group commit (one write, one
    /// `fdatasync`): committing the events of a thousand aggregates this way costs one sync per
    /// partition, where a thousand [`Store::append_async`] calls may each wake a writer.
    ///
    /// Each append is atomic and checked on its own, exactly as [`Store::append`]: some may
    /// fail (say, a wrong expected version) while others succeed. The set is not a transaction.
    /// The events of each may be borrowed (`&[EventData]`) or owned (`Vec<EventData>`, an
    /// array).
    ///
    /// ```
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// let pending = store.append_many((0..100).map(|i| {
    ///     let deposit = EventData::new("Deposited", format!("{{\"amount\":{i}}}"));
    ///     (format!("account-{i}"), ExpectedVersion::NoStream, vec![deposit])
    /// }));
    /// for p in pending {
    ///     assert_eq!(p.wait()?.first_version, 0);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_many<S: AsRef<str>, E: AsRef<[EventData]>>(
        &self,
        appends: impl IntoIterator<Item = (S, ExpectedVersion, E)>,
    ) -> Vec<AppendFuture> {
        let mut futures = Vec::new();
        let mut queued: Vec<AppendRequest> = Vec::new();
        for (stream, expected, events) in appends {
            match self.request(stream.as_ref(), expected, events.as_ref()) {
                Ok((req, rx)) => {
                    queued.push(req);
                    futures.push(AppendFuture { state: FutureState::Waiting(rx) });
                }
                Err(e) => futures.push(AppendFuture { state: FutureState::Failed(Some(e)) }),
            }
        }
        // Route under the senders' read lock (a grow's cutover waits for it), then one message
        // per partition. A failed send drops the requests: their futures report `Closed`.
        let senders = self.senders.read();
        let count = self.partition_count();
        let mut per_partition: Vec<Vec<AppendRequest>> = (0..count).map(|_| Vec::new()).collect();
        for req in queued {
            if let Some(v) = per_partition.get_mut(router::jump_consistent_hash(req.hash, count) as usize) {
                v.push(req);
            }
        }
        // Each message within a group's limits: a group is one write, and the writer checks
        // for a segment roll only between groups.
        let cfg = &self.shared.writer_cfg;
        for (sender, reqs) in senders.iter().zip(per_partition) {
            let mut message: Vec<AppendRequest> = Vec::new();
            let mut bytes = 0;
            for req in reqs {
                if !message.is_empty()
                    && (message.len() >= cfg.max_group_appends || bytes + req.batch.len() > cfg.max_group_bytes)
                {
                    let _ = sender.send(Queued::Many(std::mem::take(&mut message)));
                    bytes = 0;
                }
                bytes += req.batch.len();
                message.push(req);
            }
            if !message.is_empty() {
                let _ = sender.send(Queued::Many(message));
            }
        }
        futures
    }

    /// Latency of acknowledged [`Store::append`] calls since open.
    pub(crate) fn append_latency(&self) -> crate::metrics::Histogram {
        self.shared.append_latency.snapshot()
    }

    /// Group commits by size, summed over partitions: element `i` counts groups of at most
    /// `2^i` appends (the last, more).
    pub(crate) fn group_sizes(&self) -> Vec<u64> {
        let mut out = vec![0; partition::GROUP_SIZE_BUCKETS];
        for p in self.shared.parts().iter() {
            for (o, b) in out.iter_mut().zip(&p.stats.group_sizes) {
                *o += b.load(Ordering::Relaxed);
            }
        }
        out
    }

    /// Per-partition counts: events held, appended and bytes written since open.
    pub(crate) fn partition_metrics(&self) -> Vec<crate::metrics::PartitionMetrics> {
        self.shared
            .parts()
            .iter()
            .map(|p| crate::metrics::PartitionMetrics {
                partition: p.id,
                events: p.head(),
                appended: p.stats.events.load(Ordering::Relaxed),
                bytes_written: p.stats.bytes.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Like [`Store::append`], without blocking: the returned future completes when the append
    /// is durable. It works with any executor (strata depends on none). The append is submitted
    /// when this is called: dropping the future does not cancel it.
    ///
    /// ```
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// let pending = store.append_async("cart-9", ExpectedVersion::Any, &[EventData::new("Added", b"x".to_vec())]);
    /// // ... in async code: `pending.await?`; here, block on it:
    /// let r = pending.wait()?;
    /// assert_eq!(r.first_version, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_async(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> AppendFuture {
        match self.submit(stream, expected, events) {
            Ok(rx) => AppendFuture { state: FutureState::Waiting(rx) },
            Err(e) => AppendFuture { state: FutureState::Failed(Some(e)) },
        }
    }

    /// Up to `max_count` events of `stream` from version `from_version` on, oldest first.
    pub fn read_stream(&self, stream: &str, from_version: u64, max_count: usize) -> Result<Vec<RecordedEvent>> {
        batch::check_stream_id(stream)?;
        let hash = stream_hash(stream);
        let p = self.partition(router::jump_consistent_hash(hash, self.partition_count()))?;
        p.read_stream(stream, hash, from_version, max_count)
    }

    /// Up to `max_count` events of `stream` from version `from_version` (`None`: the last
    /// event) back towards version 0, newest first.
    pub fn read_stream_backward(
        &self,
        stream: &str,
        from_version: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        batch::check_stream_id(stream)?;
        let hash = stream_hash(stream);
        let p = self.partition(router::jump_consistent_hash(hash, self.partition_count()))?;
        p.read_stream_back(stream, hash, from_version.unwrap_or(u64::MAX), max_count)
    }

    /// The version of the last durable event of `stream`, or `None` if it has none.
    pub fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        batch::check_stream_id(stream)?;
        let hash = stream_hash(stream);
        let p = self.partition(router::jump_consistent_hash(hash, self.partition_count()))?;
        p.last_version(stream, hash)
    }

    /// Up to `max_count` events of partition `partition` from position `from_position` on, in
    /// position order: the basis of subscriptions and projections. In a partition that
    /// [`Store::grow_partitions`] added, the positions below [`Store::copied_until`] hold copies
    /// of moved streams' history, which a reader following every partition has already seen
    /// in the partitions they came from.
    pub fn read_partition(&self, partition: u32, from_position: u64, max_count: usize) -> Result<Vec<RecordedEvent>> {
        self.partition(partition)?.read_from(from_position, max_count)
    }

    /// Like [`Store::read_partition`], but hands each event to `f` borrowed from the log
    /// instead of copying it out, so a scan allocates nothing per event. `f` stops the scan by
    /// returning `ControlFlow::Break(())`. Returns how many events `f` was given.
    ///
    /// ```
    /// # use std::ops::ControlFlow;
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true).partitions(1))?;
    /// # store.append("cart-1", ExpectedVersion::Any, &[EventData::new("Added", b"12".to_vec())])?;
    /// let mut bytes = 0;
    /// let seen = store.scan_partition(0, 0, usize::MAX, |e| {
    ///     bytes += e.payload.len();
    ///     ControlFlow::Continue(())
    /// })?;
    /// assert_eq!((seen, bytes), (1, 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn scan_partition(
        &self,
        partition: u32,
        from_position: u64,
        max_count: usize,
        mut f: impl FnMut(&crate::EventView<'_>) -> std::ops::ControlFlow<()>,
    ) -> Result<usize> {
        let part = self.partition(partition)?;
        let mut seen = 0;
        part.visit_from(from_position, max_count, &mut |b, skip, take| {
            for (i, e) in b.events().enumerate().skip(skip).take(take) {
                let view = crate::EventView {
                    stream_id: b.stream_id,
                    version: b.first_version + i as u64,
                    partition,
                    position: b.base_position + i as u64,
                    timestamp_nanos: b.timestamp,
                    event_type: e.event_type,
                    metadata: e.metadata,
                    payload: e.payload,
                };
                seen += 1;
                f(&view)?;
            }
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(seen)
    }

    /// Every stream that has events and is not deleted, each once: partition by partition,
    /// and by id within a partition. The iterator holds one partition's ids at a time; it
    /// reads every segment's index (and decompresses the archive blocks where streams begin),
    /// so it costs about a full read of the indexes, not of the events.
    ///
    /// ```
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// for id in ["order-1", "order-2", "order-1"] {
    ///     store.append(id, ExpectedVersion::Any, &[EventData::new("Touched", "")])?;
    /// }
    /// let mut ids = store.streams().collect::<Result<Vec<_>, _>>()?;
    /// ids.sort();
    /// assert_eq!(ids, ["order-1", "order-2"]);
    /// assert_eq!(store.stream_count()?, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn streams(&self) -> Streams<'_> {
        Streams { store: self, next_partition: 0, ids: Vec::new().into_iter(), failed: false }
    }

    /// How many streams [`Store::streams`] lists.
    pub fn stream_count(&self) -> Result<u64> {
        let mut n = 0;
        for p in 0..self.partition_count() {
            n += self.partition_streams(p)?.len() as u64;
        }
        Ok(n)
    }

    /// The streams listed in partition `p`: those living there now (a stream a grow moved
    /// away left history here, listed where it lives).
    fn partition_streams(&self, p: u32) -> Result<Vec<String>> {
        let count = self.partition_count();
        self.partition(p)?.stream_ids(&|s| router::jump_consistent_hash(stream_hash(s), count) == p)
    }

    /// The events of `stream` from version `from_version` up to its last event as of this
    /// call, oldest first, read a page at a time. An error ends the iteration (after being
    /// returned once).
    ///
    /// ```
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// let events: Vec<_> = (0..1000).map(|i| EventData::new("Tick", i.to_string())).collect();
    /// store.append("clock", ExpectedVersion::NoStream, &events)?;
    /// let total: usize = store.iter_stream("clock", 10).map(|e| e.map(|e| e.payload.len())).sum::<Result<_, _>>()?;
    /// assert_eq!(total, (10..1000).map(|i: i32| i.to_string().len()).sum());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter_stream(&self, stream: &str, from_version: u64) -> StreamEvents<'_> {
        let (end, failed) = match self.stream_version(stream) {
            Ok(last) => (last.map_or(0, |v| v + 1), None),
            Err(e) => (0, Some(e)),
        };
        StreamEvents {
            store: self,
            stream: stream.to_owned(),
            next: from_version,
            end,
            page: Vec::new().into_iter(),
            failed,
        }
    }

    /// The events of `partition` from position `from_position` up to its head as of this call,
    /// in position order, read a page at a time (see [`Store::read_partition`] for the
    /// positions a grow's copies and a compaction's erasures leave). An error ends the
    /// iteration (after being returned once).
    pub fn iter_partition(&self, partition: u32, from_position: u64) -> PartitionEvents<'_> {
        let (end, failed) = match self.head(partition) {
            Ok(h) => (h, None),
            Err(e) => (0, Some(e)),
        };
        PartitionEvents { store: self, partition, next: from_position, end, page: Vec::new().into_iter(), failed }
    }

    /// The first position of `partition` that is not a copy: 0, except in a partition that
    /// [`Store::grow_partitions`] added, which begins with copies of the history of the
    /// streams moved into it. A subscriber that reads every partition itself (rather than
    /// through a [`ProjectionEngine`](crate::ProjectionEngine)) starts such a partition here,
    /// and, to keep each stream in order, reads its own events only once it has read every
    /// older partition up to [`Store::cutover_heads`].
    pub fn copied_until(&self, partition: u32) -> Result<u64> {
        self.partition(partition)?;
        Ok(self.partition_origin(partition).map_or(0, |(live_from, _)| live_from))
    }

    /// For a partition [`Store::grow_partitions`] added: the heads the partitions before it
    /// had when the grow cut over (empty for a partition the store was created with).
    pub fn cutover_heads(&self, partition: u32) -> Result<Vec<u64>> {
        self.partition(partition)?;
        Ok(self.partition_origin(partition).map(|(_, cut)| cut).unwrap_or_default())
    }

    /// One past the last durable position of `partition` (its number of events).
    pub fn head(&self, partition: u32) -> Result<u64> {
        Ok(self.partition(partition)?.head())
    }

    /// Why `partition` stopped accepting appends, if it has (see [`Error::Poisoned`]).
    pub fn poisoned(&self, partition: u32) -> Result<Option<String>> {
        Ok(self.partition(partition)?.poison.lock().clone())
    }

    /// Counters of the write path since open, summed over all partitions.
    pub fn write_stats(&self) -> WriteStats {
        let mut s = WriteStats::default();
        for p in self.shared.parts().iter() {
            let c = &p.stats;
            s.appends += c.appends.load(Ordering::Relaxed);
            s.events += c.events.load(Ordering::Relaxed);
            s.bytes += c.bytes.load(Ordering::Relaxed);
            s.group_commits += c.groups.load(Ordering::Relaxed);
            s.syncs += c.syncs.load(Ordering::Relaxed);
        }
        s
    }

    /// Waits until every snapshot queued before this call is written and durable. Returns
    /// the first snapshot write failure since the previous flush, if any (snapshots are
    /// derived data: a failure costs replays, never events).
    pub fn flush_snapshots(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let sender = self.snapshot_tx.read().clone().ok_or(Error::Closed)?;
        sender.send(snapshot::Job::Flush(tx)).map_err(|_| Error::Closed)?;
        drop(sender);
        rx.recv().map_err(|_| Error::Closed)?
    }

    /// Counters of snapshot work since open, and the size of the sidecars loaded so far.
    pub fn snapshot_stats(&self) -> crate::SnapshotStats {
        let c = &self.shared.snapshots;
        let mut s = crate::SnapshotStats {
            written: c.written.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            rewrites: c.rewrites.load(Ordering::Relaxed),
            used: c.used.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
            ..Default::default()
        };
        for p in self.shared.parts().iter() {
            let (bytes, streams) = p.snapshots.sizes();
            s.sidecar_bytes += bytes;
            s.streams += streams;
        }
        s
    }

    pub(crate) fn sidecar_of(&self, stream: &str) -> Result<Arc<snapshot::Sidecar>> {
        Ok(self.partition(self.partition_of(stream))?.snapshots.clone())
    }

    /// Where repairs are reported (see [`Store::recovery_report`]): files above the log
    /// (projection checkpoints and dead letters) report theirs here too.
    pub(crate) fn report_to(&self) -> &Report {
        &self.shared.report
    }

    /// The signal the writers bump after each head change.
    pub(crate) fn head_signal(&self) -> Arc<partition::HeadSignal> {
        self.shared.signal.clone()
    }

    /// The store's I/O context (with its fault plan, if any).
    pub(crate) fn io(&self) -> crate::io::Io {
        self.shared.io.clone()
    }

    /// A partition streams are routed to.
    pub(crate) fn partition_ref(&self, id: u32) -> Result<Arc<Partition>> {
        self.partition(id)
    }

    /// Where partition `id` came from, if a grow added it: the first position of its own
    /// events (those before are copies of moved streams' history) and the heads of the
    /// partitions that existed before, at the cutover.
    pub(crate) fn partition_origin(&self, id: u32) -> Option<(u64, Vec<u64>)> {
        let m = self.shared.manifest.lock();
        let e = m.epochs.iter().find(|e| (e.from..e.to).contains(&id))?;
        Some((*e.live_from.get((id - e.from) as usize)?, e.cut.clone()))
    }

    pub(crate) fn snapshot_counters(&self) -> &snapshot::Counters {
        &self.shared.snapshots
    }

    /// Queues a job for the snapshotter; `wait`: block while the queue is full, otherwise
    /// count the snapshot as dropped. Returns whether it was queued.
    pub(crate) fn send_snapshot_job(&self, job: snapshot::Job, wait: bool) -> Result<bool> {
        let tx = self.snapshot_tx.read().clone().ok_or(Error::Closed)?;
        let counters = &self.shared.snapshots;
        let bytes = match &job {
            snapshot::Job::Write(p) => p.state.len() as u64,
            snapshot::Job::Flush(_) => 0,
        };
        if !wait && counters.queued_bytes.load(Ordering::Relaxed) + bytes > SNAPSHOT_QUEUE_BYTES {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        counters.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let sent = if wait {
            tx.send(job).map_err(|_| Error::Closed)
        } else {
            match tx.try_send(job) {
                Ok(()) => Ok(()),
                Err(crossbeam_channel::TrySendError::Full(_)) => {
                    counters.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(false);
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(Error::Closed),
            }
        };
        if sent.is_err() {
            counters.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        sent.map(|()| true)
    }

    /// Deletes `stream` for good: the deletion is durable when this returns; from then on the
    /// stream takes no appends and stream reads (and aggregate loads) fail with
    /// [`Error::StreamDeleted`]. Its events stay in partition reads (projections see them,
    /// like any event) until compaction erases them from the sealed segments and archives
    /// that hold them, leaving an [`AuditRecord`](crate::AuditRecord) in the archive. Events
    /// still in the active segment are erased once it is sealed and compacted. An append
    /// being committed at the moment of the delete may still be acknowledged; its events
    /// are deleted with the rest. The stream's snapshots are erased from the partition's
    /// snapshot sidecar by the next compaction. A stream that a grow moved
    /// ([`Store::grow_partitions`]) is deleted in the partitions it lived in before too, so
    /// its history at its old positions is erased as well. Returns `false` if the stream was
    /// already deleted.
    ///
    /// ```
    /// # use strata::{Error, EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// store.append("customer-7", ExpectedVersion::Any, &[EventData::new("Registered", b"{}".to_vec())])?;
    /// assert!(store.delete_stream("customer-7")?);
    /// assert!(matches!(store.read_stream("customer-7", 0, 10), Err(Error::StreamDeleted { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn delete_stream(&self, stream: &str) -> Result<bool> {
        batch::check_stream_id(stream)?;
        let hash = stream_hash(stream);
        // Under the senders' read lock, like an append: a grow moves the stream's tombstone
        // with it, and a delete must not slip between that and the cutover.
        let _routing = self.senders.read();
        let p = self.partition(router::jump_consistent_hash(hash, self.partition_count()))?;
        let at = now_nanos();
        let fresh = p.tombstones.delete(stream, at)?;
        // Where grows moved the stream from, its history stays at its old positions: the
        // tombstone goes there too, so that compaction erases those events as well.
        let earlier: Vec<u32> = {
            let m = self.shared.manifest.lock();
            m.epochs.iter().map(|e| router::jump_consistent_hash(hash, e.from)).filter(|&id| id != p.id).collect()
        };
        for id in earlier {
            self.partition(id)?.tombstones.delete(stream, at)?;
        }
        Ok(fresh)
    }

    /// Applies the compaction policy now, on the calling thread (one compaction at a time per
    /// partition: this waits for a background run in progress there): sealed segments that qualify become archives, and archives
    /// holding deleted streams are rewritten without them. Appends and reads go on throughout.
    pub fn compact(&self) -> Result<CompactionReport> {
        self.compact_with(false, &mut |_| {})
    }

    /// Like [`Store::compact`], telling `progress` as it goes; with `force`, every sealed
    /// segment is archived whatever the policy says.
    pub fn compact_with(
        &self,
        force: bool,
        progress: &mut dyn FnMut(crate::CompactionProgress),
    ) -> Result<CompactionReport> {
        self.check_open()?;
        let r = crate::compaction::compact_store(
            &self.shared.parts(),
            &self.shared.compaction,
            force,
            &self.shared.closing,
            progress,
        );
        self.shared.compactions.record(&r);
        r
    }

    /// Reads back everything the store holds and checks it: every batch's CRC in every
    /// segment, every sealed segment's index, every archive's blocks and index entries.
    /// Returns the problems found, each naming its file and offset (empty: all is well).
    pub fn verify(&self) -> Vec<Error> {
        if let Err(e) = self.check_open() {
            return vec![e];
        }
        self.shared.parts().iter().flat_map(|p| p.verify()).collect()
    }

    /// Totals of the compactions run since the store was opened, background ones included
    /// (whose errors surface only here and in [`Metrics`](crate::Metrics)).
    pub fn compaction_stats(&self) -> crate::CompactionStats {
        self.shared.compactions.stats()
    }

    /// What each partition keeps on disk: segments, archives, their sizes, erased events.
    pub fn storage(&self) -> Result<Vec<crate::PartitionStorage>> {
        self.check_open()?;
        self.shared.parts().iter().map(|p| crate::compaction::storage(p)).collect()
    }

    /// Every repair made to the store's files since open, and what went wrong in the
    /// background (sealing, snapshot writes). Open recovers each partition's active segment,
    /// tombstones and interrupted compactions; sealed segments (with their indexes) and
    /// snapshot sidecars are checked on first use, and the first call of this checks those
    /// not used yet, so the report covers every file of the store (damage that cannot be
    /// repaired is an error of the reads that meet it, and of [`Store::verify`]). Projection
    /// files (checkpoints, dead letters) report here when a projection is registered.
    pub fn recovery_report(&self) -> Vec<RecoveryAction> {
        for p in self.shared.parts().iter() {
            p.load_lazily_checked();
        }
        self.shared.report.lock().clone()
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
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        if self.shared.closing.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.senders.write().clear();
        *self.seal_tx.lock() = None;
        *self.snapshot_tx.write() = None;
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

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Events read per page by the iterators.
const PAGE: usize = 256;

/// The streams of a store (see [`Store::streams`]).
#[derive(Debug)]
pub struct Streams<'a> {
    store: &'a Store,
    next_partition: u32,
    ids: std::vec::IntoIter<String>,
    failed: bool,
}

impl Iterator for Streams<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        loop {
            if let Some(id) = self.ids.next() {
                return Some(Ok(id));
            }
            if self.failed || self.next_partition >= self.store.partition_count() {
                return None;
            }
            let p = self.next_partition;
            self.next_partition += 1;
            match self.store.partition_streams(p) {
                Ok(ids) => self.ids = ids.into_iter(),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The events of one stream (see [`Store::iter_stream`]).
#[derive(Debug)]
pub struct StreamEvents<'a> {
    store: &'a Store,
    stream: String,
    next: u64,
    /// One past the last version to read.
    end: u64,
    page: std::vec::IntoIter<RecordedEvent>,
    failed: Option<Error>,
}

impl Iterator for StreamEvents<'_> {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Result<RecordedEvent>> {
        if let Some(e) = self.failed.take() {
            self.end = 0;
            return Some(Err(e));
        }
        if let Some(e) = self.page.next() {
            return Some(Ok(e));
        }
        if self.next >= self.end {
            return None;
        }
        let want = (self.end - self.next).min(PAGE as u64) as usize;
        match self.store.read_stream(&self.stream, self.next, want) {
            Ok(page) if !page.is_empty() => {
                self.next = page.last().map_or(self.end, |e| e.version + 1);
                self.page = page.into_iter();
                self.page.next().map(Ok)
            }
            Ok(_) => None,
            Err(e) => {
                self.end = 0;
                Some(Err(e))
            }
        }
    }
}

/// The events of one partition (see [`Store::iter_partition`]).
#[derive(Debug)]
pub struct PartitionEvents<'a> {
    store: &'a Store,
    partition: u32,
    next: u64,
    /// The head when the iterator was made: where it stops.
    end: u64,
    page: std::vec::IntoIter<RecordedEvent>,
    failed: Option<Error>,
}

impl Iterator for PartitionEvents<'_> {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Result<RecordedEvent>> {
        if let Some(e) = self.failed.take() {
            self.end = 0;
            return Some(Err(e));
        }
        if let Some(e) = self.page.next() {
            return Some(Ok(e));
        }
        if self.next >= self.end {
            return None;
        }
        match self.store.read_partition(self.partition, self.next, PAGE) {
            Ok(mut page) => {
                page.retain(|e| e.position < self.end);
                if page.is_empty() {
                    // Only erased positions (or none) are left before the end.
                    self.next = self.end;
                    return None;
                }
                self.next = page.last().map_or(self.end, |e| e.position + 1);
                self.page = page.into_iter();
                self.page.next().map(Ok)
            }
            Err(e) => {
                self.end = 0;
                Some(Err(e))
            }
        }
    }
}

enum FutureState {
    Waiting(oneshot::Receiver<Result<AppendResult>>),
    Failed(Option<Error>),
}

/// A pending append from [`Store::append_async`]; resolves when the append is durable.
#[must_use = "an append future does nothing visible unless awaited or waited on"]
pub struct AppendFuture {
    state: FutureState,
}

impl std::fmt::Debug for AppendFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendFuture").finish_non_exhaustive()
    }
}

impl AppendFuture {
    /// Blocks the current thread until the append completes.
    pub fn wait(self) -> Result<AppendResult> {
        match self.state {
            FutureState::Waiting(rx) => rx.recv().map_err(|_| Error::Closed)?,
            FutureState::Failed(e) => Err(e.unwrap_or(Error::Closed)),
        }
    }
}

impl Future for AppendFuture {
    type Output = Result<AppendResult>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            FutureState::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(Error::Closed))),
            FutureState::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(r)) => Poll::Ready(r),
                Poll::Ready(Err(_)) => Poll::Ready(Err(Error::Closed)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
