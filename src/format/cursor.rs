//! A subscription's cursor as bytes, for the application to store (FORMAT.md §20).
//!
//! ```text
//! 0       8  magic      b"STRATCUR"
//! 8       4  version    FORMAT_VERSION
//! 12      4  count      positions that follow (at most MAX_CURSOR_PARTITIONS)
//! 16      8n positions  for each partition, the next position to read
//! 16+8n   4  crc        CRC-32 of bytes [0, 16 + 8n)
//! ```
#![deny(clippy::indexing_slicing)]

use super::{BASE_VERSION, crc, le_u32, le_u64, put_u32, put_u64};

pub(crate) const MAGIC: &[u8; 8] = b"STRATCUR";
/// Most partitions a cursor holds positions for.
pub(crate) const MAX_CURSOR_PARTITIONS: usize = 1 << 16;

pub(crate) fn encode(positions: &[u64]) -> Vec<u8> {
    let n = positions.len().min(MAX_CURSOR_PARTITIONS);
    let mut b = vec![0u8; 16 + 8 * n + 4];
    if let Some(m) = b.get_mut(..8) {
        m.copy_from_slice(MAGIC);
    }
    put_u32(&mut b, 8, BASE_VERSION);
    put_u32(&mut b, 12, n as u32);
    for (i, p) in positions.iter().take(n).enumerate() {
        put_u64(&mut b, 16 + 8 * i, *p);
    }
    let sum = b.get(..16 + 8 * n).map(crc).unwrap_or(0);
    put_u32(&mut b, 16 + 8 * n, sum);
    b
}

/// The positions of an encoded cursor, or why the bytes are not one.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<u64>, String> {
    if bytes.get(..8) != Some(MAGIC.as_slice()) {
        return Err("not a strata cursor (bad magic)".into());
    }
    let version = le_u32(bytes, 8).ok_or("cursor cut short")?;
    if version != BASE_VERSION {
        return Err(format!("cursor of format version {version}, this build reads {BASE_VERSION}"));
    }
    let n = le_u32(bytes, 12).ok_or("cursor cut short")? as usize;
    if n > MAX_CURSOR_PARTITIONS || bytes.len() != 16 + 8 * n + 4 {
        return Err(format!("cursor of {} bytes cannot hold {n} positions", bytes.len()));
    }
    if bytes.get(..16 + 8 * n).map(crc) != le_u32(bytes, 16 + 8 * n) {
        return Err("cursor checksum mismatch".into());
    }
    Ok((0..n).map(|i| le_u64(bytes, 16 + 8 * i).unwrap_or(0)).collect())
}
