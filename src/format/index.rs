//! Index files: one per sealed segment, memory-mapped, validated before use.
//!
//! ```text
//! header (64 bytes)
//! 0   8  magic            b"STRATIDX"
//! 8   4  version          FORMAT_VERSION
//! 12  4  partition
//! 16  8  base_position    the segment's first position
//! 24  8  end_position     one past the segment's last position
//! 32  8  segment_len      byte length of the sealed segment file
//! 40  8  stream_entries   number of 32-byte stream entries
//! 48  8  position_entries number of 16-byte position entries
//! 56  4  entries_crc      CRC-32 of every byte after the header
//! 60  4  header_crc       CRC-32 of bytes [0, 60)
//! then stream_entries x StreamEntry, sorted by (stream_hash, tag, first_version)
//! then position_entries x PositionEntry, sorted by position
//! ```
#![deny(clippy::indexing_slicing)]

use bytemuck::{Pod, Zeroable};

use super::header::{self, Frame, Malformed};
use super::{crc, le_u32, le_u64, put_u32, put_u64};

pub(crate) const MAGIC: &[u8; 8] = b"STRATIDX";
pub(crate) use super::header::HEADER_LEN;
/// A position entry is written for the first batch at or after every this many bytes.
pub(crate) const POSITION_INTERVAL: u64 = 4096;

/// One batch of one stream: `(stream_hash, tag, first_version)` is the sort key. `tag`
/// tells apart streams of the segment whose ids hash alike (0 for the first, 1 for the next
/// in stream-id order...), so that every stream's entries are contiguous.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct StreamEntry {
    pub stream_hash: u64,
    pub first_version: u64,
    pub offset: u64,
    pub event_count: u32,
    pub tag: u32,
}

/// The byte offset of the first batch at or after each [`POSITION_INTERVAL`] bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct PositionEntry {
    pub position: u64,
    pub offset: u64,
}

impl StreamEntry {
    /// The entry with fields in native order (on-disk order is little-endian).
    pub fn get(&self) -> StreamEntry {
        StreamEntry {
            stream_hash: u64::from_le(self.stream_hash),
            first_version: u64::from_le(self.first_version),
            offset: u64::from_le(self.offset),
            event_count: u32::from_le(self.event_count),
            tag: u32::from_le(self.tag),
        }
    }

    pub(crate) fn to_le(self) -> StreamEntry {
        StreamEntry {
            stream_hash: self.stream_hash.to_le(),
            first_version: self.first_version.to_le(),
            offset: self.offset.to_le(),
            event_count: self.event_count.to_le(),
            tag: self.tag.to_le(),
        }
    }
}

impl PositionEntry {
    /// The entry with fields in native order.
    pub fn get(&self) -> PositionEntry {
        PositionEntry { position: u64::from_le(self.position), offset: u64::from_le(self.offset) }
    }
}

/// The entries of each stream, in turn, from entries sorted by `(stream_hash, tag,
/// first_version)` (a segment's index, or an archive's): every run of one `(hash, tag)`.
pub(crate) fn stream_runs(entries: &[StreamEntry]) -> impl Iterator<Item = &[StreamEntry]> {
    let mut rest = entries;
    std::iter::from_fn(move || {
        let first = rest.first()?.get();
        let n = rest.partition_point(|e| (e.get().stream_hash, e.get().tag) == (first.stream_hash, first.tag));
        let (run, tail) = rest.split_at(n.max(1));
        rest = tail;
        Some(run)
    })
}

/// The header fields of an index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub partition: u32,
    pub base_position: u64,
    pub end_position: u64,
    pub segment_len: u64,
    pub stream_entries: u64,
    pub position_entries: u64,
}

/// `HEADER_LEN` zero bytes (for the caller's header), then `streams` (§8.1) and `positions`
/// (§8.2) in their little-endian layout: an index file's body, and a journal's frozen section.
pub(crate) fn encode_entries(streams: &[StreamEntry], positions: &[PositionEntry]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out.reserve(streams.len() * 32 + positions.len() * 16);
    for e in streams {
        out.extend_from_slice(bytemuck::bytes_of(&e.to_le()));
    }
    for p in positions {
        let le = PositionEntry { position: p.position.to_le(), offset: p.offset.to_le() };
        out.extend_from_slice(bytemuck::bytes_of(&le));
    }
    out
}

/// Encodes a complete index file. `streams` must already be sorted.
pub(crate) fn encode(header: &Header, streams: &[StreamEntry], positions: &[PositionEntry]) -> Vec<u8> {
    let mut out = encode_entries(streams, positions);
    let mut h = header::begin(MAGIC);
    put_u32(&mut h, 12, header.partition);
    put_u64(&mut h, 16, header.base_position);
    put_u64(&mut h, 24, header.end_position);
    put_u64(&mut h, 32, header.segment_len);
    put_u64(&mut h, 40, streams.len() as u64);
    put_u64(&mut h, 48, positions.len() as u64);
    put_u32(&mut h, 56, out.get(HEADER_LEN..).map(crc).unwrap_or(0));
    header::seal(&mut h);
    if let Some(at) = out.get_mut(..HEADER_LEN) {
        at.copy_from_slice(&h);
    }
    out
}

/// The index header's frame (every byte of it is a field).
const FRAME: Frame = Frame { magic: MAGIC, what: "index", reserved: 60..60, newest: super::BASE_VERSION };

/// Checks and decodes the 64-byte header at the start of `bytes` (magic, CRC, version).
pub(crate) fn decode_header(bytes: &[u8]) -> Result<Header, Malformed> {
    let h = header::check(bytes, &FRAME)?;
    Ok(Header {
        partition: le_u32(h, 12).unwrap_or(0),
        base_position: le_u64(h, 16).unwrap_or(0),
        end_position: le_u64(h, 24).unwrap_or(0),
        segment_len: le_u64(h, 32).unwrap_or(0),
        stream_entries: le_u64(h, 40).unwrap_or(0),
        position_entries: le_u64(h, 48).unwrap_or(0),
    })
}

/// A validated index over borrowed (usually memory-mapped) bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexView<'a> {
    pub header: Header,
    pub streams: &'a [StreamEntry],
    #[cfg_attr(not(test), allow(dead_code))]
    pub positions: &'a [PositionEntry],
}

/// Checks an index file completely: magic, version, header CRC, length, entries CRC, sort
/// order, and entry offsets within `segment_len`. Returns what is wrong otherwise.
pub(crate) fn decode(bytes: &[u8]) -> Result<IndexView<'_>, String> {
    let header = decode_header(bytes).map_err(|m| m.what)?;
    let h = bytes.get(..HEADER_LEN).unwrap_or(&[]);
    let stream_bytes = header.stream_entries.checked_mul(32);
    let position_bytes = header.position_entries.checked_mul(16);
    let expected = stream_bytes
        .zip(position_bytes)
        .and_then(|(s, p)| s.checked_add(p))
        .and_then(|n| n.checked_add(HEADER_LEN as u64));
    if expected != Some(bytes.len() as u64) {
        return Err(format!(
            "index is {} bytes but its header describes {} stream and {} position entries",
            bytes.len(),
            header.stream_entries,
            header.position_entries
        ));
    }
    let body = bytes.get(HEADER_LEN..).unwrap_or(&[]);
    if Some(crc(body)) != le_u32(h, 56) {
        return Err("index entries checksum mismatch".into());
    }
    let split = (header.stream_entries * 32) as usize;
    let streams: &[StreamEntry] =
        bytemuck::try_cast_slice(body.get(..split).unwrap_or(&[])).map_err(|e| format!("stream entries: {e}"))?;
    let positions: &[PositionEntry] =
        bytemuck::try_cast_slice(body.get(split..).unwrap_or(&[])).map_err(|e| format!("position entries: {e}"))?;
    if header.end_position < header.base_position {
        return Err("index end position before its base position".into());
    }
    check_entries(streams, positions, header.segment_len, header.base_position, header.end_position)?;
    Ok(IndexView { header, streams, positions })
}

/// Checks sorted index entries (FORMAT.md §8.3 items 5 and 6) for a segment of `segment_len`
/// bytes holding positions `[base_position, end_position)`: stream entries with events,
/// offsets inside the data, versions that do not overflow, strictly increasing by
/// `(stream_hash, tag, first_version)`; position entries inside the range, strictly increasing
/// in both fields. Shared with the active index's frozen section (§8.4).
pub(crate) fn check_entries(
    streams: &[StreamEntry],
    positions: &[PositionEntry],
    segment_len: u64,
    base_position: u64,
    end_position: u64,
) -> Result<(), String> {
    check_stream_entries(None, streams, segment_len)?;
    let mut prev: Option<PositionEntry> = None;
    for p in positions.iter().map(PositionEntry::get) {
        if p.offset >= segment_len || p.position < base_position || p.position >= end_position {
            return Err(format!("position entry {} -> {} out of range", p.position, p.offset));
        }
        if prev.is_some_and(|q| q.position >= p.position || q.offset >= p.offset) {
            return Err("position entries out of order".into());
        }
        prev = Some(p);
    }
    Ok(())
}

/// The stream entry half of [`check_entries`], for entries checked a piece at a time: `prev`
/// is the entry before `streams` (if any); returns the last one.
pub(crate) fn check_stream_entries(
    mut prev: Option<StreamEntry>,
    streams: &[StreamEntry],
    segment_len: u64,
) -> Result<Option<StreamEntry>, String> {
    for e in streams.iter().map(StreamEntry::get) {
        if e.event_count == 0
            || e.offset >= segment_len
            || e.first_version.checked_add(u64::from(e.event_count)).is_none()
        {
            return Err(format!("stream entry with offset {} and {} events", e.offset, e.event_count));
        }
        if let Some(p) = prev
            && (p.stream_hash, p.tag, p.first_version) >= (e.stream_hash, e.tag, e.first_version)
        {
            return Err("stream entries out of order".into());
        }
        prev = Some(e);
    }
    Ok(prev)
}

/// File name of the index of the segment whose first position is `base`.
pub(crate) fn file_name(base: u64) -> String {
    format!("{base:020}.idx")
}
