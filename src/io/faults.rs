//! Fault injection: a plan of failures (`EIO`, `ENOSPC`, short writes) that the file seam
//! applies to matching calls, for tests of how strata and its users cope with a failing disk.

use std::io;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

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
    /// Only this exact path (a directory, say, whose name every file in it contains).
    path_is: Option<std::path::PathBuf>,
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
    pub(crate) publish_delay: std::sync::atomic::AtomicU64,
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
        self.rules.lock().push(Rule {
            op,
            kind,
            skip,
            path_contains: path_contains.map(str::to_owned),
            path_is: None,
            sticky,
        });
    }

    /// Like [`FaultPlan::inject`], for calls on exactly `path` (a store's directory, whose
    /// name the paths of all its files contain).
    pub fn inject_at(&self, op: FaultOp, kind: FaultKind, skip: u64, path: &Path, sticky: bool) {
        self.rules.lock().push(Rule { op, kind, skip, path_contains: None, path_is: Some(path.to_path_buf()), sticky });
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

    pub(crate) fn check(&self, op: FaultOp, path: &Path) -> Option<FaultKind> {
        let mut rules = self.rules.lock();
        let name = path.to_string_lossy();
        let mut fired = None;
        rules.retain_mut(|r| {
            if fired.is_some()
                || r.op != op
                || r.path_contains.as_deref().is_some_and(|p| !name.contains(p))
                || r.path_is.as_deref().is_some_and(|p| p != path)
            {
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

pub(crate) fn injected(kind: FaultKind) -> io::Error {
    match kind {
        FaultKind::NoSpace => io::Error::from(io::ErrorKind::StorageFull),
        FaultKind::Eio | FaultKind::ShortWrite => io::Error::other("injected I/O error (EIO)"),
    }
}
