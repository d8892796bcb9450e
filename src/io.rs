//! The file-I/O seam: every write, sync, rename and truncation strata does goes through here,
//! so that tests can inject failures (`EIO`, `ENOSPC`, short writes) at any step.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// An operation a fault can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// A positional write.
    Write,
    /// `fdatasync`/`fsync` of a file or directory.
    Sync,
    /// A rename.
    Rename,
    /// `set_len` (truncate or extend).
    SetLen,
    /// Creating a file.
    Create,
}

/// How an injected fault fails.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The call fails with `EIO`.
    Eio,
    /// The call fails with `ENOSPC`.
    NoSpace,
    /// A write puts the first half of its bytes on disk, then fails with `EIO`.
    ShortWrite,
}

#[derive(Debug, Clone)]
struct Rule {
    op: FaultOp,
    kind: FaultKind,
    skip: u64,
    path_contains: Option<String>,
    sticky: bool,
}

/// A plan of faults to inject; shared by every file of one store.
///
/// A rule fires on the `skip + 1`-th matching call after it was added; a sticky rule keeps
/// firing on every matching call after that.
#[derive(Debug, Default)]
pub struct FaultPlan {
    rules: Mutex<Vec<Rule>>,
    /// Nanoseconds each group commit waits between updating its index and publishing its
    /// head (0: none).
    publish_delay: std::sync::atomic::AtomicU64,
}

#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
impl FaultPlan {
    /// An empty plan.
    pub fn new() -> Arc<FaultPlan> {
        Arc::new(FaultPlan::default())
    }

    /// Fails the `skip + 1`-th matching call of `op` (whose path contains `path_contains`, if
    /// given) with `kind`; if `sticky`, every later matching call fails too.
    pub fn inject(&self, op: FaultOp, kind: FaultKind, skip: u64, path_contains: Option<&str>, sticky: bool) {
        self.rules.lock().push(Rule { op, kind, skip, path_contains: path_contains.map(str::to_owned), sticky });
    }

    /// Makes every group commit wait `delay` after adding its batches to the in-memory index
    /// and before publishing the new head, widening the window in which a read could see
    /// events the head does not cover yet (none may: see the visibility tests).
    pub fn delay_publish(&self, delay: std::time::Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.publish_delay.store(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.rules.lock().clear();
    }

    fn check(&self, op: FaultOp, path: &Path) -> Option<FaultKind> {
        let mut rules = self.rules.lock();
        let path = path.to_string_lossy();
        let mut fired = None;
        rules.retain_mut(|r| {
            if fired.is_some() || r.op != op || r.path_contains.as_deref().is_some_and(|p| !path.contains(p)) {
                return true;
            }
            if r.skip > 0 {
                r.skip -= 1;
                return true;
            }
            fired = Some(r.kind);
            r.sticky
        });
        fired
    }
}

/// The I/O context of a store: real file operations, plus an optional fault plan.
#[derive(Debug, Clone, Default)]
pub(crate) struct Io {
    faults: Option<Arc<FaultPlan>>,
}

fn injected(kind: FaultKind) -> io::Error {
    match kind {
        FaultKind::NoSpace => io::Error::from(io::ErrorKind::StorageFull),
        FaultKind::Eio | FaultKind::ShortWrite => io::Error::other("injected I/O error (EIO)"),
    }
}

impl Io {
    pub fn with_faults(faults: Option<Arc<FaultPlan>>) -> Io {
        Io { faults }
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
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        Ok(self.handle(file, path))
    }

    /// Opens an existing file for reading and writing.
    pub fn open_rw(&self, path: &Path) -> Result<FileHandle> {
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| Error::io("open", path, e))?;
        Ok(self.handle(file, path))
    }

    /// Creates a new file (truncating a leftover one of the same name), for reading and writing.
    pub fn create(&self, path: &Path) -> Result<FileHandle> {
        self.fail(FaultOp::Create, "create", path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io("create", path, e))?;
        Ok(self.handle(file, path))
    }

    fn handle(&self, file: File, path: &Path) -> FileHandle {
        FileHandle { file, path: path.to_path_buf(), io: self.clone() }
    }

    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.fail(FaultOp::Rename, "rename", to)?;
        fs::rename(from, to).map_err(|e| Error::io("rename", to, e))
    }

    pub fn remove_file(&self, path: &Path) -> Result<()> {
        fs::remove_file(path).map_err(|e| Error::io("remove", path, e))
    }

    /// fsyncs a directory, making the creation, rename or removal of its entries durable.
    pub fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.fail(FaultOp::Sync, "fsync directory", dir)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("fsync directory", dir, e))
    }

    pub fn create_dir(&self, dir: &Path) -> Result<()> {
        self.fail(FaultOp::Create, "create directory", dir)?;
        match fs::create_dir(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(Error::io("create directory", dir, e)),
            _ => Ok(()),
        }
    }

    /// Replaces `dir/name` atomically with `bytes`: write a temporary file, fsync it, rename
    /// it over the target, fsync the directory. A crash leaves the old file or the new one.
    pub fn write_atomic(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = dir.join(format!("{name}.tmp"));
        let target = dir.join(name);
        let f = self.create(&tmp)?;
        f.write_all_at(bytes, 0)?;
        f.sync_all()?;
        drop(f);
        self.rename(&tmp, &target)?;
        self.sync_dir(dir)
    }
}

/// An open file that knows its path (for error messages) and its fault plan.
#[derive(Debug)]
pub(crate) struct FileHandle {
    file: File,
    path: PathBuf,
    io: Io,
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
        if let Some(kind) = self.io.fault(FaultOp::Write, &self.path) {
            if kind == FaultKind::ShortWrite {
                let half = buf.get(..buf.len() / 2).unwrap_or(&[]);
                let _ = self.file.write_all_at(half, offset);
            }
            return Err(Error::io("write", &self.path, injected(kind)));
        }
        self.file.write_all_at(buf, offset).map_err(|e| Error::io("write", &self.path, e))
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| Error::io("read", &self.path, e))
    }

    /// `fdatasync`: the data and the metadata needed to read it back (the length) are durable.
    pub fn sync_data(&self) -> Result<()> {
        self.io.fail(FaultOp::Sync, "fdatasync", &self.path)?;
        self.file.sync_data().map_err(|e| Error::io("fdatasync", &self.path, e))
    }

    pub fn sync_all(&self) -> Result<()> {
        self.io.fail(FaultOp::Sync, "fsync", &self.path)?;
        self.file.sync_all().map_err(|e| Error::io("fsync", &self.path, e))
    }

    pub fn set_len(&self, len: u64) -> Result<()> {
        self.io.fail(FaultOp::SetLen, "set_len", &self.path)?;
        self.file.set_len(len).map_err(|e| Error::io("set_len", &self.path, e))
    }

    pub fn len(&self) -> Result<u64> {
        self.file.metadata().map(|m| m.len()).map_err(|e| Error::io("stat", &self.path, e))
    }
}
