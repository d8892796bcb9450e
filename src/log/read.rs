//! Reads across a partition's segments: a stream's events (forward, backward, its last
//! version, a visit for aggregate loads), a range of positions in log order (partition reads
//! and scans, projections, subscriptions), the streams it holds, and `verify`. Every read
//! takes its bounds from one [`Partition::snapshot`]: the visibility rule.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::clock::now_nanos;
use crate::error::{Error, Result};
use crate::event::{EventView, RecordedEvent};
use crate::format::batch::BatchView;
use crate::log::events::{each_event, emit};
use crate::log::partition::Partition;
use crate::log::segment::{Segment, View};
use crate::log::stream_meta::{self, Visible};
use crate::log::view::{Lend, Select};
use crate::router::stream_hash;

/// A partition's segments with where reads of each end ([`Partition::snapshot`]).
type Snapshot = [(Arc<Segment>, u64)];

impl Partition {
    /// The view of segment `k` of `snap` for a read of `stream`, or `None` if it is an
    /// archive that cannot be read (its header, footer or meta section damaged, or of a newer
    /// version) and yet cannot hold any of the stream's events: the stream's versions are
    /// numbered in position order without gaps, so if its last version before the archive's
    /// range and its first after it follow each other (or it has none before and starts at
    /// version 0 after), the range holds none of them. Otherwise the read fails with the
    /// archive's error (it may hold some). A damaged block fails only the reads that need it
    /// (the archive's index is readable then, and says which do).
    fn stream_view(&self, snap: &Snapshot, k: usize, stream: &str, hash: u64) -> Result<Option<View>> {
        let Some((seg, end)) = snap.get(k) else { return Ok(None) };
        let err = match self.view(seg, *end) {
            Ok(View::Archived(a)) => match a.streams() {
                Ok(_) => return Ok(Some(View::Archived(a))),
                Err(e) => e,
            },
            Ok(v) => return Ok(Some(v)),
            Err(e) => e,
        };
        if !seg.is_archive() || !matches!(err, Error::Corruption { .. } | Error::UnsupportedVersion { .. }) {
            return Err(err);
        }
        // The stream's nearest version found walking `segs`; `Err` if a file on the way is
        // unreadable (then nothing is known, and the read fails).
        let nearest = |segs: &mut dyn Iterator<Item = &(Arc<Segment>, u64)>, last: bool| -> Option<Option<u64>> {
            for (seg, end) in segs {
                let view = self.view(seg, *end).ok()?;
                let found = if last {
                    view.last_version(seg, stream, hash, *end)
                } else {
                    view.first_version(seg, stream, hash, *end)
                };
                if let Some(v) = found.ok()? {
                    return Some(Some(v));
                }
            }
            Some(None)
        };
        let Some(before) = nearest(&mut snap.get(..k).unwrap_or(&[]).iter().rev(), true) else { return Err(err) };
        let Some(after) = nearest(&mut snap.get(k + 1..).unwrap_or(&[]).iter(), false) else { return Err(err) };
        match (before, after) {
            (Some(b), Some(a)) if b.checked_add(1) == Some(a) => Ok(None),
            (None, Some(0)) => Ok(None),
            _ => Err(err),
        }
    }

    /// The stream's last version in the segments before `before_base` (newest first).
    pub fn last_version_before(&self, stream: &str, hash: u64, before_base: u64) -> Result<Option<u64>> {
        let snap = self.snapshot();
        for (k, (seg, end)) in snap.iter().enumerate().rev() {
            if seg.base >= before_base {
                continue;
            }
            let Some(view) = self.stream_view(&snap, k, stream, hash)? else { continue };
            if let Some(v) = view.last_version(seg, stream, hash, *end)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The stream's last version below the partition's durable head (in `Sync` mode, the
    /// head; in `Buffered` mode, what a crash now would keep).
    pub fn last_durable_version(&self, stream: &str, hash: u64) -> Result<Option<u64>> {
        let durable = self.durable_head.load(std::sync::atomic::Ordering::Acquire);
        let snap = self.snapshot();
        for (k, (seg, end)) in snap.iter().enumerate().rev() {
            if seg.base >= durable {
                continue;
            }
            let end = (*end).min(durable);
            let Some(view) = self.stream_view(&snap, k, stream, hash)? else { continue };
            if let Some(v) = view.last_version(seg, stream, hash, end)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The stream's last version.
    pub fn last_version(&self, stream: &str, hash: u64) -> Result<Option<u64>> {
        self.live(stream)?;
        self.last_version_before(stream, hash, u64::MAX)
    }

    /// The streams with a visible event in this partition that `keep` keeps (and that are
    /// not deleted), sorted by id.
    pub fn stream_ids(&self, keep: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
        let mut all = BTreeSet::new();
        for (seg, end) in self.snapshot() {
            self.view(&seg, end)?.stream_ids(&seg, end, &mut all)?;
        }
        // A soft-deleted stream not appended to since reads as deleted.
        let soft_deleted = |s: &str| {
            self.metas.with(s, |m| (m.deleted_at > 0).then_some(m.truncate_before)).flatten().is_some_and(|tb| {
                self.last_version_before(s, stream_hash(s), u64::MAX).is_ok_and(|last| last.is_none_or(|l| l < tb))
            })
        };
        Ok(all.into_iter().filter(|s| keep(s) && self.tombstones.deleted_at(s).is_none() && !soft_deleted(s)).collect())
    }

    /// Refuses stream reads of a deleted stream.
    fn live(&self, stream: &str) -> Result<()> {
        match self.tombstones.deleted_at(stream) {
            Some(_) => Err(Error::StreamDeleted { stream: stream.to_owned() }),
            None => Ok(()),
        }
    }

    /// What a read of `stream` shows now (its metadata's rules, `stream_meta::Visible`).
    pub fn visibility(&self, stream: &str, hash: u64) -> Result<Visible> {
        let Some(rule) = self.metas.with(stream, stream_meta::Rule::of) else { return Ok(Visible::ALL) };
        let last = if rule.max_count > 0 { self.last_version_before(stream, hash, u64::MAX)? } else { None };
        Ok(rule.visible(last, now_nanos()))
    }

    /// [`Partition::visibility`] as a reader of durable events only sees it: `max_count`
    /// counted back from the stream's last durable version (events past the durable head may
    /// yet be lost, and must not hide durable ones).
    pub fn durable_visibility(&self, stream: &str, hash: u64) -> Result<Visible> {
        let Some(rule) = self.metas.with(stream, stream_meta::Rule::of) else { return Ok(Visible::ALL) };
        let last = if rule.max_count > 0 { self.last_durable_version(stream, hash)? } else { None };
        Ok(rule.visible(last, now_nanos()))
    }

    /// Up to `limit` of the stream's visible events from version `from` on, oldest first:
    /// [`Partition::visit_visible`], copied out.
    pub fn read_stream(&self, stream: &str, hash: u64, from: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        // Room for a whole read of up to `RESERVE` events at once; what is left over is given
        // back at the end (a stream shorter than the limit).
        const RESERVE: usize = 256;
        let mut out = Vec::with_capacity(limit.min(RESERVE));
        let id = self.id;
        // `emit` only copies: the open segment may lend its batches.
        self.visit_visible(stream, hash, from, limit, Lend::Internal, &mut |b, skip, take| {
            emit(b, id, skip, take, &mut out);
            ControlFlow::Continue(())
        })?;
        if out.capacity() > 2 * out.len() + 8 {
            out.shrink_to_fit();
        }
        Ok(out)
    }

    /// Hands `f` the stream's visible events from version `from` on ([`Partition::visit_visible`]),
    /// borrowed, oldest first, until `limit` are given or `f` breaks; returns how many were given.
    pub fn visit_visible_events<F>(&self, stream: &str, hash: u64, from: u64, limit: usize, f: &mut F) -> Result<usize>
    where
        F: FnMut(&EventView<'_>) -> ControlFlow<()> + ?Sized,
    {
        let id = self.id;
        let mut seen = 0;
        self.visit_visible(stream, hash, from, limit, Lend::User, &mut |b, skip, take| {
            each_event(b, id, skip, take, &mut |e| {
                seen += 1;
                f(e)
            })
        })?;
        Ok(seen)
    }

    /// Calls `f(batch, skip, take)` for the batches holding the stream's visible events from
    /// version `from` on, oldest first, where the batch's events `skip..skip + take` are the
    /// visible ones wanted, until `f` has been offered `limit` events or breaks. What is
    /// visible is what [`Partition::read_stream`] returns (it reads through this): nothing of
    /// a deleted stream (an error), only what the stream's metadata
    /// shows ([`Partition::visibility`]: a version prefix and an age prefix), and only what
    /// the partition's head covers (each segment read up to its end in [`Partition::snapshot`]).
    pub fn visit_visible(
        &self,
        stream: &str,
        hash: u64,
        from: u64,
        limit: usize,
        lend: Lend,
        f: &mut dyn FnMut(&BatchView<'_>, usize, usize) -> ControlFlow<()>,
    ) -> Result<()> {
        self.live(stream)?;
        let vis = self.visibility(stream, hash)?;
        let from = from.max(vis.from_version);
        let mut given = 0usize;
        let snap = self.snapshot();
        for (k, (seg, end)) in snap.iter().enumerate() {
            if given >= limit {
                break;
            }
            let (seg, end) = (&**seg, *end);
            let Some(view) = self.stream_view(&snap, k, stream, hash)? else { continue };
            let flow = if vis.min_time == 0 {
                // Nothing hidden by age: every event from `from` on is shown.
                let (n, flow) = view.visit_stream(seg, stream, hash, from, end, limit - given, lend, f)?;
                given += n;
                flow
            } else {
                // A batch's events share its timestamp: those hidden by age are whole batches
                // (a prefix of the stream, but judged one by one all the same), not counted.
                view.visit_stream(seg, stream, hash, from, end, usize::MAX, lend, &mut |b, skip, take| {
                    if !vis.shows(b.first_version + skip as u64, b.timestamp) {
                        return ControlFlow::Continue(());
                    }
                    let take = take.min(limit - given);
                    given += take;
                    f(b, skip, take)?;
                    if given >= limit { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
                })?
                .1
            };
            if flow.is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Calls `f(batch, skip, take)` for the batches holding the stream's events from version
    /// `from` on (see [`View::visit_stream`]), oldest first, until `f` breaks. The caller may
    /// know that version `from` is at or after position `min_position`: segments that end
    /// before it are not looked at.
    pub fn visit_stream(
        &self,
        stream: &str,
        hash: u64,
        from: u64,
        min_position: u64,
        f: &mut dyn FnMut(&BatchView<'_>, usize, usize) -> ControlFlow<()>,
    ) -> Result<()> {
        self.live(stream)?;
        let snap = self.snapshot();
        for (k, (seg, end)) in snap.iter().enumerate() {
            if *end <= min_position {
                continue;
            }
            let Some(view) = self.stream_view(&snap, k, stream, hash)? else { continue };
            if view.visit_stream(seg, stream, hash, from, *end, usize::MAX, Lend::User, f)?.1.is_break() {
                break;
            }
        }
        Ok(())
    }

    pub fn read_stream_back(&self, stream: &str, hash: u64, from: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        self.live(stream)?;
        let vis = self.visibility(stream, hash)?;
        let mut out = Vec::new();
        let snap = self.snapshot();
        for (k, (seg, end)) in snap.iter().enumerate().rev() {
            if out.len() >= limit {
                break;
            }
            let Some(view) = self.stream_view(&snap, k, stream, hash)? else { continue };
            view.read_stream_back(seg, stream, hash, from, *end, limit, &mut out)?;
            // What is hidden is a prefix of the stream: the newest-first read ends at it.
            if let Some(k) = out.iter().position(|e| !vis.shows(e.version, e.timestamp_nanos)) {
                out.truncate(k);
                break;
            }
        }
        Ok(out)
    }

    /// Calls `f(batch, skip, take)` for the batches holding positions from `from` on, in
    /// order, until `limit` events are taken or `f` breaks; returns how many were taken.
    pub fn visit_from(
        &self,
        from: u64,
        limit: usize,
        f: &mut dyn FnMut(&BatchView<'_>, usize, usize) -> ControlFlow<()>,
    ) -> Result<usize> {
        let snap = self.snapshot();
        let start = snap.partition_point(|(s, _)| s.base <= from).saturating_sub(1);
        let mut taken = 0;
        for (seg, end) in snap.get(start..).unwrap_or(&[]) {
            if taken >= limit {
                break;
            }
            if *end <= from {
                continue;
            }
            let from = from.max(seg.base);
            // An archive's blocks come from the store's block cache: the next step of the
            // reader finds them there.
            let view = self.view(seg, *end)?;
            let (n, flow) = view.visit_positions(seg, from, *end, limit - taken, f)?;
            taken += n;
            if flow.is_break() {
                break;
            }
        }
        Ok(taken)
    }

    /// Hands `f` the events at positions `from..end` of the batches `select` wants, borrowed,
    /// in position order, until `limit` are given or `f` breaks; only those batches are read
    /// where an index or summary finds them (`View::visit_streams`), and `f` judges the events
    /// (a type selection hands over other events of the selected streams). Returns how many events
    /// `f` was given and, unless `f` broke, the next position to look at: every event before
    /// it was judged (it is `end` if the limit was not reached).
    pub fn visit_kept<F>(
        &self,
        from: u64,
        end: u64,
        limit: usize,
        select: Select<'_>,
        f: &mut F,
    ) -> Result<(usize, u64)>
    where
        F: FnMut(&EventView<'_>) -> ControlFlow<()> + ?Sized,
    {
        let id = self.id;
        let snap = self.snapshot();
        let start = snap.partition_point(|(s, _)| s.base <= from).saturating_sub(1);
        let (mut taken, mut given, mut next) = (0usize, 0usize, from);
        for (seg, seg_end) in snap.get(start..).unwrap_or(&[]) {
            let seg_end = (*seg_end).min(end);
            if seg.base >= end {
                break;
            }
            if seg_end <= next {
                continue;
            }
            let at = next.max(seg.base);
            let view = self.view(seg, seg_end)?;
            let mut reached = at;
            let (n, flow) = view.visit_streams(seg, select, at, seg_end, limit - taken, &mut |b, skip, take| {
                reached = b.base_position + (skip + take) as u64;
                if !select.keeps_stream(b.stream_id) {
                    return ControlFlow::Continue(());
                }
                each_event(b, id, skip, take, &mut |e| {
                    given += 1;
                    f(e)
                })
            })?;
            taken += n;
            if flow.is_break() || taken >= limit {
                return Ok((given, reached));
            }
            next = seg_end;
        }
        Ok((given, next.max(end)))
    }

    /// Reads back every file of the partition: every batch of every segment (CRC), every
    /// sealed segment's index, every archive's blocks and index entries. Returns the problems.
    pub fn verify(&self) -> Vec<Error> {
        let mut problems = Vec::new();
        for (seg, end) in self.snapshot() {
            match self.view(&seg, end) {
                Err(e) => problems.push(e),
                Ok(View::Archived(a)) => problems.extend(a.verify()),
                Ok(View::Sealed(s)) => {
                    if let Err(e) = s.walk(&seg, &mut |_, _| {}) {
                        problems.push(e);
                    }
                    problems.extend(s.verify_index(&seg));
                }
                Ok(view @ View::Open(_)) => {
                    if let Err(e) =
                        view.visit_positions(&seg, seg.base, end, usize::MAX, &mut |_, _, _| ControlFlow::Continue(()))
                    {
                        problems.push(e);
                    }
                }
            }
        }
        problems
    }

    /// Loads what is checked on first use rather than at open: every sealed segment with its
    /// index (rebuilt if damaged), every archive's meta section. Repairs go to the report;
    /// damage that cannot be repaired stays for the reads (and `verify`) to return.
    pub fn load_lazily_checked(&self) {
        for (seg, end) in self.snapshot() {
            if let Ok(View::Archived(a)) = self.view(&seg, end) {
                let _ = a.checked();
            }
        }
    }

    /// Hands `f` the events from position `from` on, borrowed, in position order, until
    /// `limit` events are given or `f` breaks; returns how many were given.
    pub fn visit_events<F>(&self, from: u64, limit: usize, f: &mut F) -> Result<usize>
    where
        F: FnMut(&EventView<'_>) -> ControlFlow<()> + ?Sized,
    {
        let id = self.id;
        let mut seen = 0;
        self.visit_from(from, limit, &mut |b, skip, take| {
            each_event(b, id, skip, take, &mut |e| {
                seen += 1;
                f(e)
            })
        })?;
        Ok(seen)
    }

    pub fn read_from(&self, from: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let mut out = Vec::new();
        let id = self.id;
        self.visit_from(from, limit, &mut |b, skip, take| {
            emit(b, id, skip, take, &mut out);
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }
}
