//! A projection's dead-letter queue: `projections/<name>/dlq`, append-only.
//!
//! Header (64 bytes): magic `b"STRATDLQ"`, version (u32) at 8, 48 reserved zero bytes from 12,
//! CRC-32 of bytes [0, 60) at 60.
//!
//! Then records, each 8-byte aligned:
//!
//! ```text
//! 0   4  crc         CRC-32 of bytes [4, len)
//! 4   4  len         total length, padding included
//! 8   1  kind        1 = dead letter, 2 = resolution
//! 9   7  reserved    zeros
//! 16  8  id          the dead letter's id (1, 2, 3, ... in the order they were added)
//! 24  8  time        when (ns since the Unix epoch)
//! ```
//!
//! A dead letter (kind 1) goes on:
//!
//! ```text
//! 32  4  partition
//! 36  4  attempts      how many times the handler failed on it (0: its stream was parked)
//! 40  8  position
//! 48  8  version
//! 56  2  stream_len    1..=MAX_STREAM_ID_LEN
//! 58  2  reserved      zeros
//! 60  4  error_len     <= MAX_ERROR_LEN
//! 64  .. stream id, error text (UTF-8), zero padding
//! ```
//!
//! A resolution (kind 2) goes on with `outcome` (u8 at 32: 1 = replayed, 2 = discarded) and
//! 7 reserved zero bytes: 40 bytes in all. A scan stops at the first invalid record (a torn
//! append): the records before it are the queue.
#![deny(clippy::indexing_slicing)]

use super::batch::MAX_STREAM_ID_LEN;
use super::header::{self, CRC_OFFSET, Frame, Malformed};
use super::records::Scanned;
use super::{align8, crc, le_u16, le_u32, le_u64, put_u16, put_u32, put_u64};

pub(crate) const MAGIC: &[u8; 8] = b"STRATDLQ";
pub(crate) use super::header::HEADER_LEN;
pub(crate) const FILE_NAME: &str = "dlq";
/// Longest error text kept (longer ones are cut at a character boundary).
pub(crate) const MAX_ERROR_LEN: usize = 4096;
const LETTER_HEADER: usize = 64;
const RESOLUTION_LEN: usize = 40;
/// Shortest record (a resolution).
pub(crate) const MIN_RECORD: usize = RESOLUTION_LEN;
const KIND_LETTER: u8 = 1;
const KIND_RESOLUTION: u8 = 2;
pub(crate) const MAX_RECORD: usize = align8(LETTER_HEADER + MAX_STREAM_ID_LEN + MAX_ERROR_LEN);

/// A dead letter as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Letter {
    pub id: u64,
    pub time: u64,
    pub partition: u32,
    pub attempts: u32,
    pub position: u64,
    pub version: u64,
    pub stream: String,
    pub error: String,
}

/// How a dead letter left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Replayed = 1,
    Discarded = 2,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Letter(Letter),
    Resolution { id: u64, time: u64, outcome: Outcome },
}

/// The dead-letter queue's header frame.
const FRAME: Frame =
    Frame { magic: MAGIC, what: "dead-letter queue", reserved: 12..CRC_OFFSET, newest: super::BASE_VERSION };

pub(crate) fn encode_header() -> [u8; HEADER_LEN] {
    let mut h = header::begin(MAGIC);
    header::seal(&mut h);
    h
}

pub(crate) fn check_header(bytes: &[u8]) -> Result<(), Malformed> {
    header::check(bytes, &FRAME).map(|_| ())
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

fn finish(mut r: Vec<u8>) -> Vec<u8> {
    let len = r.len() as u32;
    put_u32(&mut r, 4, len);
    let sum = r.get(4..).map(crc).unwrap_or(0);
    put_u32(&mut r, 0, sum);
    r
}

/// Encodes a dead letter (the stream id was checked when its event was written).
pub(crate) fn encode_letter(l: &Letter) -> Vec<u8> {
    let error = cut(&l.error, MAX_ERROR_LEN);
    let mut r = vec![0u8; align8(LETTER_HEADER + l.stream.len() + error.len())];
    if let Some(k) = r.get_mut(8) {
        *k = KIND_LETTER;
    }
    put_u64(&mut r, 16, l.id);
    put_u64(&mut r, 24, l.time);
    put_u32(&mut r, 32, l.partition);
    put_u32(&mut r, 36, l.attempts);
    put_u64(&mut r, 40, l.position);
    put_u64(&mut r, 48, l.version);
    put_u16(&mut r, 56, l.stream.len() as u16);
    put_u32(&mut r, 60, error.len() as u32);
    let s_end = LETTER_HEADER + l.stream.len();
    if let Some(b) = r.get_mut(LETTER_HEADER..s_end) {
        b.copy_from_slice(l.stream.as_bytes());
    }
    if let Some(b) = r.get_mut(s_end..s_end + error.len()) {
        b.copy_from_slice(error.as_bytes());
    }
    finish(r)
}

pub(crate) fn encode_resolution(id: u64, time: u64, outcome: Outcome) -> Vec<u8> {
    let mut r = vec![0u8; RESOLUTION_LEN];
    if let Some(k) = r.get_mut(8) {
        *k = KIND_RESOLUTION;
    }
    put_u64(&mut r, 16, id);
    put_u64(&mut r, 24, time);
    if let Some(o) = r.get_mut(32) {
        *o = outcome as u8;
    }
    finish(r)
}

/// Decodes the record at the start of `bytes`; returns it and its length.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Record, usize), String> {
    let len = le_u32(bytes, 4).ok_or("record header cut short")? as usize;
    if len < RESOLUTION_LEN || !len.is_multiple_of(8) || len > MAX_RECORD {
        return Err(format!("impossible record length {len}"));
    }
    let r = bytes.get(..len).ok_or_else(|| format!("record claims {len} bytes, {} are left", bytes.len()))?;
    if r.get(4..).map(crc) != le_u32(r, 0) {
        return Err("dead-letter record checksum mismatch".into());
    }
    if r.get(9..16).is_none_or(|b| b.iter().any(|&x| x != 0)) {
        return Err("reserved dead-letter record bytes are not zero".into());
    }
    let id = le_u64(r, 16).unwrap_or(0);
    let time = le_u64(r, 24).unwrap_or(0);
    match r.get(8).copied() {
        Some(KIND_RESOLUTION) => {
            let outcome = match r.get(32) {
                Some(1) => Outcome::Replayed,
                Some(2) => Outcome::Discarded,
                other => return Err(format!("unknown resolution outcome {other:?}")),
            };
            if len != RESOLUTION_LEN || r.get(33..).is_none_or(|b| b.iter().any(|&x| x != 0)) {
                return Err("malformed resolution record".into());
            }
            Ok((Record::Resolution { id, time, outcome }, len))
        }
        Some(KIND_LETTER) => {
            let stream_len = le_u16(r, 56).unwrap_or(0) as usize;
            let error_len = le_u32(r, 60).unwrap_or(u32::MAX) as usize;
            if stream_len == 0 || stream_len > MAX_STREAM_ID_LEN || error_len > MAX_ERROR_LEN {
                return Err("impossible dead-letter field lengths".into());
            }
            if le_u16(r, 58) != Some(0) {
                return Err("reserved dead-letter bytes are not zero".into());
            }
            let s_end = LETTER_HEADER + stream_len;
            let e_end = s_end + error_len;
            if align8(e_end) != len || r.get(e_end..).is_none_or(|p| p.iter().any(|&x| x != 0)) {
                return Err("dead-letter length does not fit its fields".into());
            }
            let stream = r.get(LETTER_HEADER..s_end).and_then(|b| std::str::from_utf8(b).ok()).ok_or("stream id")?;
            let error = r.get(s_end..e_end).and_then(|b| std::str::from_utf8(b).ok()).ok_or("error text")?;
            Ok((
                Record::Letter(Letter {
                    id,
                    time,
                    partition: le_u32(r, 32).unwrap_or(0),
                    attempts: le_u32(r, 36).unwrap_or(0),
                    position: le_u64(r, 40).unwrap_or(0),
                    version: le_u64(r, 48).unwrap_or(0),
                    stream: stream.to_owned(),
                    error: error.to_owned(),
                }),
                len,
            ))
        }
        other => Err(format!("unknown dead-letter record kind {other:?}")),
    }
}

/// Scans a whole file: the records with their offsets, and where valid data ends (with why,
/// if before the end).
pub(crate) fn scan(bytes: &[u8]) -> Result<Scanned<(usize, Record)>, Malformed> {
    check_header(bytes)?;
    let mut at = HEADER_LEN;
    let mut out = Vec::new();
    while at < bytes.len() {
        match decode(bytes.get(at..).unwrap_or(&[])) {
            Ok((r, len)) => {
                out.push((at, r));
                at += len;
            }
            Err(why) => return Ok((out, at, Some(why))),
        }
    }
    Ok((out, at, None))
}
