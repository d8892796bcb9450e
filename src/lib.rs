//! strata: an embeddable, log-structured event store for event-sourced (CQRS/ES) systems.
//!
//! A [`Store`] is one directory holding a number of partitions, set at creation and raised
//! online by [`Store::grow_partitions`]. A stream (one
//! aggregate's history) lives in exactly one partition, chosen by a stable hash of its id and
//! jump consistent hash. Each partition is an append-only log of segment files; appends from
//! many threads are group-committed by the partition's writer (one write, one `fdatasync`).
//! Sealed segments are memory-mapped with their index files for reads.
//!
//! ```
//! use strata::{EventData, ExpectedVersion, Options, Store};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
//! store.append("account-42", ExpectedVersion::NoStream, &[EventData::new("Opened", b"{}".to_vec())])?;
//! assert_eq!(store.stream_version("account-42")?, Some(0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! On top of the log:
//! - [`Aggregate`], [`Store::load`] and [`Store::commit`]: aggregates loaded from their latest
//!   snapshot (kept in a sidecar file per partition) plus the events after it;
//! - [`ProjectionEngine`]: read models fed by a pool of workers, one per partition at a time,
//!   with durable checkpoints, a dead-letter queue, lag against an SLA and parallel rebuilds;
//! - [`CommandBus`]: commands with back-pressure (overload, rate and lag gates);
//! - [`ViewCache`]: a read-through cache for hot views; [`Metrics`]: everything measured, in
//!   one snapshot and as Prometheus text.
//!
//! The on-disk format is specified in FORMAT.md.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod aggregate;
mod archive;
mod bus;
mod cache;
mod compaction;
mod dlq;
mod error;
mod event;
mod format;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod grow;
pub mod inspect;
mod io;
mod lock;
mod metrics;
mod options;
mod partition;
mod prealloc;
mod projection;
mod records;
mod router;
mod segment;
mod snapshot;
mod store;
mod tombstones;
mod writer;

pub use aggregate::{Aggregate, ApplyError, Loaded, SnapshotIgnored, SnapshotStats, SnapshotUse};
pub use bus::{BusOptions, BusStats, Command, CommandBus};
pub use cache::{CacheStats, ViewCache};
pub use compaction::{CompactionOptions, CompactionProgress, CompactionReport, CompactionStats, PartitionStorage};
pub use error::{Error, ErrorKind, Result};
pub use event::{AppendResult, EventData, EventView, ExpectedVersion, RecordedEvent};
pub use format::FORMAT_VERSION;
pub use format::archive::{AuditRecord, Reason as ArchiveReason};
pub use format::batch::{MAX_EVENT_TYPE_LEN, MAX_STREAM_ID_LEN};
pub use format::snapshot::MAX_SNAPSHOT_BYTES;
pub use grow::GrowReport;
#[cfg(feature = "fault-injection")]
pub use io::{FaultKind, FaultOp, FaultPlan};
pub use metrics::{Histogram, LATENCY_BOUNDS_MICROS, Metrics, PartitionMetrics};
pub use options::{
    DEFAULT_MAX_APPEND_BYTES, DEFAULT_MAX_EVENT_BYTES, DEFAULT_PARTITIONS, DEFAULT_SEGMENT_BYTES, Durability, Options,
};
pub use projection::{
    Batch, BatchError, Checkpoints, DeadLetter, HandlerError, OnFailure, PartitionStatus, Projection, ProjectionEngine,
    ProjectionOptions, ProjectionStatus, RebuildReport, ReplayReport, View,
};
pub use router::{jump_consistent_hash, partition_for, stream_hash};
pub use store::{AppendFuture, PartitionEvents, RecoveryAction, Store, StreamEvents, Streams, WriteStats};

/// The README's example is compiled as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
