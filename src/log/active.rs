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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::Mmap;
use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::format::active_index as aix;
use crate::format::batch::BatchView;
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
#[derive(Debug, Default)]
pub(crate) struct MemIndex {
    pub streams: HashMap<Arc<str>, Vec<MemEntry>>,
    pub positions: Vec<PositionEntry>,
    pub end_position: u64,
    pub end_offset: u64,
}

impl MemIndex {
    pub fn new(base_position: u64) -> MemIndex {
        MemIndex { end_position: base_position, end_offset: seg_format::HEADER_LEN as u64, ..MemIndex::default() }
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
        Ok(key)
    }

    /// Forgets the batches from `position` on (the first of them at `offset`): a poisoned
    /// writer cut the segment back to there, so they are gone.
    pub fn cut(&mut self, position: u64, offset: u64) {
        if position >= self.end_position {
            return;
        }
        self.streams.retain(|_, v| {
            v.truncate(v.partition_point(|e| e.position < position));
            !v.is_empty()
        });
        self.positions.truncate(self.positions.partition_point(|p| p.position < position));
        self.end_position = position;
        self.end_offset = offset;
    }

    /// The sparse position map's rule (FORMAT.md §8.2): an entry for the first batch, then for
    /// each batch at least `POSITION_INTERVAL` bytes past the previous entry's.
    fn note_position(&mut self, position: u64, offset: u64) {
        if self.positions.last().is_none_or(|p| offset >= p.offset + POSITION_INTERVAL) {
            self.positions.push(PositionEntry { position, offset });
        }
    }

    /// Indexes the batches of one journal record (FORMAT.md §8.4) as a scan indexes them one
    /// by one ([`MemIndex::scanned`], versions checked), with one lookup per stream rather than
    /// per batch. On a stream that does not continue its versions, returns it (the index is
    /// then part-updated: the caller drops it).
    pub fn extend_journaled<'a>(&mut self, record: &aix::Record<'a>) -> Result<(), &'a str> {
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

    /// The index file image of this segment.
    /// `hash` is [`stream_hash`]; tests pass a colliding one.
    pub fn to_index_file(&self, partition: u32, base_position: u64, hash: fn(&str) -> u64) -> Vec<u8> {
        let mut streams: Vec<(u64, &Arc<str>, &Vec<MemEntry>)> =
            self.streams.iter().map(|(s, e)| (hash(s), s, e)).collect();
        streams.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut entries = Vec::with_capacity(streams.iter().map(|s| s.2.len()).sum());
        let mut prev_hash = None;
        let mut tag = 0u32;
        for (hash, _, list) in &streams {
            tag = if prev_hash == Some(*hash) { tag + 1 } else { 0 };
            prev_hash = Some(*hash);
            entries.extend(list.iter().map(|e| StreamEntry {
                stream_hash: *hash,
                first_version: e.first_version,
                offset: e.offset,
                event_count: e.count,
                tag,
            }));
        }
        let header = index::Header {
            partition,
            base_position,
            end_position: self.end_position,
            segment_len: self.end_offset,
            stream_entries: entries.len() as u64,
            position_entries: self.positions.len() as u64,
        };
        index::encode(&header, &entries, &self.positions)
    }
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
        OpenSegment {
            file,
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

    /// Drops the map for good, waiting for reads in progress: called before the file is cut
    /// back, so that no read touches a mapped page past the new end (which would be SIGBUS).
    pub fn unmap(&self) {
        let mut map = self.map.write();
        self.unmapped.store(true, Ordering::Release);
        *map = None;
    }
}
