//! The store lock: an OS file lock (`flock`) on `LOCK`, so that a second open of the same store,
//! from this process or another, fails with [`Error::Locked`] instead of corrupting it. The
//! lock dies with the process, so a crash never leaves a stale lock behind. It is taken with
//! `std::fs::File::try_lock` (on Unix, `flock(LOCK_EX | LOCK_NB)`; FORMAT.md §4).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{Error, Result};

pub(crate) const FILE_NAME: &str = "LOCK";

/// A held store lock; released when dropped.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

/// Takes the lock of the store in `dir`, without waiting.
pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
    let path = dir.join(FILE_NAME);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = (&mut file).take(256).read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() { "unknown holder".to_string() } else { holder.to_string() };
            return Err(Error::Locked { path, holder });
        }
        Err(TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
    }
    // Who holds it, for the error message of the next opener; best effort.
    let _ = file.set_len(0);
    let _ = file.seek(SeekFrom::Start(0));
    let _ = write!(file, "pid {}", std::process::id());
    Ok(DirLock { _file: file })
}
