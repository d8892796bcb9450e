//! Appending: each append encoded and checked against the limits in the caller's thread,
//! routed under the routing lock (a grow's cutover takes it for writing), and queued for its
//! partition's writer, which group-commits it (`log::writer`).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::event::{AppendResult, EventData, EventId, ExpectedVersion};
use crate::format::batch;
use crate::log::reply::{Replies, ReplyTo};
use crate::log::{AppendRequest, BatchBytes, Queued, Reply, StreamName};
use crate::router::{self, stream_hash};

use super::future::AppendFuture;
use super::{Local, Store};

impl Local {
    /// An append request for the writers: the events encoded and checked against the limits.
    fn request(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<(AppendRequest, Reply)> {
        let batch = batch::encode(stream, events, self.shared.limits)?;
        let (mut req, rx) = AppendRequest::new(stream, stream_hash(stream), expected, batch, events.len() as u32);
        req.ids = ids_of(events);
        Ok((req, rx))
    }

    fn submit(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<Reply> {
        let (req, rx) = self.request(stream, expected, events)?;
        // Route and queue under the senders' read lock: a grow's cutover waits for it.
        let senders = self.senders.read();
        let p = self.partition_given(stream, req.hash);
        self.shared.check_appends(p)?;
        let sender = senders.get(p as usize).ok_or(Error::Closed)?;
        sender.send(Queued::One(req)).map_err(|_| Error::Closed)?;
        Ok(rx)
    }

    pub(crate) fn append(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<AppendResult> {
        let started = std::time::Instant::now();
        let rx = self.submit(stream, expected, events)?;
        let r = rx.recv().map_err(|_| Error::Closed)?;
        if r.is_ok() {
            self.shared.append_latency.record(started.elapsed());
        }
        r
    }

    pub(crate) fn append_many<S: AsRef<str>, E: AsRef<[EventData]>>(
        &self,
        appends: impl IntoIterator<Item = (S, ExpectedVersion, E)>,
    ) -> Vec<AppendFuture> {
        // Every append is encoded into one shared buffer, and answered through one shared
        // `Replies`: no allocation per append beyond its ids (`log::reply`).
        struct Encoded {
            range: std::ops::Range<usize>,
            name: std::ops::Range<usize>,
            hash: u64,
            expected: ExpectedVersion,
            event_count: u32,
            ids: Option<Box<[EventId]>>,
        }
        let appends = appends.into_iter();
        // Per append: its index among the encoded ones, or why it was refused before queuing.
        let mut outcomes: Vec<Result<usize>> = Vec::with_capacity(appends.size_hint().0);
        let (mut buf, mut names) = (Vec::new(), String::new());
        let mut encoded: Vec<Encoded> = Vec::with_capacity(appends.size_hint().0);
        for (stream, expected, events) in appends {
            let (stream, events) = (stream.as_ref(), events.as_ref());
            match batch::encode_into(&mut buf, stream, events, self.shared.limits) {
                Ok(range) => {
                    if encoded.is_empty() {
                        // Room for as many more of this size as are announced (one allocation
                        // in the common case), but no more than `RESERVE_MAX` on a guess: a
                        // large first append says little about the rest.
                        const RESERVE_MAX: usize = 64 << 20;
                        let more = outcomes.capacity().saturating_sub(outcomes.len() + 1);
                        buf.reserve(range.len().saturating_mul(more).min(RESERVE_MAX));
                        names.reserve(stream.len().saturating_mul(more + 1).min(RESERVE_MAX));
                    }
                    outcomes.push(Ok(encoded.len()));
                    let name = names.len()..names.len() + stream.len();
                    names.push_str(stream);
                    encoded.push(Encoded {
                        range,
                        name,
                        hash: stream_hash(stream),
                        expected,
                        event_count: events.len() as u32,
                        ids: ids_of(events),
                    });
                }
                Err(e) => outcomes.push(Err(e)),
            }
        }
        let replies = Replies::new(encoded.len());
        let futures = outcomes
            .into_iter()
            .map(|o| match o {
                Ok(i) => AppendFuture::shared(replies.clone(), i),
                Err(e) => AppendFuture::failed(e),
            })
            .collect();
        let (buf, names): (_, Arc<str>) = (Arc::new(buf), names.into());
        // Route and queue under the senders' read lock: a grow's cutover waits for it.
        let senders = self.senders.read();
        let count = self.partition_count();
        // Each partition's appends go straight into its message, each message within a group's
        // limits: a group is one write, and the writer checks for a segment roll only between
        // groups.
        let cfg = &self.shared.writer_cfg;
        let room = (encoded.len() / count.max(1) as usize + encoded.len() / 8 + 4).min(cfg.max_group_appends);
        let mut messages: Vec<(Vec<AppendRequest>, usize)> = (0..count).map(|_| (Vec::new(), 0)).collect();
        for (i, e) in encoded.into_iter().enumerate() {
            let p = router::jump_consistent_hash(
                router::route_hash_given(self.shared.hash_id, names.get(e.name.clone()).unwrap_or(""), e.hash),
                count,
            );
            let bytes = BatchBytes::Shared { buf: buf.clone(), range: e.range };
            let name = StreamName::Shared { names: names.clone(), range: e.name };
            let reply = ReplyTo::Slot(replies.slot(i));
            let len = bytes.get().len();
            let mut req = AppendRequest::to(name, e.hash, e.expected, bytes, e.event_count, reply);
            req.ids = e.ids;
            if let Err(e) = self.shared.check_appends(p) {
                // Refused until reopen: its future gets the reason.
                req.reply.send(Err(e));
                continue;
            }
            let (Some((message, size)), Some(sender)) = (messages.get_mut(p as usize), senders.get(p as usize)) else {
                continue;
            };
            if !message.is_empty() && (message.len() >= cfg.max_group_appends || *size + len > cfg.max_group_bytes) {
                // A failed send drops the requests: their futures report `Closed`.
                let _ = sender.send(Queued::Many(std::mem::replace(message, Vec::with_capacity(room))));
                *size = 0;
            }
            if message.capacity() == 0 {
                message.reserve_exact(room);
            }
            *size += len;
            message.push(req);
        }
        for (sender, (message, _)) in senders.iter().zip(messages) {
            if !message.is_empty() {
                let _ = sender.send(Queued::Many(message));
            }
        }
        futures
    }

    pub(crate) fn append_atomic<S: AsRef<str>, E: AsRef<[EventData]>>(
        &self,
        appends: impl IntoIterator<Item = (S, ExpectedVersion, E)>,
    ) -> Result<Vec<AppendResult>> {
        let started = std::time::Instant::now();
        let mut reqs: Vec<AppendRequest> = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        let mut bytes = 0u64;
        for (stream, expected, events) in appends {
            let (req, rx) = self.request(stream.as_ref(), expected, events.as_ref())?;
            bytes += req.batch.get().len() as u64;
            reqs.push(req);
            replies.push(rx);
        }
        let Some(first) = reqs.first() else { return Err(Error::EmptyAppend) };
        if bytes > self.shared.limits.max_append_bytes {
            return Err(Error::AppendTooLarge { size: bytes, limit: self.shared.limits.max_append_bytes });
        }
        let senders = self.senders.read();
        let p = self.partition_given(first.stream(), first.hash);
        for (i, r) in reqs.iter().enumerate() {
            if let Some(twice) = reqs.get(..i).and_then(|before| before.iter().find(|b| b.stream() == r.stream())) {
                return Err(Error::NotColocated {
                    reason: format!("stream {:?} is named twice; append its events as one part", twice.stream()),
                });
            }
            let q = self.partition_given(r.stream(), r.hash);
            if q != p {
                return Err(Error::NotColocated {
                    reason: format!(
                        "stream {:?} lives in partition {p} and {:?} in partition {q}; only streams of one partition can be written atomically: give them a shared co-location key, such as {{{}}}/…",
                        first.stream(),
                        r.stream(),
                        router::colocation_key(first.stream())
                    ),
                });
            }
        }
        self.shared.check_appends(p)?;
        if let Some(r) = reqs.first_mut() {
            r.unit = replies.len() as u32;
        }
        let sender = senders.get(p as usize).ok_or(Error::Closed)?;
        sender.send(Queued::Many(reqs)).map_err(|_| Error::Closed)?;
        drop(senders);
        let mut out = Vec::with_capacity(replies.len());
        let mut failed = None;
        for rx in replies {
            match rx.recv().map_err(|_| Error::Closed).and_then(|r| r) {
                Ok(r) => out.push(r),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        self.shared.append_latency.record(started.elapsed());
        Ok(out)
    }

    pub(crate) fn append_async(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> AppendFuture {
        match self.submit(stream, expected, events) {
            Ok(rx) => AppendFuture::waiting(rx),
            Err(e) => AppendFuture::failed(e),
        }
    }
}

/// The events' ids, if every one has an id: the append is then idempotent.
fn ids_of(events: &[EventData]) -> Option<Box<[EventId]>> {
    if events.iter().any(|e| e.id.is_none()) {
        return None;
    }
    events.iter().map(|e| e.id).collect()
}

impl Store {
    /// Appends `events` to `stream` atomically (all or none), if the stream's version
    /// satisfies `expected`; returns once the events are durable under the configured
    /// [`Durability`](crate::Durability).
    ///
    /// Errors: [`Error::WrongExpectedVersion`] (nothing written), [`Error::InvalidStreamId`],
    /// [`Error::EventTooLarge`], [`Error::AppendTooLarge`], [`Error::EmptyAppend`],
    /// [`Error::StorageFull`], [`Error::Poisoned`] after a failed fsync.
    ///
    /// The validation and concurrency errors mean nothing was written. After an I/O error
    /// ([`Error::Io`], [`Error::StorageFull`], [`Error::Poisoned`]), or a crash before the
    /// answer came, the outcome is unknown in general (the bytes may or may not be on disk).
    ///
    /// **Retries.** Give every event an id ([`EventData::with_id`]) and a retry is idempotent:
    /// if the append was committed, the retry returns its [`AppendResult`] with `duplicate` set
    /// and writes nothing, whatever its expected version; if not, it is appended. This holds
    /// across restarts, within [`Options::idempotency_window`](crate::Options::idempotency_window)
    /// (by default the partition's last 10,000 appends). A retry that repeats only some of the
    /// ids is [`Error::IdempotencyConflict`]. Without ids, or outside the window, retry with an
    /// `Exact` expected version, never with `Any`, so a retry cannot append twice.
    ///
    /// ```
    /// # use strata::{EventData, EventId, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// let command = EventId::from_u128(0x5eed);
    /// let events = [EventData::new("Deposited", "10").with_id(EventId::derive(command, "account-1", 0))];
    /// let first = store.append("account-1", ExpectedVersion::NoStream, &events)?;
    /// // The answer was lost; the client retries with the same ids.
    /// let retry = store.append("account-1", ExpectedVersion::NoStream, &events)?;
    /// assert!(retry.duplicate && !first.duplicate);
    /// assert_eq!(retry.first_position, first.first_position);
    /// assert_eq!(store.stream_version("account-1")?, Some(0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append(&self, stream: &str, expected: ExpectedVersion, events: &[EventData]) -> Result<AppendResult> {
        dispatch!(self, append(stream, expected, events))
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
        dispatch!(self, append_many(appends))
    }

    /// Appends to several streams of one partition as one atomic unit: every append is written,
    /// or none is. Each has its own expected version; one that does not match fails the whole
    /// call with its [`Error::WrongExpectedVersion`] (naming its stream), and nothing is
    /// written. On success the results come back in order, and the events lie in one
    /// contiguous run of positions, so projections and partition reads see them together.
    ///
    /// The streams must live in one partition: give their ids a shared co-location key,
    /// `{key}rest` (`{order-17}/payments`, `{order-17}/shipping`): streams with the same key
    /// share a partition at every partition count, grows included. Streams of different
    /// partitions, or one stream named twice, are refused with [`Error::NotColocated`], never
    /// split. The whole unit is limited like one append (`Options::max_append_bytes`).
    /// Recovery keeps a unit whole or drops it whole (FORMAT.md §7.6). If every event of every
    /// part carries an id, a retry of a committed unit returns its results, each marked
    /// `duplicate`; a unit that repeats only some parts is [`Error::IdempotencyConflict`].
    ///
    /// ```
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// let done = store.append_atomic([
    ///     ("{order-17}/payments", ExpectedVersion::NoStream, vec![EventData::new("Paid", "42")]),
    ///     ("{order-17}/shipping", ExpectedVersion::NoStream, vec![EventData::new("Requested", "{}")]),
    /// ])?;
    /// assert_eq!(done[1].first_position, done[0].first_position + 1);
    /// let clash = store.append_atomic([
    ///     ("{order-17}/payments", ExpectedVersion::Exact(0), vec![EventData::new("Refunded", "42")]),
    ///     ("{order-17}/shipping", ExpectedVersion::NoStream, vec![EventData::new("Requested", "{}")]),
    /// ]);
    /// assert!(clash.is_err());
    /// assert_eq!(store.stream_version("{order-17}/payments")?, Some(0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_atomic<S: AsRef<str>, E: AsRef<[EventData]>>(
        &self,
        appends: impl IntoIterator<Item = (S, ExpectedVersion, E)>,
    ) -> Result<Vec<AppendResult>> {
        dispatch!(self, append_atomic(appends))
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
        dispatch!(self, append_async(stream, expected, events))
    }
}
