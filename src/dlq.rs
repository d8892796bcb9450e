//! A projection's dead-letter queue: durable, append-only, scanned on registration. Events a
//! projection could not handle wait here (with why and how often they failed) until they are
//! replayed or discarded; a parked stream's later events join them, in order.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::format::dlq::{self as format, Letter, Outcome, Record};
use crate::io::{FileHandle, Io};
use crate::store::now_nanos;

#[derive(Debug)]
struct State {
    file: FileHandle,
    end: u64,
    /// Unresolved dead letters, oldest first.
    pending: Vec<Letter>,
    next_id: u64,
}

/// The dead-letter queue of one projection.
#[derive(Debug)]
pub(crate) struct DeadLetters {
    state: Mutex<State>,
    parked: RwLock<HashSet<String>>,
    /// `parked.len()`, read without the lock on the hot path.
    parked_len: AtomicUsize,
}

impl DeadLetters {
    /// Opens (or creates) `dir/dlq`. A torn last record is cut off; damage before the end is
    /// an [`Error::Corruption`]. With `park`, streams with pending letters are parked.
    pub fn open(dir: &Path, io: &Io, park: bool) -> Result<DeadLetters> {
        let path = dir.join(format::FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                io.write_atomic(dir, format::FILE_NAME, &format::encode_header())?;
                format::encode_header().to_vec()
            }
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let (records, valid_end, damage) = format::scan(&bytes).map_err(|why| Error::corruption(&path, 0, why))?;
        let file = io.open_rw(&path)?;
        if let Some(why) = damage {
            // A torn append runs to the end of the file (or is followed by zeros); anything
            // else after the last valid record is damage to durable data.
            let rest = bytes.get(valid_end..).unwrap_or(&[]);
            let claimed = rest.get(4..8).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
            // Torn: the invalid record is the last thing in the file (cut short, or whole but
            // with a block that never reached the disk), or only zeros follow. A length no
            // record can have, or valid-looking bytes after the bad record, is damage.
            let torn = rest.len() < 8
                || (claimed <= format::MAX_RECORD && claimed >= rest.len())
                || rest.iter().all(|&b| b == 0);
            if !torn {
                return Err(Error::corruption(&path, valid_end as u64, why));
            }
            file.set_len(valid_end as u64)?;
            file.sync_data()?;
        }
        let mut pending: Vec<Letter> = Vec::new();
        let mut next_id = 1;
        for r in records {
            match r {
                Record::Letter(l) => {
                    next_id = next_id.max(l.id.saturating_add(1));
                    pending.push(l);
                }
                Record::Resolution { id, .. } => pending.retain(|l| l.id != id),
            }
        }
        let parked: HashSet<String> =
            if park { pending.iter().map(|l| l.stream.clone()).collect() } else { HashSet::new() };
        Ok(DeadLetters {
            parked_len: AtomicUsize::new(parked.len()),
            parked: RwLock::new(parked),
            state: Mutex::new(State { file, end: valid_end as u64, pending, next_id }),
        })
    }

    pub fn is_parked(&self, stream: &str) -> bool {
        self.parked_len.load(Ordering::Acquire) > 0 && self.parked.read().contains(stream)
    }

    fn append(&self, s: &mut State, bytes: &[u8]) -> Result<()> {
        let written = s.file.write_all_at(bytes, s.end).and_then(|()| s.file.sync_data());
        if let Err(e) = written {
            // Leave no partial record behind a later one.
            let _ = s.file.set_len(s.end);
            return Err(e);
        }
        s.end += bytes.len() as u64;
        Ok(())
    }

    /// Adds `e` durably; with `park`, parks its stream.
    pub fn add(&self, e: &RecordedEvent, attempts: u32, error: &str, park: bool) -> Result<()> {
        let mut s = self.state.lock();
        // Handled again after a crash (the position had not moved past it yet): one letter.
        let known = s.pending.iter().any(|l| l.partition == e.partition && l.position == e.position);
        if known {
            return Ok(());
        }
        let letter = Letter {
            id: s.next_id,
            time: now_nanos(),
            partition: e.partition,
            attempts,
            position: e.position,
            version: e.version,
            stream: e.stream_id.clone(),
            error: error.to_owned(),
        };
        self.append(&mut s, &format::encode_letter(&letter))?;
        s.next_id += 1;
        s.pending.push(letter);
        if park {
            let mut parked = self.parked.write();
            parked.insert(e.stream_id.clone());
            self.parked_len.store(parked.len(), Ordering::Release);
        }
        Ok(())
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
        let Some(k) = s.pending.iter().position(|l| l.id == id) else { return Ok(false) };
        self.append(&mut s, &format::encode_resolution(id, now_nanos(), outcome))?;
        let letter = s.pending.remove(k);
        if !s.pending.iter().any(|l| l.stream == letter.stream) {
            let mut parked = self.parked.write();
            parked.remove(&letter.stream);
            self.parked_len.store(parked.len(), Ordering::Release);
        }
        Ok(true)
    }
}
