//! Projections shared between processes (docs/jetstream.md, "Projections across processes"):
//! the backend's side of [`Shared`], the seam the projection engine coordinates through.
//!
//! - **Leases.** Bucket `{prefix}_LEASES` (history 1, `max_age` = the lease time): the entry
//!   `{projection}.p{n}` names the process that runs partition `n` of the projection. It is
//!   created only if absent (`create`), renewed by compare-and-set on its revision, deleted
//!   when given up, and expires on the server when its holder stops renewing it: no client
//!   clock decides who holds a partition. `{projection}.members.{owner}` entries, renewed
//!   with the leases, count the processes running a projection, for a fair share each.
//! - **Checkpoints.** Bucket `{prefix}_CHECKPOINTS` (history 1): `{projection}.p{n}` holds
//!   `{position} {time} {owner}`. Every write is a compare-and-set on the revision the writer
//!   last wrote, and a process taking a lease first rewrites the checkpoint under its own
//!   name. So a late write by a process that lost the partition (it stalled past its lease)
//!   fails, and that process stops running the partition: the revision is a fencing token.
//! - **Consumers.** Each (projection, partition) reads through one durable pull consumer,
//!   `strata-{projection}` on the partition's stream, acknowledged cumulatively (`AckAll`) as
//!   batches are handled, so NATS's own tools show each projection's progress. The checkpoint
//!   entry, not the consumer's ack floor, is where a new owner resumes: it recreates the
//!   consumer at that position. Every delivery's sequence is checked against the position
//!   expected next; a redelivery behind it is skipped, and a jump ahead recreates the
//!   consumer, so a consumer left in any state never loses or reorders an event.
//! - **Dead letters.** Stream `{prefix}_DLQ`, subject `{prefix}_DLQ.{projection}`: each
//!   message is one record of the dead-letter queue's file format (FORMAT.md §13.3), a letter
//!   (its id is the message's sequence) or a resolution naming a letter's id. Every process
//!   reads the records it has not seen, so letters and parked streams follow a partition to
//!   its next owner.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream;
use futures_util::StreamExt;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::event::EventView;
use crate::format::dlq::{self as letters, Letter, Outcome, Record};
use crate::store::seam::{Claim, Shared, SharedCheckpoint};

use super::{Remote, remote, stream_name, subject, wire};

/// The lease time of a store whose lease bucket this process creates.
pub(super) const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// Dead-letter records read per request.
const LETTER_PAGE: usize = 256;

/// The buckets and stream of shared projections, made on first use.
pub(super) struct Coordination {
    leases: kv::Store,
    checkpoints: kv::Store,
    /// The lease time, as the lease bucket's `max_age` has it.
    ttl: Duration,
    /// Each (projection, partition)'s consumer, with the position it delivers next and the
    /// reply subject of its last delivery (for the acknowledgment).
    consumers: Mutex<HashMap<(String, u32), Consumer>>,
}

struct Consumer {
    consumer: PullConsumer,
    next: u64,
    last: Option<(u64, String)>,
}

/// A checkpoint entry's value: `{position} {time} {owner}`.
fn encode_checkpoint(c: &SharedCheckpoint) -> bytes::Bytes {
    format!("{} {} {}", c.position, c.time, c.owner).into()
}

fn decode_checkpoint(value: &[u8]) -> Option<SharedCheckpoint> {
    let text = std::str::from_utf8(value).ok()?;
    let mut fields = text.splitn(3, ' ');
    let position = fields.next()?.parse().ok()?;
    let time = fields.next()?.parse().ok()?;
    let owner = fields.next().unwrap_or_default().to_owned();
    Some(SharedCheckpoint { position, time, owner })
}

fn lease_key(projection: &str, partition: u32) -> String {
    format!("{projection}.p{partition}")
}

fn member_prefix(projection: &str) -> String {
    format!("{projection}.members.")
}

impl Remote {
    pub(super) fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.prefix)
    }

    /// The buckets and the dead-letter stream, created by the first process that needs them.
    pub(super) fn coordination(&self) -> Result<Arc<Coordination>> {
        if let Some(c) = self.coordination.lock().clone() {
            return Ok(c);
        }
        let made = self.block(async {
            let leases = self
                .bucket(kv::Config {
                    bucket: format!("{}_LEASES", self.prefix),
                    history: 1,
                    max_age: self.lease,
                    num_replicas: self.replicas,
                    ..Default::default()
                })
                .await?;
            let checkpoints = self
                .bucket(kv::Config {
                    bucket: format!("{}_CHECKPOINTS", self.prefix),
                    history: 1,
                    num_replicas: self.replicas,
                    ..Default::default()
                })
                .await?;
            let ttl = match leases.status().await {
                Ok(s) if s.max_age() >= Duration::from_secs(1) => s.max_age(),
                Ok(s) => {
                    return Err(Error::IncompatibleServer {
                        server: s.bucket().to_owned(),
                        reason: format!("a lease bucket whose max_age ({:?}) is under 1 s", s.max_age()),
                    });
                }
                Err(e) => return Err(remote("reading the lease bucket's configuration", e)),
            };
            let name = self.dlq_stream();
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![format!("{name}.>")],
                num_replicas: self.replicas,
                storage: stream::StorageType::File,
                allow_direct: true,
                deny_delete: true,
                deny_purge: true,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            };
            if self.js.get_stream(&name).await.is_err()
                && let Err(e) = self.js.create_stream(config).await
                && self.js.get_stream(&name).await.is_err()
            {
                return Err(remote(format!("creating stream {name}"), e));
            }
            Ok(Coordination { leases, checkpoints, ttl, consumers: Mutex::new(HashMap::new()) })
        })?;
        let mut slot = self.coordination.lock();
        Ok(slot.get_or_insert_with(|| Arc::new(made)).clone())
    }

    /// A bucket, created if missing (a concurrent creation by another process is as good).
    async fn bucket(&self, config: kv::Config) -> Result<kv::Store> {
        if let Ok(s) = self.js.get_key_value(&config.bucket).await {
            return Ok(s);
        }
        let deadline = Instant::now() + self.retry_for;
        loop {
            match self.js.create_key_value(config.clone()).await {
                Ok(s) => return Ok(s),
                Err(e) => match self.js.get_key_value(&config.bucket).await {
                    Ok(s) => return Ok(s),
                    Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(_) => return Err(remote(format!("creating bucket {}", config.bucket), e)),
                },
            }
        }
    }

    /// (Re)creates `projection`'s consumer of `partition`, delivering from position `from`.
    async fn new_consumer(&self, projection: &str, partition: u32, from: u64) -> std::result::Result<Consumer, String> {
        let s = self.js.get_stream_no_info(stream_name(&self.prefix, partition)).await.map_err(|e| e.to_string())?;
        let name = format!("strata-{projection}");
        // Whatever its state (another owner's, or ours from before): it restarts at `from`.
        let _ = s.delete_consumer(&name).await;
        let config = pull::Config {
            durable_name: Some(name),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from + 1 },
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: -1,
            // It only carries events: its state can always be rebuilt from the checkpoint.
            num_replicas: 1,
            memory_storage: true,
            inactive_threshold: Duration::from_secs(3600),
            metadata: [("strata.owner".to_string(), self.owner.clone())].into_iter().collect(),
            ..Default::default()
        };
        let consumer = s.create_consumer(config).await.map_err(|e| e.to_string())?;
        Ok(Consumer { consumer, next: from, last: None })
    }

    /// One fetch from `c`: up to `max` messages, decoded, with their reply subjects.
    async fn fetch(
        &self,
        c: &Consumer,
        partition: u32,
        max: usize,
    ) -> std::result::Result<Vec<(wire::Decoded, Option<String>)>, String> {
        let mut batch = c
            .consumer
            .fetch()
            .max_messages(max.max(1))
            .expires(self.timeout)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| e.to_string())?;
            let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
            let headers = m.headers.clone().unwrap_or_default();
            let d = wire::decode_parts(&m.subject, &headers, m.payload.clone(), seq, partition)
                .map_err(|e| e.to_string())?;
            out.push((d, m.reply.as_ref().map(|r| r.to_string())));
        }
        Ok(out)
    }

    /// Publishes `payload` to the dead-letter stream, retried under one message id.
    fn publish_letter(&self, projection: &str, payload: Vec<u8>) -> Result<u64> {
        let subject = format!("{}.{projection}", self.dlq_stream());
        let id = format!("{}-{}", self.owner, wire::append_id());
        let payload = bytes::Bytes::from(payload);
        self.retrying("writing a dead letter", || async {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", id.as_str());
            let r = self
                .client
                .request_with_headers(subject.clone(), h, payload.clone())
                .await
                .map_err(|e| e.to_string())?;
            match wire::ack(&r.payload)? {
                wire::Answer::Ack(a) => Ok(a.seq),
                wire::Answer::WrongLastSequence => Err("unexpected sequence check".to_string()),
            }
        })
    }
}

impl Shared for Remote {
    fn owner(&self) -> &str {
        &self.owner
    }

    fn lease_ttl(&self) -> Duration {
        // Known once the buckets are made (before any lease is taken).
        self.coordination.lock().as_ref().map_or(self.lease, |c| c.ttl)
    }

    fn join(&self, projection: &str) -> Result<usize> {
        let c = self.coordination()?;
        let key = format!("{}{}", member_prefix(projection), self.owner);
        self.retrying("announcing this process", || async {
            c.leases.put(&key, self.owner.clone().into()).await.map_err(|e| e.to_string())
        })?;
        let prefix = member_prefix(projection);
        let members = self.retrying("counting the processes of a projection", || async {
            let mut keys = c.leases.keys().await.map_err(|e| e.to_string())?;
            let mut n = 0usize;
            while let Some(k) = keys.next().await {
                if k.map_err(|e| e.to_string())?.starts_with(&prefix) {
                    n += 1;
                }
            }
            Ok(n)
        })?;
        Ok(members.max(1))
    }

    fn leave(&self, projection: &str) {
        let Ok(c) = self.coordination() else { return };
        let key = format!("{}{}", member_prefix(projection), self.owner);
        let _ = self.block(async { tokio::time::timeout(self.timeout, c.leases.delete(&key)).await });
    }

    fn acquire(&self, projection: &str, partition: u32) -> Result<Option<(Claim, SharedCheckpoint)>> {
        let c = self.coordination()?;
        let key = lease_key(projection, partition);
        let sent = Instant::now();
        let lease = self.block(async {
            match tokio::time::timeout(self.timeout, c.leases.create(&key, self.owner.clone().into())).await {
                Ok(Ok(rev)) => Ok(Some(rev)),
                Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Ok(Err(e)) => Err(remote("taking a lease", e)),
                Err(_) => Err(Error::Remote { cause: "taking a lease: timed out".into() }),
            }
        })?;
        let Some(lease) = lease else {
            // A create that timed out may have landed: the entry then names this process.
            return Ok(None);
        };
        // Claim the checkpoint: rewrite it as this owner, so a late write by the last one fails.
        for _ in 0..16 {
            let current =
                self.block(async { c.checkpoints.entry(&key).await }).map_err(|e| remote("reading a checkpoint", e))?;
            let (found, revision) = match current {
                Some(e) if e.operation == kv::Operation::Put => {
                    (decode_checkpoint(&e.value).unwrap_or_default(), e.revision)
                }
                Some(e) => (SharedCheckpoint::default(), e.revision),
                None => (SharedCheckpoint::default(), 0),
            };
            let mine = SharedCheckpoint { owner: self.owner.clone(), ..found.clone() };
            match self.block(async { c.checkpoints.update(&key, encode_checkpoint(&mine), revision).await }) {
                Ok(rev) => return Ok(Some((Claim { lease, checkpoint: rev, renewed: sent }, found))),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // Written meanwhile (the last owner's late checkpoint), or a follower
                    // answered with an older entry: read it again.
                    self.pause(Duration::from_millis(10));
                }
                Err(e) => {
                    let claim = Claim { lease, checkpoint: 0, renewed: sent };
                    let _ = self.release(projection, partition, &claim);
                    return Err(remote("claiming a checkpoint", e));
                }
            }
        }
        let claim = Claim { lease, checkpoint: 0, renewed: sent };
        let _ = self.release(projection, partition, &claim);
        Err(Error::Remote { cause: format!("the checkpoint of {key} kept changing") })
    }

    fn renew(&self, projection: &str, partition: u32, claim: &mut Claim) -> Result<bool> {
        let c = self.coordination()?;
        let key = lease_key(projection, partition);
        let sent = Instant::now();
        let r = self.block(async {
            tokio::time::timeout(self.timeout, c.leases.update(&key, self.owner.clone().into(), claim.lease)).await
        });
        match r {
            Ok(Ok(rev)) => {
                claim.lease = rev;
                claim.renewed = sent;
                Ok(true)
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // A renewal that timed out may have landed: still ours if it names this process.
                let entry =
                    self.block(async { c.leases.entry(&key).await }).map_err(|e| remote("reading a lease", e))?;
                match entry {
                    Some(e) if e.operation == kv::Operation::Put && e.value.as_ref() == self.owner.as_bytes() => {
                        // Renewed, at a time unknown: keep the deadline of the last known one.
                        claim.lease = e.revision;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
            Ok(Err(e)) => Err(remote("renewing a lease", e)),
            Err(_) => Err(Error::Remote { cause: "renewing a lease: timed out".into() }),
        }
    }

    fn release(&self, projection: &str, partition: u32, claim: &Claim) -> Result<()> {
        let c = self.coordination()?;
        let key = lease_key(projection, partition);
        self.block(async {
            tokio::time::timeout(self.timeout, c.leases.delete_expect_revision(&key, Some(claim.lease))).await
        })
        .map_err(|_| Error::Remote { cause: "giving a lease up: timed out".into() })?
        .map_err(|e| remote("giving a lease up", e))
    }

    fn store_checkpoint(
        &self,
        projection: &str,
        partition: u32,
        claim: &mut Claim,
        position: u64,
        time: u64,
    ) -> Result<bool> {
        let c = self.coordination()?;
        let key = lease_key(projection, partition);
        let value = encode_checkpoint(&SharedCheckpoint { position, time, owner: self.owner.clone() });
        for _ in 0..2 {
            let r = self.block(async {
                tokio::time::timeout(self.timeout, c.checkpoints.update(&key, value.clone(), claim.checkpoint)).await
            });
            match r {
                Ok(Ok(rev)) => {
                    claim.checkpoint = rev;
                    return Ok(true);
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // Ours still if the last write names this process (a write that timed out
                    // and landed); another process's claim otherwise.
                    let entry = self
                        .block(async { c.checkpoints.entry(&key).await })
                        .map_err(|e| remote("reading a checkpoint", e))?;
                    match entry.filter(|e| e.operation == kv::Operation::Put) {
                        Some(e) if decode_checkpoint(&e.value).is_some_and(|k| k.owner == self.owner) => {
                            claim.checkpoint = e.revision;
                        }
                        _ => return Ok(false),
                    }
                }
                Ok(Err(e)) => return Err(remote("storing a checkpoint", e)),
                Err(_) => return Err(Error::Remote { cause: "storing a checkpoint: timed out".into() }),
            }
        }
        Ok(false)
    }

    fn checkpoint(&self, projection: &str, partition: u32) -> Result<Option<SharedCheckpoint>> {
        let c = self.coordination()?;
        let key = lease_key(projection, partition);
        let entry =
            self.block(async { c.checkpoints.entry(&key).await }).map_err(|e| remote("reading a checkpoint", e))?;
        Ok(entry.filter(|e| e.operation == kv::Operation::Put).and_then(|e| decode_checkpoint(&e.value)))
    }

    fn consume(
        &self,
        projection: &str,
        partition: u32,
        from: u64,
        max: usize,
        f: &mut dyn FnMut(&EventView<'_>) -> ControlFlow<()>,
    ) -> Result<usize> {
        self.check_partition(partition)?;
        let c = self.coordination()?;
        let key = (projection.to_owned(), partition);
        // One worker runs a (projection, partition) at a time: take its consumer out meanwhile.
        let mut held = c.consumers.lock().remove(&key).filter(|k| k.next == from);
        let mut last_error = String::new();
        let mut n = 0;
        for _ in 0..3 {
            let consumer = match held.take() {
                Some(k) => k,
                None => match self.block(self.new_consumer(projection, partition, from)) {
                    Ok(k) => k,
                    Err(e) => {
                        last_error = e;
                        self.pause(Duration::from_millis(100));
                        continue;
                    }
                },
            };
            let mut consumer = consumer;
            let got = match self.block(self.fetch(&consumer, partition, max)) {
                Ok(got) => got,
                Err(e) => {
                    last_error = e;
                    continue;
                }
            };
            let mut in_order = true;
            for (d, reply) in got {
                if d.seq <= consumer.next {
                    continue; // a redelivery of what was handed out already
                }
                if d.seq != consumer.next + 1 || !in_order || n >= max {
                    // A jump (a consumer left at another position), or past a break.
                    in_order = false;
                    continue;
                }
                let token = d.subject.rsplit('.').next().unwrap_or_default();
                let stream = subject::unescape(token).ok_or_else(|| Error::Remote {
                    cause: format!("subject {:?} is not a strata stream's", d.subject),
                })?;
                consumer.next = d.seq;
                consumer.last = reply.map(|r| (d.seq, r));
                n += 1;
                if f(&d.view(&stream)).is_break() {
                    in_order = false;
                }
            }
            if in_order {
                c.consumers.lock().insert(key, consumer);
            }
            return Ok(n);
        }
        Err(remote(format!("reading partition {partition} for projection {projection}"), last_error))
    }

    fn acknowledge(&self, projection: &str, partition: u32, next: u64) {
        let Some(c) = self.coordination.lock().clone() else { return };
        let reply = {
            let consumers = c.consumers.lock();
            consumers.get(&(projection.to_owned(), partition)).and_then(|k| k.last.clone())
        };
        if let Some((seq, reply)) = reply
            && seq == next
        {
            let client = self.client.clone();
            self.runtime().spawn(async move {
                let _ = client.publish(reply, "+ACK".into()).await;
            });
        }
    }

    fn add_letter(&self, projection: &str, letter: &Letter) -> Result<u64> {
        self.coordination()?;
        let record = letters::encode_letter(&Letter { id: 0, ..letter.clone() });
        self.publish_letter(projection, record)
    }

    fn resolve_letter(&self, projection: &str, id: u64, outcome: Outcome) -> Result<()> {
        self.coordination()?;
        let record = letters::encode_resolution(id, wire::now_nanos(), outcome);
        self.publish_letter(projection, record).map(|_| ())
    }

    fn letters_after(&self, projection: &str, after: u64) -> Result<Vec<(u64, Record)>> {
        self.coordination()?;
        let name = self.dlq_stream();
        let subject = format!("{name}.{projection}");
        let mut out = Vec::new();
        let mut seq = after + 1;
        loop {
            let (page, pending) = self
                .retrying(&format!("reading {subject}"), || self.direct_batch_of(&name, seq, LETTER_PAGE, &subject))?;
            let got = page.len();
            for m in &page {
                let h = m.headers.as_ref();
                let s = h.and_then(|h| wire::header_u64(h, "Nats-Sequence")).unwrap_or(0);
                let record = match letters::decode(&m.payload) {
                    Ok((Record::Letter(l), _)) => Record::Letter(Letter { id: s, ..l }),
                    Ok((r, _)) => r,
                    Err(why) => {
                        return Err(Error::Corruption {
                            path: std::path::PathBuf::from(format!("{name}/{s}")),
                            offset: 0,
                            reason: format!("a dead-letter record: {why}"),
                        });
                    }
                };
                seq = s + 1;
                out.push((s, record));
            }
            if pending == 0 || got == 0 {
                return Ok(out);
            }
        }
    }
}
