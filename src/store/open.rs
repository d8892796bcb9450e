//! Opening a store: the manifest read (or the store created), the lock taken, every
//! partition recovered in parallel, the grow records checked against the heads, then the
//! background threads started: a writer and a preallocator per partition, the sealer, the
//! snapshotter and the compactor. FORMAT.md §3 and §9 give the protocol.
//!
//! Options that set a partition count or a segment size the store does not have are refused
//! (`Options::check_against`); the count the store was created with is still accepted after a
//! grow. Recovery threads are spawned in chunks of 16 (`RECOVERY_THREADS`), and each chunk is
//! joined before the next is spawned. A thread that cannot be spawned fails its partition with
//! an I/O error. Every partition is opened even if one fails; open then returns the error of
//! the lowest-numbered failed partition.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};

use crate::clock::now_nanos;
use crate::compaction::{self, SnapshotIndex};
use crate::error::{Error, Result};
use crate::format::batch::Limits;
use crate::format::header::{Cause, Malformed};
use crate::format::manifest::{self, Manifest};
use crate::format::segment as seg_format;
use crate::io::Io;
use crate::io::lock::{self, DirLock};
use crate::log::prealloc;
use crate::log::{BlockCache, Partition, Tail, Writer, WriterConfig, dir_name, partition, sealer};
use crate::report::Report;
use crate::router;
use crate::snapshot::{self, Job, Sidecar, Snapshots};
use crate::sync::HeadSignal;

use super::{Backend, Local, Options, Shared, Store};

/// The body of a background thread.
type Thread = Box<dyn FnOnce() -> Result<()> + Send>;

/// Starts a named background thread.
fn spawn(dir: &Path, name: String, f: Thread) -> Result<JoinHandle<Result<()>>> {
    std::thread::Builder::new().name(name).spawn(f).map_err(|e| Error::io("spawn thread", dir, e))
}

/// How many partitions recover at once.
const RECOVERY_THREADS: usize = 16;

impl Local {
    pub(crate) fn open(dir: impl AsRef<Path>, options: Options) -> Result<Local> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        crate::trace::span!(_open, INFO, "strata::recovery", "open", dir = %dir.display());
        crate::trace::timer!(started, INFO);
        let io = Io::with_faults(options.faults.clone()).with_sim(options.sim.clone());
        let (manifest, lock) = manifest_and_lock(&dir, &options, &io)?;
        let created_with = manifest.epochs.first().map_or(manifest.partition_count, |e| e.from);
        options.check_against(manifest.partition_count, created_with, manifest.segment_bytes)?;
        let report = Report::default();
        let signal = Arc::new(HeadSignal::default());
        let archive_cache = BlockCache::new(options.archive_cache_bytes);
        let (partitions, tails) =
            recover_partitions(&dir, &manifest, &io, &report, &signal, options.recovery_scan_bytes, &archive_cache)?;
        check_epochs(&dir, &manifest, &partitions)?;
        let sidecars = partitions.iter().map(|p| Arc::new(Sidecar::new(&p.dir, p.id, io.clone(), report.clone())));
        let (snapshots, snapshot_jobs) = Snapshots::new(sidecars.collect());
        let writer_cfg = WriterConfig {
            durability: options.durability,
            preallocate: options.preallocate,
            segment_bytes: manifest.segment_bytes,
            max_group_bytes: options.max_group_bytes,
            max_group_appends: options.max_group_appends,
            journal_interval: options.recovery_scan_bytes,
            dedup_appends: options.idempotency_appends,
            dedup_max_ids: options.idempotency_max_ids,
        };
        let hash_id = manifest.hash_id;
        let routed = manifest.partition_count;
        let shared = Arc::new(Shared {
            dir,
            manifest: Mutex::new(manifest),
            partitions: RwLock::new(Arc::new(partitions)),
            routed: routed.into(),
            limits: Limits { max_event_bytes: options.max_event_bytes, max_append_bytes: options.max_append_bytes },
            report,
            snapshots: Arc::new(snapshots),
            append_latency: Default::default(),
            compaction: options.compaction.clone(),
            compactions: Default::default(),
            closing: Default::default(),
            appends_refused: Default::default(),
            refusing: Default::default(),
            io,
            signal,
            writer_cfg,
            hash_id,
            lock: Mutex::new(Some(lock)),
            archive_cache,
        });
        // The store exists before its threads do: if spawning one fails, dropping it stops and
        // joins those already running before the lock is released.
        let store = Local {
            shared,
            senders: RwLock::new(Vec::new()),
            seal_tx: Mutex::new(None),
            compactor_stop: Mutex::new(None),
            threads: Mutex::new(Vec::new()),
            growing: Mutex::new(()),
        };
        store.start_threads(tails, snapshot_jobs, options.snapshot_rewrite_bytes)?;
        #[cfg(feature = "tracing")]
        {
            let parts = store.shared.parts();
            let repairs = store.shared.report.all();
            let torn = |a: &crate::report::RecoveryAction| match a {
                crate::report::RecoveryAction::TruncatedTornTail { discarded_bytes, .. } => *discarded_bytes,
                _ => 0,
            };
            crate::trace::event!(
                INFO,
                "strata::recovery",
                partitions = parts.len(),
                positions = parts.iter().map(|p| p.head()).sum::<u64>(),
                scanned_bytes = parts.iter().map(|p| p.scanned_at_open).sum::<u64>(),
                torn_bytes = repairs.iter().map(torn).sum::<u64>(),
                repairs = repairs.len(),
                duration_us = started.us(),
                "store opened"
            );
        }
        Ok(store)
    }

    /// Starts the background threads: each partition's writer (and preallocator), the sealer,
    /// the snapshotter and, if the policy runs in the background, the compactor.
    fn start_threads(
        &self,
        tails: Vec<Tail>,
        snapshot_jobs: crossbeam_channel::Receiver<Job>,
        min_rewrite: u64,
    ) -> Result<()> {
        let dir = &self.shared.dir;
        let (seal_tx, seal_rx) = crossbeam_channel::unbounded();
        *self.seal_tx.lock() = Some(seal_tx);
        for (part, tail) in self.shared.parts().iter().zip(tails) {
            self.start_writer(part, tail)?;
        }
        let mut threads = Vec::new();
        threads.push(spawn(
            dir,
            "strata-sealer".into(),
            Box::new(move || {
                sealer::run_sealer(seal_rx);
                Ok(())
            }),
        )?);
        let snapshots = self.shared.snapshots.clone();
        threads.push(spawn(
            dir,
            "strata-snapshotter".into(),
            Box::new(move || {
                snapshot::snapshotter::run(snapshot_jobs, &snapshots, min_rewrite);
                Ok(())
            }),
        )?);
        if let Some(every) = self.shared.compaction.interval {
            let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
            let shared = self.shared.clone();
            threads.push(spawn(
                dir,
                "strata-compactor".into(),
                Box::new(move || {
                    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(every) {
                        let r = shared.compact(false, &mut |_| {});
                        shared.compactions.record(&r);
                    }
                    Ok(())
                }),
            )?);
            *self.compactor_stop.lock() = Some(stop_tx);
        }
        self.threads.lock().extend(threads);
        Ok(())
    }

    /// Starts the writer (and its preallocator) of an open partition, and appends its queue
    /// to `senders`. Writer threads hold the only senders of the sealer's and preallocators'
    /// queues, so those threads end after the writers (joining them in any order is safe once
    /// the append senders are gone). Each partition has its own preallocator, so no writer
    /// ever waits for another partition's zero-fill.
    pub(super) fn start_writer(&self, part: &Arc<Partition>, tail: Tail) -> Result<()> {
        let seal_tx = self.seal_tx.lock().clone().ok_or(Error::Closed)?;
        let spawn = |name: String, f: Thread| spawn(&self.shared.dir, name, f);
        let (tx, rx) = crossbeam_channel::unbounded();
        let (fill_tx, fill_rx) = crossbeam_channel::unbounded();
        let w = Writer::new(part.clone(), tail, self.shared.writer_cfg, seal_tx, fill_tx);
        let mut threads = self.threads.lock();
        // The queue is published last, once both threads run (if the writer fails to start,
        // dropping it ends the preallocator).
        threads.push(spawn(
            format!("strata-prealloc-{}", part.id),
            Box::new(move || {
                prealloc::run(fill_rx);
                Ok(())
            }),
        )?);
        threads.push(spawn(format!("strata-writer-{}", part.id), Box::new(move || w.run(rx)))?);
        self.senders.write().push(tx);
        Ok(())
    }

    /// Adds an opened partition (one a grow creates) to the store's partitions, not routed to
    /// yet, and starts its writer. Its id must be the next one.
    pub(super) fn add_partition(&self, part: Arc<Partition>, tail: Tail) -> Result<()> {
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
        let sidecar = Sidecar::new(&part.dir, part.id, self.shared.io.clone(), self.shared.report.clone());
        self.shared.snapshots.add(Arc::new(sidecar));
        let mut parts = self.shared.partitions.write();
        let mut grown: Vec<Arc<Partition>> = parts.iter().cloned().collect();
        grown.push(part);
        *parts = Arc::new(grown);
        Ok(())
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
            io.create_dir_all(dir)?;
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
            partition::create(&dir.join(dir_name(id)), id, io)?;
        }
        io.sync_dir(dir)?;
        io.write_atomic(dir, manifest::FILE_NAME, &manifest.encode())?;
        Ok((manifest, lock))
    }
}

impl Shared {
    /// Applies the compaction policy (or, with `force`, archives every sealed segment) to
    /// every partition, each with its snapshot sidecar.
    pub(super) fn compact(
        &self,
        force: bool,
        progress: &mut dyn FnMut(compaction::CompactionProgress),
    ) -> Result<compaction::CompactionReport> {
        let sidecars = self.snapshots.all();
        let parts = self.parts();
        let pairs: Vec<(Arc<Partition>, &dyn SnapshotIndex)> =
            parts.iter().zip(sidecars.iter()).map(|(p, s)| (p.clone(), &**s as &dyn SnapshotIndex)).collect();
        compaction::compact_store(&pairs, &self.compaction, force, &self.closing, progress)
    }
}

/// Reads the manifest and takes the lock, or creates the store (with `create_if_missing`).
fn manifest_and_lock(dir: &Path, options: &Options, io: &Io) -> Result<(Manifest, DirLock)> {
    let manifest_path = dir.join(manifest::FILE_NAME);
    match read_bounded(&manifest_path, manifest::MAX_LEN) {
        Ok(bytes) => {
            if options.error_if_exists {
                return Err(Error::AlreadyExists { path: dir.to_path_buf(), reason: "a store exists there".into() });
            }
            Manifest::decode(&bytes).map_err(|e| manifest_error(&manifest_path, e))?;
            let lock = lock::acquire(dir)?;
            // Read again under the lock: the holder it waited for may have grown the store.
            let bytes =
                read_bounded(&manifest_path, manifest::MAX_LEN).map_err(|e| Error::io("read", &manifest_path, e))?;
            Ok((Manifest::decode(&bytes).map_err(|e| manifest_error(&manifest_path, e))?, lock))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if !options.create_if_missing {
                let reason = if dir.is_dir() { "no MANIFEST file" } else { "no such directory" };
                return Err(Error::NotAStore { path: dir.to_path_buf(), reason: reason.into() });
            }
            Local::create(dir, options, io)
        }
        Err(e) if e.kind() == ErrorKind::NotADirectory => {
            Err(Error::NotAStore { path: dir.to_path_buf(), reason: "not a directory".into() })
        }
        Err(e) if manifest_path.is_dir() => {
            Err(Error::NotAStore { path: manifest_path, reason: format!("MANIFEST is not a file ({e})") })
        }
        Err(e) => Err(Error::io("read", &manifest_path, e)),
    }
}

/// Recovers the store's partitions in parallel, a bounded number at a time; with a grow in
/// progress, its new partitions too (not routed to until it completes).
fn recover_partitions(
    dir: &Path,
    manifest: &Manifest,
    io: &Io,
    report: &Report,
    signal: &Arc<HeadSignal>,
    journal_interval: u64,
    archive_cache: &Arc<BlockCache>,
) -> Result<(Vec<Arc<Partition>>, Vec<Tail>)> {
    let ids: Vec<u32> = (0..manifest.partition_count.max(manifest.growing_to)).collect();
    let opened: Vec<Result<(Arc<Partition>, Tail)>> = std::thread::scope(|s| {
        let mut results = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(RECOVERY_THREADS) {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&id| {
                    let pdir = dir.join(dir_name(id));
                    let (io, report, signal) = (io.clone(), report.clone(), signal.clone());
                    let cache = archive_cache.clone();
                    std::thread::Builder::new()
                        .name(format!("strata-open-{id}"))
                        .spawn_scoped(s, move || Partition::open(pdir, id, io, report, signal, journal_interval, cache))
                        .map_err(|e| Error::io("spawn recovery thread", dir, e))
                })
                .collect();
            for h in handles {
                results.push(h.and_then(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::io("recover partition", dir, std::io::Error::other("recovery thread panicked")))
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
    Ok((partitions, tails))
}

/// Every grow committed only once its cut and copied positions were on disk: a head behind
/// one of them means a damaged manifest (or lost data), and projections would skip or wait
/// forever.
fn check_epochs(dir: &Path, manifest: &Manifest, partitions: &[Arc<Partition>]) -> Result<()> {
    for e in &manifest.epochs {
        let behind =
            e.cut.iter().enumerate().chain(e.live_from.iter().enumerate().map(|(i, v)| (i + e.from as usize, v)));
        for (id, &pos) in behind {
            if let Some(p) = partitions.get(id).filter(|p| p.head() < pos) {
                return Err(Error::corruption(
                    dir.join(manifest::FILE_NAME),
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
    Ok(())
}

/// A manifest that is not one says the directory is not a store; damage or a newer format
/// are what they are.
fn manifest_error(path: &Path, m: Malformed) -> Error {
    match m.cause {
        Cause::Foreign => Error::NotAStore { path: path.to_path_buf(), reason: m.what },
        _ => m.into_error(path),
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
    /// store is open elsewhere, [`Error::AlreadyExists`] with `error_if_exists`,
    /// [`Error::InvalidOptions`] for creation settings the store does not have.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Store> {
        Ok(Store { backend: Backend::Local(Local::open(dir, options)?) })
    }
}
