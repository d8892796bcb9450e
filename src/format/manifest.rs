//! The store manifest: what a store is, fixed at creation.
//!
//! ```text
//! 0   8  magic            b"STRATAMF"
//! 8   4  version          FORMAT_VERSION
//! 12  4  length           total manifest length in bytes (64 in version 1; the CRC is always
//!                          the last 4 bytes)
//! 16  4  partition_count  >= 1
//! 20  4  hash_id          1 = xxh3-64 (seed 0) of the stream id, then jump consistent hash
//! 24  8  segment_bytes    segment roll size
//! 32  8  created          nanoseconds since the Unix epoch
//! 40  8  partition_epoch  0; increases each time the partition count changes
//! 48  12 reserved         zeros
//! 60  4  crc              CRC-32 of bytes [0, 60)
//! ```
#![deny(clippy::indexing_slicing)]

use super::{FORMAT_VERSION, crc, le_u32, le_u64, put_u32, put_u64};

pub(crate) const MAGIC: &[u8; 8] = b"STRATAMF";
pub(crate) const LEN: usize = 64;
pub(crate) const FILE_NAME: &str = "MANIFEST";
/// Most partitions a store can have.
pub(crate) const MAX_PARTITIONS: u32 = 65_536;

/// The contents of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub partition_count: u32,
    pub hash_id: u32,
    pub segment_bytes: u64,
    pub created: u64,
    pub partition_epoch: u64,
}

/// Why a manifest could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ManifestError {
    /// Not a strata manifest.
    Foreign(String),
    /// A newer format version.
    Version(u32),
    /// A damaged manifest, with the byte offset.
    Corrupt(u64, String),
}

impl Manifest {
    pub fn encode(&self) -> [u8; LEN] {
        let mut m = [0u8; LEN];
        if let Some(b) = m.get_mut(..8) {
            b.copy_from_slice(MAGIC);
        }
        put_u32(&mut m, 8, FORMAT_VERSION);
        put_u32(&mut m, 12, LEN as u32);
        put_u32(&mut m, 16, self.partition_count);
        put_u32(&mut m, 20, self.hash_id);
        put_u64(&mut m, 24, self.segment_bytes);
        put_u64(&mut m, 32, self.created);
        put_u64(&mut m, 40, self.partition_epoch);
        let sum = m.get(..60).map(crc).unwrap_or(0);
        put_u32(&mut m, 60, sum);
        m
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.get(..8) != Some(MAGIC.as_slice()) {
            return Err(ManifestError::Foreign("the manifest has no strata magic".into()));
        }
        // Every version keeps magic, version and length at the front and the CRC of all that
        // precedes it in the last 4 bytes, so a damaged version is corruption, not "newer".
        let length = le_u32(bytes, 12).ok_or_else(|| ManifestError::Corrupt(12, "manifest cut short".into()))?;
        if length as usize != bytes.len() || bytes.len() < LEN {
            return Err(ManifestError::Corrupt(
                12,
                format!("manifest is {} bytes, its header says {length}", bytes.len()),
            ));
        }
        let body = bytes.len() - 4;
        if bytes.get(..body).map(crc) != le_u32(bytes, body) {
            return Err(ManifestError::Corrupt(body as u64, "manifest checksum mismatch".into()));
        }
        let version = le_u32(bytes, 8).unwrap_or(0);
        if version > FORMAT_VERSION {
            return Err(ManifestError::Version(version));
        }
        if version == 0 || bytes.len() != LEN {
            return Err(ManifestError::Corrupt(
                8,
                format!("format version {version} with a {}-byte manifest", bytes.len()),
            ));
        }
        let m = Manifest {
            partition_count: le_u32(bytes, 16).unwrap_or(0),
            hash_id: le_u32(bytes, 20).unwrap_or(0),
            segment_bytes: le_u64(bytes, 24).unwrap_or(0),
            created: le_u64(bytes, 32).unwrap_or(0),
            partition_epoch: le_u64(bytes, 40).unwrap_or(0),
        };
        // Version 1 writes zeros there; anything else is damage (a later version that uses
        // these bytes bumps the version).
        if bytes.get(48..60).is_none_or(|r| r.iter().any(|&b| b != 0)) {
            return Err(ManifestError::Corrupt(48, "reserved manifest bytes are not zero".into()));
        }
        if m.partition_count == 0 || m.partition_count > MAX_PARTITIONS {
            return Err(ManifestError::Corrupt(16, format!("impossible partition count {}", m.partition_count)));
        }
        if m.hash_id != crate::router::HASH_ID {
            return Err(ManifestError::Corrupt(20, format!("unknown hash function id {}", m.hash_id)));
        }
        if m.segment_bytes < 4096 {
            return Err(ManifestError::Corrupt(24, format!("segment size {} too small", m.segment_bytes)));
        }
        Ok(m)
    }
}
