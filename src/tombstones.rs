//! Deleted streams: a partition's tombstones, durable before a delete returns. A deleted
//! stream refuses appends and stream reads at once; compaction erases its events from the
//! sealed segments and archives that hold them (see `compaction.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::format::tombstone::{self as format, Tombstone};
use crate::io::{FileHandle, Io};
use crate::segment::Report;
use crate::store::RecoveryAction;

/// One partition's deleted streams.
#[derive(Debug)]
pub(crate) struct Tombstones {
    partition: u32,
    dir: PathBuf,
    path: PathBuf,
    io: Io,
    /// The file and where its valid data ends (`None` until the first delete creates it).
    file: Mutex<Option<(FileHandle, u64)>>,
    deleted: RwLock<HashMap<String, u64>>,
    /// `deleted.len()`, read without the lock on the append path.
    count: AtomicUsize,
}

impl Tombstones {
    /// Reads `dir/tombstones` if it exists. A torn last record is cut off; damage before the
    /// end is an [`Error::Corruption`] (a lost tombstone would bring a deleted stream back).
    pub fn open(dir: &Path, partition: u32, io: Io, report: &Report) -> Result<Tombstones> {
        let path = dir.join(format::FILE_NAME);
        let mut deleted = HashMap::new();
        let file = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("read", &path, e)),
            Ok(bytes) => {
                let (records, valid_end, damage) =
                    format::scan(&bytes).map_err(|why| Error::corruption(&path, 0, why))?;
                let header = format::check_header(&bytes).unwrap_or(partition);
                if header != partition {
                    return Err(Error::corruption(&path, 12, format!("tombstones of partition {header}")));
                }
                let file = io.open_rw(&path)?;
                if let Some(why) = damage {
                    // Each delete is synced before the next is written, so only the last record
                    // can be torn: a valid record anywhere after the bad one means damage.
                    let rest = bytes.get(valid_end..).unwrap_or(&[]);
                    let later_valid =
                        (8..rest.len()).step_by(8).any(|at| rest.get(at..).is_some_and(|r| format::decode(r).is_ok()));
                    if later_valid {
                        return Err(Error::corruption(&path, valid_end as u64, why));
                    }
                    file.set_len(valid_end as u64)?;
                    file.sync_data()?;
                    report.lock().push(RecoveryAction::TruncatedTornTail {
                        path: path.clone(),
                        offset: valid_end as u64,
                        discarded_bytes: (bytes.len() - valid_end) as u64,
                        reason: why,
                    });
                }
                for t in records {
                    deleted.entry(t.stream).or_insert(t.deleted_at);
                }
                Some((file, valid_end as u64))
            }
        };
        Ok(Tombstones {
            partition,
            dir: dir.to_path_buf(),
            path,
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
        if file.is_none() {
            self.io.write_atomic(&self.dir, format::FILE_NAME, &format::encode_header(self.partition))?;
            *file = Some((self.io.open_rw(&self.path)?, format::HEADER_LEN as u64));
        }
        let Some((f, end)) = file.as_mut() else { return Err(Error::corruption(&self.path, 0, "no tombstone file")) };
        let rec = format::encode(&Tombstone { stream: stream.to_owned(), deleted_at: at });
        let written = f.write_all_at(&rec, *end).and_then(|()| f.sync_data());
        if let Err(e) = written {
            // Leave no partial record behind a later one.
            let _ = f.set_len(*end);
            return Err(e);
        }
        *end += rec.len() as u64;
        let mut deleted = self.deleted.write();
        deleted.insert(stream.to_owned(), at);
        self.count.store(deleted.len(), Ordering::Release);
        Ok(true)
    }
}
