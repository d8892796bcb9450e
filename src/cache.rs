//! A read-through cache for hot projection views: bounded and concurrent (quick_cache's
//! sharded S3-FIFO), filled on a miss by a loader reading the projection's store, and
//! invalidated by the projection when it handles an event for a key.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Counters of a [`ViewCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads served from memory.
    pub hits: u64,
    /// Reads that called the loader.
    pub misses: u64,
    /// Entries now.
    pub len: u64,
}

impl CacheStats {
    /// Hits over reads (0 before the first read).
    pub fn hit_ratio(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 { 0.0 } else { self.hits as f64 / reads as f64 }
    }
}

const SHARDS: usize = 64;

/// The counter stripe of this thread (threads take stripes in turn).
fn stripe() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static STRIPE: usize = (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % SHARDS;
    }
    STRIPE.with(|s| *s)
}

/// A counter alone on its cache lines, so readers on different stripes do not share one.
#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A bounded, concurrent read-through cache of views keyed by `K`.
///
/// The guarantee: once [`ViewCache::invalidate`] for a key has returned, no read that starts
/// afterwards returns a view loaded before it. A projection therefore updates its store
/// first, then invalidates the key, and a read after the projection has handled an event
/// never sees an older view. (A load that raced with an invalidation returns what it read,
/// as any read concurrent with a write may, but is not cached.)
///
/// ```
/// use strata::ViewCache;
/// let cache: ViewCache<String, u64> = ViewCache::new(10_000);
/// let v = cache.get_or_load(&"account-1".to_string(), |_| 42); // miss: loaded from the read model
/// assert_eq!(cache.get_or_load(&"account-1".to_string(), |_| unreachable!()), v); // hit
/// cache.invalidate(&"account-1".to_string()); // the projection handled an event for it
/// assert_eq!(cache.get_or_load(&"account-1".to_string(), |_| 43), 43);
/// assert_eq!(cache.stats().hits, 1);
/// ```
pub struct ViewCache<K, V> {
    cache: quick_cache::sync::Cache<K, V>,
    /// Per shard of keys: bumped by each invalidation in it. A load inserts its result only
    /// if its shard saw no invalidation meanwhile (checked and inserted under the lock).
    generations: Vec<Mutex<u64>>,
    hasher: std::collections::hash_map::RandomState,
    /// Striped by thread: one shared counter would be a contended cache line on every hit.
    hits: Vec<Padded>,
    misses: Vec<Padded>,
}

impl<K, V> std::fmt::Debug for ViewCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewCache").finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> ViewCache<K, V> {
    /// A cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> ViewCache<K, V> {
        ViewCache {
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
            generations: (0..SHARDS).map(|_| Mutex::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            hits: (0..SHARDS).map(|_| Padded::default()).collect(),
            misses: (0..SHARDS).map(|_| Padded::default()).collect(),
        }
    }

    fn index(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn count(counters: &[Padded]) {
        if let Some(c) = counters.get(stripe()) {
            c.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn shard(&self, key: &K) -> &Mutex<u64> {
        &self.generations[self.index(key)]
    }

    /// The view of `key`: from memory, or from `load` (which reads the projection's store).
    pub fn get_or_load(&self, key: &K, load: impl FnOnce(&K) -> V) -> V {
        if let Some(v) = self.cache.get(key) {
            Self::count(&self.hits);
            return v;
        }
        Self::count(&self.misses);
        let shard = self.shard(key);
        let seen = *shard.lock();
        let v = load(key);
        let generation = shard.lock();
        if *generation == seen {
            self.cache.insert(key.clone(), v.clone());
        }
        v
    }

    /// Like [`ViewCache::get_or_load`] with a loader that can fail (nothing is cached then).
    pub fn try_get_or_load<E>(&self, key: &K, load: impl FnOnce(&K) -> Result<V, E>) -> Result<V, E> {
        if let Some(v) = self.cache.get(key) {
            Self::count(&self.hits);
            return Ok(v);
        }
        Self::count(&self.misses);
        let shard = self.shard(key);
        let seen = *shard.lock();
        let v = load(key)?;
        let generation = shard.lock();
        if *generation == seen {
            self.cache.insert(key.clone(), v.clone());
        }
        Ok(v)
    }

    /// Drops the view of `key`: call it after the projection's store reflects an event for
    /// the key.
    pub fn invalidate(&self, key: &K) {
        let mut generation = self.shard(key).lock();
        *generation += 1;
        self.cache.remove(key);
    }

    /// Replaces the view of `key` (when the projection has the new view at hand). As with
    /// [`ViewCache::invalidate`], write the projection's store first: a load that starts
    /// after this call must find the new view there.
    pub fn update(&self, key: &K, view: V) {
        let mut generation = self.shard(key).lock();
        *generation += 1;
        self.cache.insert(key.clone(), view);
    }

    /// Drops every view (after a projection's rebuild is swapped in, say: its views come
    /// from another store). Loads in flight are not cached.
    pub fn clear(&self) {
        let guards: Vec<_> = self.generations.iter().map(|g| g.lock()).collect();
        for mut g in guards {
            *g += 1;
        }
        self.cache.clear();
    }

    /// Hits, misses and size.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.iter().map(|c| c.0.load(Ordering::Relaxed)).sum(),
            misses: self.misses.iter().map(|c| c.0.load(Ordering::Relaxed)).sum(),
            len: self.cache.len() as u64,
        }
    }
}
