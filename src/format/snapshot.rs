//! The snapshot sidecar: one append-only file per partition (`snapshots.snap`) holding
//! snapshots of the partition's streams. Superseded records are dropped by rewriting the file.
//!
//! Header (64 bytes):
//!
//! ```text
//! 0   8  magic      b"STRATSNP"
//! 8   4  version    FORMAT_VERSION
//! 12  4  partition
//! 16  8  created    nanoseconds since the Unix epoch (of this file: a rewrite makes a new one)
//! 24  8  rewrites   how many rewrites produced this file (0 for the first one)
//! 32  28 reserved   zeros
//! 60  4  crc        CRC-32 of bytes [0, 60)
//! ```
//!
//! Then records back to back, each 8-byte aligned, then (after a crash) possibly an incomplete
//! record. A record:
//!
//! ```text
//! 0   4  crc             CRC-32 of bytes [4, len)
//! 4   4  len             total length: header, stream id, state, zero padding to 8
//! 8   8  version         the stream version the state covers (events 0..=version)
//! 16  8  position        partition position of the event at `version`
//! 24  8  event_time      timestamp (ns) of the event at `version`
//! 32  8  written         when the snapshot was taken (ns)
//! 40  4  schema          the aggregate's schema tag for `state`
//! 44  2  stream_id_len   1..=MAX_STREAM_ID_LEN
//! 46  1  kind            1 = snapshot
//! 47  1  flags           bit 0 = REPLACES; the other bits are zero
//! 48  4  state_len       <= MAX_SNAPSHOT_BYTES
//! 52  4  aggregate       CRC-32 of the aggregate type's name (`Aggregate::name`): a
//!                          snapshot is only offered to the type that took it
//! 56  .. stream id (UTF-8), state, zero padding (< 8 bytes)
//! ```
//!
//! Of a stream's records, the latest is the one with the highest version (a later record
//! wins a tie only under another schema tag), except that a record flagged REPLACES supersedes
//! every earlier record of its stream, whatever their versions: it is written when a load
//! found the latest snapshot unusable (stale, unreadable) and rebuilt the state by replay.
//!
//! `position` and `event_time` pin the exact event the snapshot was taken after, so a snapshot
//! that outlived its events (lost in a crash under buffered durability, or a log restored
//! from an older backup) is recognised as stale instead of being trusted.
#![deny(clippy::indexing_slicing)]

use std::io::Read;

use super::batch::MAX_STREAM_ID_LEN;
use super::header::{self, CRC_OFFSET, Frame, Malformed};
use super::{align8, crc, le_u16, le_u32, le_u64, put_u16, put_u32, put_u64};

pub(crate) const MAGIC: &[u8; 8] = b"STRATSNP";
pub(crate) use super::header::HEADER_LEN;
pub(crate) const FILE_NAME: &str = "snapshots.snap";
/// Length of a record's fixed header.
pub(crate) const RECORD_HEADER_LEN: usize = 56;
const KIND_SNAPSHOT: u8 = 1;
const FLAG_REPLACES: u8 = 1;
/// Largest snapshot state, in bytes.
pub const MAX_SNAPSHOT_BYTES: usize = 64 << 20;
/// Longest possible record.
pub(crate) const MAX_RECORD_LEN: usize = align8(RECORD_HEADER_LEN + MAX_STREAM_ID_LEN + MAX_SNAPSHOT_BYTES);

/// A decoded sidecar header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub partition: u32,
    pub created: u64,
    pub rewrites: u64,
}

/// The sidecar header's frame.
const FRAME: Frame =
    Frame { magic: MAGIC, what: "snapshot sidecar", reserved: 32..CRC_OFFSET, newest: super::BASE_VERSION };

pub(crate) fn encode_header(h: &Header) -> [u8; HEADER_LEN] {
    let mut b = header::begin(MAGIC);
    put_u32(&mut b, 12, h.partition);
    put_u64(&mut b, 16, h.created);
    put_u64(&mut b, 24, h.rewrites);
    header::seal(&mut b);
    b
}

pub(crate) fn decode_header(bytes: &[u8]) -> Result<Header, Malformed> {
    let h = header::check(bytes, &FRAME)?;
    Ok(Header {
        partition: le_u32(h, 12).unwrap_or(0),
        created: le_u64(h, 16).unwrap_or(0),
        rewrites: le_u64(h, 24).unwrap_or(0),
    })
}

/// The fields of a snapshot record other than its stream id and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub version: u64,
    pub position: u64,
    pub event_time: u64,
    pub written: u64,
    pub schema: u32,
    /// Supersedes every earlier record of the stream, whatever its version.
    pub replaces: bool,
    /// Which aggregate type took the snapshot (CRC-32 of its type name).
    pub aggregate: u32,
}

/// Encodes one record. The caller has checked the stream id and the state's size.
pub(crate) fn encode_record(stream: &str, meta: &Meta, state: &[u8]) -> Vec<u8> {
    let len = align8(RECORD_HEADER_LEN + stream.len() + state.len());
    let mut r = vec![0u8; len];
    put_u32(&mut r, 4, len as u32);
    put_u64(&mut r, 8, meta.version);
    put_u64(&mut r, 16, meta.position);
    put_u64(&mut r, 24, meta.event_time);
    put_u64(&mut r, 32, meta.written);
    put_u32(&mut r, 40, meta.schema);
    put_u16(&mut r, 44, stream.len() as u16);
    if let Some(k) = r.get_mut(46) {
        *k = KIND_SNAPSHOT;
    }
    if let Some(f) = r.get_mut(47) {
        *f = if meta.replaces { FLAG_REPLACES } else { 0 };
    }
    put_u32(&mut r, 48, state.len() as u32);
    put_u32(&mut r, 52, meta.aggregate);
    let id_end = RECORD_HEADER_LEN + stream.len();
    if let Some(b) = r.get_mut(RECORD_HEADER_LEN..id_end) {
        b.copy_from_slice(stream.as_bytes());
    }
    if let Some(b) = r.get_mut(id_end..id_end + state.len()) {
        b.copy_from_slice(state);
    }
    let sum = r.get(4..).map(crc).unwrap_or(0);
    put_u32(&mut r, 0, sum);
    r
}

/// A decoded record, borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordView<'a> {
    pub stream: &'a str,
    pub meta: Meta,
    pub state: &'a [u8],
    pub len: usize,
}

/// The length a record claims, from its first 8 bytes (`None` if they are not all there).
pub(crate) fn claimed_len(bytes: &[u8]) -> Option<usize> {
    le_u32(bytes, 4).map(|l| l as usize)
}

/// Checks the claimed length of a record: a multiple of 8, between the header and the longest
/// possible record.
pub(crate) fn plausible_len(len: usize) -> Result<(), String> {
    if len < RECORD_HEADER_LEN + 8 || !len.is_multiple_of(8) || len > MAX_RECORD_LEN {
        return Err(format!("impossible snapshot record length {len}"));
    }
    Ok(())
}

/// Decodes and checks one whole record (`bytes` is exactly its claimed length).
pub(crate) fn decode_record(bytes: &[u8]) -> Result<RecordView<'_>, String> {
    let len = claimed_len(bytes).ok_or("record header cut short")?;
    plausible_len(len)?;
    if bytes.len() != len {
        return Err(format!("record claims {len} bytes, {} are there", bytes.len()));
    }
    let stored = le_u32(bytes, 0).unwrap_or(0);
    if bytes.get(4..).map(crc) != Some(stored) {
        return Err("snapshot record checksum mismatch".into());
    }
    if bytes.get(46) != Some(&KIND_SNAPSHOT) {
        return Err(format!("unknown snapshot record kind {:?}", bytes.get(46)));
    }
    let flags = bytes.get(47).copied().unwrap_or(u8::MAX);
    if flags & !FLAG_REPLACES != 0 {
        return Err("reserved snapshot record flags are not zero".into());
    }
    let id_len = le_u16(bytes, 44).unwrap_or(0) as usize;
    if id_len == 0 || id_len > MAX_STREAM_ID_LEN {
        return Err(format!("impossible stream id length {id_len}"));
    }
    let state_len = le_u32(bytes, 48).unwrap_or(u32::MAX) as usize;
    if state_len > MAX_SNAPSHOT_BYTES {
        return Err(format!("impossible state length {state_len}"));
    }
    let id_end = RECORD_HEADER_LEN + id_len;
    let state_end = id_end + state_len;
    if align8(state_end) != len {
        return Err(format!("record length {len} does not fit a {id_len}-byte id and {state_len}-byte state"));
    }
    if bytes.get(state_end..).is_none_or(|pad| pad.iter().any(|&b| b != 0)) {
        return Err("record padding is not zero".into());
    }
    let stream = bytes
        .get(RECORD_HEADER_LEN..id_end)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or("stream id is not UTF-8")?;
    if stream.as_bytes().contains(&0) {
        return Err("stream id holds a NUL byte".into());
    }
    Ok(RecordView {
        stream,
        meta: Meta {
            version: le_u64(bytes, 8).unwrap_or(0),
            position: le_u64(bytes, 16).unwrap_or(0),
            event_time: le_u64(bytes, 24).unwrap_or(0),
            written: le_u64(bytes, 32).unwrap_or(0),
            schema: le_u32(bytes, 40).unwrap_or(0),
            replaces: flags & FLAG_REPLACES != 0,
            aggregate: le_u32(bytes, 52).unwrap_or(0),
        },
        state: bytes.get(id_end..state_end).unwrap_or(&[]),
        len,
    })
}

/// How a scan of a sidecar ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Valid records up to `data_end`, then nothing.
    Clean { data_end: u64 },
    /// Valid records up to `data_end`, then bytes that are not a valid record (a torn write
    /// or damage): the records from there on cannot be trusted.
    Damaged { data_end: u64, reason: String },
}

/// Reads records from `r` (positioned just after the header; `file_len` is the whole file's
/// length) and calls `f(offset, record)` for each valid one, in file order, until the end or
/// the first invalid bytes. Memory use is bounded by one record, whose claimed length is
/// checked against the bytes left before anything is allocated for it.
pub(crate) fn scan(
    r: &mut impl Read,
    file_len: u64,
    mut f: impl FnMut(u64, &RecordView<'_>),
) -> std::io::Result<ScanEnd> {
    let mut offset = HEADER_LEN as u64;
    let mut buf = Vec::new();
    loop {
        let left = file_len.saturating_sub(offset);
        if left == 0 {
            return Ok(ScanEnd::Clean { data_end: offset });
        }
        let damaged = |reason: String| Ok(ScanEnd::Damaged { data_end: offset, reason });
        if left < 8 {
            return damaged(format!("{left} bytes after the last record"));
        }
        let mut head = [0u8; 8];
        r.read_exact(&mut head)?;
        let len = claimed_len(&head).unwrap_or(0);
        if let Err(why) = plausible_len(len) {
            return damaged(why);
        }
        if len as u64 > left {
            return damaged(format!("record claims {len} bytes, only {left} are left"));
        }
        buf.clear();
        buf.extend_from_slice(&head);
        buf.resize(len, 0);
        r.read_exact(buf.get_mut(8..).unwrap_or(&mut []))?;
        match decode_record(&buf) {
            Ok(rec) => f(offset, &rec),
            Err(why) => return damaged(why),
        }
        offset += len as u64;
    }
}
