//! A projection's dead-letter queue: durable, append-only, scanned on registration. Events a
//! projection could not handle wait here (with why and how often they failed) until they are
//! replayed or discarded; a parked stream's later events join them, in order. The file is
//! FORMAT.md §13.3.
//!
//! `DeadLetters::open` reads the file by the record files' torn-tail rule (a torn tail cut is
//! reported as `RecoveryAction::TruncatedTornTail`). `add` and `resolve` append one record each
//! (`log::records`) and change the in-memory queue only once it is durable: a letter added with
//! `OnFailure::Park` parks its stream, and a resolution unparks its stream once the stream has no
//! pending letter. `add` writes nothing when a pending letter has the same partition and
//! position (the event was handled again after a crash); if that letter was resolved in between,
//! the event gets a second one.
//!
//! Bounds: the queue holds at most `ProjectionOptions::max_dead_letters` pending letters in
//! memory (each about 100 bytes plus its stream id and error text); a partition whose next
//! letter would pass that stops, saying so, until letters are replayed or discarded. The file is
//! rewritten (atomically, FORMAT.md §3.2) with only the pending letters once resolved records
//! number at least `REWRITE_AFTER` and twice the pending ones, so it does not grow with letters
//! long since resolved. The
//! rewrite ends with the resolution of the highest id ever given, so ids are never reused.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::clock::now_nanos;
use crate::error::Result;
use crate::event::RecordedEvent;
use crate::format::dlq::{self as format, Letter, Outcome, Record};
use crate::io::Io;
use crate::log::records::{self, RecordLog};
use crate::report::Report;
use crate::store::seam::Log;

struct State {
    /// The queue's file; `None` for a shared queue.
    log: Option<RecordLog>,
    /// A shared queue (on the log's cluster): the log, the projection's name, and the id of
    /// the last record read back.
    shared: Option<(Arc<dyn Log>, String, u64)>,
    /// Unresolved dead letters, oldest first.
    pending: Vec<Letter>,
    next_id: u64,
    /// Records in the file that no longer matter (resolved letters and their resolutions).
    dead: usize,
    /// Set when a rewrite failed after its rename may have happened: `log` may then be a
    /// replaced file, and nothing more is written (every add and resolve fails) until the
    /// projection is registered again.
    broken: Option<crate::error::Error>,
}

/// What [`DeadLetters::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    /// The letter is durable.
    Written,
    /// A pending letter already holds the event (handled again after a crash).
    Known,
    /// The queue holds its bound of pending letters: nothing was written.
    Full(usize),
}

/// Resolved records past which (and past twice the pending letters' count) the file is
/// rewritten: each rewrite copies the pending letters once per that many resolutions, so its
/// cost per resolution stays constant.
const REWRITE_AFTER: usize = 64;

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("pending", &self.pending.len())
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

/// The dead-letter queue of one projection.
#[derive(Debug)]
pub(crate) struct DeadLetters {
    state: Mutex<State>,
    dir: std::path::PathBuf,
    io: Io,
    /// Most pending letters.
    max: usize,
    parked: RwLock<HashSet<String>>,
    /// `parked.len()`, read without the lock on the hot path.
    parked_len: AtomicUsize,
    /// Streams with pending letters are parked.
    park: bool,
}

impl DeadLetters {
    /// Opens (or creates) `dir/dlq`, by the torn-tail rule of every record file
    /// (`format::records`): a torn last record is cut off and reported; damage anywhere is
    /// an [`Error::Corruption`]. With `park`, streams with pending letters are parked.
    pub fn open(dir: &Path, io: &Io, report: &Report, park: bool, max: usize) -> Result<DeadLetters> {
        let path = dir.join(format::FILE_NAME);
        let (records, log) = match records::open(&path, io, report, &KIND)? {
            Some(opened) => (opened.records, opened.log),
            None => (Vec::new(), RecordLog::create(dir, format::FILE_NAME, &format::encode_header(), io)?),
        };
        let mut pending: Vec<Letter> = Vec::new();
        let mut next_id = 1;
        let count = records.len();
        for (_, r) in records {
            match r {
                Record::Letter(l) => {
                    next_id = next_id.max(l.id.saturating_add(1));
                    pending.push(l);
                }
                Record::Resolution { id, .. } => {
                    // A rewrite's last record names the highest id given (its letter gone).
                    next_id = next_id.max(id.saturating_add(1));
                    pending.retain(|l| l.id != id);
                }
            }
        }
        let dead = count - pending.len();
        let parked: HashSet<String> =
            if park { pending.iter().map(|l| l.stream.clone()).collect() } else { HashSet::new() };
        Ok(DeadLetters {
            parked_len: AtomicUsize::new(parked.len()),
            parked: RwLock::new(parked),
            state: Mutex::new(State { log: Some(log), shared: None, pending, next_id, dead, broken: None }),
            dir: dir.to_path_buf(),
            io: io.clone(),
            max: max.max(1),
            park,
        })
    }

    /// Opens the shared queue of projection `name` on `log`'s cluster (a log with
    /// [`Log::shared`]), reading every record it holds.
    pub fn open_shared(log: Arc<dyn Log>, name: &str, park: bool, max: usize) -> Result<DeadLetters> {
        let queue = DeadLetters {
            parked_len: AtomicUsize::new(0),
            parked: RwLock::new(HashSet::new()),
            state: Mutex::new(State {
                log: None,
                shared: Some((log, name.to_owned(), 0)),
                pending: Vec::new(),
                next_id: 1,
                dead: 0,
                broken: None,
            }),
            dir: std::path::PathBuf::new(),
            io: Io::with_faults(None),
            max: max.max(1),
            park,
        };
        queue.refresh()?;
        Ok(queue)
    }

    /// Reads the records of a shared queue that other processes (or this one) added since the
    /// last read: their letters join the pending ones, their resolutions remove them, and the
    /// parked streams follow. Nothing for a queue in a file (this process writes it alone).
    pub fn refresh(&self) -> Result<()> {
        let mut s = self.state.lock();
        self.refresh_locked(&mut s)
    }

    fn refresh_locked(&self, s: &mut State) -> Result<()> {
        let Some((log, name, seen)) = &mut s.shared else { return Ok(()) };
        let Some(shared) = log.shared() else { return Ok(()) };
        let records = shared.letters_after(name, *seen)?;
        if records.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut s.pending);
        for (id, record) in records {
            *seen = id;
            match record {
                Record::Letter(l) => {
                    if !pending.iter().any(|p| p.id == l.id) {
                        pending.push(l);
                    }
                }
                Record::Resolution { id, .. } => pending.retain(|l| l.id != id),
            }
        }
        pending.sort_by_key(|l| l.id);
        s.pending = pending;
        if self.park {
            let streams: HashSet<String> = s.pending.iter().map(|l| l.stream.clone()).collect();
            let mut parked = self.parked.write();
            *parked = streams;
            self.parked_len.store(parked.len(), Ordering::Release);
        }
        Ok(())
    }

    /// Appends one record: to the file, or to the shared queue (returning the id it got there).
    fn write(s: &mut State, record: SharedRecord<'_>) -> Result<Option<u64>> {
        if let Some((log, name, _)) = &s.shared {
            let shared = log.shared().ok_or(crate::error::Error::Closed)?;
            return match record {
                SharedRecord::Letter(l) => shared.add_letter(name, l).map(Some),
                SharedRecord::Resolution(id, outcome) => shared.resolve_letter(name, id, outcome).map(|()| None),
            };
        }
        let bytes = match record {
            SharedRecord::Letter(l) => format::encode_letter(l),
            SharedRecord::Resolution(id, outcome) => format::encode_resolution(id, now_nanos(), outcome),
        };
        match &mut s.log {
            Some(log) => log.append(&bytes).map(|()| None),
            None => Err(crate::error::Error::Closed),
        }
    }

    pub fn is_parked(&self, stream: &str) -> bool {
        self.parked_len.load(Ordering::Acquire) > 0 && self.parked.read().contains(stream)
    }

    /// Adds `e` durably (unless a pending letter holds it, or the queue is full); with `park`,
    /// parks its stream.
    pub fn add(&self, e: &RecordedEvent, attempts: u32, error: &str, park: bool) -> Result<Added> {
        let mut s = self.state.lock();
        if let Some(e) = &s.broken {
            return Err(e.clone());
        }
        // Letters other processes added (this partition's last owner's).
        self.refresh_locked(&mut s)?;
        // Handled again after a crash (the position had not moved past it yet): one letter.
        let known = s.pending.iter().any(|l| l.partition == e.partition && l.position == e.position);
        if known {
            return Ok(Added::Known);
        }
        if s.pending.len() >= self.max {
            return Ok(Added::Full(self.max));
        }

        let mut letter = Letter {
            id: s.next_id,
            time: now_nanos(),
            partition: e.partition,
            attempts,
            position: e.position,
            version: e.version,
            stream: e.stream_id.clone(),
            error: error.to_owned(),
        };
        match Self::write(&mut s, SharedRecord::Letter(&letter))? {
            Some(id) => letter.id = id,
            None => s.next_id += 1,
        }
        s.pending.push(letter);
        if park {
            let mut parked = self.parked.write();
            parked.insert(e.stream_id.clone());
            self.parked_len.store(parked.len(), Ordering::Release);
        }
        Ok(Added::Written)
    }

    /// The pending dead letters, oldest first.
    pub fn pending(&self) -> Vec<Letter> {
        self.state.lock().pending.clone()
    }

    pub fn len(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// Marks dead letter `id` resolved, durably; unparks its stream once it has none left.
    pub fn resolve(&self, id: u64, outcome: Outcome) -> Result<bool> {
        let mut s = self.state.lock();
        if let Some(e) = &s.broken {
            return Err(e.clone());
        }
        self.refresh_locked(&mut s)?;
        let Some(k) = s.pending.iter().position(|l| l.id == id) else { return Ok(false) };
        Self::write(&mut s, SharedRecord::Resolution(id, outcome))?;
        let letter = s.pending.remove(k);
        s.dead += 2;
        if s.log.is_some() && s.dead >= REWRITE_AFTER && s.dead > 2 * s.pending.len() {
            match self.rewrite(&s) {
                Ok(log) => {
                    s.log = Some(log);
                    s.dead = 0;
                }
                // Failed before its rename (the old file, whole, is still `dlq`): go on with
                // it. After it, `log` writes to a replaced file: stop writing.
                Err((e, renamed)) => {
                    if renamed {
                        s.broken = Some(e);
                    }
                }
            }
        }
        if !s.pending.iter().any(|l| l.stream == letter.stream) {
            let mut parked = self.parked.write();
            parked.remove(&letter.stream);
            self.parked_len.store(parked.len(), Ordering::Release);
        }
        Ok(true)
    }
}

impl DeadLetters {
    /// The file with only the pending letters, then the resolution of the highest id given.
    /// On failure, whether the new file may have replaced the old one.
    fn rewrite(&self, s: &State) -> std::result::Result<RecordLog, (crate::error::Error, bool)> {
        let mut bytes = format::encode_header().to_vec();
        for l in &s.pending {
            bytes.extend_from_slice(&format::encode_letter(l));
        }
        // Unless that letter is itself pending (then its record says as much).
        let last = s.next_id.saturating_sub(1);
        if last > 0 && s.pending.last().is_none_or(|l| l.id != last) {
            bytes.extend_from_slice(&format::encode_resolution(last, now_nanos(), Outcome::Discarded));
        }
        RecordLog::replace(&self.dir, format::FILE_NAME, &bytes, &self.io)
    }
}

/// A record to append, to a file or a shared queue.
enum SharedRecord<'a> {
    Letter(&'a Letter),
    Resolution(u64, Outcome),
}

/// How a dead-letter queue file reads.
const KIND: records::Kind<(usize, Record)> = records::Kind {
    min_record: format::MIN_RECORD,
    max_record: format::MAX_RECORD,
    scan: format::scan,
    valid: |b| format::decode(b).is_ok(),
};
