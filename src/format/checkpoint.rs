//! Projection checkpoints: one file per projection (`projections/<name>/checkpoints`), holding
//! for each partition the next position the projection will handle.
//!
//! Header (64 bytes):
//!
//! ```text
//! 0   8  magic            b"STRATCKP"
//! 8   4  version          FORMAT_VERSION
//! 12  4  partition_count  number of partitions covered (one pair of slots each)
//! 16  8  created          nanoseconds since the Unix epoch
//! 24  36 reserved         zeros
//! 60  4  crc              CRC-32 of bytes [0, 60)
//! ```
//!
//! Then, for partition `p`, two 32-byte slots at `64 + 64 * p` and `64 + 64 * p + 32`:
//!
//! ```text
//! 0   4  crc        CRC-32 of the partition number (u32 LE) followed by bytes [4, 32)
//! 4   4  reserved   zeros
//! 8   8  seq        how many times this partition's checkpoint was written (>= 1)
//! 16  8  position   the next position to handle
//! 24  8  time       timestamp (ns) of the last event handled (0: none yet)
//! ```
//!
//! A write goes to slot `seq % 2` and is made durable (`fdatasync`) before the next one, so a
//! torn write damages only the slot being written: reading takes the valid slot with the higher
//! `seq`. Two all-zero slots mean "never written": position 0.
//!
//! When the store's partition count grows while a projection runs, its file is extended in
//! place: first to the new length with zeros (`set_len`, `fdatasync`), then the header's
//! `partition_count` is rewritten (`fdatasync`), and only then are the new partitions' slots
//! written. A crash between the two steps leaves a file longer than its header says, all zeros
//! past the header's slots: it is read with those partitions "never written". Any other length
//! mismatch, or non-zero bytes past the header's slots, is damage.
#![deny(clippy::indexing_slicing)]

use super::header::{self, CRC_OFFSET, Frame, Malformed};
use super::{le_u32, le_u64, put_u32, put_u64};

pub(crate) const MAGIC: &[u8; 8] = b"STRATCKP";
pub(crate) use super::header::HEADER_LEN;
pub(crate) const SLOT_LEN: usize = 32;
pub(crate) const FILE_NAME: &str = "checkpoints";

/// A checkpoint: where a projection resumes in one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub seq: u64,
    pub position: u64,
    pub time: u64,
}

/// Byte offset of slot `slot` (0 or 1) of `partition`.
pub(crate) fn slot_offset(partition: u32, slot: u64) -> u64 {
    HEADER_LEN as u64 + u64::from(partition) * 2 * SLOT_LEN as u64 + (slot % 2) * SLOT_LEN as u64
}

/// Length of a checkpoint file for `partitions` partitions.
pub(crate) fn file_len(partitions: u32) -> usize {
    HEADER_LEN + partitions as usize * 2 * SLOT_LEN
}

/// The checkpoint file's header frame.
const FRAME: Frame =
    Frame { magic: MAGIC, what: "checkpoint file", reserved: 24..CRC_OFFSET, newest: super::BASE_VERSION };

/// The header of a file covering `partitions`.
pub(crate) fn encode_header(partitions: u32, created: u64) -> [u8; HEADER_LEN] {
    let mut b = header::begin(MAGIC);
    put_u32(&mut b, 12, partitions);
    put_u64(&mut b, 16, created);
    header::seal(&mut b);
    b
}

/// The partition count and creation time a header gives (unchecked), if `bytes` hold one.
pub(crate) fn header_fields(bytes: &[u8]) -> Option<(u32, u64)> {
    Some((le_u32(bytes, 12)?, le_u64(bytes, 16)?))
}

/// A new file: the header, every slot zero.
pub(crate) fn encode_file(partitions: u32, created: u64, initial: &[Checkpoint]) -> Vec<u8> {
    let mut b = vec![0u8; file_len(partitions)];
    if let Some(h) = b.get_mut(..HEADER_LEN) {
        h.copy_from_slice(&encode_header(partitions, created));
    }
    for (p, c) in initial.iter().enumerate().take(partitions as usize) {
        if c.seq > 0 {
            let at = slot_offset(p as u32, c.seq) as usize;
            if let Some(s) = b.get_mut(at..at + SLOT_LEN) {
                s.copy_from_slice(&encode_slot(p as u32, c));
            }
        }
    }
    b
}

fn slot_crc(partition: u32, slot: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&partition.to_le_bytes());
    h.update(slot.get(4..).unwrap_or(&[]));
    h.finalize()
}

pub(crate) fn encode_slot(partition: u32, c: &Checkpoint) -> [u8; SLOT_LEN] {
    let mut s = [0u8; SLOT_LEN];
    put_u64(&mut s, 8, c.seq);
    put_u64(&mut s, 16, c.position);
    put_u64(&mut s, 24, c.time);
    let sum = slot_crc(partition, &s);
    put_u32(&mut s, 0, sum);
    s
}

/// Decodes a checkpoint file: one checkpoint per partition it covers.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<Checkpoint>, Malformed> {
    decode_noting(bytes, &mut Vec::new())
}

/// [`decode`], adding to `ignored` each damaged slot it read past (a torn write of that slot:
/// the partition's other slot, or "never written", stands; the slot is overwritten by the
/// partition's next checkpoint).
pub(crate) fn decode_noting(bytes: &[u8], ignored: &mut Vec<Malformed>) -> Result<Vec<Checkpoint>, Malformed> {
    let h = header::check(bytes, &FRAME)?;
    let header_partitions = le_u32(h, 12).unwrap_or(0);
    if bytes.len() < file_len(header_partitions) {
        return Err(Malformed::damaged(
            0,
            format!("{} bytes, but {header_partitions} partitions need {}", bytes.len(), file_len(header_partitions)),
        ));
    }
    // An extension for a grown store, interrupted before the header was rewritten: only
    // zeros, in whole slot pairs, past the header's slots (see the module doc).
    let extra = bytes.get(file_len(header_partitions)..).unwrap_or(&[]);
    if extra.len() % (2 * SLOT_LEN) != 0 || extra.iter().any(|&b| b != 0) {
        return Err(Malformed::damaged(
            file_len(header_partitions) as u64,
            format!("{} bytes past the slots of the {header_partitions} partitions the header covers", extra.len()),
        ));
    }
    let partitions = header_partitions + (extra.len() / (2 * SLOT_LEN)) as u32;
    let mut out = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let mut best: Option<Checkpoint> = None;
        let mut zero = 0;
        let mut bad = None;
        for slot in 0..2 {
            let at = slot_offset(p, slot);
            let s = bytes.get(at as usize..at as usize + SLOT_LEN).unwrap_or(&[]);
            if s.iter().all(|&b| b == 0) {
                zero += 1;
                continue;
            }
            let valid = le_u32(s, 0) == Some(slot_crc(p, s)) && le_u32(s, 4) == Some(0);
            let c = Checkpoint {
                seq: le_u64(s, 8).unwrap_or(0),
                position: le_u64(s, 16).unwrap_or(0),
                time: le_u64(s, 24).unwrap_or(0),
            };
            if !valid || c.seq == 0 || c.seq % 2 != slot {
                bad = Some(Malformed::damaged(at, format!("checkpoint slot {slot} of partition {p} is damaged")));
                continue;
            }
            if best.is_none_or(|b| c.seq > b.seq) {
                best = Some(c);
            }
        }
        match (best, bad) {
            (Some(c), bad) => {
                ignored.extend(bad);
                out.push(c);
            }
            (None, None) if zero == 2 => out.push(Checkpoint::default()),
            // The first write (seq 1) torn: it was never durable, so nothing was checkpointed.
            (None, Some(b)) if zero == 1 => {
                ignored.push(b);
                out.push(Checkpoint::default());
            }
            (None, Some(b)) => return Err(b),
            (None, None) => {
                return Err(Malformed::damaged(slot_offset(p, 0), format!("no valid checkpoint for partition {p}")));
            }
        }
    }
    Ok(out)
}

/// Whether `name` can name a projection (and its directory): 1 to 64 of `A-Z a-z 0-9 _ -`
/// (no dot: a rebuild uses `<name>.rebuild` and `<name>.old` beside it).
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
