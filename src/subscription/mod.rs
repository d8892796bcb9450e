//! Subscriptions: following a store's partitions, catch-up then live, through the log seam.
//!
//! A [`Subscription`] is pulled, never pushed: each call reads from the log what lies between
//! its [`Cursor`] and the durable heads, so a slow subscriber only falls behind (its
//! [`Subscription::lag`] grows) and is never cut off, and catching up and following live are
//! the same read, with no switch at which an event could be skipped or repeated. Between calls
//! a subscription holds its cursor (8 bytes per partition), its filter and, for each grown
//! partition, the grow's cut; a call holds at most the events it returns (`max`), and the
//! borrowing [`Subscription::visit`] none at all.
//!
//! **What is delivered.** Only durable events (under `Durability::Buffered`, those the last
//! background sync covered), and only what reads of their streams show: events of deleted
//! streams, and events that stream metadata hides (retention rules, soft deletes), are passed
//! over like events the filter rejects. The cursor moves past every event judged, delivered
//! or not, so a restart from a stored cursor re-reads nothing it already judged.
//!
//! **Order.** Within a partition, position order; so, within a stream, version order.
//! [`Store::subscribe_all`] serves partitions in turn: each call starts at the next partition
//! and gives each partition with events an equal share of `max`, then goes round again while
//! there is room, so no partition waits behind another's backlog. There is no order between
//! partitions beyond that. Across a grow ([`Store::grow_partitions`]) each event is delivered
//! once, in stream order: a partition the grow added is read from its first own event
//! ([`Store::copied_until`]; the copies before it were delivered where they came from), and
//! only once the cursor has passed, in every older partition, the head it had at the cutover
//! ([`Store::cutover_heads`]); that is the projection engine's gate (FORMAT.md §13.2).
//!
//! **Cursors** are values: [`Cursor::to_bytes`] (FORMAT.md §20, versioned and checksummed)
//! to store beside what the subscriber builds, [`Cursor::from_bytes`] to resume. A cursor
//! saved before a grow resumes after it: the partitions it lacks start at their first own
//! event.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::event::{EventView, RecordedEvent};
use crate::format::cursor;
use crate::store::Store;
use crate::store::seam::{Log, Origin, Select, Visible};

/// Where a subscription stands: for each partition, the next position to read. Store it
/// (as [`Cursor::to_bytes`]) with what the subscriber did with the events before it, and
/// resume from it.
///
/// ```
/// use strata::subscription::Cursor;
/// let c = Cursor::from_positions(vec![10, 0, 7]);
/// let back = Cursor::from_bytes(&c.to_bytes())?;
/// assert_eq!(back, c);
/// assert_eq!(back.position(2), 7);
/// assert_eq!(back.position(5), 0); // a partition it does not know: from its start
/// # Ok::<(), strata::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Cursor {
    positions: Vec<u64>,
}

impl Cursor {
    /// Every partition from its start.
    pub fn start() -> Cursor {
        Cursor::default()
    }

    /// A cursor at these positions, one per partition (partitions past the end: their start).
    pub fn from_positions(positions: Vec<u64>) -> Cursor {
        Cursor { positions }
    }

    /// The next position to read in `partition`.
    pub fn position(&self, partition: u32) -> u64 {
        self.positions.get(partition as usize).copied().unwrap_or(0)
    }

    /// The positions, one per partition.
    pub fn positions(&self) -> &[u64] {
        &self.positions
    }

    /// The cursor as bytes (FORMAT.md §20).
    pub fn to_bytes(&self) -> Vec<u8> {
        cursor::encode(&self.positions)
    }

    /// A cursor from [`Cursor::to_bytes`]; [`Error::InvalidCursor`] for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Result<Cursor> {
        cursor::decode(bytes).map(Cursor::from_positions).map_err(|reason| Error::InvalidCursor { reason })
    }
}

/// Which events a subscription (or a category or event-type read) delivers.
///
/// ```
/// use strata::subscription::Filter;
/// let orders = Filter::category("order"); // order-1, order-2, ... (the part before the first '-')
/// let placed = Filter::event_type("OrderPlaced");
/// let big = Filter::predicate(|e| e.payload.len() > 1000);
/// # let _ = (orders, placed, big);
/// ```
#[derive(Clone)]
pub struct Filter(Kind);

#[derive(Clone)]
enum Kind {
    All,
    StreamPrefix(String),
    Category { name: String, separator: char },
    EventTypes(Vec<String>),
    Predicate(Arc<dyn Fn(&EventView<'_>) -> bool + Send + Sync>),
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::All => f.write_str("Filter::all()"),
            Kind::StreamPrefix(p) => write!(f, "Filter::stream_prefix({p:?})"),
            Kind::Category { name, separator } => write!(f, "Filter::category_with({name:?}, {separator:?})"),
            Kind::EventTypes(t) => write!(f, "Filter::event_types({t:?})"),
            Kind::Predicate(_) => f.write_str("Filter::predicate(..)"),
        }
    }
}

impl Default for Filter {
    fn default() -> Filter {
        Filter::all()
    }
}

impl Filter {
    /// Every event.
    pub fn all() -> Filter {
        Filter(Kind::All)
    }

    /// Events of streams whose id starts with `prefix`.
    pub fn stream_prefix(prefix: impl Into<String>) -> Filter {
        Filter(Kind::StreamPrefix(prefix.into()))
    }

    /// Events of the streams of category `name`: those whose id, up to its first `-`, is
    /// `name` (KurrentDB's `$ce-name`). A stream id without a `-` is in no category.
    pub fn category(name: impl Into<String>) -> Filter {
        Filter::category_with(name, '-')
    }

    /// [`Filter::category`] with another separator.
    pub fn category_with(name: impl Into<String>, separator: char) -> Filter {
        Filter(Kind::Category { name: name.into(), separator })
    }

    /// Events of type `event_type`.
    pub fn event_type(event_type: impl Into<String>) -> Filter {
        Filter(Kind::EventTypes(vec![event_type.into()]))
    }

    /// Events of any of these types.
    pub fn event_types<S: Into<String>>(types: impl IntoIterator<Item = S>) -> Filter {
        Filter(Kind::EventTypes(types.into_iter().map(Into::into).collect()))
    }

    /// The events of a [`DomainEvent`](crate::typed::DomainEvent) type (feature `serde`): the
    /// types of its variants, and those its upcasters start from, served from the log's
    /// indexes like [`Filter::event_types`]. A type whose names serde does not tell (an
    /// untagged enum) is filtered by its [`handles`](crate::typed::DomainEvent::handles).
    #[cfg(feature = "serde")]
    pub fn domain<E: crate::codec::DomainEvent>() -> Filter {
        match crate::codec::event_types::<E>() {
            Some(types) => Filter(Kind::EventTypes(types)),
            None => Filter::predicate(|e| E::handles(e.event_type)),
        }
    }

    /// Events `keep` keeps.
    pub fn predicate(keep: impl Fn(&EventView<'_>) -> bool + Send + Sync + 'static) -> Filter {
        Filter(Kind::Predicate(Arc::new(keep)))
    }

    /// Whether the filter can be served from the log's indexes: it judges events by their
    /// stream id alone, or by their type.
    fn selective(&self) -> bool {
        matches!(self.0, Kind::StreamPrefix(_) | Kind::Category { .. } | Kind::EventTypes(_))
    }

    fn keeps_stream(&self, stream: &str) -> bool {
        match &self.0 {
            Kind::StreamPrefix(p) => stream.starts_with(p.as_str()),
            Kind::Category { name, separator } => {
                stream.split_once(*separator).is_some_and(|(category, _)| category == name)
            }
            _ => true,
        }
    }

    /// Whether the filter keeps `e`.
    pub fn matches(&self, e: &EventView<'_>) -> bool {
        match &self.0 {
            Kind::All => true,
            Kind::StreamPrefix(_) | Kind::Category { .. } => self.keeps_stream(e.stream_id),
            Kind::EventTypes(t) => t.iter().any(|t| t == e.event_type),
            Kind::Predicate(keep) => keep(e),
        }
    }
}

/// Most events one partition scan looks at before the next partition's turn.
const SCAN_CHUNK: usize = 16 * 1024;
/// Most events one call looks at (a filter that keeps few of them ends a call here, with what
/// it found, and the next call goes on).
const SCAN_PER_CALL: usize = 1 << 20;

/// A subscription: see the [module docs](self).
pub struct Subscription<'a> {
    log: &'a dyn Log,
    /// `subscribe_partition`: the one partition followed.
    only: Option<u32>,
    positions: Vec<u64>,
    /// For each partition, where a grow added it from (`None`: created with the store), and
    /// whether its gate is known open.
    origins: Vec<(Option<Origin>, bool)>,
    filter: Filter,
    turn: usize,
    /// Streams whose visibility this call looked up.
    visibility: Vec<(String, Visible)>,
}

impl std::fmt::Debug for Subscription<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("only", &self.only)
            .field("positions", &self.positions)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Follows every partition from `from` (see [`Subscription`] and the
    /// [module docs](crate::subscription) for order and guarantees), delivering what `filter`
    /// keeps.
    ///
    /// ```
    /// # use std::time::Duration;
    /// use strata::subscription::{Cursor, Filter};
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// store.append("order-1", ExpectedVersion::Any, &[EventData::new("OrderPlaced", "{}")])?;
    /// store.append("user-1", ExpectedVersion::Any, &[EventData::new("Registered", "{}")])?;
    /// let mut sub = store.subscribe_all(Cursor::start(), Filter::category("order"));
    /// let events = sub.next_batch(100, Duration::from_secs(1))?;
    /// assert_eq!(events.len(), 1);
    /// let saved = sub.cursor().to_bytes(); // store it; resume with Cursor::from_bytes
    /// # let _ = saved;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe_all(&self, from: Cursor, filter: Filter) -> Subscription<'_> {
        Subscription::new(self, None, from.positions, filter)
    }

    /// Follows partition `partition` alone from position `from` (at its first own event if
    /// a grow added it: the copies before are of events other partitions hold).
    pub fn subscribe_partition(&self, partition: u32, from: u64, filter: Filter) -> Result<Subscription<'_>> {
        let count = Log::partition_count(self);
        if partition >= count {
            return Err(Error::NoSuchPartition { partition, count });
        }
        let mut positions = vec![0; partition as usize + 1];
        if let Some(p) = positions.last_mut() {
            *p = from;
        }
        Ok(Subscription::new(self, Some(partition), positions, filter))
    }

    /// Up to `max` events of category `category` (see [`Filter::category`]) after `from`, in
    /// log order (partition by partition in turn, as [`Store::subscribe_all`]), and the
    /// cursor to read on from. It reads every partition's log from the cursor: its cost is
    /// that of a scan of what it passes over (BENCHMARKS.md compares it with a full scan).
    pub fn read_category(&self, category: &str, from: &Cursor, max: usize) -> Result<(Vec<RecordedEvent>, Cursor)> {
        let mut sub = self.subscribe_all(from.clone(), Filter::category(category));
        let events = sub.read_available(max)?;
        Ok((events, sub.cursor()))
    }

    /// [`Store::read_category`] for the events of type `event_type`.
    pub fn read_event_type(&self, event_type: &str, from: &Cursor, max: usize) -> Result<(Vec<RecordedEvent>, Cursor)> {
        let mut sub = self.subscribe_all(from.clone(), Filter::event_type(event_type));
        let events = sub.read_available(max)?;
        Ok((events, sub.cursor()))
    }

    /// A cursor at every partition's durable head: a subscription from it sees only what is
    /// appended from now on.
    pub fn head_cursor(&self) -> Result<Cursor> {
        let n = Log::partition_count(self);
        let positions = (0..n).map(|p| self.heads(p).map(|h| h.durable)).collect::<Result<_>>()?;
        Ok(Cursor::from_positions(positions))
    }
}

impl<'a> Subscription<'a> {
    /// A subscription over any log.
    pub(crate) fn new(log: &'a dyn Log, only: Option<u32>, positions: Vec<u64>, filter: Filter) -> Subscription<'a> {
        Subscription { log, only, positions, origins: Vec::new(), filter, turn: 0, visibility: Vec::new() }
    }

    /// Where the subscription stands: past every event delivered or judged and passed over.
    pub fn cursor(&self) -> Cursor {
        Cursor::from_positions(self.positions.clone())
    }

    /// How many durable events lie between the cursor and the heads (passed over or not).
    pub fn lag(&self) -> Result<u64> {
        let mut lag = 0u64;
        for p in self.partitions()? {
            let durable = self.log.heads(p)?.durable;
            lag += durable.saturating_sub(self.positions.get(p as usize).copied().unwrap_or(0));
        }
        Ok(lag)
    }

    /// Up to `max` events available now, copied out (none if the subscriber is caught up).
    pub fn poll(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        let mut out = Vec::new();
        self.pump(max, &mut |e| {
            out.push(e.to_recorded());
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Up to `max` events, waiting up to `timeout` for the first (an empty result: none came).
    pub fn next_batch(&mut self, max: usize, timeout: Duration) -> Result<Vec<RecordedEvent>> {
        let deadline = Instant::now() + timeout.min(Duration::from_secs(86_400 * 365));
        loop {
            let seen = self.log.head_signal().seq();
            let mut out = Vec::new();
            let caught_up = self.pump(max, &mut |e| {
                out.push(e.to_recorded());
                ControlFlow::Continue(())
            })?;
            let now = Instant::now();
            if !out.is_empty() || now >= deadline {
                return Ok(out);
            }
            if caught_up {
                self.log.head_signal().wait(seen, deadline - now);
            }
        }
    }

    /// Hands `f` up to `max` events available now, borrowed from the log (no copy, no
    /// allocation per event); `f` may stop early with `ControlFlow::Break`, and the event it
    /// breaks on counts as delivered. Returns how many events `f` was given.
    pub fn visit(&mut self, max: usize, mut f: impl FnMut(&EventView<'_>) -> ControlFlow<()>) -> Result<usize> {
        let mut n = 0;
        self.pump(max, &mut |e| {
            n += 1;
            f(e)
        })?;
        Ok(n)
    }

    /// Up to `max` events, resolving once at least one is available: [`Subscription::next_batch`]
    /// for async code, on any executor (it is woken by the partition writers).
    pub fn next_async(&mut self, max: usize) -> NextBatch<'_, 'a> {
        NextBatch { sub: self, max }
    }

    /// Everything available now, up to `max`, going on past calls that found nothing the
    /// filter keeps until caught up.
    fn read_available(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        let mut out = Vec::new();
        loop {
            let caught_up = self.pump(max - out.len(), &mut |e| {
                out.push(e.to_recorded());
                ControlFlow::Continue(())
            })?;
            if caught_up || out.len() >= max {
                return Ok(out);
            }
        }
    }

    /// The partitions followed, the cursor extended to new ones (each at its first own event).
    fn partitions(&self) -> Result<Vec<u32>> {
        Ok(match self.only {
            Some(p) => vec![p],
            None => (0..self.log.partition_count()).collect(),
        })
    }

    fn cover(&mut self) {
        let count = match self.only {
            Some(p) => p + 1,
            None => self.log.partition_count(),
        } as usize;
        while self.origins.len() < count {
            let p = self.origins.len() as u32;
            let origin = self.log.origin(p);
            if self.positions.len() <= p as usize {
                self.positions.push(0);
            }
            if let (Some(o), Some(pos)) = (&origin, self.positions.get_mut(p as usize)) {
                *pos = (*pos).max(o.live_from);
            }
            let open = origin.is_none() || self.only.is_some();
            self.origins.push((origin, open));
        }
    }

    /// Whether partition `p` may be read: unless a grow added it and the cursor has not yet
    /// passed the grow's cut in every older partition.
    fn gate_open(&mut self, p: u32) -> bool {
        let Some((origin, open)) = self.origins.get(p as usize) else { return false };
        if *open {
            return true;
        }
        let passed = origin
            .as_ref()
            .is_none_or(|o| o.cut.iter().enumerate().all(|(a, &c)| self.positions.get(a).copied().unwrap_or(0) >= c));
        if passed && let Some(slot) = self.origins.get_mut(p as usize) {
            slot.1 = true;
        }
        passed
    }

    /// Hands `f` up to `max` events from the partitions in turn; returns whether nothing more
    /// can be read now: every partition followed is read up to its durable head, or waits on
    /// a grow's gate that only new durable events in older partitions open (so the caller
    /// waits for the head signal rather than calling again at once).
    fn pump(&mut self, max: usize, f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>) -> Result<bool> {
        if max == 0 {
            return Ok(true);
        }
        self.cover();
        self.visibility.clear();
        let parts = self.partitions()?;
        let hides = self.log.hides_any();
        let n = parts.len().max(1);
        let (mut delivered, mut scanned_total, mut stopped) = (0usize, 0usize, false);
        loop {
            let mut progressed = false;
            let share = (max - delivered).div_ceil(n).max(1);
            for k in 0..parts.len() {
                if delivered >= max || stopped || scanned_total >= SCAN_PER_CALL {
                    break;
                }
                let Some(&p) = parts.get((self.turn + k) % n) else { continue };
                if !self.gate_open(p) {
                    continue;
                }
                let end = self.log.heads(p)?.durable;
                let from = self.positions.get(p as usize).copied().unwrap_or(0);
                if from >= end {
                    continue;
                }
                let want = share.min(max - delivered);
                let (mut last, mut given, mut scanned) = (None, 0usize, 0usize);
                let (filter, log, vis) = (&self.filter, self.log, &mut self.visibility);
                let mut visible = |e: &EventView<'_>| -> Result<bool> {
                    if !hides {
                        return Ok(true);
                    }
                    let v = match vis.iter().find(|(s, _)| s == e.stream_id) {
                        Some((_, v)) => *v,
                        None => {
                            let v = log.durable_visibility(e.stream_id)?;
                            if vis.len() >= 64 {
                                vis.clear();
                            }
                            vis.push((e.stream_id.to_owned(), v));
                            v
                        }
                    };
                    Ok(v.shows(e.version, e.timestamp_nanos))
                };
                let mut failed = None;
                let mut judge = |e: &EventView<'_>| {
                    if e.position >= end {
                        return ControlFlow::Break(());
                    }
                    if filter.matches(e) {
                        match visible(e) {
                            Err(err) => {
                                failed = Some(err);
                                return ControlFlow::Break(());
                            }
                            Ok(true) => {
                                given += 1;
                                if f(e).is_break() {
                                    stopped = true;
                                }
                            }
                            Ok(false) => {}
                        }
                    }
                    last = Some(e.position);
                    scanned += 1;
                    if stopped || given >= want { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
                };
                let keep = |s: &str| filter.keeps_stream(s);
                let select = match &filter.0 {
                    Kind::EventTypes(types) => Select::Types(types),
                    _ => Select::Streams(&keep),
                };
                let next = if filter.selective() {
                    // Only the wanted batches are read; everything before `judged` was looked
                    // at, unless the scan stopped at an event.
                    let (_, judged) = log.scan_streams(p, from, end, SCAN_CHUNK, select, &mut judge)?;
                    if stopped || given >= want || failed.is_some() {
                        last.map_or(from, |l| l + 1)
                    } else {
                        judged.max(last.map_or(from, |l| l + 1))
                    }
                } else {
                    log.scan_partition(p, from, SCAN_CHUNK, &mut judge)?;
                    // Nothing at [from, end) at all: compaction erased those positions.
                    last.map_or(end, |l| l + 1)
                };
                if let Some(err) = failed {
                    return Err(err);
                }
                if let Some(pos) = self.positions.get_mut(p as usize) {
                    *pos = next;
                }
                delivered += given;
                scanned_total += scanned;
                progressed = true;
            }
            self.turn = self.turn.wrapping_add(1);
            if !progressed || delivered >= max || stopped || scanned_total >= SCAN_PER_CALL {
                return Ok(!progressed);
            }
        }
    }
}

/// The future of [`Subscription::next_async`].
#[must_use = "a future does nothing unless awaited"]
pub struct NextBatch<'s, 'a> {
    sub: &'s mut Subscription<'a>,
    max: usize,
}

impl std::fmt::Debug for NextBatch<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NextBatch").field("max", &self.max).finish_non_exhaustive()
    }
}

impl Future for NextBatch<'_, '_> {
    type Output = Result<Vec<RecordedEvent>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let max = self.max;
        let sub = &mut *self.sub;
        let signal = sub.log.head_signal();
        let seen = signal.seq();
        let mut out = Vec::new();
        let caught_up = match sub.pump(max, &mut |e| {
            out.push(e.to_recorded());
            ControlFlow::Continue(())
        }) {
            Ok(c) => c,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if !out.is_empty() {
            return Poll::Ready(Ok(out));
        }
        if !caught_up || !signal.register(seen, cx.waker()) {
            // More to read (or a head moved meanwhile): come back at once.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}
