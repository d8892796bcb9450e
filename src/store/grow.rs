//! Growing the partition count of an open store, online, without breaking per-stream order.
//! The protocol, its crash analysis and its limitations are FORMAT.md, "Growing the partition
//! count" (§17); this is how the code carries it out.
//!
//! Streams are routed by jump consistent hash, so going from `n` to `m` partitions moves only
//! the streams whose bucket changes (about `1 - n/m` of them), and each moves to one of the
//! new partitions `n..m`. A grow:
//!
//! 1. **Prepares**: creates the new partition directories, then records `growing_to = m` in
//!    the manifest (atomically). The new partitions are opened and get writers, but no stream
//!    is routed to them and they are not visible to partition reads.
//! 2. **Copies**, while appends and reads go on: it walks each old partition's log in position
//!    order and appends every batch of a stream that moves to the stream's new partition, with
//!    the same stream versions, event bytes and timestamps (`Exact` expected versions, so a
//!    batch is never copied twice: a resumed grow skips what is there, counted in
//!    `GrowReport::already_copied`, with `GrowReport::resumed` set). Each call reads from
//!    position 0, in chunks of up to 8192 events (`CHUNK`), a chunk also ending once its copies
//!    reach 64 MiB of batch bytes (`CHUNK_BYTES`), and waits for a chunk's copies to be answered
//!    before reading the next. Rounds stop after one that copied fewer than 4096 events
//!    (`SMALL_TAIL`), or after the 8th (`MAX_ROUNDS`).
//! 3. **Cuts over**: takes the routing lock for writing, so no append is routed by the old map
//!    from then on; waits until every append queued before it is committed (a barrier through
//!    each old writer); copies the rest; moves the tombstones and the metadata of moved streams
//!    (`Store::set_stream_metadata` and `soft_delete` wait for the routing lock); makes the new
//!    partitions durable (a barrier that syncs); then writes the manifest with the new count,
//!    `partition_epoch + 1`, and an epoch record: each old partition's head at the cutover
//!    (`cut`) and each new partition's head (`live_from`: everything before it is a copy).
//!    That write is the commit point; the in-memory routing switches right after, appends
//!    resume, and the projection workers are woken.
//!
//! The routing lock (`Store::senders`, a read-write lock over the partition writers' queues)
//! orders routing against the cutover. An append holds it for reading while it computes its
//! stream's partition from the routed count and queues its request (`submit`; an `append_many`
//! routes and queues all of its appends under one hold); `Store::delete_stream` holds it for
//! reading while it routes and writes the tombstone, and a metadata change while it writes its
//! record. Stream reads (`read_stream`,
//! `stream_version`, aggregate loads) do not take it: they route by the routed count in memory,
//! which changes only at the commit. `read_partition`, `scan_partition`, `head`, `copied_until`
//! and `cutover_heads` refuse a partition at or above the routed count
//! (`Error::NoSuchPartition`). One grow runs at a time (a mutex). A new partition's writer (with
//! its preallocator) is running, and its queue in place, before the partition joins the store's
//! partitions, so that the partitions and the writers' queues stay in step (a partition whose id
//! is not the length of both is refused with an I/O error).
//!
//! If the commit's directory `fsync` fails twice, routing stays in the old layout and every
//! append is refused until reopen (FORMAT.md §17.1, errors). `strata grow DIR --partitions m`
//! opens the store and calls `grow_partitions`.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::Sender;

use crate::error::{Error, Result};
use crate::event::ExpectedVersion;
use crate::format::manifest::{self, Epoch};
use crate::log::{AppendRequest, Partition, Queued, Reply, dir_name, partition};
use crate::router::{jump_consistent_hash, route_hash, stream_hash};

use super::{Local, Store};

/// What a grow did (see [`Store::grow_partitions`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrowReport {
    /// Partition count before.
    pub from: u32,
    /// Partition count after.
    pub to: u32,
    /// The partition epoch after (how many grows the store has had).
    pub epoch: u64,
    /// Streams this call moved: their first batch copied, or their tombstone moved.
    pub moved_streams: u64,
    /// Events copied to new partitions (by this call; a resumed grow skips those copied
    /// before).
    pub copied_events: u64,
    /// Batches already in place when a resumed grow came to copy them.
    pub already_copied: u64,
    /// Copy rounds run while appends went on, before the cutover.
    pub rounds: u32,
    /// Events copied during the cutover, while appends waited.
    pub cutover_events: u64,
    /// How long appends waited for the cutover.
    pub cutover: std::time::Duration,
    /// Whether this call resumed a grow a crash or an error had interrupted.
    pub resumed: bool,
}

/// Copy rounds before the cutover stop once a round copies fewer events than this (or after
/// `MAX_ROUNDS`): what is left is copied while appends wait.
const SMALL_TAIL: u64 = 4096;
const MAX_ROUNDS: u32 = 8;
/// Events read from an old partition before waiting for their copies to be committed.
const CHUNK: usize = 8192;
/// Bytes of copies queued before waiting for them to be committed.
const CHUNK_BYTES: usize = 64 << 20;

impl Local {
    pub(crate) fn grow_partitions(&self, new_count: u32) -> Result<GrowReport> {
        let _one = self.growing.lock();
        self.check_open()?;
        // After a commit whose directory sync failed twice, only a reopen knows the layout.
        self.shared.check_appends(0)?;
        let from = self.partition_count();
        crate::trace::span!(_grow, INFO, "strata::grow", "grow", from, to = new_count);
        crate::trace::timer!(started, INFO);
        let pending = self.shared.manifest.lock().growing_to;
        if new_count == from && pending == 0 {
            return Ok(GrowReport {
                from,
                to: from,
                epoch: self.shared.manifest.lock().partition_epoch,
                ..Default::default()
            });
        }
        if new_count < from || new_count > manifest::MAX_PARTITIONS {
            return Err(Error::InvalidOptions(format!(
                "cannot grow from {from} to {new_count} partitions (the count only grows, to at most {})",
                manifest::MAX_PARTITIONS
            )));
        }
        if pending != 0 && pending != new_count {
            return Err(Error::InvalidOptions(format!(
                "a grow to {pending} partitions was interrupted: resume it (grow to {pending}) first"
            )));
        }
        // The manifest gains an epoch record of 8 + 8 * new_count bytes: it must stay readable.
        let grown_len = self.shared.manifest.lock().encode().len() + 8 + 8 * new_count as usize;
        if grown_len as u64 > manifest::MAX_LEN {
            return Err(Error::InvalidOptions(format!(
                "growing to {new_count} partitions would make the manifest {grown_len} bytes, past its {} limit",
                manifest::MAX_LEN
            )));
        }
        let mut report = GrowReport { from, to: new_count, resumed: pending != 0, ..Default::default() };
        if pending == 0 {
            self.prepare_grow(from, new_count)?;
        }
        self.open_new_partitions(new_count)?;
        let parts = self.shared.parts();
        let mut cursors = vec![0u64; from as usize];
        loop {
            // Tombstones are permanent: most move here, so the cutover has few left to write.
            move_tombstones(&parts, self.shared.hash_id, from, new_count, &mut report)?;
            move_metadata(&parts, self.shared.hash_id, from, new_count)?;
            let copied = self.copy_round(&parts, from, new_count, &mut cursors, &self.senders.read(), &mut report)?;
            report.rounds += 1;
            crate::trace::event!(DEBUG, "strata::grow", round = report.rounds, copied_events = copied, "copy round");
            if copied < SMALL_TAIL || report.rounds >= MAX_ROUNDS {
                break;
            }
        }
        // The cutover: no append is routed by the old map from here on.
        let paused = std::time::Instant::now();
        let senders = self.senders.write();
        barrier(&senders, 0..from)?;
        let before = report.copied_events;
        self.copy_round(&parts, from, new_count, &mut cursors, &senders, &mut report)?;
        report.cutover_events = report.copied_events - before;
        move_tombstones(&parts, self.shared.hash_id, from, new_count, &mut report)?;
        // Metadata changes wait for the senders' lock, held here: this is its last move.
        move_metadata(&parts, self.shared.hash_id, from, new_count)?;
        barrier(&senders, from..new_count)?;
        let committed = {
            let mut m = self.shared.manifest.lock().clone();
            m.epochs.push(Epoch {
                from,
                to: new_count,
                cut: (0..from).map(|a| part(&parts, a).map(|p| p.head())).collect::<Result<_>>()?,
                live_from: (from..new_count).map(|b| part(&parts, b).map(|p| p.head())).collect::<Result<_>>()?,
            });
            m.partition_count = new_count;
            m.partition_epoch = m.epochs.len() as u64;
            m.growing_to = 0;
            let bytes = m.encode();
            if let Err(e) = self.shared.io.write_atomic(&self.shared.dir, manifest::FILE_NAME, &bytes) {
                // The rename may have happened before the failure (the directory sync failed):
                // then the new layout is what a reopen finds, and appends must follow it now,
                // or those to moved streams would land where the reopened store never looks.
                let path = self.shared.dir.join(manifest::FILE_NAME);
                if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
                    return Err(e);
                }
                // It is in place but maybe not durable: sync the directory again. If that
                // fails too, neither layout is sure to survive a power loss (the old manifest
                // may come back, or the new one stay), and an append acknowledged under one
                // could be lost under the other: appends are refused until reopen, which
                // takes whichever manifest the disk kept. Both hold every acknowledged append
                // (the old partitions their own, the new ones the copies).
                if let Err(e) = self.shared.io.sync_dir(&self.shared.dir) {
                    self.shared.refuse_appends(format!(
                        "growing to {new_count} partitions renamed the manifest, but syncing the store directory \
                         failed twice ({e}): reopen the store"
                    ));
                    return Err(e);
                }
            }
            m
        };
        report.epoch = committed.partition_epoch;
        self.adopt_layout(committed, new_count);
        drop(senders);
        report.cutover = paused.elapsed();
        // Wake projection workers: they pick up the new partitions.
        self.shared.signal.bump();
        crate::trace::event!(
            INFO,
            "strata::grow",
            from,
            to = new_count,
            epoch = report.epoch,
            moved_streams = report.moved_streams,
            copied_events = report.copied_events,
            already_copied = report.already_copied,
            rounds = report.rounds,
            cutover_events = report.cutover_events,
            cutover_us = report.cutover.as_micros() as u64,
            resumed = report.resumed,
            duration_us = started.us(),
            "grow done"
        );
        Ok(report)
    }

    /// The manifest is on disk: take it, and route by it.
    fn adopt_layout(&self, m: manifest::Manifest, count: u32) {
        *self.shared.manifest.lock() = m;
        self.set_routed(count);
    }

    /// Step 1: the new partitions' directories, then `growing_to` in the manifest.
    fn prepare_grow(&self, from: u32, to: u32) -> Result<()> {
        let dir = &self.shared.dir;
        let io = &self.shared.io;
        for b in from..to {
            let pdir = dir.join(dir_name(b));
            // Left by a grow that crashed before it was recorded: nothing was copied there.
            if pdir.exists() {
                io.remove_dir_all(&pdir)?;
            }
            partition::create(&pdir, b, io)?;
        }
        io.sync_dir(dir)?;
        let mut m = self.shared.manifest.lock().clone();
        m.growing_to = to;
        io.write_atomic(dir, manifest::FILE_NAME, &m.encode())?;
        *self.shared.manifest.lock() = m;
        Ok(())
    }

    /// Opens the new partitions not open yet (all of them, unless the store was opened with
    /// this grow in progress) and starts their writers.
    fn open_new_partitions(&self, to: u32) -> Result<()> {
        for b in self.shared.parts().len() as u32..to {
            let pdir = self.shared.dir.join(dir_name(b));
            let (p, tail) = Partition::open(
                pdir,
                b,
                self.shared.io.clone(),
                self.shared.report.clone(),
                self.shared.signal.clone(),
                self.shared.writer_cfg.journal_interval,
                self.shared.archive_cache.clone(),
            )?;
            self.add_partition(p, tail)?;
        }
        Ok(())
    }

    /// Copies, from each old partition's cursor up to its head, every batch of a stream that
    /// moves, to the stream's new partition; waits until the copies are committed. Returns
    /// the events copied.
    fn copy_round(
        &self,
        parts: &[Arc<Partition>],
        from: u32,
        to: u32,
        cursors: &mut [u64],
        senders: &[Sender<Queued>],
        report: &mut GrowReport,
    ) -> Result<u64> {
        let mut copied = 0;
        let hash_id = self.shared.hash_id;
        for a in 0..from {
            let old = part(parts, a)?;
            let Some(cursor) = cursors.get_mut(a as usize) else { continue };
            // Only what is on disk (Buffered durability publishes before it syncs): a copy must
            // never outlive the event it copies. The cutover's barrier syncs the rest first.
            let head = old.durable_head.load(Ordering::Acquire);
            while *cursor < head {
                let mut pending: Vec<(Reply, u64, u64)> = Vec::new();
                let mut next = *cursor;
                let mut failed = None;
                let mut queued_bytes = 0usize;
                old.visit_from(*cursor, CHUNK, &mut |b, skip, _take| {
                    if b.base_position >= head {
                        return ControlFlow::Break(());
                    }
                    next = b.end_position();
                    if skip > 0 {
                        // Began before the cursor: copied with the chunk before.
                        return ControlFlow::Continue(());
                    }
                    let hash = stream_hash(b.stream_id);
                    let Some(target) = moves_to(route_hash(hash_id, b.stream_id), a, from, to) else {
                        return ControlFlow::Continue(());
                    };
                    if old.tombstones.deleted_at(b.stream_id).is_some() {
                        return ControlFlow::Continue(());
                    }
                    let expected = match b.first_version {
                        0 => ExpectedVersion::NoStream,
                        v => ExpectedVersion::Exact(v - 1),
                    };
                    let (mut req, rx) =
                        AppendRequest::new(b.stream_id, hash, expected, b.raw().to_vec(), b.event_count);
                    req.copied_at = Some(b.timestamp);
                    // The copy joins its new partition's idempotency window.
                    req.ids = b.events().map(|e| e.id).collect::<Option<Box<[_]>>>();
                    let sent = match senders.get(target as usize) {
                        Some(s) => s.send(Queued::One(req)).is_ok(),
                        None => false,
                    };
                    if sent {
                        let last = b.first_version + u64::from(b.event_count) - 1;
                        pending.push((rx, u64::from(b.event_count), last));
                        // Bound what waits in the writers' queues (batches may be large).
                        queued_bytes += b.length;
                        if queued_bytes >= CHUNK_BYTES {
                            return ControlFlow::Break(());
                        }
                        ControlFlow::Continue(())
                    } else {
                        failed = Some(Error::Closed);
                        ControlFlow::Break(())
                    }
                })?;
                for (rx, events, last) in pending {
                    match rx.recv().map_err(|_| Error::Closed)? {
                        Ok(r) => {
                            if r.first_version == 0 {
                                report.moved_streams += 1;
                            }
                            copied += events;
                        }
                        // Copied by an earlier, interrupted run of this grow.
                        Err(Error::WrongExpectedVersion { actual: Some(v), .. }) if v >= last => {
                            report.already_copied += 1;
                        }
                        // Deleted meanwhile: its tombstone moves at the cutover.
                        Err(Error::StreamDeleted { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                if let Some(e) = failed {
                    return Err(e);
                }
                // Nothing visited up to the head: those positions were erased by compaction.
                *cursor = if next > *cursor { next } else { head };
            }
        }
        report.copied_events += copied;
        Ok(copied)
    }
}

/// Writes in each moved stream's new partition the tombstone it has in its old one (those
/// there already are skipped: they are permanent).
fn move_tombstones(parts: &[Arc<Partition>], hash_id: u32, from: u32, to: u32, report: &mut GrowReport) -> Result<()> {
    for a in 0..from {
        let old = part(parts, a)?;
        for (stream, at) in old.tombstones.all() {
            let Some(target) = moves_to(route_hash(hash_id, &stream), a, from, to) else { continue };
            if part(parts, target)?.tombstones.delete(&stream, at)? {
                report.moved_streams += 1;
            }
        }
    }
    Ok(())
}

/// Writes in each moved stream's new partition its newest metadata record from its old one,
/// with its version (a record there at least as new is kept).
fn move_metadata(parts: &[Arc<Partition>], hash_id: u32, from: u32, to: u32) -> Result<()> {
    for a in 0..from {
        let old = part(parts, a)?;
        for rec in old.metas.all() {
            let Some(target) = moves_to(route_hash(hash_id, &rec.stream), a, from, to) else { continue };
            part(parts, target)?.metas.put(&rec)?;
        }
    }
    Ok(())
}

/// The new partition of a stream (by its routing hash) that lives in old partition `a` and moves when
/// the count goes from `from` to `to`. `None` for one that stays, and for one that only left
/// history in `a` (an earlier grow moved it away).
fn moves_to(hash: u64, a: u32, from: u32, to: u32) -> Option<u32> {
    let target = jump_consistent_hash(hash, to);
    (jump_consistent_hash(hash, from) == a && target != a).then_some(target)
}

fn part(parts: &[Arc<Partition>], id: u32) -> Result<&Arc<Partition>> {
    parts.get(id as usize).ok_or(Error::NoSuchPartition { partition: id, count: parts.len() as u32 })
}

/// Waits until every request queued to the writers of `ids` before this call is committed and
/// synced.
fn barrier(senders: &[Sender<Queued>], ids: std::ops::Range<u32>) -> Result<()> {
    let mut waits = Vec::new();
    for id in ids {
        let (req, rx) = AppendRequest::barrier();
        senders.get(id as usize).ok_or(Error::Closed)?.send(Queued::One(req)).map_err(|_| Error::Closed)?;
        waits.push(rx);
    }
    for rx in waits {
        rx.recv().map_err(|_| Error::Closed)??;
    }
    Ok(())
}

impl Store {
    /// Grows the store to `new_count` partitions, online: appends, reads and projections go
    /// on throughout, except for a short cutover while the last copies are made. Only the
    /// streams whose partition changes under jump consistent hash move (about
    /// `1 - old/new` of them); each keeps its stream versions, and its history stays readable
    /// at its old positions in partition reads. Expected-version checks hold across the
    /// cutover: no append is lost or applied twice.
    ///
    /// Projections run by a [`ProjectionEngine`](crate::ProjectionEngine) see each event once:
    /// a moved stream's copied history is never delivered again, and a new partition's own
    /// events are held back until the projection has passed every old partition's cutover
    /// point, so each stream's events arrive in order.
    ///
    /// A crash during a grow leaves a store that opens in the old layout (with the grow to be
    /// resumed by calling this again with the same count) or in the new one. Growing to the
    /// current count does nothing. Errors: [`Error::InvalidOptions`] to shrink, past 65,536
    /// partitions, or with another grow interrupted; I/O errors (the grow can be resumed).
    ///
    /// Snapshots of moved streams stay in their old partition's sidecar: the first loads of a
    /// moved aggregate replay its events, and new snapshots are taken in the new partition.
    ///
    /// ```
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Options::default().create_if_missing(true).partitions(2))?;
    /// for i in 0..20 {
    ///     store.append(&format!("order-{i}"), ExpectedVersion::NoStream, &[EventData::new("Placed", b"{}".to_vec())])?;
    /// }
    /// let report = store.grow_partitions(4)?;
    /// assert_eq!((store.partition_count(), report.epoch), (4, 1));
    /// // Every stream reads as before, wherever it lives now.
    /// assert_eq!(store.read_stream("order-7", 0, 10)?.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn grow_partitions(&self, new_count: u32) -> Result<GrowReport> {
        self.local("growing the partition count")?.grow_partitions(new_count)
    }
}
