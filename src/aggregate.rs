//! Aggregates: loading one from its latest snapshot plus the events after it, committing new
//! events to it, and the snapshot policy (every N events, and on demand). The work is done
//! against the log seam ([`Log`]), so any backend serves it; [`Store::load`],
//! [`Store::commit`] and [`Store::snapshot`] are its entry points on the embedded store.
//!
//! A load (FORMAT.md §12.4) looks up the stream's live snapshot; compares its aggregate tag (the
//! CRC of `A::name()`, by default `std::any::type_name::<Self>()`: an aggregate overrides
//! `name` to keep its snapshots across a rename) with the loading type's
//! (`SnapshotIgnored::OtherAggregate` otherwise); offers its schema tag and state to
//! `Aggregate::decode` (`SnapshotIgnored::Rejected` if refused); then visits the stream's
//! batches from the snapshot's version on, straight from the segments, skipping without loading
//! the segments whose events all lie before its position, and checks the anchor (position and
//! timestamp of the event at that version: `SnapshotIgnored::Stale` otherwise). An unreadable
//! record is `SnapshotIgnored::Unreadable`. An ignored snapshot means a full replay (counted in
//! `SnapshotStats::ignored`) and, if the stream has events, a snapshot of the replayed state
//! queued whatever `SNAPSHOT_EVERY` says, flagged `REPLACES` (if the queue has no room, the next
//! snapshot of that `Loaded` carries the flag). A stream with no events queues nothing: its
//! record stays, and each load ignores it again.
//!
//! The anchor exists because the log can lose events that a durable snapshot covered, and
//! nothing orders the sidecar's `fdatasync` after the log's: under `Buffered` durability a power
//! loss loses the appends since the last sync while a later snapshot may be durable; in `Sync`
//! mode, damage in the last synced group is cut as a torn write; and a log may be restored from
//! an older backup beside a newer sidecar. The lost versions and positions are then handed out
//! again, and a snapshot trusted by its version alone would stand for events that no longer
//! exist.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use crate::clock::now_nanos;
use crate::error::{Error, Result};
use crate::event::{AppendResult, EventData, EventId, ExpectedVersion, RecordedEvent};
use crate::format::batch::check_stream_id;
use crate::format::snapshot::{MAX_SNAPSHOT_BYTES, Meta};
use crate::snapshot::Pending;
use crate::store::Store;
use crate::store::seam::{Log, Visible};

#[cfg(feature = "serde")]
pub(crate) mod typed;

/// The error an [`Aggregate::apply`] may return.
pub type ApplyError = Box<dyn std::error::Error + Send + Sync>;

/// An event-sourced aggregate: state rebuilt by applying a stream's events in order, and
/// snapshotted as bytes under a schema tag.
///
/// ```
/// use strata::{Aggregate, ApplyError, EventData, Options, RecordedEvent, Store};
///
/// #[derive(Default)]
/// struct Account { balance: i64 }
///
/// impl Aggregate for Account {
///     const SCHEMA: u32 = 1;
///     const SNAPSHOT_EVERY: u64 = 50;
///     fn apply(&mut self, e: &RecordedEvent) -> Result<(), ApplyError> {
///         let amount: i64 = std::str::from_utf8(&e.payload)?.parse()?;
///         match e.event_type.as_str() {
///             "Deposited" => self.balance += amount,
///             "Withdrawn" => self.balance -= amount,
///             other => return Err(format!("unknown event {other}").into()),
///         }
///         Ok(())
///     }
///     fn encode(&self) -> Vec<u8> { self.balance.to_le_bytes().to_vec() }
///     fn decode(schema: u32, state: &[u8]) -> Option<Self> {
///         if schema != 1 { return None; }
///         Some(Account { balance: i64::from_le_bytes(state.try_into().ok()?) })
///     }
/// }
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
/// let mut acct = store.load::<Account>("account-1")?;
/// store.commit(&mut acct, &[EventData::new("Deposited", "100"), EventData::new("Withdrawn", "30")])?;
/// assert_eq!(acct.state().balance, 70);
/// assert_eq!(store.load::<Account>("account-1")?.state().balance, 70);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Aggregate: Default + Sized {
    /// The schema tag of [`Aggregate::encode`]'s output. Change it whenever the encoding
    /// changes: snapshots under other tags are then offered to [`Aggregate::decode`], which
    /// may refuse them, and the aggregate is rebuilt from its events and snapshotted again.
    const SCHEMA: u32;

    /// Take a snapshot automatically after this many events since the last one (0: only on
    /// demand, with [`Store::snapshot`], and to replace a snapshot a load found unusable).
    const SNAPSHOT_EVERY: u64 = 100;

    /// The aggregate type's name, recorded (as a CRC-32) with its snapshots: a snapshot is
    /// only offered to [`Aggregate::decode`] of the type with the same name. Defaults to the
    /// Rust type name; override it to keep snapshots valid across a rename (or a change of
    /// generic parameters).
    fn name() -> &'static str {
        std::any::type_name::<Self>()
    }

    /// Applies one event of the stream (in version order) to the state.
    fn apply(&mut self, event: &RecordedEvent) -> std::result::Result<(), ApplyError>;

    /// The state as bytes, for a snapshot (at most [`MAX_SNAPSHOT_BYTES`]).
    fn encode(&self) -> Vec<u8>;

    /// The state from a snapshot's bytes, or `None` if `schema` (or the bytes) are not
    /// accepted: the snapshot is then ignored and the state rebuilt from the events.
    fn decode(schema: u32, state: &[u8]) -> Option<Self>;
}

/// Why [`Store::load`] did not use the stream's latest snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotIgnored {
    /// [`Aggregate::decode`] refused the snapshot (its schema tag, or its bytes).
    Rejected {
        /// The snapshot's schema tag.
        schema: u32,
    },
    /// Another aggregate type (by [`Aggregate::name`]) took the snapshot. A stream should have
    /// one aggregate type; renaming it also ends here (once: the load snapshots again).
    OtherAggregate,
    /// The snapshot covers events the log does not hold (lost in a crash under
    /// [`Durability::Buffered`](crate::Durability::Buffered), or a log restored from an
    /// older copy).
    Stale,
    /// The snapshot could not be read (I/O error or damage; also in
    /// [`Store::recovery_report`]).
    Unreadable {
        /// What went wrong.
        reason: String,
    },
    /// The stream's metadata ([`Store::set_stream_metadata`], [`Store::soft_delete`]) hides
    /// some of its events, which a snapshot folds in: the state is replayed from the visible
    /// events, and no snapshot of it is taken.
    Retention,
    /// A load as of a point ([`Store::load_as_of`]) before the snapshot.
    PastPoint,
}

/// The point in a stream's history that [`Store::load_as_of`] loads the aggregate at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Just after the event at this version.
    Version(u64),
    /// Just after the last event appended at or before this time.
    Time(std::time::SystemTime),
}

impl AsOf {
    /// The last version and the last timestamp (ns) the point takes in.
    fn bounds(self) -> (u64, u64) {
        match self {
            AsOf::Version(v) => (v, u64::MAX),
            AsOf::Time(t) => {
                let ns = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
                (u64::MAX, u64::try_from(ns).unwrap_or(u64::MAX))
            }
        }
    }
}

/// Where a loaded aggregate's state came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotUse {
    /// The stream has no snapshot: the state is a full replay.
    None,
    /// The snapshot at this version, plus the events after it.
    Used {
        /// The version the snapshot covers.
        version: u64,
    },
    /// The latest snapshot was not usable; the state is a full replay.
    Ignored {
        /// The version the snapshot claimed to cover, if it could be read.
        version: Option<u64>,
        /// Why.
        reason: SnapshotIgnored,
    },
}

/// An aggregate loaded by [`Store::load`]: its state and the version it reflects.
///
/// The state changes only through [`Store::commit`], so what is snapshotted is always what
/// the stream's events produce.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    stream: String,
    state: A,
    version: Option<u64>,
    snapshot: SnapshotUse,
    replayed: u64,
    /// Position and timestamp of the event at `version`: a snapshot records them.
    last_position: u64,
    last_time: u64,
    /// Events applied since the last snapshot was taken (or found).
    since_snapshot: u64,
    /// The load ignored an unusable snapshot, and no replacement is queued yet.
    replace_pending: bool,
    /// A commit's events were appended but could not be applied: the state is behind.
    broken: Option<Error>,
    /// No snapshot may be taken of this state: it is as of a point, or the stream's metadata
    /// hides events of it.
    no_snapshots: bool,
}

impl<A> Loaded<A> {
    /// The stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The state after every event up to [`Loaded::version`].
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The state, taken out.
    pub fn into_state(self) -> A {
        self.state
    }

    /// The last event applied (`None`: the stream has no events).
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// Where the state came from.
    pub fn snapshot(&self) -> &SnapshotUse {
        &self.snapshot
    }

    /// Events applied by the load (after the snapshot, or all of them).
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// The expected version for appending after this state.
    pub fn expected(&self) -> ExpectedVersion {
        ExpectedVersion::after(self.version)
    }

    fn new(stream: &str, state: A, snapshot: SnapshotUse) -> Loaded<A> {
        Loaded {
            stream: stream.to_owned(),
            state,
            version: None,
            snapshot,
            replayed: 0,
            last_position: 0,
            last_time: 0,
            since_snapshot: 0,
            replace_pending: false,
            broken: None,
            no_snapshots: false,
        }
    }
}

/// The tag a snapshot records of the aggregate type that took it: CRC-32 of its name.
fn type_tag<A: Aggregate>() -> u32 {
    crc32fast::hash(A::name().as_bytes())
}

fn apply<A: Aggregate>(state: &mut A, e: &RecordedEvent) -> Result<()> {
    state.apply(e).map_err(|err| Error::Apply {
        stream: e.stream_id.clone(),
        version: e.version,
        reason: err.to_string(),
    })
}

impl Store {
    /// Loads the aggregate of `stream`: its latest snapshot (if [`Aggregate::decode`] accepts
    /// it) plus the events after it, or a full replay. A snapshot is never trusted blindly: one
    /// that is unreadable, refused, or covers events the log does not hold is ignored (see
    /// [`Loaded::snapshot`]), and the aggregate is snapshotted again.
    ///
    /// When [`Aggregate::SNAPSHOT_EVERY`] or more events were replayed, a snapshot of the
    /// loaded state is queued for the background snapshotter (encoding it on this thread).
    ///
    /// Errors: [`Error::InvalidStreamId`], read errors of the log, [`Error::Apply`].
    ///
    /// A stream with metadata that hides events ([`Store::set_stream_metadata`],
    /// [`Store::soft_delete`]) is folded from its visible events only, without snapshots
    /// ([`SnapshotIgnored::Retention`]); its [`Loaded::version`] is still its last version, so
    /// that a commit continues the stream (a soft-deleted stream loads as the default state).
    pub fn load<A: Aggregate>(&self, stream: &str) -> Result<Loaded<A>> {
        load(self, stream)
    }

    /// Loads the aggregate of `stream` as it was at a point: after the event at a version, or
    /// after the events appended by a time. The stream's latest snapshot is used if it lies at
    /// or before the point (the sidecar keeps one snapshot per stream), else the events are
    /// replayed from the start; archived events are read like any others. The state is not
    /// snapshotted. Committing to it succeeds only if the point is the stream's last version.
    ///
    /// ```
    /// use strata::{AsOf, EventData, ExpectedVersion, Options, Store};
    /// # use strata::{Aggregate, ApplyError, RecordedEvent};
    /// # #[derive(Default)] struct Total(u64);
    /// # impl Aggregate for Total {
    /// #     const SCHEMA: u32 = 1;
    /// #     fn apply(&mut self, e: &RecordedEvent) -> Result<(), ApplyError> {
    /// #         self.0 += std::str::from_utf8(&e.payload)?.parse::<u64>()?; Ok(())
    /// #     }
    /// #     fn encode(&self) -> Vec<u8> { self.0.to_le_bytes().to_vec() }
    /// #     fn decode(_: u32, b: &[u8]) -> Option<Self> { Some(Total(u64::from_le_bytes(b.try_into().ok()?))) }
    /// # }
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// let deposits: Vec<_> = [10, 20, 30].iter().map(|n| EventData::new("Deposited", n.to_string())).collect();
    /// store.append("account-1", ExpectedVersion::NoStream, &deposits)?;
    /// let then = store.load_as_of::<Total>("account-1", AsOf::Version(1))?;
    /// assert_eq!((then.state().0, then.version()), (30, Some(1)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_as_of<A: Aggregate>(&self, stream: &str, point: AsOf) -> Result<Loaded<A>> {
        load_at(self, stream, Some(point))
    }

    /// Appends `events` to the aggregate's stream, expecting the version it was loaded at,
    /// then applies them to its state; takes a snapshot when the policy says so.
    ///
    /// On [`Error::WrongExpectedVersion`] nothing was written: load again and retry the
    /// command. On [`Error::Apply`] the events were appended but the state could not follow:
    /// load again.
    pub fn commit<A: Aggregate>(&self, loaded: &mut Loaded<A>, events: &[EventData]) -> Result<AppendResult> {
        commit(self, loaded, events)
    }

    /// [`Store::commit`] for the events command `command_id` decided on, at most once: each
    /// event gets the id [`EventId::derive`]`(command_id, stream, i)` and the command as its
    /// causation (where it has none), so a retry of the command (after a
    /// timeout, a crash, a restart) that decides the same events returns the first commit's
    /// result, marked `duplicate`, instead of appending them again. A retry that decides other
    /// events is refused: [`Error::WrongExpectedVersion`] if it was loaded before the first
    /// commit, [`Error::IdempotencyConflict`] if it repeats only some events. Within
    /// [`Options::idempotency_window`](crate::Options::idempotency_window).
    ///
    /// A duplicate is applied to `loaded` only if `loaded` stood just before it; if `loaded`
    /// already holds the events, it is left as it is.
    pub fn commit_command<A: Aggregate>(
        &self,
        loaded: &mut Loaded<A>,
        command_id: EventId,
        events: impl Into<Vec<EventData>>,
    ) -> Result<AppendResult> {
        let events = stamp(command_id, None, &loaded.stream, events.into());
        commit(self, loaded, &events)
    }

    /// Takes a snapshot of `loaded` now (a significant state transition, say): encodes it on
    /// this thread and queues it for the snapshotter, waiting only if its queue is full. Use
    /// [`Store::flush_snapshots`] to wait until it is durable.
    ///
    /// Errors: [`Error::SnapshotTooLarge`]; [`Error::Apply`] if a commit of this `Loaded`
    /// failed to apply (its state is behind its stream: load again); [`Error::Closed`].
    pub fn snapshot<A: Aggregate>(&self, loaded: &mut Loaded<A>) -> Result<()> {
        queue_snapshot(self, loaded, true).map(|_| ())
    }
}

/// The events a command decided on, given ids derived from the command's id, the command as
/// their causation, and `correlation` as their flow, where they have none (32 bytes an event
/// on disk, 48 with a correlation).
pub(crate) fn stamp(
    command: EventId,
    correlation: Option<EventId>,
    stream: &str,
    events: Vec<EventData>,
) -> Vec<EventData> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e.id = e.id.or(Some(EventId::derive(command, stream, i as u64)));
            e.causation_id = e.causation_id.or(Some(command));
            e.correlation_id = e.correlation_id.or(correlation);
            e
        })
        .collect()
}

/// [`Store::load`], on any log.
pub(crate) fn load<A: Aggregate>(log: &dyn Log, stream: &str) -> Result<Loaded<A>> {
    load_at(log, stream, None)
}

/// [`Store::load`] (`point` `None`) and [`Store::load_as_of`], on any log.
pub(crate) fn load_at<A: Aggregate>(log: &dyn Log, stream: &str, point: Option<AsOf>) -> Result<Loaded<A>> {
    crate::trace::span!(_load, DEBUG, "strata::load", "load", stream, aggregate = A::name());
    crate::trace::timer!(started, DEBUG);
    #[cfg(feature = "tracing")]
    let traced = |l: &Loaded<A>| {
        let (snapshot, snapshot_version, ignored) = match &l.snapshot {
            SnapshotUse::None => ("none", None, None),
            SnapshotUse::Used { version } => ("used", Some(*version), None),
            SnapshotUse::Ignored { version, reason } => ("ignored", *version, Some(tracing::field::debug(reason))),
        };
        crate::trace::event!(
            DEBUG,
            "strata::load",
            version = l.version,
            replayed = l.replayed,
            snapshot,
            snapshot_version,
            ignored,
            as_of = point.is_some(),
            duration_us = started.us(),
            "loaded"
        );
    };
    check_stream_id(stream)?;
    let vis = log.visibility(stream)?;
    let bounds = point.map_or((u64::MAX, u64::MAX), AsOf::bounds);
    let no_snapshots = point.is_some() || vis.hides_any();
    let counters = log.snapshot_counters();
    let use_ = match log.latest_snapshot(stream) {
        Ok(None) => SnapshotUse::None,
        Err(reason) => SnapshotUse::Ignored { version: None, reason: SnapshotIgnored::Unreadable { reason } },
        Ok(Some(snap)) if snap.meta.aggregate != type_tag::<A>() => {
            SnapshotUse::Ignored { version: Some(snap.meta.version), reason: SnapshotIgnored::OtherAggregate }
        }
        Ok(Some(snap)) if vis.hides_any() => {
            SnapshotUse::Ignored { version: Some(snap.meta.version), reason: SnapshotIgnored::Retention }
        }
        Ok(Some(snap)) if snap.meta.version > bounds.0 || snap.meta.event_time > bounds.1 => {
            SnapshotUse::Ignored { version: Some(snap.meta.version), reason: SnapshotIgnored::PastPoint }
        }
        Ok(Some(snap)) => {
            let version = snap.meta.version;
            match A::decode(snap.meta.schema, &snap.state) {
                None => SnapshotUse::Ignored {
                    version: Some(version),
                    reason: SnapshotIgnored::Rejected { schema: snap.meta.schema },
                },
                Some(state) => {
                    let mut loaded = Loaded::new(stream, state, SnapshotUse::Used { version });
                    loaded.version = Some(version);
                    loaded.last_position = snap.meta.position;
                    loaded.last_time = snap.meta.event_time;
                    loaded.no_snapshots = no_snapshots;
                    // Read from the snapshot's own event: it must be the one the snapshot
                    // was taken after (the anchor), or the snapshot is stale.
                    let anchor = Some((snap.meta.position, snap.meta.event_time));
                    if replay(log, &mut loaded, anchor, vis, bounds)? {
                        counters.used.fetch_add(1, Ordering::Relaxed);
                        snapshot_by_policy(log, &mut loaded);
                        #[cfg(feature = "tracing")]
                        traced(&loaded);
                        return Ok(loaded);
                    }
                    SnapshotUse::Ignored { version: Some(version), reason: SnapshotIgnored::Stale }
                }
            }
        }
    };
    // Ignoring a snapshot for what the load asks (a point, retention) is no fault of it.
    let ignored = matches!(&use_, SnapshotUse::Ignored { reason, .. }
        if !matches!(reason, SnapshotIgnored::Retention | SnapshotIgnored::PastPoint));
    if ignored {
        counters.ignored.fetch_add(1, Ordering::Relaxed);
    }
    let mut loaded = Loaded::new(stream, A::default(), use_);
    loaded.no_snapshots = no_snapshots;
    replay(log, &mut loaded, None, vis, bounds)?;
    if ignored && loaded.version.is_some() && !no_snapshots {
        // Replace the unusable snapshot, whatever the policy says and whatever its version
        // (if the queue is full, the next snapshot of this `Loaded` replaces it).
        loaded.replace_pending = true;
        let _ = queue_snapshot(log, &mut loaded, false);
    } else {
        snapshot_by_policy(log, &mut loaded);
    }
    #[cfg(feature = "tracing")]
    traced(&loaded);
    Ok(loaded)
}

/// Applies the stream's events after `loaded.version` (all of them if `None`), straight from
/// the log through one reused event (no allocation per event). With an `anchor` (position,
/// timestamp), the read starts at `loaded.version` itself, whose event must have that
/// position and timestamp: returns `false`, having applied nothing, if it does not. Events
/// `vis` hides are passed over (the version moves past them, the state does not), and the
/// replay ends after the last event within `bounds` (version, timestamp).
fn replay<A: Aggregate>(
    log: &dyn Log,
    loaded: &mut Loaded<A>,
    anchor: Option<(u64, u64)>,
    vis: Visible,
    bounds: (u64, u64),
) -> Result<bool> {
    let from = match (anchor, loaded.version) {
        (Some(_), Some(v)) => v,
        // What is hidden is a prefix: start at the last hidden event (the version moves to
        // it), not at the beginning.
        (_, v) => v.map_or(0, |v| v + 1).max(vis.from_version.saturating_sub(1)),
    };
    let mut event = RecordedEvent::empty();
    let mut anchored = anchor.is_none();
    let mut failed: Option<Error> = None;
    let min_position = anchor.map_or(0, |(position, _)| position);
    let stream = loaded.stream.clone();
    log.visit_stream(&stream, from, min_position, &mut |e| {
        if !anchored {
            // The first event read is the anchor: checked, not applied.
            anchored = anchor == Some((e.position, e.timestamp_nanos)) && e.version == from;
            return if anchored { ControlFlow::Continue(()) } else { ControlFlow::Break(()) };
        }
        if e.version > bounds.0 || e.timestamp_nanos > bounds.1 {
            return ControlFlow::Break(());
        }
        loaded.version = Some(e.version);
        loaded.last_position = e.position;
        loaded.last_time = e.timestamp_nanos;
        if !vis.shows(e.version, e.timestamp_nanos) {
            return ControlFlow::Continue(());
        }
        e.copy_into(&mut event);
        if let Err(err) = apply(&mut loaded.state, &event) {
            failed = Some(err);
            return ControlFlow::Break(());
        }
        loaded.replayed += 1;
        loaded.since_snapshot += 1;
        ControlFlow::Continue(())
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(anchored),
    }
}

/// [`Store::commit`], on any log.
pub(crate) fn commit<A: Aggregate>(
    log: &dyn Log,
    loaded: &mut Loaded<A>,
    events: &[EventData],
) -> Result<AppendResult> {
    if let Some(e) = &loaded.broken {
        return Err(e.clone());
    }
    let r = log.append(&loaded.stream, loaded.expected(), events)?;
    if r.duplicate && loaded.version.is_some_and(|v| v >= r.last_version) {
        // A retry of a commit this state already holds.
        return Ok(r);
    }
    if r.duplicate && loaded.version.map_or(0, |v| v + 1) != r.first_version {
        // A retry of a commit made after this state was loaded, with others in between: the
        // state cannot follow without them.
        let behind = Error::WrongExpectedVersion {
            stream: loaded.stream.clone(),
            expected: loaded.expected(),
            actual: Some(r.last_version),
        };
        loaded.broken = Some(behind);
        return Ok(r);
    }
    for (i, data) in events.iter().enumerate() {
        let e = RecordedEvent {
            stream_id: loaded.stream.clone(),
            version: r.first_version + i as u64,
            partition: r.partition,
            position: r.first_position + i as u64,
            timestamp_nanos: r.timestamp_nanos,
            event_type: data.event_type.clone(),
            metadata: data.metadata.clone(),
            payload: data.payload.clone(),
            id: data.id,
            correlation_id: data.correlation_id,
            causation_id: data.causation_id,
        };
        if let Err(err) = apply(&mut loaded.state, &e) {
            loaded.broken = Some(err.clone());
            return Err(err);
        }
        loaded.version = Some(e.version);
        loaded.last_position = e.position;
        loaded.last_time = e.timestamp_nanos;
        loaded.since_snapshot += 1;
    }
    snapshot_by_policy(log, loaded);
    Ok(r)
}

fn snapshot_by_policy<A: Aggregate>(log: &dyn Log, loaded: &mut Loaded<A>) {
    if A::SNAPSHOT_EVERY > 0 && loaded.since_snapshot >= A::SNAPSHOT_EVERY && loaded.version.is_some() {
        // An automatic snapshot is an optimisation: if the queue is full it is counted as
        // dropped and the next commit tries again; one too large is counted as failed.
        if let Err(Error::SnapshotTooLarge { .. }) = queue_snapshot(log, loaded, false) {
            log.snapshot_counters().failed.fetch_add(1, Ordering::Relaxed);
            loaded.since_snapshot = 0;
        }
    }
}

/// Encodes and queues a snapshot of `loaded`; `wait`: block while the queue is full
/// (otherwise drop the snapshot and count it). A snapshot replacing an unusable one is
/// flagged to supersede it whatever its version. Returns whether it was queued.
fn queue_snapshot<A: Aggregate>(log: &dyn Log, loaded: &mut Loaded<A>, wait: bool) -> Result<bool> {
    if let Some(e) = &loaded.broken {
        return Err(e.clone());
    }
    let Some(version) = loaded.version else { return Ok(false) };
    if loaded.no_snapshots {
        return Ok(false);
    }
    if log.is_deleted(&loaded.stream) {
        return Err(Error::StreamDeleted { stream: loaded.stream.clone() });
    }
    let state = loaded.state.encode();
    if state.len() > MAX_SNAPSHOT_BYTES {
        return Err(Error::SnapshotTooLarge { size: state.len(), max: MAX_SNAPSHOT_BYTES });
    }
    let pending = Pending {
        partition: log.partition_of(&loaded.stream),
        stream: loaded.stream.clone(),
        meta: Meta {
            version,
            position: loaded.last_position,
            event_time: loaded.last_time,
            written: now_nanos(),
            schema: A::SCHEMA,
            replaces: loaded.replace_pending,
            aggregate: type_tag::<A>(),
        },
        state,
    };
    let queued = log.queue_snapshot(pending, wait)?;
    if queued {
        loaded.since_snapshot = 0;
        loaded.replace_pending = false;
    }
    Ok(queued)
}
