//! The workers: each claims (projection, partition) tasks with work, hands a batch of each to
//! its projection (retrying, dead-lettering or stopping on failures), advances, and sleeps on
//! the head signal when there is nothing to do (at most 100 ms at a time).
//!
//! A worker adds a dead letter when an event still fails after `ProjectionOptions::attempts`
//! tries, and, with `OnFailure::Park`, for each event of a parked stream. It advances past the
//! event only after the letter is durable, so a dead letter is always durable before the
//! projection's position (and its checkpoint) moves past its event; a letter that cannot be
//! written stops the partition at its event, as `OnFailure::Stop` does. A task of a partition a
//! grow added is not handed events until the projection has reached the grow's `cut` in every
//! older partition (the gate of FORMAT.md §13.2).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::Error;
use crate::event::RecordedEvent;

use super::dlq::Added;
use super::state::{Inner, Registered, Task, cover_new_partitions, gate_open};
use super::{Batch, BatchError, HandlerError, OnFailure};

pub(super) fn run(inner: Arc<Inner>, id: usize) {
    let mut turn = id;
    loop {
        if inner.stop.load(Ordering::Acquire) || id >= inner.desired.load(Ordering::Acquire) {
            return;
        }
        if inner.log.partition_count() > inner.covered.load(Ordering::Acquire) {
            cover_new_partitions(&inner);
        }
        let seen = inner.log.head_signal().seq();
        let tasks = inner.tasks.read().clone();
        let mut worked = false;
        let n = tasks.len();
        for k in 0..n {
            let Some(t) = tasks.get((turn + k) % n) else { continue };
            if !has_work(&inner, t) || !t.claim() {
                continue;
            }
            // Check again under the claim: another worker may have just handled it.
            if has_work(&inner, t) {
                handle(&inner, t);
                worked = true;
            }
            t.release();
            if inner.stop.load(Ordering::Acquire) {
                return;
            }
        }
        turn = turn.wrapping_add(1);
        if !worked {
            inner.log.head_signal().wait(seen, Duration::from_millis(100));
        }
    }
}

fn has_work(inner: &Inner, t: &Task) -> bool {
    if !t.runs_here(inner) {
        return false;
    }
    let Ok(heads) = inner.log.heads(t.partition) else { return false };
    !t.retired.load(Ordering::Acquire)
        && t.next.load(Ordering::Acquire) < heads.head
        && t.error.lock().is_none()
        && gate_open(inner, t)
}

/// Handles one batch of a claimed task: read, hand to the projection (retrying failures),
/// advance, checkpoint.
fn handle(inner: &Inner, t: &Task) {
    let reg = &t.projection;
    let mut buffer = t.buffer.lock();
    let from = t.next.load(Ordering::Acquire);
    #[cfg(feature = "tracing")]
    let mut trace = BatchTrace::start(t, from);
    let head_before = inner.log.heads(t.partition).map_or(from, |h| h.head);
    let mut n = 0usize;
    let mut keep = |e: &crate::event::EventView<'_>| {
        match buffer.get_mut(n) {
            Some(slot) => e.copy_into(slot),
            None => buffer.push(e.to_recorded()),
        }
        n += 1;
        ControlFlow::Continue(())
    };
    let shared = inner.log.shared().filter(|_| reg.shared);
    let read = match shared {
        // Through the projection's own consumer of the partition.
        Some(s) => s.consume(&reg.name, t.partition, from, reg.options.batch, &mut keep),
        None => inner.log.scan_partition(t.partition, from, reg.options.batch, &mut keep),
    };
    match read {
        // The store was closed under the engine: nothing to read any more, nothing wrong.
        Err(Error::Closed) => return,
        Err(e) => {
            stop_task(inner, t, format!("reading partition {}: {e}", t.partition));
            return;
        }
        Ok(_) => {}
    }
    #[cfg(feature = "tracing")]
    {
        trace.read = n;
    }
    if n == 0 && shared.is_some() {
        // Not delivered yet (a consumer just made); a shared log has no gaps to skip.
        return;
    }
    if n == 0 && head_before > from {
        // Nothing at [from, head): compaction erased those positions (a deleted stream's
        // events). Move past the gap, or the task would look busy forever.
        t.next.store(head_before, Ordering::Release);
        inner.progress.bump();
        if reg.engine_checkpoints() {
            inner.dirty.bump();
        }
        return;
    }
    let events = buffer.get(..n).unwrap_or(&[]);
    let mut start = 0usize;
    while start < events.len() {
        // Events of parked streams go to the dead-letter queue, in order, unhandled.
        let parked = |e: &RecordedEvent| reg.dlq.as_ref().is_some_and(|d| d.is_parked(&e.stream_id));
        if let Some(e) = events.get(start).filter(|e| parked(e)) {
            if let Err(why) = dead_letter(reg, e, 0, "its stream is parked") {
                stop_task(inner, t, why);
                return;
            }
            #[cfg(feature = "tracing")]
            {
                trace.dead_lettered += 1;
            }
            advance(inner, t, std::slice::from_ref(e));
            start += 1;
            continue;
        }
        let end = events.iter().skip(start).position(parked).map_or(events.len(), |k| start + k);
        let run = events.get(start..end).unwrap_or(&[]);
        match handle_run(inner, t, run) {
            Ok(()) => start = end,
            Err(None) => return, // stopping: the rest is handled after a restart
            Err(Some((failed, attempts, error))) => {
                let Some(e) = run.get(failed) else { return };
                let why = format!(
                    "event at position {} ({:?} v{}) failed {attempts} times: {error}",
                    e.position, e.stream_id, e.version
                );
                if reg.dlq.is_none() {
                    stop_task(inner, t, why);
                    return;
                }
                if let Err(why) = dead_letter(reg, e, attempts, &error.to_string()) {
                    stop_task(inner, t, why);
                    return;
                }
                #[cfg(feature = "tracing")]
                {
                    trace.dead_lettered += 1;
                }
                // The dead letter is durable: the projection goes on past the event.
                advance(inner, t, std::slice::from_ref(e));
                start += failed + 1;
            }
        }
    }
    if let Some(s) = shared {
        s.acknowledge(&reg.name, t.partition, t.next.load(Ordering::Acquire));
    }
    #[cfg(feature = "tracing")]
    {
        trace.done = true;
    }
}

/// Hands `run` to the projection, retrying a failing event per the policy. On success every
/// event is advanced past. On failure, the events before the failing one are advanced past
/// and the error says which one failed (its index in `run`), after how many attempts, and
/// why; `Err(None)` if the engine is stopping.
fn handle_run(
    inner: &Inner,
    t: &Task,
    run: &[RecordedEvent],
) -> std::result::Result<(), Option<(usize, u32, HandlerError)>> {
    let reg = &t.projection;
    let mut start = 0usize;
    let mut attempts = 0u32;
    // After a panic, which event caused it is unknown: go on one event per call.
    let mut one_by_one = false;
    while start < run.len() {
        let events = run.get(start..).unwrap_or(&[]);
        let events = if one_by_one { events.get(..1).unwrap_or(&[]) } else { events };
        let batch = Batch { partition: t.partition, events, replay: false };
        match guarded(|| reg.handler.handle_batch(&batch), events.len()) {
            Ok(()) if one_by_one => {
                advance(inner, t, events);
                start += events.len();
                attempts = 0;
            }
            Ok(()) => break,
            Err(None) if !one_by_one && events.len() > 1 => {
                // The batch's events before the panic may have had effects: they are
                // delivered again, one by one (at least once).
                one_by_one = true;
            }
            Err(e) => {
                let BatchError { index, error } = e.unwrap_or_else(|| BatchError { index: 0, error: "panic".into() });
                let failed = start + index.min(batch.events.len().saturating_sub(1));
                if failed > start {
                    // Progress before the failure counts; the failing event gets fresh attempts.
                    advance(inner, t, run.get(start..failed).unwrap_or(&[]));
                    start = failed;
                    attempts = 0;
                }
                attempts += 1;
                crate::trace::event!(
                    WARN,
                    "strata::projection",
                    projection = %reg.name,
                    partition = t.partition,
                    position = run.get(failed).map_or(0, |e| e.position),
                    index,
                    attempt = attempts,
                    error = %error,
                    "handler failed"
                );
                if inner.stop.load(Ordering::Acquire) {
                    return Err(None);
                }
                if attempts >= reg.options.attempts {
                    return Err(Some((failed, attempts, error)));
                }
                let wait = reg.options.backoff.saturating_mul(2u32.saturating_pow(attempts - 1).min(1 << 10));
                std::thread::sleep(wait.min(Duration::from_secs(60)));
            }
        }
    }
    advance(inner, t, run.get(start..).unwrap_or(&[]));
    Ok(())
}

/// Runs a handler call, so a panicking projection neither kills its worker nor leaves its
/// partition claimed: `Err(None)` for a panic in a batch of several events (which one is
/// unknown), a handler error at index 0 for a panic on a single event.
pub(super) fn guarded(
    f: impl FnOnce() -> std::result::Result<(), BatchError>,
    events: usize,
) -> std::result::Result<(), Option<BatchError>> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(Some),
        Err(_) if events > 1 => Err(None),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(Some(BatchError { index: 0, error: format!("the handler panicked: {what}").into() }))
        }
    }
}

/// Adds `e` to the projection's dead-letter queue (durably), parking its stream if the
/// projection parks failing streams. Returns why it could not.
fn dead_letter(reg: &Registered, e: &RecordedEvent, attempts: u32, error: &str) -> std::result::Result<(), String> {
    let Some(dlq) = &reg.dlq else { return Err(format!("no dead-letter queue for: {error}")) };
    match dlq.add(e, attempts, error, reg.options.on_failure == OnFailure::Park) {
        Ok(Added::Written | Added::Known) => {
            crate::trace::event!(
                WARN,
                "strata::projection",
                projection = %reg.name,
                partition = e.partition,
                position = e.position,
                stream = %e.stream_id,
                version = e.version,
                attempts,
                error,
                "dead-lettered"
            );
            Ok(())
        }
        Ok(Added::Full(max)) => Err(format!(
            "the dead-letter queue holds its limit of {max} letters (ProjectionOptions::max_dead_letters): \
             replay or discard them, then register the projection again; the event at position {} failed: {error}",
            e.position
        )),
        Err(err) => Err(format!("writing the dead letter for position {} failed: {err}", e.position)),
    }
}

/// Stops a task (until the projection is registered again) and wakes whoever waits on it.
pub(super) fn stop_task(inner: &Inner, t: &Task, why: String) {
    crate::trace::event!(
        WARN,
        "strata::projection",
        projection = %t.projection.name,
        partition = t.partition,
        position = t.next.load(Ordering::Acquire),
        reason = %why,
        "projection stopped"
    );
    *t.error.lock() = Some(why);
    inner.progress.bump();
}

/// Records `done` as handled: the task's position, then its durable checkpoint.
fn advance(inner: &Inner, t: &Task, done: &[RecordedEvent]) {
    let Some(last) = done.last() else { return };
    let reg = &t.projection;
    reg.handled.fetch_add(done.len() as u64, Ordering::Relaxed);
    t.last_time.store(last.timestamp_nanos, Ordering::Release);
    t.next.store(last.position + 1, Ordering::Release);
    inner.progress.bump();
    if reg.engine_checkpoints() {
        inner.dirty.bump();
    }
}

/// A batch's trace (feature `tracing`): its span, entered while `handle` runs, and the event
/// that sums the batch up, sent when `handle` returns, whichever way it does.
#[cfg(feature = "tracing")]
struct BatchTrace<'a> {
    t: &'a Task,
    from: u64,
    /// Events read for the batch.
    read: usize,
    dead_lettered: u32,
    /// `handle` went through the whole batch.
    done: bool,
    started: crate::trace::Timer,
    _span: tracing::span::EnteredSpan,
}

#[cfg(feature = "tracing")]
impl<'a> BatchTrace<'a> {
    fn start(t: &'a Task, from: u64) -> BatchTrace<'a> {
        let name = t.projection.name.as_str();
        crate::trace::span!(
            span,
            DEBUG,
            "strata::projection",
            "batch",
            projection = name,
            partition = t.partition,
            from
        );
        crate::trace::timer!(started, DEBUG);
        BatchTrace { t, from, read: 0, dead_lettered: 0, done: false, started, _span: span }
    }
}

#[cfg(feature = "tracing")]
impl Drop for BatchTrace<'_> {
    fn drop(&mut self) {
        let next = self.t.next.load(Ordering::Acquire);
        let outcome = if self.t.error.lock().is_some() {
            "stopped"
        } else if self.read == 0 {
            // The store closed under the engine, or compaction erased the positions read.
            if next == self.from { "closed" } else { "gap" }
        } else if !self.done {
            // The engine is stopping: the rest is handled after a restart.
            "interrupted"
        } else if self.dead_lettered > 0 {
            "dead_lettered"
        } else {
            "ok"
        };
        crate::trace::event!(
            DEBUG,
            "strata::projection",
            projection = self.t.projection.name.as_str(),
            partition = self.t.partition,
            events = self.read,
            first_position = self.from,
            next_position = next,
            dead_lettered = self.dead_lettered,
            outcome,
            duration_us = self.started.us(),
            "batch"
        );
    }
}
