//! The file-I/O seam: every write, sync, rename and truncation strata does goes through here,
//! so that tests can inject failures (`EIO`, `ENOSPC`, short writes) at any step
//! ([`faults`]). Beside it: the store's lock file ([`lock`]) and the one module that maps
//! files into memory ([`mmap`], where all of strata's `unsafe` lives).
//!
//! `Io::write_atomic(dir, name, bytes)` is the atomic write of FORMAT.md §3.2: a temporary
//! `{name}.tmp`, written and fsynced, renamed over `name`, then the directory fsynced.

pub(crate) mod faults;
pub(crate) mod lock;
pub(crate) mod mmap;
pub(crate) mod sim;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use faults::{FaultKind, FaultOp, FaultPlan, injected};
use sim::{SimDisk, SimGuard};

/// The I/O context of a store: real file operations, plus an optional fault plan and an
/// optional simulated disk that records them ([`sim`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Io {
    faults: Option<Arc<FaultPlan>>,
    sim: Option<Arc<SimDisk>>,
}

impl Io {
    pub fn with_faults(faults: Option<Arc<FaultPlan>>) -> Io {
        Io { faults, sim: None }
    }

    /// Records every mutation on `sim` (and skips the real syncs: the simulated disk decides
    /// what is durable).
    pub fn with_sim(mut self, sim: Option<Arc<SimDisk>>) -> Io {
        self.sim = sim;
        self
    }

    /// The simulated disk's lock, held while one operation is carried out and recorded.
    fn sim(&self) -> Option<SimGuard<'_>> {
        self.sim.as_deref().map(SimDisk::lock)
    }

    /// How long a group commit waits before publishing its head (see
    /// [`FaultPlan::delay_publish`]).
    #[cfg(feature = "fault-injection")]
    pub fn publish_delay(&self) -> Option<std::time::Duration> {
        let nanos = self.faults.as_ref()?.publish_delay.load(std::sync::atomic::Ordering::Relaxed);
        (nanos > 0).then(|| std::time::Duration::from_nanos(nanos))
    }

    fn fault(&self, op: FaultOp, path: &Path) -> Option<FaultKind> {
        self.faults.as_ref().and_then(|f| f.check(op, path))
    }

    fn fail(&self, op: FaultOp, what: &'static str, path: &Path) -> Result<()> {
        match self.fault(op, path) {
            Some(kind) => Err(Error::io(what, path, injected(kind))),
            None => Ok(()),
        }
    }

    /// Opens an existing file for reading.
    pub fn open_read(&self, path: &Path) -> Result<FileHandle> {
        let sim = self.sim();
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let node = sim.and_then(|s| s.node_of(path));
        Ok(self.handle(file, path, node))
    }

    /// Opens an existing file for reading and writing.
    pub fn open_rw(&self, path: &Path) -> Result<FileHandle> {
        let sim = self.sim();
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| Error::io("open", path, e))?;
        let node = sim.and_then(|s| s.node_of(path));
        Ok(self.handle(file, path, node))
    }

    /// Creates a new file (truncating a leftover one of the same name), for reading and writing.
    pub fn create(&self, path: &Path) -> Result<FileHandle> {
        self.fail(FaultOp::Create, "create", path)?;
        let mut sim = self.sim();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io("create", path, e))?;
        let node = sim.as_mut().and_then(|s| s.created(path));
        drop(sim);
        Ok(self.handle(file, path, node))
    }

    fn handle(&self, file: File, path: &Path, node: Option<usize>) -> FileHandle {
        FileHandle { file, path: path.to_path_buf(), io: self.clone(), node }
    }

    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.fail(FaultOp::Rename, "rename", to)?;
        let mut sim = self.sim();
        fs::rename(from, to).map_err(|e| Error::io("rename", to, e))?;
        if let Some(s) = sim.as_mut() {
            s.renamed(from, to);
        }
        Ok(())
    }

    pub fn remove_file(&self, path: &Path) -> Result<()> {
        let mut sim = self.sim();
        fs::remove_file(path).map_err(|e| Error::io("remove", path, e))?;
        if let Some(s) = sim.as_mut() {
            s.removed(path);
        }
        Ok(())
    }

    /// Removes a directory and everything in it.
    pub fn remove_dir_all(&self, dir: &Path) -> Result<()> {
        let mut sim = self.sim();
        fs::remove_dir_all(dir).map_err(|e| Error::io("remove", dir, e))?;
        if let Some(s) = sim.as_mut() {
            s.removed(dir);
        }
        Ok(())
    }

    /// fsyncs a directory, making the creation, rename or removal of its entries durable.
    pub fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.fail(FaultOp::Sync, "fsync directory", dir)?;
        if let Some(mut s) = self.sim() {
            // The simulated disk decides what is durable; the directory must still exist.
            File::open(dir).map_err(|e| Error::io("fsync directory", dir, e))?;
            s.synced_dir(dir);
            return Ok(());
        }
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("fsync directory", dir, e))
    }

    pub fn create_dir(&self, dir: &Path) -> Result<()> {
        self.fail(FaultOp::Create, "create directory", dir)?;
        let mut sim = self.sim();
        match fs::create_dir(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(Error::io("create directory", dir, e)),
            _ => {
                if let Some(s) = sim.as_mut() {
                    s.created_dir(dir);
                }
                Ok(())
            }
        }
    }

    /// Creates a directory and any missing parents (each new one recorded by a simulated
    /// disk). Their entries are not synced: the caller syncs what it relies on.
    pub fn create_dir_all(&self, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.create_dir_all(parent)?;
        }
        self.create_dir(dir)
    }

    /// Replaces `dir/name` atomically with `bytes`: write a temporary file, fsync it, rename
    /// it over the target, fsync the directory. A crash leaves the old file or the new one.
    pub fn write_atomic(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
        self.write_atomic_noting(dir, name, bytes).map_err(|(e, _)| e)
    }

    /// [`Io::write_atomic`], saying on failure whether the rename was done (only the directory
    /// `fsync` failed): then `name` holds the new bytes, maybe not durably.
    pub fn write_atomic_noting(&self, dir: &Path, name: &str, bytes: &[u8]) -> std::result::Result<(), (Error, bool)> {
        let tmp = dir.join(format!("{name}.tmp"));
        let target = dir.join(name);
        let staged = self.create(&tmp).and_then(|f| {
            f.write_all_at(bytes, 0)?;
            f.sync_all()
        });
        staged.and_then(|()| self.rename(&tmp, &target)).map_err(|e| (e, false))?;
        self.sync_dir(dir).map_err(|e| (e, true))
    }
}

/// An open file that knows its path (for error messages) and its fault plan.
#[derive(Debug)]
pub(crate) struct FileHandle {
    file: File,
    path: PathBuf,
    io: Io,
    /// The file's node on the simulated disk, if one records this store.
    node: Option<usize>,
}

impl FileHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying file, for memory mapping and locking.
    pub fn std(&self) -> &File {
        &self.file
    }

    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut sim = self.io.sim();
        if let Some(kind) = self.io.fault(FaultOp::Write, &self.path) {
            if kind == FaultKind::ShortWrite {
                let half = buf.get(..buf.len() / 2).unwrap_or(&[]);
                if self.file.write_all_at(half, offset).is_ok()
                    && let Some(s) = sim.as_mut()
                {
                    s.wrote(self.node, &self.path, offset, half);
                }
            }
            return Err(Error::io("write", &self.path, injected(kind)));
        }
        self.file.write_all_at(buf, offset).map_err(|e| Error::io("write", &self.path, e))?;
        if let Some(s) = sim.as_mut() {
            s.wrote(self.node, &self.path, offset, buf);
        }
        Ok(())
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| Error::io("read", &self.path, e))
    }

    /// `fdatasync`: the data and the metadata needed to read it back (the length) are durable.
    pub fn sync_data(&self) -> Result<()> {
        self.io.fail(FaultOp::Sync, "fdatasync", &self.path)?;
        if let Some(mut s) = self.io.sim() {
            s.synced(self.node, &self.path);
            return Ok(());
        }
        self.file.sync_data().map_err(|e| Error::io("fdatasync", &self.path, e))
    }

    pub fn sync_all(&self) -> Result<()> {
        self.io.fail(FaultOp::Sync, "fsync", &self.path)?;
        if let Some(mut s) = self.io.sim() {
            s.synced(self.node, &self.path);
            return Ok(());
        }
        self.file.sync_all().map_err(|e| Error::io("fsync", &self.path, e))
    }

    pub fn set_len(&self, len: u64) -> Result<()> {
        self.io.fail(FaultOp::SetLen, "set_len", &self.path)?;
        let mut sim = self.io.sim();
        self.file.set_len(len).map_err(|e| Error::io("set_len", &self.path, e))?;
        if let Some(s) = sim.as_mut() {
            s.set_len(self.node, &self.path, len);
        }
        Ok(())
    }

    pub fn len(&self) -> Result<u64> {
        self.file.metadata().map(|m| m.len()).map_err(|e| Error::io("stat", &self.path, e))
    }
}
