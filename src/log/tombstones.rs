//! Deleted streams: a partition's tombstones, durable before a delete returns (FORMAT.md §16).
//! A deleted stream refuses appends and stream reads at once; compaction erases its events
//! from the sealed segments and archives that hold them (see `compaction.rs`). A delete checks,
//! creates the file if needed, appends the record and marks the stream deleted under the
//! tombstone file's lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::format::tombstone::{self as format, Tombstone};
use crate::io::Io;
use crate::log::records::{self, RecordLog};
use crate::report::Report;

/// One partition's deleted streams.
#[derive(Debug)]
pub(crate) struct Tombstones {
    partition: u32,
    dir: PathBuf,
    io: Io,
    /// The file (`None` until the first delete creates it).
    file: Mutex<Option<RecordLog>>,
    deleted: RwLock<HashMap<String, u64>>,
    /// `deleted.len()`, read without the lock on the append path.
    count: AtomicUsize,
}

impl Tombstones {
    /// Reads `dir/tombstones` if it exists, by the torn-tail rule of every record file
    /// (`format::records`): a torn last record is cut off and reported; damage anywhere,
    /// the last record included, is an [`Error::Corruption`] (a lost tombstone would bring a
    /// deleted stream back).
    pub fn open(dir: &Path, partition: u32, io: Io, report: &Report) -> Result<Tombstones> {
        let path = dir.join(format::FILE_NAME);
        let mut deleted = HashMap::new();
        let file = match records::open(&path, &io, report, &KIND)? {
            None => None,
            Some(opened) => {
                let header = format::check_header(&opened.bytes).unwrap_or(partition);
                if header != partition {
                    return Err(Error::corruption(&path, 12, format!("tombstones of partition {header}")));
                }
                for t in opened.records {
                    deleted.entry(t.stream).or_insert(t.deleted_at);
                }
                Some(opened.log)
            }
        };
        Ok(Tombstones {
            partition,
            dir: dir.to_path_buf(),
            io,
            file: Mutex::new(file),
            count: AtomicUsize::new(deleted.len()),
            deleted: RwLock::new(deleted),
        })
    }

    /// When `stream` was deleted, if it was.
    pub fn deleted_at(&self, stream: &str) -> Option<u64> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.deleted.read().get(stream).copied()
    }

    /// How many streams are deleted.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Every deleted stream, with when it was deleted.
    pub fn all(&self) -> Vec<(String, u64)> {
        self.deleted.read().iter().map(|(s, t)| (s.clone(), *t)).collect()
    }

    /// Records `stream` as deleted, durably (write + fdatasync) before it takes effect.
    /// Returns `false` if it already was.
    pub fn delete(&self, stream: &str, at: u64) -> Result<bool> {
        let mut file = self.file.lock();
        if self.deleted.read().contains_key(stream) {
            return Ok(false);
        }
        let log = match &mut *file {
            Some(log) => log,
            empty => {
                let header = format::encode_header(self.partition);
                empty.insert(RecordLog::create(&self.dir, format::FILE_NAME, &header, &self.io)?)
            }
        };
        log.append(&format::encode(&Tombstone { stream: stream.to_owned(), deleted_at: at }))?;
        let mut deleted = self.deleted.write();
        deleted.insert(stream.to_owned(), at);
        self.count.store(deleted.len(), Ordering::Release);
        Ok(true)
    }
}

/// How a tombstone file reads.
const KIND: records::Kind<Tombstone> = records::Kind {
    min_record: format::MIN_RECORD,
    max_record: format::MAX_RECORD,
    scan: format::scan,
    valid: |b| format::decode(b).is_ok(),
};
