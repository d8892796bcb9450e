//! Which partition a stream lives in: a stable 64-bit hash of the stream id's co-location key,
//! then jump consistent hash (Lamping & Veach, 2014), so that growing from `n` to `m`
//! partitions moves only about `1 - n/m` of the streams. Both are pinned by test vectors in
//! FORMAT.md and in `tests/format.rs`: they may never change silently. `partition_for` treats a
//! count of 0 as 1.
//!
//! **Co-location keys** (routing scheme 2, the one new stores use): a stream id that holds a
//! `{`, followed later by a `}` with at least one byte between them, is routed by those bytes
//! alone, as Redis Cluster's hash tags are: `{order-17}/payments` and `{order-17}/shipping`
//! share a partition at every partition count, so `Store::append_atomic` can write both.
//! Any other id is routed by all of its bytes, exactly as in scheme 1. The stream's identity
//! hash ([`stream_hash`], in index files) is always of the whole id.

use xxhash_rust::xxh3::xxh3_64;

/// Manifest id of the routing scheme new stores record: xxh3-64 with seed 0 over the UTF-8
/// bytes of the stream id's co-location key, then jump consistent hash.
pub(crate) const HASH_ID: u32 = 2;
/// The scheme of stores created before co-location keys: the whole id is hashed.
pub(crate) const HASH_ID_WHOLE: u32 = 1;

/// The part of `stream_id` its partition is computed from under scheme 2: what lies between
/// the first `{` and the first `}` after it, if that is not empty; else the whole id.
///
/// ```
/// use strata::routing::colocation_key;
/// assert_eq!(colocation_key("{order-17}/payments"), "order-17");
/// assert_eq!(colocation_key("shipping-{order-17}"), "order-17");
/// assert_eq!(colocation_key("order-17"), "order-17");
/// assert_eq!(colocation_key("{}x"), "{}x");
/// ```
pub fn colocation_key(stream_id: &str) -> &str {
    // A byte search: `{` is ASCII, and this runs once per append.
    let Some(open) = stream_id.bytes().position(|b| b == b'{') else { return stream_id };
    let rest = &stream_id[open + 1..];
    match rest.find('}') {
        Some(close) if close > 0 => &rest[..close],
        _ => stream_id,
    }
}

/// The hash a stream is routed by under routing scheme `hash_id` (1: the whole id; 2: its
/// co-location key).
pub(crate) fn route_hash(hash_id: u32, stream_id: &str) -> u64 {
    route_hash_given(hash_id, stream_id, stream_hash(stream_id))
}

/// [`route_hash`] of a stream whose [`stream_hash`] is `whole` (not hashed again when the id
/// has no co-location key, the common case).
pub(crate) fn route_hash_given(hash_id: u32, stream_id: &str, whole: u64) -> u64 {
    if hash_id == HASH_ID_WHOLE {
        return whole;
    }
    let key = colocation_key(stream_id);
    if key.len() == stream_id.len() { whole } else { stream_hash(key) }
}

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

/// The partition of `stream_id` in a store of `partitions` partitions created by this
/// version (routing scheme 2: by its co-location key).
pub fn partition_for(stream_id: &str, partitions: u32) -> u32 {
    jump_consistent_hash(route_hash(HASH_ID, stream_id), partitions.max(1))
}
