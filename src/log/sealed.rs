//! Sealed segments: loaded on first use (the segment and its index mapped and checked, the
//! index rebuilt from the segment if it is missing or does not check out), and sealed from an
//! open segment by the sealer (trimmed, indexed, mapped). FORMAT.md §9.3 gives the checks.
//!
//! The first read that needs a sealed segment (`Segment::view`) loads it, once, under a
//! per-segment lock: it maps the segment, checks its header, then maps and validates its index
//! (`Segment::try_index`). If that fails, `Segment::rebuild` scans the segment, trims a zero
//! tail, writes the index and maps both again. The trim, like the sealer's, happens while no map
//! of the segment exists (the sealer drops the active segment's read map first), so no mapping
//! ever outlives a shrink of its file.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::format::Aligned;
use crate::format::batch::{self, BatchView};
use crate::format::index::{self, PositionEntry, StreamEntry};
use crate::format::segment::{self as seg_format, Mode};
use crate::io::{Io, mmap};
use crate::log::active::{MemIndex, OpenSegment};
use crate::log::segment::{Segment, State};
use crate::report::{RecoveryAction, Report};
use crate::router::stream_hash;

/// A sealed segment: the segment, memory-mapped, and its index, both validated.
#[derive(Debug)]
pub(crate) struct SealedSegment {
    pub(crate) data: Mmap,
    pub(crate) index: IndexBytes,
    pub(crate) streams: Range<usize>,
    pub(crate) positions: Range<usize>,
    /// Which streams hold events of each type: built on the first event-type read of the
    /// segment (one walk of its batches), kept while the segment is.
    pub(crate) types: std::sync::OnceLock<TypeSummary>,
}

/// A sealed segment's event-type summary: for each event type, the streams (as the ordinals
/// of their runs in the index's stream entries) with an event of that type in the segment.
/// It holds one entry per distinct (stream, type) pair of the segment.
#[derive(Debug, Default)]
pub(crate) struct TypeSummary {
    pub runs: std::collections::HashMap<Box<str>, Vec<u32>>,
}

/// A sealed segment's index: its file, mapped, or (when a rebuilt index could not be written,
/// on a full disk) the rebuilt image in memory, so that reads never need room on the disk.
pub(crate) enum IndexBytes {
    Mapped(Mmap),
    Memory(Aligned),
}

impl std::fmt::Debug for IndexBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexBytes::Mapped(m) => write!(f, "Mapped({} bytes)", m.len()),
            IndexBytes::Memory(a) => write!(f, "Memory({} bytes)", a.bytes().len()),
        }
    }
}

impl std::ops::Deref for IndexBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            IndexBytes::Mapped(m) => m,
            IndexBytes::Memory(a) => a.bytes(),
        }
    }
}

impl Segment {
    /// Maps the sealed segment and its index; rebuilds the index if it does not check out.
    pub(crate) fn load(&self, end_position: u64, io: &Io, report: &Report) -> Result<SealedSegment> {
        let file = io.open_read(&self.path)?;
        let len = file.len()?;
        if len < seg_format::HEADER_LEN as u64 {
            return Err(Error::corruption(&self.path, 0, format!("sealed segment is only {len} bytes")));
        }
        let data = mmap::segment(&file)?;
        check_header(&self.path, &data, self.partition, self.base)?;
        match self.try_index(io, len, end_position) {
            Ok((idx, streams, positions)) => Ok(SealedSegment {
                data,
                index: IndexBytes::Mapped(idx),
                streams,
                positions,
                types: Default::default(),
            }),
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
        let map = mmap::segment(&file).map_err(|e| e.to_string())?;
        let (streams, positions) = self.check_index(&map, segment_len, end_position)?;
        Ok((map, streams, positions))
    }

    /// Checks an index image against this segment: its sections' ranges.
    fn check_index(
        &self,
        map: &[u8],
        segment_len: u64,
        end_position: u64,
    ) -> Result<(Range<usize>, Range<usize>), String> {
        let view = index::decode(map)?;
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
        Ok((index::HEADER_LEN..split, split..map.len()))
    }

    /// Scans the segment, trims a zero-filled tail, writes a fresh index, and maps both.
    fn rebuild(&self, io: &Io, report: &Report, end_position: u64, why: String) -> Result<SealedSegment> {
        let file = io.open_rw(&self.path)?;
        let data = mmap::segment(&file)?;
        let header = check_header(&self.path, &data, self.partition, self.base)?;
        let mut mem = MemIndex::new(self.base);
        let mut refused = None;
        let end = seg_format::scan(&data, &header, Mode::Sealed, |off, b| {
            if let (None, Err(why)) = (&refused, mem.scanned(off, b)) {
                refused = Some((off, why));
            }
        })
        .map_err(|e| Error::corruption(&self.path, e.offset, e.reason))?;
        if let Some((offset, why)) = refused {
            return Err(Error::corruption(&self.path, offset, why));
        }
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
            report.push(RecoveryAction::TrimmedSegment {
                path: self.path.clone(),
                from_len: file_len,
                to_len: end.data_end(),
            });
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let name = index::file_name(self.base);
        let image = mem.to_index_file(self.partition, self.base, stream_hash, &[], &[]);
        if let Err(e) = io.write_atomic(dir, &name, &image) {
            if !matches!(e, Error::StorageFull { .. }) {
                return Err(e);
            }
            // No room for the index file: serve reads from the image in memory (the next
            // load, after a reopen, tries again). A full disk never fails a read. The partial
            // temporary file goes (best effort: open removes leftovers too).
            let _ = io.remove_file(&dir.join(format!("{name}.tmp")));
            report.push(RecoveryAction::RebuiltIndex {
                path: self.index_path.clone(),
                reason: format!("{why} (kept in memory: no room to write it: {e})"),
            });
            let image = Aligned::new(&image);
            let (streams, positions) = self.check_index(image.bytes(), end.data_end(), end_position).map_err(|e| {
                Error::corruption(&self.index_path, 0, format!("rebuilt index does not check out: {e}"))
            })?;
            let data = mmap::segment(&io.open_read(&self.path)?)?;
            return Ok(SealedSegment {
                data,
                index: IndexBytes::Memory(image),
                streams,
                positions,
                types: Default::default(),
            });
        }
        report.push(RecoveryAction::RebuiltIndex { path: self.index_path.clone(), reason: why });
        let data = mmap::segment(&io.open_read(&self.path)?)?;
        let (idx, streams, positions) = self
            .try_index(io, end.data_end(), end_position)
            .map_err(|e| Error::corruption(&self.index_path, 0, format!("rebuilt index does not check out: {e}")))?;
        Ok(SealedSegment { data, index: IndexBytes::Mapped(idx), streams, positions, types: Default::default() })
    }

    /// Seals an open segment: trims the file to its data, writes the index file (temp, fsync,
    /// rename, fsync the directory), maps both, and switches the slot to the sealed form.
    pub fn seal(&self, open: &OpenSegment, io: &Io) -> Result<()> {
        self.seal_with(open, io, stream_hash)
    }

    pub(crate) fn seal_with(&self, open: &OpenSegment, io: &Io, hash: fn(&str) -> u64) -> Result<()> {
        let (entries, positions, end) = open.sorted_entries(hash)?;
        let (data_end, end_position) = (end.end_offset, end.end_position);
        let header = index::Header {
            partition: self.partition,
            base_position: self.base,
            end_position,
            segment_len: data_end,
            stream_entries: entries.len() as u64,
            position_entries: positions.len() as u64,
        };
        let image = index::encode(&header, &entries, &positions);
        if open.file.len()? > data_end {
            open.unmap();
            open.file.set_len(data_end)?;
        }
        open.file.sync_all()?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        io.write_atomic(dir, &index::file_name(self.base), &image)?;
        let data = mmap::segment(&io.open_read(&self.path)?)?;
        let (idx, streams, positions) = self
            .try_index(io, data_end, end_position)
            .map_err(|e| Error::corruption(&self.index_path, 0, format!("fresh index does not check out: {e}")))?;
        let sealed =
            SealedSegment { data, index: IndexBytes::Mapped(idx), streams, positions, types: Default::default() };
        self.set_state(State::Sealed(Arc::new(sealed)));
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

    /// The segment's event-type summary, built on first use by one walk of its batches.
    pub fn type_summary(&self, seg: &Segment) -> Result<&TypeSummary> {
        if let Some(t) = self.types.get() {
            return Ok(t);
        }
        let entries = self.stream_entries(seg)?;
        let mut ordinal: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        for (k, run) in index::stream_runs(entries).enumerate() {
            let Some(first) = run.first().map(StreamEntry::get) else { continue };
            let id =
                self.data.get(first.offset as usize..).and_then(batch::peek_stream_id).ok_or_else(|| {
                    Error::corruption(&seg.path, first.offset, "indexed batch has no readable stream id")
                })?;
            ordinal.insert(id, k as u32);
        }
        let mut sets: std::collections::HashMap<Box<str>, std::collections::HashSet<u32>> = Default::default();
        self.walk(seg, &mut |b, _| {
            let Some(&k) = ordinal.get(b.stream_id) else { return };
            for e in b.events() {
                match sets.get_mut(e.event_type) {
                    Some(set) => {
                        set.insert(k);
                    }
                    None => {
                        sets.entry(e.event_type.into()).or_default().insert(k);
                    }
                }
            }
        })?;
        let mut summary = TypeSummary::default();
        for (t, set) in sets {
            let mut runs: Vec<u32> = set.into_iter().collect();
            runs.sort_unstable();
            summary.runs.insert(t, runs);
        }
        Ok(self.types.get_or_init(|| summary))
    }

    /// The index's stream entries.
    pub fn stream_entries(&self, seg: &Segment) -> Result<&[StreamEntry]> {
        self.index
            .get(self.streams.clone())
            .and_then(|b| bytemuck::try_cast_slice(b).ok())
            .ok_or_else(|| Error::corruption(&seg.index_path, 0, "stream entries unreadable"))
    }

    /// Where to start reading for positions `>= from`: the offset of the last position entry
    /// at or before `from` (no batch holding such a position starts before it), else the
    /// first batch's.
    pub fn offset_for(&self, seg: &Segment, from: u64) -> Result<u64> {
        let positions: &[PositionEntry] = self
            .index
            .get(self.positions.clone())
            .and_then(|b| bytemuck::try_cast_slice(b).ok())
            .ok_or_else(|| Error::corruption(&seg.index_path, 0, "position entries unreadable"))?;
        let k = positions.partition_point(|p| p.get().position <= from);
        Ok(k.checked_sub(1).and_then(|k| positions.get(k)).map_or(seg_format::HEADER_LEN as u64, |p| p.get().offset))
    }

    /// Each stream with events in the segment, with its last version here, from the index
    /// (each stream's id peeked from its first batch; batches are checked when archived).
    pub fn stream_last_versions<'a>(&'a self, seg: &Segment) -> Result<Vec<(&'a str, u64)>> {
        let entries = self.stream_entries(seg)?;
        let mut out = Vec::new();
        for run in index::stream_runs(entries) {
            let (Some(first), Some(last)) = (run.first().map(StreamEntry::get), run.last().map(StreamEntry::get))
            else {
                continue;
            };
            let stream =
                self.data.get(first.offset as usize..).and_then(batch::peek_stream_id).ok_or_else(|| {
                    Error::corruption(&seg.path, first.offset, "indexed batch has no readable stream id")
                })?;
            out.push((stream, last.first_version + u64::from(last.event_count) - 1));
        }
        Ok(out)
    }
}

fn check_header(path: &Path, bytes: &[u8], partition: u32, base: u64) -> Result<seg_format::Header> {
    let header = seg_format::decode_header(bytes).map_err(|e| e.into_error(path))?;
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::event::EventData;
    use crate::format::batch::Limits;
    use crate::log::segment::View;

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
        let report = Report::default();
        let view = seg.view(30, &io, &report).unwrap();
        assert!(matches!(view, View::Sealed(_)));
        let read = |stream: &str, from: u64| {
            let mut out = Vec::new();
            let _ = view
                .visit_stream(&seg, stream, 7, from, 30, 100, crate::log::view::Lend::User, &mut |b, skip, take| {
                    crate::log::events::emit(b, 0, skip, take, &mut out);
                    std::ops::ControlFlow::Continue(())
                })
                .unwrap();
            out
        };
        for stream in ["a", "b", "c"] {
            assert_eq!(view.last_version(&seg, stream, 7, 30).unwrap(), Some(9), "{stream}");
            let out = read(stream, 3);
            let got: Vec<_> = out.iter().map(|e| (e.stream_id.as_str(), e.version, e.payload.clone())).collect();
            let want: Vec<_> = (3..10).map(|v| (stream, v, format!("{stream}{v}").into_bytes())).collect();
            assert_eq!(got, want);
            let mut back = Vec::new();
            view.read_stream_back(&seg, stream, 7, 4, 30, 2, &mut back).unwrap();
            assert_eq!(back.iter().map(|e| e.version).collect::<Vec<_>>(), vec![4, 3]);
        }
        // A stream absent from the segment, with the same hash: checked against every tag.
        assert_eq!(view.last_version(&seg, "d", 7, 30).unwrap(), None);
        assert!(read("d", 0).is_empty());
    }
}
