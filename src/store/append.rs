//! Appending: each append encoded and checked against the limits in the caller's thread,
//! routed under the routing lock (a grow's cutover takes it for writing), and queued for its
//! partition's writer, which group-commits it (`log::writer`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{Error, Result};
use crate::event::{AppendResult, EventData, ExpectedVersion};
use crate::format::batch;
use crate::log::{AppendRequest, Queued, Reply};
use crate::router::{self, stream_hash};

use super::Store;

impl Store {
    /// An append request for the writers: the events encoded and checked against the limits.
    fn request(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<(AppendRequest, Reply)> {
        let batch = batch::encode(stream, events, self.shared.limits)?;
        Ok(AppendRequest::new(stream, stream_hash(stream), expected, batch, events.len() as u32))
    }

    fn submit(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<Reply> {
        let (req, rx) = self.request(stream, expected, events)?;
        // Route and queue under the senders' read lock: a grow's cutover waits for it.
        let senders = self.senders.read();
        let p = router::jump_consistent_hash(req.hash, self.partition_count());
        self.shared.check_appends(p)?;
        let sender = senders.get(p as usize).ok_or(Error::Closed)?;
        sender.send(Queued::One(req)).map_err(|_| Error::Closed)?;
        Ok(rx)
    }

    /// Appends `events` to `stream` atomically (all or none), if the stream's version
    /// satisfies `expected`; returns once the events are durable under the configured
    /// [`Durability`](crate::Durability).
    ///
    /// Errors: [`Error::WrongExpectedVersion`] (nothing written), [`Error::InvalidStreamId`],
    /// [`Error::EventTooLarge`], [`Error::AppendTooLarge`], [`Error::EmptyAppend`],
    /// [`Error::StorageFull`], [`Error::Poisoned`] after a failed fsync.
    ///
    /// The validation and concurrency errors mean nothing was written. After an I/O error
    /// ([`Error::Io`], [`Error::StorageFull`], [`Error::Poisoned`]) the outcome is unknown in
    /// general (the bytes may or may not be on disk): retry with an `Exact` expected version,
    /// never with `Any`, so a retry cannot append twice.
    pub fn append(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<AppendResult> {
        let started = std::time::Instant::now();
        let rx = self.submit(stream, expected, events)?;
        let r = rx.recv().map_err(|_| Error::Closed)?;
        if r.is_ok() {
            self.shared.append_latency.record(started.elapsed());
        }
        r
    }

    /// Submits several appends at once, each to its own stream with its own expected version,
    /// and returns one future per append, in order. Appends bound for the same partition
    /// reach its writer together, so they share one group commit (one write, one
    /// `fdatasync`): committing the events of a thousand aggregates this way costs one sync per
    /// partition, where a thousand [`Store::append_async`] calls may each wake a writer.
    ///
    /// Each append is atomic and checked on its own, exactly as [`Store::append`]: some may
    /// fail (say, a wrong expected version) while others succeed. The set is not a transaction.
    /// The events of each may be borrowed (`&[EventData]`) or owned (`Vec<EventData>`, an
    /// array).
    ///
    /// ```
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// let pending = store.append_many((0..100).map(|i| {
    ///     let deposit = EventData::new("Deposited", format!("{{\"amount\":{i}}}"));
    ///     (format!("account-{i}"), ExpectedVersion::NoStream, vec![deposit])
    /// }));
    /// for p in pending {
    ///     assert_eq!(p.wait()?.first_version, 0);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_many<S: AsRef<str>, E: AsRef<[EventData]>>(
        &self,
        appends: impl IntoIterator<Item = (S, ExpectedVersion, E)>,
    ) -> Vec<AppendFuture> {
        let mut futures = Vec::new();
        let mut queued: Vec<AppendRequest> = Vec::new();
        for (stream, expected, events) in appends {
            match self.request(stream.as_ref(), expected, events.as_ref()) {
                Ok((req, rx)) => {
                    queued.push(req);
                    futures.push(AppendFuture { state: FutureState::Waiting(rx) });
                }
                Err(e) => futures.push(AppendFuture { state: FutureState::Failed(Some(e)) }),
            }
        }
        // Route under the senders' read lock (a grow's cutover waits for it), then one message
        // per partition. A failed send drops the requests: their futures report `Closed`.
        let senders = self.senders.read();
        let count = self.partition_count();
        let mut per_partition: Vec<Vec<AppendRequest>> = (0..count).map(|_| Vec::new()).collect();
        for req in queued {
            let p = router::jump_consistent_hash(req.hash, count);
            if let Err(e) = self.shared.check_appends(p) {
                // Refused until reopen: its future gets the reason.
                let _ = req.reply.send(Err(e));
                continue;
            }
            if let Some(v) = per_partition.get_mut(p as usize) {
                v.push(req);
            }
        }
        // Each message within a group's limits: a group is one write, and the writer checks
        // for a segment roll only between groups.
        let cfg = &self.shared.writer_cfg;
        for (sender, reqs) in senders.iter().zip(per_partition) {
            let mut message: Vec<AppendRequest> = Vec::new();
            let mut bytes = 0;
            for req in reqs {
                if !message.is_empty()
                    && (message.len() >= cfg.max_group_appends || bytes + req.batch.len() > cfg.max_group_bytes)
                {
                    let _ = sender.send(Queued::Many(std::mem::take(&mut message)));
                    bytes = 0;
                }
                bytes += req.batch.len();
                message.push(req);
            }
            if !message.is_empty() {
                let _ = sender.send(Queued::Many(message));
            }
        }
        futures
    }

    /// Like [`Store::append`], without blocking: the returned future completes when the append
    /// is durable. It works with any executor (strata depends on none). The append is submitted
    /// when this is called: dropping the future does not cancel it.
    ///
    /// ```
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// let pending = store.append_async("cart-9", ExpectedVersion::Any, &[EventData::new("Added", b"x".to_vec())]);
    /// // ... in async code: `pending.await?`; here, block on it:
    /// let r = pending.wait()?;
    /// assert_eq!(r.first_version, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_async(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> AppendFuture {
        match self.submit(stream, expected, events) {
            Ok(rx) => AppendFuture { state: FutureState::Waiting(rx) },
            Err(e) => AppendFuture { state: FutureState::Failed(Some(e)) },
        }
    }
}

enum FutureState {
    Waiting(oneshot::Receiver<Result<AppendResult>>),
    Failed(Option<Error>),
}

/// A pending append from [`Store::append_async`]; resolves when the append is durable.
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
    /// Blocks the current thread until the append completes.
    pub fn wait(self) -> Result<AppendResult> {
        match self.state {
            FutureState::Waiting(rx) => rx.recv().map_err(|_| Error::Closed)?,
            FutureState::Failed(e) => Err(e.unwrap_or(Error::Closed)),
        }
    }
}

impl Future for AppendFuture {
    type Output = Result<AppendResult>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            FutureState::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(Error::Closed))),
            FutureState::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(r)) => Poll::Ready(r),
                Poll::Ready(Err(_)) => Poll::Ready(Err(Error::Closed)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
