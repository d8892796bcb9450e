//! The one check of a file's header, and the one shape of what is wrong with a file's bytes.
//!
//! Every strata file but the manifest starts with the same 64-byte frame:
//!
//! ```text
//! 0   8  magic     b"STRAT..." (one per file kind)
//! 8   4  version   FORMAT_VERSION
//! 12  .. the kind's fields, then reserved zeros
//! 60  4  crc       CRC-32 of bytes [0, 60)
//! ```
//!
//! The check is the same for every kind: the magic (bytes without it are foreign), then the
//! CRC (so a damaged version field reads as damage, not as a newer format), then the version
//! (0 is damage; above the kind's newest, a newer format), then the kind's reserved bytes. A
//! kind's newest version is the format version at which its layout last changed (FORMAT.md
//! §1.1): 2 for archives, 1 for every other kind, so what a kind's decoder accepts is exactly
//! what some build wrote.
//! What a reader does with the answer is the kind's policy (FORMAT.md, version policy): a
//! derived file is rebuilt or replaced, a file of acknowledged data is refused.
#![deny(clippy::indexing_slicing)]

use std::fmt;
use std::ops::Range;
use std::path::Path;

use super::{BASE_VERSION, FORMAT_VERSION, crc, le_u32, put_u32};
use crate::error::Error;

/// Length of the common header.
pub(crate) const HEADER_LEN: usize = 64;
/// Offset of the version.
pub(crate) const VERSION_OFFSET: usize = 8;
/// Offset of the header's CRC.
pub(crate) const CRC_OFFSET: usize = 60;

/// Why bytes are not what they should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Not a file of this kind at all (no magic, or too short to hold one).
    Foreign,
    /// A newer format version than this build reads: the one found, and the newest read.
    Newer(u32, u32),
    /// Damage: a checksum mismatch, an impossible field, a broken sequence.
    Damaged,
}

/// What is wrong with a file's bytes, and where (the byte offset of the structure at fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed {
    pub offset: u64,
    pub cause: Cause,
    pub what: String,
}

impl Malformed {
    pub fn foreign(what: impl Into<String>) -> Malformed {
        Malformed { offset: 0, cause: Cause::Foreign, what: what.into() }
    }

    pub fn damaged(offset: u64, what: impl Into<String>) -> Malformed {
        Malformed { offset, cause: Cause::Damaged, what: what.into() }
    }

    pub fn newer(found: u32, supported: u32, what: impl Into<String>) -> Malformed {
        Malformed { offset: VERSION_OFFSET as u64, cause: Cause::Newer(found, supported), what: what.into() }
    }

    /// The error, for a file of a format this build may meet in a newer version (segments,
    /// archives, the manifest): a newer version is [`Error::UnsupportedVersion`], anything
    /// else [`Error::Corruption`] at the offset (a foreign file where a strata file must be
    /// is damage to the store).
    pub fn into_error(self, path: &Path) -> Error {
        match self.cause {
            Cause::Newer(found, supported) => Error::UnsupportedVersion { path: path.to_path_buf(), found, supported },
            Cause::Foreign | Cause::Damaged => Error::corruption(path, self.offset, self.what),
        }
    }

    /// The error, for a file pinned to this build's version (tombstones, projection
    /// checkpoints and dead letters): a newer version is [`Error::Corruption`] too.
    pub fn into_corruption(self, path: &Path) -> Error {
        Error::corruption(path, self.offset, self.what)
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

/// One file kind's header frame.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub magic: &'static [u8; 8],
    /// The kind, for messages ("segment", "tombstone file"...).
    pub what: &'static str,
    /// Bytes of the header that version 1 writes as zeros.
    pub reserved: Range<usize>,
    /// The newest version of the kind this build reads (and writes).
    pub newest: u32,
}

/// Checks the header at the start of `bytes` by the one rule (module docs); returns it.
pub(crate) fn check<'a>(bytes: &'a [u8], frame: &Frame) -> Result<&'a [u8], Malformed> {
    let what = frame.what;
    let Some(h) = bytes.get(..HEADER_LEN) else {
        return Err(Malformed::foreign(format!("{} bytes is too short for a {what} header", bytes.len())));
    };
    if h.get(..8) != Some(frame.magic.as_slice()) {
        return Err(Malformed::foreign(format!("not a strata {what}: no {what} magic")));
    }
    if h.get(..CRC_OFFSET).map(crc) != le_u32(h, CRC_OFFSET) {
        return Err(Malformed::damaged(0, format!("{what} header checksum mismatch")));
    }
    check_version(le_u32(h, VERSION_OFFSET).unwrap_or(0), frame.newest, what)?;
    if h.get(frame.reserved.clone()).is_none_or(|r| r.iter().any(|&b| b != 0)) {
        return Err(Malformed::damaged(
            frame.reserved.start as u64,
            format!("reserved {what} header bytes are not zero"),
        ));
    }
    Ok(h)
}

/// The version rule: 0 is damage, above `newest` (the kind's newest, at most
/// [`FORMAT_VERSION`]) a newer format.
pub(crate) fn check_version(version: u32, newest: u32, what: &str) -> Result<(), Malformed> {
    debug_assert!(newest <= FORMAT_VERSION);
    if version == 0 {
        return Err(Malformed::damaged(VERSION_OFFSET as u64, format!("{what} format version 0")));
    }
    if version > newest {
        return Err(Malformed::newer(
            version,
            newest,
            format!("{what} format version {version} is newer than this build reads ({newest})"),
        ));
    }
    Ok(())
}

/// A header with `magic` and the version the kind is written at (1 for all but archives),
/// its fields and reserved bytes zero: the encoder puts its fields in, then [`seal`]s it.
pub(crate) fn begin(magic: &[u8; 8]) -> [u8; HEADER_LEN] {
    begin_version(magic, BASE_VERSION)
}

/// [`begin`], at `version`.
pub(crate) fn begin_version(magic: &[u8; 8], version: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    if let Some(m) = h.get_mut(..8) {
        m.copy_from_slice(magic);
    }
    put_u32(&mut h, VERSION_OFFSET, version);
    h
}

/// Writes the header's CRC.
pub(crate) fn seal(h: &mut [u8; HEADER_LEN]) {
    let sum = h.get(..CRC_OFFSET).map(crc).unwrap_or(0);
    put_u32(h, CRC_OFFSET, sum);
}
