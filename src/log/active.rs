//! The open segment: the active one (and one being sealed), indexed in memory as the writer
//! appends to it, and read through a read-only map of its file (a `pread` per batch cost more
//! than the rest of a stream read).
//!
//! Indexing. `MemIndex` takes each group's entries before the writer publishes the head that
//! covers them (the visibility rule, FORMAT.md §10.1). At recovery and at an index rebuild,
//! `MemIndex::scanned` also refuses a batch whose first version does not follow the last version
//! of the same stream earlier in the segment: the scan reports it as corruption at the batch's
//! offset (FORMAT.md §9.2).
//!
//! After a clean close, the index of what the segment held then is the journal's frozen
//! section (`Frozen`, FORMAT.md §8.4), mapped and searched in place as a sealed segment's index
//! is (by stream hash, collisions told apart by the stream id of a run's first batch); the
//! `MemIndex` then holds only what is appended after open, and reads, version checks, the
//! sealer and the next checkpoint merge the two.
//!
//! Reading (`OpenSegment::read`). The first read maps the file as long as it is then
//! (preallocated zeros included). Reads ask only for bytes of published batches, which the
//! writer has written. A read the map does not cover uses `pread`, unless it ends more than
//! `REMAP_STEP` (4 MiB) past the mapped length: then the file is mapped again if it is now at
//! least as long as the read's end and longer than the map, and the read is served from the new
//! map (from `pread` if that still does not cover it). So a reader following the head does not
//! remap at every batch: what lies within the mapped length (with preallocation the map runs
//! ahead of the data) is read from the map, and what lies just past it with `pread`. The writer
//! goes on writing through its file descriptor while the map exists; the map shares the page
//! cache, so reads through it see those writes.
//!
//! The map is dropped for good, under its lock (so after any read through it has finished),
//! before the file is ever cut back: before poisoning cuts the segment to `synced_offset` and
//! before the sealer trims it. Later reads of that segment use `pread`, so no read touches a
//! mapped page past the new end of the file (`SIGBUS`). After a poisoning in `Buffered` mode the
//! head and this index go back with the cut (`MemIndex::cut`), so no read reaches the cut
//! batches. The `ENOSPC` cut-back leaves the map in place: it cuts only
//! bytes past the data end before the failed write, which no published batch reaches.

use hashbrown::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::Mmap;
use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::format::active_index as aix;
use crate::format::batch::{self, BatchView};
use crate::format::index::{self, POSITION_INTERVAL, PositionEntry, StreamEntry};
use crate::format::segment as seg_format;
use crate::io::{FileHandle, mmap};

/// One batch of one stream in the in-memory index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemEntry {
    pub first_version: u64,
    /// Position of the batch's first event: reads leave out batches the head does not cover.
    pub position: u64,
    pub offset: u64,
    pub len: u32,
    pub count: u32,
}

impl MemEntry {
    /// Version of the batch's last event.
    pub fn last_version(&self) -> u64 {
        self.first_version + u64::from(self.count) - 1
    }
}

/// The in-memory index of an open (active or being sealed) segment.
///
/// With a frozen part ([`Frozen`]), it holds only the batches after it: `streams` and
/// `positions` start empty at the frozen part's end, and a stream's entries here continue its
/// entries there.
#[derive(Debug, Default)]
pub(crate) struct MemIndex {
    pub streams: HashMap<Arc<str>, Vec<MemEntry>>,
    pub positions: Vec<PositionEntry>,
    pub end_position: u64,
    pub end_offset: u64,
    /// Offset of the last batch (0 in an empty segment).
    pub last_offset: u64,
    /// Where the frozen part ends (offset, position), or the segment's start: no cut goes
    /// below it.
    floor: (u64, u64),
    /// The offset of the frozen part's last position entry, which the next one follows.
    frozen_noted: Option<u64>,
    /// The offset of the frozen part's last batch (0 without one).
    frozen_last: u64,
}

impl MemIndex {
    pub fn new(base_position: u64) -> MemIndex {
        let start = seg_format::HEADER_LEN as u64;
        MemIndex {
            end_position: base_position,
            end_offset: start,
            floor: (start, base_position),
            ..MemIndex::default()
        }
    }

    /// The index of what is appended after a journal's frozen section, empty.
    pub fn after_section(frozen: &aix::FrozenView<'_>) -> MemIndex {
        let h = frozen.header;
        MemIndex {
            end_position: h.to_position,
            end_offset: h.to_offset,
            last_offset: h.last_offset,
            floor: (h.to_offset, h.to_position),
            frozen_last: h.last_offset,
            frozen_noted: frozen.positions.last().map(|p| p.get().offset),
            ..MemIndex::default()
        }
    }

    /// Records a batch that was just written (or found by a scan) at `offset`; returns the
    /// index's copy of the stream id.
    pub fn insert(
        &mut self,
        stream: &str,
        first_version: u64,
        base_position: u64,
        count: u32,
        offset: u64,
        len: u32,
    ) -> Arc<str> {
        // Unchecked, so it cannot be refused.
        self.insert_after(stream, false, first_version, base_position, count, offset, len)
            .unwrap_or_else(|_| Arc::from(stream))
    }

    /// [`MemIndex::insert`], refusing (with the stream's last version here) a batch that does
    /// not continue the stream's versions if `check` is set: one lookup of the stream either
    /// way.
    #[allow(clippy::too_many_arguments)]
    fn insert_after(
        &mut self,
        stream: &str,
        check: bool,
        first_version: u64,
        base_position: u64,
        count: u32,
        offset: u64,
        len: u32,
    ) -> Result<Arc<str>, u64> {
        let entry = MemEntry { first_version, position: base_position, offset, len, count };
        let key = match self.streams.get_key_value_mut(stream) {
            Some((key, v)) => {
                if let Some(last) = v.last().map(MemEntry::last_version).filter(|_| check)
                    && last.checked_add(1) != Some(first_version)
                {
                    return Err(last);
                }
                v.push(entry);
                key.clone()
            }
            None => {
                let key: Arc<str> = Arc::from(stream);
                self.streams.insert(key.clone(), vec![entry]);
                key
            }
        };
        self.note_position(base_position, offset);
        self.end_position = base_position + u64::from(count);
        self.end_offset = offset + u64::from(len);
        self.last_offset = offset;
        Ok(key)
    }

    /// Forgets the batches from `position` on (the first of them at `offset`): a poisoned
    /// writer cut the segment back to there, so they are gone.
    pub fn cut(&mut self, position: u64, offset: u64) {
        if position >= self.end_position {
            return;
        }
        // The frozen part covers only durable batches, and cuts remove only batches that are
        // not: none reaches below it.
        let (position, offset) =
            if position < self.floor.1 { (self.floor.1, self.floor.0) } else { (position, offset) };
        self.streams.retain(|_, v| {
            v.truncate(v.partition_point(|e| e.position < position));
            !v.is_empty()
        });
        self.positions.truncate(self.positions.partition_point(|p| p.position < position));
        self.end_position = position;
        self.end_offset = offset;
        self.last_offset =
            self.streams.values().filter_map(|v| v.last()).map(|e| e.offset).max().unwrap_or(self.frozen_last);
    }

    /// The sparse position map's rule (FORMAT.md §8.2): an entry for the first batch, then for
    /// each batch at least `POSITION_INTERVAL` bytes past the previous entry's.
    fn note_position(&mut self, position: u64, offset: u64) {
        if self.positions.last().map(|p| p.offset).or(self.frozen_noted).is_none_or(|o| offset >= o + POSITION_INTERVAL)
        {
            self.positions.push(PositionEntry { position, offset });
        }
    }

    /// Indexes the batches of one journal record (FORMAT.md §8.4) as a scan indexes them one
    /// by one ([`MemIndex::scanned`], versions checked), with one lookup per stream rather than
    /// per batch. On a stream that does not continue its versions, returns it (the index is
    /// then part-updated: the caller drops it).
    ///
    /// `frozen_last` gives a stream's last version in the frozen part (`Err` if that cannot be
    /// told: the journal is dropped then too), which its first batch here must continue.
    pub fn extend_journaled<'a>(
        &mut self,
        record: &aix::Record<'a>,
        frozen_last: &mut dyn FnMut(&str) -> Result<Option<u64>, ()>,
    ) -> Result<(), &'a str> {
        let streams = &record.streams;
        let mut counts = vec![0usize; streams.len()];
        for b in record.batches() {
            if let Some(c) = counts.get_mut(b.stream as usize) {
                *c += 1;
            }
        }
        let mut per: Vec<Vec<MemEntry>> = counts.iter().map(|&c| Vec::with_capacity(c)).collect();
        for b in record.batches() {
            let entry = MemEntry {
                first_version: b.first_version,
                position: b.position,
                offset: b.offset,
                len: b.len,
                count: b.event_count,
            };
            if let Some(v) = per.get_mut(b.stream as usize) {
                v.push(entry);
            }
            self.note_position(b.position, b.offset);
        }
        self.end_position = record.to_position;
        self.end_offset = record.to_offset;
        self.last_offset = record.last.offset;
        for (&stream, entries) in streams.iter().zip(per) {
            let Some(first) = entries.first() else { continue };
            match self.streams.get_mut(stream) {
                Some(v) => {
                    if v.last().map(MemEntry::last_version).and_then(|l| l.checked_add(1)) != Some(first.first_version)
                    {
                        return Err(stream);
                    }
                    v.extend(entries);
                }
                None => {
                    match frozen_last(stream) {
                        Ok(None) => {}
                        Ok(Some(l)) if l.checked_add(1) == Some(first.first_version) => {}
                        _ => return Err(stream),
                    }
                    self.streams.insert(Arc::from(stream), entries);
                }
            }
        }
        Ok(())
    }

    /// Indexes a batch found by a scan of the segment (at `offset`). A stream's versions
    /// continue from batch to batch: a batch that does not follow the stream's last one here
    /// is not what any writer wrote, and is refused (and not indexed).
    pub fn scanned(&mut self, offset: u64, b: &BatchView<'_>) -> Result<Arc<str>, String> {
        self.scanned_after(offset, b, &mut |_| Ok(None))
    }

    /// [`MemIndex::scanned`] after a frozen part: `frozen_last` gives a stream's last version
    /// there, which its first batch here must continue (`Err`: its id there is unreadable).
    pub fn scanned_after(
        &mut self,
        offset: u64,
        b: &BatchView<'_>,
        frozen_last: &mut dyn FnMut(&str) -> Result<Option<u64>, String>,
    ) -> Result<Arc<str>, String> {
        if !self.streams.contains_key(b.stream_id)
            && let Some(last) = frozen_last(b.stream_id)?
            && last.checked_add(1) != Some(b.first_version)
        {
            return Err(format!(
                "batch of stream {:?} starts at version {}, after its batch ending at version {last}",
                b.stream_id, b.first_version
            ));
        }
        let (count, len) = (b.event_count, b.length as u32);
        self.insert_after(b.stream_id, true, b.first_version, b.base_position, count, offset, len).map_err(|last| {
            format!(
                "batch of stream {:?} starts at version {}, after its batch ending at version {last}",
                b.stream_id, b.first_version
            )
        })
    }

    /// The stream's last version in this segment, whatever the head says: the writer's view.
    pub fn last_version(&self, stream: &str) -> Option<u64> {
        self.streams.get(stream).and_then(|v| v.last()).map(MemEntry::last_version)
    }

    /// The stream's entries for batches before position `end` (the head): a reader's view.
    /// The writer adds a group's entries before it publishes the head, so entries at or
    /// past the head are there before they may be seen.
    pub fn visible(&self, stream: &str, end: u64) -> &[MemEntry] {
        let all = self.streams.get(stream).map_or(&[][..], Vec::as_slice);
        all.get(..all.partition_point(|e| e.position < end)).unwrap_or(&[])
    }

    /// The index file image of this segment, whose frozen part's runs are `frozen` (each with
    /// its stream id, in any order; empty without one).
    /// `hash` is [`stream_hash`](crate::router::stream_hash); tests pass a colliding one.
    pub fn to_index_file(
        &self,
        partition: u32,
        base_position: u64,
        hash: fn(&str) -> u64,
        frozen: &[(&str, &[StreamEntry])],
        frozen_positions: &[PositionEntry],
    ) -> Vec<u8> {
        let (entries, positions) = self.sorted_entries(hash, frozen, frozen_positions);
        let header = index::Header {
            partition,
            base_position,
            end_position: self.end_position,
            segment_len: self.end_offset,
            stream_entries: entries.len() as u64,
            position_entries: positions.len() as u64,
        };
        index::encode(&header, &entries, &positions)
    }

    /// Every batch's stream entry, in index order (FORMAT.md §8.1), the frozen part's runs
    /// (`frozen`, with their stream ids; in file byte order) merged with the entries here;
    /// and the position entries, the frozen part's (`frozen_positions`, file byte order) then
    /// these.
    pub fn sorted_entries(
        &self,
        hash: fn(&str) -> u64,
        frozen: &[(&str, &[StreamEntry])],
        frozen_positions: &[PositionEntry],
    ) -> (Vec<StreamEntry>, Vec<PositionEntry>) {
        let mut streams: HashMap<&str, (&[StreamEntry], &[MemEntry])> =
            HashMap::with_capacity(self.streams.len() + frozen.len());
        for &(id, run) in frozen {
            streams.entry(id).or_insert((&[], &[])).0 = run;
        }
        for (id, list) in &self.streams {
            streams.entry(&**id).or_insert((&[], &[])).1 = list;
        }
        // Per stream: its hash, its id, its frozen entries and its entries here.
        #[allow(clippy::type_complexity)]
        let mut streams: Vec<(u64, &str, (&[StreamEntry], &[MemEntry]))> =
            streams.into_iter().map(|(s, e)| (hash(s), s, e)).collect();
        streams.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let total = streams.iter().map(|s| s.2.0.len() + s.2.1.len()).sum();
        let mut entries = Vec::with_capacity(total);
        let mut prev_hash = None;
        let mut tag = 0u32;
        for (hash, _, (old, new)) in &streams {
            tag = if prev_hash == Some(*hash) { tag + 1 } else { 0 };
            prev_hash = Some(*hash);
            entries.extend(old.iter().map(|e| {
                let e = e.get();
                StreamEntry {
                    stream_hash: *hash,
                    first_version: e.first_version,
                    offset: e.offset,
                    event_count: e.event_count,
                    tag,
                }
            }));
            entries.extend(new.iter().map(|e| StreamEntry {
                stream_hash: *hash,
                first_version: e.first_version,
                offset: e.offset,
                event_count: e.count,
                tag,
            }));
        }
        let mut positions: Vec<PositionEntry> = frozen_positions.iter().map(PositionEntry::get).collect();
        positions.extend_from_slice(&self.positions);
        (entries, positions)
    }
}

/// The frozen part of an open segment's index: the stream and position entries of the
/// batches its journal's frozen section covers (FORMAT.md §8.4), read in place from the mapped
/// journal and never changed. A stream's entries are found as in a sealed segment's index: by
/// hash, streams that hash alike told apart by the stream id of their first batch.
#[derive(Debug)]
pub(crate) struct Frozen {
    map: Mmap,
    streams: Range<usize>,
    positions: Range<usize>,
    pub end_offset: u64,
}

impl Frozen {
    /// The frozen part in `map`, a journal whose frozen section (with `header`, `streams`
    /// stream entries, and ending at file offset `end`) checked out.
    pub fn new(map: Mmap, header: aix::FrozenHeader, streams: usize, end: usize) -> Frozen {
        let split = aix::HEADER_LEN + streams * 32;
        Frozen { streams: aix::HEADER_LEN..split, positions: split..end, end_offset: header.to_offset, map }
    }

    /// The stream entries, sorted by `(stream_hash, tag, first_version)`.
    pub fn streams(&self) -> &[StreamEntry] {
        self.map.get(self.streams.clone()).and_then(|b| bytemuck::try_cast_slice(b).ok()).unwrap_or(&[])
    }

    /// The position entries.
    pub fn positions(&self) -> &[PositionEntry] {
        self.map.get(self.positions.clone()).and_then(|b| bytemuck::try_cast_slice(b).ok()).unwrap_or(&[])
    }

    /// The entries of the stream with `hash` whose first batch `is_it` (given its offset) says
    /// is of the stream wanted; empty if none.
    pub fn run<E>(&self, hash: u64, is_it: impl FnMut(u64) -> Result<bool, E>) -> Result<&[StreamEntry], E> {
        find_run(self.streams(), hash, is_it)
    }

    /// Where a read of positions `>= from` starts: the offset of the last position entry at or
    /// before `from`.
    pub fn offset_for(&self, from: u64) -> u64 {
        let positions = self.positions();
        let k = positions.partition_point(|p| p.get().position <= from);
        k.checked_sub(1).and_then(|k| positions.get(k)).map_or(seg_format::HEADER_LEN as u64, |p| p.get().offset)
    }
}

/// The entries of the stream with `hash` among sorted `entries` (an index's, §8.1) whose first
/// batch `is_it` (given its offset) says is of the stream wanted; empty if none.
pub(crate) fn find_run<E>(
    entries: &[StreamEntry],
    hash: u64,
    mut is_it: impl FnMut(u64) -> Result<bool, E>,
) -> Result<&[StreamEntry], E> {
    let lo = entries.partition_point(|e| e.get().stream_hash < hash);
    let hi = entries.partition_point(|e| e.get().stream_hash <= hash);
    let mut i = lo;
    while i < hi {
        let Some(first) = entries.get(i).map(StreamEntry::get) else { break };
        let block = entries.get(i..hi).unwrap_or(&[]);
        let j = i + block.partition_point(|e| e.get().tag <= first.tag);
        if is_it(first.offset)? {
            return Ok(entries.get(i..j).unwrap_or(&[]));
        }
        i = j;
    }
    Ok(&[])
}

/// The last version of a run of stream entries.
pub(crate) fn run_last_version(run: &[StreamEntry]) -> Option<u64> {
    run.last().map(|e| {
        let e = e.get();
        e.first_version.saturating_add(u64::from(e.event_count)).saturating_sub(1)
    })
}

/// Where an open segment's index ended when its entries were taken.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemSummary {
    pub end_offset: u64,
    pub end_position: u64,
    pub last_offset: u64,
}

/// The event types of an open segment, for reads selected by type: built by the first such
/// read and brought up to date by each later one, from where the last left off, so that
/// every batch is read for it once and appends pay nothing.
#[derive(Debug, Default)]
pub(crate) struct OpenTypes {
    /// Batches before this position are in `streams`.
    pub scanned_to: u64,
    /// Per event type, the streams with an event of that type in the segment.
    pub streams: HashMap<Box<str>, std::collections::HashSet<Box<str>>>,
}

/// An open segment: its file, written by the partition writer, and read through a read-only
/// map of it (a `pread` per batch cost more than the rest of a stream read).
#[derive(Debug)]
pub(crate) struct OpenSegment {
    pub file: Arc<FileHandle>,
    /// The part of the index that open mapped from the journal's frozen section (FORMAT.md
    /// §8.4); `index` holds what came after it.
    pub frozen: Option<Frozen>,
    pub index: RwLock<MemIndex>,
    /// Its event types, once a read has asked for them.
    pub types: parking_lot::Mutex<OpenTypes>,
    /// The file mapped as it was when last (re)mapped; reads past its end use `pread`.
    map: RwLock<Option<Mmap>>,
    /// Set, under `map`'s lock, when the map is dropped for good: before the file is cut.
    unmapped: AtomicBool,
}

/// Reads that end within this many bytes past the mapped length use `pread` instead of
/// remapping: a reader following the head does not remap at every batch.
const REMAP_STEP: u64 = 4 << 20;

impl OpenSegment {
    pub fn new(file: Arc<FileHandle>, index: MemIndex) -> OpenSegment {
        OpenSegment::with_frozen(file, None, index)
    }

    /// An open segment whose index is `frozen` and then `index`
    /// (made with [`MemIndex::after_section`] of it).
    pub fn with_frozen(file: Arc<FileHandle>, frozen: Option<Frozen>, index: MemIndex) -> OpenSegment {
        OpenSegment {
            file,
            frozen,
            index: RwLock::new(index),
            types: Default::default(),
            map: RwLock::new(None),
            unmapped: Default::default(),
        }
    }

    /// The bytes `[offset, offset + len)`, which the caller knows were written (they are
    /// below a published end), copied out.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64);
        let range = usize::try_from(offset).unwrap_or(usize::MAX)..usize::try_from(end).unwrap_or(usize::MAX);
        let mapped = {
            let map = self.map.read();
            if let Some(b) = map.as_ref().and_then(|m| m.get(range.clone())) {
                return Ok(b.to_vec());
            }
            map.as_ref().map_or(0, |m| m.len() as u64)
        };
        let unmapped = self.unmapped.load(Ordering::Acquire);
        if !unmapped && (mapped == 0 || end > mapped + REMAP_STEP) {
            let mut map = self.map.write();
            if !self.unmapped.load(Ordering::Acquire) {
                let file_len = self.file.std().metadata().map_err(|e| Error::io("stat", self.file.path(), e))?.len();
                if file_len >= end && file_len > map.as_ref().map_or(0, |m| m.len() as u64) {
                    *map = Some(mmap::segment(&self.file)?);
                }
                if let Some(b) = map.as_ref().and_then(|m| m.get(range)) {
                    return Ok(b.to_vec());
                }
            }
        }
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Calls `f` with the bytes `[offset, offset + len)` (which the caller knows were written),
    /// lent from the map when it covers them, copied out ([`OpenSegment::read`]) otherwise.
    /// A lent slice is read under the map's read lock: `f` must not read this segment again,
    /// nor wait on anything (such as an append) that may need the writer; only internal
    /// decoders, never user code, run as `f`.
    pub fn with_bytes<T>(&self, offset: u64, len: usize, f: impl FnOnce(&[u8]) -> T) -> Result<T> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        {
            let map = self.map.read();
            if let Some(b) = map.as_ref().and_then(|m| m.get(start..start.saturating_add(len))) {
                return Ok(f(b));
            }
        }
        Ok(f(&self.read(offset, len)?))
    }

    /// The frozen part's entries of `stream` (whose hash is `hash`), found by hash and told
    /// apart from streams that hash alike by the stream id of their first batch; empty without
    /// a frozen part or without events of it there. As in a sealed segment (`View::find_stream`),
    /// a match needs no checksum (the batches are checked when read), while a mismatch is a
    /// checked one, so that damage to an id fails the read instead of hiding the stream.
    pub fn frozen_run(&self, stream: &str, hash: u64) -> Result<&[StreamEntry]> {
        let Some(frozen) = &self.frozen else { return Ok(&[]) };
        frozen.run(hash, |offset| self.batch_is_of(frozen, offset, stream))
    }

    fn batch_is_of(&self, frozen: &Frozen, offset: u64, stream: &str) -> Result<bool> {
        let room = frozen.end_offset.saturating_sub(offset) as usize;
        let peek = room.min(batch::HEADER_LEN + batch::MAX_STREAM_ID_LEN);
        if self.with_bytes(offset, peek, |b| batch::peek_stream_id(b) == Some(stream))? {
            return Ok(true);
        }
        let len = self.batch_len(offset)?;
        self.with_bytes(offset, len, |b| match batch::decode(b) {
            Ok(v) => Ok(v.stream_id == stream),
            Err(bad) => Err(Error::corruption(self.file.path(), offset, format!("indexed batch: {bad}"))),
        })?
    }

    /// The length of the batch at `offset` under the frozen part, as its header claims (at
    /// most what the frozen part has from there): for reads of frozen entries, which do not
    /// store it. The batch itself is checked when read.
    pub fn batch_len(&self, offset: u64) -> Result<usize> {
        let end = self.frozen.as_ref().map_or(0, |f| f.end_offset);
        let room = end.saturating_sub(offset) as usize;
        let claimed = self.with_bytes(offset, room.min(batch::HEADER_LEN), batch::claimed_length)?;
        Ok(claimed.unwrap_or(0).min(room))
    }

    /// The stream's last version in this segment, whatever the head says: the writer's view.
    pub fn last_version(&self, stream: &str, hash: u64) -> Result<Option<u64>> {
        if let Some(v) = self.index.read().last_version(stream) {
            return Ok(Some(v));
        }
        Ok(run_last_version(self.frozen_run(stream, hash)?))
    }

    /// The frozen part's runs with their stream ids (peeked from their first batches), in
    /// index order.
    pub fn frozen_streams(&self) -> Result<Vec<(String, &[StreamEntry])>> {
        let Some(frozen) = &self.frozen else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for run in index::stream_runs(frozen.streams()) {
            let Some(first) = run.first().map(StreamEntry::get) else { continue };
            let room = frozen.end_offset.saturating_sub(first.offset) as usize;
            let peek = room.min(batch::HEADER_LEN + batch::MAX_STREAM_ID_LEN);
            let id = self.with_bytes(first.offset, peek, |b| batch::peek_stream_id(b).map(str::to_owned))?;
            let id = id.ok_or_else(|| {
                Error::corruption(self.file.path(), first.offset, "indexed batch has no readable stream id")
            })?;
            out.push((id, run));
        }
        Ok(out)
    }

    /// The segment's stream and position entries in index order (FORMAT.md §8.1, §8.2): the
    /// frozen part's merged with the in-memory index's.
    pub fn sorted_entries(&self, hash: fn(&str) -> u64) -> Result<(Vec<StreamEntry>, Vec<PositionEntry>, MemSummary)> {
        let frozen = self.frozen_streams()?;
        let runs: Vec<(&str, &[StreamEntry])> = frozen.iter().map(|(id, run)| (id.as_str(), *run)).collect();
        let positions = self.frozen.as_ref().map_or(&[][..], Frozen::positions);
        let mem = self.index.read();
        let (entries, positions) = mem.sorted_entries(hash, &runs, positions);
        let summary =
            MemSummary { end_offset: mem.end_offset, end_position: mem.end_position, last_offset: mem.last_offset };
        Ok((entries, positions, summary))
    }

    /// Drops the map for good, waiting for reads in progress: called before the file is cut
    /// back, so that no read touches a mapped page past the new end (which would be SIGBUS).
    pub fn unmap(&self) {
        let mut map = self.map.write();
        self.unmapped.store(true, Ordering::Release);
        *map = None;
    }
}
