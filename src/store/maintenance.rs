//! Looking after a store: deleting streams, compaction on demand, verification, the repair
//! report, and snapshot flushes and counters.
//!
//! `delete_stream` holds the routing lock for reading while it routes the stream and writes its
//! tombstones (`store::grow`), so that no delete falls between a grow's last tombstone move and
//! its commit; each partition's tombstones are written under that file's lock
//! (`log::tombstones`). `verify` reads back every batch of every segment (CRC), every sealed
//! segment's index, and every archive's blocks and entries. `recovery_report` first loads every
//! sealed segment and sidecar not used yet, so that the repairs made on first use are in its
//! first answer.

use crate::clock::now_nanos;
use crate::compaction::{self, CompactionProgress, CompactionReport, CompactionStats, PartitionStorage, SnapshotIndex};
use crate::error::{Error, Result};
use crate::log::block_cache::ArchiveCacheStats;
use crate::log::writer::{AppendRequest, Queued};
use crate::report::RecoveryAction;
use crate::router;
use crate::snapshot::{Sidecar, SnapshotStats};

use super::{Local, Store};

impl Local {
    pub(crate) fn delete_stream(&self, stream: &str) -> Result<bool> {
        // Under the senders' read lock, like an append: a grow moves the stream's tombstone
        // with it, and a delete must not slip between that and the cutover.
        let routing = self.senders.read();
        let (_, p) = self.route(stream)?;
        let hash = self.route_hash(stream);
        // While no layout is sure (a grow's commit half done), a tombstone written in the old
        // layout could miss the partition a reopen routes the stream to.
        self.shared.check_appends(p.id)?;
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
        // An append the writer checked before the tombstone existed may be in the group it is
        // committing: wait for that group, so that no append to the stream is acknowledged
        // after this returns. A poisoned or closing writer acknowledges nothing more, so its
        // refusal is no failure of the delete, which is durable already.
        let (req, rx) = AppendRequest::barrier();
        if let Some(sender) = routing.get(p.id as usize)
            && sender.send(Queued::One(req)).is_ok()
        {
            let _ = rx.recv();
        }
        Ok(fresh)
    }

    pub(crate) fn compact(&self) -> Result<CompactionReport> {
        self.compact_with(false, &mut |_| {})
    }

    pub(crate) fn compact_with(
        &self,
        force: bool,
        progress: &mut dyn FnMut(CompactionProgress),
    ) -> Result<CompactionReport> {
        self.check_open()?;
        let r = self.shared.compact(force, progress);
        self.shared.compactions.record(&r);
        r
    }

    pub(crate) fn verify(&self) -> Vec<Error> {
        if let Err(e) = self.check_open() {
            return vec![e];
        }
        self.shared.parts().iter().flat_map(|p| p.verify()).collect()
    }

    pub(crate) fn compaction_stats(&self) -> CompactionStats {
        self.shared.compactions.stats()
    }

    pub(crate) fn archive_cache_stats(&self) -> ArchiveCacheStats {
        self.shared.archive_cache.stats()
    }

    pub(crate) fn storage(&self) -> Result<Vec<PartitionStorage>> {
        self.check_open()?;
        self.shared.parts().iter().map(|p| compaction::storage(p)).collect()
    }

    pub(crate) fn recovery_report(&self) -> Vec<RecoveryAction> {
        for p in self.shared.parts().iter() {
            p.load_lazily_checked();
        }
        for sidecar in self.shared.snapshots.all().iter() {
            sidecar.load();
        }
        self.shared.report.all()
    }

    pub(crate) fn flush_snapshots(&self) -> Result<()> {
        self.shared.snapshots.flush()
    }

    pub(crate) fn snapshot_stats(&self) -> SnapshotStats {
        self.shared.snapshots.stats()
    }
}

/// Compaction reads and erases snapshots through the sidecar's own methods.
impl SnapshotIndex for Sidecar {
    fn latest_version(&self, stream: &str) -> std::result::Result<Option<u64>, String> {
        Sidecar::latest_version(self, stream)
    }

    fn erase(&self, deleted: &dyn Fn(&str) -> bool) -> Result<u64> {
        Sidecar::erase(self, deleted)
    }
}

impl Store {
    /// Deletes `stream` for good: the deletion is durable when this returns; from then on the
    /// stream takes no appends and stream reads (and aggregate loads) fail with
    /// [`Error::StreamDeleted`]. Its events stay in partition reads (projections see them,
    /// like any event) until compaction erases them from the sealed segments and archives
    /// that hold them, leaving an [`AuditRecord`](crate::compaction::AuditRecord) in the archive. Events
    /// still in the active segment are erased once it is sealed and compacted. An append
    /// being committed at the moment of the delete may still be acknowledged, before the
    /// delete returns (it waits for the group being committed); its events are deleted with
    /// the rest. Once it has returned, every append to the stream fails. The stream's snapshots are erased from the partition's
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
        self.local("delete_stream")?.delete_stream(stream)
    }

    /// Applies the compaction policy now, on the calling thread (one compaction at a time per
    /// partition: this waits for a background run in progress there): sealed segments that qualify become archives, and archives
    /// holding deleted streams are rewritten without them. Appends and reads go on throughout.
    pub fn compact(&self) -> Result<CompactionReport> {
        self.local("compaction")?.compact()
    }

    /// Like [`Store::compact`], telling `progress` as it goes; with `force`, every sealed
    /// segment is archived whatever the policy says.
    pub fn compact_with(&self, force: bool, progress: &mut dyn FnMut(CompactionProgress)) -> Result<CompactionReport> {
        self.local("compaction")?.compact_with(force, progress)
    }

    /// Reads back everything the store holds and checks it: every batch's CRC in every
    /// segment, every sealed segment's index, every archive's blocks and index entries.
    /// Returns the problems found, each naming its file and offset (empty: all is well).
    pub fn verify(&self) -> Vec<Error> {
        match self.local_opt() {
            Some(l) => l.verify(),
            None => vec![Error::Unsupported { operation: "verify", backend: "jetstream" }],
        }
    }

    /// Totals of the compactions run since the store was opened, background ones included
    /// (whose errors surface only here and in [`Metrics`](crate::Metrics)).
    pub fn compaction_stats(&self) -> CompactionStats {
        self.local_opt().map(|l| l.compaction_stats()).unwrap_or_default()
    }

    /// The archive block cache's counters: block reads served from memory and decompressed,
    /// bytes held, and how many archives have had their meta sections checked since open
    /// (see [`Options::archive_cache_bytes`](crate::Options::archive_cache_bytes)).
    pub fn archive_cache_stats(&self) -> ArchiveCacheStats {
        self.local_opt().map(|l| l.archive_cache_stats()).unwrap_or_default()
    }

    /// What each partition keeps on disk: segments, archives, their sizes, erased events.
    pub fn storage(&self) -> Result<Vec<PartitionStorage>> {
        self.local("storage")?.storage()
    }

    /// Every repair made to the store's files since open, and what went wrong in the
    /// background (sealing, snapshot writes). Open recovers each partition's active segment,
    /// tombstones and interrupted compactions; sealed segments (with their indexes) and
    /// snapshot sidecars are checked on first use, and the first call of this checks those
    /// not used yet, so the report covers every file of the store (damage that cannot be
    /// repaired is an error of the reads that meet it, and of [`Store::verify`]). Projection
    /// files (checkpoints, dead letters) report here when a projection is registered.
    pub fn recovery_report(&self) -> Vec<RecoveryAction> {
        dispatch!(self, recovery_report())
    }

    /// Waits until every snapshot queued before this call is written and durable. Returns
    /// the first snapshot write failure since the previous flush, if any (snapshots are
    /// derived data: a failure costs replays, never events).
    pub fn flush_snapshots(&self) -> Result<()> {
        dispatch!(self, flush_snapshots())
    }

    /// Counters of snapshot work since open, and the size of the sidecars loaded so far.
    pub fn snapshot_stats(&self) -> SnapshotStats {
        dispatch!(self, snapshot_stats())
    }
}
