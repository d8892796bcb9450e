//! What goes in (events to append) and what comes out (recorded events).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use xxhash_rust::xxh3::xxh3_128;

/// A 16-byte event id (a UUID's bytes), shown and parsed in the UUID text form
/// (`8-4-4-4-12` hex digits).
///
/// An event may carry one ([`EventData::with_id`]); appends whose events all carry ids are
/// idempotent: a retry of one already committed returns the earlier
/// [`AppendResult`] (marked [`duplicate`](AppendResult::duplicate)) instead of writing again
/// (see [`Options::idempotency_window`](crate::Options::idempotency_window)). Ids are also
/// what correlation and causation point at ([`EventData::caused_by`]).
///
/// strata creates no random ids (it has no random source): bring your own UUIDs
/// (`EventId::from_bytes(*uuid.as_bytes())`), or derive them from a command id with
/// [`EventId::derive`], so that a retried command produces the same ids.
///
/// ```
/// use strata::EventId;
/// let id: EventId = "0190f3a4-5b6c-7d8e-9f00-112233445566".parse()?;
/// assert_eq!(id.to_string(), "0190f3a4-5b6c-7d8e-9f00-112233445566");
/// assert_eq!(EventId::derive(id, "order-7", 0), EventId::derive(id, "order-7", 0));
/// assert_ne!(EventId::derive(id, "order-7", 0), EventId::derive(id, "order-7", 1));
/// # Ok::<(), strata::ParseEventIdError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EventId([u8; 16]);

impl EventId {
    /// The id with these bytes (a UUID's 16 bytes, big-endian as UUIDs are written).
    pub const fn from_bytes(bytes: [u8; 16]) -> EventId {
        EventId(bytes)
    }

    /// The id's 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The id whose bytes are `v`, big-endian (`Uuid::from_u128` order).
    pub const fn from_u128(v: u128) -> EventId {
        EventId(v.to_be_bytes())
    }

    /// The id of the `index`-th event that `command` produces for `stream`: a stable 128-bit
    /// hash (XXH3-128) of the three, so the same command yields the same ids every time it is
    /// run, and a retried command is recognised as a duplicate. Not a UUID of any version.
    pub fn derive(command: EventId, stream: &str, index: u64) -> EventId {
        let mut key = Vec::with_capacity(16 + 8 + stream.len());
        key.extend_from_slice(&command.0);
        key.extend_from_slice(&index.to_le_bytes());
        key.extend_from_slice(stream.as_bytes());
        EventId::from_u128(xxh3_128(&key))
    }
}

impl From<[u8; 16]> for EventId {
    fn from(bytes: [u8; 16]) -> EventId {
        EventId(bytes)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

/// Why a string is not an [`EventId`]: it must be 32 hex digits, in the UUID text form
/// (hyphens after digits 8, 12, 16 and 20) or without hyphens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an event id (expected a UUID such as 0190f3a4-5b6c-7d8e-9f00-112233445566): {0:?}")]
pub struct ParseEventIdError(pub String);

impl FromStr for EventId {
    type Err = ParseEventIdError;

    fn from_str(s: &str) -> Result<EventId, ParseEventIdError> {
        let bad = || ParseEventIdError(s.to_owned());
        let hyphenated = s.len() == 36;
        if !(hyphenated || s.len() == 32) {
            return Err(bad());
        }
        let mut digits = Vec::with_capacity(32);
        for (i, c) in s.bytes().enumerate() {
            if hyphenated && matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(bad());
                }
                continue;
            }
            digits.push(char::from(c).to_digit(16).ok_or_else(bad)? as u8);
        }
        let mut out = [0u8; 16];
        for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            if let [hi, lo] = pair {
                *o = hi << 4 | lo;
            }
        }
        Ok(EventId(out))
    }
}

/// An event to append: a type name, opaque metadata and an opaque payload, and optionally
/// its own id and the ids of the flow it belongs to (correlation) and of what caused it
/// (causation). Each id present costs 16 bytes on disk; absent ones cost nothing.
///
/// ```
/// use strata::{EventData, EventId};
/// let e = EventData::new("Deposited", br#"{"amount":10}"#.to_vec())
///     .with_metadata(b"trace=7".to_vec())
///     .with_id(EventId::from_u128(7));
/// assert_eq!(e.event_type, "Deposited");
/// assert_eq!(e.id, Some(EventId::from_u128(7)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventData {
    /// The event's type, e.g. `"OrderPlaced"` (UTF-8, at most [`MAX_EVENT_TYPE_LEN`](crate::limits::MAX_EVENT_TYPE_LEN) bytes).
    pub event_type: String,
    /// Application metadata (correlation ids, ...), stored as given.
    pub metadata: Vec<u8>,
    /// The event body, stored as given.
    pub payload: Vec<u8>,
    /// The event's id: an append whose events all have one is idempotent
    /// ([`Store::append`](crate::Store::append)).
    pub id: Option<EventId>,
    /// The flow the event belongs to: by convention the id of the first event or command of
    /// the flow ([`EventData::caused_by`]).
    pub correlation_id: Option<EventId>,
    /// The id of the event or command that caused this one.
    pub causation_id: Option<EventId>,
}

impl EventData {
    /// An event with a type and a payload, no metadata and no ids.
    pub fn new(event_type: impl Into<String>, payload: impl Into<Vec<u8>>) -> EventData {
        EventData { event_type: event_type.into(), payload: payload.into(), ..EventData::default() }
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: impl Into<Vec<u8>>) -> EventData {
        self.metadata = metadata.into();
        self
    }

    /// Sets the event's id.
    pub fn with_id(mut self, id: EventId) -> EventData {
        self.id = Some(id);
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: EventId) -> EventData {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: EventId) -> EventData {
        self.causation_id = Some(id);
        self
    }

    /// Marks this event as caused by `parent`: causation = the parent's id, correlation =
    /// the parent's correlation id, or its id if it has none (the parent starts the flow).
    /// A parent without either leaves the fields as they are.
    ///
    /// ```
    /// # use strata::{EventData, EventId, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// let placed = EventData::new("OrderPlaced", "{}").with_id(EventId::from_u128(1));
    /// store.append("order-1", ExpectedVersion::NoStream, &[placed])?;
    /// let parent = &store.read_stream("order-1", 0, 1)?[0];
    /// let reserved = EventData::new("StockReserved", "{}").caused_by(parent);
    /// assert_eq!(reserved.causation_id, Some(EventId::from_u128(1)));
    /// assert_eq!(reserved.correlation_id, Some(EventId::from_u128(1)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn caused_by(mut self, parent: &RecordedEvent) -> EventData {
        if let Some(id) = parent.id {
            self.causation_id = Some(id);
        }
        if let Some(c) = parent.correlation_id.or(parent.id) {
            self.correlation_id = Some(c);
        }
        self
    }
}

/// An event as stored: its data plus where and when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The stream the event belongs to.
    pub stream_id: String,
    /// 0-based number of the event within its stream.
    pub version: u64,
    /// The partition holding the stream.
    pub partition: u32,
    /// The event's position (offset) within its partition's log.
    pub position: u64,
    /// When the event was appended: nanoseconds since the Unix epoch, never decreasing within
    /// a partition (except in a partition's copies of moved streams, see
    /// [`Store::copied_until`](crate::Store::copied_until), which keep their original times).
    pub timestamp_nanos: u64,
    /// The event's type.
    pub event_type: String,
    /// The metadata given at append.
    pub metadata: Vec<u8>,
    /// The payload given at append.
    pub payload: Vec<u8>,
    /// The event's id, if it was given one.
    pub id: Option<EventId>,
    /// The correlation id given at append.
    pub correlation_id: Option<EventId>,
    /// The causation id given at append.
    pub causation_id: Option<EventId>,
}

/// An event borrowed from the log, for [`Store::scan_partition`](crate::Store::scan_partition):
/// the fields of a [`RecordedEvent`] without copying them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventView<'a> {
    /// The stream the event belongs to.
    pub stream_id: &'a str,
    /// 0-based number of the event within its stream.
    pub version: u64,
    /// The partition holding the event.
    pub partition: u32,
    /// The event's position within its partition's log.
    pub position: u64,
    /// When the event was appended, as in [`RecordedEvent::timestamp_nanos`].
    pub timestamp_nanos: u64,
    /// The event's type.
    pub event_type: &'a str,
    /// The metadata given at append.
    pub metadata: &'a [u8],
    /// The payload given at append.
    pub payload: &'a [u8],
    /// The event's id, if it was given one.
    pub id: Option<EventId>,
    /// The correlation id given at append.
    pub correlation_id: Option<EventId>,
    /// The causation id given at append.
    pub causation_id: Option<EventId>,
}

impl EventView<'_> {
    /// Overwrites `slot` with this event, reusing its buffers: reads that hand events to user
    /// code one at a time allocate nothing once warm.
    pub(crate) fn copy_into(&self, slot: &mut RecordedEvent) {
        slot.stream_id.clear();
        slot.stream_id.push_str(self.stream_id);
        slot.version = self.version;
        slot.partition = self.partition;
        slot.position = self.position;
        slot.timestamp_nanos = self.timestamp_nanos;
        slot.event_type.clear();
        slot.event_type.push_str(self.event_type);
        slot.metadata.clear();
        slot.metadata.extend_from_slice(self.metadata);
        slot.payload.clear();
        slot.payload.extend_from_slice(self.payload);
        slot.id = self.id;
        slot.correlation_id = self.correlation_id;
        slot.causation_id = self.causation_id;
    }

    /// An owned copy.
    // Always inlined: every copied-out read (stream and partition reads) calls it once per
    // event, from another module; as a call it cost ~20 instructions an event (callgrind).
    #[inline(always)]
    pub fn to_recorded(&self) -> RecordedEvent {
        RecordedEvent {
            stream_id: self.stream_id.to_owned(),
            version: self.version,
            partition: self.partition,
            position: self.position,
            timestamp_nanos: self.timestamp_nanos,
            event_type: self.event_type.to_owned(),
            metadata: self.metadata.to_vec(),
            payload: self.payload.to_vec(),
            id: self.id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
        }
    }
}

impl RecordedEvent {
    /// An event with empty fields, to be overwritten by [`EventView::copy_into`].
    pub(crate) fn empty() -> RecordedEvent {
        RecordedEvent {
            stream_id: String::new(),
            version: 0,
            partition: 0,
            position: 0,
            timestamp_nanos: 0,
            event_type: String::new(),
            metadata: Vec::new(),
            payload: Vec::new(),
            id: None,
            correlation_id: None,
            causation_id: None,
        }
    }

    /// The append time as a [`SystemTime`].
    pub fn timestamp(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.timestamp_nanos)
    }
}

/// The optimistic-concurrency condition of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet (have no events).
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// The condition for appending right after `last`, a stream's last version as read
    /// (`None`: the stream has no events): `Exact(v)`, or `NoStream`.
    ///
    /// ```
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// let last = store.stream_version("cart-3")?;
    /// store.append("cart-3", ExpectedVersion::after(last), &[EventData::new("Added", "x")])?;
    /// assert_eq!(ExpectedVersion::from(Some(4)), ExpectedVersion::Exact(4));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn after(last: Option<u64>) -> ExpectedVersion {
        last.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
    }

    /// Whether a stream whose last version is `current` (`None`: no events) satisfies this.
    pub fn matches(self, current: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::StreamExists => current.is_some(),
            ExpectedVersion::Exact(v) => current == Some(v),
        }
    }
}

impl From<Option<u64>> for ExpectedVersion {
    /// [`ExpectedVersion::after`].
    fn from(last: Option<u64>) -> ExpectedVersion {
        ExpectedVersion::after(last)
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Where an acknowledged append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppendResult {
    /// The stream's partition.
    pub partition: u32,
    /// Position of the first appended event; the others follow contiguously.
    pub first_position: u64,
    /// Version of the first appended event.
    pub first_version: u64,
    /// Version of the last appended event: pass `ExpectedVersion::Exact(last_version)` to
    /// append after it.
    pub last_version: u64,
    /// The append's timestamp (every event of an append has the same one): nanoseconds since
    /// the Unix epoch.
    pub timestamp_nanos: u64,
    /// Whether this append was a retry of one already committed: its events all carried ids
    /// that the stream already holds, in the same order, so nothing was written and this is
    /// the earlier append's result.
    pub duplicate: bool,
}

impl AppendResult {
    /// The condition for appending right after this append.
    pub fn next_expected(&self) -> ExpectedVersion {
        ExpectedVersion::Exact(self.last_version)
    }
}

/// A stream's retention and user metadata, set by
/// [`Store::set_stream_metadata`](crate::Store::set_stream_metadata) (KurrentDB's `$maxAge`,
/// `$maxCount` and `$tb`). Every read of the stream's events honours it: stream reads, loads,
/// subscriptions and category or event-type reads show only the events it keeps, and
/// compaction reclaims the ones it hides. The events' versions do not change: a stream whose
/// first visible version is 40 reads from version 40, and appends go on after its last event.
///
/// ```
/// # use std::time::Duration;
/// use strata::StreamMetadata;
/// let keep_recent = StreamMetadata { max_count: Some(100), max_age: Some(Duration::from_secs(86_400)), ..Default::default() };
/// assert_eq!(keep_recent.truncate_before, None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamMetadata {
    /// Events older than this (by their timestamp, at the time of the read) are hidden.
    pub max_age: Option<std::time::Duration>,
    /// Only the newest `max_count` events are visible.
    pub max_count: Option<u64>,
    /// Versions below this are hidden.
    pub truncate_before: Option<u64>,
    /// Bytes of the application's own (at most
    /// [`limits::MAX_STREAM_METADATA_BYTES`](crate::limits::MAX_STREAM_METADATA_BYTES)), kept
    /// with the metadata and returned as given.
    pub custom: Vec<u8>,
}

/// A stream's metadata as stored (see [`Store::stream_metadata`](crate::Store::stream_metadata)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamMetaRecord {
    /// The metadata's version: 0 for the first, then one more per change. Pass
    /// `ExpectedVersion::Exact(version)` to change it.
    pub version: u64,
    /// When it was written: nanoseconds since the Unix epoch.
    pub written_at: u64,
    /// The metadata.
    pub metadata: StreamMetadata,
    /// When the stream was last soft-deleted ([`Store::soft_delete`](crate::Store::soft_delete)),
    /// if it was: from then on it reads as empty until it is appended to again.
    pub soft_deleted_at: Option<u64>,
}
