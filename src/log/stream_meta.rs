//! Stream metadata: a partition's retention rules and soft deletes, durable before a change
//! returns (FORMAT.md §19), and what they hide.
//!
//! A change checks the expected metadata version, appends the record (write + fdatasync) and
//! only then takes effect, all under the file's lock. The newest record of each stream is kept
//! in memory (the file is read whole at open, like the tombstones); a partition with no
//! metadata answers [`StreamMetas::get`] with one atomic load, so reads of stores that never
//! set any pay nothing.
//!
//! What a record hides is decided at read time ([`Visible`]): versions below
//! `truncate_before`, all but the newest `max_count`, and events older than `max_age` at the
//! time of the read. Within one stream timestamps never decrease (a grow's copies keep their
//! original times, and are older than the stream's later events), so each of the three hides
//! a prefix of the stream: what is visible is every version from `from_version` on whose
//! timestamp is at least `min_time`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::event::ExpectedVersion;
use crate::format::stream_meta::{self as format, MetaRecord};
use crate::io::Io;
use crate::log::records::{self, RecordLog};
use crate::report::Report;

/// What of a stream a read shows: the versions from `from_version` on whose timestamps are at
/// least `min_time`. `Visible::ALL` for a stream without metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Visible {
    pub from_version: u64,
    pub min_time: u64,
}

impl Visible {
    pub const ALL: Visible = Visible { from_version: 0, min_time: 0 };

    /// Whether the event at `version`, written at `time`, is shown.
    pub fn shows(&self, version: u64, time: u64) -> bool {
        version >= self.from_version && time >= self.min_time
    }

    /// Whether anything at all may be hidden.
    pub fn hides_any(&self) -> bool {
        *self != Visible::ALL
    }
}

/// The rules of a record (copied out of it without its strings).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rule {
    pub truncate_before: u64,
    pub max_count: u64,
    pub max_age: u64,
}

impl Rule {
    pub fn of(rec: &MetaRecord) -> Rule {
        Rule { truncate_before: rec.truncate_before, max_count: rec.max_count, max_age: rec.max_age }
    }

    /// What the rule shows of a stream whose last version is `last`, read at `now` (ns).
    pub fn visible(&self, last: Option<u64>, now: u64) -> Visible {
        let mut from = self.truncate_before;
        if self.max_count > 0 {
            let len = last.map_or(0, |v| v.saturating_add(1));
            from = from.max(len.saturating_sub(self.max_count));
        }
        let min_time = if self.max_age > 0 { now.saturating_sub(self.max_age) } else { 0 };
        Visible { from_version: from, min_time }
    }
}

/// One partition's stream metadata.
#[derive(Debug)]
pub(crate) struct StreamMetas {
    partition: u32,
    dir: PathBuf,
    io: Io,
    /// The file (`None` until the first change creates it).
    file: Mutex<Option<RecordLog>>,
    newest: RwLock<HashMap<String, MetaRecord>>,
    /// `newest.len()`, read without the lock on the read paths.
    count: AtomicUsize,
}

impl StreamMetas {
    /// Reads `dir/stream-meta` if it exists, by the torn-tail rule of every record file
    /// (`format::records`): a torn last record is cut off and reported; damage anywhere else
    /// is an [`Error::Corruption`] (a lost record would show events a user hid).
    pub fn open(dir: &Path, partition: u32, io: Io, report: &Report) -> Result<StreamMetas> {
        let path = dir.join(format::FILE_NAME);
        let mut newest: HashMap<String, MetaRecord> = HashMap::new();
        let file = match records::open(&path, &io, report, &KIND)? {
            None => None,
            Some(opened) => {
                let header = format::check_header(&opened.bytes).unwrap_or(partition);
                if header != partition {
                    return Err(Error::corruption(&path, 12, format!("stream metadata of partition {header}")));
                }
                for m in opened.records {
                    match newest.get(&m.stream) {
                        Some(old) if old.meta_version >= m.meta_version => {}
                        _ => {
                            newest.insert(m.stream.clone(), m);
                        }
                    }
                }
                Some(opened.log)
            }
        };
        Ok(StreamMetas {
            partition,
            dir: dir.to_path_buf(),
            io,
            file: Mutex::new(file),
            count: AtomicUsize::new(newest.len()),
            newest: RwLock::new(newest),
        })
    }

    /// Whether no stream of the partition has metadata.
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// The newest record of `stream`, if it has one.
    pub fn get(&self, stream: &str) -> Option<MetaRecord> {
        if self.is_empty() {
            return None;
        }
        self.newest.read().get(stream).cloned()
    }

    /// Runs `f` on the newest record of `stream` (without copying it), if it has one.
    pub fn with<T>(&self, stream: &str, f: impl FnOnce(&MetaRecord) -> T) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        self.newest.read().get(stream).map(f)
    }

    /// Every stream's newest record.
    pub fn all(&self) -> Vec<MetaRecord> {
        self.newest.read().values().cloned().collect()
    }

    /// Writes the record `change` makes of `stream`'s current one, if its metadata version
    /// satisfies `expected`, durably before it takes effect. Returns the new record.
    pub fn change(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        now: u64,
        change: impl FnOnce(Option<&MetaRecord>) -> Result<MetaRecord>,
    ) -> Result<MetaRecord> {
        let mut file = self.file.lock();
        let current = self.newest.read().get(stream).cloned();
        let actual = current.as_ref().map(|m| m.meta_version);
        if !expected.matches(actual) {
            return Err(Error::WrongMetadataVersion { stream: stream.to_owned(), expected, actual });
        }
        let mut rec = change(current.as_ref())?;
        rec.stream = stream.to_owned();
        // A file can only hold the last version if it was made by hand; refuse, not wrap.
        rec.meta_version = match actual {
            None => 0,
            Some(v) => v.checked_add(1).ok_or_else(|| Error::InvalidMetadata {
                stream: stream.to_owned(),
                reason: "its metadata is at the last version a record can hold".into(),
            })?,
        };
        rec.written_at = now;
        self.write(&mut file, &rec)?;
        Ok(rec)
    }

    /// Writes `rec` as it is unless the partition holds a record of its stream at least as
    /// new (a grow moving a stream's metadata; idempotent). Returns whether it wrote.
    pub fn put(&self, rec: &MetaRecord) -> Result<bool> {
        let mut file = self.file.lock();
        if self.newest.read().get(&rec.stream).is_some_and(|m| m.meta_version >= rec.meta_version) {
            return Ok(false);
        }
        self.write(&mut file, rec)?;
        Ok(true)
    }

    fn write(&self, file: &mut Option<RecordLog>, rec: &MetaRecord) -> Result<()> {
        let log = match file {
            Some(log) => log,
            empty => {
                let header = format::encode_header(self.partition);
                empty.insert(RecordLog::create(&self.dir, format::FILE_NAME, &header, &self.io)?)
            }
        };
        log.append(&format::encode(rec))?;
        let mut newest = self.newest.write();
        newest.insert(rec.stream.clone(), rec.clone());
        self.count.store(newest.len(), Ordering::Release);
        Ok(())
    }
}

/// How a stream metadata file reads.
const KIND: records::Kind<MetaRecord> = records::Kind {
    min_record: format::MIN_RECORD,
    max_record: format::MAX_RECORD,
    scan: format::scan,
    valid: |b| format::decode(b).is_ok(),
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The pinned file of FORMAT.md §19 (`tests/fixtures/v1/stream-meta.bin`, partition 3:
    /// `order-7` and `cart-1`, each changed once, `cart-1` soft-deleted at version 11), opened:
    /// each stream's newest record is in force, and its rule hides what it says.
    #[test]
    fn the_pinned_file_opens_with_each_streams_newest_record() {
        let pinned = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1/stream-meta.bin")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format::FILE_NAME), &pinned).unwrap();
        let report = Report::default();
        let metas = StreamMetas::open(dir.path(), 3, Io::default(), &report).unwrap();
        assert!(report.all().is_empty());
        let order = metas.get("order-7").unwrap();
        let cart = metas.get("cart-1").unwrap();
        assert_eq!((order.meta_version, order.max_count), (1, 50));
        assert_eq!(order.custom, br#"{"owner":"billing"}"#);
        assert_eq!((cart.meta_version, cart.truncate_before), (1, 12));
        assert!(cart.deleted_at > 0);
        // cart-1, soft-deleted at version 11, shows nothing of its 12 events, and nothing
        // older than 30 days; order-7 of 120 shows its newest 50.
        let vis = Rule::of(&cart).visible(Some(11), cart.written_at);
        assert_eq!((vis.from_version, vis.min_time), (12, cart.written_at - 30 * 86_400 * 1_000_000_000));
        assert_eq!(Rule::of(&order).visible(Some(119), 0).from_version, 70);
        // Another partition's file is refused.
        assert!(StreamMetas::open(dir.path(), 4, Io::default(), &report).is_err());
    }
}
