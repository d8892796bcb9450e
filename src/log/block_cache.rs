//! The store's cache of decompressed archive blocks: one for all partitions and archives,
//! bounded in bytes (quick_cache's sharded S3-FIFO, each block weighing its decompressed
//! length), so that readers in different archives share one budget instead of evicting each
//! other from small per-archive caches. Blocks are keyed by `(archive id, block number)`;
//! an archive id is given to each `Archive` when it is opened (a rewritten archive is a new
//! one) and its blocks are dropped from the cache when it goes.
//!
//! A block is decompressed once however many readers want it at the same time (the others
//! wait for it: `get_or_insert_with`). A block heavier than a shard's share of the bound is
//! not kept, and is decompressed again by the next read that needs it.
//!
//! Each thread also remembers the last block it took (`LAST`, blocks up to `LAST_MAX` bytes):
//! a stream read takes a block once per batch it reads there, so without this a cache with no
//! room (`archive_cache_bytes(0)`, or a block too heavy for its shard) would decompress a
//! block once per batch: 100 one-event batches in one 64 KiB block cost 11–12 ms instead of
//! about 0.2 ms (`benches/compaction.rs`, `archives-uncached`). Archive ids are never reused,
//! so a remembered block is never stale; it is not counted in `bytes`.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest block a thread remembers beside the cache.
const LAST_MAX: usize = 1 << 20;

thread_local! {
    /// The last block this thread took: `((archive, block), data)`.
    static LAST: RefCell<Option<((u64, u32), Block)>> = const { RefCell::new(None) };
}

/// Counters of the store's archive block cache (see
/// [`Options::archive_cache_bytes`](crate::Options::archive_cache_bytes)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchiveCacheStats {
    /// Block reads served from memory.
    pub hits: u64,
    /// Block reads that decompressed the block.
    pub misses: u64,
    /// Decompressed bytes held now.
    pub bytes: u64,
    /// The bound on `bytes`.
    pub capacity_bytes: u64,
    /// Archives whose meta section (block, stream and position entries) has been read and
    /// checked since open: open reads only each archive's header and footer, the rest is
    /// checked on first use.
    pub metas_loaded: u64,
}

impl ArchiveCacheStats {
    /// Hits over block reads (0 before the first).
    pub fn hit_ratio(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 { 0.0 } else { self.hits as f64 / reads as f64 }
    }
}

/// A decompressed block.
pub(crate) type Block = Arc<Vec<u8>>;

#[derive(Debug, Clone, Copy, Default)]
struct ByLength;

impl quick_cache::Weighter<(u64, u32), Block> for ByLength {
    fn weight(&self, _: &(u64, u32), block: &Block) -> u64 {
        // Never 0: a 0-weight item would never be evicted (blocks are never empty anyway).
        (block.len() as u64).max(1)
    }
}

/// Shards of the cache: as many as keep each shard at least 4 MiB (a shard keeps no block
/// heavier than its share), at most 16.
fn shards(capacity: u64) -> usize {
    let n = (capacity / (4 << 20)).clamp(1, 16) as usize;
    // quick_cache wants a power of two.
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// The store's archive block cache.
pub(crate) struct BlockCache {
    cache: quick_cache::sync::Cache<(u64, u32), Block, ByLength>,
    capacity: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    metas_loaded: AtomicU64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

/// Blocks of 64 KiB, the compactor's default: how many items to expect.
const TYPICAL_BLOCK: u64 = 64 << 10;

impl BlockCache {
    /// A cache of at most `capacity` decompressed bytes (0: none kept).
    pub fn new(capacity: u64) -> Arc<BlockCache> {
        let options = quick_cache::OptionsBuilder::new()
            .shards(shards(capacity))
            .estimated_items_capacity(((capacity / TYPICAL_BLOCK) as usize).clamp(16, 1 << 20))
            .weight_capacity(capacity)
            .build();
        let cache = match options {
            Ok(o) => quick_cache::sync::Cache::with_options(o, ByLength, Default::default(), Default::default()),
            Err(_) => quick_cache::sync::Cache::with_weighter(16, capacity, ByLength),
        };
        Arc::new(BlockCache {
            cache,
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            metas_loaded: AtomicU64::new(0),
        })
    }

    /// Block `block` of archive `archive`: from memory, or from `load` (which decompresses it;
    /// an error is returned and nothing kept).
    pub fn get_or_load<E>(
        &self,
        archive: u64,
        block: u32,
        load: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Block, E> {
        let key = (archive, block);
        let last = LAST.with_borrow(|last| last.as_ref().filter(|(k, _)| *k == key).map(|(_, b)| b.clone()));
        if let Some(b) = last {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        let mut loaded = false;
        let got = self.cache.get_or_insert_with(&key, || {
            loaded = true;
            load().map(Arc::new)
        });
        let counter = if loaded { &self.misses } else { &self.hits };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(b) = &got
            && b.len() <= LAST_MAX
        {
            LAST.set(Some((key, b.clone())));
        }
        got
    }

    /// Drops the blocks `0..blocks` of `archive` (it is gone).
    pub fn forget(&self, archive: u64, blocks: u32) {
        for b in 0..blocks {
            self.cache.remove(&(archive, b));
        }
        LAST.with_borrow_mut(|last| {
            if last.as_ref().is_some_and(|((a, _), _)| *a == archive) {
                *last = None;
            }
        });
    }

    /// Counts an archive whose meta section was read and checked.
    pub fn meta_loaded(&self) {
        self.metas_loaded.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn stats(&self) -> ArchiveCacheStats {
        ArchiveCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.cache.weight(),
            capacity_bytes: self.capacity,
            metas_loaded: self.metas_loaded.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_shared_and_bounded_in_bytes() {
        let cache = BlockCache::new(1 << 20);
        let block = || Ok::<_, ()>(vec![7u8; 100 << 10]);
        let a = cache.get_or_load(1, 0, block).unwrap();
        let b = cache.get_or_load(1, 0, || -> Result<Vec<u8>, ()> { panic!("decompressed twice") }).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!((cache.stats().hits, cache.stats().misses), (1, 1));
        for i in 1..40 {
            cache.get_or_load(2, i, block).unwrap();
        }
        assert!(cache.stats().bytes <= 1 << 20, "{:?}", cache.stats());
        assert!(cache.get_or_load(3, 0, || Err::<Vec<u8>, _>("damaged")).is_err());
        cache.forget(1, 1);
        let mut again = false;
        cache
            .get_or_load(1, 0, || {
                again = true;
                block()
            })
            .unwrap();
        assert!(again, "a forgotten archive's block is decompressed again");
    }

    #[test]
    fn shard_counts_are_powers_of_two() {
        for (cap, n) in [(0, 1), (4 << 20, 1), (12 << 20, 2), (64 << 20, 16), (1 << 40, 16)] {
            assert_eq!(shards(cap), n, "{cap}");
        }
    }
}
