//! Archives as the engine holds them: their headers and footers checked at open, their meta
//! sections mapped and checked on first use, their blocks read one at a time through the
//! store's block cache. Compaction builds them (`compaction::build`). The format is FORMAT.md
//! §14.
//!
//! `Archive::open` reads 128 bytes: the header and the footer (`format::archive::decode_ends`,
//! FORMAT.md §14.5 steps 1–9), then checks the partition and base against the directory and
//! file name. The first use of anything else (`Archive::checked`: stream, position or block
//! entries, sources, audit records) maps the file and checks the meta section once
//! (`format::archive::check_meta`, steps 10–14), as a sealed segment's index is checked on
//! first use; damage found then is kept and returned by every later use (`Store::storage`
//! counts the archive as unreadable), an I/O error is tried again. `Archive::open_checked`
//! does both at once: after compaction writes an archive, and at open for the archives of a
//! compaction a crash may have interrupted (`recovery::check_where_interrupted`), whose
//! sources reconciliation needs.
//!
//! Blocks are decompressed into the store's `BlockCache`, keyed by the archive's id (given
//! at open, never reused) and block number, and leave it when the archive is dropped. A
//! stream read takes the blocks holding its batches. A partition read
//! (`Archive::visit_positions`) walks the position entries, which point all over the data
//! (it is in stream order), and holds each block it has taken until it returns, so a cache
//! smaller than an archive costs it one decompression per block, not one per batch; between
//! the steps of a reader the blocks stay in the cache, shared with every other reader (no
//! per-partition pin: readers of different archives do not evict each other). `Archive::data`
//! (a rewrite's input) concatenates the blocks. `Archive::verify` decompresses everything,
//! outside the cache, and checks each block's batches, each position entry against its batch
//! and each stream entry against the span of batches it stands for (FORMAT.md §14.3).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use memmap2::Mmap;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::format::archive::{self as format, AuditRecord, BlockEntry, Ends, Header, Source};
use crate::format::batch::{self, BatchView};
use crate::format::index::{PositionEntry, StreamEntry};
use crate::io::{Io, mmap};
use crate::log::block_cache::{Block, BlockCache};
use crate::log::events::offer;

/// Ids of opened archives, the block cache's keys: never reused in a process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// An archive file whose header and footer were checked at open; the rest (its meta section)
/// is mapped and checked on first use.
#[derive(Debug)]
pub(crate) struct Archive {
    pub path: PathBuf,
    pub header: Header,
    /// Its key in the block cache.
    id: u64,
    ends: Ends,
    file_len: u64,
    io: Io,
    cache: Arc<BlockCache>,
    /// The file mapped with its meta section checked, or the damage that check found (an I/O
    /// error is not kept: the next use tries again).
    meta: OnceLock<std::result::Result<Mmap, Error>>,
    loading: Mutex<()>,
}

impl Archive {
    /// Checks the header and footer of the archive at `path`, which must belong to
    /// `partition` and start at position `base`: 128 bytes read, the meta section is checked
    /// on first use ([`Archive::checked`]).
    pub fn open(path: &Path, io: &Io, partition: u32, base: u64, cache: &Arc<BlockCache>) -> Result<Archive> {
        let file = io.open_read(path)?;
        let len = file.len()?;
        let mut head = vec![0u8; len.min(format::HEADER_LEN as u64) as usize];
        file.read_exact_at(&mut head, 0)?;
        let foot_len = len.min(format::FOOTER_LEN as u64);
        let mut foot = vec![0u8; foot_len as usize];
        file.read_exact_at(&mut foot, len - foot_len)?;
        let ends = format::decode_ends(&head, &foot, len).map_err(|m| m.into_error(path))?;
        let h = ends.layout.header;
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
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ends,
            file_len: len,
            io: io.clone(),
            cache: cache.clone(),
            meta: OnceLock::new(),
            loading: Mutex::new(()),
        })
    }

    /// [`Archive::open`], then the meta section checked at once (after writing one, and at
    /// open for the archives of a compaction a crash may have interrupted).
    pub fn open_checked(path: &Path, io: &Io, partition: u32, base: u64, cache: &Arc<BlockCache>) -> Result<Archive> {
        let a = Archive::open(path, io, partition, base, cache)?;
        a.checked()?;
        Ok(a)
    }

    /// The file, mapped, its meta section checked (FORMAT.md §14.5 steps 10–14): on first use,
    /// once. Damage is kept and returned to every later use; an I/O error is tried again.
    pub fn checked(&self) -> Result<&Mmap> {
        if let Some(m) = self.meta.get() {
            return m.as_ref().map_err(Clone::clone);
        }
        let _loading = self.loading.lock();
        if let Some(m) = self.meta.get() {
            return m.as_ref().map_err(Clone::clone);
        }
        let file = self.io.open_read(&self.path)?;
        let map = mmap::archive(&file)?;
        self.cache.meta_loaded();
        let checked = if map.len() as u64 != self.file_len {
            Err(Error::corruption(
                &self.path,
                map.len() as u64,
                format!("archive is {} bytes long, it was {} at open", map.len(), self.file_len),
            ))
        } else {
            format::check_meta(&map, &self.ends).map_err(|m| m.into_error(&self.path)).map(|()| map)
        };
        self.meta.get_or_init(|| checked).as_ref().map_err(Clone::clone)
    }

    /// Whether its meta section was checked and found sound.
    pub fn is_checked(&self) -> bool {
        matches!(self.meta.get(), Some(Ok(_)))
    }

    /// Whether its meta section was checked and found damaged (`Store::storage` counts it
    /// as unreadable).
    pub fn is_damaged(&self) -> bool {
        matches!(self.meta.get(), Some(Err(_)))
    }

    fn section<T: bytemuck::Pod>(&self, range: &std::ops::Range<usize>) -> Result<&[T]> {
        // Checked (`format::check_meta`) before it is handed out.
        Ok(format::cast(self.checked()?, range).unwrap_or(&[]))
    }

    pub fn blocks(&self) -> Result<&[BlockEntry]> {
        self.section(&self.ends.layout.blocks)
    }

    /// One entry per span of each stream's batches in a block (version 1: per batch), in the
    /// archive's (stream) order (FORMAT.md §14.3).
    pub fn streams(&self) -> Result<&[StreamEntry]> {
        self.section(&self.ends.layout.streams)
    }

    /// One entry per batch, in position order.
    pub fn positions(&self) -> Result<&[PositionEntry]> {
        self.section(&self.ends.layout.positions)
    }

    pub fn sources(&self) -> Result<Vec<Source>> {
        Ok(self
            .section::<Source>(&self.ends.layout.sources)?
            .iter()
            .map(|s| Source { base_position: u64::from_le(s.base_position), bytes: u64::from_le(s.bytes) })
            .collect())
    }

    pub fn audit(&self) -> Result<Vec<AuditRecord>> {
        Ok(format::audit_records(self.checked()?, &self.ends.layout).unwrap_or_default())
    }

    /// Uncompressed bytes of the batches it holds (from the footer).
    pub fn data_len(&self) -> u64 {
        self.ends.layout.data_len
    }

    /// Size of the file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Events it holds.
    pub fn events(&self) -> Result<u64> {
        Ok(self.streams()?.iter().map(|e| u64::from(e.get().event_count)).sum())
    }

    /// Block `i`, decompressed: from the store's block cache, or decompressed into it
    /// (checking its CRC and length; memory grows only as far as the frame really
    /// decompresses, and never past the block's recorded length).
    fn block(&self, i: usize) -> Result<Block> {
        let map = self.checked()?;
        self.cache.get_or_load(self.id, i as u32, || {
            format::decompress_block(map, &self.ends.layout, i)
                .map_err(|(offset, why)| Error::corruption(&self.path, offset, why))
        })
    }

    /// The number of the block holding uncompressed offset `offset`.
    fn block_of(&self, offset: u64) -> Result<usize> {
        let blocks = self.blocks()?;
        let i = blocks.partition_point(|b| b.get().data_start <= offset).saturating_sub(1);
        match blocks.get(i).map(BlockEntry::get) {
            Some(b) if offset < b.data_start + u64::from(b.data_len) => Ok(i),
            _ => Err(Error::corruption(&self.path, 0, format!("no block holds uncompressed offset {offset}"))),
        }
    }

    /// The decompressed block holding uncompressed offset `offset`, and where in it the
    /// offset lies.
    pub fn at(&self, offset: u64) -> Result<(Block, usize)> {
        let i = self.block_of(offset)?;
        let start = self.blocks()?.get(i).map_or(0, |b| b.get().data_start);
        Ok((self.block(i)?, (offset - start) as usize))
    }

    /// All of the archive's batches, decompressed into one buffer (for a rewrite; reads go
    /// block by block through the cache).
    pub fn data(&self) -> Result<Vec<u8>> {
        let mut all = Vec::new();
        for i in 0..self.blocks()?.len() {
            all.extend_from_slice(&self.block(i)?);
        }
        Ok(all)
    }

    /// Calls `f(batch, skip, take)` for each batch holding positions `from..end`, in position
    /// order (see `View::visit_positions`). Erased streams leave gaps in the positions.
    ///
    /// The batches are in stream order in the data, so a walk in position order goes from
    /// block to block: each block it needs is taken from the cache (or decompressed into it)
    /// once, and held until the walk ends, so that a cache smaller than the archive does not
    /// make it decompress a block again for each of its batches.
    pub fn visit_positions(
        &self,
        from: u64,
        end: u64,
        limit: usize,
        f: &mut dyn FnMut(&BatchView<'_>, usize, usize) -> ControlFlow<()>,
    ) -> Result<(usize, ControlFlow<()>)> {
        let positions = self.positions()?;
        let k = positions.partition_point(|p| p.get().position <= from).saturating_sub(1);
        if positions.get(k..).is_none_or(|p| p.iter().all(|p| p.get().position >= end)) {
            return Ok((0, ControlFlow::Continue(())));
        }
        let blocks = self.blocks()?;
        let mut held: Vec<Option<Block>> = vec![None; blocks.len()];
        let mut taken = 0usize;
        for p in positions.get(k..).unwrap_or(&[]) {
            let p = p.get();
            if p.position >= end || taken >= limit {
                break;
            }
            let i = self.block_of(p.offset)?;
            let start = blocks.get(i).map_or(0, |b| b.get().data_start);
            let block = match held.get(i).and_then(Option::as_ref) {
                Some(b) => b.clone(),
                None => {
                    let b = self.block(i)?;
                    if let Some(slot) = held.get_mut(i) {
                        *slot = Some(b.clone());
                    }
                    b
                }
            };
            let b = self.batch_at(&block, p.offset - start, p.offset)?;
            if b.base_position != p.position {
                return Err(self.mismatch(p.offset, "position"));
            }
            if offer(&b, from, end, limit, &mut taken, f).is_break() {
                return Ok((taken, ControlFlow::Break(())));
            }
        }
        Ok((taken, ControlFlow::Continue(())))
    }

    /// The checked batch at `at` of the decompressed `block`, which is at uncompressed offset
    /// `offset` (for errors).
    fn batch_at<'a>(&self, block: &'a [u8], at: u64, offset: u64) -> Result<BatchView<'a>> {
        let bytes = block.get(at as usize..).unwrap_or(&[]);
        batch::decode(bytes)
            .map_err(|bad| Error::corruption(&self.path, 0, format!("batch at uncompressed offset {offset}: {bad}")))
    }

    fn mismatch(&self, offset: u64, what: &str) -> Error {
        Error::corruption(
            &self.path,
            0,
            format!("batch at uncompressed offset {offset} does not hold what the {what} index says"),
        )
    }

    /// Checks everything: the meta section, every block decompresses to whole batches whose
    /// CRCs check, and every index entry names the batch it points at. Returns the problems
    /// found. The blocks are decompressed here, not through the cache (a verify would evict
    /// what readers use).
    pub fn verify(&self) -> Vec<Error> {
        let mut problems = Vec::new();
        let (map, blocks) = match self.checked().and_then(|m| Ok((m, self.blocks()?))) {
            Ok(b) => b,
            Err(e) => return vec![e],
        };
        let mut data = Vec::with_capacity(blocks.len());
        for (i, b) in blocks.iter().enumerate() {
            let b = b.get();
            let block = match format::decompress_block(map, &self.ends.layout, i) {
                Ok(d) => d,
                Err((offset, why)) => return vec![Error::corruption(&self.path, offset, why)],
            };
            // Every block must hold whole batches.
            let mut at = 0u64;
            while at < block.len() as u64 {
                match self.batch_at(&block, at, b.data_start + at) {
                    Ok(batch) => at += batch.length as u64,
                    Err(e) => {
                        problems.push(Error::corruption(&self.path, b.file_offset, format!("block {i}: {e}")));
                        break;
                    }
                }
            }
            data.push((b.data_start, block));
        }
        let batch_at = |offset: u64| {
            let k = data.partition_point(|(start, _)| *start <= offset).saturating_sub(1);
            let (start, block) = data.get(k).map_or((0, &[][..]), |(s, b)| (*s, b.as_slice()));
            self.batch_at(block, offset.saturating_sub(start), offset)
        };
        // Each stream entry stands for batches of its stream inside one block (one in
        // version 1), their versions following on.
        for e in self.streams().unwrap_or(&[]) {
            let e = e.get();
            let k = data.partition_point(|(start, _)| *start <= e.offset).saturating_sub(1);
            let span = data
                .get(k)
                .and_then(|(start, block)| block.get(e.offset.saturating_sub(*start) as usize..))
                .unwrap_or(&[]);
            let Ok(batches) = format::span_batches(span, &e) else {
                problems.push(self.mismatch(e.offset, "stream"));
                continue;
            };
            let mut stream = None;
            for (rel, first_version, count) in batches {
                match batch_at(e.offset + rel as u64) {
                    Ok(b)
                        if b.first_version == first_version
                            && b.event_count == count
                            && *stream.get_or_insert(b.stream_id) == b.stream_id => {}
                    Ok(_) => problems.push(self.mismatch(e.offset, "stream")),
                    Err(err) => problems.push(err),
                }
            }
        }
        for p in self.positions().unwrap_or(&[]) {
            let p = p.get();
            match batch_at(p.offset) {
                Ok(b) if b.base_position == p.position => {}
                Ok(_) => problems.push(self.mismatch(p.offset, "position")),
                Err(err) => problems.push(err),
            }
        }
        problems
    }
}

impl Drop for Archive {
    /// Its blocks leave the cache with it (rolled back, rewritten, dropped with its store).
    fn drop(&mut self) {
        if let Some(Ok(map)) = self.meta.get() {
            let blocks = format::cast::<BlockEntry>(map, &self.ends.layout.blocks).map_or(0, <[_]>::len);
            self.cache.forget(self.id, blocks as u32);
        }
    }
}
