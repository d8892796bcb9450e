//! A wake-up primitive: a sequence number bumped by whoever changes something, waited on by
//! whoever follows it. The partition writers bump the store's after each head change; the
//! projection engine uses its own for progress and checkpoint rounds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Waker;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A store-wide signal of head changes: writers bump it after publishing a new head, and
/// followers (projection workers) wait on it instead of polling. Bumping costs an atomic
/// increment and a load when nobody waits.
#[derive(Debug, Default)]
pub(crate) struct HeadSignal {
    seq: AtomicU64,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
    /// Tasks waiting (subscriptions' futures), woken by the next bump; `waiters` counts them.
    wakers: Mutex<Vec<Waker>>,
}

impl HeadSignal {
    /// The current sequence number: pass it to [`HeadSignal::wait`].
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    // SeqCst: a bump's store to `seq` then load of `waiters`, against a waiter's store to
    // `waiters` then load of `seq`, must not both miss the other.
    pub fn bump(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders this wake-up after a waiter's check of `seq`.
            let _guard = self.lock.lock();
            self.cv.notify_all();
            let wakers = std::mem::take(&mut *self.wakers.lock());
            self.waiters.fetch_sub(wakers.len(), Ordering::SeqCst);
            for w in wakers {
                w.wake();
            }
        }
    }

    /// Has `waker` woken by the next bump. Returns whether the sequence number is still
    /// `seen` (if not, there is nothing to wait for, and the waker may be woken for
    /// nothing). A registered waker counts as a waiter until that bump.
    pub fn register(&self, seen: u64, waker: &Waker) -> bool {
        let _guard = self.lock.lock();
        let mut wakers = self.wakers.lock();
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
            self.waiters.fetch_add(1, Ordering::SeqCst);
        }
        // After counting as a waiter: a bump from here on sees the count and wakes it.
        self.seq.load(Ordering::SeqCst) == seen
    }

    /// Waits until the sequence number differs from `seen`, or `timeout` passes.
    pub fn wait(&self, seen: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout.min(Duration::from_secs(3600));
        let mut guard = self.lock.lock();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        while self.seq.load(Ordering::SeqCst) == seen {
            if self.cv.wait_until(&mut guard, deadline).timed_out() {
                break;
            }
        }
        self.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}
