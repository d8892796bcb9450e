//! The active segment's index, journaled: `pNNNNN/{base:020}.aix` (FORMAT.md §8.4). It lets
//! open skip the scan of what the journal covers; it is derived data, never the only copy of
//! anything, and a journal that does not check out is only a slower open.
//!
//! Header (64 bytes): magic `b"STRATAIX"`, version (u32) at 8, partition (u32) at 12,
//! `base_position` (u64) at 16, 36 reserved zero bytes from 24, CRC-32 of bytes [0, 60) at 60.
//!
//! Then records, each 8-byte aligned, each covering the batches of segment bytes
//! `[from_offset, to_offset)`, continuing the previous record (the first from 64):
//!
//! ```text
//! 0   4  crc             CRC-32 of bytes [4, len)
//! 4   4  len             total length, padding included; a multiple of 8
//! 8   8  from_offset     segment offset of the first batch covered
//! 16  8  to_offset       segment offset one past the last batch covered
//! 24  8  from_position   position of the first batch covered
//! 32  8  to_position     one past the last event covered
//! 40  8  last_timestamp  the last covered batch's timestamp
//! 48  4  stream_count    entries of the stream table, >= 1
//! 52  4  batch_count     batches covered, >= 1
//! 56  .. stream table: per stream, LEB128 id_len, the id (UTF-8), LEB128 first_version
//!        (the version of its first batch in this record)
//!     .. batches, in offset order: LEB128 stream (an index into the table), LEB128
//!        event_count, LEB128 length / 8
//!     .. zero padding (< 8 bytes)
//! ```
//!
//! Batches are contiguous, so each one's offset and position follow from the record's start
//! and the lengths and counts before it, and a stream's later batches continue its versions.
#![deny(clippy::indexing_slicing)]

use hashbrown::HashMap;

use super::batch::MAX_STREAM_ID_LEN;
use super::header::{self, CRC_OFFSET, Frame, Malformed};
use super::index::{PositionEntry, StreamEntry};
use super::{align8, crc, le_u32, le_u64, put_u32, put_u64};

pub(crate) const MAGIC: &[u8; 8] = b"STRATAIX";
pub(crate) use super::header::HEADER_LEN;
const RECORD_FIXED: usize = 56;
/// Stream entries checked at a time in a frozen section (32 KiB: in L1/L2 for both passes).
const PIECE: usize = 1024;
/// Shortest valid batch (FORMAT.md §7.4).
const MIN_BATCH: u64 = 64;

/// The version of a journal that starts with a frozen section (FORMAT.md §8.4); one without
/// is written at version 1, the lowest that describes it.
pub(crate) const FROZEN_VERSION: u32 = 3;

/// The header frame; the reserved bytes depend on the version (checked in [`check_header`]).
const FRAME: Frame =
    Frame { magic: MAGIC, what: "active index", reserved: CRC_OFFSET..CRC_OFFSET, newest: FROZEN_VERSION };

/// The journal's file name beside the segment starting at `base`.
pub(crate) fn file_name(base: u64) -> String {
    format!("{base:020}.aix")
}

pub(crate) fn encode_header(partition: u32, base_position: u64) -> [u8; HEADER_LEN] {
    let mut h = header::begin(MAGIC);
    put_u32(&mut h, 12, partition);
    put_u64(&mut h, 16, base_position);
    header::seal(&mut h);
    h
}

/// Checks the header; returns the partition and base position it names.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(u32, u64), Malformed> {
    let h = header::check(bytes, &FRAME)?;
    match le_u32(h, 8).unwrap_or(0) {
        1 if h.get(24..CRC_OFFSET).is_some_and(|r| r.iter().all(|&b| b == 0)) => {}
        1 => return Err(Malformed::damaged(24, "reserved active index header bytes are not zero")),
        FROZEN_VERSION => {}
        v => return Err(Malformed::damaged(8, format!("active index format version {v} was never written"))),
    }
    Ok((le_u32(h, 12).unwrap_or(0), le_u64(h, 16).unwrap_or(0)))
}

/// A frozen section's header fields (FORMAT.md §8.4, version 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrozenHeader {
    pub partition: u32,
    pub base_position: u64,
    /// One past the last segment byte and position the section covers.
    pub to_offset: u64,
    pub to_position: u64,
    /// Segment offset of the last batch covered.
    pub last_offset: u64,
}

/// A checked frozen section over borrowed (usually mapped) bytes: its entries, and where the
/// records after it begin.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrozenView<'a> {
    pub header: FrozenHeader,
    pub streams: &'a [StreamEntry],
    pub positions: &'a [PositionEntry],
    /// File offset of the first record after the section.
    pub end: usize,
}

/// Encodes a version 3 journal holding only its frozen section: `streams` (sorted, as in an
/// index file, §8.1) and `positions` (§8.2) cover the segment up to `to_offset` and
/// `to_position`, its last batch at `last_offset`.
pub(crate) fn encode_frozen(h: &FrozenHeader, streams: &[StreamEntry], positions: &[PositionEntry]) -> Vec<u8> {
    let mut out = super::index::encode_entries(streams, positions);
    let mut head = header::begin_version(MAGIC, FROZEN_VERSION);
    put_u32(&mut head, 12, h.partition);
    put_u64(&mut head, 16, h.base_position);
    put_u32(&mut head, 24, streams.len() as u32);
    put_u32(&mut head, 28, positions.len() as u32);
    put_u64(&mut head, 32, h.to_offset);
    put_u64(&mut head, 40, h.to_position);
    put_u64(&mut head, 48, h.last_offset);
    put_u32(&mut head, 56, out.get(HEADER_LEN..).map(crc).unwrap_or(0));
    header::seal(&mut head);
    if let Some(at) = out.get_mut(..HEADER_LEN) {
        at.copy_from_slice(&head);
    }
    out
}

/// Checks the frozen section of a journal whose header checked out, if it has one (version
/// 3): its length, CRC and entries (as an index's, §8.3 items 5 and 6, over the covered
/// range), and that its last batch and first position entry lie where the range says.
/// `bytes` must be 8-byte aligned for the entries to be read in place.
pub(crate) fn decode_frozen(bytes: &[u8]) -> Result<Option<FrozenView<'_>>, Malformed> {
    let h = bytes.get(..HEADER_LEN).unwrap_or(&[]);
    if le_u32(h, 8) != Some(FROZEN_VERSION) {
        return Ok(None);
    }
    let field = |off| le_u64(h, off).unwrap_or(0);
    let header = FrozenHeader {
        partition: le_u32(h, 12).unwrap_or(0),
        base_position: field(16),
        to_offset: field(32),
        to_position: field(40),
        last_offset: field(48),
    };
    let (s, p) = (le_u32(h, 24).unwrap_or(0) as usize, le_u32(h, 28).unwrap_or(0) as usize);
    let end = HEADER_LEN + s * 32 + p * 16;
    let body = bytes
        .get(HEADER_LEN..end)
        .ok_or_else(|| Malformed::damaged(24, format!("frozen section of {s} + {p} entries runs past the file")))?;
    let split = s * 32;
    let streams: &[StreamEntry] = bytemuck::try_cast_slice(body.get(..split).unwrap_or(&[]))
        .map_err(|e| Malformed::damaged(HEADER_LEN as u64, format!("stream entries: {e}")))?;
    let positions: &[PositionEntry] = bytemuck::try_cast_slice(body.get(split..).unwrap_or(&[]))
        .map_err(|e| Malformed::damaged(HEADER_LEN as u64, format!("position entries: {e}")))?;
    // One pass over the stream entries, a piece at a time, for both the CRC and the checks
    // of their fields and order (each piece is in cache for the second): open's main cost
    // after a clean close. The CRC is judged first: damage is reported as damage, not as
    // disorder.
    let mut sum = crc32fast::Hasher::new();
    let mut order: Result<Option<StreamEntry>, String> = Ok(None);
    for piece in streams.chunks(PIECE) {
        sum.update(bytemuck::cast_slice(piece));
        if let Ok(prev) = order {
            order = super::index::check_stream_entries(prev, piece, header.to_offset);
        }
    }
    sum.update(bytemuck::cast_slice(positions));
    if Some(sum.finalize()) != le_u32(h, 56) {
        return Err(Malformed::damaged(HEADER_LEN as u64, "frozen section checksum mismatch"));
    }
    order.map_err(|why| Malformed::damaged(HEADER_LEN as u64, why))?;
    let first_data = HEADER_LEN as u64;
    if s == 0
        || header.to_offset < first_data + MIN_BATCH
        || header.to_position <= header.base_position
        || header.last_offset < first_data
        || header.last_offset.checked_add(MIN_BATCH).is_none_or(|e| e > header.to_offset)
    {
        return Err(Malformed::damaged(24, "frozen section covers an impossible range"));
    }
    super::index::check_entries(&[], positions, header.to_offset, header.base_position, header.to_position)
        .map_err(|why| Malformed::damaged(HEADER_LEN as u64, why))?;
    if positions.first().map(PositionEntry::get)
        != Some(PositionEntry { position: header.base_position, offset: first_data })
    {
        return Err(Malformed::damaged(
            HEADER_LEN as u64 + split as u64,
            "frozen section's first position entry is not the segment's first batch",
        ));
    }
    Ok(Some(FrozenView { header, streams, positions, end }))
}

/// One batch as a record lists it, with what the record implies about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Index into the record's stream table.
    pub stream: u32,
    pub first_version: u64,
    pub position: u64,
    pub offset: u64,
    pub event_count: u32,
    pub len: u32,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub from_offset: u64,
    pub to_offset: u64,
    pub from_position: u64,
    pub to_position: u64,
    pub last_timestamp: u64,
    pub streams: Vec<&'a str>,
    /// Each table stream's first version here.
    first_versions: Vec<u64>,
    /// The encoded batch list, checked by [`decode`].
    batch_bytes: &'a [u8],
    pub batch_count: usize,
    /// The last batch, found while checking.
    pub last: Batch,
}

impl Record<'_> {
    /// The record's batches in offset order, decoded from its checked bytes (nothing is
    /// allocated per batch).
    pub fn batches(&self) -> impl Iterator<Item = Batch> + '_ {
        let mut next_version = self.first_versions.clone();
        let (mut at, mut offset, mut position) = (0, self.from_offset, self.from_position);
        (0..self.batch_count).map(move |_| {
            let stream = get_varint(self.batch_bytes, &mut at).unwrap_or(0);
            let count = get_varint(self.batch_bytes, &mut at).unwrap_or(1);
            let len = get_varint(self.batch_bytes, &mut at).unwrap_or(8) * 8;
            let version = next_version.get_mut(stream as usize).map_or(0, |v| {
                let first = *v;
                *v = first.wrapping_add(count);
                first
            });
            let b = Batch {
                stream: stream as u32,
                first_version: version,
                position,
                offset,
                event_count: count as u32,
                len: len as u32,
            };
            offset = offset.wrapping_add(len);
            position = position.wrapping_add(count);
            b
        })
    }
}

/// A batch to journal, as the writer (or a scan) knows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub stream: &'a str,
    pub first_version: u64,
    pub event_count: u32,
    pub len: u32,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        let bits = u64::from(b & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        v |= bits << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Encodes a record of `entries` (in offset order, contiguous, non-empty; each stream's
/// batches continuing its versions) starting at segment offset `from_offset` and position
/// `from_position`.
pub(crate) fn encode(from_offset: u64, from_position: u64, last_timestamp: u64, entries: &[Entry<'_>]) -> Vec<u8> {
    let mut table: HashMap<&str, u32> = HashMap::with_capacity(entries.len().min(1 << 16));
    let mut streams = Vec::new();
    let mut batches = Vec::with_capacity(entries.len() * 4);
    let (mut to_offset, mut to_position) = (from_offset, from_position);
    for e in entries {
        let next = table.len() as u32;
        let idx = *table.entry(e.stream).or_insert_with(|| {
            put_varint(&mut streams, e.stream.len() as u64);
            streams.extend_from_slice(e.stream.as_bytes());
            put_varint(&mut streams, e.first_version);
            next
        });
        put_varint(&mut batches, u64::from(idx));
        put_varint(&mut batches, u64::from(e.event_count));
        put_varint(&mut batches, u64::from(e.len / 8));
        to_offset += u64::from(e.len);
        to_position += u64::from(e.event_count);
    }
    let len = align8(RECORD_FIXED + streams.len() + batches.len());
    let mut r = vec![0u8; RECORD_FIXED];
    r.reserve(len - RECORD_FIXED);
    put_u32(&mut r, 4, len as u32);
    put_u64(&mut r, 8, from_offset);
    put_u64(&mut r, 16, to_offset);
    put_u64(&mut r, 24, from_position);
    put_u64(&mut r, 32, to_position);
    put_u64(&mut r, 40, last_timestamp);
    put_u32(&mut r, 48, table.len() as u32);
    put_u32(&mut r, 52, entries.len() as u32);
    r.extend_from_slice(&streams);
    r.extend_from_slice(&batches);
    r.resize(len, 0);
    let sum = r.get(4..).map(crc).unwrap_or(0);
    put_u32(&mut r, 0, sum);
    r
}

/// Decodes and checks the record at the start of `bytes`; returns it and its length.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Record<'_>, usize), String> {
    let len = le_u32(bytes, 4).ok_or("record header cut short")? as usize;
    if len < align8(RECORD_FIXED + 6) || !len.is_multiple_of(8) {
        return Err(format!("impossible active index record length {len}"));
    }
    let r = bytes.get(..len).ok_or_else(|| format!("record claims {len} bytes, {} are left", bytes.len()))?;
    if r.get(4..).map(crc) != le_u32(r, 0) {
        return Err("active index record checksum mismatch".into());
    }
    let field = |off| le_u64(r, off).unwrap_or(0);
    let (from_offset, to_offset) = (field(8), field(16));
    let (from_position, to_position) = (field(24), field(32));
    let last_timestamp = field(40);
    let stream_count = le_u32(r, 48).unwrap_or(0) as usize;
    let batch_count = le_u32(r, 52).unwrap_or(0) as usize;
    // Each stream takes at least 3 bytes and each batch 3: counts are checked against the
    // bytes present before anything is allocated for them.
    let body = r.get(RECORD_FIXED..).unwrap_or(&[]);
    if stream_count == 0 || batch_count == 0 || stream_count > batch_count {
        return Err(format!("impossible counts: {stream_count} streams, {batch_count} batches"));
    }
    if stream_count.saturating_add(batch_count).saturating_mul(3) > body.len() {
        return Err("counts claim more than the record holds".into());
    }
    if from_offset < HEADER_LEN as u64 || to_offset <= from_offset || to_position <= from_position {
        return Err("record covers an impossible range".into());
    }
    let mut at = 0;
    let mut streams = Vec::with_capacity(stream_count);
    let mut seen = std::collections::HashSet::with_capacity(stream_count);
    let mut next_version = Vec::with_capacity(stream_count);
    for i in 0..stream_count {
        let bad = || format!("stream {i} of the table is malformed");
        let id_len = get_varint(body, &mut at).ok_or_else(bad)? as usize;
        if id_len == 0 || id_len > MAX_STREAM_ID_LEN {
            return Err(bad());
        }
        let id = body.get(at..at + id_len).ok_or_else(bad)?;
        at += id_len;
        let id = std::str::from_utf8(id).map_err(|_| bad())?;
        if id.as_bytes().contains(&0) {
            return Err(bad());
        }
        if !seen.insert(id) {
            // Two slots for one stream would split its versions in two counters, and its
            // batches could then reach the index out of order.
            return Err(format!("stream {i} of the table repeats an earlier one"));
        }
        streams.push(id);
        next_version.push(get_varint(body, &mut at).ok_or_else(bad)?);
    }
    let first_versions = next_version.clone();
    let batches_start = at;
    let mut last = None;
    let (mut offset, mut position) = (from_offset, from_position);
    for i in 0..batch_count {
        let bad = || format!("batch {i} is malformed");
        let stream = get_varint(body, &mut at).ok_or_else(bad)?;
        let count = get_varint(body, &mut at).ok_or_else(bad)?;
        let words = get_varint(body, &mut at).ok_or_else(bad)?;
        let version = usize::try_from(stream).ok().and_then(|s| next_version.get_mut(s)).ok_or_else(bad)?;
        let count32 = u32::try_from(count).ok().filter(|&c| c >= 1).ok_or_else(bad)?;
        let len =
            words.checked_mul(8).filter(|&l| l >= MIN_BATCH).and_then(|l| u32::try_from(l).ok()).ok_or_else(bad)?;
        let first_version = *version;
        *version = first_version.checked_add(count).ok_or_else(bad)?;
        last = Some(Batch { stream: stream as u32, first_version, position, offset, event_count: count32, len });
        offset = offset.checked_add(u64::from(len)).ok_or_else(bad)?;
        position = position.checked_add(count).ok_or_else(bad)?;
    }
    let rest = body.get(at..).unwrap_or(&[]);
    if rest.len() >= 8 || rest.iter().any(|&b| b != 0) {
        return Err("bytes after the last batch are not padding".into());
    }
    if offset != to_offset || position != to_position {
        return Err("the batches do not add up to the record's range".into());
    }
    let batch_bytes = body.get(batches_start..at).unwrap_or(&[]);
    let last = last.ok_or("a record without batches")?;
    let record = Record {
        from_offset,
        to_offset,
        from_position,
        to_position,
        last_timestamp,
        streams,
        first_versions,
        batch_bytes,
        batch_count,
        last,
    };
    Ok((record, len))
}

/// A scanned journal: its frozen section, if any, its valid records after it, where those end,
/// and why they end there, if before the end of the file.
#[derive(Debug)]
pub(crate) struct Scan<'a> {
    pub frozen: Option<FrozenView<'a>>,
    pub records: Vec<Record<'a>>,
    pub valid_end: usize,
    pub damage: Option<String>,
}

/// Scans a whole journal of the segment at `base_position` in `partition`: its header, its
/// frozen section if it has one (a section that does not check out fails the whole journal),
/// and its records, chained from the section's end (without one, from offset 64 and position
/// `base_position`), and where the valid ones end (with why, if before the end of the file).
/// `bytes` must be 8-byte aligned (a map, or [`super::Aligned`]) for a frozen section.
pub(crate) fn scan(bytes: &[u8], partition: u32, base_position: u64) -> Result<Scan<'_>, Malformed> {
    let (p, b) = check_header(bytes)?;
    if (p, b) != (partition, base_position) {
        return Err(Malformed::damaged(12, format!("active index of partition {p} segment {b}")));
    }
    let frozen = decode_frozen(bytes)?;
    let (mut at, mut offset, mut position) = match &frozen {
        Some(f) => (f.end, f.header.to_offset, f.header.to_position),
        None => (HEADER_LEN, HEADER_LEN as u64, base_position),
    };
    let mut records = Vec::new();
    while at < bytes.len() {
        match decode(bytes.get(at..).unwrap_or(&[])) {
            Ok((r, _)) if (r.from_offset, r.from_position) != (offset, position) => {
                let damage = Some("record does not continue the one before".into());
                return Ok(Scan { frozen, records, valid_end: at, damage });
            }
            Ok((r, len)) => {
                (offset, position) = (r.to_offset, r.to_position);
                records.push(r);
                at += len;
            }
            Err(why) => return Ok(Scan { frozen, records, valid_end: at, damage: Some(why) }),
        }
    }
    Ok(Scan { frozen, records, valid_end: at, damage: None })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry<'static>> {
        vec![
            Entry { stream: "a-1", first_version: 0, event_count: 1, len: 184 },
            Entry { stream: "b-2", first_version: 7, event_count: 3, len: 360 },
            Entry { stream: "a-1", first_version: 1, event_count: 2, len: 64 },
        ]
    }

    #[test]
    fn round_trip_and_chain() {
        let r1 = encode(64, 10, 5, &entries());
        let (d, len) = decode(&r1).unwrap();
        assert_eq!(len, r1.len());
        assert_eq!((d.from_offset, d.to_offset, d.from_position, d.to_position), (64, 672, 10, 16));
        assert_eq!(d.streams, vec!["a-1", "b-2"]);
        let got: Vec<_> = d.batches().map(|b| (b.stream, b.first_version, b.position, b.offset)).collect();
        assert_eq!(got, vec![(0, 0, 10, 64), (1, 7, 11, 248), (0, 1, 14, 608)]);
        let r2 = encode(672, 16, 6, &entries()[..1]);
        let mut file = encode_header(3, 10).to_vec();
        file.extend_from_slice(&r1);
        file.extend_from_slice(&r2);
        let sc = scan(&file, 3, 10).unwrap();
        assert_eq!((sc.records.len(), sc.valid_end, sc.damage), (2, file.len(), None));
        assert!(scan(&file, 3, 11).is_err(), "another segment's journal");
        // A record that does not continue the previous one ends the journal there.
        let mut gap = encode_header(3, 10).to_vec();
        gap.extend_from_slice(&r1);
        gap.extend_from_slice(&encode(680, 16, 6, &entries()[..1]));
        let sc = scan(&gap, 3, 10).unwrap();
        assert_eq!((sc.records.len(), sc.valid_end), (1, HEADER_LEN + r1.len()));
        assert!(sc.damage.is_some());
    }

    /// Found by the fuzzer: a table naming a stream twice was accepted, and a stream's
    /// batches could reach the index out of order.
    #[test]
    fn a_table_naming_a_stream_twice_is_refused() {
        let mut r = encode(64, 0, 1, &entries()[..2]);
        // Rename "b-2" to "a-1" in place and fix the CRC.
        let at = r.windows(3).position(|w| w == b"b-2").unwrap();
        r[at..at + 3].copy_from_slice(b"a-1");
        let sum = crc(&r[4..]);
        r[..4].copy_from_slice(&sum.to_le_bytes());
        assert!(decode(&r).unwrap_err().contains("repeats"));
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let r = encode(64, 0, 1, &entries());
        for bit in 0..r.len() * 8 {
            let mut c = r.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&c).is_err(), "flip of bit {bit} not detected");
        }
    }

    #[test]
    fn varints() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut at = 0;
            assert_eq!(get_varint(&b, &mut at), Some(v));
            assert_eq!(at, b.len());
        }
        let mut at = 0;
        assert_eq!(get_varint(&[0xff; 11], &mut at), None);
    }
}
