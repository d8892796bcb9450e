//! The active segment's index journal (FORMAT.md §8.4): what lets open rebuild the active
//! segment's in-memory index without scanning the segment.
//!
//! Writing. The writer hands every published batch to [`Journal::push`]. Once all of them are
//! durable in the segment (after the group's `fdatasync` in `Sync` mode, after an interval
//! sync in `Buffered` mode) and they add up to `interval` bytes of segment, [`Journal::write`]
//! appends one record covering them: one `write`, no `fdatasync` (a lost or torn record only
//! makes the next open scan more). At a clean close the writer writes the rest, so the next
//! open scans nothing. A roll removes the full segment's journal; a poisoning stops the
//! journal (what it would cover next may be cut). A failed write stops it too, until reopen:
//! its bytes may be half there, and nothing may follow them.
//!
//! Checkpoint. At a clean close, [`Journal::checkpoint`] replaces the file, atomically, with
//! one holding only a frozen section: the whole index, sorted, in the index file's layout
//! (format version 3). Records written after the next open follow the section.
//!
//! Reading happens at open (`log::recovery`): a frozen section is mapped and checked, and then
//! used in place (`log::active::Frozen`), not rebuilt; records are applied to the in-memory
//! index as a scan would have indexed the batches, the last batch covered is decoded from the
//! segment and must agree, and the scan goes on from where the journal ends. A journal that
//! does not check out is dropped from the first bad record on (reported), or whole if its
//! section fails, and open scans from there.

use std::path::PathBuf;
use std::sync::Arc;

use crate::format::active_index::{self as aix, Entry};
use crate::io::{FileHandle, Io};
use crate::log::active::OpenSegment;
use crate::router::stream_hash;

/// A batch published but not journaled yet.
struct Pending {
    stream: Arc<str>,
    first_version: u64,
    count: u32,
    len: u32,
}

/// One partition's journal of its active segment's index.
pub(crate) struct Journal {
    dir: PathBuf,
    partition: u32,
    base: u64,
    /// The journal file, open for appending at `file_end`; `None` until the first record.
    file: Option<FileHandle>,
    file_end: u64,
    /// Segment offset and position up to which records exist.
    covered: (u64, u64),
    pending: Vec<Pending>,
    pending_bytes: u64,
    /// Timestamp of the last pending batch.
    last_timestamp: u64,
    /// Journal once this many bytes of segment are pending.
    interval: u64,
    /// Set after a failed write or a poisoning: no more records for this segment.
    stopped: bool,
    /// The file holds a frozen section covering `covered` and no record: a checkpoint with
    /// nothing pending would write it again.
    frozen_only: bool,
}

impl Journal {
    /// The journal of segment `base` of partition `partition`, whose records cover the segment
    /// up to `covered` (offset, position); `file` is the journal file, valid up to `file_end`.
    pub fn new(
        dir: PathBuf,
        partition: u32,
        base: u64,
        file: Option<(FileHandle, u64)>,
        covered: (u64, u64),
        interval: u64,
    ) -> Journal {
        let (file, file_end) = match file {
            Some((f, end)) => (Some(f), end),
            None => (None, 0),
        };
        Journal {
            dir,
            partition,
            base,
            file,
            file_end,
            covered,
            pending: Vec::new(),
            pending_bytes: 0,
            last_timestamp: 0,
            interval,
            stopped: false,
            frozen_only: false,
        }
    }

    /// Notes that the file holds only a frozen section, covering everything so far.
    pub fn set_frozen_only(&mut self) {
        self.frozen_only = true;
    }

    /// Notes a published batch (in offset order).
    pub fn push(&mut self, stream: Arc<str>, first_version: u64, count: u32, len: u32, timestamp: u64) {
        if self.stopped {
            return;
        }
        self.pending.push(Pending { stream, first_version, count, len });
        self.pending_bytes += u64::from(len);
        self.last_timestamp = timestamp;
    }

    /// Called once every pushed batch is durable: journals them if they reach the interval.
    pub fn synced(&mut self, io: &Io) {
        if self.pending_bytes >= self.interval {
            self.write(io);
        }
    }

    /// Journals every pushed batch (which must all be durable in the segment) as one record.
    pub fn write(&mut self, io: &Io) {
        if self.stopped || self.pending.is_empty() {
            return;
        }
        let entries: Vec<Entry<'_>> = self
            .pending
            .iter()
            .map(|p| Entry { stream: &p.stream, first_version: p.first_version, event_count: p.count, len: p.len })
            .collect();
        let record = aix::encode(self.covered.0, self.covered.1, self.last_timestamp, &entries);
        drop(entries);
        let written = match &self.file {
            Some(f) => f.write_all_at(&record, self.file_end),
            None => self.create(io, &record),
        };
        if written.is_err() {
            self.stop();
            return;
        }
        self.file_end += record.len() as u64;
        self.frozen_only = false;
        let count: u64 = self.pending.iter().map(|p| u64::from(p.count)).sum();
        self.covered = (self.covered.0 + self.pending_bytes, self.covered.1 + count);
        self.pending.clear();
        self.pending_bytes = 0;
    }

    /// At a clean close, every batch durable: replaces the journal, atomically, with one
    /// holding only a frozen section of the segment's whole index (FORMAT.md §8.4), which the
    /// next open maps instead of rebuilding the index. Nothing is written if the file already
    /// is that. If the new file cannot be put in place, the batches pending go as a record
    /// (as without a checkpoint); if it was put in place but not made durable, it stands (it
    /// is as true as the old one).
    pub fn checkpoint(&mut self, io: &Io, open: &OpenSegment) {
        if self.frozen_only && self.pending.is_empty() {
            return;
        }
        let Ok((entries, positions, end)) = open.sorted_entries(stream_hash) else {
            self.write(io);
            return;
        };
        if entries.is_empty() {
            return;
        }
        let header = aix::FrozenHeader {
            partition: self.partition,
            base_position: self.base,
            to_offset: end.end_offset,
            to_position: end.end_position,
            last_offset: end.last_offset,
        };
        let bytes = aix::encode_frozen(&header, &entries, &positions);
        drop((entries, positions));
        let name = aix::file_name(self.base);
        match io.write_atomic_noting(&self.dir, &name, &bytes) {
            Ok(()) => {}
            Err((_, false)) => {
                self.write(io);
                return;
            }
            Err((_, true)) => {}
        }
        self.file = io.open_rw(&self.dir.join(&name)).ok();
        self.file_end = bytes.len() as u64;
        self.covered = (end.end_offset, end.end_position);
        self.pending.clear();
        self.pending_bytes = 0;
        // A new record would follow the section: without the file open, none may.
        self.stopped = self.file.is_none();
        self.frozen_only = true;
    }

    /// A new journal file holding its header and `record` (atomically: a crash leaves no
    /// header-only or half-created file), then opened for appending.
    fn create(&mut self, io: &Io, record: &[u8]) -> crate::error::Result<()> {
        let name = aix::file_name(self.base);
        let mut bytes = aix::encode_header(self.partition, self.base).to_vec();
        bytes.extend_from_slice(record);
        io.write_atomic(&self.dir, &name, &bytes)?;
        self.file = Some(io.open_rw(&self.dir.join(name))?);
        self.file_end = aix::HEADER_LEN as u64;
        Ok(())
    }

    /// No more records for this segment (after a failed write, or a poisoning).
    pub fn stop(&mut self) {
        self.stopped = true;
        self.pending = Vec::new();
        self.pending_bytes = 0;
    }

    /// The writer rolled to a new segment at `base`: the full segment's journal goes (best
    /// effort: open removes a journal that is not the active segment's), and a new one starts.
    pub fn roll(&mut self, base: u64, io: &Io) {
        if self.file.take().is_some() {
            let _ = io.remove_file(&self.dir.join(aix::file_name(self.base)));
        }
        *self =
            Journal::new(self.dir.clone(), self.partition, base, None, (aix::HEADER_LEN as u64, base), self.interval);
    }
}
