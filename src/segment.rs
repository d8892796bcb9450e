//! Segments as the engine holds them: the active one (and one being sealed) indexed in memory
//! and read with `pread`; sealed ones memory-mapped together with their index files, loaded
//! lazily on first use and rebuilt from the segment if the index is missing or damaged.

use std::collections::HashMap;
use std::ops::{ControlFlow, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use parking_lot::{Mutex, RwLock};

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::format::batch::{self, BatchView};
use crate::format::index::{self, POSITION_INTERVAL, PositionEntry, StreamEntry};
use crate::format::segment::{self as seg_format, Mode};
use crate::io::{FileHandle, Io};
use crate::router::stream_hash;
use crate::store::RecoveryAction;

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

/// A batch of a stream that a read wants, from any kind of index (`len` 0: not known).
#[derive(Debug, Clone, Copy)]
struct Wanted {
    first_version: u64,
    offset: u64,
    len: u32,
    count: u32,
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

    /// Records a batch that was just written (or found by a scan) at `offset`.
    pub fn insert(&mut self, stream: &str, first_version: u64, base_position: u64, count: u32, offset: u64, len: u32) {
        let entry = MemEntry { first_version, position: base_position, offset, len, count };
        match self.streams.get_mut(stream) {
            Some(v) => v.push(entry),
            None => {
                self.streams.insert(Arc::from(stream), vec![entry]);
            }
        }
        if self.positions.last().is_none_or(|p| offset >= p.offset + POSITION_INTERVAL) {
            self.positions.push(PositionEntry { position: base_position, offset });
        }
        self.end_position = base_position + u64::from(count);
        self.end_offset = offset + u64::from(len);
    }

    /// The stream's last version in this segment, whatever the head says: the writer's view.
    pub fn last_version(&self, stream: &str) -> Option<u64> {
        self.streams.get(stream).and_then(|v| v.last()).map(MemEntry::last_version)
    }

    /// The stream's entries for batches before position `end` (the head): a reader's view.
    /// The writer adds a group's entries before it publishes the head, so entries at or
    /// past the head are there before they may be seen.
    fn visible(&self, stream: &str, end: u64) -> &[MemEntry] {
        let all = self.streams.get(stream).map_or(&[][..], Vec::as_slice);
        all.get(..all.partition_point(|e| e.position < end)).unwrap_or(&[])
    }

    /// The index file image of this segment.
    /// `hash` is [`stream_hash`]; tests pass a colliding one.
    fn to_index_file(&self, partition: u32, base_position: u64, hash: fn(&str) -> u64) -> Vec<u8> {
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

/// An open segment: its file, written by the partition writer, and read through a read-only
/// map of it (a `pread` per batch cost more than the rest of a stream read).
#[derive(Debug)]
pub(crate) struct OpenSegment {
    pub file: Arc<FileHandle>,
    pub index: RwLock<MemIndex>,
    /// The file mapped as it was when last (re)mapped; reads past its end use `pread`.
    map: RwLock<Option<Mmap>>,
    /// Set, under `map`'s lock, when the map is dropped for good: before the file is cut.
    unmapped: std::sync::atomic::AtomicBool,
}

/// Reads that end within this many bytes past the mapped length use `pread` instead of
/// remapping: a reader following the head does not remap at every batch.
const REMAP_STEP: u64 = 4 << 20;

impl OpenSegment {
    pub fn new(file: Arc<FileHandle>, index: MemIndex) -> OpenSegment {
        OpenSegment { file, index: RwLock::new(index), map: RwLock::new(None), unmapped: Default::default() }
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
        let unmapped = self.unmapped.load(std::sync::atomic::Ordering::Acquire);
        if !unmapped && (mapped == 0 || end > mapped + REMAP_STEP) {
            let mut map = self.map.write();
            if !self.unmapped.load(std::sync::atomic::Ordering::Acquire) {
                let file_len = self.file.std().metadata().map_err(|e| Error::io("stat", self.file.path(), e))?.len();
                if file_len >= end && file_len > map.as_ref().map_or(0, |m| m.len() as u64) {
                    *map = Some(mmap(&self.file)?);
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

    /// Drops the map for good, waiting for reads in progress: called before the file is cut
    /// back, so that no read touches a mapped page past the new end (which would be SIGBUS).
    pub fn unmap(&self) {
        let mut map = self.map.write();
        self.unmapped.store(true, std::sync::atomic::Ordering::Release);
        *map = None;
    }
}

/// A sealed segment: the segment and its index, both memory-mapped and validated.
#[derive(Debug)]
pub(crate) struct SealedSegment {
    data: Mmap,
    index: Mmap,
    streams: Range<usize>,
    positions: Range<usize>,
}

/// The state of a segment slot.
#[derive(Debug, Clone)]
pub(crate) enum State {
    Open(Arc<OpenSegment>),
    Sealed(Arc<SealedSegment>),
    /// A range compacted into an archive (the slot's files are `{base}.arc`).
    Archived(Arc<Archive>),
    Unloaded,
    /// Loading found damage that only a reopen (after repair) can change: every read of the
    /// segment gets the same error at once instead of scanning it again.
    Failed(Error),
}

/// A segment of a partition, whatever its state.
#[derive(Debug)]
pub(crate) struct Segment {
    pub partition: u32,
    pub base: u64,
    pub path: PathBuf,
    pub index_path: PathBuf,
    state: RwLock<State>,
    load_lock: Mutex<()>,
}

/// A reference to a segment's readable form, held for the duration of a read.
#[derive(Debug, Clone)]
pub(crate) enum View {
    Open(Arc<OpenSegment>),
    Sealed(Arc<SealedSegment>),
    Archived(Arc<Archive>),
}

/// Where reads record what they had to repair.
pub(crate) type Report = Arc<Mutex<Vec<RecoveryAction>>>;

fn mmap(file: &FileHandle) -> Result<Mmap> {
    // SAFETY: no read touches a mapped page that a truncation removed (SIGBUS): a sealed
    // segment is trimmed before it is mapped for reads (an index rebuild drops its scanning
    // map before trimming); the active segment's read map is dropped under its lock
    // (`OpenSegment::unmap`) before the writer cuts the file back to its durable data (a failed
    // sync) or the sealer trims it. The one other cut, of a partial write after a full disk,
    // removes only bytes past the published end, which reads never pass. Writes through
    // the file while it is mapped are fine (the map is read-only; reads see the page cache).
    // The store lock keeps other strata processes out. Compaction unlinks files, which leaves
    // existing mappings valid. Another program truncating the file would be outside this
    // contract.
    unsafe { Mmap::map(file.std()) }.map_err(|e| Error::io("mmap", file.path(), e))
}

impl Segment {
    pub fn new(partition: u32, dir: &Path, base: u64, state: State) -> Segment {
        Segment {
            partition,
            base,
            path: dir.join(seg_format::file_name(base)),
            index_path: dir.join(index::file_name(base)),
            state: RwLock::new(state),
            load_lock: Mutex::new(()),
        }
    }

    /// The slot of an archive (or of an archive file that could not be opened: `Failed`).
    pub fn archived(partition: u32, dir: &Path, base: u64, state: State) -> Segment {
        let path = dir.join(crate::format::archive::file_name(base));
        Segment {
            partition,
            base,
            index_path: path.clone(),
            path,
            state: RwLock::new(state),
            load_lock: Mutex::new(()),
        }
    }

    /// Whether this slot holds an archive.
    pub fn is_archive(&self) -> bool {
        self.path.extension().is_some_and(|e| e == "arc")
    }

    pub fn set_state(&self, state: State) {
        *self.state.write() = state;
    }

    pub fn state(&self) -> State {
        self.state.read().clone()
    }

    /// The readable form of this segment, mapping it (and checking or rebuilding its index)
    /// on first use. `end_position` is where the next segment starts.
    pub fn view(&self, end_position: u64, io: &Io, report: &Report) -> Result<View> {
        let _guard = match self.state() {
            State::Open(o) => return Ok(View::Open(o)),
            State::Sealed(s) => return Ok(View::Sealed(s)),
            State::Archived(a) => return Ok(View::Archived(a)),
            State::Failed(e) => return Err(e),
            State::Unloaded => self.load_lock.lock(),
        };
        match self.state() {
            State::Unloaded => {}
            State::Open(o) => return Ok(View::Open(o)),
            State::Sealed(s) => return Ok(View::Sealed(s)),
            State::Archived(a) => return Ok(View::Archived(a)),
            State::Failed(e) => return Err(e),
        }
        match self.load(end_position, io, report) {
            Ok(sealed) => {
                let sealed = Arc::new(sealed);
                self.set_state(State::Sealed(sealed.clone()));
                Ok(View::Sealed(sealed))
            }
            Err(e) => {
                // An I/O error may pass (too many open files...); damage does not.
                if matches!(e, Error::Corruption { .. } | Error::UnsupportedVersion { .. }) {
                    self.set_state(State::Failed(e.clone()));
                }
                Err(e)
            }
        }
    }

    /// Maps the sealed segment and its index; rebuilds the index if it does not check out.
    fn load(&self, end_position: u64, io: &Io, report: &Report) -> Result<SealedSegment> {
        let file = io.open_read(&self.path)?;
        let len = file.len()?;
        if len < seg_format::HEADER_LEN as u64 {
            return Err(Error::corruption(&self.path, 0, format!("sealed segment is only {len} bytes")));
        }
        let data = mmap(&file)?;
        check_header(&self.path, &data, self.partition, self.base)?;
        match self.try_index(io, len, end_position) {
            Ok((idx, streams, positions)) => Ok(SealedSegment { data, index: idx, streams, positions }),
            Err(why) => {
                drop(data);
                self.rebuild(io, report, end_position, why)
            }
        }
    }

    fn try_index(
        &self,
        io: &Io,
        segment_len: u64,
        end_position: u64,
    ) -> Result<(Mmap, Range<usize>, Range<usize>), String> {
        let file = io.open_read(&self.index_path).map_err(|e| e.to_string())?;
        let map = mmap(&file).map_err(|e| e.to_string())?;
        let view = index::decode(&map)?;
        let h = view.header;
        if h.partition != self.partition || h.base_position != self.base {
            return Err(format!("index belongs to partition {} base {}", h.partition, h.base_position));
        }
        if h.segment_len != segment_len {
            return Err(format!("index describes {} segment bytes, the segment has {segment_len}", h.segment_len));
        }
        if h.end_position != end_position {
            return Err(format!(
                "index ends at position {}, the next segment starts at {end_position}",
                h.end_position
            ));
        }
        let split = index::HEADER_LEN + view.streams.len() * 32;
        let (streams, positions) = (index::HEADER_LEN..split, split..map.len());
        Ok((map, streams, positions))
    }

    /// Scans the segment, trims a zero-filled tail, writes a fresh index, and maps both.
    fn rebuild(&self, io: &Io, report: &Report, end_position: u64, why: String) -> Result<SealedSegment> {
        let file = io.open_rw(&self.path)?;
        let data = mmap(&file)?;
        let header = check_header(&self.path, &data, self.partition, self.base)?;
        let mut mem = MemIndex::new(self.base);
        let end = seg_format::scan(&data, &header, Mode::Sealed, |off, b| {
            mem.insert(b.stream_id, b.first_version, b.base_position, b.event_count, off, b.length as u32)
        })
        .map_err(|e| Error::corruption(&self.path, e.offset, e.reason))?;
        if mem.end_position != end_position {
            return Err(Error::corruption(
                &self.path,
                end.data_end(),
                format!("segment ends at position {} but the next segment starts at {end_position}", mem.end_position),
            ));
        }
        let file_len = data.len() as u64;
        drop(data);
        if end.data_end() < file_len {
            file.set_len(end.data_end())?;
            file.sync_all()?;
            report.lock().push(RecoveryAction::TrimmedSegment {
                path: self.path.clone(),
                from_len: file_len,
                to_len: end.data_end(),
            });
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let name = index::file_name(self.base);
        io.write_atomic(dir, &name, &mem.to_index_file(self.partition, self.base, stream_hash))?;
        report.lock().push(RecoveryAction::RebuiltIndex { path: self.index_path.clone(), reason: why });
        let data = mmap(&io.open_read(&self.path)?)?;
        let (idx, streams, positions) = self
            .try_index(io, end.data_end(), end_position)
            .map_err(|e| Error::corruption(&self.index_path, 0, format!("rebuilt index does not check out: {e}")))?;
        Ok(SealedSegment { data, index: idx, streams, positions })
    }

    /// Seals an open segment: trims the file to its data, writes the index file (temp, fsync,
    /// rename, fsync the directory), maps both, and switches the slot to the sealed form.
    pub fn seal(&self, open: &OpenSegment, io: &Io) -> Result<()> {
        self.seal_with(open, io, stream_hash)
    }

    fn seal_with(&self, open: &OpenSegment, io: &Io, hash: fn(&str) -> u64) -> Result<()> {
        let (image, data_end, end_position) = {
            let mem = open.index.read();
            (mem.to_index_file(self.partition, self.base, hash), mem.end_offset, mem.end_position)
        };
        if open.file.len()? > data_end {
            open.unmap();
            open.file.set_len(data_end)?;
        }
        open.file.sync_all()?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        io.write_atomic(dir, &index::file_name(self.base), &image)?;
        let data = mmap(&io.open_read(&self.path)?)?;
        let (idx, streams, positions) = self
            .try_index(io, data_end, end_position)
            .map_err(|e| Error::corruption(&self.index_path, 0, format!("fresh index does not check out: {e}")))?;
        self.set_state(State::Sealed(Arc::new(SealedSegment { data, index: idx, streams, positions })));
        Ok(())
    }
}

impl SealedSegment {
    /// Calls `f(batch, bytes)` for each batch of the segment, in position order, checking
    /// each (`bytes` are the batch's own bytes).
    pub fn walk<'a>(&'a self, seg: &Segment, f: &mut dyn FnMut(&BatchView<'a>, &'a [u8])) -> Result<()> {
        let mut at = seg_format::HEADER_LEN;
        while let Some(rest) = self.data.get(at..).filter(|r| !r.is_empty()) {
            let b = batch::decode(rest).map_err(|bad| Error::corruption(&seg.path, at as u64, bad.to_string()))?;
            f(&b, rest.get(..b.length).unwrap_or(rest));
            at += b.length;
        }
        Ok(())
    }

    /// Checks every index entry against the batch it points at: a stream entry must name a
    /// batch with its hash, first version and count; a position entry a batch at its
    /// position. Returns the entries that do not (the batches themselves are checked by
    /// [`SealedSegment::walk`]).
    pub fn verify_index(&self, seg: &Segment) -> Vec<Error> {
        let mut problems = Vec::new();
        let batch_at = |offset: u64| self.data.get(offset as usize..).and_then(|b| batch::decode(b).ok());
        let streams: &[StreamEntry] =
            self.index.get(self.streams.clone()).and_then(|b| bytemuck::try_cast_slice(b).ok()).unwrap_or(&[]);
        for (i, e) in streams.iter().enumerate() {
            let e = e.get();
            let ok = batch_at(e.offset).is_some_and(|b| {
                stream_hash(b.stream_id) == e.stream_hash
                    && b.first_version == e.first_version
                    && b.event_count == e.event_count
            });
            if !ok {
                problems.push(Error::corruption(
                    &seg.index_path,
                    (index::HEADER_LEN + i * 32) as u64,
                    format!("stream entry {i} does not describe the batch at segment offset {}", e.offset),
                ));
            }
        }
        let positions: &[PositionEntry] =
            self.index.get(self.positions.clone()).and_then(|b| bytemuck::try_cast_slice(b).ok()).unwrap_or(&[]);
        for (i, p) in positions.iter().enumerate() {
            let p = p.get();
            if batch_at(p.offset).is_none_or(|b| b.base_position != p.position) {
                problems.push(Error::corruption(
                    &seg.index_path,
                    (self.positions.start + i * 16) as u64,
                    format!("position entry {i} does not point at the batch of position {}", p.position),
                ));
            }
        }
        problems
    }

    /// Bytes of the segment file.
    pub fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// The timestamp of the segment's last batch (timestamps never decrease within a
    /// partition, so this is its newest event), found from the index's last position entry
    /// without reading the whole segment.
    pub fn last_timestamp(&self, seg: &Segment) -> Result<u64> {
        let positions: &[PositionEntry] =
            self.index.get(self.positions.clone()).and_then(|b| bytemuck::try_cast_slice(b).ok()).unwrap_or(&[]);
        let mut at = positions.last().map_or(seg_format::HEADER_LEN, |p| p.get().offset as usize);
        let mut newest = 0;
        while let Some(rest) = self.data.get(at..).filter(|r| !r.is_empty()) {
            let b = batch::decode(rest).map_err(|bad| Error::corruption(&seg.path, at as u64, bad.to_string()))?;
            newest = newest.max(b.timestamp);
            at += b.length;
        }
        Ok(newest)
    }

    /// Each stream with events in the segment, with its last version here, from the index
    /// (each stream's id peeked from its first batch; batches are checked when archived).
    pub fn stream_last_versions<'a>(&'a self, seg: &Segment) -> Result<Vec<(&'a str, u64)>> {
        let entries: &[StreamEntry] = self
            .index
            .get(self.streams.clone())
            .and_then(|b| bytemuck::try_cast_slice(b).ok())
            .ok_or_else(|| Error::corruption(&seg.index_path, 0, "stream entries unreadable"))?;
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(first) = entries.get(i).map(StreamEntry::get) {
            let n = entries
                .get(i..)
                .unwrap_or(&[])
                .partition_point(|e| (e.get().stream_hash, e.get().tag) == (first.stream_hash, first.tag));
            let Some(last) = entries.get(i + n - 1).map(StreamEntry::get) else { break };
            let stream =
                self.data.get(first.offset as usize..).and_then(batch::peek_stream_id).ok_or_else(|| {
                    Error::corruption(&seg.path, first.offset, "indexed batch has no readable stream id")
                })?;
            out.push((stream, last.first_version + u64::from(last.event_count) - 1));
            i += n.max(1);
        }
        Ok(out)
    }
}

fn check_header(path: &Path, bytes: &[u8], partition: u32, base: u64) -> Result<seg_format::Header> {
    let header = seg_format::decode_header(bytes).map_err(|e| header_error(path, e))?;
    if header.partition != partition || header.base_position != base {
        return Err(Error::corruption(
            path,
            0,
            format!(
                "segment header says partition {} base {}, expected partition {partition} base {base}",
                header.partition, header.base_position
            ),
        ));
    }
    Ok(header)
}

pub(crate) fn header_error(path: &Path, e: seg_format::HeaderError) -> Error {
    match e {
        seg_format::HeaderError::Foreign(why) => Error::corruption(path, 0, format!("not a strata segment: {why}")),
        seg_format::HeaderError::Version(found) => {
            Error::UnsupportedVersion { path: path.to_path_buf(), found, supported: crate::format::FORMAT_VERSION }
        }
        seg_format::HeaderError::Corrupt(why) => Error::corruption(path, 0, why),
    }
}

/// Hands `f` the events of batch `b` (which starts before `end`) at positions `from..end`,
/// at most `limit - *taken` of them, adding how many to `taken`; nothing if `b` ends before
/// `from`. The one place partition reads (of segments and of archives) cut batches.
pub(crate) fn offer(
    b: &BatchView<'_>,
    from: u64,
    end: u64,
    limit: usize,
    taken: &mut usize,
    f: &mut dyn FnMut(&BatchView<'_>, usize, usize) -> ControlFlow<()>,
) -> ControlFlow<()> {
    if b.end_position() <= from {
        return ControlFlow::Continue(());
    }
    let skip = from.saturating_sub(b.base_position);
    let upto = u64::from(b.event_count).min(end - b.base_position);
    let take = (upto.saturating_sub(skip) as usize).min(limit - *taken);
    *taken += take;
    f(b, skip as usize, take)
}

/// An event with empty fields, to be overwritten by [`fill_event`] again and again.
pub(crate) fn blank_event(partition: u32) -> RecordedEvent {
    RecordedEvent {
        stream_id: String::new(),
        version: 0,
        partition,
        position: 0,
        timestamp_nanos: 0,
        event_type: String::new(),
        metadata: Vec::new(),
        payload: Vec::new(),
    }
}

/// Overwrites `slot` with event `i` (`e`) of batch `b`, reusing its buffers: reads that hand
/// events to user code one batch at a time allocate nothing once warm.
pub(crate) fn fill_event(slot: &mut RecordedEvent, b: &BatchView<'_>, i: usize, e: &batch::EventRef<'_>) {
    slot.stream_id.clear();
    slot.stream_id.push_str(b.stream_id);
    slot.version = b.first_version + i as u64;
    slot.position = b.base_position + i as u64;
    slot.timestamp_nanos = b.timestamp;
    slot.event_type.clear();
    slot.event_type.push_str(e.event_type);
    slot.metadata.clear();
    slot.metadata.extend_from_slice(e.metadata);
    slot.payload.clear();
    slot.payload.extend_from_slice(e.payload);
}

fn emit(b: &BatchView<'_>, partition: u32, skip: usize, take: usize, out: &mut Vec<RecordedEvent>) {
    for (i, e) in b.events().enumerate().skip(skip).take(take) {
        out.push(RecordedEvent {
            stream_id: b.stream_id.to_owned(),
            version: b.first_version + i as u64,
            partition,
            position: b.base_position + i as u64,
            timestamp_nanos: b.timestamp,
            event_type: e.event_type.to_owned(),
            metadata: e.metadata.to_vec(),
            payload: e.payload.to_vec(),
        });
    }
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

    /// Reads and checks the batch at `offset`, whose length is `len` if known.
    fn with_batch<T>(&self, seg: &Segment, offset: u64, len: usize, f: impl FnOnce(&BatchView<'_>) -> T) -> Result<T> {
        let bytes = self.bytes(seg, offset, len)?;
        match batch::decode(bytes.get()) {
            Ok(b) => Ok(f(&b)),
            Err(bad) => Err(Error::corruption(&seg.path, offset, format!("indexed batch: {bad}"))),
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
        let entries: &[StreamEntry] = s
            .index
            .get(s.streams.clone())
            .and_then(|b| bytemuck::try_cast_slice(b).ok())
            .ok_or_else(|| Error::corruption(&seg.index_path, 0, "stream entries unreadable"))?;
        self.find_stream(seg, entries, Some(&s.data), stream, hash)
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
        let lo = entries.partition_point(|e| e.get().stream_hash < hash);
        let hi = entries.partition_point(|e| e.get().stream_hash <= hash);
        let mut i = lo;
        while i < hi {
            let Some(first) = entries.get(i).map(StreamEntry::get) else { break };
            let block = entries.get(i..hi).unwrap_or(&[]);
            let j = i + block.partition_point(|e| e.get().tag <= first.tag);
            // A match needs no checksum here: the batches are checked when they are read. A
            // mismatch must be a checked one, or damage to the id would hide the stream's
            // events instead of being reported.
            let start = usize::try_from(first.offset).unwrap_or(usize::MAX);
            let same = data.and_then(|d| d.get(start..)).and_then(batch::peek_stream_id) == Some(stream)
                || self.with_batch(seg, first.offset, 0, |b| b.stream_id == stream)?;
            if same {
                return Ok(entries.get(i..j).unwrap_or(&[]));
            }
            i = j;
        }
        Ok(&[])
    }

    /// The last version of `stream` in this segment before position `end`, if it has events
    /// there.
    pub fn last_version(&self, seg: &Segment, stream: &str, hash: u64, end: u64) -> Result<Option<u64>> {
        match self {
            View::Open(o) => Ok(o.index.read().visible(stream, end).last().map(MemEntry::last_version)),
            View::Sealed(s) => {
                let entries = self.sealed_entries(seg, s, stream, hash)?;
                Ok(entries.last().map(|e| {
                    let e = e.get();
                    e.first_version + u64::from(e.event_count) - 1
                }))
            }
            View::Archived(a) => {
                let entries = self.find_stream(seg, a.streams(), None, stream, hash)?;
                Ok(entries.last().map(|e| {
                    let e = e.get();
                    e.first_version + u64::from(e.event_count) - 1
                }))
            }
        }
    }

    /// Adds to `out` each stream with an event in this segment before position `end` (for
    /// an archive, each block holding a stream's first batch is decompressed to read its id).
    pub fn stream_ids(&self, seg: &Segment, end: u64, out: &mut std::collections::BTreeSet<String>) -> Result<()> {
        match self {
            View::Open(o) => {
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
                let entries = a.streams();
                let mut i = 0;
                while let Some(first) = entries.get(i).map(StreamEntry::get) {
                    let n = entries
                        .get(i..)
                        .unwrap_or(&[])
                        .partition_point(|e| (e.get().stream_hash, e.get().tag) == (first.stream_hash, first.tag));
                    let (block, at) = a.at(first.offset)?;
                    let name = block.get(at..).and_then(batch::peek_stream_id).ok_or_else(|| {
                        Error::corruption(&seg.path, 0, format!("no stream id at uncompressed offset {}", first.offset))
                    })?;
                    if !out.contains(name) {
                        out.insert(name.to_owned());
                    }
                    i += n.max(1);
                }
            }
        }
        Ok(())
    }

    /// The batches of `stream` a read needs, in version order: forward, those holding
    /// versions >= `from`; backward, those holding versions <= `from`; at most `limit` of them
    /// (a batch holds at least one event). Only these are copied out of the index, so reading
    /// the tail of a long stream does not copy its whole history.
    /// In the open segment only batches before `end` (the head) count; a sealed segment or an
    /// archive holds only published batches.
    #[allow(clippy::too_many_arguments)]
    fn stream_batches(
        &self,
        seg: &Segment,
        stream: &str,
        hash: u64,
        from: u64,
        end: u64,
        limit: usize,
        forward: bool,
    ) -> Result<Vec<Wanted>> {
        fn pick<T>(all: &[T], key: impl Fn(&T) -> (u64, u32), from: u64, limit: usize, forward: bool) -> &[T] {
            if forward {
                let start = all.partition_point(|e| {
                    let (first, count) = key(e);
                    first + u64::from(count) <= from
                });
                let rest = all.get(start..).unwrap_or(&[]);
                rest.get(..limit.min(rest.len())).unwrap_or(&[])
            } else {
                let end = all.partition_point(|e| key(e).0 <= from);
                all.get(end.saturating_sub(limit)..end).unwrap_or(&[])
            }
        }
        match self {
            View::Open(o) => {
                let mem = o.index.read();
                let all = mem.visible(stream, end);
                let picked = pick(all, |e| (e.first_version, e.count), from, limit, forward);
                Ok(picked
                    .iter()
                    .map(|e| Wanted { first_version: e.first_version, offset: e.offset, len: e.len, count: e.count })
                    .collect())
            }
            View::Sealed(_) | View::Archived(_) => {
                let all = match self {
                    View::Sealed(s) => self.sealed_entries(seg, s, stream, hash)?,
                    View::Archived(a) => self.find_stream(seg, a.streams(), None, stream, hash)?,
                    View::Open(_) => &[],
                };
                let picked = pick(all, |e| (e.get().first_version, e.get().event_count), from, limit, forward);
                Ok(picked
                    .iter()
                    .map(|e| {
                        let e = e.get();
                        Wanted { first_version: e.first_version, offset: e.offset, len: 0, count: e.event_count }
                    })
                    .collect())
            }
        }
    }

    /// Calls `f(batch, skip, take)` for each checked batch of `stream` holding versions >=
    /// `from` before position `end`, in version order, where the batch's events
    /// `skip..skip + take` are the ones wanted, until `limit` events are taken or `f` breaks.
    /// Returns how many were taken, and whether `f` broke.
    #[allow(clippy::too_many_arguments)]
    pub fn visit_stream(
        &self,
        seg: &Segment,
        stream: &str,
        hash: u64,
        from: u64,
        end: u64,
        limit: usize,
        f: &mut dyn FnMut(&BatchView<'_>, usize, usize) -> ControlFlow<()>,
    ) -> Result<(usize, ControlFlow<()>)> {
        let mut taken = 0;
        for e in &self.stream_batches(seg, stream, hash, from, end, limit, true)? {
            if taken >= limit {
                break;
            }
            let skip = from.saturating_sub(e.first_version) as usize;
            let take = (e.count as usize).saturating_sub(skip).min(limit - taken);
            let mut flow = ControlFlow::Continue(());
            self.checked_stream_batch(seg, stream, e, |b| flow = f(b, skip, take))?;
            taken += take;
            if flow.is_break() {
                return Ok((taken, flow));
            }
        }
        Ok((taken, ControlFlow::Continue(())))
    }

    /// Appends to `out` the events of `stream` with version >= `from` before position `end`,
    /// forward, until `out` holds `limit` events.
    #[allow(clippy::too_many_arguments)]
    pub fn read_stream(
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
        let _ = self.visit_stream(seg, stream, hash, from, end, left, &mut |b, skip, take| {
            emit(b, seg.partition, skip, take, out);
            ControlFlow::Continue(())
        })?;
        Ok(())
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
        for e in self.stream_batches(seg, stream, hash, from, end, left, false)?.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let last = (from - e.first_version).min(u64::from(e.count) - 1) as usize;
            self.checked_stream_batch(seg, stream, e, |b| {
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
        f: impl FnOnce(&BatchView<'_>),
    ) -> Result<()> {
        let ok = self.with_batch(seg, e.offset, e.len as usize, |b| {
            if b.stream_id != stream || b.first_version != e.first_version || b.event_count != e.count {
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
            View::Sealed(s) => {
                let positions: &[PositionEntry] = s
                    .index
                    .get(s.positions.clone())
                    .and_then(|b| bytemuck::try_cast_slice(b).ok())
                    .ok_or_else(|| Error::corruption(&seg.index_path, 0, "position entries unreadable"))?;
                let k = positions.partition_point(|p| p.get().position <= from);
                let off = k
                    .checked_sub(1)
                    .and_then(|k| positions.get(k))
                    .map_or(seg_format::HEADER_LEN as u64, |p| p.get().offset);
                (off, s.data.len() as u64)
            }
            View::Open(o) => {
                let mem = o.index.read();
                let k = mem.positions.partition_point(|p| p.position <= from);
                let off = k
                    .checked_sub(1)
                    .and_then(|k| mem.positions.get(k))
                    .map_or(seg_format::HEADER_LEN as u64, |p| p.offset);
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
            while let Some(rest) = buf.get(at..) {
                if rest.is_empty() || taken >= limit {
                    break;
                }
                match batch::decode(rest) {
                    Ok(b) => {
                        if b.base_position >= end {
                            return Ok((taken, ControlFlow::Continue(())));
                        }
                        if offer(&b, from, end, limit, &mut taken, f).is_break() {
                            return Ok((taken, ControlFlow::Break(())));
                        }
                        at += b.length;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventData;
    use crate::format::batch::{self, Limits};

    /// Streams whose ids hash alike are told apart by the tag in the sealed index and by the
    /// stream id stored in each batch: every stream reads back exactly its own events.
    #[test]
    fn hash_collisions_in_a_sealed_index() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::default();
        let path = dir.path().join(seg_format::file_name(0));
        let file = io.create(&path).unwrap();
        file.write_all_at(&seg_format::encode_header(0, 0, 1), 0).unwrap();
        let mut mem = MemIndex::new(0);
        let mut offset = seg_format::HEADER_LEN as u64;
        let mut versions: HashMap<&str, u64> = HashMap::new();
        let limits = Limits { max_event_bytes: 1 << 20, max_append_bytes: 1 << 20 };
        for i in 0..30u64 {
            let stream = ["b", "a", "c"][(i % 3) as usize];
            let version = *versions.entry(stream).and_modify(|v| *v += 1).or_insert(0);
            let mut b = batch::encode(stream, &[EventData::new("T", format!("{stream}{version}"))], limits).unwrap();
            batch::finish(&mut b, i, version, 1, offset);
            file.write_all_at(&b, offset).unwrap();
            mem.insert(stream, version, i, 1, offset, b.len() as u32);
            offset += b.len() as u64;
        }
        file.sync_all().unwrap();
        let open = Arc::new(OpenSegment::new(Arc::new(file), mem));
        let seg = Segment::new(0, dir.path(), 0, State::Open(open.clone()));
        seg.seal_with(&open, &io, |_| 7).unwrap();
        let report: Report = Arc::new(Mutex::new(Vec::new()));
        let view = seg.view(30, &io, &report).unwrap();
        assert!(matches!(view, View::Sealed(_)));
        for stream in ["a", "b", "c"] {
            assert_eq!(view.last_version(&seg, stream, 7, 30).unwrap(), Some(9), "{stream}");
            let mut out = Vec::new();
            view.read_stream(&seg, stream, 7, 3, 30, 100, &mut out).unwrap();
            let got: Vec<_> = out.iter().map(|e| (e.stream_id.as_str(), e.version, e.payload.clone())).collect();
            let want: Vec<_> = (3..10).map(|v| (stream, v, format!("{stream}{v}").into_bytes())).collect();
            assert_eq!(got, want);
            let mut back = Vec::new();
            view.read_stream_back(&seg, stream, 7, 4, 30, 2, &mut back).unwrap();
            assert_eq!(back.iter().map(|e| e.version).collect::<Vec<_>>(), vec![4, 3]);
        }
        // A stream absent from the segment, with the same hash: checked against every tag.
        assert_eq!(view.last_version(&seg, "d", 7, 30).unwrap(), None);
        let mut out = Vec::new();
        view.read_stream(&seg, "d", 7, 0, 30, 100, &mut out).unwrap();
        assert!(out.is_empty());
    }
}
