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
//!   strata file without opening its store;
//! - `typed` (feature `serde`): domain events as Rust types (JSON or postcard), upcasters for
//!   old shapes, and typed aggregates and projections.
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
//! 1. base: `error`, `event`, `router`, `clock`, `sync`, `report`, `trace`, and `codec`
//!    (typed events, feature `serde`);
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
#[cfg(feature = "serde")]
mod codec;
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
#[cfg(feature = "jetstream")]
pub use store::JetStreamOptions;
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
        DEFAULT_ARCHIVE_CACHE_BYTES, DEFAULT_MAX_APPEND_BYTES, DEFAULT_MAX_EVENT_BYTES, DEFAULT_PARTITIONS,
        DEFAULT_SEGMENT_BYTES,
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

#[cfg(feature = "serde")]
pub mod typed {
    //! Typed events (feature `serde`): domain events as Rust types, encoded with serde, read back
    //! through upcasters as their newest shape.
    //!
    //! A [`DomainEvent`] is usually an enum with one variant per event type. It is stored as a
    //! normal strata event:
    //! - the **event type** is the variant's name (serde's, so `#[serde(rename = "...")]` counts);
    //! - the **payload** is the variant's content alone, in the event's [`Codec`]: JSON
    //!   `{"cents":10}` for `Deposited { cents: 10 }` (or postcard bytes);
    //! - the **metadata** starts with an 8-byte envelope naming the codec and the event's schema
    //!   version, followed by the application's own metadata, if any (FORMAT.md §22).
    //!
    //! Events written through the byte API with a JSON payload in the same shape, by strata or
    //! any other writer, decode as well: an event without the envelope reads as JSON at schema 1.
    //!
    //! ```
    //! use serde::{Deserialize, Serialize};
    //! use strata::typed::DomainEvent;
    //! use strata::{EventData, ExpectedVersion, Options, Store};
    //!
    //! #[derive(Serialize, Deserialize, Debug, PartialEq)]
    //! enum AccountEvent {
    //!     Opened { owner: String },
    //!     Deposited { cents: u64 },
    //!     Closed,
    //! }
    //! impl DomainEvent for AccountEvent {}
    //!
    //! let dir = tempfile::tempdir()?;
    //! let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    //! let events = [AccountEvent::Opened { owner: "ada".into() }, AccountEvent::Deposited { cents: 250 }];
    //! let data = events.iter().map(EventData::encode).collect::<Result<Vec<_>, _>>()?;
    //! store.append("account-1", ExpectedVersion::NoStream, &data)?;
    //!
    //! let stored = store.read_stream("account-1", 0, 10)?;
    //! assert_eq!(stored[1].event_type, "Deposited");
    //! assert_eq!(stored[1].payload, br#"{"cents":250}"#);
    //! assert_eq!(stored[1].decode::<AccountEvent>()?, AccountEvent::Deposited { cents: 250 });
    //! # Ok::<(), Box<dyn std::error::Error>>(())
    //! ```
    //!
    //! On top of it: [`TypedAggregate`], whose `apply` receives the
    //! decoded event, and [`TypedProjection`], whose handler does.
    //!
    //! # Schema changes
    //!
    //! Events are facts: they are never rewritten. When an event's shape changes, raise its
    //! [`DomainEvent::schema_version`] and register an upcaster from the old schema in
    //! [`DomainEvent::upcasters`]; every typed read (loads, projections, subscriptions, reads of
    //! archived events) runs the chain of upcasters before decoding. Snapshots are another matter:
    //! a snapshot holds an aggregate's *state*, built from already-upcast events, under its own
    //! tag (`TypedAggregate::SCHEMA`). Upcasting events never invalidates a snapshot; changing the
    //! state's shape does, and then the state's `SCHEMA` is raised: snapshots under the old tag
    //! are refused (or converted by `TypedAggregate::upgrade_snapshot`) and the state is rebuilt
    //! from the events, through the upcasters, and snapshotted again.
    //!
    //! # Codecs
    //!
    //! JSON ([`Codec::Json`], the default) is readable by any tool and tolerant of added fields
    //! (`#[serde(default)]`). postcard ([`Codec::Postcard`]) is compact and fast, but not
    //! self-describing: a field added, removed or reordered in a postcard event is a new schema
    //! version, with an upcaster. Variants are stored by name in both, so reordering an enum's
    //! variants is always safe.

    pub use crate::aggregate::typed::TypedAggregate;
    pub use crate::codec::{Codec, DomainEvent, ENVELOPE_LEN, Envelope, Upcasters, encode_all};
    pub use crate::projection::typed::TypedProjection;
}

/// The README's examples are compiled as doctests, so they cannot rot (the first screen's
/// example uses typed events, hence the feature).
#[cfg(all(doctest, feature = "serde"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
