//! A partition's stream metadata: `pNNNNN/stream-meta`, append-only (FORMAT.md §19).
//!
//! Header (64 bytes): magic `b"STRATSMD"`, version (u32) at 8, partition (u32) at 12, 44
//! reserved zero bytes from 16, CRC-32 of bytes [0, 60) at 60.
//!
//! Then records, each 8-byte aligned; a stream's newest record (highest `meta_version`) holds
//! its metadata:
//!
//! ```text
//! 0   4  crc              CRC-32 of bytes [4, len)
//! 4   4  len              total length, padding included
//! 8   8  meta_version     0 for a stream's first record, then +1 per change
//! 16  8  written_at       ns since the Unix epoch
//! 24  8  truncate_before  versions below it are hidden (0: none)
//! 32  8  max_count        at most this many newest events are visible (0: no limit)
//! 40  8  max_age          events older than this many ns are hidden (0: no limit)
//! 48  8  deleted_at       soft delete: when (ns), 0 if the stream is not soft-deleted
//! 56  2  stream_len       1..=MAX_STREAM_ID_LEN
//! 58  2  reserved         zero
//! 60  4  custom_len       0..=MAX_CUSTOM
//! 64  .. stream id (UTF-8), custom bytes, zero padding
//! ```
//!
//! A scan stops at the first invalid record: a torn append, if nothing valid follows.
#![deny(clippy::indexing_slicing)]

use std::time::Duration;

use crate::event::{StreamMetaRecord, StreamMetadata};

use super::batch::MAX_STREAM_ID_LEN;
use super::header::{self, CRC_OFFSET, Frame, Malformed};
use super::{align8, crc, le_u16, le_u32, le_u64, put_u16, put_u32, put_u64};

pub(crate) const MAGIC: &[u8; 8] = b"STRATSMD";
pub(crate) use super::header::HEADER_LEN;
pub(crate) const FILE_NAME: &str = "stream-meta";
const RECORD_FIXED: usize = 64;
/// Most bytes of user metadata a stream may carry.
pub const MAX_CUSTOM: usize = 4096;
/// Shortest record: a one-byte stream id, padded.
pub(crate) const MIN_RECORD: usize = align8(RECORD_FIXED + 1);
pub(crate) const MAX_RECORD: usize = align8(RECORD_FIXED + MAX_STREAM_ID_LEN + MAX_CUSTOM);

/// One stream's metadata as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct MetaRecord {
    pub stream: String,
    pub meta_version: u64,
    pub written_at: u64,
    pub truncate_before: u64,
    pub max_count: u64,
    pub max_age: u64,
    pub deleted_at: u64,
    pub custom: Vec<u8>,
}

impl MetaRecord {
    /// The public form of the record.
    pub(crate) fn public(&self) -> StreamMetaRecord {
        let opt = |v: u64| (v > 0).then_some(v);
        StreamMetaRecord {
            version: self.meta_version,
            written_at: self.written_at,
            metadata: StreamMetadata {
                max_age: opt(self.max_age).map(Duration::from_nanos),
                max_count: opt(self.max_count),
                truncate_before: opt(self.truncate_before),
                custom: self.custom.clone(),
            },
            soft_deleted_at: opt(self.deleted_at),
        }
    }
}

/// The file's header frame.
const FRAME: Frame =
    Frame { magic: MAGIC, what: "stream metadata file", reserved: 16..CRC_OFFSET, newest: super::BASE_VERSION };

pub(crate) fn encode_header(partition: u32) -> [u8; HEADER_LEN] {
    let mut h = header::begin(MAGIC);
    put_u32(&mut h, 12, partition);
    header::seal(&mut h);
    h
}

/// Checks the header; returns the partition it names.
pub(crate) fn check_header(bytes: &[u8]) -> Result<u32, Malformed> {
    let h = header::check(bytes, &FRAME)?;
    Ok(le_u32(h, 12).unwrap_or(0))
}

/// Encodes a record (the stream id and the custom bytes' length have been checked by the
/// caller).
pub(crate) fn encode(m: &MetaRecord) -> Vec<u8> {
    let (s, c) = (m.stream.len(), m.custom.len());
    let len = align8(RECORD_FIXED + s + c);
    let mut r = vec![0u8; len];
    put_u32(&mut r, 4, len as u32);
    put_u64(&mut r, 8, m.meta_version);
    put_u64(&mut r, 16, m.written_at);
    put_u64(&mut r, 24, m.truncate_before);
    put_u64(&mut r, 32, m.max_count);
    put_u64(&mut r, 40, m.max_age);
    put_u64(&mut r, 48, m.deleted_at);
    put_u16(&mut r, 56, s as u16);
    put_u32(&mut r, 60, c as u32);
    if let Some(b) = r.get_mut(RECORD_FIXED..RECORD_FIXED + s) {
        b.copy_from_slice(m.stream.as_bytes());
    }
    if let Some(b) = r.get_mut(RECORD_FIXED + s..RECORD_FIXED + s + c) {
        b.copy_from_slice(&m.custom);
    }
    let sum = r.get(4..).map(crc).unwrap_or(0);
    put_u32(&mut r, 0, sum);
    r
}

/// Decodes the record at the start of `bytes`, and its length.
pub(crate) fn decode(bytes: &[u8]) -> Result<(MetaRecord, usize), String> {
    let len = le_u32(bytes, 4).ok_or("record header cut short")? as usize;
    if len < MIN_RECORD || !len.is_multiple_of(8) || len > MAX_RECORD {
        return Err(format!("impossible stream metadata record length {len}"));
    }
    let r = bytes.get(..len).ok_or_else(|| format!("record claims {len} bytes, {} are left", bytes.len()))?;
    if r.get(4..).map(crc) != le_u32(r, 0) {
        return Err("stream metadata record checksum mismatch".into());
    }
    let s = le_u16(r, 56).unwrap_or(0) as usize;
    let c = le_u32(r, 60).unwrap_or(u32::MAX) as usize;
    if s == 0 || s > MAX_STREAM_ID_LEN || c > MAX_CUSTOM || align8(RECORD_FIXED + s + c) != len {
        return Err("stream metadata record length does not fit its stream id and custom bytes".into());
    }
    if le_u16(r, 58) != Some(0) || r.get(RECORD_FIXED + s + c..).is_none_or(|b| b.iter().any(|&x| x != 0)) {
        return Err("reserved stream metadata record bytes are not zero".into());
    }
    let stream = r
        .get(RECORD_FIXED..RECORD_FIXED + s)
        .and_then(|b| std::str::from_utf8(b).ok())
        .filter(|s| !s.contains('\0'))
        .ok_or("stream metadata stream id is not UTF-8")?;
    let field = |off| le_u64(r, off).unwrap_or(0);
    let m = MetaRecord {
        stream: stream.to_owned(),
        meta_version: field(8),
        written_at: field(16),
        truncate_before: field(24),
        max_count: field(32),
        max_age: field(40),
        deleted_at: field(48),
        custom: r.get(RECORD_FIXED + s..RECORD_FIXED + s + c).unwrap_or(&[]).to_vec(),
    };
    Ok((m, len))
}

/// Scans a whole file: the records, and where valid data ends (with why, if before the end).
pub(crate) fn scan(bytes: &[u8]) -> Result<(Vec<MetaRecord>, usize, Option<String>), Malformed> {
    check_header(bytes)?;
    let mut at = HEADER_LEN;
    let mut out = Vec::new();
    while at < bytes.len() {
        match decode(bytes.get(at..).unwrap_or(&[])) {
            Ok((m, len)) => {
                out.push(m);
                at += len;
            }
            Err(why) => return Ok((out, at, Some(why))),
        }
    }
    Ok((out, at, None))
}
