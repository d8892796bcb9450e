//! Archive block layout 2, the columns (FORMAT.md §14.2): a block's batches taken apart before
//! compression, so that like bytes sit with like, and put back together byte for byte when the
//! block is read.
//!
//! ```text
//! head column
//!     layout        u8, 2
//!     batch_count   varint
//!     type_count    varint, then type_count x (varint length, bytes): the block's event types
//!     ids_len, metadata_len, payloads_len   varints: the lengths of the other three columns
//!     per batch:
//!         kind u8, flags u8
//!         stream        varint: 0 = the previous batch's stream id; else its length, then the id
//!         first_version zigzag varint, minus (the previous batch's first_version + event_count)
//!                       if the stream is the previous batch's, else minus 0
//!         base_position, timestamp, synced_offset
//!                       zigzag varints, each minus the previous batch's (0 for the first)
//!         event_count   varint
//!         per event: type index varint, flags varint, metadata_len varint, payload_len varint
//! ids column       the events' ids (16 bytes each, in batch order)
//! metadata column  the events' metadata, back to back
//! payloads column  the events' payloads, back to back
//! ```
//!
//! A varint is LEB128 (7 bits per byte, low first, at most 10 bytes); zigzag maps a wrapping
//! difference `d` (as i64) to `(d << 1) ^ (d >> 63)`. What is not stored is derived: a batch's
//! length (its header, stream id and events, padded with zeros to 8) and its CRC.
//!
//! [`split`] takes apart only batches whose every byte it can put back (known event flags,
//! zero padding); [`join`] puts them back, never writing more than the block's recorded
//! length. The writer keeps the columns only if they are smaller than the batches and
//! [`join`] gives the batches back exactly; the block's data CRC then covers what was
//! rebuilt.
#![deny(clippy::indexing_slicing)]

use std::collections::HashMap;

use super::batch::{
    BASE_POSITION_OFFSET, EVENT_COUNT_OFFSET, EVENT_HAS_CAUSATION, EVENT_HAS_CORRELATION, EVENT_HAS_ID,
    EVENT_HEADER_LEN, FIRST_VERSION_OFFSET, FLAGS_OFFSET, HEADER_LEN, ID_LEN, KIND_OFFSET, LENGTH_OFFSET,
    MAX_EVENT_TYPE_LEN, MAX_STREAM_ID_LEN, STREAM_ID_LEN_OFFSET, SYNCED_OFFSET_OFFSET, TIMESTAMP_OFFSET,
};
use super::{align8, crc, le_u16, le_u32, le_u64, put_u16, put_u32, put_u64};

/// Block layout 1: the batches as they are.
pub(crate) const LAYOUT_BATCHES: u8 = 1;
/// Block layout 2: the columns.
pub(crate) const LAYOUT_COLUMNS: u8 = 2;

/// The event flags whose ids follow an event header.
const ID_FLAGS: u16 = EVENT_HAS_ID | EVENT_HAS_CORRELATION | EVENT_HAS_CAUSATION;
/// The smallest batch: header, a 1-byte stream id and an empty event, padded.
const MIN_BATCH: usize = align8(HEADER_LEN + 1 + EVENT_HEADER_LEN);

/// A block's batches taken apart: four columns, each compressed as its own zstd frame (an
/// empty one as none).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Columns {
    pub head: Vec<u8>,
    pub ids: Vec<u8>,
    pub metadata: Vec<u8>,
    pub payloads: Vec<u8>,
}

impl Columns {
    /// The columns in their order.
    pub fn parts(&self) -> [&[u8]; 4] {
        [&self.head, &self.ids, &self.metadata, &self.payloads]
    }

    /// Their total length: what the block decompresses to.
    pub fn len(&self) -> usize {
        self.parts().iter().map(|p| p.len()).sum()
    }

    /// The columns back to back, as the block decompresses.
    pub fn concat(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for p in self.parts() {
            out.extend_from_slice(p);
        }
        out
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(d: u64) -> u64 {
    let d = d as i64;
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> u64 {
    (z >> 1) ^ (z & 1).wrapping_neg()
}

/// Takes the batches `data` holds apart, or `None` if it is not whole batches whose every
/// byte the columns keep (the block is then stored as it is).
pub(crate) fn split(data: &[u8]) -> Option<Columns> {
    let mut head = vec![LAYOUT_COLUMNS];
    let mut batches = Vec::new();
    let (mut ids, mut metadata, mut payloads) = (Vec::new(), Vec::new(), Vec::new());
    let mut types: HashMap<&[u8], u64> = HashMap::new();
    let mut type_list: Vec<&[u8]> = Vec::new();
    let mut count = 0u64;
    // The previous batch's stream id, first_version + event_count, position, time, sync mark.
    let mut prev_stream: &[u8] = &[];
    let (mut next_version, mut prev_position, mut prev_time, mut prev_synced) = (0u64, 0u64, 0u64, 0u64);
    let mut at = 0usize;
    while at < data.len() {
        let b = data.get(at..)?;
        let length = le_u32(b, LENGTH_OFFSET)? as usize;
        let batch = b.get(..length)?;
        if length < MIN_BATCH || !length.is_multiple_of(8) {
            return None;
        }
        let (kind, flags) = (*batch.get(KIND_OFFSET)?, *batch.get(FLAGS_OFFSET)?);
        let event_count = le_u32(batch, EVENT_COUNT_OFFSET)?;
        let stream_len = le_u16(batch, STREAM_ID_LEN_OFFSET)? as usize;
        let stream = batch.get(HEADER_LEN..HEADER_LEN + stream_len)?;
        if stream_len == 0 || event_count == 0 {
            return None;
        }
        let first_version = le_u64(batch, FIRST_VERSION_OFFSET)?;
        let position = le_u64(batch, BASE_POSITION_OFFSET)?;
        let time = le_u64(batch, TIMESTAMP_OFFSET)?;
        let synced = le_u64(batch, SYNCED_OFFSET_OFFSET)?;
        batches.extend_from_slice(&[kind, flags]);
        let expected = if stream == prev_stream {
            put_varint(&mut batches, 0);
            next_version
        } else {
            put_varint(&mut batches, stream_len as u64);
            batches.extend_from_slice(stream);
            0
        };
        put_varint(&mut batches, zigzag(first_version.wrapping_sub(expected)));
        put_varint(&mut batches, zigzag(position.wrapping_sub(prev_position)));
        put_varint(&mut batches, zigzag(time.wrapping_sub(prev_time)));
        put_varint(&mut batches, zigzag(synced.wrapping_sub(prev_synced)));
        put_varint(&mut batches, u64::from(event_count));
        let mut e = HEADER_LEN + stream_len;
        for _ in 0..event_count {
            let h = batch.get(e..e + EVENT_HEADER_LEN)?;
            let type_len = le_u16(h, 0)? as usize;
            let eflags = le_u16(h, 2)?;
            let meta_len = le_u32(h, 4)? as usize;
            let payload_len = le_u32(h, 8)? as usize;
            if eflags & !ID_FLAGS != 0 {
                return None;
            }
            e += EVENT_HEADER_LEN;
            let id_bytes = eflags.count_ones() as usize * ID_LEN;
            ids.extend_from_slice(batch.get(e..e.checked_add(id_bytes)?)?);
            e += id_bytes;
            let event_type = batch.get(e..e.checked_add(type_len)?)?;
            e += type_len;
            let index = *types.entry(event_type).or_insert_with(|| {
                type_list.push(event_type);
                type_list.len() as u64 - 1
            });
            metadata.extend_from_slice(batch.get(e..e.checked_add(meta_len)?)?);
            e += meta_len;
            payloads.extend_from_slice(batch.get(e..e.checked_add(payload_len)?)?);
            e += payload_len;
            put_varint(&mut batches, index);
            put_varint(&mut batches, u64::from(eflags));
            put_varint(&mut batches, meta_len as u64);
            put_varint(&mut batches, payload_len as u64);
        }
        if align8(e) != length || batch.get(e..)?.iter().any(|&p| p != 0) {
            return None;
        }
        prev_stream = stream;
        next_version = first_version.wrapping_add(u64::from(event_count));
        (prev_position, prev_time, prev_synced) = (position, time, synced);
        count += 1;
        at += length;
    }
    put_varint(&mut head, count);
    put_varint(&mut head, type_list.len() as u64);
    for t in &type_list {
        put_varint(&mut head, t.len() as u64);
        head.extend_from_slice(t);
    }
    for len in [ids.len(), metadata.len(), payloads.len()] {
        put_varint(&mut head, len as u64);
    }
    head.extend_from_slice(&batches);
    Some(Columns { head, ids, metadata, payloads })
}

/// Reads from the front of a column.
struct Cursor<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let Some((front, rest)) = self.bytes.split_at_checked(n) else {
            return Err(format!("the {} column is cut short", self.what));
        };
        self.bytes = rest;
        Ok(front)
    }

    fn byte(&mut self) -> Result<u8, String> {
        self.take(1).map(|b| b.first().copied().unwrap_or(0))
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                break;
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("a varint in the {} column is too long", self.what))
    }

    /// A varint that must be at most `max`.
    fn bounded(&mut self, max: u64, field: &str) -> Result<u64, String> {
        let v = self.varint()?;
        if v > max {
            return Err(format!("{field} {v} is above {max}"));
        }
        Ok(v)
    }
}

/// Puts back the batches of a block in layout 2 (`bytes`: the block decompressed, the layout
/// byte first), which must come to exactly `data_len` bytes. Never writes more than
/// `data_len` bytes of batches, nor reserves room for more than it has read (a count in the
/// bytes reserves at most a small fixed amount); whatever does not fit the layout is an
/// error, described.
pub(crate) fn join(bytes: &[u8], data_len: usize) -> Result<Vec<u8>, String> {
    let mut head = Cursor { bytes, what: "head" };
    let layout = head.byte()?;
    if layout != LAYOUT_COLUMNS {
        return Err(format!("block layout {layout}, not {LAYOUT_COLUMNS}"));
    }
    let count = head.bounded((data_len / MIN_BATCH) as u64, "batch count")?;
    let type_count = head.bounded(head.bytes.len() as u64, "event type count")?;
    let mut types = Vec::with_capacity((type_count as usize).min(1024));
    for _ in 0..type_count {
        let len = head.bounded(MAX_EVENT_TYPE_LEN as u64, "event type length")?;
        types.push(head.take(len as usize)?);
    }
    let mut lens = [0usize; 3];
    for l in &mut lens {
        *l = head.bounded(bytes.len() as u64, "column length")? as usize;
    }
    let [ids_len, meta_len, payloads_len] = lens;
    let tail = ids_len
        .checked_add(meta_len)
        .and_then(|n| n.checked_add(payloads_len))
        .filter(|&n| n <= head.bytes.len())
        .ok_or("the columns' lengths add up to more than the block")?;
    let (rest, columns) = head.bytes.split_at(head.bytes.len() - tail);
    head.bytes = rest;
    let (id_bytes, columns) = columns.split_at(ids_len);
    let (meta_bytes, payload_bytes) = columns.split_at(meta_len);
    let mut ids = Cursor { bytes: id_bytes, what: "ids" };
    let mut metadata = Cursor { bytes: meta_bytes, what: "metadata" };
    let mut payloads = Cursor { bytes: payload_bytes, what: "payloads" };

    let mut out: Vec<u8> = Vec::with_capacity(data_len.min(4 << 20));
    let too_long = || format!("the batches come to more than the block's {data_len} bytes");
    let mut prev_stream: &[u8] = &[];
    let (mut next_version, mut prev_position, mut prev_time, mut prev_synced) = (0u64, 0u64, 0u64, 0u64);
    for _ in 0..count {
        let start = out.len();
        if start + HEADER_LEN > data_len {
            return Err(too_long());
        }
        out.resize(start + HEADER_LEN, 0);
        let kind = head.byte()?;
        let flags = head.byte()?;
        let stream_len = head.bounded(MAX_STREAM_ID_LEN as u64, "stream id length")? as usize;
        let expected = if stream_len == 0 {
            if prev_stream.is_empty() {
                return Err("the first batch of the block has no stream id".into());
            }
            next_version
        } else {
            prev_stream = head.take(stream_len)?;
            0
        };
        let first_version = expected.wrapping_add(unzigzag(head.varint()?));
        let position = prev_position.wrapping_add(unzigzag(head.varint()?));
        let time = prev_time.wrapping_add(unzigzag(head.varint()?));
        let synced = prev_synced.wrapping_add(unzigzag(head.varint()?));
        let left = (data_len - start) / EVENT_HEADER_LEN;
        let event_count = head.bounded(left.min(u32::MAX as usize) as u64, "event count")? as u32;
        if out.len() + prev_stream.len() > data_len {
            return Err(too_long());
        }
        out.extend_from_slice(prev_stream);
        for _ in 0..event_count {
            let index = head.varint()?;
            let event_type = usize::try_from(index)
                .ok()
                .and_then(|i| types.get(i))
                .ok_or_else(|| format!("event type {index} of {} in the block", types.len()))?;
            let eflags = head.bounded(u64::from(u16::MAX), "event flags")? as u16;
            let meta = head.bounded(u64::from(u32::MAX), "metadata length")? as usize;
            let payload = head.bounded(u64::from(u32::MAX), "payload length")? as usize;
            let id_bytes = (eflags & ID_FLAGS).count_ones() as usize * ID_LEN;
            let size = EVENT_HEADER_LEN + id_bytes + event_type.len() + meta + payload;
            if out.len().saturating_add(size) > data_len {
                return Err(too_long());
            }
            let e = out.len();
            out.resize(e + EVENT_HEADER_LEN, 0);
            let h = out.get_mut(e..).unwrap_or(&mut []);
            put_u16(h, 0, event_type.len() as u16);
            put_u16(h, 2, eflags);
            put_u32(h, 4, meta as u32);
            put_u32(h, 8, payload as u32);
            out.extend_from_slice(ids.take(id_bytes)?);
            out.extend_from_slice(event_type);
            out.extend_from_slice(metadata.take(meta)?);
            out.extend_from_slice(payloads.take(payload)?);
        }
        let end = start + align8(out.len() - start);
        if end > data_len {
            return Err(too_long());
        }
        out.resize(end, 0);
        let batch = out.get_mut(start..).unwrap_or(&mut []);
        put_u32(batch, LENGTH_OFFSET, (end - start) as u32);
        put_u64(batch, BASE_POSITION_OFFSET, position);
        put_u64(batch, FIRST_VERSION_OFFSET, first_version);
        put_u64(batch, TIMESTAMP_OFFSET, time);
        put_u64(batch, SYNCED_OFFSET_OFFSET, synced);
        put_u32(batch, EVENT_COUNT_OFFSET, event_count);
        put_u16(batch, STREAM_ID_LEN_OFFSET, prev_stream.len() as u16);
        if let Some(k) = batch.get_mut(KIND_OFFSET) {
            *k = kind;
        }
        if let Some(f) = batch.get_mut(FLAGS_OFFSET) {
            *f = flags;
        }
        let sum = batch.get(LENGTH_OFFSET..).map(crc).unwrap_or(0);
        put_u32(batch, 0, sum);
        next_version = first_version.wrapping_add(u64::from(event_count));
        (prev_position, prev_time, prev_synced) = (position, time, synced);
    }
    for (c, what) in [(&head, "head"), (&ids, "ids"), (&metadata, "metadata"), (&payloads, "payloads")] {
        if !c.bytes.is_empty() {
            return Err(format!("{} bytes of the {what} column are left over", c.bytes.len()));
        }
    }
    if out.len() != data_len {
        return Err(format!("the batches come to {} bytes, not the block's {data_len}", out.len()));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::event::{EventData, EventId};
    use crate::format::batch::{self, Limits};

    fn batches() -> Vec<u8> {
        let limits = Limits { max_event_bytes: 1 << 20, max_append_bytes: 1 << 20 };
        let id = |n: u128| EventId::from_u128(n);
        let mut data = Vec::new();
        let mut position = 1000;
        for (stream, version, events) in [
            ("order-7", 5, vec![EventData::new("Placed", &b"{\"a\":1}"[..]).with_metadata(&b"m"[..])]),
            ("order-7", 6, vec![EventData::new("Paid", &b"x"[..]).with_id(id(7)).with_causation_id(id(9))]),
            ("order-7", 9, vec![EventData::new("Placed", &b""[..]), EventData::new("Shipped", &b"yy"[..])]),
            ("cart-1", 0, vec![EventData::new("Added", &b"{}"[..]).with_correlation_id(id(3))]),
        ] {
            let mut b = batch::encode(stream, &events, limits).unwrap();
            batch::finish(&mut b, position, version, 1_764_115_200_000_000_000 - position, position * 64);
            position += 3;
            data.extend_from_slice(&b);
        }
        batch::set_unit_continues(&mut data, true);
        // (The flag changed the CRC: recompute it as the writer would have.)
        let sum = crc(&data[4..le_u32(&data, 4).unwrap() as usize]);
        put_u32(&mut data, 0, sum);
        data
    }

    #[test]
    fn columns_give_back_the_batches_byte_for_byte() {
        let data = batches();
        let cols = split(&data).unwrap();
        assert!(cols.len() < data.len());
        assert_eq!(join(&cols.concat(), data.len()).unwrap(), data);
        // Every batch comes back checked.
        let mut at = 0;
        while at < data.len() {
            at += batch::decode(&data[at..]).unwrap().length;
        }
    }

    #[test]
    fn bytes_the_columns_cannot_keep_are_not_split() {
        let mut data = batches();
        let last = data.len() - 1;
        data[last] = 1; // non-zero padding
        assert_eq!(split(&data), None);
        let mut data = batches();
        data[HEADER_LEN + 7 + 2] = 0x80; // an unknown event flag in the first event
        assert_eq!(split(&data), None);
        assert_eq!(split(&batches()[..100]), None);
    }

    #[test]
    fn a_damaged_or_oversized_block_is_refused_without_writing_past_its_length() {
        let data = batches();
        let bytes = split(&data).unwrap().concat();
        assert!(join(&bytes, data.len() - 8).is_err());
        assert!(join(&bytes, data.len() + 8).is_err());
        for cut in [1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(join(&bytes[..cut], data.len()).is_err(), "cut at {cut}");
        }
        // A flipped bit either fails or gives other batches (which the data CRC catches).
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            if let Ok(out) = join(&b, data.len()) {
                assert_eq!(out.len(), data.len());
            }
        }
    }

    #[test]
    fn varints_round_trip_and_refuse_overlong_encodings() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(Cursor { bytes: &out, what: "t" }.varint().unwrap(), v);
        }
        for d in [0u64, 1, u64::MAX, 5u64.wrapping_sub(9)] {
            assert_eq!(unzigzag(zigzag(d)), d);
        }
        assert!(Cursor { bytes: &[0xff; 11], what: "t" }.varint().is_err());
        assert!(
            Cursor { bytes: &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], what: "t" }
                .varint()
                .is_err()
        );
    }
}
