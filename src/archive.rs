//! Archives as the engine holds them: memory-mapped and checked on open, read one
//! decompressed block at a time (stream reads) or decompressed whole (partition reads); and
//! how one is built from batches.

use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::format::archive::{self as format, AuditRecord, Bad, BlockEntry, Header, Layout, Reason, Source};
use crate::format::batch::{self, BatchView};
use crate::format::index::{PositionEntry, StreamEntry};
use crate::io::Io;

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

/// The error for bytes that are not a valid archive.
pub(crate) fn bad_archive(path: &Path, bad: Bad) -> Error {
    match bad {
        Bad::Foreign(why) => Error::corruption(path, 0, format!("not a strata archive: {why}")),
        Bad::Version(found) => {
            Error::UnsupportedVersion { path: path.to_path_buf(), found, supported: crate::format::FORMAT_VERSION }
        }
        Bad::Corrupt(offset, why) => Error::corruption(path, offset, why),
    }
}

impl Archive {
    /// Maps and checks the archive at `path`, which must belong to `partition` and start at
    /// position `base`.
    pub fn open(path: &Path, io: &Io, partition: u32, base: u64) -> Result<Archive> {
        let file = io.open_read(path)?;
        // SAFETY: archives are written whole under a temporary name and renamed into place;
        // strata never writes to or truncates an archive file afterwards (a rewrite renames a
        // new file over it, which leaves this mapping's inode intact), and the store lock keeps
        // other strata processes out.
        let map = unsafe { Mmap::map(file.std()) }.map_err(|e| Error::io("mmap", path, e))?;
        let layout = format::decode(&map).map_err(|b| bad_archive(path, b))?;
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
        decompress_block(&self.map, &self.layout, i).map_err(|(offset, why)| Error::corruption(&self.path, offset, why))
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
        for p in positions.get(k..).unwrap_or(&[]) {
            let p = p.get();
            if p.position >= end || taken >= limit {
                break;
            }
            let b = self.batch_at(&data, p.offset)?;
            if b.base_position != p.position {
                return Err(self.mismatch(p.offset, "position"));
            }
            if crate::segment::offer(&b, from, end, limit, &mut taken, f).is_break() {
                return Ok((taken, ControlFlow::Break(())));
            }
        }
        Ok((taken, ControlFlow::Continue(())))
    }

    fn batch_at<'a>(&self, data: &'a [u8], offset: u64) -> Result<BatchView<'a>> {
        let bytes = data.get(offset as usize..).unwrap_or(&[]);
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
                match self.batch_at(data.get(..end as usize).unwrap_or(&[]), at) {
                    Ok(batch) => at += batch.length as u64,
                    Err(e) => {
                        problems.push(Error::corruption(&self.path, b.file_offset, format!("block {i}: {e}")));
                        break;
                    }
                }
            }
        }
        for e in self.streams() {
            let e = e.get();
            match self.batch_at(&data, e.offset) {
                Ok(b) if b.first_version == e.first_version && b.event_count == e.event_count => {}
                Ok(_) => problems.push(self.mismatch(e.offset, "stream")),
                Err(err) => problems.push(err),
            }
        }
        for p in self.positions() {
            let p = p.get();
            match self.batch_at(&data, p.offset) {
                Ok(b) if b.base_position == p.position => {}
                Ok(_) => problems.push(self.mismatch(p.offset, "position")),
                Err(err) => problems.push(err),
            }
        }
        problems
    }
}

/// Decompresses block `i` of a checked archive image, checking its CRC and length. Memory
/// grows only as far as the frame really decompresses, and never past the block's recorded
/// length. An error names the block's file offset.
pub(crate) fn decompress_block(bytes: &[u8], layout: &Layout, i: usize) -> Result<Vec<u8>, (u64, String)> {
    let blocks: &[BlockEntry] = format::cast(bytes, &layout.blocks).unwrap_or(&[]);
    let Some(b) = blocks.get(i).map(BlockEntry::get) else { return Err((0, format!("no block {i}"))) };
    let start = b.file_offset as usize;
    let frame = bytes
        .get(start..start.saturating_add(b.compressed_len as usize))
        .ok_or((b.file_offset, format!("block {i} lies outside the file")))?;
    if crate::format::crc(frame) != b.crc {
        return Err((b.file_offset, format!("block {i} checksum mismatch")));
    }
    let mut out = Vec::with_capacity((b.data_len as usize).min(4 << 20));
    let dict = bytes.get(layout.dictionary.clone()).unwrap_or(&[]);
    let limit = u64::from(b.data_len) + 1;
    let read = if dict.is_empty() {
        zstd::stream::read::Decoder::with_buffer(frame).and_then(|d| d.take(limit).read_to_end(&mut out))
    } else {
        zstd::stream::read::Decoder::with_dictionary(frame, dict).and_then(|d| d.take(limit).read_to_end(&mut out))
    };
    read.map_err(|e| (b.file_offset, format!("block {i} does not decompress: {e}")))?;
    if out.len() != b.data_len as usize {
        return Err((b.file_offset, format!("block {i} decompresses to {} bytes, not {}", out.len(), b.data_len)));
    }
    Ok(out)
}

/// One batch to be archived, borrowed from a segment's mapping or an archive's data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchRef<'a> {
    pub hash: u64,
    pub stream: &'a str,
    pub first_version: u64,
    pub position: u64,
    pub count: u32,
    pub bytes: &'a [u8],
}

/// How archives are written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BuildOptions {
    pub level: i32,
    pub block_bytes: usize,
    pub dictionary: bool,
}

/// What goes into one archive besides its batches.
pub(crate) struct Plan<'a> {
    pub partition: u32,
    pub base: u64,
    pub end: u64,
    /// End of the whole compaction's range (of its last archive).
    pub job_end: u64,
    pub reason: Reason,
    pub sources: &'a [Source],
    pub audit: &'a [AuditRecord],
}

/// Largest dictionary trained, and how many sample bytes train it.
const DICT_BYTES: usize = 16 << 10;
const DICT_SAMPLE_BYTES: usize = 1 << 20;

/// Builds an archive image from `batches` (in any order): laid out by stream, then version,
/// so that a stream's history sits in as few blocks as possible. `progress` is told the
/// uncompressed bytes of each block as it is compressed (the compactor throttles there).
pub(crate) fn build(
    plan: &Plan<'_>,
    mut batches: Vec<BatchRef<'_>>,
    opts: BuildOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<u8>> {
    batches.sort_unstable_by(|a, b| (a.hash, a.stream, a.first_version).cmp(&(b.hash, b.stream, b.first_version)));
    let dictionary = if opts.dictionary { train(&batches) } else { Vec::new() };
    let mut compressor = if dictionary.is_empty() {
        zstd::bulk::Compressor::new(opts.level)
    } else {
        zstd::bulk::Compressor::with_dictionary(opts.level, &dictionary)
    }
    .map_err(|e| Error::io("zstd", Path::new("archive"), e))?;
    let mut streams = Vec::with_capacity(batches.len());
    let mut positions = Vec::with_capacity(batches.len());
    let mut blocks: Vec<(Vec<u8>, u64, u32)> = Vec::new();
    let mut block = Vec::with_capacity(opts.block_bytes);
    let mut block_start = 0u64;
    let mut tag = 0u32;
    let mut prev: Option<(u64, &str)> = None;
    let mut flush = |block: &mut Vec<u8>, start: &mut u64, blocks: &mut Vec<(Vec<u8>, u64, u32)>| -> Result<()> {
        if block.is_empty() {
            return Ok(());
        }
        let frame = compressor.compress(block).map_err(|e| Error::io("zstd compress", Path::new("archive"), e))?;
        progress(block.len() as u64);
        blocks.push((frame, *start, block.len() as u32));
        *start += block.len() as u64;
        block.clear();
        Ok(())
    };
    for b in &batches {
        if !block.is_empty() && block.len() + b.bytes.len() > opts.block_bytes {
            flush(&mut block, &mut block_start, &mut blocks)?;
        }
        tag = match prev {
            Some((h, s)) if h == b.hash && s != b.stream => tag + 1,
            Some((h, _)) if h == b.hash => tag,
            _ => 0,
        };
        prev = Some((b.hash, b.stream));
        let offset = block_start + block.len() as u64;
        streams.push(StreamEntry {
            stream_hash: b.hash,
            first_version: b.first_version,
            offset,
            event_count: b.count,
            tag,
        });
        positions.push(PositionEntry { position: b.position, offset });
        block.extend_from_slice(b.bytes);
    }
    flush(&mut block, &mut block_start, &mut blocks)?;
    positions.sort_unstable_by_key(|p| p.position);
    let header = Header {
        partition: plan.partition,
        base_position: plan.base,
        end_position: plan.end,
        created: crate::store::now_nanos(),
        job_end: plan.job_end,
        reason: plan.reason,
        dict_len: dictionary.len() as u32,
        block_bytes: opts.block_bytes as u32,
    };
    Ok(format::encode(
        &header,
        &format::Parts {
            dictionary: &dictionary,
            blocks: &blocks,
            streams: &streams,
            positions: &positions,
            sources: plan.sources,
            audit: plan.audit,
        },
    ))
}

/// Trains a zstd dictionary on an even sample of the batches; empty if there are too few
/// to learn from or training fails (the archive is then compressed without one).
fn train(batches: &[BatchRef<'_>]) -> Vec<u8> {
    let total: usize = batches.iter().map(|b| b.bytes.len()).sum();
    if batches.len() < 64 || total < 8 * DICT_BYTES {
        return Vec::new();
    }
    let step = (total / DICT_SAMPLE_BYTES).max(1);
    let samples: Vec<&[u8]> = batches.iter().step_by(step).map(|b| b.bytes).collect();
    zstd::dict::from_samples(&samples, DICT_BYTES).unwrap_or_default()
}

/// Reads the batch at the start of `bytes` as a [`BatchRef`] (for an archive rewrite).
pub(crate) fn batch_ref<'a>(b: &BatchView<'a>, bytes: &'a [u8]) -> BatchRef<'a> {
    BatchRef {
        hash: crate::router::stream_hash(b.stream_id),
        stream: b.stream_id,
        first_version: b.first_version,
        position: b.base_position,
        count: b.event_count,
        bytes: bytes.get(..b.length).unwrap_or(bytes),
    }
}
