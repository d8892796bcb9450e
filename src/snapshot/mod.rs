//! Snapshots of aggregates, kept in a sidecar file per partition beside its segments
//! (`sidecar`), and written by one background thread, the snapshotter (`snapshotter`), so
//! that taking one never blocks an append. Loading an aggregate from its latest snapshot is
//! the aggregate module's work; this floor only stores them.

use std::sync::atomic::AtomicU64;

use crate::error::Result;
use crate::format::snapshot::Meta;

pub(crate) mod sidecar;
pub(crate) mod snapshotter;

pub(crate) use sidecar::Sidecar;
pub(crate) use snapshotter::Snapshots;

/// Counters of snapshot work (see [`Store::snapshot_stats`](crate::Store::snapshot_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotStats {
    /// Snapshots written to sidecars.
    pub written: u64,
    /// Automatic snapshots dropped because the snapshotter's queue was full.
    pub dropped: u64,
    /// Snapshots whose write failed.
    pub failed: u64,
    /// Sidecar rewrites (dropping superseded snapshots).
    pub rewrites: u64,
    /// Loads that started from a snapshot.
    pub used: u64,
    /// Loads that ignored a snapshot (see [`SnapshotIgnored`](crate::SnapshotIgnored)).
    pub ignored: u64,
    /// Bytes in the sidecar files read so far (a sidecar is read on first use).
    pub sidecar_bytes: u64,
    /// Streams with a snapshot, in the sidecars read so far.
    pub streams: u64,
}

/// Counters of the snapshot machinery, shared by the store and its snapshotter.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
    pub rewrites: AtomicU64,
    pub used: AtomicU64,
    pub ignored: AtomicU64,
    /// State bytes of the snapshots waiting in the queue.
    pub queued_bytes: AtomicU64,
}

/// A snapshot waiting for the snapshotter.
#[derive(Debug)]
pub(crate) struct Pending {
    pub partition: u32,
    pub stream: String,
    pub meta: Meta,
    pub state: Vec<u8>,
}

/// Work for the snapshotter.
#[derive(Debug)]
pub(crate) enum Job {
    Write(Pending),
    /// Reply once everything queued before this is written (or failed).
    Flush(oneshot::Sender<Result<()>>),
}

/// A snapshot as read back from a sidecar.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub meta: Meta,
    pub state: Vec<u8>,
}
