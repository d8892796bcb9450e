//! Idempotent appends: a partition writer's memory of the event ids of its last appends
//! (FORMAT.md §7.7).
//!
//! **The window** is the last `appends` appends of the partition (every append counts, with
//! ids or without), holding at most `max_ids` ids: past either bound the oldest appends leave
//! it. Only an append whose events *all* carry ids is remembered. A retry of one that left the
//! window is an ordinary append, and its expected version decides.
//!
//! **Memory.** Per remembered id: 8 bytes in `keys` and one `u64 → u64` slot of the hash map
//! (16 bytes at a load of at most 7/8, plus a control byte): about 27–45 bytes depending on
//! how full the table is; per append in the window, 16 bytes in `appends`. So the default
//! window (10,000 appends) of one-event appends holds about 0.5 MB, and a full `max_ids`
//! (1,000,000) about 45 MB, per partition.
//!
//! **Lookup.** An id is keyed by the XOR of its two 64-bit halves. A key only proposes a
//! position: the writer confirms every match by reading the event back from the log
//! (`Writer::confirm`), so a colliding key can never turn a new append into a "duplicate".
//! On a collision the map keeps the newer id's position, and removing an old append takes a
//! key out only if it still points at that append's event.
//!
//! **Rebuilt lazily**: not at open (it would cost open time in stores that never use ids),
//! but on the writer thread, before the first append carrying ids after open, by reading the
//! window's batches back from the hot segments, newest first ([`Dedup::rebuild`]). Appends in
//! archived segments are not read back: compaction archives only segments far older than any
//! sensible window.

use std::collections::VecDeque;
use std::ops::ControlFlow;

use hashbrown::HashMap;

use crate::error::Result;
use crate::event::EventId;
use crate::log::partition::Partition;

/// Where the ids of one remembered append begin in `keys`, and how many there are.
#[derive(Debug, Clone, Copy)]
struct Remembered {
    first_position: u64,
    /// Number of ids (0 for an append without ids: it only takes a place in the window).
    count: u32,
}

/// The dedup state of one partition, owned by its writer.
pub(crate) struct Dedup {
    appends_bound: usize,
    ids_bound: usize,
    /// The window's appends, oldest first (positions increasing).
    appends: VecDeque<Remembered>,
    /// The ids of the remembered appends, in the same order.
    keys: VecDeque<u64>,
    /// Key → position of the event with that id.
    map: HashMap<u64, u64>,
}

/// The 64-bit key of an id.
pub(crate) fn key(id: &EventId) -> u64 {
    let (hi, lo) = id.as_bytes().split_at(8);
    let half = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    half(hi) ^ half(lo)
}

impl Dedup {
    pub fn new(appends: usize, max_ids: usize) -> Dedup {
        Dedup {
            appends_bound: appends,
            ids_bound: max_ids,
            appends: VecDeque::new(),
            keys: VecDeque::new(),
            map: HashMap::new(),
        }
    }

    /// Whether idempotency is switched off (a window of 0 appends).
    pub fn disabled(&self) -> bool {
        self.appends_bound == 0
    }

    /// Remembers an append of `count` events from `first_position`; `ids` are its events' ids
    /// if every event has one.
    pub fn push(&mut self, first_position: u64, ids: Option<&[EventId]>) {
        if self.disabled() {
            return;
        }
        let ids = ids.unwrap_or(&[]);
        for (i, id) in ids.iter().enumerate() {
            let k = key(id);
            self.keys.push_back(k);
            self.map.insert(k, first_position + i as u64);
        }
        self.appends.push_back(Remembered { first_position, count: ids.len() as u32 });
        while self.appends.len() > self.appends_bound || self.keys.len() > self.ids_bound {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        let Some(old) = self.appends.pop_front() else { return };
        for i in 0..u64::from(old.count) {
            let Some(k) = self.keys.pop_front() else { break };
            if self.map.get(&k) == Some(&(old.first_position + i)) {
                self.map.remove(&k);
            }
        }
    }

    /// The position the map proposes for `id` (to be confirmed against the log).
    pub fn position_of(&self, id: &EventId) -> Option<u64> {
        self.map.get(&key(id)).copied()
    }

    /// Whether an append of `count` ids starting at `first_position` is in the window.
    pub fn holds_append(&self, first_position: u64, count: usize) -> bool {
        let i = self.appends.partition_point(|a| a.first_position < first_position);
        self.appends.get(i).is_some_and(|a| a.first_position == first_position && a.count as usize == count)
    }

    /// Forgets everything (after a poisoning cut appends it remembered).
    pub fn clear(&mut self) {
        self.appends.clear();
        self.keys.clear();
        self.map.clear();
    }

    /// Fills the window from the partition's log: the last `appends` batches of its hot
    /// segments, read newest segment first until enough are found. Called with nothing
    /// remembered yet, before the writer appends again.
    pub fn rebuild(&mut self, part: &Partition) -> Result<()> {
        self.clear();
        if self.disabled() {
            return Ok(());
        }
        let mut found: Vec<Vec<(u64, Option<Vec<EventId>>)>> = Vec::new();
        let mut total = 0usize;
        for (seg, end) in part.snapshot().into_iter().rev() {
            if seg.is_archive() || total >= self.appends_bound {
                break;
            }
            let mut batches = Vec::new();
            part.visit_from(seg.base, (end - seg.base) as usize, &mut |b, _, _| {
                let ids: Option<Vec<EventId>> = b.events().map(|e| e.id).collect();
                batches.push((b.base_position, ids));
                ControlFlow::Continue(())
            })?;
            total += batches.len();
            found.push(batches);
        }
        let all: Vec<_> = found.into_iter().rev().flatten().collect();
        let skip = all.len().saturating_sub(self.appends_bound);
        for (position, ids) in all.into_iter().skip(skip) {
            self.push(position, ids.as_deref());
        }
        Ok(())
    }

    /// Ids remembered (for tests and stats).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> EventId {
        EventId::from_u128(n)
    }

    #[test]
    fn window_evicts_oldest_by_appends_and_ids() {
        let mut d = Dedup::new(3, 5);
        d.push(0, Some(&[id(1), id(2)]));
        d.push(2, None);
        d.push(3, Some(&[id(3)]));
        assert_eq!(d.position_of(&id(2)), Some(1));
        assert!(d.holds_append(0, 2) && d.holds_append(3, 1) && !d.holds_append(0, 1));
        d.push(4, Some(&[id(4)]));
        // Four appends: the first left the window.
        assert_eq!(d.position_of(&id(1)), None);
        assert_eq!(d.position_of(&id(3)), Some(3));
        d.push(5, Some(&[id(5), id(6), id(7), id(8)]));
        // Four appends again (the one at 2 leaves), and six ids would pass the bound of five:
        // the one at 3 leaves too.
        assert_eq!(d.len(), 5);
        assert_eq!(d.position_of(&id(3)), None);
        assert_eq!(d.position_of(&id(4)), Some(4));
        assert_eq!(d.position_of(&id(8)), Some(8));
    }

    #[test]
    fn a_colliding_key_is_removed_only_with_its_own_append() {
        let mut d = Dedup::new(2, 100);
        let a = id(0x0000_0000_0000_0001_0000_0000_0000_0000);
        let b = id(0x0000_0000_0000_0000_0000_0000_0000_0001);
        assert_eq!(key(&a), key(&b));
        d.push(0, Some(&[a]));
        d.push(1, Some(&[b]));
        d.push(2, None);
        // The first append left; the key still points at the second's event.
        assert_eq!(d.position_of(&b), Some(1));
    }

    #[test]
    fn a_window_of_zero_remembers_nothing() {
        let mut d = Dedup::new(0, 100);
        d.push(0, Some(&[id(1)]));
        assert!(d.disabled());
        assert_eq!(d.position_of(&id(1)), None);
    }
}
