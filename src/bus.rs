//! The command bus: admission control in front of the store (in-flight limit, token-bucket
//! rate limit, lag-aware gating on critical projections), then load → decide → append with
//! the loaded version, retried a bounded number of times on a version conflict.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::aggregate::{self, Aggregate};
use crate::error::{Error, Result};
use crate::event::{AppendResult, EventData, EventId};
use crate::projection::ProjectionEngine;
use crate::store::Store;
use crate::store::seam::Log;

/// A command: which aggregate it addresses, and the decision it makes from its state.
pub trait Command {
    /// The aggregate the command addresses.
    type Aggregate: Aggregate;

    /// The aggregate's stream.
    fn stream(&self) -> &str;

    /// The events the command produces from the aggregate's state at `version` (`None`: a
    /// new aggregate), or why it is refused ([`Error::Rejected`]). No events: nothing to do.
    fn decide(&self, state: &Self::Aggregate, version: Option<u64>) -> std::result::Result<Vec<EventData>, String>;

    /// The command's id, if it has one: the bus then gives its events ids derived from it
    /// (as [`Store::commit_command`] does) and the command as their causation. A command sent
    /// again with the same id (a client retry) is then carried out at most once.
    fn id(&self) -> Option<EventId> {
        None
    }

    /// The flow the command belongs to (say, the event or request that caused it).
    fn correlation_id(&self) -> Option<EventId> {
        None
    }
}

/// Limits of a [`CommandBus`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BusOptions {
    /// Most commands in flight at once (default 1024): beyond it, [`Error::Overloaded`].
    pub max_in_flight: usize,
    /// Token bucket: commands per second and burst (default none): beyond it,
    /// [`Error::RateLimited`].
    pub rate: Option<(f64, f64)>,
    /// Times a command is run again after a version conflict (default 3).
    pub conflict_retries: u32,
    /// Critical projections: while one is unhealthy (lags past its SLA, or has a stopped
    /// partition), [`Error::Lagging`].
    pub gates: Vec<String>,
    /// How often the gates' lag is looked at (default 10 ms).
    pub gate_refresh: Duration,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            max_in_flight: 1024,
            rate: None,
            conflict_retries: 3,
            gates: Vec::new(),
            gate_refresh: Duration::from_millis(10),
        }
    }
}

impl BusOptions {
    /// Sets the in-flight limit.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
    /// Sets a token-bucket rate limit: `per_second` commands (a positive number), bursts of
    /// up to `burst` (at least 1).
    pub fn rate_limit(mut self, per_second: f64, burst: f64) -> Self {
        self.rate = Some((per_second, burst));
        self
    }
    /// Sets the retries on a version conflict.
    pub fn conflict_retries(mut self, n: u32) -> Self {
        self.conflict_retries = n;
        self
    }
    /// Refuses commands while the projection `name` (registered on the bus's engine) lags
    /// past its SLA ([`ProjectionOptions::sla`](crate::projection::ProjectionOptions::sla)).
    pub fn gate_on(mut self, name: &str) -> Self {
        self.gates.push(name.to_owned());
        self
    }
}

/// Counters of a [`CommandBus`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Commands that appended (or had nothing to append).
    pub accepted: u64,
    /// Refused with [`Error::Overloaded`].
    pub overloaded: u64,
    /// Refused with [`Error::RateLimited`].
    pub rate_limited: u64,
    /// Refused with [`Error::Lagging`].
    pub lagging: u64,
    /// Refused by the command's decision ([`Error::Rejected`]).
    pub rejected: u64,
    /// Version conflicts met (each retried, while retries last).
    pub conflicts: u64,
    /// Failed otherwise (I/O, conflicts past the retries, ...).
    pub failed: u64,
    /// In flight now.
    pub in_flight: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    overloaded: AtomicU64,
    rate_limited: AtomicU64,
    lagging: AtomicU64,
    rejected: AtomicU64,
    conflicts: AtomicU64,
    failed: AtomicU64,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

struct GateState {
    /// Per gate: (when, events handled then), to measure the drain rate.
    samples: Vec<Option<(Instant, u64)>>,
}

/// Runs commands against a store with back-pressure, so load spikes are refused early with
/// distinct errors instead of queueing without bound.
///
/// ```
/// use std::sync::Arc;
/// use strata::bus::BusOptions;
/// use strata::{Aggregate, ApplyError, Command, CommandBus, EventData, Options, RecordedEvent, Store};
///
/// #[derive(Default)]
/// struct Counter(u64);
/// impl Aggregate for Counter {
///     const SCHEMA: u32 = 1;
///     fn apply(&mut self, _: &RecordedEvent) -> Result<(), ApplyError> { self.0 += 1; Ok(()) }
///     fn encode(&self) -> Vec<u8> { self.0.to_le_bytes().to_vec() }
///     fn decode(_: u32, b: &[u8]) -> Option<Self> { Some(Counter(u64::from_le_bytes(b.try_into().ok()?))) }
/// }
/// struct Increment { id: String, max: u64 }
/// impl Command for Increment {
///     type Aggregate = Counter;
///     fn stream(&self) -> &str { &self.id }
///     fn decide(&self, c: &Counter, _: Option<u64>) -> Result<Vec<EventData>, String> {
///         if c.0 >= self.max { return Err(format!("already at {}", c.0)); }
///         Ok(vec![EventData::new("Incremented", "")])
///     }
/// }
///
/// let dir = tempfile::tempdir()?;
/// let store = Arc::new(Store::open(dir.path(), Options::default().create_if_missing(true))?);
/// let bus = CommandBus::new(store, None, BusOptions::default().max_in_flight(64))?;
/// let cmd = Increment { id: "counter-1".into(), max: 1 };
/// bus.execute(&cmd)?;
/// assert!(matches!(bus.execute(&cmd), Err(strata::Error::Rejected(_))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct CommandBus {
    log: Arc<dyn Log>,
    engine: Option<Arc<ProjectionEngine>>,
    options: BusOptions,
    in_flight: AtomicUsize,
    bucket: Mutex<Bucket>,
    /// Held by the command looking at the gates.
    gate: Mutex<GateState>,
    /// The gates' last verdict and when it was reached.
    verdict: parking_lot::RwLock<(Option<Instant>, Option<Error>)>,
    counters: Counters,
}

impl std::fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBus").field("options", &self.options).finish_non_exhaustive()
    }
}

/// Decrements the in-flight count when a command ends, however it ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CommandBus {
    /// A bus over `store`; `engine` runs the projections named in [`BusOptions::gate_on`].
    ///
    /// Errors: [`Error::InvalidOptions`] for no room in flight, a rate that is not a positive
    /// number or a burst under 1, gates without an engine, or a gate naming no projection of
    /// the engine.
    pub fn new(store: Arc<Store>, engine: Option<Arc<ProjectionEngine>>, options: BusOptions) -> Result<CommandBus> {
        let bad = |why: String| Err(Error::InvalidOptions(why));
        if options.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1".into());
        }
        if let Some((rate, burst)) = options.rate
            && (!rate.is_finite() || rate <= 0.0 || !burst.is_finite() || burst < 1.0)
        {
            return bad(format!("rate limit {rate}/s with bursts of {burst}: need a positive rate and a burst >= 1"));
        }
        match &engine {
            None if !options.gates.is_empty() => return bad("gates need the projection engine".into()),
            Some(e) => {
                let names = e.names();
                if let Some(g) = options.gates.iter().find(|g| !names.contains(g)) {
                    return bad(format!("gate {g:?} names no registered projection"));
                }
            }
            None => {}
        }
        let burst = options.rate.map_or(0.0, |(_, b)| b);
        let gates = options.gates.len();
        Ok(CommandBus {
            log: store,
            engine,
            options,
            in_flight: AtomicUsize::new(0),
            bucket: Mutex::new(Bucket { tokens: burst, last: Instant::now() }),
            gate: Mutex::new(GateState { samples: vec![None; gates] }),
            verdict: parking_lot::RwLock::new((None, None)),
            counters: Counters::default(),
        })
    }

    /// Runs `command`: admission (in flight, rate, lag), then load, decide and append with
    /// the loaded version, again after a version conflict (up to the retries). Returns where
    /// the events landed (`None`: the command decided on no events).
    ///
    /// Errors: [`Error::Overloaded`], [`Error::RateLimited`], [`Error::Lagging`] (nothing
    /// done; retry later), [`Error::Rejected`] (the decision), [`Error::WrongExpectedVersion`]
    /// after the retries, and the store's errors.
    pub fn execute<C: Command>(&self, command: &C) -> Result<Option<AppendResult>> {
        let max = self.options.max_in_flight;
        // Only admitted commands count as in flight.
        if let Err(now) =
            self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
        {
            self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Overloaded { in_flight: now, limit: max });
        }
        let _guard = InFlight(&self.in_flight);
        // Gates first: a command refused for lag does not spend a token.
        match self.check_gates() {
            Ok(()) => {}
            Err(e @ Error::Lagging { .. }) => {
                self.counters.lagging.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        if let Err(e) = self.take_token() {
            self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let mut attempt = 0;
        loop {
            let result = (|| {
                let mut loaded = aggregate::load::<C::Aggregate>(&*self.log, command.stream())?;
                let mut events = command.decide(loaded.state(), loaded.version()).map_err(Error::Rejected)?;
                if events.is_empty() {
                    return Ok(None);
                }
                if let Some(id) = command.id() {
                    events = aggregate::stamp(id, command.correlation_id(), command.stream(), events);
                } else if let Some(c) = command.correlation_id() {
                    for e in &mut events {
                        e.correlation_id = e.correlation_id.or(Some(c));
                    }
                }
                aggregate::commit(&*self.log, &mut loaded, &events).map(Some)
            })();
            match result {
                Err(Error::WrongExpectedVersion { .. }) if attempt < self.options.conflict_retries => {
                    self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                }
                Ok(r) => {
                    self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    return Ok(r);
                }
                Err(e) => {
                    let counter = match &e {
                        Error::Rejected(_) => &self.counters.rejected,
                        Error::WrongExpectedVersion { .. } => {
                            self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                            &self.counters.failed
                        }
                        _ => &self.counters.failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
    }

    fn take_token(&self) -> Result<()> {
        let Some((rate, burst)) = self.options.rate else { return Ok(()) };
        let mut b = self.bucket.lock();
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::try_from_secs_f64((1.0 - b.tokens) / rate).unwrap_or(Duration::MAX);
        Err(Error::RateLimited { retry_after: wait })
    }

    /// The gates' verdict, looked at again at most every `gate_refresh`, by one command at
    /// a time: the others use the last verdict meanwhile (no command waits for the look).
    fn check_gates(&self) -> Result<()> {
        let Some(engine) = &self.engine else { return Ok(()) };
        if self.options.gates.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        {
            let v = self.verdict.read();
            if v.0.is_some_and(|t| now.duration_since(t) < self.options.gate_refresh) {
                return v.1.clone().map_or(Ok(()), Err);
            }
        }
        let Some(mut g) = self.gate.try_lock() else {
            return self.verdict.read().1.clone().map_or(Ok(()), Err);
        };
        let mut verdict = None;
        for (i, name) in self.options.gates.iter().enumerate() {
            let status = engine.status(name)?;
            let sla = engine.sla(name)?;
            let lag_events: u64 = status.partitions.iter().map(|p| p.lag_events).sum();
            // Drain rate over at least 100 ms (handled grows a batch at a time), from a
            // sample at most 5 s old.
            let sample =
                g.samples.get(i).copied().flatten().filter(|(t, _)| now.duration_since(*t) < Duration::from_secs(5));
            let rate = sample.and_then(|(t, handled)| {
                let secs = now.duration_since(t).as_secs_f64();
                (secs >= 0.1).then(|| status.handled.saturating_sub(handled) as f64 / secs)
            });
            if (sample.is_none() || rate.is_some())
                && let Some(s) = g.samples.get_mut(i)
            {
                *s = Some((now, status.handled));
            }
            if status.healthy || verdict.is_some() {
                continue;
            }
            // Time to drain what lags at the measured rate; without a rate yet, the time by
            // which the lag exceeds the SLA (at least 100 ms). Capped at 60 s.
            let retry_after = match rate {
                Some(r) if r > 0.0 => Duration::try_from_secs_f64(lag_events as f64 / r).unwrap_or(Duration::MAX),
                _ => status.max_lag.saturating_sub(sla),
            };
            verdict = Some(Error::Lagging {
                projection: name.clone(),
                lag: status.max_lag,
                retry_after: retry_after.clamp(Duration::from_millis(100), Duration::from_secs(60)),
            });
        }
        *self.verdict.write() = (Some(now), verdict.clone());
        verdict.map_or(Ok(()), Err)
    }

    /// The bus's counters.
    pub fn stats(&self) -> BusStats {
        let c = &self.counters;
        BusStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            overloaded: c.overloaded.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            lagging: c.lagging.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed) as u64,
        }
    }
}
