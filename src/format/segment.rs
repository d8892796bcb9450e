//! Segment files: a header, then batches back to back, then (possibly) zeros.
//!
//! Header (64 bytes):
//!
//! ```text
//! 0   8  magic          b"STRATSEG"
//! 8   4  version        FORMAT_VERSION
//! 12  4  partition
//! 16  8  base_position  position of the first event in the segment (also the file name)
//! 24  8  created        nanoseconds since the Unix epoch
//! 32  28 reserved       zeros
//! 60  4  crc            CRC-32 of bytes [0, 60)
//! ```
//!
//! The scanner here is the one place that decides what bytes of a segment are valid data,
//! used by recovery on open, by index rebuilds and by the fuzzers.
#![deny(clippy::indexing_slicing)]

use super::batch::{self, Bad, BatchView};
use super::header::{self, CRC_OFFSET, Frame, Malformed};
use super::{le_u32, le_u64, put_u32, put_u64};

pub(crate) const MAGIC: &[u8; 8] = b"STRATSEG";
pub(crate) use super::header::HEADER_LEN;
const PARTITION_OFFSET: usize = 12;
const BASE_POSITION_OFFSET: usize = 16;
const CREATED_OFFSET: usize = 24;

/// File name of the segment whose first position is `base`.
pub(crate) fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// The segment header's frame.
const FRAME: Frame = Frame { magic: MAGIC, what: "segment", reserved: 32..CRC_OFFSET, newest: super::BASE_VERSION };

/// Encodes a segment header.
pub(crate) fn encode_header(partition: u32, base_position: u64, created: u64) -> [u8; HEADER_LEN] {
    let mut h = header::begin(MAGIC);
    put_u32(&mut h, PARTITION_OFFSET, partition);
    put_u64(&mut h, BASE_POSITION_OFFSET, base_position);
    put_u64(&mut h, CREATED_OFFSET, created);
    header::seal(&mut h);
    h
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub partition: u32,
    pub base_position: u64,
    pub created: u64,
}

/// Decodes and checks a segment header.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<Header, Malformed> {
    let h = header::check(bytes, &FRAME)?;
    Ok(Header {
        partition: le_u32(h, PARTITION_OFFSET).unwrap_or(0),
        base_position: le_u64(h, BASE_POSITION_OFFSET).unwrap_or(0),
        created: le_u64(h, CREATED_OFFSET).unwrap_or(0),
    })
}

/// How strictly to treat damage after the last valid batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The active (last) segment: an incomplete or damaged last write is a torn tail.
    Active,
    /// A sealed segment: it was made durable before its successor was created, so anything
    /// but zeros after the last valid batch is corruption.
    Sealed,
}

/// How the valid data of a segment ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// Valid batches up to `data_end`, then nothing or only zeros.
    Clean { data_end: u64 },
    /// Valid batches up to `data_end`, then bytes of a write that never became durable.
    TornTail { data_end: u64, reason: String },
}

impl End {
    pub fn data_end(&self) -> u64 {
        match self {
            End::Clean { data_end } | End::TornTail { data_end, .. } => *data_end,
        }
    }
}

/// Damage the scanner will not repair: the byte offset (within the segment) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanError {
    pub offset: u64,
    pub reason: String,
}

/// Scans the batches of a whole segment file (header included), calling `visit` with each
/// valid batch and its offset, in order.
///
/// Batches must continue positions without a gap from the header's base position. At the
/// first offset `x` that is not a valid batch:
/// - if everything from `x` on is zero, the data simply ends there;
/// - if a later valid batch says the data at `x` was already durable when it was written
///   (its `synced_offset` is past `x`), the damage is in durable data: an error;
/// - otherwise the bytes from `x` on are a torn tail in [`Mode::Active`], an error in
///   [`Mode::Sealed`].
pub(crate) fn scan(
    bytes: &[u8],
    header: &Header,
    mode: Mode,
    visit: impl FnMut(u64, &BatchView<'_>),
) -> Result<End, ScanError> {
    scan_from(bytes, HEADER_LEN, header.base_position, mode, visit)
}

/// [`scan`] from the batch boundary `start`, where position `next_position` begins: the data
/// before it is known (from the segment's active index, FORMAT.md §8.4).
pub(crate) fn scan_from(
    bytes: &[u8],
    start: usize,
    next_position: u64,
    mode: Mode,
    mut visit: impl FnMut(u64, &BatchView<'_>),
) -> Result<End, ScanError> {
    let mut off = start;
    let mut next_position = next_position;
    // The batches of an atomic unit not yet closed (FORMAT.md §7.6): visited only once the
    // unit's last batch is found, and dropped with it otherwise.
    let mut unit: Vec<(u64, BatchView<'_>)> = Vec::new();
    let (stop, reason) = loop {
        let Some(rest) = bytes.get(off..) else {
            break (off, String::new());
        };
        if rest.is_empty() {
            break (off, String::new());
        }
        match batch::decode(rest) {
            Ok(b) if b.base_position == next_position && b.synced_offset <= off as u64 => {
                next_position = b.end_position();
                let at = off as u64;
                off += b.length;
                if b.continues {
                    unit.push((at, b));
                    continue;
                }
                for (o, u) in unit.drain(..) {
                    visit(o, &u);
                }
                visit(at, &b);
            }
            Ok(b) if b.base_position != next_position => {
                break (
                    off,
                    format!("batch starts at position {} where {next_position} was expected", b.base_position),
                );
            }
            Ok(b) => break (off, format!("batch claims a sync mark {} past its own offset", b.synced_offset)),
            Err(Bad::Zero) => break (off, Bad::Zero.to_string()),
            Err(bad) => break (off, bad.to_string()),
        }
    };
    let tail = bytes.get(stop..).unwrap_or(&[]);
    if let Some(&(unit_start, _)) = unit.first() {
        // The data ends inside an atomic unit: its last batch was never written whole, so the
        // group holding it was never acknowledged. Unless a later batch proves the damage
        // durable (below), the unit goes with the torn tail.
        if let Ok(Some(later)) = later_durable_batch(bytes, stop, next_position) {
            return Err(ScanError {
                offset: stop as u64,
                reason: format!(
                    "atomic unit from byte {unit_start} is not closed, yet the batch at byte {later} was written after it was durable"
                ),
            });
        }
        let reason = if reason.is_empty() { "end of data".to_owned() } else { reason };
        let reason = format!("atomic unit from byte {unit_start} not closed before byte {stop} ({reason})");
        return match mode {
            Mode::Active => Ok(End::TornTail { data_end: unit_start, reason }),
            Mode::Sealed => Err(ScanError { offset: unit_start, reason: format!("{reason} (in a sealed segment)") }),
        };
    }
    if tail.iter().all(|&b| b == 0) {
        return Ok(End::Clean { data_end: stop as u64 });
    }
    match later_durable_batch(bytes, stop, next_position) {
        Ok(None) => {}
        Ok(Some(later)) => {
            return Err(ScanError {
                offset: stop as u64,
                reason: format!(
                    "{reason}; the batch at byte {later} was written after this data was durable, so this is not a torn write"
                ),
            });
        }
        Err(gave_up) => {
            return Err(ScanError {
                offset: stop as u64,
                reason: format!(
                    "{reason}; the bytes after it (searched up to byte {gave_up}) do not look like a torn write"
                ),
            });
        }
    }
    match mode {
        Mode::Active => Ok(End::TornTail { data_end: stop as u64, reason }),
        Mode::Sealed => Err(ScanError { offset: stop as u64, reason: format!("{reason} (in a sealed segment)") }),
    }
}

/// Looks for a valid batch after `stop` whose sync mark is past `stop`: proof that the bytes
/// at `stop` had been made durable before, so their damage is not a torn write.
///
/// Only candidates whose sync mark lies in `(stop, candidate]` and whose positions continue
/// after `next_position` are checksummed, and the checksumming is bounded (a crafted tail
/// cannot make open quadratic): past the budget the damage is reported, never truncated.
fn later_durable_batch(bytes: &[u8], stop: usize, next_position: u64) -> Result<Option<usize>, usize> {
    let mut budget = (bytes.len() as u64).saturating_mul(4).max(1 << 20);
    let mut cand = stop + 8;
    while cand + batch::HEADER_LEN <= bytes.len() {
        let synced = le_u64(bytes, cand + batch::SYNCED_OFFSET_OFFSET).unwrap_or(0);
        let base = le_u64(bytes, cand + batch::BASE_POSITION_OFFSET).unwrap_or(0);
        let len = batch::claimed_length(bytes.get(cand..).unwrap_or(&[])).unwrap_or(0);
        if synced > stop as u64 && synced <= cand as u64 && base >= next_position && cand + len <= bytes.len() {
            budget = match budget.checked_sub(len as u64) {
                Some(b) => b,
                None => return Err(cand),
            };
            if bytes.get(cand..).is_some_and(|rest| batch::decode(rest).is_ok()) {
                return Ok(Some(cand));
            }
        }
        cand += 8;
    }
    Ok(None)
}
