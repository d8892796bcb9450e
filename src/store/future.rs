//! What an asynchronous append returns: a future of its result, answered by the partition's
//! writer (or at once, by a backend that answered already).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::{Error, Result};
use crate::event::AppendResult;
use crate::log::reply::Replies;

enum FutureState {
    Waiting(oneshot::Receiver<Result<AppendResult>>),
    /// Answer `.1` of an `append_many`'s shared replies.
    Shared(Arc<Replies>, usize),
    Failed(Option<Error>),
}

/// A pending append from [`Store::append_async`](crate::Store::append_async) or [`Store::append_many`](crate::Store::append_many); resolves when the
/// append is durable.
#[must_use = "an append future does nothing visible unless awaited or waited on"]
pub struct AppendFuture {
    state: FutureState,
}

impl std::fmt::Debug for AppendFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendFuture").finish_non_exhaustive()
    }
}

impl AppendFuture {
    pub(crate) fn waiting(rx: oneshot::Receiver<Result<AppendResult>>) -> AppendFuture {
        AppendFuture { state: FutureState::Waiting(rx) }
    }

    /// Answer `i` of an `append_many`'s shared replies.
    pub(crate) fn shared(replies: Arc<Replies>, i: usize) -> AppendFuture {
        AppendFuture { state: FutureState::Shared(replies, i) }
    }

    pub(crate) fn failed(e: Error) -> AppendFuture {
        AppendFuture { state: FutureState::Failed(Some(e)) }
    }

    /// A future that is already answered.
    #[cfg(feature = "jetstream")]
    pub(crate) fn ready(r: Result<AppendResult>) -> AppendFuture {
        match r {
            Ok(r) => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Ok(r));
                AppendFuture { state: FutureState::Waiting(rx) }
            }
            Err(e) => AppendFuture { state: FutureState::Failed(Some(e)) },
        }
    }

    /// Blocks the current thread until the append completes.
    pub fn wait(self) -> Result<AppendResult> {
        match self.state {
            FutureState::Waiting(rx) => rx.recv().map_err(|_| Error::Closed)?,
            FutureState::Shared(replies, i) => replies.wait(i),
            FutureState::Failed(e) => Err(e.unwrap_or(Error::Closed)),
        }
    }
}

impl Future for AppendFuture {
    type Output = Result<AppendResult>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let poll = match &mut self.state {
            FutureState::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(Error::Closed))),
            FutureState::Shared(replies, i) => replies.poll(*i, cx),
            FutureState::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(r)) => Poll::Ready(r),
                Poll::Ready(Err(_)) => Poll::Ready(Err(Error::Closed)),
                Poll::Pending => Poll::Pending,
            },
        };
        if poll.is_ready() {
            // Polled again after its answer, a future says `Closed` rather than wait forever.
            self.state = FutureState::Failed(None);
        }
        poll
    }
}
