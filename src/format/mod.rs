//! The on-disk format: every structure strata writes, its encoder next to its decoder.
//!
//! All integers are little-endian. Every file starts with an 8-byte magic and a `u32` format
//! version, and every structure is covered by a CRC-32 (ISO-HDLC, the `crc32fast` polynomial).
//! FORMAT.md is the byte-level specification; the constants here are its offsets.
//!
//! Decoders in this module read untrusted bytes: they never index out of bounds, never panic
//! and never allocate in proportion to a length field they have not checked against the bytes
//! actually present.

pub(crate) mod active_index;
pub(crate) mod archive;
pub(crate) mod batch;
pub(crate) mod checkpoint;
pub(crate) mod columns;
pub(crate) mod cursor;
pub(crate) mod dlq;
pub(crate) mod header;
pub(crate) mod index;
pub(crate) mod manifest;
pub(crate) mod poison;
pub(crate) mod records;
pub(crate) mod segment;
pub(crate) mod snapshot;
pub(crate) mod stream_meta;
pub(crate) mod tombstone;

/// The format version of this build, one number for every file kind (FORMAT.md §1.1).
/// Version 2 changed archives only (their blocks and stream entries), so every other kind is
/// still at version 1: written at 1, and a header saying 2 is from a newer build. Builds of
/// version 1 read everything this one writes but archives.
pub const FORMAT_VERSION: u32 = 3;

/// The newest version of every file kind but archives (`archive::ARCHIVE_VERSION`): the one
/// they are written and read at.
pub(crate) const BASE_VERSION: u32 = 1;

/// Reads a little-endian `u16` at `off`, or `None` past the end.
pub(crate) fn le_u16(bytes: &[u8], off: usize) -> Option<u16> {
    let b = bytes.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes(b.try_into().ok()?))
}

/// Reads a little-endian `u32` at `off`, or `None` past the end.
pub(crate) fn le_u32(bytes: &[u8], off: usize) -> Option<u32> {
    let b = bytes.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

/// Reads a little-endian `u64` at `off`, or `None` past the end.
pub(crate) fn le_u64(bytes: &[u8], off: usize) -> Option<u64> {
    let b = bytes.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// Writes `v` little-endian at `off`. The caller guarantees the range exists (encoders only).
pub(crate) fn put_u16(buf: &mut [u8], off: usize, v: u16) {
    if let Some(b) = buf.get_mut(off..off + 2) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// Writes `v` little-endian at `off`. The caller guarantees the range exists (encoders only).
pub(crate) fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    if let Some(b) = buf.get_mut(off..off + 4) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// Writes `v` little-endian at `off`. The caller guarantees the range exists (encoders only).
pub(crate) fn put_u64(buf: &mut [u8], off: usize, v: u64) {
    if let Some(b) = buf.get_mut(off..off + 8) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// CRC-32 of `bytes`.
pub(crate) fn crc(bytes: &[u8]) -> u32 {
    // `crc32fast::hash` detects the CPU's features at every call (a tenth of a small batch's
    // checksum); a hasher made once and cloned does not.
    static HASHER: std::sync::OnceLock<crc32fast::Hasher> = std::sync::OnceLock::new();
    let mut h = HASHER.get_or_init(crc32fast::Hasher::new).clone();
    h.update(bytes);
    h.finalize()
}

/// A copy of some bytes that starts 8-byte aligned, as a mapping does: decoders cast
/// sections of it to entries in place.
pub(crate) struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    pub fn new(bytes: &[u8]) -> Aligned {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        if let Some(b) = bytemuck::cast_slice_mut::<u64, u8>(&mut words).get_mut(..bytes.len()) {
            b.copy_from_slice(bytes);
        }
        Aligned { words, len: bytes.len() }
    }

    pub fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice::<u64, u8>(&self.words).get(..self.len).unwrap_or(&[])
    }
}

/// Rounds `n` up to a multiple of 8.
pub(crate) const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

#[cfg(test)]
mod tests;
