//! Reads within one segment, whatever its form ([`View`]: open, sealed or archived): a
//! stream's batches through the segment's index, a range of positions in log order, and a
//! stream's last version. The open segment is read only below the position the read was
//! given (the head): the visibility rule (FORMAT.md, the commit protocol).

use std::collections::{BTreeSet, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::format::archive as arc_format;
use crate::format::batch::{self, BatchView};
use crate::format::index::{self, StreamEntry};
use crate::format::segment as seg_format;
use crate::log::active::{MemEntry, OpenSegment, find_run, run_last_version};
use crate::log::archive::Archive;
use crate::log::events::{emit, offer};
use crate::log::sealed::SealedSegment;
use crate::log::segment::{Segment, View};

/// A batch of a stream that a read wants, from any kind of index (`len` 0: not known).
#[derive(Debug, Clone, Copy)]
struct Wanted {
    first_version: u64,
    offset: u64,
    len: u32,
    count: u32,
}

/// Which batches a selective read wants: those of the streams a rule keeps (by id), or those
/// of the streams with an event of one of some types (found through a sealed segment's event
/// type summary; everywhere else every batch is handed over, for the caller to judge).
#[derive(Clone, Copy)]
pub(crate) enum Select<'a> {
    Streams(&'a dyn Fn(&str) -> bool),
    Types(&'a [String]),
}

impl Select<'_> {
    /// Whether a batch of `stream` may hold wanted events.
    pub fn keeps_stream(&self, stream: &str) -> bool {
        match self {
            Select::Streams(keep) => keep(stream),
            Select::Types(_) => true,
        }
    }
}

/// The batches an archive's stream entry stands for (FORMAT.md §14.3: in version 2, a span of
/// a stream's consecutive batches in one block), found in its decompressed block.
fn archived_batches(seg: &Segment, a: &Archive, e: StreamEntry) -> Result<Vec<Wanted>> {
    let (block, at) = a.at(e.offset)?;
    let batches = arc_format::span_batches(block.get(at..).unwrap_or(&[]), &e)
        .map_err(|why| Error::corruption(&seg.path, e.offset, format!("archive stream entry: {why}")))?;
    Ok(batches
        .into_iter()
        .map(|(rel, first_version, count)| Wanted { first_version, offset: e.offset + rel as u64, len: 0, count })
        .collect())
}

/// Bytes of one or more batches, borrowed from a mapping or read into a buffer.
enum Bytes<'a> {
    Mapped(&'a [u8]),
    Read(Vec<u8>),
    /// A decompressed archive block, from an offset.
    Block(Arc<Vec<u8>>, usize),
}

impl Bytes<'_> {
    fn get(&self) -> &[u8] {
        match self {
            Bytes::Mapped(b) => b,
            Bytes::Read(v) => v,
            Bytes::Block(v, at) => v.get(*at..).unwrap_or(&[]),
        }
    }
}

/// Who reads a batch handed out of an open segment: that decides whether it may be lent from
/// the segment's map (read under its lock) or must be copied out first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lend {
    /// Code of this crate that only copies or decodes (`events::emit`): lent.
    Internal,
    /// Anything that may run user code (visitors, `Aggregate::apply`), which may read the
    /// segment again or wait on the writer: copied.
    User,
}

impl View {
    /// The bytes `[offset, offset + len)`; for a mapped segment `len` may run to the end.
    fn bytes(&self, seg: &Segment, offset: u64, len: usize) -> Result<Bytes<'_>> {
        match self {
            View::Sealed(s) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                match s.data.get(start..) {
                    Some(b) => Ok(Bytes::Mapped(b)),
                    None => Err(Error::corruption(&seg.path, offset, "offset past the end of the segment")),
                }
            }
            View::Open(o) => Ok(Bytes::Read(o.read(offset, len)?)),
            View::Archived(a) => {
                let (block, at) = a.at(offset)?;
                Ok(Bytes::Block(block, at))
            }
        }
    }

    /// Reads and checks the batch at `offset`, whose length is `len` if known, and which is
    /// expected to be of `stream` (a batch of that stream needs no UTF-8 check of its id).
    /// With [`Lend::Internal`] an open segment's batch is lent from its map rather than copied
    /// out (`OpenSegment::with_bytes`: `f` then runs under the map's lock).
    fn with_batch<T>(
        &self,
        seg: &Segment,
        offset: u64,
        len: usize,
        stream: &str,
        lend: Lend,
        f: impl FnOnce(&BatchView<'_>) -> T,
    ) -> Result<T> {
        let known = batch::Known { stream_id: stream, event_type: "" };
        let check = |bytes: &[u8]| {
            // Matched by reference: the checked batch is not moved out of the result.
            match &batch::decode_with(bytes, known) {
                Ok(b) => Ok(f(b)),
                Err(bad) => Err(Error::corruption(&seg.path, offset, format!("indexed batch: {bad}"))),
            }
        };
        // A frozen entry of the open segment does not store its batch's length.
        let len = match self {
            View::Open(o) if len == 0 => o.batch_len(offset)?,
            _ => len,
        };
        match (self, lend) {
            (View::Open(o), Lend::Internal) => o.with_bytes(offset, len, check)?,
            _ => check(self.bytes(seg, offset, len)?.get()),
        }
    }

    /// The entries of `stream` in a sealed segment's index (resolving hash collisions).
    fn sealed_entries<'a>(
        &self,
        seg: &Segment,
        s: &'a SealedSegment,
        stream: &str,
        hash: u64,
    ) -> Result<&'a [StreamEntry]> {
        self.find_stream(seg, s.stream_entries(seg)?, Some(&s.data), stream, hash)
    }

    /// The entries of `stream` among an index's sorted `entries`, telling apart streams whose
    /// ids hash alike by the stream id in their first batch (peeked from `data` if mapped).
    fn find_stream<'a>(
        &self,
        seg: &Segment,
        entries: &'a [StreamEntry],
        data: Option<&[u8]>,
        stream: &str,
        hash: u64,
    ) -> Result<&'a [StreamEntry]> {
        find_run(entries, hash, |offset| {
            // A match needs no checksum here: the batches are checked when they are read. A
            // mismatch must be a checked one, or damage to the id would hide the stream's
            // events instead of being reported.
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            Ok(data.and_then(|d| d.get(start..)).and_then(batch::peek_stream_id) == Some(stream)
                || self.with_batch(seg, offset, 0, stream, Lend::User, |b| b.stream_id == stream)?)
        })
    }

    /// The last version of `stream` in this segment before position `end`, if it has events
    /// there.
    pub fn last_version(&self, seg: &Segment, stream: &str, hash: u64, end: u64) -> Result<Option<u64>> {
        match self {
            View::Open(o) => match o.index.read().visible(stream, end).last().map(MemEntry::last_version) {
                Some(v) => Ok(Some(v)),
                None => Ok(run_last_version(o.frozen_run(stream, hash)?)),
            },
            View::Sealed(s) => Ok(run_last_version(self.sealed_entries(seg, s, stream, hash)?)),
            View::Archived(a) => {
                let entries = self.find_stream(seg, a.streams()?, None, stream, hash)?;
                Ok(entries.last().map(|e| {
                    let e = e.get();
                    e.first_version.saturating_add(u64::from(e.event_count)).saturating_sub(1)
                }))
            }
        }
    }

    /// The first version of `stream` in this segment before position `end`, if it has events
    /// there.
    pub fn first_version(&self, seg: &Segment, stream: &str, hash: u64, end: u64) -> Result<Option<u64>> {
        let entries = match self {
            View::Open(o) => match o.frozen_run(stream, hash)?.first() {
                Some(e) => return Ok(Some(e.get().first_version)),
                None => return Ok(o.index.read().visible(stream, end).first().map(|e| e.first_version)),
            },
            View::Sealed(s) => self.sealed_entries(seg, s, stream, hash)?,
            View::Archived(a) => self.find_stream(seg, a.streams()?, None, stream, hash)?,
        };
        Ok(entries.first().map(|e| e.get().first_version))
    }

    /// One past the last version of `stream`'s first batch in this sealed segment or
    /// archive, if it has events here (`None` for the open segment).
    pub fn first_batch_end(&self, seg: &Segment, stream: &str, hash: u64) -> Result<Option<u64>> {
        let entries = match self {
            View::Open(_) => return Ok(None),
            View::Sealed(s) => self.sealed_entries(seg, s, stream, hash)?,
            View::Archived(a) => {
                // An archive's entry may stand for several batches: the first is read.
                let entries = self.find_stream(seg, a.streams()?, None, stream, hash)?;
                let Some(first) = entries.first() else { return Ok(None) };
                let batches = archived_batches(seg, a, first.get())?;
                return Ok(batches.first().map(|w| w.first_version.saturating_add(u64::from(w.count))));
            }
        };
        Ok(entries.first().map(|e| {
            let e = e.get();
            e.first_version.saturating_add(u64::from(e.event_count))
        }))
    }

    /// Adds to `out` each stream with an event in this segment before position `end` (for
    /// an archive, each block holding a stream's first batch is decompressed to read its id).
    pub fn stream_ids(&self, seg: &Segment, end: u64, out: &mut BTreeSet<String>) -> Result<()> {
        match self {
            View::Open(o) => {
                for (name, _) in o.frozen_streams()? {
                    out.insert(name);
                }
                let mem = o.index.read();
                for name in mem.streams.keys() {
                    if !mem.visible(name, end).is_empty() && !out.contains(&**name) {
                        out.insert(name.to_string());
                    }
                }
            }
            View::Sealed(s) => {
                for (name, _) in s.stream_last_versions(seg)? {
                    if !out.contains(name) {
                        out.insert(name.to_owned());
                    }
                }
            }
            View::Archived(a) => {
                for first in index::stream_runs(a.streams()?).filter_map(|run| run.first().map(StreamEntry::get)) {
                    let (block, at) = a.at(first.offset)?;
                    let name = block.get(at..).and_then(batch::peek_stream_id).ok_or_else(|| {
                        Error::corruption(&seg.path, 0, format!("no stream id at uncompressed offset {}", first.offset))
                    })?;
                    if !out.contains(name) {
                        out.insert(name.to_owned());
                    }
                }
            }
        }
        Ok(())
    }

    /// The batches of `stream` a backward read needs, in version order: those holding
    /// versions <= `from`, at most `limit` of them (a batch holds at least one event). Only
    /// these are copied out of the index, so reading the tail of a long stream does not copy
    /// its whole history. (Forward reads walk the index in place: [`View::visit_stream`].)
    /// In the open segment only batches before `end` (the head) count; a sealed segment or an
    /// archive holds only published batches.
    fn stream_batches_back(
        &self,
        seg: &Segment,
        stream: &str,
        hash: u64,
        from: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<Wanted>> {
        fn pick<T>(all: &[T], first: impl Fn(&T) -> u64, from: u64, limit: usize) -> &[T] {
            let end = all.partition_point(|e| first(e) <= from);
            all.get(end.saturating_sub(limit)..end).unwrap_or(&[])
        }
        match self {
            View::Open(o) => {
                let frozen = o.frozen_run(stream, hash)?;
                let mem = o.index.read();
                let picked = pick(mem.visible(stream, end), |e| e.first_version, from, limit);
                let mut out: Vec<Wanted> = Vec::new();
                if picked.len() < limit {
                    // The rest from the frozen part, whose entries all come before.
                    let older = pick(frozen, |e| e.get().first_version, from, limit - picked.len());
                    out.extend(older.iter().map(|e| {
                        let e = e.get();
                        Wanted { first_version: e.first_version, offset: e.offset, len: 0, count: e.event_count }
                    }));
                }
                out.extend(picked.iter().map(|e| Wanted {
                    first_version: e.first_version,
                    offset: e.offset,
                    len: e.len,
                    count: e.count,
                }));
                Ok(out)
            }
            View::Sealed(s) => {
                let all = self.sealed_entries(seg, s, stream, hash)?;
                Ok(pick(all, |e| e.get().first_version, from, limit)
                    .iter()
                    .map(|e| {
                        let e = e.get();
                        Wanted { first_version: e.first_version, offset: e.offset, len: 0, count: e.event_count }
                    })
                    .collect())
            }
            View::Archived(a) => {
                // `limit` entries stand for at least `limit` batches: those are picked again.
                let all = self.find_stream(seg, a.streams()?, None, stream, hash)?;
                let mut batches = Vec::new();
                for e in pick(all, |e| e.get().first_version, from, limit) {
                    batches.extend(archived_batches(seg, a, e.get())?);
                }
                Ok(pick(&batches, |w| w.first_version, from, limit).to_vec())
            }
        }
    }

    /// Calls `f(batch, skip, take)` for each checked batch of `stream` holding versions >=
    /// `from` before position `end`, in version order, where the batch's events
    /// `skip..skip + take` are the ones wanted, until `limit` events are taken or `f` breaks.
    /// Returns how many were taken, and whether `f` broke.
    ///
    /// Nothing is allocated for a sealed segment: its index entries are read in place (an
    /// archive's entry is expanded into the batches of its span, a small `Vec` per entry);
    /// the open segment's are copied out of its in-memory index a few at a time (its
    /// lock is not held while `f` runs: `f` may be user code, and the writer takes that lock).
    #[allow(clippy::too_many_arguments)]
    pub fn visit_stream(
        &self,
        seg: &Segment,
        stream: &str,
        hash: u64,
        from: u64,
        end: u64,
        limit: usize,
        lend: Lend,
        f: &mut dyn FnMut(&BatchView<'_>, usize, usize) -> ControlFlow<()>,
    ) -> Result<(usize, ControlFlow<()>)> {
        let mut taken = 0;
        let mut visit = |e: &Wanted, taken: &mut usize| -> Result<ControlFlow<()>> {
            let skip = from.saturating_sub(e.first_version) as usize;
            let take = (e.count as usize).saturating_sub(skip).min(limit - *taken);
            let mut flow = ControlFlow::Continue(());
            self.checked_stream_batch(seg, stream, e, lend, |b| flow = f(b, skip, take))?;
            *taken += take;
            Ok(flow)
        };
        match self {
            View::Open(o) => {
                // The frozen part first, walked in place, as a sealed segment's index is.
                let frozen = o.frozen_run(stream, hash)?;
                let start = frozen.partition_point(|e| {
                    let e = e.get();
                    e.first_version.saturating_add(u64::from(e.event_count)) <= from
                });
                for e in frozen.get(start..).unwrap_or(&[]) {
                    if taken >= limit {
                        return Ok((taken, ControlFlow::Continue(())));
                    }
                    let e = e.get();
                    let w = Wanted { first_version: e.first_version, offset: e.offset, len: 0, count: e.event_count };
                    if visit(&w, &mut taken)?.is_break() {
                        return Ok((taken, ControlFlow::Break(())));
                    }
                }
                // Then the in-memory index's, copied out a chunk at a time, from the first
                // batch not yet visited.
                const CHUNK: usize = 32;
                let blank = Wanted { first_version: 0, offset: 0, len: 0, count: 0 };
                let mut chunk = [blank; CHUNK];
                let mut next = from;
                while taken < limit {
                    let n = {
                        let mem = o.index.read();
                        let all = mem.visible(stream, end);
                        let start = all.partition_point(|e| e.first_version + u64::from(e.count) <= next);
                        let rest = all.get(start..).unwrap_or(&[]);
                        let n = rest.len().min(CHUNK).min(limit - taken);
                        for (slot, e) in chunk.iter_mut().zip(rest.iter().take(n)) {
                            *slot =
                                Wanted { first_version: e.first_version, offset: e.offset, len: e.len, count: e.count };
                        }
                        n
                    };
                    for e in chunk.get(..n).unwrap_or(&[]) {
                        if taken >= limit {
                            break;
                        }
                        if visit(e, &mut taken)?.is_break() {
                            return Ok((taken, ControlFlow::Break(())));
                        }
                        next = e.first_version + u64::from(e.count);
                    }
                    if n < CHUNK {
                        break;
                    }
                }
            }
            View::Sealed(_) | View::Archived(_) => {
                let all = match self {
                    View::Sealed(s) => self.sealed_entries(seg, s, stream, hash)?,
                    View::Archived(a) => self.find_stream(seg, a.streams()?, None, stream, hash)?,
                    View::Open(_) => &[],
                };
                let start = all.partition_point(|e| {
                    let e = e.get();
                    e.first_version.saturating_add(u64::from(e.event_count)) <= from
                });
                for e in all.get(start..).unwrap_or(&[]) {
                    if taken >= limit {
                        break;
                    }
                    let e = e.get();
                    let one = Wanted { first_version: e.first_version, offset: e.offset, len: 0, count: e.event_count };
                    // An archive's entry may stand for several batches of its block (a sealed
                    // segment's, one: nothing is allocated for it).
                    let spanned;
                    let batches: &[Wanted] = match self {
                        View::Archived(a) => {
                            spanned = archived_batches(seg, a, e)?;
                            &spanned
                        }
                        _ => std::slice::from_ref(&one),
                    };
                    for w in batches.iter().filter(|w| w.first_version.saturating_add(u64::from(w.count)) > from) {
                        if taken >= limit {
                            break;
                        }
                        if visit(w, &mut taken)?.is_break() {
                            return Ok((taken, ControlFlow::Break(())));
                        }
                    }
                }
            }
        }
        Ok((taken, ControlFlow::Continue(())))
    }

    /// Appends to `out` the events of `stream` with version <= `from` before position `end`,
    /// newest first, until `out` holds `limit` events.
    #[allow(clippy::too_many_arguments)]
    pub fn read_stream_back(
        &self,
        seg: &Segment,
        stream: &str,
        hash: u64,
        from: u64,
        end: u64,
        limit: usize,
        out: &mut Vec<RecordedEvent>,
    ) -> Result<()> {
        let left = limit - out.len().min(limit);
        for e in self.stream_batches_back(seg, stream, hash, from, end, left)?.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let last = (from - e.first_version).min(u64::from(e.count) - 1) as usize;
            self.checked_stream_batch(seg, stream, e, Lend::Internal, |b| {
                let mut tmp = Vec::with_capacity(last + 1);
                emit(b, seg.partition, 0, last + 1, &mut tmp);
                out.extend(tmp.into_iter().rev().take(limit - out.len()));
            })?;
        }
        Ok(())
    }

    fn checked_stream_batch(
        &self,
        seg: &Segment,
        stream: &str,
        e: &Wanted,
        lend: Lend,
        f: impl FnOnce(&BatchView<'_>),
    ) -> Result<()> {
        let ok = self.with_batch(seg, e.offset, e.len as usize, stream, lend, |b| {
            // (A batch of `stream` holds the very `stream` given: `decode_with` knew it.)
            let same_stream = std::ptr::eq(b.stream_id, stream) || b.stream_id == stream;
            if !same_stream || b.first_version != e.first_version || b.event_count != e.count {
                return false;
            }
            f(b);
            true
        })?;
        if ok {
            Ok(())
        } else {
            Err(Error::corruption(
                &seg.path,
                e.offset,
                format!("batch does not hold what the index says of stream {stream:?}"),
            ))
        }
    }

    /// Like [`View::visit_positions`], but only for the batches `select` wants, found through
    /// the segment's stream index rather than by reading every batch: a sealed segment's
    /// streams are listed from its index (each id peeked from the stream's first batch), or
    /// taken from its event-type summary; the open segment's from its in-memory index (for a
    /// type selection, from its [`OpenTypes`](crate::log::active::OpenTypes) summary); and only
    /// the wanted streams' batches are read, in position order. `limit` counts their events
    /// only. An archive is read whole (`visit_positions`). Either way `f` may be handed batches
    /// it does not want (a wanted stream's batches of other types), and must pass over them.
    #[allow(clippy::too_many_arguments)]
    pub fn visit_streams(
        &self,
        seg: &Segment,
        select: Select<'_>,
        from: u64,
        end: u64,
        limit: usize,
        f: &mut dyn FnMut(&BatchView<'_>, usize, usize) -> ControlFlow<()>,
    ) -> Result<(usize, ControlFlow<()>)> {
        // (offset, length if known), in position order.
        let mut wanted: Vec<(u64, u32)> = Vec::new();
        match (self, select) {
            (View::Archived(_), _) => {
                return self.visit_positions(seg, from, end, limit, f);
            }
            (View::Open(o), select) => {
                let typed = match select {
                    Select::Types(types) => Some(self.open_type_streams(seg, o, types)?),
                    Select::Streams(_) => None,
                };
                let keep = |name: &str| match (&typed, select) {
                    (Some(streams), _) => streams.contains(name),
                    (None, Select::Streams(keep)) => keep(name),
                    (None, Select::Types(_)) => true,
                };
                // (offset, length if known): offsets follow positions within a segment.
                let mut by_position: Vec<(u64, u64, u32)> = Vec::new();
                if let Some(frozen) = &o.frozen {
                    let start = frozen.offset_for(from);
                    for (name, run) in o.frozen_streams()? {
                        if keep(&name) {
                            let at = run.iter().map(StreamEntry::get).filter(|e| e.offset >= start);
                            by_position.extend(at.map(|e| (e.offset, e.offset, 0)));
                        }
                    }
                }
                let mem = o.index.read();
                for (name, entries) in &mem.streams {
                    if !keep(name) {
                        continue;
                    }
                    let lo = entries.partition_point(|e| e.position + u64::from(e.count) <= from);
                    for e in entries.get(lo..).unwrap_or(&[]) {
                        if e.position >= end {
                            break;
                        }
                        by_position.push((e.offset, e.offset, e.len));
                    }
                }
                by_position.sort_unstable();
                wanted.extend(by_position.into_iter().map(|(_, offset, len)| (offset, len)));
            }
            (View::Sealed(s), _) => {
                let entries = s.stream_entries(seg)?;
                let start = s.offset_for(seg, from)?;
                let typed: Option<Vec<u32>> = match select {
                    Select::Types(types) => {
                        let summary = s.type_summary(seg)?;
                        let mut runs: Vec<u32> =
                            types.iter().filter_map(|t| summary.runs.get(t.as_str())).flatten().copied().collect();
                        runs.sort_unstable();
                        runs.dedup();
                        Some(runs)
                    }
                    Select::Streams(_) => None,
                };
                for (k, run) in index::stream_runs(entries).enumerate() {
                    let wanted_run = match (&typed, select) {
                        (Some(runs), _) => runs.binary_search(&(k as u32)).is_ok(),
                        (None, Select::Streams(keep)) => {
                            let Some(first) = run.first().map(StreamEntry::get) else { continue };
                            let id = s.data.get(first.offset as usize..).and_then(batch::peek_stream_id).ok_or_else(
                                || {
                                    Error::corruption(
                                        &seg.path,
                                        first.offset,
                                        "indexed batch has no readable stream id",
                                    )
                                },
                            )?;
                            keep(id)
                        }
                        (None, Select::Types(_)) => true,
                    };
                    if wanted_run {
                        wanted.extend(run.iter().map(|e| e.get().offset).filter(|&o| o >= start).map(|o| (o, 0)));
                    }
                }
                wanted.sort_unstable();
            }
        }
        let mut taken = 0usize;
        for (offset, len) in wanted {
            if taken >= limit {
                break;
            }
            // A frozen entry of the open segment does not store its batch's length.
            let len = match self {
                View::Open(o) if len == 0 => o.batch_len(offset)?,
                _ => len as usize,
            };
            let bytes = self.bytes(seg, offset, len)?;
            let b = batch::decode(bytes.get()).map_err(|bad| Error::corruption(&seg.path, offset, bad.to_string()))?;
            if b.base_position >= end {
                break;
            }
            if offer(&b, from, end, limit, &mut taken, f).is_break() {
                return Ok((taken, ControlFlow::Break(())));
            }
        }
        Ok((taken, ControlFlow::Continue(())))
    }

    /// The streams of the open segment `o` with an event of one of `types`, from its type
    /// summary, which this first brings up to date with the batches appended since it was
    /// last asked (reading those once).
    fn open_type_streams(&self, seg: &Segment, o: &OpenSegment, types: &[String]) -> Result<HashSet<Box<str>>> {
        let mut summary = o.types.lock();
        let upto = o.index.read().end_position;
        if upto > summary.scanned_to {
            let from = summary.scanned_to;
            let found = &mut summary.streams;
            let _ = self.visit_positions(seg, from, upto, usize::MAX, &mut |b, _, _| {
                for e in b.events() {
                    let streams = match found.get_mut(e.event_type) {
                        Some(s) => s,
                        None => found.entry(e.event_type.into()).or_default(),
                    };
                    if !streams.contains(b.stream_id) {
                        streams.insert(b.stream_id.into());
                    }
                }
                ControlFlow::Continue(())
            })?;
            summary.scanned_to = upto;
        }
        let mut out = HashSet::new();
        for t in types {
            if let Some(streams) = summary.streams.get(t.as_str()) {
                out.extend(streams.iter().cloned());
            }
        }
        Ok(out)
    }

    /// Calls `f(batch, skip, take)` for each batch holding positions `from..end`, in order,
    /// where the batch's events `skip..skip + take` are the ones wanted, until `limit` events
    /// are taken or `f` breaks. Returns how many were taken, and whether `f` broke.
    pub fn visit_positions(
        &self,
        seg: &Segment,
        from: u64,
        end: u64,
        limit: usize,
        f: &mut dyn FnMut(&BatchView<'_>, usize, usize) -> ControlFlow<()>,
    ) -> Result<(usize, ControlFlow<()>)> {
        let mut taken = 0usize;
        let (start_offset, data_end) = match self {
            View::Archived(a) => return a.visit_positions(from, end, limit, f),
            View::Sealed(s) => (s.offset_for(seg, from)?, s.data.len() as u64),
            View::Open(o) => {
                let mem = o.index.read();
                let k = mem.positions.partition_point(|p| p.position <= from);
                let off = match (k.checked_sub(1).and_then(|k| mem.positions.get(k)), &o.frozen) {
                    (Some(p), _) => p.offset,
                    (None, Some(frozen)) => frozen.offset_for(from),
                    (None, None) => seg_format::HEADER_LEN as u64,
                };
                (off, mem.end_offset)
            }
        };
        let mut offset = start_offset;
        // Start small (a subscriber usually wants the few newest events) and grow.
        let mut chunk = 64usize << 10;
        while offset < data_end && taken < limit {
            let want = (data_end - offset).min(chunk as u64) as usize;
            let bytes = self.bytes(seg, offset, want)?;
            let buf = bytes.get();
            let buf = buf.get(..want.min(buf.len())).unwrap_or(&[]);
            let mut at = 0usize;
            // Strings of the batch before, in the same bytes: no second UTF-8 check for them.
            let mut known = batch::Known::default();
            while let Some(rest) = buf.get(at..) {
                if rest.is_empty() || taken >= limit {
                    break;
                }
                // Matched by reference: the checked batch is not moved out of the result.
                match &batch::decode_with(rest, known) {
                    Ok(b) => {
                        if b.base_position >= end {
                            return Ok((taken, ControlFlow::Continue(())));
                        }
                        if offer(b, from, end, limit, &mut taken, f).is_break() {
                            return Ok((taken, ControlFlow::Break(())));
                        }
                        at += b.length;
                        known = b.known();
                    }
                    Err(batch::Bad::Truncated) if at > 0 => break,
                    Err(batch::Bad::Truncated) => {
                        // A batch larger than the chunk: read it whole next time round.
                        let need = batch::claimed_length(rest).unwrap_or(0);
                        if need <= chunk || offset + need as u64 > data_end {
                            return Err(Error::corruption(&seg.path, offset, "batch runs past the end of the data"));
                        }
                        chunk = need;
                        break;
                    }
                    Err(bad) => return Err(Error::corruption(&seg.path, offset + at as u64, bad.to_string())),
                }
            }
            offset += at as u64;
            chunk = chunk.max((chunk * 2).min(4 << 20));
        }
        Ok((taken, ControlFlow::Continue(())))
    }
}
