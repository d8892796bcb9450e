//! Building an archive image from batches: laid out by stream, then version, so that a
//! stream's history sits in as few blocks as possible; compressed block by block with zstd,
//! optionally with a dictionary trained on the batches (FORMAT.md §14.2).
//!
//! `build` cuts the batches into blocks in layout order: a batch is added to the current block
//! unless the block already holds a batch and the two together would exceed `block_bytes`
//! (`CompactionOptions::block_bytes`), in which case the block is closed and the batch begins
//! the next one. Each block is taken apart into columns (`format::columns::split`) and each
//! column compressed as its own frame at the configured level (1 ..= 22, default 3); the
//! columns are put back (`columns::join`) and compared with the batches first, so a block
//! whose batches they would not give back byte for byte (a batch with a bad CRC, non-zero
//! padding, an unknown flag) is compressed as it is instead. Splitting, checking and the
//! four frames cost about a third of the single-frame throughput (benches/compaction.rs:
//! 157 MB/s before, 104 after, on the JSON events), and halve the archive's size.
//!
//! Stream entries stand for spans (FORMAT.md §14.3): a batch joins the last entry when it is
//! of the same stream, in the same block, and its versions follow on, so an archive holds
//! about one entry per stream and block rather than one per batch.
//!
//! With `CompactionOptions::dictionary(true)` (default `false`), a zstd dictionary is trained
//! for each archive (each piece of a compaction) from an even sample of its batches (every
//! `max(total / 1 MiB, 1)`-th batch in layout order, `total` being the bytes of its batches), at
//! most 16 KiB (`DICT_BYTES`), by zstd's trainer (`zstd::dict::from_samples`), and every frame
//! is compressed with it. No dictionary is trained for fewer than 64 batches or fewer than 128
//! KiB, and a failed training means none. (It is trained on whole batches, not on columns.)

use std::path::Path;

use crate::clock::now_nanos;
use crate::error::{Error, Result};
use crate::format::archive::{self as format, ARCHIVE_VERSION, AuditRecord, Block, Header, Reason, Source};
use crate::format::batch::BatchView;
use crate::format::columns::{self, LAYOUT_BATCHES};
use crate::format::index::{PositionEntry, StreamEntry};
use crate::router::stream_hash;

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
#[derive(Clone, Copy)]
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
    let mut streams: Vec<StreamEntry> = Vec::with_capacity(batches.len());
    let mut positions = Vec::with_capacity(batches.len());
    let mut blocks: Vec<Block> = Vec::new();
    let mut block = Vec::with_capacity(opts.block_bytes);
    let mut block_start = 0u64;
    let mut tag = 0u32;
    let mut prev: Option<(u64, &str)> = None;
    // Whether the last stream entry may take in the next batch: it is of the same stream, in
    // the same block, and the batch's versions follow on from it.
    let mut span_open = false;
    for b in &batches {
        if !block.is_empty() && block.len() + b.bytes.len() > opts.block_bytes {
            blocks.push(compress_block(&mut compressor, &block, block_start)?);
            progress(block.len() as u64);
            block_start += block.len() as u64;
            block.clear();
            span_open = false;
        }
        let same_stream = matches!(prev, Some((h, s)) if h == b.hash && s == b.stream);
        tag = match prev {
            Some((h, _)) if h == b.hash && !same_stream => tag + 1,
            Some((h, _)) if h == b.hash => tag,
            _ => 0,
        };
        prev = Some((b.hash, b.stream));
        let offset = block_start + block.len() as u64;
        match streams.last_mut() {
            Some(last)
                if span_open
                    && same_stream
                    && last.first_version.checked_add(u64::from(last.event_count)) == Some(b.first_version)
                    && last.event_count.checked_add(b.count).is_some() =>
            {
                last.event_count += b.count;
            }
            _ => streams.push(StreamEntry {
                stream_hash: b.hash,
                first_version: b.first_version,
                offset,
                event_count: b.count,
                tag,
            }),
        }
        span_open = true;
        positions.push(PositionEntry { position: b.position, offset });
        block.extend_from_slice(b.bytes);
    }
    if !block.is_empty() {
        blocks.push(compress_block(&mut compressor, &block, block_start)?);
        progress(block.len() as u64);
    }
    positions.sort_unstable_by_key(|p| p.position);
    let header = Header {
        version: ARCHIVE_VERSION,
        partition: plan.partition,
        base_position: plan.base,
        end_position: plan.end,
        created: now_nanos(),
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

/// Compresses one block of batches (FORMAT.md §14.2): as columns, each its own zstd frame, if
/// the batches split into columns that are smaller and give them back byte for byte;
/// otherwise as they are, after their layout byte, in one frame.
fn compress_block(compressor: &mut zstd::bulk::Compressor<'_>, data: &[u8], data_start: u64) -> Result<Block> {
    let zstd_error = |e| Error::io("zstd compress", Path::new("archive"), e);
    let split = columns::split(data)
        .filter(|c| c.len() <= data.len() && columns::join(&c.concat(), data.len()).as_deref() == Ok(data));
    let mut frames = Vec::new();
    match split {
        Some(c) => {
            for part in c.parts().into_iter().filter(|p| !p.is_empty()) {
                frames.extend_from_slice(&compressor.compress(part).map_err(zstd_error)?);
            }
        }
        None => {
            let mut plain = Vec::with_capacity(data.len() + 1);
            plain.push(LAYOUT_BATCHES);
            plain.extend_from_slice(data);
            frames = compressor.compress(&plain).map_err(zstd_error)?;
        }
    }
    Ok(Block { frames, data_start, data_len: data.len() as u32, data_crc: crate::format::crc(data) })
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
        hash: stream_hash(b.stream_id),
        stream: b.stream_id,
        first_version: b.first_version,
        position: b.base_position,
        count: b.event_count,
        bytes: bytes.get(..b.length).unwrap_or(bytes),
    }
}
