//! The poison marker `p{id:05}/POISON`: written by a writer that is about to cut its active
//! segment back after a failed `fdatasync` or write (FORMAT.md §10.5), so that a crash before
//! the cut, or a cut that fails, still leaves the bytes after the durable end to be cut at the
//! next open, instead of judged by the scan (whose pages may be ones whose write-back failed).
//!
//! ```text
//! 0   8  magic        b"STRATPSN"
//! 8   4  version      FORMAT_VERSION
//! 12  4  partition
//! 16  8  segment      base position of the active segment the writer was writing
//! 24  8  durable_end  the segment's durable data ends here (its synced_offset)
//! 32  28 reserved     zeros
//! 60  4  crc          CRC-32 of bytes [0, 60)
//! ```
#![deny(clippy::indexing_slicing)]

use super::header::{self, CRC_OFFSET, Frame, HEADER_LEN, Malformed};
use super::{le_u32, le_u64, put_u32, put_u64};

pub(crate) const MAGIC: &[u8; 8] = b"STRATPSN";
pub(crate) const FILE_NAME: &str = "POISON";
const FRAME: Frame =
    Frame { magic: MAGIC, what: "poison marker", reserved: 32..CRC_OFFSET, newest: super::BASE_VERSION };

/// A decoded poison marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marker {
    pub partition: u32,
    pub segment: u64,
    pub durable_end: u64,
}

pub(crate) fn encode(m: &Marker) -> [u8; HEADER_LEN] {
    let mut h = header::begin(MAGIC);
    put_u32(&mut h, 12, m.partition);
    put_u64(&mut h, 16, m.segment);
    put_u64(&mut h, 24, m.durable_end);
    header::seal(&mut h);
    h
}

/// Decodes a marker file: exactly one checked header.
pub(crate) fn decode(bytes: &[u8]) -> Result<Marker, Malformed> {
    let h = header::check(bytes, &FRAME)?;
    if bytes.len() != HEADER_LEN {
        return Err(Malformed::damaged(HEADER_LEN as u64, format!("a poison marker is 64 bytes, not {}", bytes.len())));
    }
    let m = Marker {
        partition: le_u32(h, 12).unwrap_or(0),
        segment: le_u64(h, 16).unwrap_or(0),
        durable_end: le_u64(h, 24).unwrap_or(0),
    };
    if m.durable_end < HEADER_LEN as u64 {
        return Err(Malformed::damaged(24, format!("durable end {} is inside the segment header", m.durable_end)));
    }
    Ok(m)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let m = Marker { partition: 3, segment: 4096, durable_end: 777 };
        let bytes = encode(&m);
        assert_eq!(decode(&bytes), Ok(m));
        for i in 0..bytes.len() {
            let mut b = bytes;
            b[i] ^= 1;
            assert!(decode(&b).is_err(), "byte {i}");
        }
        assert!(decode(&bytes[..63]).is_err());
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }
}
