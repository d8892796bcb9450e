//! Append-only record files as the engine holds them: opened with the one torn-tail rule
//! (`format::records`), appended to durably, one record at a time. The tombstones of a
//! partition and the dead-letter queue of a projection are such files.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::header::Malformed;
use crate::format::records::{Tail, judge_tail};
use crate::io::{FileHandle, Io};
use crate::report::{RecoveryAction, Report};

/// What a scan of a record file found: its records, where valid data ends, and why it ends
/// there if before the end of the file.
pub(crate) type Scanned<R> = (Vec<R>, usize, Option<String>);

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
        io.write_atomic(dir, name, header)?;
        let path: PathBuf = dir.join(name);
        Ok(RecordLog { file: io.open_rw(&path)?, end: header.len() as u64 })
    }

    /// Appends one record (or several, back to back) with one write and one `fdatasync`. On
    /// failure the file is cut back to where it ended, so no partial record is left before a
    /// later one.
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let written = self.file.write_all_at(bytes, self.end).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.end);
            return Err(e);
        }
        self.end += bytes.len() as u64;
        Ok(())
    }
}
