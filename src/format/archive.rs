//! Archive files: sealed segments rewritten into zstd-compressed blocks (FORMAT.md §14).
//!
//! ```text
//! header (64 bytes)
//! 0   8  magic           b"STRATARC"
//! 8   4  version         1 or 2 (ARCHIVE_VERSION, what this build writes): the blocks'
//!                        layout and what a stream entry stands for
//! 12  4  partition
//! 16  8  base_position   first position of the range the archive stands for
//! 24  8  end_position    one past its last position
//! 32  8  created         nanoseconds since the Unix epoch
//! 40  8  job_end         end of the range of the compaction that wrote it (the archives
//!                        of one compaction tile [first source's base, job_end))
//! 48  4  reason          why it was archived (see `Reason`)
//! 52  4  dict_len        bytes of the zstd dictionary at offset 64 (0: none)
//! 56  4  block_bytes     the uncompressed block size the writer aimed at
//! 60  4  header_crc      CRC-32 of bytes [0, 60)
//! 64  .. dictionary, zero-padded to 8
//!     .. blocks, each zero-padded to 8. Version 1: one zstd frame of whole batches.
//!        Version 2: zstd frames that decompress to a layout byte, then either the batches
//!        (layout 1) or the batches taken apart into columns (layout 2, `format::columns`)
//! meta (8-aligned, at meta_offset)
//!     block_count    x BlockEntry (32 bytes)
//!     stream_entries x StreamEntry (32 bytes), offsets into the uncompressed data,
//!                      sorted by (stream_hash, tag, first_version), like the data itself;
//!                      version 1: one per batch; version 2: one per span of a stream's
//!                      consecutive batches (versions following on) inside one block
//!     position_entries x PositionEntry (16 bytes): one per batch, sorted by position
//!     source_count   x Source (16 bytes): the files the archive was made from
//!     audit records  (audit_len bytes): the streams erased from the range
//! footer (last 64 bytes)
//! 0   8  meta_offset
//! 8   8  data_len        total uncompressed bytes (the sum of the blocks')
//! 16  4  block_count
//! 20  4  source_count
//! 24  8  stream_entries
//! 32  8  position_entries
//! 40  4  audit_len
//! 44  4  meta_crc        CRC-32 of the meta section
//! 48  4  version         the header's
//! 52  4  footer_crc      CRC-32 of footer bytes [0, 52)
//! 56  8  magic           b"STRATARC"
//! ```
#![deny(clippy::indexing_slicing)]

use std::io::Read;

use bytemuck::{Pod, Zeroable};

use super::batch;
use super::columns::{self, LAYOUT_BATCHES, LAYOUT_COLUMNS};
use super::header::{self, Frame, Malformed};
use super::index::{PositionEntry, StreamEntry};
use super::{align8, crc, le_u16, le_u32, le_u64, put_u16, put_u32, put_u64};

pub(crate) const MAGIC: &[u8; 8] = b"STRATARC";
/// The archive version this build writes: block layouts and stream spans (FORMAT.md §14).
pub(crate) const ARCHIVE_VERSION: u32 = 2;
pub(crate) use super::header::HEADER_LEN;
pub(crate) const FOOTER_LEN: usize = 64;
/// Largest uncompressed block: one batch may be up to 2 GiB, and is never split.
pub(crate) const MAX_BLOCK_LEN: u32 = 1 << 31;
/// Fixed part of an audit record.
pub(crate) const AUDIT_FIXED: usize = 48;

/// File name of the archive whose range starts at `base`.
pub(crate) fn file_name(base: u64) -> String {
    format!("{base:020}.arc")
}

/// Why a range was archived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Older than the retention period, and every stream in it snapshotted past it.
    RetainedAndSnapshotted,
    /// Older than the retention period, and every stream in it either snapshotted past it or
    /// cold: its newest event anywhere is older than the retention period too, so it was
    /// archived without a snapshot (its events stay readable from the archive).
    RetainedCold,
    /// Older than the retention period.
    Retained,
    /// The partition held more sealed bytes than the configured bound.
    HotBytes,
    /// It held events of deleted streams, erased from the archive.
    Erasure,
    /// Asked for explicitly, whatever the policy.
    Forced,
}

impl Reason {
    pub(crate) fn code(self) -> u32 {
        match self {
            Reason::RetainedAndSnapshotted => 1,
            Reason::Retained => 2,
            Reason::HotBytes => 3,
            Reason::Erasure => 4,
            Reason::Forced => 5,
            Reason::RetainedCold => 6,
        }
    }

    pub(crate) fn from_code(code: u32) -> Option<Reason> {
        Some(match code {
            1 => Reason::RetainedAndSnapshotted,
            2 => Reason::Retained,
            3 => Reason::HotBytes,
            4 => Reason::Erasure,
            5 => Reason::Forced,
            6 => Reason::RetainedCold,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::RetainedAndSnapshotted => "older than the retention period and covered by snapshots",
            Reason::Retained => "older than the retention period",
            Reason::HotBytes => "over the bound on uncompressed bytes",
            Reason::Erasure => "held events of deleted streams",
            Reason::Forced => "compaction was forced",
            Reason::RetainedCold => "older than the retention period, its streams snapshotted past it or cold",
        })
    }
}

/// Where one compressed block lies, and what it decompresses to.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct BlockEntry {
    /// Byte offset of the zstd frame in the file.
    pub file_offset: u64,
    /// Offset of the block's first byte in the uncompressed data.
    pub data_start: u64,
    pub compressed_len: u32,
    pub data_len: u32,
    /// CRC-32 of the compressed bytes.
    pub crc: u32,
    /// Version 2: CRC-32 of the block's `data_len` bytes of batches, as they are read back
    /// (version 1: zero, not read).
    pub data_crc: u32,
}

impl BlockEntry {
    pub fn get(&self) -> BlockEntry {
        BlockEntry {
            file_offset: u64::from_le(self.file_offset),
            data_start: u64::from_le(self.data_start),
            compressed_len: u32::from_le(self.compressed_len),
            data_len: u32::from_le(self.data_len),
            crc: u32::from_le(self.crc),
            data_crc: u32::from_le(self.data_crc),
        }
    }

    fn to_le(self) -> BlockEntry {
        BlockEntry {
            file_offset: self.file_offset.to_le(),
            data_start: self.data_start.to_le(),
            compressed_len: self.compressed_len.to_le(),
            data_len: self.data_len.to_le(),
            crc: self.crc.to_le(),
            data_crc: self.data_crc.to_le(),
        }
    }
}

/// A segment the archive was made from (an archive rewritten to erase streams keeps the
/// sources of the original).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct Source {
    pub base_position: u64,
    pub bytes: u64,
}

/// What was erased: all events of one deleted stream that the archived range held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The deleted stream.
    pub stream: String,
    /// How many of its events were erased from this range.
    pub events: u64,
    /// Position of the first erased event.
    pub first_position: u64,
    /// Position of the last erased event.
    pub last_position: u64,
    /// When the stream was deleted (nanoseconds since the Unix epoch).
    pub deleted_at: u64,
    /// When its events were erased.
    pub erased_at: u64,
}

/// The header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// 1 or 2 ([`ARCHIVE_VERSION`]).
    pub version: u32,
    pub partition: u32,
    pub base_position: u64,
    pub end_position: u64,
    pub created: u64,
    pub job_end: u64,
    pub reason: Reason,
    pub dict_len: u32,
    pub block_bytes: u32,
}

/// One block, already compressed.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// Its zstd frames, back to back.
    pub frames: Vec<u8>,
    pub data_start: u64,
    pub data_len: u32,
    /// CRC-32 of its batches (version 2; 0 for version 1).
    pub data_crc: u32,
}

/// Everything an encoder needs besides the header: the blocks already compressed.
pub(crate) struct Parts<'a> {
    pub dictionary: &'a [u8],
    pub blocks: &'a [Block],
    pub streams: &'a [StreamEntry],
    pub positions: &'a [PositionEntry],
    pub sources: &'a [Source],
    pub audit: &'a [AuditRecord],
}

/// Encodes a complete archive file.
pub(crate) fn encode(h: &Header, parts: &Parts<'_>) -> Vec<u8> {
    let compressed: usize = parts.blocks.iter().map(|b| align8(b.frames.len())).sum();
    let mut out = Vec::with_capacity(
        HEADER_LEN + align8(parts.dictionary.len()) + compressed + parts.blocks.len() * 32 + parts.streams.len() * 32,
    );
    let mut head = header::begin_version(MAGIC, h.version);
    put_u32(&mut head, 12, h.partition);
    put_u64(&mut head, 16, h.base_position);
    put_u64(&mut head, 24, h.end_position);
    put_u64(&mut head, 32, h.created);
    put_u64(&mut head, 40, h.job_end);
    put_u32(&mut head, 48, h.reason.code());
    put_u32(&mut head, 52, parts.dictionary.len() as u32);
    put_u32(&mut head, 56, h.block_bytes);
    header::seal(&mut head);
    out.extend_from_slice(&head);
    out.extend_from_slice(parts.dictionary);
    out.resize(align8(out.len()), 0);
    let mut entries = Vec::with_capacity(parts.blocks.len());
    let mut data_len = 0u64;
    for b in parts.blocks {
        entries.push(BlockEntry {
            file_offset: out.len() as u64,
            data_start: b.data_start,
            compressed_len: b.frames.len() as u32,
            data_len: b.data_len,
            crc: crc(&b.frames),
            data_crc: if h.version >= 2 { b.data_crc } else { 0 },
        });
        data_len = b.data_start + u64::from(b.data_len);
        out.extend_from_slice(&b.frames);
        out.resize(align8(out.len()), 0);
    }
    let meta_offset = out.len();
    for e in &entries {
        out.extend_from_slice(bytemuck::bytes_of(&e.to_le()));
    }
    for e in parts.streams {
        out.extend_from_slice(bytemuck::bytes_of(&e.to_le()));
    }
    for p in parts.positions {
        let le = PositionEntry { position: p.position.to_le(), offset: p.offset.to_le() };
        out.extend_from_slice(bytemuck::bytes_of(&le));
    }
    for s in parts.sources {
        let le = Source { base_position: s.base_position.to_le(), bytes: s.bytes.to_le() };
        out.extend_from_slice(bytemuck::bytes_of(&le));
    }
    let audit_start = out.len();
    for a in parts.audit {
        let at = out.len();
        let len = align8(AUDIT_FIXED + a.stream.len());
        out.resize(at + len, 0);
        let rec = out.get_mut(at..).unwrap_or(&mut []);
        put_u32(rec, 0, len as u32);
        put_u16(rec, 4, a.stream.len() as u16);
        put_u64(rec, 8, a.events);
        put_u64(rec, 16, a.first_position);
        put_u64(rec, 24, a.last_position);
        put_u64(rec, 32, a.deleted_at);
        put_u64(rec, 40, a.erased_at);
        if let Some(s) = rec.get_mut(AUDIT_FIXED..AUDIT_FIXED + a.stream.len()) {
            s.copy_from_slice(a.stream.as_bytes());
        }
    }
    let audit_len = out.len() - audit_start;
    let meta_crc = out.get(meta_offset..).map(crc).unwrap_or(0);
    let f = out.len();
    out.resize(f + FOOTER_LEN, 0);
    let footer = out.get_mut(f..).unwrap_or(&mut []);
    put_u64(footer, 0, meta_offset as u64);
    put_u64(footer, 8, data_len);
    put_u32(footer, 16, entries.len() as u32);
    put_u32(footer, 20, parts.sources.len() as u32);
    put_u64(footer, 24, parts.streams.len() as u64);
    put_u64(footer, 32, parts.positions.len() as u64);
    put_u32(footer, 40, audit_len as u32);
    put_u32(footer, 44, meta_crc);
    put_u32(footer, 48, h.version);
    let footer_crc = footer.get(..52).map(crc).unwrap_or(0);
    put_u32(footer, 52, footer_crc);
    if let Some(m) = footer.get_mut(56..64) {
        m.copy_from_slice(MAGIC);
    }
    out
}

fn corrupt<T>(offset: usize, why: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed::damaged(offset as u64, why))
}

/// The archive header's frame (every byte of it is a field).
const FRAME: Frame = Frame { magic: MAGIC, what: "archive", reserved: 60..60, newest: ARCHIVE_VERSION };

/// Checks and decodes the header.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<Header, Malformed> {
    let h = header::check(bytes, &FRAME)?;
    let base_position = le_u64(h, 16).unwrap_or(0);
    let end_position = le_u64(h, 24).unwrap_or(0);
    if end_position <= base_position {
        return corrupt(16, format!("archive range {base_position}..{end_position} is empty"));
    }
    let code = le_u32(h, 48).unwrap_or(0);
    let Some(reason) = Reason::from_code(code) else {
        return corrupt(48, format!("unknown archive reason {code}"));
    };
    let job_end = le_u64(h, 40).unwrap_or(0);
    if job_end < end_position {
        return corrupt(40, format!("archive ends at {end_position}, past its compaction's end {job_end}"));
    }
    Ok(Header {
        version: le_u32(h, header::VERSION_OFFSET).unwrap_or(0),
        partition: le_u32(h, 12).unwrap_or(0),
        base_position,
        end_position,
        created: le_u64(h, 32).unwrap_or(0),
        job_end,
        reason,
        dict_len: le_u32(h, 52).unwrap_or(0),
        block_bytes: le_u32(h, 56).unwrap_or(0),
    })
}

/// The byte ranges of a checked archive's sections, for zero-copy access to its mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub header: Header,
    pub dictionary: std::ops::Range<usize>,
    pub blocks: std::ops::Range<usize>,
    pub streams: std::ops::Range<usize>,
    pub positions: std::ops::Range<usize>,
    pub sources: std::ops::Range<usize>,
    pub audit: std::ops::Range<usize>,
    pub data_len: u64,
}

/// What the header and the footer say, checked (FORMAT.md §14.5 steps 1–9): the sections'
/// byte ranges, and the meta section's CRC to check it against on first use ([`check_meta`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ends {
    pub layout: Layout,
    pub meta_crc: u32,
}

/// Checks a whole archive except the compressed blocks' contents (each block is checked
/// against its CRC when it is read): header, footer, the meta section's CRC, and that every
/// entry points inside the file and the data, in order.
pub(crate) fn decode(bytes: &[u8]) -> Result<Layout, Malformed> {
    let head = bytes.get(..HEADER_LEN.min(bytes.len())).unwrap_or(&[]);
    let foot = bytes.get(bytes.len().saturating_sub(FOOTER_LEN)..).unwrap_or(&[]);
    let ends = decode_ends(head, foot, bytes.len() as u64)?;
    check_meta(bytes, &ends)?;
    Ok(ends.layout)
}

/// Checks an archive's header and footer (FORMAT.md §14.5 steps 1–9) from its first bytes
/// `head` (up to 64), its last bytes `foot` (up to 64) and its length `len`: what open reads.
pub(crate) fn decode_ends(head: &[u8], foot: &[u8], len: u64) -> Result<Ends, Malformed> {
    let header = decode_header(head)?;
    let Ok(len) = usize::try_from(len) else { return corrupt(usize::MAX, "archive is too long") };
    if len < HEADER_LEN + FOOTER_LEN || foot.len() != FOOTER_LEN {
        return corrupt(len, "archive is too short for its footer");
    }
    let f_at = len - FOOTER_LEN;
    let footer = foot;
    if footer.get(56..64) != Some(MAGIC.as_slice()) {
        return corrupt(f_at, "no archive magic in the footer (a torn or truncated archive)");
    }
    if footer.get(..52).map(crc) != le_u32(footer, 52) {
        return corrupt(f_at, "archive footer checksum mismatch");
    }
    // The footer's version, covered by the footer's CRC, follows the one rule too.
    let footer_version = le_u32(footer, 48).unwrap_or(0);
    header::check_version(footer_version, ARCHIVE_VERSION, "archive footer")
        .map_err(|m| Malformed { offset: (f_at + 48) as u64, ..m })?;
    if footer_version != header.version {
        return corrupt(
            f_at + 48,
            format!("archive footer says version {footer_version}, its header {}", header.version),
        );
    }
    let meta_offset = le_u64(footer, 0).unwrap_or(u64::MAX);
    let data_len = le_u64(footer, 8).unwrap_or(0);
    let block_count = le_u32(footer, 16).unwrap_or(0) as u64;
    let source_count = le_u32(footer, 20).unwrap_or(0) as u64;
    let stream_entries = le_u64(footer, 24).unwrap_or(u64::MAX);
    let position_entries = le_u64(footer, 32).unwrap_or(u64::MAX);
    let audit_len = le_u32(footer, 40).unwrap_or(0) as u64;
    let dict_end = HEADER_LEN as u64 + u64::from(header.dict_len);
    let meta_len = block_count
        .checked_mul(32)
        .and_then(|n| n.checked_add(stream_entries.checked_mul(32)?))
        .and_then(|n| n.checked_add(position_entries.checked_mul(16)?))
        .and_then(|n| n.checked_add(source_count.checked_mul(16)?))
        .and_then(|n| n.checked_add(audit_len));
    if !meta_offset.is_multiple_of(8)
        || meta_offset < dict_end
        || meta_len.and_then(|m| m.checked_add(meta_offset)) != Some(f_at as u64)
    {
        return corrupt(f_at, "archive footer's section sizes do not add up to the file's length");
    }
    let mut at = meta_offset as usize;
    let mut section = |n: u64, size: usize| {
        let start = at;
        at += n as usize * size;
        start..at
    };
    let blocks = section(block_count, 32);
    let streams = section(stream_entries, 32);
    let positions = section(position_entries, 16);
    let sources = section(source_count, 16);
    let audit = section(audit_len, 1);
    let layout = Layout {
        header,
        dictionary: HEADER_LEN..dict_end as usize,
        blocks,
        streams,
        positions,
        sources,
        audit,
        data_len,
    };
    Ok(Ends { layout, meta_crc: le_u32(footer, 44).unwrap_or(0) })
}

/// Checks the meta section of the whole archive image `bytes`, whose ends `decode_ends`
/// checked (FORMAT.md §14.5 steps 10–14): its CRC, the block entries, the stream and
/// position entries and the audit records.
pub(crate) fn check_meta(bytes: &[u8], ends: &Ends) -> Result<(), Malformed> {
    let layout = &ends.layout;
    let meta_offset = layout.blocks.start;
    let f_at = layout.audit.end;
    if bytes.len() != f_at + FOOTER_LEN {
        return corrupt(bytes.len(), "archive changed length since its footer was read");
    }
    if bytes.get(meta_offset..f_at).map(crc) != Some(ends.meta_crc) {
        return corrupt(meta_offset, "archive index checksum mismatch");
    }
    let dict_end = layout.dictionary.end as u64;
    check_blocks(bytes, layout, dict_end, meta_offset)?;
    check_entries(bytes, layout)?;
    audit_records(bytes, layout)?;
    Ok(())
}

fn check_blocks(bytes: &[u8], l: &Layout, dict_end: u64, meta_offset: usize) -> Result<(), Malformed> {
    let blocks: &[BlockEntry] = cast(bytes, &l.blocks)?;
    let mut data_at = 0u64;
    let mut file_at = super::align8(dict_end as usize) as u64;
    for (i, b) in blocks.iter().enumerate() {
        let b = b.get();
        let at = l.blocks.start + i * 32;
        if b.data_start != data_at || b.data_len == 0 || b.data_len > MAX_BLOCK_LEN {
            return corrupt(
                at,
                format!("block {i} holds data {}+{}, expected to start at {data_at}", b.data_start, b.data_len),
            );
        }
        let frame_end = b.file_offset.checked_add(u64::from(b.compressed_len));
        let Some(frame_end) = frame_end.filter(|&e| b.file_offset >= file_at && e <= meta_offset as u64) else {
            return corrupt(at, format!("block {i} lies outside the archive's block section"));
        };
        data_at += u64::from(b.data_len);
        file_at = frame_end;
    }
    if data_at != l.data_len {
        return corrupt(l.blocks.start, format!("blocks hold {data_at} bytes, the footer says {}", l.data_len));
    }
    Ok(())
}

fn check_entries(bytes: &[u8], l: &Layout) -> Result<(), Malformed> {
    let streams: &[StreamEntry] = cast(bytes, &l.streams)?;
    let mut prev: Option<StreamEntry> = None;
    for (i, e) in streams.iter().enumerate() {
        let e = e.get();
        let at = l.streams.start + i * 32;
        if e.offset >= l.data_len || e.event_count == 0 {
            return corrupt(at, format!("stream entry {i} points outside the data"));
        }
        if let Some(p) = prev
            && (p.stream_hash, p.tag, p.first_version, p.offset) >= (e.stream_hash, e.tag, e.first_version, e.offset)
        {
            return corrupt(at, format!("stream entry {i} is out of order"));
        }
        prev = Some(e);
    }
    let positions: &[PositionEntry] = cast(bytes, &l.positions)?;
    let mut next = l.header.base_position;
    for (i, p) in positions.iter().enumerate() {
        let p = p.get();
        let at = l.positions.start + i * 16;
        if p.position < next || p.position >= l.header.end_position || p.offset >= l.data_len {
            return corrupt(at, format!("position entry {i} ({}) is out of order or out of range", p.position));
        }
        next = p.position + 1;
    }
    Ok(())
}

/// The audit records of a checked archive.
pub(crate) fn audit_records(bytes: &[u8], l: &Layout) -> Result<Vec<AuditRecord>, Malformed> {
    let audit = bytes.get(l.audit.clone()).unwrap_or(&[]);
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < audit.len() {
        let rec = audit.get(at..).unwrap_or(&[]);
        let len = le_u32(rec, 0).unwrap_or(0) as usize;
        let stream_len = le_u16(rec, 4).unwrap_or(0) as usize;
        if !len.is_multiple_of(8) || len < align8(AUDIT_FIXED + stream_len) || len > rec.len() {
            return corrupt(l.audit.start + at, "audit record length is wrong");
        }
        let stream = rec
            .get(AUDIT_FIXED..AUDIT_FIXED + stream_len)
            .and_then(|s| std::str::from_utf8(s).ok())
            .ok_or_else(|| Malformed::damaged((l.audit.start + at) as u64, "audit record's stream id is not UTF-8"))?;
        out.push(AuditRecord {
            stream: stream.to_owned(),
            events: le_u64(rec, 8).unwrap_or(0),
            first_position: le_u64(rec, 16).unwrap_or(0),
            last_position: le_u64(rec, 24).unwrap_or(0),
            deleted_at: le_u64(rec, 32).unwrap_or(0),
            erased_at: le_u64(rec, 40).unwrap_or(0),
        });
        at += len;
    }
    Ok(out)
}

/// Casts a checked section to its entries (the section is 8-aligned within the file; a
/// mapping is page-aligned).
pub(crate) fn cast<'a, T: Pod>(bytes: &'a [u8], range: &std::ops::Range<usize>) -> Result<&'a [T], Malformed> {
    bytes
        .get(range.clone())
        .and_then(|b| bytemuck::try_cast_slice(b).ok())
        .ok_or_else(|| Malformed::damaged(range.start as u64, "archive section is misaligned or out of bounds"))
}

/// Decompresses block `i` of a checked archive image into its batches, checking the frame's
/// CRC, the length and (version 2) the batches' CRC after putting back columns. Memory grows
/// only as far as the frames really decompress, and never past the block's recorded length
/// (plus its layout byte). An error names the block's file offset.
pub(crate) fn decompress_block(bytes: &[u8], layout: &Layout, i: usize) -> Result<Vec<u8>, (u64, String)> {
    let blocks: &[BlockEntry] = cast(bytes, &layout.blocks).unwrap_or(&[]);
    let Some(b) = blocks.get(i).map(BlockEntry::get) else { return Err((0, format!("no block {i}"))) };
    let start = b.file_offset as usize;
    let frame = bytes
        .get(start..start.saturating_add(b.compressed_len as usize))
        .ok_or((b.file_offset, format!("block {i} lies outside the file")))?;
    if crc(frame) != b.crc {
        return Err((b.file_offset, format!("block {i} checksum mismatch")));
    }
    let version = layout.header.version;
    // Version 2 blocks begin with their layout byte; neither layout is longer than that plus
    // the batches (the writer keeps columns only when they are smaller).
    let expected = b.data_len as usize + usize::from(version >= 2);
    let mut out = Vec::with_capacity(expected.min(4 << 20));
    let dict = bytes.get(layout.dictionary.clone()).unwrap_or(&[]);
    let limit = expected as u64 + 1;
    // Concatenated frames decompress to their contents, concatenated (RFC 8878 §3.1).
    let read = if dict.is_empty() {
        zstd::stream::read::Decoder::with_buffer(frame).and_then(|d| d.take(limit).read_to_end(&mut out))
    } else {
        zstd::stream::read::Decoder::with_dictionary(frame, dict).and_then(|d| d.take(limit).read_to_end(&mut out))
    };
    read.map_err(|e| (b.file_offset, format!("block {i} does not decompress: {e}")))?;
    if version < 2 {
        if out.len() != expected {
            return Err((b.file_offset, format!("block {i} decompresses to {} bytes, not {expected}", out.len())));
        }
        return Ok(out);
    }
    if out.len() > expected {
        return Err((b.file_offset, format!("block {i} decompresses to more than {expected} bytes")));
    }
    let data = match out.first().copied() {
        Some(LAYOUT_BATCHES) => {
            if out.len() != expected {
                return Err((b.file_offset, format!("block {i} decompresses to {} bytes, not {expected}", out.len())));
            }
            out.remove(0);
            out
        }
        Some(LAYOUT_COLUMNS) => columns::join(&out, b.data_len as usize)
            .map_err(|why| (b.file_offset, format!("block {i}'s columns do not give its batches: {why}")))?,
        Some(other) => return Err((b.file_offset, format!("block {i} has unknown layout {other}"))),
        None => return Err((b.file_offset, format!("block {i} decompresses to nothing"))),
    };
    if crc(&data) != b.data_crc {
        return Err((b.file_offset, format!("block {i}'s batches do not match their checksum")));
    }
    Ok(data)
}

/// The batches a stream entry stands for (FORMAT.md §14.3; in version 1, one): read from
/// `bytes`, the data from the entry's offset to the end of its block, each as `(offset from
/// there, first_version, event_count)`. Only their headers are peeked: a read checks each
/// batch it uses. The batches must follow on from the entry's `first_version` and hold its
/// `event_count` events.
pub(crate) fn span_batches(bytes: &[u8], e: &StreamEntry) -> Result<Vec<(usize, u64, u32)>, String> {
    let mut out = Vec::new();
    let (mut at, mut version, mut left) = (0usize, e.first_version, e.event_count);
    while left > 0 {
        let b = bytes.get(at..).unwrap_or(&[]);
        let length = batch::claimed_length(b).unwrap_or(0);
        let first = le_u64(b, batch::FIRST_VERSION_OFFSET);
        let count = le_u32(b, batch::EVENT_COUNT_OFFSET).unwrap_or(0);
        if first != Some(version)
            || count == 0
            || count > left
            || length < batch::HEADER_LEN
            || !length.is_multiple_of(8)
            || length > b.len()
        {
            return Err(format!(
                "the batches from the entry's offset do not hold versions {}.. ({} events) of one block",
                e.first_version, e.event_count
            ));
        }
        out.push((at, version, count));
        at += length;
        version = version.saturating_add(u64::from(count));
        left -= count;
    }
    Ok(out)
}
