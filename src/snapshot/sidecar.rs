//! One partition's snapshot sidecar as the engine holds it: the latest record of every
//! stream indexed in memory (by scanning the file on first use), appended to by the
//! snapshotter, rewritten without superseded records, and erased of deleted streams'
//! snapshots by compaction. The format and protocols are FORMAT.md §12.
//!
//! Snapshots are derived data: losing one costs a replay, never an event. So damage to a
//! sidecar is reported and cut away rather than refused, and a failed sidecar fsync stops
//! snapshots of that partition (until reopen) without touching its log.
//!
//! The sidecar is loaded on first use (`Sidecar::load`). If the record a damaged tail cut was a
//! `REPLACES` one, that may be the unusable record it replaced: the next load ignores it again
//! and replaces it again. An I/O error while loading, cutting or replacing the header sets the
//! sidecar aside: `RecoveryAction::SnapshotsUnavailable` is reported once, loads replay
//! (`SnapshotUse::None`), the snapshots queued for it are counted as failed, and the next
//! `flush_snapshots` returns an error; the first use after reopen reads the file again.
//!
//! Appends write through `log::records::append_at`. The write and its `fdatasync` run without
//! the state lock (loads go on reading indexed records meanwhile) but under the writer lock:
//! once the sidecar is loaded only its writer changes it, and nothing past the old end is
//! indexed before the `fdatasync` has returned. A failed `fdatasync` or cut marks the sidecar
//! failed: later rounds write nothing to it. A rewrite copies the live records without the state
//! lock too; loads keep reading the old file through its open handle meanwhile, and once the new
//! file is renamed in place it is opened and the index pointed into it before the directory is
//! fsynced. Compaction's erasure of deleted streams' snapshots is a rewrite under the same
//! writer lock.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::clock::now_nanos;
use crate::error::{Error, Result};
use crate::format::records::{Tail, judge_tail};
use crate::format::snapshot::{self as format, Meta, ScanEnd};
use crate::io::{FileHandle, Io};
use crate::log::records;
use crate::report::{RecoveryAction, Report};
use crate::snapshot::{Pending, Stored};

/// Most bytes after a sidecar's last valid record that are read to judge them.
const VERDICT_BYTES: u64 = 4 << 20;

/// Where the latest snapshot of a stream is.
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u64,
    len: u32,
    version: u64,
    schema: u32,
}

impl Entry {
    /// Whether a later record (`meta`) supersedes this one: a newer version does, so does the
    /// same version under another schema (a re-snapshot after a schema change), and so does a
    /// record flagged as replacing an unusable snapshot (whatever its version).
    fn superseded_by(&self, meta: &Meta) -> bool {
        meta.replaces || meta.version > self.version || (meta.version == self.version && meta.schema != self.schema)
    }
}

#[derive(Debug)]
struct State {
    /// `None` until the first snapshot is written (the file is created then).
    file: Option<Arc<FileHandle>>,
    /// Where the next record goes.
    end: u64,
    index: HashMap<Box<str>, Entry>,
    /// Bytes of the records in `index`.
    live: u64,
    rewrites: u64,
    /// Why writing stopped, once it has.
    failed: Option<String>,
}

impl State {
    fn dead_bytes(&self) -> u64 {
        self.end.saturating_sub(format::HEADER_LEN as u64 + self.live)
    }
}

/// One partition's snapshot sidecar.
#[derive(Debug)]
pub(crate) struct Sidecar {
    partition: u32,
    dir: PathBuf,
    pub(crate) path: PathBuf,
    io: Io,
    report: Report,
    state: Mutex<Option<State>>,
    /// Held while the file is written (appends and rewrites by the snapshotter, erasure by
    /// compaction): writes run without the state lock, so readers keep reading, and only
    /// the holder of this lock changes the file.
    writer: Mutex<()>,
}

impl Sidecar {
    pub fn new(dir: &Path, partition: u32, io: Io, report: Report) -> Sidecar {
        Sidecar {
            partition,
            dir: dir.to_path_buf(),
            path: dir.join(format::FILE_NAME),
            io,
            report,
            state: Mutex::new(None),
            writer: Mutex::new(()),
        }
    }

    pub(crate) fn note(&self, action: RecoveryAction) {
        self.report.push(action);
    }

    /// Runs `f` on the loaded state, scanning the file first if this is the first use. If
    /// the scan fails (an I/O error), the sidecar is set aside until reopen: no snapshot of
    /// the partition is used or taken, and the failure is reported once.
    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut guard = self.state.lock();
        let state = match &mut *guard {
            Some(s) => s,
            empty => {
                let loaded = self.scan_file().unwrap_or_else(|e| {
                    self.note(RecoveryAction::SnapshotsUnavailable { path: self.path.clone(), error: e.to_string() });
                    State {
                        file: None,
                        end: format::HEADER_LEN as u64,
                        index: HashMap::new(),
                        live: 0,
                        rewrites: 0,
                        failed: Some(format!("reading the sidecar failed: {e}")),
                    }
                });
                empty.insert(loaded)
            }
        };
        f(state)
    }

    /// Reads the sidecar now if it was not yet (what its first use would do).
    pub fn load(&self) {
        let _ = self.with_state(|_| Ok(()));
    }

    /// Opens and scans the sidecar. Damage is cut away (and reported); only an I/O error
    /// fails, and then the next use tries again.
    fn scan_file(&self) -> Result<State> {
        let mut state = State {
            file: None,
            end: format::HEADER_LEN as u64,
            index: HashMap::new(),
            live: 0,
            rewrites: 0,
            failed: None,
        };
        let file = match self.io.open_rw(&self.path) {
            Ok(f) => f,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(state),
            Err(e) => return Err(e),
        };
        let file_len = file.len()?;
        let mut reader = BufReader::with_capacity(1 << 20, file.std());
        let mut head = vec![0u8; format::HEADER_LEN.min(file_len as usize)];
        reader.read_exact(&mut head).map_err(|e| Error::io("read", &self.path, e))?;
        let header = match format::decode_header(&head) {
            Ok(h) if h.partition == self.partition => Ok(h),
            Ok(h) => Err(format!("sidecar of partition {} found in partition {}", h.partition, self.partition)),
            // Derived data: whatever is wrong with the header, the file is replaced.
            Err(m) => Err(m.what),
        };
        let header = match header {
            Ok(h) => h,
            Err(reason) => {
                // The whole file is untrusted: start a new, empty one in its place.
                drop(reader);
                drop(file);
                self.create_file(&mut state, 0)?;
                self.note(RecoveryAction::SnapshotsDiscarded {
                    path: self.path.clone(),
                    offset: 0,
                    discarded_bytes: file_len,
                    reason,
                });
                return Ok(state);
            }
        };
        state.rewrites = header.rewrites;
        let mut index: HashMap<Box<str>, Entry> = HashMap::new();
        let end = format::scan(&mut reader, file_len, |offset, rec| {
            let entry = Entry { offset, len: rec.len as u32, version: rec.meta.version, schema: rec.meta.schema };
            match index.get_mut(rec.stream) {
                Some(old) if old.superseded_by(&rec.meta) => *old = entry,
                Some(_) => {}
                None => {
                    index.insert(rec.stream.into(), entry);
                }
            }
        })
        .map_err(|e| Error::io("read", &self.path, e))?;
        drop(reader);
        state.live = index.values().map(|e| u64::from(e.len)).sum();
        state.index = index;
        match end {
            ScanEnd::Clean { data_end } => state.end = data_end,
            ScanEnd::Damaged { data_end, reason } => {
                // Records past the damage cannot be trusted; appending after it would hide
                // every later record from the next scan. Cut it off, torn write or not (the
                // record files' rule says which, for the report).
                let reason = format!("{reason}; {}", self.verdict(&file, data_end, file_len));
                file.set_len(data_end)?;
                file.sync_data()?;
                state.end = data_end;
                self.note(RecoveryAction::SnapshotsDiscarded {
                    path: self.path.clone(),
                    offset: data_end,
                    discarded_bytes: file_len - data_end,
                    reason,
                });
            }
        }
        state.file = Some(Arc::new(file));
        Ok(state)
    }

    /// What the record files' torn-tail rule (`format::records`) says of the bytes from
    /// `data_end` on (at most [`VERDICT_BYTES`] of them are read).
    fn verdict(&self, file: &FileHandle, data_end: u64, file_len: u64) -> String {
        let n = (file_len - data_end).min(VERDICT_BYTES);
        let mut rest = vec![0u8; n as usize];
        if file.read_exact_at(&mut rest, data_end).is_err() {
            return "the bytes after the last valid record could not be read".into();
        }
        let valid = |b: &[u8]| {
            format::claimed_len(b).and_then(|len| b.get(..len)).is_some_and(|r| format::decode_record(r).is_ok())
        };
        let min = format::RECORD_HEADER_LEN + 8;
        let verdict = match judge_tail(data_end, &rest, min, format::MAX_RECORD_LEN, valid) {
            Tail::Torn(why) => format!("a torn write ({why})"),
            Tail::Damaged(why) => format!("damage ({why})"),
        };
        if n < file_len - data_end { format!("{verdict}, judged on its first {n} bytes") } else { verdict }
    }

    /// Replaces the sidecar with an empty one (header only), durably.
    fn create_file(&self, state: &mut State, rewrites: u64) -> Result<()> {
        let header = format::Header { partition: self.partition, created: now_nanos(), rewrites };
        self.io.write_atomic(&self.dir, format::FILE_NAME, &format::encode_header(&header))?;
        state.file = Some(Arc::new(self.io.open_rw(&self.path)?));
        state.end = format::HEADER_LEN as u64;
        state.rewrites = rewrites;
        Ok(())
    }

    /// The version the latest snapshot of `stream` covers, if it has one.
    pub fn latest_version(&self, stream: &str) -> Result<Option<u64>, String> {
        self.with_state(|s| Ok(s.index.get(stream).map(|e| e.version))).map_err(|e| e.to_string())
    }

    /// The latest snapshot of `stream`, if any. `Err` carries why a snapshot that the index
    /// lists could not be used (an I/O error or damage); the caller falls back to a replay.
    pub fn read(&self, stream: &str) -> Result<Option<Stored>, String> {
        let found =
            self.with_state(|s| Ok(s.index.get(stream).copied().zip(s.file.clone()))).map_err(|e| e.to_string())?;
        let Some((entry, file)) = found else { return Ok(None) };
        let mut buf = vec![0u8; entry.len as usize];
        let checked = file.read_exact_at(&mut buf, entry.offset).map_err(|e| e.to_string()).and_then(|()| {
            let rec = format::decode_record(&buf)?;
            if rec.stream != stream || rec.meta.version != entry.version {
                return Err(format!("record is not the snapshot of {stream:?} the index expects"));
            }
            Ok(Stored { meta: rec.meta, state: rec.state.to_vec() })
        });
        if let Err(reason) = &checked {
            self.note(RecoveryAction::SnapshotUnreadable {
                path: self.path.clone(),
                offset: entry.offset,
                stream: stream.to_owned(),
                reason: reason.clone(),
            });
        }
        checked.map(Some)
    }

    /// Appends `records` (one write, one `fdatasync`), skipping any that an existing snapshot
    /// of the same stream supersedes. Returns how many were written.
    pub(crate) fn append(&self, records: &[Pending]) -> Result<u64> {
        // Only the holder of the writer lock changes the state, so the write and the fdatasync
        // run without the state lock (loads keep reading meanwhile) and the index is updated
        // after them.
        let _writer = self.writer.lock();
        let (file, end, buf, placed) = self.with_state(|s| {
            if let Some(why) = &s.failed {
                return Err(stopped(&self.path, why));
            }
            let mut buf = Vec::new();
            let mut placed = Vec::new();
            for r in records {
                if s.index.get(r.stream.as_str()).is_some_and(|e| !e.superseded_by(&r.meta)) {
                    continue;
                }
                let offset = s.end + buf.len() as u64;
                let rec = format::encode_record(&r.stream, &r.meta, &r.state);
                placed.push((r, offset, rec.len()));
                buf.extend_from_slice(&rec);
            }
            if !placed.is_empty() && s.file.is_none() {
                self.create_file(s, 0)?;
            }
            Ok((s.file.clone(), s.end, buf, placed))
        })?;
        let Some(file) = file.filter(|_| !placed.is_empty()) else { return Ok(0) };
        if let Err(failed) = records::append_at(&file, end, &buf) {
            // The failed round was cut back; if what the file holds is unknown (its fdatasync
            // failed, or the cut did), stop writing it.
            if failed.unknown
                && let Some(s) = self.state.lock().as_mut()
            {
                s.failed = Some(failed.error.to_string());
            }
            return Err(failed.error);
        }
        let mut guard = self.state.lock();
        let Some(s) = guard.as_mut() else { return Ok(0) };
        s.end = end + buf.len() as u64;
        for (r, offset, len) in &placed {
            let entry = Entry { offset: *offset, len: *len as u32, version: r.meta.version, schema: r.meta.schema };
            match s.index.entry(r.stream.as_str().into()) {
                MapEntry::Occupied(mut o) => {
                    if o.get().superseded_by(&r.meta) {
                        s.live = s.live.saturating_sub(u64::from(o.get().len)) + *len as u64;
                        o.insert(entry);
                    }
                }
                MapEntry::Vacant(v) => {
                    s.live += *len as u64;
                    v.insert(entry);
                }
            }
        }
        Ok(placed.len() as u64)
    }

    /// Whether writing stopped (after a failed fsync), until the store is reopened.
    pub(crate) fn stopped(&self) -> Option<Error> {
        self.state.lock().as_ref().and_then(|s| s.failed.as_ref().map(|why| stopped(&self.path, why)))
    }

    /// Whether superseded records take at least `min_dead` bytes and at least as much as the
    /// live ones.
    pub(crate) fn wants_rewrite(&self, min_dead: u64) -> bool {
        self.state
            .lock()
            .as_ref()
            .is_some_and(|s| s.failed.is_none() && s.file.is_some() && s.dead_bytes() >= min_dead.max(s.live))
    }

    /// Rewrites the sidecar with only the latest record of each stream: a temporary file,
    /// fsync, rename over the sidecar, fsync the directory. Only the snapshotter changes the
    /// state, so the copy runs without the lock and readers keep reading the old file.
    pub(crate) fn rewrite(&self) -> Result<()> {
        let _writer = self.writer.lock();
        self.rewrite_locked(&|_| false)
    }

    /// Erases the snapshots of the streams `deleted` says are deleted, by rewriting the
    /// sidecar without them (durably, as any rewrite). Returns how many were erased.
    pub fn erase(&self, deleted: &dyn Fn(&str) -> bool) -> Result<u64> {
        let _writer = self.writer.lock();
        let n = self.with_state(|s| {
            if let Some(why) = &s.failed {
                return Err(stopped(&self.path, why));
            }
            Ok(s.index.keys().filter(|k| deleted(k)).count() as u64)
        })?;
        if n > 0 {
            self.rewrite_locked(deleted)?;
        }
        Ok(n)
    }

    /// [`Sidecar::rewrite`], leaving out the streams `drop` names; the writer lock is held.
    fn rewrite_locked(&self, drop: &dyn Fn(&str) -> bool) -> Result<()> {
        let (file, mut entries, rewrites) = {
            let guard = self.state.lock();
            let Some(s) = guard.as_ref() else { return Ok(()) };
            let Some(file) = s.file.clone() else { return Ok(()) };
            let entries: Vec<(Box<str>, Entry)> = s.index.iter().map(|(k, v)| (k.clone(), *v)).collect();
            (file, entries, s.rewrites + 1)
        };
        entries.retain(|(stream, _)| !drop(stream));
        entries.sort_unstable_by_key(|(_, e)| e.offset);
        let tmp_name = format!("{}.tmp", format::FILE_NAME);
        let tmp_path = self.dir.join(&tmp_name);
        let result = (|| -> Result<(FileHandle, HashMap<Box<str>, Entry>, u64)> {
            let tmp = self.io.create(&tmp_path)?;
            let header = format::Header { partition: self.partition, created: now_nanos(), rewrites };
            let mut out = format::encode_header(&header).to_vec();
            let mut at = 0u64;
            let mut index = HashMap::with_capacity(entries.len());
            let mut buf = Vec::new();
            for (stream, e) in entries {
                buf.resize(e.len as usize, 0);
                file.read_exact_at(&mut buf, e.offset)?;
                let checked = format::decode_record(&buf).and_then(|rec| {
                    if rec.stream != &*stream || rec.meta.version != e.version {
                        return Err(format!("record is not the snapshot of {stream:?} the index expects"));
                    }
                    Ok(())
                });
                if let Err(reason) = checked {
                    // Damaged since it was indexed: do not carry it over.
                    self.note(RecoveryAction::SnapshotUnreadable {
                        path: self.path.clone(),
                        offset: e.offset,
                        stream: stream.to_string(),
                        reason,
                    });
                    continue;
                }
                let offset = at + out.len() as u64;
                out.extend_from_slice(&buf);
                index.insert(stream, Entry { offset, ..e });
                if out.len() >= 1 << 20 {
                    tmp.write_all_at(&out, at)?;
                    at += out.len() as u64;
                    out.clear();
                }
            }
            tmp.write_all_at(&out, at)?;
            at += out.len() as u64;
            tmp.sync_all()?;
            Ok((tmp, index, at))
        })();
        let (_tmp, index, end) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = self.io.remove_file(&tmp_path);
                return Err(e);
            }
        };
        if let Err(e) = self.io.rename(&tmp_path, &self.path) {
            let _ = self.io.remove_file(&tmp_path);
            return Err(e);
        }
        let new_file = self.io.open_rw(&self.path);
        let mut guard = self.state.lock();
        let Some(s) = guard.as_mut() else { return Ok(()) };
        match new_file {
            Ok(f) => {
                s.live = index.values().map(|e| u64::from(e.len)).sum();
                s.file = Some(Arc::new(f));
                s.index = index;
                s.end = end;
                s.rewrites = rewrites;
            }
            Err(e) => {
                s.failed = Some(e.to_string());
                return Err(e);
            }
        }
        if let Err(e) = self.io.sync_dir(&self.dir) {
            // Which file the directory holds after a crash is unknown: stop writing.
            s.failed = Some(e.to_string());
            return Err(e);
        }
        Ok(())
    }

    /// Size of the sidecar file (0 if there is none yet) and how many streams it covers.
    pub fn sizes(&self) -> (u64, u64) {
        self.state.lock().as_ref().map_or((0, 0), |s| (if s.file.is_some() { s.end } else { 0 }, s.index.len() as u64))
    }
}

fn stopped(path: &Path, why: &str) -> Error {
    Error::io(
        "write snapshot",
        path,
        std::io::Error::other(format!("snapshots of this partition stopped until reopen after: {why}")),
    )
}
