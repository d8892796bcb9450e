//! A partition's deleted streams: `pNNNNN/tombstones`, append-only (FORMAT.md §16).
//!
//! Header (64 bytes): magic `b"STRATTMB"`, version (u32) at 8, partition (u32) at 12, 44
//! reserved zero bytes from 16, CRC-32 of bytes [0, 60) at 60.
//!
//! Then records, each 8-byte aligned:
//!
//! ```text
//! 0   4  crc         CRC-32 of bytes [4, len)
//! 4   4  len         total length, padding included
//! 8   8  deleted_at  when the stream was deleted (ns since the Unix epoch)
//! 16  2  stream_len  1..=MAX_STREAM_ID_LEN
//! 18  6  reserved    zeros
//! 24  .. stream id (UTF-8), zero padding
//! ```
//!
//! A scan stops at the first invalid record: a torn append, if nothing valid follows.
#![deny(clippy::indexing_slicing)]

use super::batch::MAX_STREAM_ID_LEN;
use super::header::{self, CRC_OFFSET, Frame, Malformed};
use super::{align8, crc, le_u16, le_u32, le_u64, put_u16, put_u32, put_u64};

pub(crate) const MAGIC: &[u8; 8] = b"STRATTMB";
pub(crate) use super::header::HEADER_LEN;
pub(crate) const FILE_NAME: &str = "tombstones";
const RECORD_FIXED: usize = 24;
/// Shortest record: a one-byte stream id, padded.
pub(crate) const MIN_RECORD: usize = align8(RECORD_FIXED + 1);
pub(crate) const MAX_RECORD: usize = align8(RECORD_FIXED + MAX_STREAM_ID_LEN);

/// A deleted stream as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tombstone {
    pub stream: String,
    pub deleted_at: u64,
}

/// The tombstone file's header frame.
const FRAME: Frame =
    Frame { magic: MAGIC, what: "tombstone file", reserved: 16..CRC_OFFSET, newest: super::BASE_VERSION };

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

/// Encodes a record (the stream id has been checked by the caller).
pub(crate) fn encode(t: &Tombstone) -> Vec<u8> {
    let len = align8(RECORD_FIXED + t.stream.len());
    let mut r = vec![0u8; len];
    put_u32(&mut r, 4, len as u32);
    put_u64(&mut r, 8, t.deleted_at);
    put_u16(&mut r, 16, t.stream.len() as u16);
    if let Some(s) = r.get_mut(RECORD_FIXED..RECORD_FIXED + t.stream.len()) {
        s.copy_from_slice(t.stream.as_bytes());
    }
    let sum = r.get(4..).map(crc).unwrap_or(0);
    put_u32(&mut r, 0, sum);
    r
}

/// Decodes the record at the start of `bytes`, and its length.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Tombstone, usize), String> {
    let len = le_u32(bytes, 4).ok_or("record header cut short")? as usize;
    if len < MIN_RECORD || !len.is_multiple_of(8) || len > MAX_RECORD {
        return Err(format!("impossible tombstone record length {len}"));
    }
    let r = bytes.get(..len).ok_or_else(|| format!("record claims {len} bytes, {} are left", bytes.len()))?;
    if r.get(4..).map(crc) != le_u32(r, 0) {
        return Err("tombstone record checksum mismatch".into());
    }
    let stream_len = le_u16(r, 16).unwrap_or(0) as usize;
    if stream_len == 0 || stream_len > MAX_STREAM_ID_LEN || align8(RECORD_FIXED + stream_len) != len {
        return Err("tombstone record length does not fit its stream id".into());
    }
    if r.get(18..24).is_none_or(|b| b.iter().any(|&x| x != 0))
        || r.get(RECORD_FIXED + stream_len..).is_none_or(|b| b.iter().any(|&x| x != 0))
    {
        return Err("reserved tombstone record bytes are not zero".into());
    }
    let stream = r
        .get(RECORD_FIXED..RECORD_FIXED + stream_len)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or("tombstone stream id is not UTF-8")?;
    Ok((Tombstone { stream: stream.to_owned(), deleted_at: le_u64(r, 8).unwrap_or(0) }, len))
}

/// Scans a whole file: the records, and where valid data ends (with why, if before the end).
pub(crate) fn scan(bytes: &[u8]) -> Result<(Vec<Tombstone>, usize, Option<String>), Malformed> {
    check_header(bytes)?;
    let mut at = HEADER_LEN;
    let mut out = Vec::new();
    while at < bytes.len() {
        match decode(bytes.get(at..).unwrap_or(&[])) {
            Ok((t, len)) => {
                out.push(t);
                at += len;
            }
            Err(why) => return Ok((out, at, Some(why))),
        }
    }
    Ok((out, at, None))
}
