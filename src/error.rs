//! The one error type of strata.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::event::ExpectedVersion;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in strata.
///
/// Errors are cheap to clone (an I/O error is shared behind an `Arc`), because one failed
/// group commit has to report the same cause to every append that was in it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("I/O error during {op} of {}: {source}", path.display())]
    Io {
        /// What strata was doing (`"write"`, `"fdatasync"`, `"rename"`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The disk (or quota) is full. Nothing of the failed append was acknowledged; appends can
    /// go on once space is freed.
    #[error("storage full during {op} of {}: {source}", path.display())]
    StorageFull {
        /// What strata was doing.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The operating system's error (`ENOSPC` or `EDQUOT`).
        #[source]
        source: Arc<io::Error>,
    },
    /// A file's bytes are not what strata wrote: a checksum mismatch, an impossible length, a
    /// broken sequence. Nothing is silently dropped; the file and byte offset are named.
    #[error("corruption in {} at byte {offset}: {reason}", path.display())]
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damaged structure within the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The directory is not a strata store (no manifest, or a foreign file where the manifest
    /// should be). Creating a store is explicit: see [`Options::create_if_missing`](crate::Options::create_if_missing).
    #[error("{} is not a strata store: {reason}", path.display())]
    NotAStore {
        /// The directory or file.
        path: PathBuf,
        /// Why it is not a store.
        reason: String,
    },
    /// [`Options::error_if_exists`](crate::Options::error_if_exists) was set and a store is
    /// already there, or creation was asked for in a directory holding other files.
    #[error("cannot create a store at {}: {reason}", path.display())]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
        /// What is in the way.
        reason: String,
    },
    /// A file was written by a newer format version than this build understands.
    #[error("{} has format version {found}; this build of strata reads up to version {supported}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The newest version of the file's kind this build reads (FORMAT.md §1.1: 2 for
        /// archives, 1 for the other kinds).
        supported: u32,
    },
    /// The store is already open, in this process or another one.
    #[error("store {} is locked by another open handle ({holder})", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// Optimistic concurrency check failed; nothing was written.
    #[error("wrong expected version for stream {stream:?}: expected {expected}, actual {}", DisplayVersion(*actual))]
    WrongExpectedVersion {
        /// The stream appended to.
        stream: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was checked (`None`: no such stream).
        actual: Option<u64>,
    },
    /// The stream id is empty, too long, or contains a NUL byte.
    #[error("invalid stream id: {reason}")]
    InvalidStreamId {
        /// Why.
        reason: String,
    },
    /// An event type is too long.
    #[error("invalid event type: {reason}")]
    InvalidEventType {
        /// Why.
        reason: String,
    },
    /// One event is larger than [`Options::max_event_bytes`](crate::Options::max_event_bytes).
    #[error("event {index} of the append is {size} bytes; the limit is {limit}")]
    EventTooLarge {
        /// Index of the event within the append.
        index: usize,
        /// Its encoded size (type + metadata + payload).
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The whole append is larger than [`Options::max_append_bytes`](crate::Options::max_append_bytes).
    #[error("append of {size} bytes exceeds the limit of {limit}")]
    AppendTooLarge {
        /// Encoded size of the append.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// An append must carry at least one event.
    #[error("an append needs at least one event")]
    EmptyAppend,
    /// The stream was deleted ([`Store::delete_stream`](crate::Store::delete_stream)): it
    /// takes no appends and its events are no longer read by stream.
    #[error("stream {stream:?} was deleted")]
    StreamDeleted {
        /// The stream.
        stream: String,
    },
    /// A partition stopped accepting appends after a failed `fdatasync` (or a failed write it
    /// could not undo). A failed fsync cannot be retried safely: the kernel may already have
    /// dropped the dirty pages, so a later successful fsync would not mean the data is on disk.
    /// Nothing after the failure is acknowledged; reads of durable data keep working; reopening
    /// the store recovers from what is really on disk.
    #[error("partition {partition} is poisoned: {cause}; reopen the store to recover")]
    Poisoned {
        /// The partition.
        partition: u32,
        /// The original failure.
        cause: String,
    },
    /// The append would take the stream's version or the partition's position past `u64::MAX`
    /// (only possible with a crafted file); nothing was written.
    #[error("stream {stream:?}: version or position would overflow")]
    Overflow {
        /// The stream appended to.
        stream: String,
    },
    /// An idempotent append (every event carrying an id) matches an earlier append only in
    /// part: some of its ids are committed and some are not, or they are committed in another
    /// order, at other versions or to another stream. Nothing was written. A retry must resend
    /// exactly the events of the append it retries.
    #[error("stream {stream:?}: idempotency conflict: {reason}")]
    IdempotencyConflict {
        /// The stream appended to.
        stream: String,
        /// What matched and what did not.
        reason: String,
    },
    /// An atomic append ([`Store::append_atomic`](crate::Store::append_atomic)) names streams
    /// that live in different partitions (or one stream twice): nothing was written. Streams
    /// that must be written together share a co-location key: `{key}rest` (FORMAT.md §5).
    #[error("atomic append refused: {reason}")]
    NotColocated {
        /// Which streams, and where they live.
        reason: String,
    },
    /// [`Store::set_stream_metadata`](crate::Store::set_stream_metadata) (or a soft delete)
    /// expected another metadata version: nothing was written.
    #[error("stream {stream:?}: metadata version is {actual:?}, expected {expected:?}")]
    WrongMetadataVersion {
        /// The stream whose metadata was set.
        stream: String,
        /// What the caller expected (`NoStream`: no metadata yet; `Exact(v)`: version `v`).
        expected: ExpectedVersion,
        /// The metadata's version when the change was checked (`None`: it had none).
        actual: Option<u64>,
    },
    /// Stream metadata that cannot be stored (custom bytes over
    /// [`limits::MAX_STREAM_METADATA_BYTES`](crate::limits::MAX_STREAM_METADATA_BYTES)).
    #[error("stream {stream:?}: invalid metadata: {reason}")]
    InvalidMetadata {
        /// The stream whose metadata was set.
        stream: String,
        /// What is wrong.
        reason: String,
    },
    /// Bytes given to [`Cursor::from_bytes`](crate::subscription::Cursor::from_bytes) are not
    /// a cursor this build reads.
    #[error("invalid cursor: {reason}")]
    InvalidCursor {
        /// What is wrong.
        reason: String,
    },
    /// No such partition.
    #[error("partition {partition} does not exist (the store has {count})")]
    NoSuchPartition {
        /// The partition asked for.
        partition: u32,
        /// How many the store has.
        count: u32,
    },
    /// An option value is out of range.
    #[error("invalid option: {0}")]
    InvalidOptions(String),
    /// An [`Aggregate::apply`](crate::Aggregate::apply) failed on a stored event.
    #[error("applying event {version} of stream {stream:?} failed: {reason}")]
    Apply {
        /// The stream.
        stream: String,
        /// The event's version.
        version: u64,
        /// The aggregate's error.
        reason: String,
    },
    /// A typed event could not be encoded, or a stored event could not be decoded (or
    /// upcast) as the type asked for (`strata::typed`, feature `serde`).
    #[error("event {event_type:?}{} could not be {}: {reason}", at.as_ref().map_or(String::new(), |(s, v)| format!(" (stream {s:?}, version {v})")), if *decoding { "decoded" } else { "encoded" })]
    Codec {
        /// The event's type.
        event_type: String,
        /// The stream and version of the stored event (`None` when encoding).
        at: Option<(String, u64)>,
        /// Decoding a stored event (`false`: encoding a new one).
        decoding: bool,
        /// What the codec or upcaster said.
        reason: String,
    },
    /// An aggregate's encoded state is larger than a snapshot may be.
    #[error("snapshot of {size} bytes is over the limit of {max}")]
    SnapshotTooLarge {
        /// Its size.
        size: usize,
        /// The limit ([`MAX_SNAPSHOT_BYTES`](crate::limits::MAX_SNAPSHOT_BYTES)).
        max: usize,
    },
    /// The command bus refused a command: too many are in flight. Nothing was done; retry
    /// later.
    #[error("overloaded: {in_flight} commands in flight, the limit is {limit}")]
    Overloaded {
        /// Commands in flight when this one arrived.
        in_flight: usize,
        /// The limit.
        limit: usize,
    },
    /// The command bus refused a command: over its rate limit. Nothing was done.
    #[error("rate limited: retry after {retry_after:?}")]
    RateLimited {
        /// When a token will be available.
        retry_after: std::time::Duration,
    },
    /// The command bus refused a command: a critical projection lags past its SLA. Nothing
    /// was done.
    #[error("projection {projection:?} lags {lag:?} (over its SLA): retry after {retry_after:?}")]
    Lagging {
        /// The projection.
        projection: String,
        /// Its lag.
        lag: std::time::Duration,
        /// An estimate of when it will be back within its SLA, from its lag and drain rate.
        retry_after: std::time::Duration,
    },
    /// A command handler decided against the command (a business rule). Nothing was written.
    #[error("command rejected: {0}")]
    Rejected(String),
    /// A projection (or a rebuild of one) stopped at an event it kept failing on, or after a
    /// checkpoint write failed; it runs again once registered again.
    #[error("projection {projection:?} stopped{}: {reason}", partition.map_or(String::new(), |p| format!(" in partition {p}")))]
    ProjectionStopped {
        /// The projection.
        projection: String,
        /// The partition it stopped in (`None`: not one partition's doing).
        partition: Option<u32>,
        /// Why.
        reason: String,
    },
    /// No projection of that name (and type) is registered with the engine.
    #[error("no projection named {name:?} is registered{}", if *wrong_type { " with the type asked for" } else { "" })]
    NoSuchProjection {
        /// The name asked for.
        name: String,
        /// A projection of that name is registered, of another type.
        wrong_type: bool,
    },
    /// The store has been closed.
    #[error("the store is closed")]
    Closed,
    /// The store's backend cannot do this: compaction, growing the partition count,
    /// deletion and stream metadata are the embedded store's (a JetStream store refuses them).
    #[error("{operation} is not supported by the {backend} backend")]
    Unsupported {
        /// What was asked.
        operation: &'static str,
        /// The backend that refused it.
        backend: &'static str,
    },
    /// No server of the cluster could be reached at connect.
    #[error("no server could be reached ({servers}): {cause}")]
    Unreachable {
        /// The servers tried.
        servers: String,
        /// The last failure.
        cause: String,
    },
    /// The server, or the store's streams on it, lack something the backend relies on (too
    /// old a server, JetStream off, a stream setting that was not echoed back): refused at
    /// connect rather than lose atomicity or events later.
    #[error("{server}: {reason}")]
    IncompatibleServer {
        /// The server's version, or the stream concerned.
        server: String,
        /// What is missing.
        reason: String,
    },
    /// A request to the cluster failed, after the retries its options allow.
    #[error("the cluster did not serve the request: {cause}")]
    Remote {
        /// What failed, and how.
        cause: String,
    },
}

/// What kind of error an [`Error`] is: a stable, fieldless name to branch on (and to count
/// in metrics: [`ErrorKind::as_str`]), one per variant of [`Error`].
///
/// ```
/// use strata::{Error, ErrorKind, ExpectedVersion};
/// let e = Error::WrongExpectedVersion { stream: "s".into(), expected: ExpectedVersion::NoStream, actual: Some(3) };
/// assert_eq!(e.kind(), ErrorKind::WrongExpectedVersion);
/// assert_eq!(e.kind().as_str(), "wrong_expected_version");
/// assert!(!e.kind().is_back_pressure());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Error::Io`].
    Io,
    /// [`Error::StorageFull`].
    StorageFull,
    /// [`Error::Corruption`].
    Corruption,
    /// [`Error::NotAStore`].
    NotAStore,
    /// [`Error::AlreadyExists`].
    AlreadyExists,
    /// [`Error::UnsupportedVersion`].
    UnsupportedVersion,
    /// [`Error::Locked`].
    Locked,
    /// [`Error::WrongExpectedVersion`].
    WrongExpectedVersion,
    /// [`Error::InvalidStreamId`].
    InvalidStreamId,
    /// [`Error::InvalidEventType`].
    InvalidEventType,
    /// [`Error::EventTooLarge`].
    EventTooLarge,
    /// [`Error::AppendTooLarge`].
    AppendTooLarge,
    /// [`Error::EmptyAppend`].
    EmptyAppend,
    /// [`Error::StreamDeleted`].
    StreamDeleted,
    /// [`Error::Poisoned`].
    Poisoned,
    /// [`Error::Overflow`].
    Overflow,
    /// [`Error::IdempotencyConflict`].
    IdempotencyConflict,
    /// [`Error::NotColocated`].
    NotColocated,
    /// [`Error::WrongMetadataVersion`].
    WrongMetadataVersion,
    /// [`Error::InvalidMetadata`].
    InvalidMetadata,
    /// [`Error::InvalidCursor`].
    InvalidCursor,
    /// [`Error::NoSuchPartition`].
    NoSuchPartition,
    /// [`Error::InvalidOptions`].
    InvalidOptions,
    /// [`Error::Apply`].
    Apply,
    /// [`Error::Codec`].
    Codec,
    /// [`Error::SnapshotTooLarge`].
    SnapshotTooLarge,
    /// [`Error::Overloaded`].
    Overloaded,
    /// [`Error::RateLimited`].
    RateLimited,
    /// [`Error::Lagging`].
    Lagging,
    /// [`Error::Rejected`].
    Rejected,
    /// [`Error::ProjectionStopped`].
    ProjectionStopped,
    /// [`Error::NoSuchProjection`].
    NoSuchProjection,
    /// [`Error::Closed`].
    Closed,
    /// [`Error::Unsupported`].
    Unsupported,
    /// [`Error::Unreachable`].
    Unreachable,
    /// [`Error::IncompatibleServer`].
    IncompatibleServer,
    /// [`Error::Remote`].
    Remote,
}

impl ErrorKind {
    /// The kind's name in `snake_case`: stable across releases, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::StorageFull => "storage_full",
            ErrorKind::Corruption => "corruption",
            ErrorKind::NotAStore => "not_a_store",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::Locked => "locked",
            ErrorKind::WrongExpectedVersion => "wrong_expected_version",
            ErrorKind::InvalidStreamId => "invalid_stream_id",
            ErrorKind::InvalidEventType => "invalid_event_type",
            ErrorKind::EventTooLarge => "event_too_large",
            ErrorKind::AppendTooLarge => "append_too_large",
            ErrorKind::EmptyAppend => "empty_append",
            ErrorKind::StreamDeleted => "stream_deleted",
            ErrorKind::Poisoned => "poisoned",
            ErrorKind::Overflow => "overflow",
            ErrorKind::IdempotencyConflict => "idempotency_conflict",
            ErrorKind::NotColocated => "not_colocated",
            ErrorKind::WrongMetadataVersion => "wrong_metadata_version",
            ErrorKind::InvalidMetadata => "invalid_metadata",
            ErrorKind::InvalidCursor => "invalid_cursor",
            ErrorKind::NoSuchPartition => "no_such_partition",
            ErrorKind::InvalidOptions => "invalid_options",
            ErrorKind::Apply => "apply",
            ErrorKind::Codec => "codec",
            ErrorKind::SnapshotTooLarge => "snapshot_too_large",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Lagging => "lagging",
            ErrorKind::Rejected => "rejected",
            ErrorKind::ProjectionStopped => "projection_stopped",
            ErrorKind::NoSuchProjection => "no_such_projection",
            ErrorKind::Closed => "closed",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::IncompatibleServer => "incompatible_server",
            ErrorKind::Remote => "remote",
        }
    }

    /// A command bus refusal for load ([`Overloaded`](ErrorKind::Overloaded),
    /// [`RateLimited`](ErrorKind::RateLimited), [`Lagging`](ErrorKind::Lagging)): nothing
    /// was done, and the same command may be sent again later.
    pub fn is_back_pressure(self) -> bool {
        matches!(self, ErrorKind::Overloaded | ErrorKind::RateLimited | ErrorKind::Lagging)
    }

    /// The input was refused as it is (an invalid stream id or event type, an event or
    /// append over its limit, an empty append): nothing was written, and sending it again
    /// will not help.
    pub fn is_invalid_input(self) -> bool {
        matches!(
            self,
            ErrorKind::InvalidStreamId
                | ErrorKind::InvalidEventType
                | ErrorKind::EventTooLarge
                | ErrorKind::AppendTooLarge
                | ErrorKind::EmptyAppend
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::StorageFull { .. } => ErrorKind::StorageFull,
            Error::Corruption { .. } => ErrorKind::Corruption,
            Error::NotAStore { .. } => ErrorKind::NotAStore,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::UnsupportedVersion { .. } => ErrorKind::UnsupportedVersion,
            Error::Locked { .. } => ErrorKind::Locked,
            Error::WrongExpectedVersion { .. } => ErrorKind::WrongExpectedVersion,
            Error::InvalidStreamId { .. } => ErrorKind::InvalidStreamId,
            Error::InvalidEventType { .. } => ErrorKind::InvalidEventType,
            Error::EventTooLarge { .. } => ErrorKind::EventTooLarge,
            Error::AppendTooLarge { .. } => ErrorKind::AppendTooLarge,
            Error::EmptyAppend => ErrorKind::EmptyAppend,
            Error::StreamDeleted { .. } => ErrorKind::StreamDeleted,
            Error::Poisoned { .. } => ErrorKind::Poisoned,
            Error::Overflow { .. } => ErrorKind::Overflow,
            Error::IdempotencyConflict { .. } => ErrorKind::IdempotencyConflict,
            Error::NotColocated { .. } => ErrorKind::NotColocated,
            Error::WrongMetadataVersion { .. } => ErrorKind::WrongMetadataVersion,
            Error::InvalidMetadata { .. } => ErrorKind::InvalidMetadata,
            Error::InvalidCursor { .. } => ErrorKind::InvalidCursor,
            Error::NoSuchPartition { .. } => ErrorKind::NoSuchPartition,
            Error::InvalidOptions(_) => ErrorKind::InvalidOptions,
            Error::Apply { .. } => ErrorKind::Apply,
            Error::Codec { .. } => ErrorKind::Codec,
            Error::SnapshotTooLarge { .. } => ErrorKind::SnapshotTooLarge,
            Error::Overloaded { .. } => ErrorKind::Overloaded,
            Error::RateLimited { .. } => ErrorKind::RateLimited,
            Error::Lagging { .. } => ErrorKind::Lagging,
            Error::Rejected(_) => ErrorKind::Rejected,
            Error::ProjectionStopped { .. } => ErrorKind::ProjectionStopped,
            Error::NoSuchProjection { .. } => ErrorKind::NoSuchProjection,
            Error::Closed => ErrorKind::Closed,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Unreachable { .. } => ErrorKind::Unreachable,
            Error::IncompatibleServer { .. } => ErrorKind::IncompatibleServer,
            Error::Remote { .. } => ErrorKind::Remote,
        }
    }

    /// Wraps an I/O error, naming the operation and path; `ENOSPC`/`EDQUOT` become
    /// [`Error::StorageFull`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        let path = path.into();
        let full = matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded);
        let source = Arc::new(source);
        if full { Error::StorageFull { op, path, source } } else { Error::Io { op, path, source } }
    }

    pub(crate) fn corruption(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corruption { path: path.into(), offset, reason: reason.into() }
    }
}

struct DisplayVersion(Option<u64>);

impl fmt::Display for DisplayVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("no stream"),
            Some(v) => write!(f, "{v}"),
        }
    }
}
