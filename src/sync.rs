//! A wake-up primitive: a sequence number bumped by whoever changes something, waited on by
//! whoever follows it. The partition writers bump the store's after each head change; the
//! projection engine uses its own for progress and checkpoint rounds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
        }
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
