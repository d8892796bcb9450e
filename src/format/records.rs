//! Append-only record files: a partition's tombstones and a projection's dead-letter queue
//! (and, framed the same way, a partition's snapshot sidecar). After the file's header come
//! records back to back, each 8-byte aligned and starting with
//!
//! ```text
//! 0   4  crc  CRC-32 of bytes [4, len)
//! 4   4  len  the whole record, padding included: a multiple of 8
//! ```
//!
//! Each record is appended with one write and made durable (`fdatasync`) before the append
//! returns, and a failed append is cut off again, so only the last record can be torn.
//!
//! **The torn-tail rule**, one for every such file. A scan stops at the first bytes that are
//! not a valid record. They are a torn write (cut off, and the cut reported) only if
//! 1. no valid record starts at any 8-aligned offset after them (every record was durable
//!    before the next one was written), and
//! 2. they show that a write was interrupted: they are all zeros; or the record claims a
//!    plausible length that runs past the end of the file, and the file ends at a sector
//!    boundary; or one 512-byte sector of the record (the part of it in one aligned block of
//!    the file) reads as all zeros while nothing follows the record. A disk writes whole
//!    sectors, and a sector of a file extended by a write that never reached the disk reads
//!    as zeros, while an intact tombstone or dead-letter record has no all-zero sector: its
//!    length, time, stream id or error text lies in every one of them.
//!
//! Anything else is damage to a record that was durable: the reader reports it as corruption
//! at that offset and repairs nothing. So a flipped bit in the last record of a tombstone
//! file is refused, not cut: an acknowledged deletion never comes back on damage alone.
#![deny(clippy::indexing_slicing)]

use super::le_u32;

/// The smallest unit a disk writes whole.
pub(crate) const SECTOR: u64 = 512;

/// What a scan of a record file found: its records, where valid data ends, and why it ends
/// there if before the end of the file.
pub(crate) type Scanned<R> = (Vec<R>, usize, Option<String>);

/// What the bytes after the last valid record are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tail {
    /// A write that was interrupted (never acknowledged): it may be cut off.
    Torn(String),
    /// Damage to data that was durable: it must be reported, never cut.
    Damaged(String),
}

/// Judges `rest`, the bytes of a record file from offset `at` (where the first invalid record
/// starts) to its end, by the torn-tail rule (module docs). `min_record` and `max_record`
/// bound a record's length; `valid` says whether a valid record starts at the beginning of
/// the bytes it is given. The search for a later valid record checksums a bounded number of
/// bytes (a crafted file cannot make it quadratic); past the bound the tail counts as damage.
pub(crate) fn judge_tail(
    at: u64,
    rest: &[u8],
    min_record: usize,
    max_record: usize,
    valid: impl Fn(&[u8]) -> bool,
) -> Tail {
    let plausible = |len: usize| len >= min_record && len <= max_record && len.is_multiple_of(8);
    let mut budget = (rest.len() as u64).saturating_mul(4).max(1 << 20);
    let mut cand = 8;
    while cand + 8 <= rest.len() {
        let tail = rest.get(cand..).unwrap_or(&[]);
        let len = le_u32(tail, 4).map_or(0, |l| l as usize);
        if plausible(len) && len <= tail.len() {
            budget = match budget.checked_sub(len as u64) {
                Some(b) => b,
                None => {
                    return Tail::Damaged(format!(
                        "the bytes after it were not examined past byte {}",
                        at + cand as u64
                    ));
                }
            };
            if valid(tail) {
                return Tail::Damaged(format!("a valid record follows at byte {}", at + cand as u64));
            }
        }
        cand += 8;
    }
    if rest.iter().all(|&b| b == 0) {
        return Tail::Torn("only zeros follow the last record".into());
    }
    let end_of_file = at + rest.len() as u64;
    let claimed = le_u32(rest, 4).map_or(0, |l| l as usize);
    if plausible(claimed) && claimed > rest.len() && end_of_file.is_multiple_of(SECTOR) {
        return Tail::Torn(format!("the file ends at byte {end_of_file}, inside a record of {claimed} bytes"));
    }
    // The record's bytes: as claimed, or (a claim no record makes) up to the longest record.
    let span = if plausible(claimed) && claimed <= rest.len() { claimed } else { rest.len().min(max_record) };
    if rest.get(span..).is_some_and(|after| after.iter().all(|&b| b == 0)) {
        let mut from = at;
        let end = at + span as u64;
        while from < end {
            let to = ((from / SECTOR + 1) * SECTOR).min(end);
            let piece = rest.get((from - at) as usize..(to - at) as usize).unwrap_or(&[]);
            if !piece.is_empty() && piece.iter().all(|&b| b == 0) {
                return Tail::Torn(format!("the sector at byte {from} of the last record was never written"));
            }
            from = to;
        }
    }
    Tail::Damaged("a complete record fails its checks: damage to a durable record, not a torn write".into())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// A fake record kind: a record is valid when its CRC field holds 0xAA.
    fn valid(b: &[u8]) -> bool {
        b.first() == Some(&0xAA) && le_u32(b, 4).is_some_and(|l| l as usize <= b.len())
    }

    fn record(len: usize) -> Vec<u8> {
        let mut r = vec![0x11u8; len];
        r[0] = 0xAA;
        r[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        r
    }

    #[test]
    fn zeros_and_short_files_at_sector_boundaries_are_torn() {
        assert!(matches!(judge_tail(64, &[0; 40], 16, 2048, valid), Tail::Torn(_)));
        // A 1,000-byte record cut at the sector boundary 512 (it starts at 448).
        let r = record(1000);
        assert!(matches!(judge_tail(448, &r[..64], 16, 2048, valid), Tail::Torn(_)));
        // Cut at a byte no disk tears at: damage (a length flipped upward looks like this).
        assert!(matches!(judge_tail(448, &r[..60], 16, 2048, valid), Tail::Damaged(_)));
    }

    #[test]
    fn a_lost_sector_is_torn_and_a_flipped_bit_is_damage() {
        let mut r = record(1000);
        r[3] = 0x55; // the CRC no longer checks out
        let mut lost = r.clone();
        lost[64..576].fill(0); // the record starts at 448: bytes 64.. are the sector at 512
        assert!(matches!(judge_tail(448, &lost, 16, 2048, valid), Tail::Torn(_)));
        assert!(matches!(judge_tail(448, &r, 16, 2048, valid), Tail::Damaged(_)));
        // Something written after it: not a torn last write.
        let mut after = lost.clone();
        after.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9]);
        assert!(matches!(judge_tail(448, &after, 16, 2048, valid), Tail::Damaged(_)));
    }

    #[test]
    fn a_valid_record_after_the_bad_one_means_damage() {
        let mut bytes = vec![0u8; 64];
        bytes[4] = 64;
        bytes.extend_from_slice(&record(32));
        assert!(matches!(judge_tail(64, &bytes, 16, 2048, valid), Tail::Damaged(why) if why.contains("follows")));
    }
}
