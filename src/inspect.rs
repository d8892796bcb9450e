//! Reading strata's files directly, without opening a store: what `strata dump` prints and
//! `strata stats` summarises. Nothing here writes, takes the store's lock or repairs
//! anything, so it is safe on a store another process has open (it may then see a write in
//! progress as a torn tail). Damage is described, not raised: a dump shows everything up to
//! it and says where and why it stopped.
//!
//! ```
//! # use strata::{EventData, ExpectedVersion, Options, Store};
//! # let dir = tempfile::tempdir()?;
//! # let store = Store::open(dir.path(), Options::default().create_if_missing(true).partitions(1))?;
//! store.append("order-1", ExpectedVersion::Any, &[EventData::new("Placed", b"{}".to_vec())])?;
//! let segment = dir.path().join("p00000").join("00000000000000000000.log");
//! match strata::inspect::dump(&segment, &strata::inspect::Filter::default())? {
//!     strata::inspect::Dump::Segment { batches, .. } => assert_eq!(batches[0].stream, "order-1"),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::event::{EventId, StreamMetaRecord};
use crate::format::Aligned;
use crate::format::archive::{self as arc, AuditRecord, Reason};
use crate::format::batch::{self, BatchView, EventRef};
use crate::format::index::PositionEntry;
use crate::format::{checkpoint, dlq, index, manifest, poison, segment, snapshot, stream_meta, tombstone};

/// One record of an active segment's index journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecordInfo {
    /// Segment byte offsets it covers, `[from, to)`.
    pub offsets: (u64, u64),
    /// Positions it covers, `[from, to)`.
    pub positions: (u64, u64),
    /// Batches listed.
    pub batches: u64,
    /// Distinct streams among them.
    pub streams: u64,
}

/// What a file is, by its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileKind {
    /// A segment (`.log`).
    Segment,
    /// A sealed segment's index (`.idx`).
    Index,
    /// The active segment's index journal (`.aix`).
    ActiveIndex,
    /// An archive (`.arc`).
    Archive,
    /// A snapshot sidecar (`snapshots.snap`).
    Snapshots,
    /// A partition's deleted streams (`tombstones`).
    Tombstones,
    /// A partition's stream metadata and soft deletes (`stream-meta`).
    StreamMeta,
    /// The store's manifest.
    Manifest,
    /// A projection's checkpoints.
    Checkpoints,
    /// A projection's dead-letter queue.
    DeadLetters,
    /// A poisoned writer's marker (`POISON`).
    PoisonMarker,
    /// Not a strata file.
    Unknown,
}

/// The kind of file whose first bytes are `bytes`.
pub fn kind_of(bytes: &[u8]) -> FileKind {
    match bytes.get(..8) {
        Some(b"STRATSEG") => FileKind::Segment,
        Some(b"STRATIDX") => FileKind::Index,
        Some(b"STRATAIX") => FileKind::ActiveIndex,
        Some(b"STRATARC") => FileKind::Archive,
        Some(b"STRATSNP") => FileKind::Snapshots,
        Some(b"STRATTMB") => FileKind::Tombstones,
        Some(b"STRATSMD") => FileKind::StreamMeta,
        Some(b"STRATAMF") => FileKind::Manifest,
        Some(b"STRATCKP") => FileKind::Checkpoints,
        Some(b"STRATDLQ") => FileKind::DeadLetters,
        Some(b"STRATPSN") => FileKind::PoisonMarker,
        _ => FileKind::Unknown,
    }
}

/// Which batches a dump keeps (all by default).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this stream's batches.
    pub stream: Option<String>,
    /// Only batches with events at or after this position.
    pub from: Option<u64>,
    /// Only batches with events before this position.
    pub to: Option<u64>,
    /// Only the events of one flow: those whose correlation id, or own id, is this.
    pub correlation: Option<EventId>,
}

impl Filter {
    fn keeps(&self, b: &BatchView<'_>) -> bool {
        self.stream.as_deref().is_none_or(|s| s == b.stream_id)
            && self.from.is_none_or(|f| b.end_position() > f)
            && self.to.is_none_or(|t| b.base_position < t)
            && self.correlation.is_none_or(|_| b.events().any(|e| self.keeps_event(&e)))
    }

    fn keeps_event(&self, e: &EventRef<'_>) -> bool {
        self.correlation.is_none_or(|c| e.correlation_id == Some(c) || e.id == Some(c))
    }
}

/// One event of a [`BatchInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventInfo {
    /// Its position.
    pub position: u64,
    /// Its id, correlation id and causation id, where it has them.
    pub id: Option<EventId>,
    /// The flow it belongs to.
    pub correlation_id: Option<EventId>,
    /// What caused it.
    pub causation_id: Option<EventId>,
    /// Its type.
    pub event_type: String,
    /// Its metadata bytes.
    pub metadata: Vec<u8>,
    /// Its payload bytes.
    pub payload: Vec<u8>,
}

/// A batch found in a segment or an archive; its CRC checked out (a batch that does not
/// check out ends the dump, with the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchInfo {
    /// Byte offset in the segment file; in an archive, in the archive's uncompressed data.
    pub offset: u64,
    /// Its length in bytes, header and padding included.
    pub length: u64,
    /// Position of its first event.
    pub position: u64,
    /// The stream.
    pub stream: String,
    /// Version of its first event.
    pub first_version: u64,
    /// Append time (nanoseconds since the Unix epoch).
    pub timestamp: u64,
    /// Number of events in the batch.
    pub event_count: u64,
    /// The next batch belongs to the same atomic unit (`Store::append_atomic`).
    pub unit_continues: bool,
    /// Its events (with a correlation filter, only that flow's).
    pub events: Vec<EventInfo>,
}

fn batch_info(offset: u64, b: &BatchView<'_>, filter: &Filter) -> BatchInfo {
    BatchInfo {
        offset,
        length: b.length as u64,
        position: b.base_position,
        stream: b.stream_id.to_owned(),
        first_version: b.first_version,
        timestamp: b.timestamp,
        event_count: u64::from(b.event_count),
        unit_continues: b.continues,
        events: b
            .events()
            .enumerate()
            .filter(|(_, e)| filter.keeps_event(e))
            .map(|(i, e)| EventInfo {
                position: b.base_position + i as u64,
                id: e.id,
                correlation_id: e.correlation_id,
                causation_id: e.causation_id,
                event_type: e.event_type.to_owned(),
                metadata: e.metadata.to_vec(),
                payload: e.payload.to_vec(),
            })
            .collect(),
    }
}

/// A snapshot record of a sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// Byte offset in the sidecar.
    pub offset: u64,
    /// Record length.
    pub length: u64,
    /// The stream.
    pub stream: String,
    /// The version it covers.
    pub version: u64,
    /// The aggregate's schema tag.
    pub schema: u32,
    /// Bytes of state.
    pub state_len: u64,
    /// Position of the event it was taken after (its anchor).
    pub position: u64,
    /// Timestamp of that event (nanoseconds since the Unix epoch): with `position`, what a
    /// load checks against the log before trusting the snapshot.
    pub event_time: u64,
    /// When the snapshot was taken (nanoseconds since the Unix epoch).
    pub written: u64,
    /// CRC-32 of the name of the aggregate type that took it.
    pub aggregate: u32,
    /// It was written to replace an unusable snapshot, and supersedes every earlier record of
    /// its stream whatever their versions.
    pub replaces: bool,
    /// Whether a later record of the same stream supersedes it.
    pub superseded: bool,
}

/// A record of a dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterInfo {
    /// An event the projection could not handle.
    Letter {
        /// Byte offset in the file.
        offset: u64,
        /// The letter's id.
        id: u64,
        /// When it was added (nanoseconds since the Unix epoch).
        time: u64,
        /// The event's partition.
        partition: u32,
        /// The event's position.
        position: u64,
        /// Its stream.
        stream: String,
        /// Its version.
        version: u64,
        /// Failed attempts (0: its stream was parked).
        attempts: u32,
        /// The handler's error.
        error: String,
    },
    /// A letter left the queue.
    Resolution {
        /// Byte offset in the file.
        offset: u64,
        /// The letter's id.
        id: u64,
        /// When (nanoseconds since the Unix epoch).
        time: u64,
        /// `true`: replayed; `false`: discarded.
        replayed: bool,
    },
}

/// What a file holds.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Dump {
    /// A segment: its header, the batches the filter keeps, and how its data ends.
    Segment {
        /// The partition.
        partition: u32,
        /// Its first position.
        base_position: u64,
        /// Creation time.
        created: u64,
        /// Batches kept by the filter.
        batches: Vec<BatchInfo>,
        /// How the valid data ends: `None` when cleanly (then only zeros, if anything,
        /// follow); otherwise the byte offset and why the bytes there are not a batch.
        damage: Option<(u64, String)>,
    },
    /// A sealed segment's index.
    Index {
        /// The partition.
        partition: u32,
        /// The segment's first position.
        base_position: u64,
        /// One past its last.
        end_position: u64,
        /// The segment's length it describes.
        segment_len: u64,
        /// Stream entries (one per batch).
        stream_entries: u64,
        /// Position entries (one per 4 KiB of segment).
        position_entries: u64,
    },
    /// An archive.
    Archive {
        /// The partition.
        partition: u32,
        /// The range it stands for.
        base_position: u64,
        /// One past its last position.
        end_position: u64,
        /// Why it was archived.
        reason: Reason,
        /// When.
        created: u64,
        /// Compressed blocks.
        blocks: u64,
        /// Uncompressed bytes of its batches.
        data_len: u64,
        /// Bytes of the file.
        file_len: u64,
        /// The segments it was made from: `(first position, bytes)`.
        sources: Vec<(u64, u64)>,
        /// What was erased from it.
        audit: Vec<AuditRecord>,
        /// Batches kept by the filter, in position order.
        batches: Vec<BatchInfo>,
        /// Problems found reading it (a block that does not decompress or check out...).
        problems: Vec<String>,
    },
    /// A snapshot sidecar.
    Snapshots {
        /// The partition.
        partition: u32,
        /// Rewrites since creation.
        rewrites: u64,
        /// Its records (those of the filter's stream only, if it names one).
        records: Vec<SnapshotInfo>,
        /// Where valid records end, if before the end of the file, and why.
        damage: Option<(u64, String)>,
    },
    /// The active segment's index journal (FORMAT.md §8.4).
    ActiveIndex {
        /// The partition.
        partition: u32,
        /// The segment it journals.
        base_position: u64,
        /// Its frozen section (format version 3), if it has one: the segment offsets
        /// `[64, to)` and positions it covers, its stream entries (one per batch) and streams.
        frozen: Option<JournalRecordInfo>,
        /// Each valid record: segment offsets `[from, to)`, positions `[from, to)`, batches,
        /// streams.
        records: Vec<JournalRecordInfo>,
        /// Where valid records end, if before the end of the file, and why.
        damage: Option<(u64, String)>,
    },
    /// A poisoned writer's marker: the next open cuts `segment` to `durable_end`.
    PoisonMarker {
        /// The partition.
        partition: u32,
        /// Base position of the segment the writer was writing.
        segment: u64,
        /// Where that segment's durable data ends.
        durable_end: u64,
    },
    /// A partition's deleted streams.
    Tombstones {
        /// The partition.
        partition: u32,
        /// `(stream, deleted at)`.
        deleted: Vec<(String, u64)>,
        /// Where valid records end, if before the end of the file, and why.
        damage: Option<(u64, String)>,
    },
    /// A partition's stream metadata (FORMAT.md §19): every record, in file order, later
    /// versions after earlier ones; a stream's newest record is the one in force.
    StreamMetadata {
        /// The partition.
        partition: u32,
        /// `(stream, record)`.
        records: Vec<(String, StreamMetaRecord)>,
        /// Where valid records end, if before the end of the file, and why.
        damage: Option<(u64, String)>,
    },
    /// A projection's checkpoints: the next position to handle, per partition.
    Checkpoints {
        /// Per partition.
        positions: Vec<u64>,
    },
    /// A projection's dead-letter queue.
    DeadLetters {
        /// Its records, in file order.
        records: Vec<DeadLetterInfo>,
        /// Where valid records end, if before the end of the file, and why.
        damage: Option<(u64, String)>,
    },
    /// The store's manifest.
    Manifest {
        /// The partitions streams are routed to.
        partition_count: u32,
        /// The segment roll size.
        segment_bytes: u64,
        /// When the store was created (nanoseconds since the Unix epoch).
        created: u64,
        /// Completed grows.
        partition_epoch: u64,
        /// The count a grow in progress copies into (0: none).
        growing_to: u32,
        /// Each completed grow: from and to how many partitions.
        epochs: Vec<(u32, u32)>,
    },
}

/// Reads `path` whole and describes it. A file whose header does not check out is an
/// [`Error::Corruption`]; damage after a valid header is part of the dump.
pub fn dump(path: &Path, filter: &Filter) -> Result<Dump> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    match kind_of(&bytes) {
        FileKind::Segment => dump_segment(path, &bytes, filter),
        FileKind::Index => {
            let h = index::decode_header(&bytes).map_err(|m| m.into_error(path))?;
            index::decode(&bytes).map_err(|why| Error::corruption(path, index::HEADER_LEN as u64, why))?;
            Ok(Dump::Index {
                partition: h.partition,
                base_position: h.base_position,
                end_position: h.end_position,
                segment_len: h.segment_len,
                stream_entries: h.stream_entries,
                position_entries: h.position_entries,
            })
        }
        FileKind::ActiveIndex => {
            let (partition, base_position) =
                crate::format::active_index::check_header(&bytes).map_err(|m| m.into_corruption(path))?;
            // Aligned, so that a frozen section's entries are read in place.
            let aligned = crate::format::Aligned::new(&bytes);
            let scanned = crate::format::active_index::scan(aligned.bytes(), partition, base_position)
                .map_err(|m| m.into_corruption(path))?;
            let frozen = scanned.frozen.map(|f| JournalRecordInfo {
                offsets: (crate::format::active_index::HEADER_LEN as u64, f.header.to_offset),
                positions: (base_position, f.header.to_position),
                batches: f.streams.len() as u64,
                streams: crate::format::index::stream_runs(f.streams).count() as u64,
            });
            let (end, damage) = (scanned.valid_end, scanned.damage);
            let records = scanned
                .records
                .iter()
                .map(|r| JournalRecordInfo {
                    offsets: (r.from_offset, r.to_offset),
                    positions: (r.from_position, r.to_position),
                    batches: r.batch_count as u64,
                    streams: r.streams.len() as u64,
                })
                .collect();
            Ok(Dump::ActiveIndex {
                partition,
                base_position,
                frozen,
                records,
                damage: damage.map(|why| (end as u64, why)),
            })
        }
        FileKind::Archive => dump_archive(path, &bytes, filter),
        FileKind::Snapshots => dump_snapshots(path, &bytes, filter),
        FileKind::Tombstones => {
            let partition = tombstone::check_header(&bytes).map_err(|m| m.into_corruption(path))?;
            let (records, end, damage) = tombstone::scan(&bytes).map_err(|m| m.into_corruption(path))?;
            Ok(Dump::Tombstones {
                partition,
                deleted: records.into_iter().map(|t| (t.stream, t.deleted_at)).collect(),
                damage: damage.map(|why| (end as u64, why)),
            })
        }
        FileKind::StreamMeta => {
            let partition = stream_meta::check_header(&bytes).map_err(|m| m.into_corruption(path))?;
            let (records, end, damage) = stream_meta::scan(&bytes).map_err(|m| m.into_corruption(path))?;
            Ok(Dump::StreamMetadata {
                partition,
                records: records
                    .iter()
                    .filter(|r| filter.stream.as_deref().is_none_or(|s| s == r.stream))
                    .map(|r| (r.stream.clone(), r.public()))
                    .collect(),
                damage: damage.map(|why| (end as u64, why)),
            })
        }
        FileKind::PoisonMarker => {
            let m = poison::decode(&bytes).map_err(|m| m.into_corruption(path))?;
            Ok(Dump::PoisonMarker { partition: m.partition, segment: m.segment, durable_end: m.durable_end })
        }
        FileKind::Checkpoints => {
            let all = checkpoint::decode(&bytes).map_err(|m| m.into_corruption(path))?;
            Ok(Dump::Checkpoints { positions: all.iter().map(|c| c.position).collect() })
        }
        FileKind::DeadLetters => dump_dead_letters(path, &bytes),
        FileKind::Manifest => {
            let m = manifest::Manifest::decode(&bytes)
                .map_err(|e| Error::corruption(path, 0, format!("manifest: {e:?}")))?;
            Ok(Dump::Manifest {
                partition_count: m.partition_count,
                segment_bytes: m.segment_bytes,
                created: m.created,
                partition_epoch: m.partition_epoch,
                growing_to: m.growing_to,
                epochs: m.epochs.iter().map(|e| (e.from, e.to)).collect(),
            })
        }
        FileKind::Unknown => Err(Error::NotAStore {
            path: path.to_path_buf(),
            reason: "not a strata file: its first bytes are no strata magic".into(),
        }),
    }
}

fn dump_dead_letters(path: &Path, bytes: &[u8]) -> Result<Dump> {
    let (records, end, damage) = dlq::scan(bytes).map_err(|m| m.into_corruption(path))?;
    let mut out = Vec::with_capacity(records.len());
    for (at, r) in records {
        let offset = at as u64;
        out.push(match r {
            dlq::Record::Letter(l) => DeadLetterInfo::Letter {
                offset,
                id: l.id,
                time: l.time,
                partition: l.partition,
                position: l.position,
                stream: l.stream,
                version: l.version,
                attempts: l.attempts,
                error: l.error,
            },
            dlq::Record::Resolution { id, time, outcome } => {
                DeadLetterInfo::Resolution { offset, id, time, replayed: outcome == dlq::Outcome::Replayed }
            }
        });
    }
    Ok(Dump::DeadLetters { records: out, damage: damage.map(|why| (end as u64, why)) })
}

fn dump_segment(path: &Path, bytes: &[u8], filter: &Filter) -> Result<Dump> {
    let header = segment::decode_header(bytes).map_err(|e| e.into_error(path))?;
    let mut batches = Vec::new();
    let mut at = segment::HEADER_LEN;
    let mut damage = None;
    while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
        match batch::decode(rest) {
            Ok(b) => {
                if filter.keeps(&b) {
                    batches.push(batch_info(at as u64, &b, filter));
                }
                at += b.length;
            }
            Err(_) if rest.iter().all(|&b| b == 0) => break,
            Err(bad) => {
                damage = Some((at as u64, bad.to_string()));
                break;
            }
        }
    }
    Ok(Dump::Segment {
        partition: header.partition,
        base_position: header.base_position,
        created: header.created,
        batches,
        damage,
    })
}

fn dump_archive(path: &Path, bytes: &[u8], filter: &Filter) -> Result<Dump> {
    // The decoder casts sections in place: give it the alignment a mapping would have.
    let aligned = Aligned::new(bytes);
    let data = aligned.bytes();
    let layout = arc::decode(data).map_err(|m| m.into_error(path))?;
    let h = layout.header;
    let mut problems = Vec::new();
    let mut all = Vec::new();
    let blocks = arc::cast::<arc::BlockEntry>(data, &layout.blocks).map_or(0, <[_]>::len);
    for i in 0..blocks {
        match arc::decompress_block(data, &layout, i) {
            Ok(b) => all.extend_from_slice(&b),
            Err((offset, why)) => {
                problems.push(format!("at byte {offset}: {why}"));
                break;
            }
        }
    }
    let mut batches = Vec::new();
    if problems.is_empty() {
        let positions: &[PositionEntry] = arc::cast(data, &layout.positions).unwrap_or(&[]);
        for p in positions {
            let p = p.get();
            match batch::decode(all.get(p.offset as usize..).unwrap_or(&[])) {
                Ok(b) if b.base_position == p.position => {
                    if filter.keeps(&b) {
                        batches.push(batch_info(p.offset, &b, filter));
                    }
                }
                Ok(_) => problems.push(format!("position entry {} points at another batch", p.position)),
                Err(bad) => problems.push(format!("batch at uncompressed offset {}: {bad}", p.offset)),
            }
        }
    }
    let sources = arc::cast::<arc::Source>(data, &layout.sources)
        .unwrap_or(&[])
        .iter()
        .map(|s| (u64::from_le(s.base_position), u64::from_le(s.bytes)))
        .collect();
    Ok(Dump::Archive {
        partition: h.partition,
        base_position: h.base_position,
        end_position: h.end_position,
        reason: h.reason,
        created: h.created,
        blocks: blocks as u64,
        data_len: layout.data_len,
        file_len: bytes.len() as u64,
        sources,
        audit: arc::audit_records(data, &layout).unwrap_or_default(),
        batches,
        problems,
    })
}

fn dump_snapshots(path: &Path, bytes: &[u8], filter: &Filter) -> Result<Dump> {
    let header = snapshot::decode_header(bytes).map_err(|m| m.into_error(path))?;
    let mut records: Vec<SnapshotInfo> = Vec::new();
    let mut body = bytes.get(snapshot::HEADER_LEN..).unwrap_or(&[]);
    let end = snapshot::scan(&mut body, bytes.len() as u64, |offset, r| {
        if filter.stream.as_deref().is_none_or(|s| s == r.stream) {
            records.push(SnapshotInfo {
                offset,
                length: r.len as u64,
                stream: r.stream.to_owned(),
                version: r.meta.version,
                schema: r.meta.schema,
                state_len: r.state.len() as u64,
                position: r.meta.position,
                event_time: r.meta.event_time,
                written: r.meta.written,
                aggregate: r.meta.aggregate,
                replaces: r.meta.replaces,
                superseded: false,
            });
        }
    })
    .map_err(|e| Error::io("read", path, e))?;
    // By the sidecar's rule: a later record supersedes an earlier one of its stream if it has
    // a higher version, the same version under another schema, or the REPLACES flag.
    let mut latest: std::collections::HashMap<String, (usize, u64, u32)> = std::collections::HashMap::new();
    let mut superseded = Vec::new();
    for (i, r) in records.iter().enumerate() {
        match latest.get(&r.stream).copied() {
            Some((k, version, schema)) => {
                if r.replaces || r.version > version || (r.version == version && r.schema != schema) {
                    superseded.push(k);
                    latest.insert(r.stream.clone(), (i, r.version, r.schema));
                } else {
                    superseded.push(i);
                }
            }
            None => {
                latest.insert(r.stream.clone(), (i, r.version, r.schema));
            }
        }
    }
    for i in superseded {
        if let Some(r) = records.get_mut(i) {
            r.superseded = true;
        }
    }
    let damage = match end {
        snapshot::ScanEnd::Clean { .. } => None,
        snapshot::ScanEnd::Damaged { data_end, reason } => Some((data_end, reason)),
    };
    Ok(Dump::Snapshots { partition: header.partition, rewrites: header.rewrites, records, damage })
}

/// The files of a store or partition directory that [`dump`] describes, in the order a
/// reader of the log meets them: the manifest; per partition, segments and archives by first
/// position, then the snapshot sidecar and tombstones; then each projection's checkpoints
/// and dead-letter queue.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let list = |d: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| Error::io("list", d, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        Ok(v)
    };
    let mut out = Vec::new();
    let partition_files = |p: &Path, out: &mut Vec<PathBuf>| -> Result<()> {
        let all = list(p)?;
        let mut log: Vec<&PathBuf> = all
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "log" || e == "arc" || e == "idx" || e == "aix"))
            .collect();
        log.sort_by_key(|f| f.file_name().map(|n| n.to_owned()));
        out.extend(log.into_iter().cloned());
        out.extend(
            all.iter()
                .filter(|f| {
                    f.ends_with("snapshots.snap")
                        || f.ends_with("tombstones")
                        || f.ends_with(stream_meta::FILE_NAME)
                        || f.ends_with(poison::FILE_NAME)
                })
                .cloned(),
        );
        Ok(())
    };
    let is_partition = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.len() == 6 && n.starts_with('p') && n.bytes().skip(1).all(|b| b.is_ascii_digit()))
    };
    if is_partition(dir) && !dir.join("MANIFEST").exists() {
        partition_files(dir, &mut out)?;
        return Ok(out);
    }
    let manifest = dir.join(manifest::FILE_NAME);
    if manifest.is_file() {
        out.push(manifest);
    }
    for entry in list(dir)? {
        if entry.is_dir() && is_partition(&entry) {
            partition_files(&entry, &mut out)?;
        }
    }
    let projections = dir.join("projections");
    if projections.is_dir() {
        for p in list(&projections)? {
            for name in [checkpoint::FILE_NAME, dlq::FILE_NAME] {
                let f = p.join(name);
                if f.is_file() {
                    out.push(f);
                }
            }
        }
    }
    Ok(out)
}
