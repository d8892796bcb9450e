//! Which partition a stream lives in: a stable 64-bit hash of the stream id, then jump
//! consistent hash (Lamping & Veach, 2014), so that growing from `n` to `m` partitions moves
//! only about `1 - n/m` of the streams. Both are pinned by test vectors in FORMAT.md and in
//! `tests/format.rs`: they may never change silently. `partition_for` treats a count of 0 as 1.

use xxhash_rust::xxh3::xxh3_64;

/// Manifest id of the routing scheme: xxh3-64 with seed 0 over the UTF-8 bytes of the stream
/// id, then jump consistent hash.
pub(crate) const HASH_ID: u32 = 1;

/// The stable 64-bit hash of a stream id (xxh3-64, seed 0).
pub fn stream_hash(stream_id: &str) -> u64 {
    xxh3_64(stream_id.as_bytes())
}

/// Jump consistent hash: maps `key` to a bucket in `0..buckets` (`buckets` >= 1).
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as u32
}

/// The partition of `stream_id` in a store of `partitions` partitions.
pub fn partition_for(stream_id: &str, partitions: u32) -> u32 {
    jump_consistent_hash(stream_hash(stream_id), partitions.max(1))
}
