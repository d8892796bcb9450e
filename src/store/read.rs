//! Reading: a stream's events by version (forward, backward, its last version), a
//! partition's events by position (copied out, borrowed in a scan, or paged by an iterator),
//! and the streams a store holds. Every read follows the visibility rule: an event is visible
//! once its partition's head covers it (`log::read`).
//!
//! For subscribers that read partitions themselves across a grow, `Store::copied_until(b)` is
//! the first position of `b` that is not a copy (`live_from` for a partition a grow added, 0
//! otherwise), and `Store::cutover_heads(b)` is the `cut` of the grow that added `b`, one
//! position per partition the store had before it (empty otherwise). Both answer from the
//! manifest in memory.

use std::ops::ControlFlow;

use crate::error::{Error, Result};
use crate::event::{EventView, RecordedEvent};

use super::{Local, Store};

impl Local {
    pub(crate) fn read_stream(&self, stream: &str, from_version: u64, max_count: usize) -> Result<Vec<RecordedEvent>> {
        let (hash, p) = self.route(stream)?;
        p.read_stream(stream, hash, from_version, max_count)
    }

    pub(crate) fn visit_stream(
        &self,
        stream: &str,
        from_version: u64,
        mut f: impl FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<usize> {
        let (hash, p) = self.route(stream)?;
        p.visit_visible_events(stream, hash, from_version, usize::MAX, &mut f)
    }

    pub(crate) fn read_stream_backward(
        &self,
        stream: &str,
        from_version: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let (hash, p) = self.route(stream)?;
        p.read_stream_back(stream, hash, from_version.unwrap_or(u64::MAX), max_count)
    }

    pub(crate) fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        let (hash, p) = self.route(stream)?;
        p.last_version(stream, hash)
    }

    pub(crate) fn read_partition(
        &self,
        partition: u32,
        from_position: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.partition(partition)?.read_from(from_position, max_count)
    }

    pub(crate) fn scan_partition(
        &self,
        partition: u32,
        from_position: u64,
        max_count: usize,
        mut f: impl FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<usize> {
        self.partition(partition)?.visit_events(from_position, max_count, &mut f)
    }

    pub(crate) fn stream_count(&self) -> Result<u64> {
        let mut n = 0;
        for p in 0..self.partition_count() {
            n += self.partition_streams(p)?.len() as u64;
        }
        Ok(n)
    }

    /// The streams listed in partition `p`: those living there now (a stream a grow moved
    /// away left history here, listed where it lives).
    pub(crate) fn partition_streams(&self, p: u32) -> Result<Vec<String>> {
        self.partition(p)?.stream_ids(&|s| self.partition_of(s) == p)
    }

    pub(crate) fn copied_until(&self, partition: u32) -> Result<u64> {
        self.partition(partition)?;
        Ok(self.partition_origin(partition).map_or(0, |(live_from, _)| live_from))
    }

    pub(crate) fn cutover_heads(&self, partition: u32) -> Result<Vec<u64>> {
        self.partition(partition)?;
        Ok(self.partition_origin(partition).map(|(_, cut)| cut).unwrap_or_default())
    }

    pub(crate) fn head(&self, partition: u32) -> Result<u64> {
        Ok(self.partition(partition)?.head())
    }

    pub(crate) fn poisoned(&self, partition: u32) -> Result<Option<String>> {
        Ok(self.partition(partition)?.poison.lock().clone())
    }
}

/// Events read per page by the iterators.
const PAGE: usize = 256;

/// The streams of a store (see [`Store::streams`]).
#[derive(Debug)]
pub struct Streams<'a> {
    store: &'a Store,
    next_partition: u32,
    ids: std::vec::IntoIter<String>,
    failed: bool,
}

impl Iterator for Streams<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        loop {
            if let Some(id) = self.ids.next() {
                return Some(Ok(id));
            }
            if self.failed || self.next_partition >= self.store.partition_count() {
                return None;
            }
            let p = self.next_partition;
            self.next_partition += 1;
            match self.store.partition_streams(p) {
                Ok(ids) => self.ids = ids.into_iter(),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The paging both event iterators share: events up to `end` (exclusive, by the key each
/// iterator pages by), fetched a page at a time; an error ends the iteration after being
/// returned once.
#[derive(Debug)]
struct Pages {
    next: u64,
    end: u64,
    page: std::vec::IntoIter<RecordedEvent>,
    failed: Option<Error>,
}

impl Pages {
    fn new(next: u64, end: Result<u64>) -> Pages {
        let (end, failed) = match end {
            Ok(end) => (end, None),
            Err(e) => (0, Some(e)),
        };
        Pages { next, end, page: Vec::new().into_iter(), failed }
    }

    /// The next event: from the page, or from a new page `fetch(next, end)` gives (events
    /// before `end` by `key`, in order; none left: the end).
    fn next(
        &mut self,
        fetch: impl FnOnce(u64, u64) -> Result<Vec<RecordedEvent>>,
        key: fn(&RecordedEvent) -> u64,
    ) -> Option<Result<RecordedEvent>> {
        if let Some(e) = self.failed.take() {
            self.end = 0;
            return Some(Err(e));
        }
        if let Some(e) = self.page.next() {
            return Some(Ok(e));
        }
        if self.next >= self.end {
            return None;
        }
        match fetch(self.next, self.end) {
            Ok(mut page) => {
                let end = self.end;
                page.retain(|e| key(e) < end);
                let Some(last) = page.last() else {
                    // Nothing left before the end (a partition's last positions erased).
                    self.next = self.end;
                    return None;
                };
                self.next = key(last) + 1;
                self.page = page.into_iter();
                self.page.next().map(Ok)
            }
            Err(e) => {
                self.end = 0;
                Some(Err(e))
            }
        }
    }
}

/// The events of one stream (see [`Store::iter_stream`]).
#[derive(Debug)]
pub struct StreamEvents<'a> {
    store: &'a Store,
    stream: String,
    /// By version, up to one past the last version when the iterator was made.
    pages: Pages,
}

impl Iterator for StreamEvents<'_> {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Result<RecordedEvent>> {
        let (store, stream) = (self.store, &self.stream);
        let fetch = |next: u64, end: u64| store.read_stream(stream, next, (end - next).min(PAGE as u64) as usize);
        self.pages.next(fetch, |e| e.version)
    }
}

/// The events of one partition (see [`Store::iter_partition`]).
#[derive(Debug)]
pub struct PartitionEvents<'a> {
    store: &'a Store,
    partition: u32,
    /// By position, up to the head when the iterator was made.
    pages: Pages,
}

impl Iterator for PartitionEvents<'_> {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Result<RecordedEvent>> {
        let (store, partition) = (self.store, self.partition);
        self.pages.next(|next, _| store.read_partition(partition, next, PAGE), |e| e.position)
    }
}

impl Store {
    /// Up to `max_count` events of `stream` from version `from_version` on, oldest first.
    /// Events the stream's metadata hides ([`Store::set_stream_metadata`],
    /// [`Store::soft_delete`]) are left out.
    pub fn read_stream(&self, stream: &str, from_version: u64, max_count: usize) -> Result<Vec<RecordedEvent>> {
        dispatch!(self, read_stream(stream, from_version, max_count))
    }

    /// Hands `f` the events of `stream` from version `from_version` on, oldest first, borrowed
    /// from the log instead of copied out: what [`Store::read_stream`] returns, with nothing
    /// allocated per event. The same events are left out (a deleted stream is an error; what
    /// the stream's metadata or a soft delete hides is not shown), and an event is shown only
    /// once its partition's head covers it. `f` stops the read by returning
    /// `ControlFlow::Break(())`. Returns how many events `f` was given.
    ///
    /// ```
    /// # use std::ops::ControlFlow;
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// let events: Vec<_> = (1..=5).map(|i| EventData::new("Deposited", i.to_string())).collect();
    /// store.append("account-9", ExpectedVersion::NoStream, &events)?;
    /// // The balance from version 1 on, stopping after three events.
    /// let mut balance = 0;
    /// let seen = store.visit_stream("account-9", 1, |e| {
    ///     balance += std::str::from_utf8(e.payload).unwrap().parse::<u64>().unwrap();
    ///     if e.version == 3 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    /// })?;
    /// assert_eq!((seen, balance), (3, 2 + 3 + 4));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn visit_stream(
        &self,
        stream: &str,
        from_version: u64,
        f: impl FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<usize> {
        dispatch!(self, visit_stream(stream, from_version, f))
    }

    /// Up to `max_count` events of `stream` from version `from_version` on that were appended
    /// at or before `until`, oldest first: the stream as it was then (a stream's timestamps
    /// never decrease, so this is a prefix of what [`Store::read_stream`] returns).
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// store.append("doc-1", ExpectedVersion::NoStream, &[EventData::new("Drafted", "")])?;
    /// let then = SystemTime::now();
    /// # std::thread::sleep(std::time::Duration::from_millis(2));
    /// store.append("doc-1", ExpectedVersion::Exact(0), &[EventData::new("Published", "")])?;
    /// assert_eq!(store.read_stream_until("doc-1", 0, then, 10)?.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_stream_until(
        &self,
        stream: &str,
        from_version: u64,
        until: std::time::SystemTime,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let ns = until.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let until = u64::try_from(ns).unwrap_or(u64::MAX);
        let mut events = self.read_stream(stream, from_version, max_count)?;
        if let Some(k) = events.iter().position(|e| e.timestamp_nanos > until) {
            events.truncate(k);
        }
        Ok(events)
    }

    /// Up to `max_count` events of `stream` from version `from_version` (`None`: the last
    /// event) back towards version 0, newest first.
    pub fn read_stream_backward(
        &self,
        stream: &str,
        from_version: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        dispatch!(self, read_stream_backward(stream, from_version, max_count))
    }

    /// The version of the last durable event of `stream`, or `None` if it has none.
    pub fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        dispatch!(self, stream_version(stream))
    }

    /// Up to `max_count` events of partition `partition` from position `from_position` on, in
    /// position order: the basis of subscriptions and projections. In a partition that
    /// [`Store::grow_partitions`] added, the positions below [`Store::copied_until`] hold copies
    /// of moved streams' history, which a reader following every partition has already seen
    /// in the partitions they came from.
    pub fn read_partition(&self, partition: u32, from_position: u64, max_count: usize) -> Result<Vec<RecordedEvent>> {
        dispatch!(self, read_partition(partition, from_position, max_count))
    }

    /// Like [`Store::read_partition`], but hands each event to `f` borrowed from the log
    /// instead of copying it out, so a scan allocates nothing per event. `f` stops the scan by
    /// returning `ControlFlow::Break(())`. Returns how many events `f` was given.
    ///
    /// ```
    /// # use std::ops::ControlFlow;
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true).partitions(1))?;
    /// # store.append("cart-1", ExpectedVersion::Any, &[EventData::new("Added", b"12".to_vec())])?;
    /// let mut bytes = 0;
    /// let seen = store.scan_partition(0, 0, usize::MAX, |e| {
    ///     bytes += e.payload.len();
    ///     ControlFlow::Continue(())
    /// })?;
    /// assert_eq!((seen, bytes), (1, 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn scan_partition(
        &self,
        partition: u32,
        from_position: u64,
        max_count: usize,
        f: impl FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<usize> {
        dispatch!(self, scan_partition(partition, from_position, max_count, f))
    }

    /// Every stream that has events and is not deleted, each once: partition by partition,
    /// and by id within a partition. The iterator holds one partition's ids at a time; it
    /// reads every segment's index (and decompresses the archive blocks where streams begin),
    /// so it costs about a full read of the indexes, not of the events.
    ///
    /// ```
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// for id in ["order-1", "order-2", "order-1"] {
    ///     store.append(id, ExpectedVersion::Any, &[EventData::new("Touched", "")])?;
    /// }
    /// let mut ids = store.streams().collect::<Result<Vec<_>, _>>()?;
    /// ids.sort();
    /// assert_eq!(ids, ["order-1", "order-2"]);
    /// assert_eq!(store.stream_count()?, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn streams(&self) -> Streams<'_> {
        Streams { store: self, next_partition: 0, ids: Vec::new().into_iter(), failed: false }
    }

    /// How many streams [`Store::streams`] lists.
    pub fn stream_count(&self) -> Result<u64> {
        dispatch!(self, stream_count())
    }

    /// The events of `stream` from version `from_version` up to its last event as of this
    /// call, oldest first, read a page at a time. An error ends the iteration (after being
    /// returned once).
    ///
    /// ```
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// let events: Vec<_> = (0..1000).map(|i| EventData::new("Tick", i.to_string())).collect();
    /// store.append("clock", ExpectedVersion::NoStream, &events)?;
    /// let total: usize = store.iter_stream("clock", 10).map(|e| e.map(|e| e.payload.len())).sum::<Result<_, _>>()?;
    /// assert_eq!(total, (10..1000).map(|i: i32| i.to_string().len()).sum::<usize>());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter_stream(&self, stream: &str, from_version: u64) -> StreamEvents<'_> {
        let end = self.stream_version(stream).map(|last| last.map_or(0, |v| v + 1));
        StreamEvents { store: self, stream: stream.to_owned(), pages: Pages::new(from_version, end) }
    }

    /// The events of `partition` from position `from_position` up to its head as of this call,
    /// in position order, read a page at a time (see [`Store::read_partition`] for the
    /// positions a grow's copies and a compaction's erasures leave). An error ends the
    /// iteration (after being returned once).
    pub fn iter_partition(&self, partition: u32, from_position: u64) -> PartitionEvents<'_> {
        PartitionEvents { store: self, partition, pages: Pages::new(from_position, self.head(partition)) }
    }

    /// The first position of `partition` that is not a copy: 0, except in a partition that
    /// [`Store::grow_partitions`] added, which begins with copies of the history of the
    /// streams moved into it. A subscriber that reads every partition itself (rather than
    /// through a [`ProjectionEngine`](crate::ProjectionEngine)) starts such a partition here,
    /// and, to keep each stream in order, reads its own events only once it has read every
    /// older partition up to [`Store::cutover_heads`].
    pub fn copied_until(&self, partition: u32) -> Result<u64> {
        dispatch!(self, copied_until(partition))
    }

    /// For a partition [`Store::grow_partitions`] added: the heads the partitions before it
    /// had when the grow cut over (empty for a partition the store was created with).
    pub fn cutover_heads(&self, partition: u32) -> Result<Vec<u64>> {
        dispatch!(self, cutover_heads(partition))
    }

    /// One past the last durable position of `partition` (its number of events).
    pub fn head(&self, partition: u32) -> Result<u64> {
        dispatch!(self, head(partition))
    }

    /// Why `partition` stopped accepting appends, if it has (see [`Error::Poisoned`]).
    pub fn poisoned(&self, partition: u32) -> Result<Option<String>> {
        dispatch!(self, poisoned(partition))
    }

    /// The streams listed in partition `p`.
    fn partition_streams(&self, p: u32) -> Result<Vec<String>> {
        dispatch!(self, partition_streams(p))
    }
}
