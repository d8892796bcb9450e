//! A segment slot of a partition, whatever its state: open (being written), sealed
//! (immutable, memory-mapped with its index, loaded on first use), archived, not loaded yet,
//! or failed. [`Segment::view`] gives the readable form a read holds for its duration.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::format::{archive as arc_format, index, segment as seg_format};
use crate::io::Io;
use crate::log::active::OpenSegment;
use crate::log::archive::Archive;
use crate::log::sealed::SealedSegment;
use crate::report::Report;

/// The state of a segment slot.
#[derive(Debug, Clone)]
pub(crate) enum State {
    Open(Arc<OpenSegment>),
    Sealed(Arc<SealedSegment>),
    /// A range compacted into an archive (the slot's files are `{base}.arc`).
    Archived(Arc<Archive>),
    Unloaded,
    /// Loading found damage that only a reopen (after repair) can change: every read of the
    /// segment gets the same error at once instead of scanning it again.
    Failed(Error),
}

/// A segment of a partition, whatever its state.
#[derive(Debug)]
pub(crate) struct Segment {
    pub partition: u32,
    pub base: u64,
    pub path: PathBuf,
    pub index_path: PathBuf,
    state: RwLock<State>,
    /// Held while loading; holds the last load's I/O error and when it happened.
    load_lock: Mutex<Option<(Instant, Error)>>,
}

/// How long after a load fails on an I/O error (which may pass: too many open files, a full
/// disk) reads get that error at once before a load is tried again: a lasting error then costs
/// one scan per second, not one per read.
const LOAD_RETRY: Duration = Duration::from_secs(1);

/// A reference to a segment's readable form, held for the duration of a read.
#[derive(Debug, Clone)]
pub(crate) enum View {
    Open(Arc<OpenSegment>),
    Sealed(Arc<SealedSegment>),
    Archived(Arc<Archive>),
}

impl Segment {
    pub fn new(partition: u32, dir: &Path, base: u64, state: State) -> Segment {
        Segment {
            partition,
            base,
            path: dir.join(seg_format::file_name(base)),
            index_path: dir.join(index::file_name(base)),
            state: RwLock::new(state),
            load_lock: Mutex::new(None),
        }
    }

    /// The slot of an archive (or of an archive file that could not be opened: `Failed`).
    pub fn archived(partition: u32, dir: &Path, base: u64, state: State) -> Segment {
        let path = dir.join(arc_format::file_name(base));
        Segment {
            partition,
            base,
            index_path: path.clone(),
            path,
            state: RwLock::new(state),
            load_lock: Mutex::new(None),
        }
    }

    /// Whether this slot holds an archive.
    pub fn is_archive(&self) -> bool {
        self.path.extension().is_some_and(|e| e == "arc")
    }

    pub fn set_state(&self, state: State) {
        *self.state.write() = state;
    }

    pub fn state(&self) -> State {
        self.state.read().clone()
    }

    /// The readable form of this segment, mapping it (and checking or rebuilding its index)
    /// on first use. `end_position` is where the next segment starts.
    pub fn view(&self, end_position: u64, io: &Io, report: &Report) -> Result<View> {
        let mut last_failure = match self.state() {
            State::Open(o) => return Ok(View::Open(o)),
            State::Sealed(s) => return Ok(View::Sealed(s)),
            State::Archived(a) => return Ok(View::Archived(a)),
            State::Failed(e) => return Err(e),
            State::Unloaded => self.load_lock.lock(),
        };
        match self.state() {
            State::Unloaded => {}
            State::Open(o) => return Ok(View::Open(o)),
            State::Sealed(s) => return Ok(View::Sealed(s)),
            State::Archived(a) => return Ok(View::Archived(a)),
            State::Failed(e) => return Err(e),
        }
        if let Some((at, e)) = last_failure.as_ref()
            && at.elapsed() < LOAD_RETRY
        {
            return Err(e.clone());
        }
        match self.load(end_position, io, report) {
            Ok(sealed) => {
                let sealed = Arc::new(sealed);
                self.set_state(State::Sealed(sealed.clone()));
                Ok(View::Sealed(sealed))
            }
            Err(e) => {
                // An I/O error may pass (too many open files...); damage does not.
                if matches!(e, Error::Corruption { .. } | Error::UnsupportedVersion { .. }) {
                    self.set_state(State::Failed(e.clone()));
                } else {
                    *last_failure = Some((Instant::now(), e.clone()));
                }
                Err(e)
            }
        }
    }
}
