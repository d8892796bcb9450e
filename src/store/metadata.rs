//! Stream metadata: retention rules (`$maxAge`, `$maxCount`, `$tb`) and soft deletes, stored
//! per partition (`log::stream_meta`, FORMAT.md §19) and honoured by every read of a
//! stream's events.
//!
//! A change is made like a delete: under the senders' read lock, so that a grow's move of the
//! stream's metadata (at its cutover, under the write lock) never misses it. It is written in
//! the partition the stream lives in, then in each partition a grow moved it from (where its
//! older history stays), so that compaction there reclaims what the rules hide as well.

use crate::clock::now_nanos;
use crate::error::{Error, Result};
use crate::event::{ExpectedVersion, StreamMetaRecord, StreamMetadata};
use crate::format::stream_meta::{MAX_CUSTOM, MetaRecord};
use crate::log::stream_meta::Visible;
use crate::router;

use super::{Local, Store};

impl Local {
    pub(crate) fn set_stream_metadata(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        metadata: StreamMetadata,
    ) -> Result<StreamMetaRecord> {
        if metadata.custom.len() > MAX_CUSTOM {
            return Err(Error::InvalidMetadata {
                stream: stream.to_owned(),
                reason: format!("{} bytes of custom metadata, at most {MAX_CUSTOM} are allowed", metadata.custom.len()),
            });
        }
        if metadata.max_count == Some(0) {
            return Err(Error::InvalidMetadata {
                stream: stream.to_owned(),
                reason: "max_count 0 would hide every event: soft_delete or truncate_before say that".into(),
            });
        }
        let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.change_metadata(stream, expected, |current| MetaRecord {
            // A soft delete is kept: what it hid stays hidden.
            truncate_before: metadata
                .truncate_before
                .unwrap_or(0)
                .max(current.filter(|c| c.deleted_at > 0).map_or(0, |c| c.truncate_before)),
            max_count: metadata.max_count.unwrap_or(0),
            max_age: metadata.max_age.map_or(0, nanos),
            deleted_at: current.map_or(0, |c| c.deleted_at),
            custom: metadata.custom,
            ..MetaRecord::default()
        })
    }

    pub(crate) fn stream_metadata(&self, stream: &str) -> Result<Option<StreamMetaRecord>> {
        let (_, p) = self.route(stream)?;
        Ok(p.metas.get(stream).as_ref().map(MetaRecord::public))
    }

    pub(crate) fn soft_delete(&self, stream: &str, expected: ExpectedVersion) -> Result<StreamMetaRecord> {
        let last = self.stream_version(stream)?;
        if !expected.matches(last) {
            return Err(Error::WrongExpectedVersion { stream: stream.to_owned(), expected, actual: last });
        }
        let at = now_nanos();
        self.change_metadata(stream, ExpectedVersion::Any, |current| {
            let keep = current.cloned().unwrap_or_default();
            let truncate_before = keep.truncate_before.max(last.map_or(0, |v| v + 1));
            MetaRecord { truncate_before, deleted_at: at, ..keep }
        })
    }

    pub(crate) fn is_soft_deleted(&self, stream: &str) -> Result<bool> {
        let (hash, p) = self.route(stream)?;
        let Some(tb) = p.metas.with(stream, |m| (m.deleted_at > 0).then_some(m.truncate_before)).flatten() else {
            return Ok(false);
        };
        Ok(p.last_version(stream, hash)?.is_none_or(|last| last < tb))
    }

    /// What a read of `stream` shows now: nothing for a deleted stream, else what its
    /// metadata keeps.
    pub(crate) fn visibility(&self, stream: &str) -> Result<Visible> {
        let (hash, p) = self.route(stream)?;
        if p.tombstones.deleted_at(stream).is_some() {
            return Ok(Visible { from_version: u64::MAX, min_time: u64::MAX });
        }
        p.visibility(stream, hash)
    }

    /// [`Store::visibility`] for a reader of durable events only (subscriptions).
    pub(crate) fn durable_visibility(&self, stream: &str) -> Result<Visible> {
        let (hash, p) = self.route(stream)?;
        if p.tombstones.deleted_at(stream).is_some() {
            return Ok(Visible { from_version: u64::MAX, min_time: u64::MAX });
        }
        p.durable_visibility(stream, hash)
    }

    /// Whether some stream is deleted or has metadata: if not, every event is visible, and
    /// a reader of partitions need not ask about each stream.
    pub(crate) fn hides_any(&self) -> bool {
        self.shared.parts().iter().any(|p| !p.metas.is_empty() || p.tombstones.count() > 0)
    }

    fn change_metadata(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        make: impl FnOnce(Option<&MetaRecord>) -> MetaRecord,
    ) -> Result<StreamMetaRecord> {
        let _routing = self.senders.read();
        let (_, p) = self.route(stream)?;
        self.shared.check_appends(p.id)?;
        if p.tombstones.deleted_at(stream).is_some() {
            return Err(Error::StreamDeleted { stream: stream.to_owned() });
        }
        let rec = p.metas.change(stream, expected, now_nanos(), |current| Ok(make(current)))?;
        let hash = self.route_hash(stream);
        let earlier: Vec<u32> = {
            let m = self.shared.manifest.lock();
            m.epochs.iter().map(|e| router::jump_consistent_hash(hash, e.from)).filter(|&id| id != p.id).collect()
        };
        for id in earlier {
            self.partition(id)?.metas.put(&rec)?;
        }
        Ok(rec.public())
    }
}

impl Store {
    /// Sets the retention rules and custom metadata of `stream`, if its metadata version
    /// satisfies `expected` (`NoStream`: it has none yet; `Exact(v)`: it is at version `v`;
    /// `Any`), durably before this returns. Returns the new record; its `version` is what the
    /// next change expects. The stream need not have events. From the moment this returns,
    /// every read of the stream shows only what the rules keep (see [`StreamMetadata`]); a
    /// soft delete is kept, and so is what it hid (the new `truncate_before` is at least the
    /// delete's). `max_count: Some(0)` is refused ([`Error::InvalidMetadata`], as are custom
    /// bytes over the limit).
    ///
    /// ```
    /// use strata::{EventData, ExpectedVersion, Options, Store, StreamMetadata};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// let ticks: Vec<_> = (0..10).map(|i| EventData::new("Tick", i.to_string())).collect();
    /// store.append("sensor-1", ExpectedVersion::NoStream, &ticks)?;
    /// let meta = StreamMetadata { max_count: Some(3), ..Default::default() };
    /// let rec = store.set_stream_metadata("sensor-1", ExpectedVersion::NoStream, meta)?;
    /// assert_eq!(rec.version, 0);
    /// let left: Vec<u64> = store.read_stream("sensor-1", 0, 100)?.iter().map(|e| e.version).collect();
    /// assert_eq!(left, [7, 8, 9]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_stream_metadata(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        metadata: StreamMetadata,
    ) -> Result<StreamMetaRecord> {
        self.local("stream metadata")?.set_stream_metadata(stream, expected, metadata)
    }

    /// The metadata of `stream`, if any was set.
    pub fn stream_metadata(&self, stream: &str) -> Result<Option<StreamMetaRecord>> {
        self.local("stream metadata")?.stream_metadata(stream)
    }

    /// Soft-deletes `stream`, if its last version satisfies `expected` (as an append's does):
    /// from the moment this returns it reads as empty everywhere (stream reads, loads,
    /// subscriptions, [`Store::streams`]) and compaction may reclaim its events, but it can be
    /// recreated: an append continues its versions (expect its last version, or `Any`), and
    /// reads then show the events from that append on, as in KurrentDB. It is recorded as
    /// stream metadata (`truncate_before` raised to one past its last version), which keeps
    /// its other rules. [`Store::delete_stream`] is the hard delete, for good.
    ///
    /// ```
    /// # use strata::{EventData, ExpectedVersion, Options, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
    /// store.append("cart-9", ExpectedVersion::NoStream, &[EventData::new("Added", "x")])?;
    /// store.soft_delete("cart-9", ExpectedVersion::Exact(0))?;
    /// assert!(store.read_stream("cart-9", 0, 10)?.is_empty());
    /// assert!(store.is_soft_deleted("cart-9")?);
    /// let r = store.append("cart-9", ExpectedVersion::Exact(0), &[EventData::new("Added", "y")])?;
    /// assert_eq!(r.first_version, 1);
    /// assert_eq!(store.read_stream("cart-9", 0, 10)?.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn soft_delete(&self, stream: &str, expected: ExpectedVersion) -> Result<StreamMetaRecord> {
        self.local("soft_delete")?.soft_delete(stream, expected)
    }

    /// Whether `stream` is soft-deleted and has not been appended to since.
    pub fn is_soft_deleted(&self, stream: &str) -> Result<bool> {
        match self.local_opt() {
            Some(l) => l.is_soft_deleted(stream),
            // Nothing can be soft-deleted without stream metadata.
            None => Ok(false),
        }
    }
}
