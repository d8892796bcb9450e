//! Where an append's outcome goes back to its caller.
//!
//! A single append gets a one-shot channel of its own. The appends of one
//! [`Store::append_many`](crate::Store::append_many) share one [`Replies`]: one allocation and
//! one lock for the whole call instead of a channel each. Each append owns a [`Slot`] of it;
//! the writer fills the slots of a group (a run of slots of one `Replies` under one lock) and
//! then wakes the waiters once. A slot dropped unfilled (its request was dropped: the writer is
//! gone) answers [`Error::Closed`], so no waiter waits forever.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::event::AppendResult;

/// The shared answers of one `append_many` call.
pub(crate) struct Replies {
    state: Mutex<State>,
    ready: Condvar,
}

struct State {
    /// One answer per slot, taken by its future.
    results: Vec<Option<Result<AppendResult>>>,
    /// Futures polled before their answer came.
    wakers: Vec<Waker>,
}

impl Replies {
    /// Room for `n` answers.
    pub fn new(n: usize) -> Arc<Replies> {
        let results = (0..n).map(|_| None).collect();
        Arc::new(Replies { state: Mutex::new(State { results, wakers: Vec::new() }), ready: Condvar::new() })
    }

    /// The slot for answer `index`.
    pub fn slot(self: &Arc<Self>, index: usize) -> Slot {
        Slot { replies: Some(self.clone()), index }
    }

    /// Blocks until answer `index` is there, and takes it. Each index is taken once.
    pub fn wait(&self, index: usize) -> Result<AppendResult> {
        let mut st = self.state.lock();
        loop {
            match st.results.get_mut(index) {
                None => return Err(Error::Closed),
                Some(r) => {
                    if let Some(r) = r.take() {
                        return r;
                    }
                }
            }
            self.ready.wait(&mut st);
        }
    }

    /// Takes answer `index` if it is there; otherwise `cx` is woken when answers arrive.
    pub fn poll(&self, index: usize, cx: &mut Context<'_>) -> Poll<Result<AppendResult>> {
        let mut st = self.state.lock();
        match st.results.get_mut(index) {
            None => Poll::Ready(Err(Error::Closed)),
            Some(r) => match r.take() {
                Some(r) => Poll::Ready(r),
                None => {
                    if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                        st.wakers.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
            },
        }
    }

    /// Stores answers under one lock, then wakes every waiter.
    fn fill(&self, answers: impl Iterator<Item = (usize, Result<AppendResult>)>) {
        let wakers = {
            let mut st = self.state.lock();
            for (i, r) in answers {
                if let Some(slot) = st.results.get_mut(i) {
                    *slot = Some(r);
                }
            }
            std::mem::take(&mut st.wakers)
        };
        self.ready.notify_all();
        for w in wakers {
            w.wake();
        }
    }
}

/// One append's place in a [`Replies`]. Answered once; dropped unanswered, it answers
/// [`Error::Closed`].
pub(crate) struct Slot {
    replies: Option<Arc<Replies>>,
    index: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(r) = self.replies.take() {
            r.fill(std::iter::once((self.index, Err(Error::Closed))));
        }
    }
}

/// Where one request's answer goes.
pub(crate) enum ReplyTo {
    /// A channel of its own.
    One(oneshot::Sender<Result<AppendResult>>),
    /// A slot of a shared [`Replies`].
    Slot(Slot),
}

impl ReplyTo {
    /// Answers one request.
    pub fn send(self, r: Result<AppendResult>) {
        match self {
            ReplyTo::One(tx) => {
                let _ = tx.send(r);
            }
            ReplyTo::Slot(mut s) => {
                if let Some(replies) = s.replies.take() {
                    replies.fill(std::iter::once((s.index, r)));
                }
            }
        }
    }
}

/// Answers many requests: the slots of one `Replies` that come one after another (the
/// appends of one `append_many` do, in a group) are filled under one lock, with one wake-up.
pub(crate) fn answer_all(answers: impl IntoIterator<Item = (ReplyTo, Result<AppendResult>)>) {
    let mut run: Option<Arc<Replies>> = None;
    let mut pending: Vec<(usize, Result<AppendResult>)> = Vec::new();
    let flush = |run: &mut Option<Arc<Replies>>, pending: &mut Vec<(usize, Result<AppendResult>)>| {
        if let Some(r) = run.take() {
            r.fill(pending.drain(..));
        }
    };
    for (to, r) in answers {
        match to {
            ReplyTo::One(tx) => {
                let _ = tx.send(r);
            }
            ReplyTo::Slot(mut s) => {
                let Some(replies) = s.replies.take() else { continue };
                if !run.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, &replies)) {
                    flush(&mut run, &mut pending);
                    run = Some(replies);
                }
                pending.push((s.index, r));
            }
        }
    }
    flush(&mut run, &mut pending);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(n: u64) -> Result<AppendResult> {
        Ok(AppendResult {
            partition: 0,
            first_position: n,
            first_version: 0,
            last_version: 0,
            timestamp_nanos: 0,
            duplicate: false,
        })
    }

    #[test]
    fn slots_are_answered_once_each_and_dropped_ones_say_closed() {
        let replies = Replies::new(3);
        let (a, b, c) = (replies.slot(0), replies.slot(1), replies.slot(2));
        let waiter = {
            let replies = replies.clone();
            std::thread::spawn(move || replies.wait(1))
        };
        answer_all([(ReplyTo::Slot(a), result(10)), (ReplyTo::Slot(b), result(11))]);
        drop(c);
        assert_eq!(waiter.join().unwrap().unwrap().first_position, 11);
        assert_eq!(replies.wait(0).unwrap().first_position, 10);
        assert!(matches!(replies.wait(2), Err(Error::Closed)));
        assert!(matches!(replies.wait(7), Err(Error::Closed)));
    }
}
