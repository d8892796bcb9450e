//! Projections shared between processes, on a log that several processes open (the JetStream
//! backend; docs/jetstream.md, "Projections across processes"). Every process that registers a
//! projection under one name runs a share of its partitions; the cluster decides who runs which
//! through leases, and holds the checkpoints and the dead letters, so a partition moves from one
//! process to another with its position and its parked streams.
//!
//! One thread per engine (`strata-leases`, `run_keeper`) keeps the leases. Every quarter of the
//! lease time (and at once after a registration) it runs a round per shared projection:
//!
//! 1. It renews every lease it holds. A renewal refused (the lease expired and another process
//!    took it) gives the partition up at once; one that cannot reach the cluster is tried again
//!    next round, and a lease not renewed for its whole time is given up too.
//! 2. It announces this process as a member and counts the members: each runs at most
//!    `ceil(partitions / members)` partitions.
//! 3. Above that share, it gives up its highest partitions: one with no batch in flight (else
//!    at a later round), its checkpoint stored, its lease deleted, so another process takes it
//!    at its next round.
//! 4. Below it, it tries to take free partitions, starting at an offset of its own. Taking one
//!    holds the task's claim (a task with a batch in flight from an earlier hold waits for a
//!    later round), claims its checkpoint on the cluster (see `store::jetstream::shared`), sets
//!    the task's position to it, and only then lets the workers run it. The keeper never waits
//!    for a handler, so a slow batch cannot keep it from renewing its other leases.
//! 5. For the partitions other processes run, it reads their checkpoints, so `status` and
//!    `wait_caught_up` see the whole projection, and it reads the dead-letter records it has
//!    not seen.
//!
//! The workers run a partition only while its lease has a quarter of its time left (so a batch
//! starts well before the lease could expire), and the checkpointer stores checkpoints by
//! compare-and-set: a process that stalled past its lease learns from the refused write that
//! another process took the partition, and stops running it. A batch started before a lease ran
//! out and handled after (a handler slower than a quarter of the lease time) can overlap the next
//! owner's first batch: delivery is at least once, as after a crash.
//!
//! When the engine stops, after its last checkpoints, the keeper gives every lease up and
//! withdraws the membership, so the other processes take the partitions at their next round.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::store::seam::Shared;

use super::Checkpoints;
use super::state::{Inner, Registered, Task};

/// The lease keeper's loop (see the module docs).
pub(super) fn run_keeper(inner: Arc<Inner>) {
    let Some(shared) = inner.log.shared() else { return };
    loop {
        let seen = inner.keeper_wake.seq();
        if inner.keeper_stop.load(Ordering::Acquire) {
            give_up_all(&inner, shared);
            return;
        }
        round(&inner, shared);
        inner.keeper_wake.wait(seen, shared.lease_ttl() / 4);
    }
}

/// The shared projections in the task list, each with its tasks.
fn shared_projections(inner: &Inner) -> Vec<(Arc<Registered>, Vec<Arc<Task>>)> {
    let tasks = inner.tasks.read().clone();
    let mut out: Vec<(Arc<Registered>, Vec<Arc<Task>>)> = Vec::new();
    for t in tasks.iter().filter(|t| t.projection.shared && !t.retired.load(Ordering::Acquire)) {
        match out.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &t.projection)) {
            Some((_, mine)) => mine.push(t.clone()),
            None => out.push((t.projection.clone(), vec![t.clone()])),
        }
    }
    out
}

fn round(inner: &Inner, shared: &dyn Shared) {
    let ttl = shared.lease_ttl();
    for (reg, mine) in shared_projections(inner) {
        let name = reg.name.as_str();
        for t in mine.iter().filter(|t| t.held.load(Ordering::Acquire)) {
            let Some(mut claim) = t.lease.lock().clone() else { continue };
            match shared.renew(name, t.partition, &mut claim) {
                Ok(true) => {
                    if let Some(c) = t.lease.lock().as_mut() {
                        c.lease = claim.lease;
                        c.renewed = claim.renewed;
                    }
                }
                Ok(false) => lose(t, "its lease was taken"),
                Err(_) if claim.renewed.elapsed() >= ttl => lose(t, "its lease could not be renewed"),
                Err(_) => {}
            }
        }
        let Ok(members) = shared.join(name) else { continue };
        let share = mine.len().div_ceil(members.max(1));
        let held: Vec<&Arc<Task>> = mine.iter().filter(|t| t.held.load(Ordering::Acquire)).collect();
        for t in held.iter().rev().take(held.len().saturating_sub(share)) {
            give_up(inner, shared, t, false);
        }
        let mut have = held.len().min(share);
        if have < share {
            // Start where this process's name points, so that processes starting together
            // try different partitions first.
            let offset = shared.owner().bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
            let n = mine.len();
            for k in 0..n {
                if have >= share {
                    break;
                }
                let Some(t) = mine.get((offset + k) % n) else { continue };
                if !t.held.load(Ordering::Acquire) && take(inner, shared, &reg, t) {
                    have += 1;
                }
            }
        }
        for t in mine.iter().filter(|t| !t.held.load(Ordering::Acquire)) {
            if let Ok(Some(c)) = shared.checkpoint(name, t.partition) {
                t.next.store(c.position, Ordering::Release);
                t.durable.store(c.position, Ordering::Release);
                t.last_time.store(c.time, Ordering::Release);
                *t.owner.lock() = Some(c.owner);
            }
        }
        if let Some(d) = &reg.dlq {
            let _ = d.refresh();
        }
        inner.progress.bump();
    }
}

/// Takes `t`'s partition if no process holds it: its position becomes the checkpoint the
/// cluster holds, and the workers may run it.
fn take(inner: &Inner, shared: &dyn Shared, reg: &Registered, t: &Task) -> bool {
    // A batch of an earlier hold of this partition may still be running: not this round
    // (the keeper never waits for a handler, or it could miss renewing its other leases).
    if !t.claim() {
        return false;
    }
    let Ok(Some((claim, found))) = shared.acquire(&reg.name, t.partition) else {
        t.release();
        return false;
    };
    // The partition's dead letters and parked streams as its last owner left them.
    if let Some(d) = &reg.dlq {
        let _ = d.refresh();
    }
    let start = match reg.options.checkpoints {
        Checkpoints::Engine => found.position,
        Checkpoints::Projection => reg.handler.checkpoint(t.partition),
    };
    // Never past the head (a checkpoint cannot be ahead of a log that loses nothing, but a
    // position past it would skip the events that fill it).
    let start = inner.log.heads(t.partition).map_or(start, |h| start.min(h.head));
    t.next.store(start, Ordering::Release);
    t.durable.store(start, Ordering::Release);
    t.last_time.store(found.time, Ordering::Release);
    *t.lease.lock() = Some(claim);
    *t.owner.lock() = None;
    t.held.store(true, Ordering::Release);
    t.release();
    crate::trace::event!(
        INFO,
        "strata::projection",
        projection = %reg.name,
        partition = t.partition,
        position = start,
        "took the partition"
    );
    inner.log.head_signal().bump();
    true
}

/// Gives `t`'s partition up, with its checkpoint stored; not while a batch of it is in flight
/// (then the next round tries again), except at the engine's stop (`wait`), when the workers
/// are gone.
fn give_up(inner: &Inner, shared: &dyn Shared, t: &Task, wait: bool) {
    while !t.claim() {
        if !wait {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    t.held.store(false, Ordering::Release);
    let claim = t.lease.lock().take();
    if let Some(mut claim) = claim {
        let reg = &t.projection;
        let next = t.next.load(Ordering::Acquire);
        let stored = !reg.engine_checkpoints()
            || next <= t.durable.load(Ordering::Acquire)
            || shared
                .store_checkpoint(&reg.name, t.partition, &mut claim, next, t.last_time.load(Ordering::Acquire))
                .unwrap_or(false);
        if stored {
            t.durable.store(next.max(t.durable.load(Ordering::Acquire)), Ordering::Release);
        }
        // Even if the checkpoint was not stored (another process took the partition, or the
        // cluster is unreachable): the next owner redelivers from the stored one.
        let _ = shared.release(&reg.name, t.partition, &claim);
        crate::trace::event!(
            INFO,
            "strata::projection",
            projection = %reg.name,
            partition = t.partition,
            position = next,
            "gave the partition up"
        );
    }
    t.release();
    inner.progress.bump();
}

/// The partition is no longer this process's (its lease was taken or ran out).
fn lose(t: &Task, why: &str) {
    let _ = why; // for the trace
    t.held.store(false, Ordering::Release);
    *t.lease.lock() = None;
    crate::trace::event!(
        WARN,
        "strata::projection",
        projection = %t.projection.name,
        partition = t.partition,
        reason = why,
        "lost the partition"
    );
}

/// At the engine's stop: every lease given up, every membership withdrawn.
fn give_up_all(inner: &Inner, shared: &dyn Shared) {
    for (reg, mine) in shared_projections(inner) {
        for t in mine.iter().filter(|t| t.held.load(Ordering::Acquire)) {
            give_up(inner, shared, t, true);
        }
        shared.leave(&reg.name);
    }
}
