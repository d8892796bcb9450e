//! Archives as the engine holds them: memory-mapped and checked on open, read one
//! decompressed block at a time (stream reads) or decompressed whole (partition reads).
//! Compaction builds them (`compaction::build`). The format is FORMAT.md §14.
//!
//! `Archive::open` maps the file, checks it (`format::archive::decode`) and then its partition
//! and base against the directory and file name. Only the header, the footer and the meta
//! section are read, about 48 bytes per archived batch, never the blocks. Each archive keeps
//! its 4 most recently used decompressed blocks (`CACHED_BLOCKS`) for stream reads. A partition
//! read (`Archive::visit_positions`) decompresses nothing if no position entry from its start
//! on lies below its end; otherwise it decompresses the whole data, block by block, and keeps it
//! for the next step of the read (at most one archive per partition is kept so), so a partition
//! read through an archive holds about `max_archive_bytes` in memory. `Archive::verify`
//! decompresses everything and checks each block's batches and each entry against its batch.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::format::archive::{self as format, AuditRecord, BlockEntry, Header, Layout, Source};
use crate::format::batch::{self, BatchView};
use crate::format::index::{PositionEntry, StreamEntry};
use crate::io::{Io, mmap};
use crate::log::events::offer;

/// Decompressed blocks kept per archive for stream reads.
const CACHED_BLOCKS: usize = 4;

/// A checked archive file.
#[derive(Debug)]
pub(crate) struct Archive {
    pub path: PathBuf,
    pub header: Header,
    map: Mmap,
    layout: Layout,
    cache: Mutex<Vec<(usize, Arc<Vec<u8>>)>>,
    /// The whole data, while some reader (or a partition's pin) holds it.
    scan: Mutex<std::sync::Weak<Vec<u8>>>,
}

impl Archive {
    /// Maps and checks the archive at `path`, which must belong to `partition` and start at
    /// position `base`.
    pub fn open(path: &Path, io: &Io, partition: u32, base: u64) -> Result<Archive> {
        let file = io.open_read(path)?;
        let map = mmap::archive(&file)?;
        let layout = format::decode(&map).map_err(|m| m.into_error(path))?;
        let h = layout.header;
        if h.partition != partition || h.base_position != base {
            return Err(Error::corruption(
                path,
                12,
                format!(
                    "archive header says partition {} base {}, expected partition {partition} base {base}",
                    h.partition, h.base_position
                ),
            ));
        }
        Ok(Archive {
            path: path.to_path_buf(),
            header: h,
            map,
            layout,
            cache: Mutex::new(Vec::new()),
            scan: Mutex::new(std::sync::Weak::new()),
        })
    }

    fn section<T: bytemuck::Pod>(&self, range: &std::ops::Range<usize>) -> &[T] {
        // Checked by `format::decode` when the archive was opened.
        format::cast(&self.map, range).unwrap_or(&[])
    }

    pub fn blocks(&self) -> &[BlockEntry] {
        self.section(&self.layout.blocks)
    }

    /// One entry per batch of each stream, in the archive's (stream) order.
    pub fn streams(&self) -> &[StreamEntry] {
        self.section(&self.layout.streams)
    }

    /// One entry per batch, in position order.
    pub fn positions(&self) -> &[PositionEntry] {
        self.section(&self.layout.positions)
    }

    pub fn sources(&self) -> Vec<Source> {
        self.section::<Source>(&self.layout.sources)
            .iter()
            .map(|s| Source { base_position: u64::from_le(s.base_position), bytes: u64::from_le(s.bytes) })
            .collect()
    }

    pub fn audit(&self) -> Vec<AuditRecord> {
        format::audit_records(&self.map, &self.layout).unwrap_or_default()
    }

    /// Uncompressed bytes of the batches it holds.
    pub fn data_len(&self) -> u64 {
        self.layout.data_len
    }

    /// Size of the file.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Events it holds.
    pub fn events(&self) -> u64 {
        self.streams().iter().map(|e| u64::from(e.get().event_count)).sum()
    }

    /// Decompresses block `i`, checking its CRC and length. Memory grows only as far as the
    /// frame really decompresses, and never past the block's recorded length.
    fn decompress(&self, i: usize) -> Result<Vec<u8>> {
        format::decompress_block(&self.map, &self.layout, i)
            .map_err(|(offset, why)| Error::corruption(&self.path, offset, why))
    }

    /// Block `i`, decompressed (from the cache of recent blocks if it is there).
    fn block(&self, i: usize) -> Result<Arc<Vec<u8>>> {
        {
            let mut cache = self.cache.lock();
            if let Some(k) = cache.iter().position(|(b, _)| *b == i) {
                let hit = cache.remove(k);
                let data = hit.1.clone();
                cache.push(hit);
                return Ok(data);
            }
        }
        let data = Arc::new(self.decompress(i)?);
        let mut cache = self.cache.lock();
        if cache.len() >= CACHED_BLOCKS {
            cache.remove(0);
        }
        cache.push((i, data.clone()));
        Ok(data)
    }

    /// The decompressed block holding uncompressed offset `offset`, and where in it the
    /// offset lies.
    pub fn at(&self, offset: u64) -> Result<(Arc<Vec<u8>>, usize)> {
        let blocks = self.blocks();
        let i = blocks.partition_point(|b| b.get().data_start <= offset).saturating_sub(1);
        let b = blocks.get(i).map(BlockEntry::get);
        match b {
            Some(b) if offset < b.data_start + u64::from(b.data_len) => {
                Ok((self.block(i)?, (offset - b.data_start) as usize))
            }
            _ => Err(Error::corruption(&self.path, 0, format!("no block holds uncompressed offset {offset}"))),
        }
    }

    /// All of the archive's batches, decompressed; shared with every reader that holds it
    /// (a partition keeps the last one its reads went through, see `Partition::visit_from`,
    /// so that a read going through the archive in steps decompresses it once).
    pub fn data(&self) -> Result<Arc<Vec<u8>>> {
        let mut scan = self.scan.lock();
        if let Some(d) = scan.upgrade() {
            return Ok(d);
        }
        let mut all = Vec::new();
        for i in 0..self.blocks().len() {
            all.extend_from_slice(&self.decompress(i)?);
        }
        let all = Arc::new(all);
        *scan = Arc::downgrade(&all);
        Ok(all)
    }

    /// Calls `f(batch, skip, take)` for each batch holding positions `from..end`, in position
    /// order (see `View::visit_positions`). Erased streams leave gaps in the positions.
    pub fn visit_positions(
        &self,
        from: u64,
        end: u64,
        limit: usize,
        f: &mut dyn FnMut(&BatchView<'_>, usize, usize) -> ControlFlow<()>,
    ) -> Result<(usize, ControlFlow<()>)> {
        let positions = self.positions();
        let k = positions.partition_point(|p| p.get().position <= from).saturating_sub(1);
        if positions.get(k..).is_none_or(|p| p.iter().all(|p| p.get().position >= end)) {
            return Ok((0, ControlFlow::Continue(())));
        }
        let data = self.data()?;
        let mut taken = 0usize;
        let mut known = batch::Known::default();
        for p in positions.get(k..).unwrap_or(&[]) {
            let p = p.get();
            if p.position >= end || taken >= limit {
                break;
            }
            let b = self.batch_at(&data, p.offset, known)?;
            known = b.known();
            if b.base_position != p.position {
                return Err(self.mismatch(p.offset, "position"));
            }
            if offer(&b, from, end, limit, &mut taken, f).is_break() {
                return Ok((taken, ControlFlow::Break(())));
            }
        }
        Ok((taken, ControlFlow::Continue(())))
    }

    /// The checked batch at `offset` of the decompressed `data`, given strings already checked
    /// in it ([`batch::Known`]).
    fn batch_at<'a>(&self, data: &'a [u8], offset: u64, known: batch::Known<'a>) -> Result<BatchView<'a>> {
        let bytes = data.get(offset as usize..).unwrap_or(&[]);
        batch::decode_with(bytes, known)
            .map_err(|bad| Error::corruption(&self.path, 0, format!("batch at uncompressed offset {offset}: {bad}")))
    }

    fn mismatch(&self, offset: u64, what: &str) -> Error {
        Error::corruption(
            &self.path,
            0,
            format!("batch at uncompressed offset {offset} does not hold what the {what} index says"),
        )
    }

    /// Checks everything: every block decompresses to whole batches whose CRCs check, and
    /// every index entry names the batch it points at. Returns the problems found.
    pub fn verify(&self) -> Vec<Error> {
        let mut problems = Vec::new();
        let data = match self.data() {
            Ok(d) => d,
            Err(e) => return vec![e],
        };
        // Every block must hold whole batches.
        for (i, b) in self.blocks().iter().enumerate() {
            let b = b.get();
            let mut at = b.data_start;
            let end = b.data_start + u64::from(b.data_len);
            while at < end {
                match self.batch_at(data.get(..end as usize).unwrap_or(&[]), at, batch::Known::default()) {
                    Ok(batch) => at += batch.length as u64,
                    Err(e) => {
                        problems.push(Error::corruption(&self.path, b.file_offset, format!("block {i}: {e}")));
                        break;
                    }
                }
            }
        }
        // Each stream entry stands for batches of its stream inside one block (one in
        // version 1), their versions following on.
        let blocks = self.blocks();
        for e in self.streams() {
            let e = e.get();
            let i = blocks.partition_point(|b| b.get().data_start <= e.offset).saturating_sub(1);
            let end = blocks.get(i).map(|b| b.get().data_start + u64::from(b.get().data_len)).unwrap_or(0);
            let span = data.get(e.offset as usize..end as usize).unwrap_or(&[]);
            let batches = match format::span_batches(span, &e) {
                Ok(batches) => batches,
                Err(_) => {
                    problems.push(self.mismatch(e.offset, "stream"));
                    continue;
                }
            };
            let mut stream = None;
            for (rel, first_version, count) in batches {
                match self.batch_at(&data, e.offset + rel as u64, batch::Known::default()) {
                    Ok(b)
                        if b.first_version == first_version
                            && b.event_count == count
                            && *stream.get_or_insert(b.stream_id) == b.stream_id => {}
                    Ok(_) => problems.push(self.mismatch(e.offset, "stream")),
                    Err(err) => problems.push(err),
                }
            }
        }
        for p in self.positions() {
            let p = p.get();
            match self.batch_at(&data, p.offset, batch::Known::default()) {
                Ok(b) if b.base_position == p.position => {}
                Ok(_) => problems.push(self.mismatch(p.offset, "position")),
                Err(err) => problems.push(err),
            }
        }
        problems
    }
}
