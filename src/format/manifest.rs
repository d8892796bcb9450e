//! The store manifest: what a store is, and its partition map.
//!
//! ```text
//! 0   8  magic            b"STRATAMF"
//! 8   4  version          FORMAT_VERSION
//! 12  4  length           total manifest length in bytes (64 plus the epoch records; the
//!                          CRC is always the last 4 bytes)
//! 16  4  partition_count  >= 1: the partitions streams are routed to
//! 20  4  hash_id          1 = xxh3-64 (seed 0) of the stream id, then jump consistent hash
//! 24  8  segment_bytes    segment roll size
//! 32  8  created          nanoseconds since the Unix epoch
//! 40  8  partition_epoch  number of completed grows (= number of epoch records)
//! 48  4  growing_to       0, or the count a grow in progress copies into (> partition_count)
//! 52  8  reserved         zeros
//! 60  .. epoch records    partition_epoch of them, oldest first, each:
//!          0  4  from           partition count before the grow
//!          4  4  to             partition count after (> from)
//!          8  8*from            cut[a]: head of old partition a at the cutover
//!          .. 8*(to-from)       live_from[b - from]: first position of new partition b that
//!                                is not a copied event
//! end-4 4 crc             CRC-32 of everything before it
//! ```
//!
//! A store that never grew has a 64-byte manifest with the CRC at 60.
#![deny(clippy::indexing_slicing)]

use super::header::{self, Malformed};
use super::{BASE_VERSION, crc, le_u32, le_u64, put_u32, put_u64};
use crate::router::HASH_ID;

pub(crate) const MAGIC: &[u8; 8] = b"STRATAMF";
/// Length of a manifest without epoch records.
pub(crate) const LEN: usize = 64;
/// Longest manifest open reads (a foreign file must not make it allocate without bound).
pub(crate) const MAX_LEN: u64 = 16 << 20;
pub(crate) const FILE_NAME: &str = "MANIFEST";
/// Most partitions a store can have.
pub(crate) const MAX_PARTITIONS: u32 = 65_536;

/// The contents of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub partition_count: u32,
    pub hash_id: u32,
    pub segment_bytes: u64,
    pub created: u64,
    pub partition_epoch: u64,
    /// 0, or the partition count a grow in progress is copying streams into.
    pub growing_to: u32,
    /// One record per completed grow, oldest first (`partition_epoch` of them).
    pub epochs: Vec<Epoch>,
}

/// One completed grow of the partition count: where it cut the old partitions over, and where
/// each new partition's own events begin (before that: copies of moved streams' history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Epoch {
    pub from: u32,
    pub to: u32,
    /// `cut[a]`: the head of old partition `a` when the moved streams were cut over.
    pub cut: Vec<u64>,
    /// `live_from[b - from]`: the first position of new partition `b` that is not a copy.
    pub live_from: Vec<u64>,
}

impl Epoch {
    fn len(to: u32) -> usize {
        8 + 8 * to as usize
    }
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let len = LEN + self.epochs.iter().map(|e| Epoch::len(e.to)).sum::<usize>();
        let mut m = vec![0u8; len];
        if let Some(b) = m.get_mut(..8) {
            b.copy_from_slice(MAGIC);
        }
        put_u32(&mut m, 8, BASE_VERSION);
        put_u32(&mut m, 12, len as u32);
        put_u32(&mut m, 16, self.partition_count);
        put_u32(&mut m, 20, self.hash_id);
        put_u64(&mut m, 24, self.segment_bytes);
        put_u64(&mut m, 32, self.created);
        put_u64(&mut m, 40, self.partition_epoch);
        put_u32(&mut m, 48, self.growing_to);
        let mut at = 60;
        for e in &self.epochs {
            put_u32(&mut m, at, e.from);
            put_u32(&mut m, at + 4, e.to);
            at += 8;
            for &v in e.cut.iter().chain(&e.live_from) {
                put_u64(&mut m, at, v);
                at += 8;
            }
        }
        let sum = m.get(..len - 4).map(crc).unwrap_or(0);
        put_u32(&mut m, len - 4, sum);
        m
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest, Malformed> {
        if bytes.get(..8) != Some(MAGIC.as_slice()) {
            return Err(Malformed::foreign("the manifest has no strata magic"));
        }
        // Every version keeps magic, version and length at the front and the CRC of all that
        // precedes it in the last 4 bytes, so a damaged version is corruption, not "newer".
        let length = le_u32(bytes, 12).ok_or_else(|| Malformed::damaged(12, "manifest cut short"))?;
        if length as usize != bytes.len() || bytes.len() < LEN {
            return Err(Malformed::damaged(12, format!("manifest is {} bytes, its header says {length}", bytes.len())));
        }
        let body = bytes.len() - 4;
        if bytes.get(..body).map(crc) != le_u32(bytes, body) {
            return Err(Malformed::damaged(body as u64, "manifest checksum mismatch"));
        }
        header::check_version(le_u32(bytes, 8).unwrap_or(0), BASE_VERSION, "manifest")?;
        let m = Manifest {
            partition_count: le_u32(bytes, 16).unwrap_or(0),
            hash_id: le_u32(bytes, 20).unwrap_or(0),
            segment_bytes: le_u64(bytes, 24).unwrap_or(0),
            created: le_u64(bytes, 32).unwrap_or(0),
            partition_epoch: le_u64(bytes, 40).unwrap_or(0),
            growing_to: le_u32(bytes, 48).unwrap_or(0),
            epochs: Vec::new(),
        };
        // Version 1 writes zeros there; anything else is damage (a later version that uses
        // these bytes bumps the version).
        if bytes.get(52..60).is_none_or(|r| r.iter().any(|&b| b != 0)) {
            return Err(Malformed::damaged(52, "reserved manifest bytes are not zero"));
        }
        let mut m = m;
        m.epochs = decode_epochs(bytes, m.partition_epoch)?;
        if m.partition_count == 0 || m.partition_count > MAX_PARTITIONS {
            return Err(Malformed::damaged(16, format!("impossible partition count {}", m.partition_count)));
        }
        if m.hash_id != HASH_ID && m.hash_id != crate::router::HASH_ID_WHOLE {
            return Err(Malformed::damaged(20, format!("unknown hash function id {}", m.hash_id)));
        }
        if m.segment_bytes < 4096 {
            return Err(Malformed::damaged(24, format!("segment size {} too small", m.segment_bytes)));
        }
        if m.growing_to != 0 && (m.growing_to <= m.partition_count || m.growing_to > MAX_PARTITIONS) {
            return Err(Malformed::damaged(
                48,
                format!("a grow to {} partitions from {} is impossible", m.growing_to, m.partition_count),
            ));
        }
        if m.epochs.last().is_some_and(|e| e.to != m.partition_count) {
            return Err(Malformed::damaged(16, "the last partition epoch does not end at the partition count"));
        }
        Ok(m)
    }
}

/// The epoch records from offset 60 up to the CRC: exactly `count` of them, chained (each
/// starts where the one before ended), filling the space exactly.
fn decode_epochs(bytes: &[u8], count: u64) -> Result<Vec<Epoch>, Malformed> {
    let end = bytes.len() - 4;
    let corrupt = |at: usize, why: String| Malformed::damaged(at as u64, why);
    let mut epochs: Vec<Epoch> = Vec::new();
    let mut at = 60;
    while (epochs.len() as u64) < count {
        let (Some(from), Some(to)) = (le_u32(bytes, at), le_u32(bytes, at + 4)) else {
            return Err(corrupt(at, format!("{count} partition epochs claimed, {} present", epochs.len())));
        };
        if from == 0 || to <= from || to > MAX_PARTITIONS {
            return Err(corrupt(at, format!("impossible partition epoch from {from} to {to}")));
        }
        if epochs.last().is_some_and(|e| e.to != from) {
            return Err(corrupt(at, "partition epochs do not follow each other".into()));
        }
        if end - at < Epoch::len(to) {
            return Err(corrupt(at, "partition epoch record cut short".into()));
        }
        let values: Vec<u64> = (0..to as usize).map(|i| le_u64(bytes, at + 8 + 8 * i).unwrap_or(0)).collect();
        let (cut, live_from) = values.split_at(from as usize);
        epochs.push(Epoch { from, to, cut: cut.to_vec(), live_from: live_from.to_vec() });
        at += Epoch::len(to);
    }
    if at != end {
        return Err(corrupt(at, "bytes after the last partition epoch".into()));
    }
    Ok(epochs)
}
