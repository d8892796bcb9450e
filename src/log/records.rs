//! Append-only record files as the engine holds them: opened with the one torn-tail rule
//! (`format::records`) and appended to durably by one function ([`append_at`]). The
//! tombstones of a partition and the dead-letter queue of a projection are read whole
//! ([`open`]) and appended to through a [`RecordLog`]; a snapshot sidecar, which may be large
//! and is derived data, is scanned as a stream and cut at its first invalid record whatever
//! the rule's verdict, which its report gives, but appends with [`append_at`] too.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::header::Malformed;
use crate::format::records::{Scanned, Tail, judge_tail};
use crate::io::{FileHandle, Io};
use crate::report::{RecoveryAction, Report};

/// How one kind of record file reads.
pub(crate) struct Kind<R> {
    /// Shortest and longest record.
    pub min_record: usize,
    pub max_record: usize,
    /// Checks the header and decodes the records after it: the records, where valid data
    /// ends, and why it ends there if that is before the end of the file. `Err`: the header
    /// is not this kind's.
    pub scan: fn(&[u8]) -> std::result::Result<Scanned<R>, Malformed>,
    /// Whether a valid record starts at the beginning of the bytes.
    pub valid: fn(&[u8]) -> bool,
}

/// An open record file: appends go at `end`, where its valid data ends.
#[derive(Debug)]
pub(crate) struct RecordLog {
    file: FileHandle,
    end: u64,
}

/// A record file read at open: its records and the handle to append with.
pub(crate) struct Opened<R> {
    pub records: Vec<R>,
    pub log: RecordLog,
    /// The whole file as read (header included), for callers that check more of it.
    pub bytes: Vec<u8>,
}

/// Reads the record file at `path` (`None` if there is none). A torn last write is cut off
/// (made durable, and reported as [`RecoveryAction::TruncatedTornTail`]); damage anywhere is
/// an [`Error::Corruption`] naming the offset, and nothing is changed.
pub(crate) fn open<R>(path: &Path, io: &Io, report: &Report, kind: &Kind<R>) -> Result<Option<Opened<R>>> {
    let bytes = match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
        Ok(b) => b,
    };
    let (records, valid_end, stopped) = (kind.scan)(&bytes).map_err(|m| m.into_corruption(path))?;
    let file = io.open_rw(path)?;
    if let Some(why) = stopped {
        let rest = bytes.get(valid_end..).unwrap_or(&[]);
        match judge_tail(valid_end as u64, rest, kind.min_record, kind.max_record, kind.valid) {
            Tail::Damaged(verdict) => {
                return Err(Error::corruption(path, valid_end as u64, format!("{why}; {verdict}")));
            }
            Tail::Torn(verdict) => {
                file.set_len(valid_end as u64)?;
                file.sync_data()?;
                report.push(RecoveryAction::TruncatedTornTail {
                    path: path.to_path_buf(),
                    offset: valid_end as u64,
                    discarded_bytes: rest.len() as u64,
                    reason: format!("{why}; {verdict}"),
                });
            }
        }
    }
    let log = RecordLog { file, end: valid_end as u64 };
    Ok(Some(Opened { records, log, bytes }))
}

impl RecordLog {
    /// Creates the file `dir/name` holding only `header` (durably: temp file, fsync, rename,
    /// fsync the directory) and opens it for appending.
    pub fn create(dir: &Path, name: &str, header: &[u8], io: &Io) -> Result<RecordLog> {
        Self::replace(dir, name, header, io).map_err(|(e, _)| e)
    }

    /// [`RecordLog::create`] with `bytes` (a header and records), saying on failure whether
    /// the file under `name` was already replaced (then the caller's old handle writes to a
    /// file no longer named).
    pub fn replace(dir: &Path, name: &str, bytes: &[u8], io: &Io) -> std::result::Result<RecordLog, (Error, bool)> {
        io.write_atomic_noting(dir, name, bytes)?;
        let path: PathBuf = dir.join(name);
        let file = io.open_rw(&path).map_err(|e| (e, true))?;
        Ok(RecordLog { file, end: bytes.len() as u64 })
    }

    /// Appends one record (or several, back to back): see [`append_at`].
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        append_at(&self.file, self.end, bytes).map_err(|f| f.error)?;
        self.end += bytes.len() as u64;
        Ok(())
    }
}

/// A failed [`append_at`].
#[derive(Debug)]
pub(crate) struct AppendFailed {
    pub error: Error,
    /// What the file holds is unknown: its `fdatasync` failed (its pages may be gone from the
    /// page cache while a later sync succeeds), or cutting the failed write back failed. A
    /// writer that must not vouch for unknown bytes stops writing the file.
    pub unknown: bool,
}

/// The one way records are appended to a record file (tombstones, dead letters, snapshot
/// sidecars): one write of `bytes` at `end`, where the file's valid data ends, and one
/// `fdatasync`. On failure the file is cut back to `end` (and synced), so that no partial
/// record is left before a later one.
pub(crate) fn append_at(file: &FileHandle, end: u64, bytes: &[u8]) -> std::result::Result<(), AppendFailed> {
    let written = file.write_all_at(bytes, end).and_then(|()| file.sync_data());
    let Err(error) = written else { return Ok(()) };
    let cut = file.set_len(end).and_then(|()| file.sync_data());
    let sync_failed = matches!(&error, Error::Io { op, .. } | Error::StorageFull { op, .. } if *op == "fdatasync");
    Err(AppendFailed { error, unknown: cut.is_err() || sync_failed })
}
