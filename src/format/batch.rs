//! Batches: the unit of atomic append and of the checksum.
//!
//! Format (all little-endian, the batch starts 8-byte aligned in its segment):
//!
//! ```text
//! 0   4  crc            CRC-32 of bytes [4, length)
//! 4   4  length         whole batch in bytes, header and padding included; a multiple of 8
//! 8   8  base_position  position of the first event; the others follow by one
//! 16  8  first_version  stream version of the first event; the others follow by one
//! 24  8  timestamp      append time, nanoseconds since the Unix epoch
//! 32  8  synced_offset  byte offset in this segment below which everything was durable
//!                       (fdatasync'd) when this batch was written
//! 40  4  event_count    >= 1
//! 44  2  stream_id_len  1..=MAX_STREAM_ID_LEN
//! 46  1  kind           1 = events
//! 47  1  flags          bit 0: UNIT_CONTINUES, the next batch belongs to the same atomic
//!                       unit (Store::append_atomic); other bits 0
//! 48  .. stream id (UTF-8), then event_count events, then zero padding (< 8 bytes)
//!
//! event:
//! 0   2  type_len       0..=MAX_EVENT_TYPE_LEN
//! 2   2  flags          bit 0: id, bit 1: correlation id, bit 2: causation id; others 0
//! 4   4  metadata_len
//! 8   4  payload_len
//! 12  .. the ids present, 16 bytes each, in bit order; type (UTF-8), metadata, payload
//! ```
#![deny(clippy::indexing_slicing)]

use super::{align8, crc, le_u16, le_u32, le_u64, put_u16, put_u32, put_u64};
use crate::error::{Error, Result};
use crate::event::{EventData, EventId};

pub(crate) const CRC_OFFSET: usize = 0;
pub(crate) const LENGTH_OFFSET: usize = 4;
pub(crate) const BASE_POSITION_OFFSET: usize = 8;
pub(crate) const FIRST_VERSION_OFFSET: usize = 16;
pub(crate) const TIMESTAMP_OFFSET: usize = 24;
pub(crate) const SYNCED_OFFSET_OFFSET: usize = 32;
pub(crate) const EVENT_COUNT_OFFSET: usize = 40;
pub(crate) const STREAM_ID_LEN_OFFSET: usize = 44;
pub(crate) const KIND_OFFSET: usize = 46;
pub(crate) const FLAGS_OFFSET: usize = 47;
/// Size of the fixed batch header.
pub(crate) const HEADER_LEN: usize = 48;
/// Size of the fixed per-event header.
pub(crate) const EVENT_HEADER_LEN: usize = 12;
/// Batch kind: a batch of events of one stream.
pub(crate) const KIND_EVENTS: u8 = 1;
/// Batch flag: the next batch of the segment belongs to the same atomic unit. Recovery keeps
/// a unit whole or drops it whole (FORMAT.md §7.6).
pub(crate) const UNIT_CONTINUES: u8 = 1;
/// Event flags: which ids follow the event header, 16 bytes each, in this order.
pub(crate) const EVENT_HAS_ID: u16 = 1;
pub(crate) const EVENT_HAS_CORRELATION: u16 = 2;
pub(crate) const EVENT_HAS_CAUSATION: u16 = 4;
const EVENT_FLAGS_KNOWN: u16 = EVENT_HAS_ID | EVENT_HAS_CORRELATION | EVENT_HAS_CAUSATION;
/// Size of one id in an event.
pub(crate) const ID_LEN: usize = 16;

/// Longest stream id, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 1024;
/// Longest event type, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 256;

/// Size limits applied when encoding an append.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_event_bytes: u64,
    pub max_append_bytes: u64,
}

/// Checks a stream id against the format's rules.
pub(crate) fn check_stream_id(stream: &str) -> Result<()> {
    if stream.is_empty() {
        return Err(Error::InvalidStreamId { reason: "empty".into() });
    }
    if stream.len() > MAX_STREAM_ID_LEN {
        return Err(Error::InvalidStreamId {
            reason: format!("{} bytes long; the limit is {MAX_STREAM_ID_LEN}", stream.len()),
        });
    }
    if stream.as_bytes().contains(&0) {
        return Err(Error::InvalidStreamId { reason: "contains a NUL byte".into() });
    }
    Ok(())
}

/// Encodes one append into a batch whose position, version, timestamp, sync mark and CRC are
/// left for the writer to fill with [`finish`]. Validates every limit first: on error nothing
/// is produced.
pub(crate) fn encode(stream: &str, events: &[EventData], limits: Limits) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    encode_into(&mut buf, stream, events, limits)?;
    Ok(buf)
}

/// Checks an append against the format's rules and `limits`, as [`encode`] does before it
/// writes anything; returns the length its batch would have (padding included).
pub(crate) fn checked_len(stream: &str, events: &[EventData], limits: Limits) -> Result<usize> {
    check_stream_id(stream)?;
    if events.is_empty() {
        return Err(Error::EmptyAppend);
    }
    u32::try_from(events.len())
        .map_err(|_| Error::AppendTooLarge { size: events.len() as u64, limit: u64::from(u32::MAX) })?;
    let mut total = (HEADER_LEN + stream.len()) as u64;
    for (index, e) in events.iter().enumerate() {
        if e.event_type.len() > MAX_EVENT_TYPE_LEN {
            return Err(Error::InvalidEventType {
                reason: format!(
                    "event {index}: type is {} bytes; the limit is {MAX_EVENT_TYPE_LEN}",
                    e.event_type.len()
                ),
            });
        }
        let size = (e.event_type.len() + e.metadata.len() + e.payload.len()) as u64;
        if size > limits.max_event_bytes || e.metadata.len() > u32::MAX as usize || e.payload.len() > u32::MAX as usize
        {
            return Err(Error::EventTooLarge { index, size, limit: limits.max_event_bytes });
        }
        total += (EVENT_HEADER_LEN + event_flags(e).count_ones() as usize * ID_LEN) as u64 + size;
    }
    let padded = (total + 7) & !7;
    if padded > limits.max_append_bytes || padded > u64::from(u32::MAX) {
        return Err(Error::AppendTooLarge { size: padded, limit: limits.max_append_bytes });
    }
    Ok(padded as usize)
}

/// [`encode`] onto the end of `out` (which may hold other batches: the appends of one
/// `append_many` share one buffer); returns where in `out` the batch lies. On error `out` is
/// left as it was.
pub(crate) fn encode_into(
    out: &mut Vec<u8>,
    stream: &str,
    events: &[EventData],
    limits: Limits,
) -> Result<std::ops::Range<usize>> {
    let padded = checked_len(stream, events, limits)?;
    let start = out.len();
    out.resize(start + padded, 0);
    let Some(buf) = out.get_mut(start..) else { return Err(Error::Closed) };
    put_u32(buf, LENGTH_OFFSET, padded as u32);
    // `checked_len` refused a count that does not fit.
    put_u32(buf, EVENT_COUNT_OFFSET, events.len() as u32);
    put_u16(buf, STREAM_ID_LEN_OFFSET, stream.len() as u16);
    if let Some(b) = buf.get_mut(KIND_OFFSET) {
        *b = KIND_EVENTS;
    }
    let mut at = HEADER_LEN;
    write_bytes(buf, &mut at, stream.as_bytes());
    for e in events {
        put_u16(buf, at, e.event_type.len() as u16);
        put_u16(buf, at + 2, event_flags(e));
        put_u32(buf, at + 4, e.metadata.len() as u32);
        put_u32(buf, at + 8, e.payload.len() as u32);
        at += EVENT_HEADER_LEN;
        for id in ids_of(e) {
            write_bytes(buf, &mut at, id.as_bytes());
        }
        write_bytes(buf, &mut at, e.event_type.as_bytes());
        write_bytes(buf, &mut at, &e.metadata);
        write_bytes(buf, &mut at, &e.payload);
    }
    debug_assert_eq!(align8(at), padded);
    Ok(start..start + padded)
}

/// The event's flags (which ids it carries).
fn event_flags(e: &EventData) -> u16 {
    let bit = |present: bool, flag: u16| if present { flag } else { 0 };
    bit(e.id.is_some(), EVENT_HAS_ID)
        | bit(e.correlation_id.is_some(), EVENT_HAS_CORRELATION)
        | bit(e.causation_id.is_some(), EVENT_HAS_CAUSATION)
}

/// The ids an event carries, in their on-disk order.
fn ids_of(e: &EventData) -> impl Iterator<Item = EventId> {
    [e.id, e.correlation_id, e.causation_id].into_iter().flatten()
}

/// Marks an encoded batch as continued by the next one of its atomic unit (before
/// [`finish`], which computes the CRC over the flag).
pub(crate) fn set_unit_continues(batch: &mut [u8], continues: bool) {
    if let Some(f) = batch.get_mut(FLAGS_OFFSET) {
        if continues {
            *f |= UNIT_CONTINUES;
        } else {
            *f &= !UNIT_CONTINUES;
        }
    }
}

fn write_bytes(buf: &mut [u8], at: &mut usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(*at..*at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
    *at += bytes.len();
}

/// Fills the writer's fields of an encoded batch and computes its CRC.
pub(crate) fn finish(batch: &mut [u8], base_position: u64, first_version: u64, timestamp: u64, synced_offset: u64) {
    put_u64(batch, BASE_POSITION_OFFSET, base_position);
    put_u64(batch, FIRST_VERSION_OFFSET, first_version);
    put_u64(batch, TIMESTAMP_OFFSET, timestamp);
    put_u64(batch, SYNCED_OFFSET_OFFSET, synced_offset);
    let sum = batch.get(LENGTH_OFFSET..).map(crc).unwrap_or(0);
    put_u32(batch, CRC_OFFSET, sum);
}

/// Why bytes at some offset are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bad {
    /// The header is all zeros: the end of written data in a zero-filled file.
    Zero,
    /// The batch claims more bytes than there are.
    Truncated,
    /// Anything else, described.
    Invalid(String),
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Zero => f.write_str("zero-filled header"),
            Bad::Truncated => f.write_str("batch extends past the end of the data"),
            Bad::Invalid(why) => f.write_str(why),
        }
    }
}

/// A checked batch, borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchView<'a> {
    pub length: usize,
    pub base_position: u64,
    pub first_version: u64,
    pub timestamp: u64,
    pub synced_offset: u64,
    pub event_count: u32,
    pub stream_id: &'a str,
    /// The next batch belongs to the same atomic unit.
    pub continues: bool,
    /// The first event, as `decode` found it when it checked the events: iterating a batch
    /// of one event (the most common kind) splits nothing again.
    first: EventRef<'a>,
    /// The events after the first, checked.
    rest: &'a [u8],
    /// The whole batch, header to padding.
    raw: &'a [u8],
}

/// One event inside a checked batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventRef<'a> {
    pub event_type: &'a str,
    pub metadata: &'a [u8],
    pub payload: &'a [u8],
    pub id: Option<EventId>,
    pub correlation_id: Option<EventId>,
    pub causation_id: Option<EventId>,
}

/// The length a batch header at the start of `bytes` claims, if the header is present.
pub(crate) fn claimed_length(bytes: &[u8]) -> Option<usize> {
    le_u32(bytes, LENGTH_OFFSET).map(|l| l as usize)
}

/// Strings a decoder may already know, checked: a batch's stream id or event type equal to one
/// of them is handed out as it instead of being checked as UTF-8 again (a scan knows the
/// batch before, a stream read the stream it reads). Either may be empty.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Known<'a> {
    pub stream_id: &'a str,
    pub event_type: &'a str,
}

/// Decodes and fully checks the batch at the start of `bytes` (which may continue past it):
/// length, CRC, header fields, and the structure of every event.
pub(crate) fn decode(bytes: &[u8]) -> Result<BatchView<'_>, Bad> {
    decode_with(bytes, Known::default())
}

/// [`decode`], given strings the caller knows ([`Known`]). Every check is made all the same;
/// the strings handed out are equal byte for byte to the batch's own.
pub(crate) fn decode_with<'a>(bytes: &'a [u8], known: Known<'a>) -> Result<BatchView<'a>, Bad> {
    let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
        return if bytes.iter().all(|&b| b == 0) { Err(Bad::Zero) } else { Err(Bad::Truncated) };
    };
    // A batch's length is never 0: only then can the header be all zeros.
    if le_u64(header, 0) == Some(0) && header.iter().all(|&b| b == 0) {
        return Err(Bad::Zero);
    }
    // Fields of the fixed-size header: offsets are constants, no bounds to check.
    let u64_at = |off: usize| le_u64(header, off).unwrap_or(0);
    let length = le_u32(header, LENGTH_OFFSET).unwrap_or(0) as usize;
    if length < HEADER_LEN + EVENT_HEADER_LEN + 1 || !length.is_multiple_of(8) {
        return Err(Bad::Invalid(format!("impossible batch length {length}")));
    }
    let Some(batch) = bytes.get(..length) else {
        return Err(Bad::Truncated);
    };
    let stored = le_u32(header, CRC_OFFSET).unwrap_or(0);
    let actual = batch.get(LENGTH_OFFSET..).map(crc).unwrap_or(0);
    if stored != actual {
        return Err(Bad::Invalid(format!("checksum mismatch (stored {stored:#010x}, computed {actual:#010x})")));
    }
    let base_position = u64_at(BASE_POSITION_OFFSET);
    let first_version = u64_at(FIRST_VERSION_OFFSET);
    let timestamp = u64_at(TIMESTAMP_OFFSET);
    let synced_offset = u64_at(SYNCED_OFFSET_OFFSET);
    let event_count = le_u32(header, EVENT_COUNT_OFFSET).unwrap_or(0);
    let stream_len = le_u16(header, STREAM_ID_LEN_OFFSET).unwrap_or(0) as usize;
    let kind = header[KIND_OFFSET];
    let flags = header[FLAGS_OFFSET];
    if kind != KIND_EVENTS {
        return Err(Bad::Invalid(format!("unknown batch kind {kind}")));
    }
    if flags & !UNIT_CONTINUES != 0 {
        return Err(Bad::Invalid(format!("unknown batch flags {flags:#04x}")));
    }
    if event_count == 0 {
        return Err(Bad::Invalid("batch with no events".into()));
    }
    if base_position.checked_add(u64::from(event_count)).is_none()
        || first_version.checked_add(u64::from(event_count)).is_none()
    {
        return Err(Bad::Invalid("position or version overflows".into()));
    }
    if stream_len == 0 || stream_len > MAX_STREAM_ID_LEN {
        return Err(Bad::Invalid(format!("impossible stream id length {stream_len}")));
    }
    let Some((stream_bytes, events)) = batch.get(HEADER_LEN..).and_then(|b| b.split_at_checked(stream_len)) else {
        return Err(Bad::Invalid("stream id past the end of the batch".into()));
    };
    let stream_id = if same(known.stream_id.as_bytes(), stream_bytes) {
        known.stream_id
    } else {
        let Ok(id) = std::str::from_utf8(stream_bytes) else {
            return Err(Bad::Invalid("stream id is not UTF-8".into()));
        };
        if has_nul(stream_bytes) {
            return Err(Bad::Invalid("stream id contains a NUL byte".into()));
        }
        id
    };
    // Walk the events once; after this, iteration cannot fail.
    let (first, after_first) =
        split_event(events, known.event_type).map_err(|why| Bad::Invalid(format!("event 0: {why}")))?;
    let mut rest = after_first;
    let mut last_type = first.event_type;
    for i in 1..event_count {
        match split_event(rest, last_type) {
            Ok((e, tail)) => {
                rest = tail;
                last_type = e.event_type;
            }
            Err(why) => return Err(Bad::Invalid(format!("event {i}: {why}"))),
        }
    }
    if rest.len() >= 8 || rest.iter().any(|&b| b != 0) {
        return Err(Bad::Invalid("bytes after the last event are not padding".into()));
    }
    let after_first = after_first.get(..after_first.len() - rest.len()).unwrap_or(&[]);
    Ok(BatchView {
        length,
        base_position,
        first_version,
        timestamp,
        synced_offset,
        event_count,
        stream_id,
        continues: flags & UNIT_CONTINUES != 0,
        first,
        rest: after_first,
        raw: batch,
    })
}

/// Whether `bytes` holds a zero byte, eight bytes at a time.
fn has_nul(bytes: &[u8]) -> bool {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let (words, tail) = bytes.as_chunks::<8>();
    let zero_in = |w: u64| w.wrapping_sub(LOW) & !w & HIGH != 0;
    words.iter().any(|w| zero_in(u64::from_le_bytes(*w))) || tail.contains(&0)
}

/// `a == b`, for the short strings of a batch (ids and types): up to 16 bytes without a call
/// to `memcmp` (two overlapping words from each end).
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() > 16 {
        return a == b;
    }
    match (a.first_chunk::<8>(), a.last_chunk::<8>(), b.first_chunk::<8>(), b.last_chunk::<8>()) {
        (Some(a0), Some(a1), Some(b0), Some(b1)) => a0 == b0 && a1 == b1,
        _ => match (a.first_chunk::<4>(), a.last_chunk::<4>(), b.first_chunk::<4>(), b.last_chunk::<4>()) {
            (Some(a0), Some(a1), Some(b0), Some(b1)) => a0 == b0 && a1 == b1,
            _ => a.iter().zip(b).all(|(x, y)| x == y),
        },
    }
}

/// The stream id a batch's header names, without checking the batch (`None` if the bytes are
/// too short or not UTF-8). For telling hash-colliding streams apart in an index; the batch
/// itself is checked when it is read.
pub(crate) fn peek_stream_id(bytes: &[u8]) -> Option<&str> {
    let len = le_u16(bytes, STREAM_ID_LEN_OFFSET)? as usize;
    std::str::from_utf8(bytes.get(HEADER_LEN..HEADER_LEN.checked_add(len)?)?).ok()
}

/// Splits the event at the start of `bytes` off the rest, checking its structure. An event
/// type equal to `known` (a string already checked, from the same bytes) is taken from it
/// rather than checked as UTF-8 again.
#[inline]
fn split_event<'a>(bytes: &'a [u8], known: &'a str) -> Result<(EventRef<'a>, &'a [u8]), &'static str> {
    let (h, body) = bytes.split_first_chunk::<EVENT_HEADER_LEN>().ok_or("event header cut short")?;
    let type_len = u16::from_le_bytes([h[0], h[1]]) as usize;
    let flags = u16::from_le_bytes([h[2], h[3]]);
    let meta_len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    let payload_len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
    if flags & !EVENT_FLAGS_KNOWN != 0 {
        return Err("unknown event flags");
    }
    if type_len > MAX_EVENT_TYPE_LEN {
        return Err("event type too long");
    }
    let mut body = body;
    let (mut id, mut correlation_id, mut causation_id) = (None, None, None);
    if flags != 0 {
        let mut take_id = |flag: u16| -> Result<Option<EventId>, &'static str> {
            if flags & flag == 0 {
                return Ok(None);
            }
            let (id, rest) = body.split_first_chunk::<ID_LEN>().ok_or("event id past the end of the batch")?;
            body = rest;
            Ok(Some(EventId::from_bytes(*id)))
        };
        id = take_id(EVENT_HAS_ID)?;
        correlation_id = take_id(EVENT_HAS_CORRELATION)?;
        causation_id = take_id(EVENT_HAS_CAUSATION)?;
    }
    let (type_bytes, body) = body.split_at_checked(type_len).ok_or("event type past the end of the batch")?;
    let event_type = if same(type_bytes, known.as_bytes()) {
        known
    } else {
        std::str::from_utf8(type_bytes).map_err(|_| "event type is not UTF-8")?
    };
    let (metadata, body) = body.split_at_checked(meta_len).ok_or("metadata past the end of the batch")?;
    let (payload, rest) = body.split_at_checked(payload_len).ok_or("payload past the end of the batch")?;
    Ok((EventRef { event_type, metadata, payload, id, correlation_id, causation_id }, rest))
}

impl<'a> BatchView<'a> {
    /// The batch's events, in order.
    pub fn events(&self) -> impl Iterator<Item = EventRef<'a>> + 'a {
        let mut first = Some(self.first);
        let mut known = self.first.event_type;
        let mut rest = self.rest;
        let mut left = self.event_count.saturating_sub(1);
        std::iter::from_fn(move || {
            if let Some(e) = first.take() {
                return Some(e);
            }
            if left == 0 {
                return None;
            }
            left -= 1;
            let (event, tail) = split_event(rest, known).ok()?;
            rest = tail;
            known = event.event_type;
            Some(event)
        })
    }

    /// The whole encoded batch (for copying it elsewhere; the writer refills its header).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The strings of this batch, for decoding the next one ([`decode_with`]).
    pub fn known(&self) -> Known<'a> {
        Known { stream_id: self.stream_id, event_type: self.first.event_type }
    }

    /// The first event (every batch has one).
    pub fn first(&self) -> &EventRef<'a> {
        &self.first
    }

    /// Position one past the last event.
    pub fn end_position(&self) -> u64 {
        self.base_position + u64::from(self.event_count)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { max_event_bytes: 1 << 20, max_append_bytes: 1 << 22 }
    }

    #[test]
    fn round_trip() {
        let events = vec![
            EventData::new("A", b"one".to_vec()),
            EventData::new("Bee", b"".to_vec()).with_metadata(b"m".to_vec()),
        ];
        let mut b = encode("s-1", &events, limits()).unwrap();
        assert_eq!(b.len() % 8, 0);
        finish(&mut b, 10, 3, 99, 64);
        let v = decode(&b).unwrap();
        assert_eq!((v.base_position, v.first_version, v.timestamp, v.synced_offset), (10, 3, 99, 64));
        assert_eq!(v.stream_id, "s-1");
        let got: Vec<_> = v.events().map(|e| (e.event_type, e.metadata, e.payload)).collect();
        assert_eq!(got, vec![("A", &b""[..], &b"one"[..]), ("Bee", &b"m"[..], &b""[..])]);
    }

    #[test]
    fn ids_and_unit_flag_round_trip() {
        let a = EventId::from_u128(0x0102);
        let c = EventId::from_u128(0xc0);
        let events = vec![
            EventData::new("A", b"one".to_vec()).with_id(a).with_correlation_id(c).with_causation_id(a),
            EventData::new("B", b"two".to_vec()).with_causation_id(c),
            EventData::new("C", b"three".to_vec()),
        ];
        let plain = encode("s-1", &[EventData::new("A", b"one".to_vec())], limits()).unwrap();
        let mut b = encode("s-1", &events, limits()).unwrap();
        set_unit_continues(&mut b, true);
        finish(&mut b, 10, 3, 99, 64);
        let v = decode(&b).unwrap();
        assert!(v.continues);
        let got: Vec<_> = v.events().map(|e| (e.payload, e.id, e.correlation_id, e.causation_id)).collect();
        assert_eq!(
            got,
            vec![
                (&b"one"[..], Some(a), Some(c), Some(a)),
                (&b"two"[..], None, None, Some(c)),
                (&b"three"[..], None, None, None)
            ]
        );
        // An event without ids costs no byte more than before ids existed.
        let mut p = plain.clone();
        finish(&mut p, 0, 0, 1, 64);
        assert!(!decode(&p).unwrap().continues);
        assert_eq!(plain.len(), align8(HEADER_LEN + 3 + EVENT_HEADER_LEN + 1 + 3));
        // Unknown flags are refused.
        let mut bad = b.clone();
        bad[FLAGS_OFFSET] |= 2;
        finish(&mut bad, 10, 3, 99, 64);
        assert!(decode(&bad).is_err());
        let mut bad = b.clone();
        bad[HEADER_LEN + 3 + 2] |= 8;
        finish(&mut bad, 10, 3, 99, 64);
        assert!(decode(&bad).is_err());
    }

    #[test]
    fn limits_are_enforced() {
        let big = EventData::new("x", vec![0; 100]);
        let l = Limits { max_event_bytes: 50, max_append_bytes: 1 << 20 };
        assert!(matches!(encode("s", &[big], l), Err(Error::EventTooLarge { index: 0, .. })));
        assert!(matches!(encode("s", &[], l), Err(Error::EmptyAppend)));
        assert!(matches!(encode("", &[EventData::default()], l), Err(Error::InvalidStreamId { .. })));
        let long = "x".repeat(MAX_STREAM_ID_LEN + 1);
        assert!(matches!(encode(&long, &[EventData::default()], l), Err(Error::InvalidStreamId { .. })));
        let t = EventData::new("t".repeat(MAX_EVENT_TYPE_LEN + 1), vec![]);
        assert!(matches!(encode("s", &[t], l), Err(Error::InvalidEventType { .. })));
        let small = Limits { max_event_bytes: 1 << 20, max_append_bytes: 128 };
        let many = vec![EventData::new("x", vec![0; 40]); 4];
        assert!(matches!(encode("s", &many, small), Err(Error::AppendTooLarge { .. })));
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let mut b = encode("stream", &[EventData::new("T", b"payload".to_vec())], limits()).unwrap();
        finish(&mut b, 0, 0, 1, 64);
        for bit in 0..b.len() * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&c).is_err(), "flip of bit {bit} not detected");
        }
    }
}
