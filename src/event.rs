//! What goes in (events to append) and what comes out (recorded events).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An event to append: a type name, opaque metadata and an opaque payload.
///
/// ```
/// use strata::EventData;
/// let e = EventData::new("Deposited", br#"{"amount":10}"#.to_vec()).with_metadata(b"trace=7".to_vec());
/// assert_eq!(e.event_type, "Deposited");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventData {
    /// The event's type, e.g. `"OrderPlaced"` (UTF-8, at most [`MAX_EVENT_TYPE_LEN`](crate::limits::MAX_EVENT_TYPE_LEN) bytes).
    pub event_type: String,
    /// Application metadata (correlation ids, ...), stored as given.
    pub metadata: Vec<u8>,
    /// The event body, stored as given.
    pub payload: Vec<u8>,
}

impl EventData {
    /// An event with a type and a payload and no metadata.
    pub fn new(event_type: impl Into<String>, payload: impl Into<Vec<u8>>) -> EventData {
        EventData { event_type: event_type.into(), metadata: Vec::new(), payload: payload.into() }
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: impl Into<Vec<u8>>) -> EventData {
        self.metadata = metadata.into();
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
}

impl AppendResult {
    /// The condition for appending right after this append.
    pub fn next_expected(&self) -> ExpectedVersion {
        ExpectedVersion::Exact(self.last_version)
    }
}
