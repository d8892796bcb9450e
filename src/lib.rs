//! strata: an embeddable, log-structured event store for event-sourced (CQRS/ES) systems.
//!
//! A [`Store`] is one directory holding a number of partitions, set at creation and raised
//! online by [`Store::grow_partitions`]. A stream (one aggregate's history) lives in exactly
//! one partition, chosen by a stable hash of its id and jump consistent hash. Each partition
//! is an append-only log of segment files; appends from many threads are group-committed by
//! the partition's writer (one write, one `fdatasync`). Sealed segments are memory-mapped
//! with their index files for reads.
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
//! - [`ProjectionEngine`] ([`projection`]): read models fed by a pool of workers, one per
//!   partition at a time, with durable checkpoints, a dead-letter queue, lag against an SLA
//!   and parallel rebuilds;
//! - [`CommandBus`] ([`bus`]): commands with back-pressure (overload, rate and lag gates);
//! - [`ViewCache`] ([`cache`]): a read-through cache for hot views; [`Metrics`] ([`metrics`]):
//!   everything measured, in one snapshot and as Prometheus text;
//! - [`compaction`] of old segments into compressed archives, and [`inspect`] to read any
//!   strata file without opening its store.
//!
//! The everyday types are at the root; the rest is grouped by what it belongs to: the
//! [`store`] module holds what `Store` methods return besides events (iterators, reports,
//! counters), [`limits`] the sizes and defaults, [`routing`] the partition function.
//!
//! The on-disk format is specified in FORMAT.md.
//!
//! # Tracing
//!
//! With the `tracing` feature, strata sends spans and events through the [`tracing`
//! crate](https://docs.rs/tracing) (without it, none of this is compiled in). Durations are
//! `duration_us` (microseconds; measured only while a subscriber wants the level); failures
//! are WARN events. Counters stay in [`Metrics`].
//!
//! | target | span / event (level) | fields |
//! |---|---|---|
//! | `strata::append` | `group commit` (DEBUG) | partition, appends, accepted, events, first_position, bytes, write_us, sync_us, durability |
//! | | `background sync` (DEBUG), `segment rolled` (DEBUG) | partition, bytes, sync_us; partition, base |
//! | | `group commit failed`, `partition poisoned` (WARN) | partition, appends, error; partition, cause |
//! | `strata::recovery` | span `open` (INFO) | dir |
//! | | `active segment recovered` (DEBUG) | partition, segment, data_end, journaled_bytes, scanned_bytes, torn_bytes, duration_us |
//! | | `store opened` (INFO) | partitions, positions (sum of heads), scanned_bytes, torn_bytes, repairs, duration_us |
//! | `strata::load` | span `load` (DEBUG) | stream, aggregate |
//! | | `loaded` (DEBUG) | version, replayed, snapshot (none, used, ignored), snapshot_version, ignored (why), as_of, duration_us |
//! | `strata::projection` | span `batch` (DEBUG) | projection, partition, from |
//! | | `batch` (DEBUG) | events, first_position, next_position, dead_lettered, outcome (ok, dead_lettered, stopped, interrupted, gap, closed), duration_us |
//! | | `handler failed` (WARN) | projection, partition, position, index, attempt, error |
//! | | `dead-lettered` (WARN) | projection, partition, position, stream, version, attempts, error |
//! | | `projection stopped` (WARN) | projection, partition, position, reason |
//! | `strata::compaction` | span `compact` (INFO) | force, partitions |
//! | | `partition compacted` (DEBUG) | partition, segments, archives, rewritten, events_archived, events_erased, bytes_in, bytes_out, skipped, duration_us |
//! | | `compaction done` (INFO; DEBUG if it did nothing) | the same totals, snapshots_erased |
//! | `strata::grow` | span `grow` (INFO), `copy round` (DEBUG) | from, to; round, copied_events |
//! | | `grow done` (INFO) | from, to, epoch, moved_streams, copied_events, already_copied, rounds, cutover_events, cutover_us, resumed, duration_us |
//!
//! A projection's and an aggregate's own events nest in the `batch` and `load` spans.
//!
//! # The floors of the house
//!
//! The source is layered, and the folders are the layers. From the bottom:
//!
//! 1. base: `error`, `event`, `router`, `clock`, `sync`, `report`, `trace`;
//! 2. `io/`: the file seam, fault injection, the lock, and `mmap` (the only `unsafe`);
//! 3. `format/`: the bytes of every file, encoders beside decoders;
//! 4. `log/`: the engine core: partitions, segments, the write path (`writer`), the read
//!    path (`read`, `view`), recovery, tombstones; and `inspect`, which reads files alone;
//! 5. `snapshot/` and `compaction/`, beside each other;
//! 6. `store/`: the facade, and the log seam (`store::seam`) through which everything above
//!    reaches the log;
//! 7. `aggregate`, `projection/` and `subscription/`;
//! 8. `bus` and `cache`;
//! 9. `metrics/`;
//! 10. the CLI (`bin/strata/`) and the fuzzing entry points.
//!
//! A file never imports from a floor above its own, and no module names a crate-root
//! re-export (`tests/layers.rs` checks both).
#![warn(missing_docs)]
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

// Floor 1: base.
mod clock;
mod error;
mod event;
mod report;
mod router;
mod sync;
mod trace;
// Floor 2.
mod io;
// Floor 3.
mod format;
// Floor 4.
pub mod inspect;
mod log;
// Floor 5.
pub mod compaction;
mod snapshot;
// Floor 6.
pub mod store;
// Floor 7.
mod aggregate;
pub mod projection;
pub mod subscription;
// Floor 8.
pub mod bus;
pub mod cache;
// Floor 9.
pub mod metrics;
// Floor 10.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use aggregate::{Aggregate, ApplyError, AsOf, Loaded, SnapshotIgnored, SnapshotUse};
pub use bus::{Command, CommandBus};
pub use cache::ViewCache;
pub use error::{Error, ErrorKind, Result};
pub use event::{
    AppendResult, EventData, EventId, EventView, ExpectedVersion, ParseEventIdError, RecordedEvent, StreamMetaRecord,
    StreamMetadata,
};
pub use log::writer::Durability;
pub use metrics::Metrics;
pub use projection::{Projection, ProjectionEngine};
pub use report::RecoveryAction;
pub use store::{AppendFuture, Options, Store};
pub use subscription::{Cursor, Filter, Subscription};

/// The store's limits and defaults: what a stream id, an event, an append and a snapshot may
/// hold, and what a new store is created with.
pub mod limits {
    pub use crate::format::FORMAT_VERSION;
    pub use crate::format::batch::{MAX_EVENT_TYPE_LEN, MAX_STREAM_ID_LEN};
    pub use crate::format::snapshot::MAX_SNAPSHOT_BYTES;
    pub use crate::format::stream_meta::MAX_CUSTOM as MAX_STREAM_METADATA_BYTES;
    pub use crate::store::{
        DEFAULT_MAX_APPEND_BYTES, DEFAULT_MAX_EVENT_BYTES, DEFAULT_PARTITIONS, DEFAULT_SEGMENT_BYTES,
    };
}

/// Which partition a stream lives in: xxh3-64 of its co-location key (the part of the id in
/// `{braces}`, or the whole id), then jump consistent hash. These are part of the format
/// (FORMAT.md §5 pins them with test vectors): a client sharding across stores, or a tool
/// reading partitions directly, routes exactly as the store does.
pub mod routing {
    pub use crate::router::{colocation_key, jump_consistent_hash, partition_for, stream_hash};
}

/// Fault injection for tests (feature `fault-injection`): a plan of I/O failures that a store
/// applies to its own file operations ([`Options::fault_plan`]), and a simulated disk that
/// rebuilds what a power cut would leave ([`Options::sim_disk`]).
#[cfg(feature = "fault-injection")]
pub mod faults {
    pub use crate::io::faults::{FaultKind, FaultOp, FaultPlan};
    pub use crate::io::sim::{CutReport, SimDisk, StepKind};
}

/// The README's example is compiled as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
