//! Golden fixtures: the encoders must produce exactly the committed bytes, and the committed
//! bytes must decode to exactly these values. A format change is never silent. Run with
//! `STRATA_BLESS=1` to rewrite the fixtures after a deliberate, versioned format change.
//!
//! The fixtures are listed in FORMAT.md §1.2. `manifest_bytes_are_pinned` (a manifest without
//! epoch records is the 64-byte `manifest.bin`), `manifest_with_partition_epochs_round_trips_and_checks_its_chain`
//! (pinned by `manifest-epochs.bin`), `checkpoint_bytes_are_pinned`,
//! `dead_letter_queue_bytes_are_pinned`, `archive_bytes_are_pinned` (the zstd frames may change
//! with the zstd version: encoding the fixture's own frames must give the fixture, and they
//! must decompress to the pinned batches), `tombstone_bytes_are_pinned`,
//! `poison_marker_bytes_are_pinned`, `stream_meta_bytes_are_pinned` (the record in force when the
//! file is opened: `log::stream_meta`'s `the_pinned_file_opens_with_each_streams_newest_record`) and `cursor_bytes_are_pinned` pin the encoders.
//! `reserved_bytes_must_be_zero` checks the manifest's reserved bytes `[52, 60)`, and
//! `checkpoint_file_extended_for_a_grow` a checkpoint file of 2 partitions extended with zeros
//! to 5: it reads as 5 partitions, the new ones never written, before and after its header is
//! rewritten; extra bytes that are not whole slot pairs, or not zeros, and a file shorter than
//! its header's count, are damage.

use std::path::PathBuf;

use super::batch::{self, Limits};
use super::header::{Cause, Malformed};
use super::index::{self, PositionEntry, StreamEntry};
use super::manifest::Manifest;
use super::segment;
use crate::event::EventData;

fn fixture(name: &str, bytes: &[u8]) -> Vec<u8> {
    fixture_at("v1", name, bytes)
}

/// A fixture of `tests/fixtures/{version}`.
fn fixture_at(version: &str, name: &str, bytes: &[u8]) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(version).join(name);
    if std::env::var_os("STRATA_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn golden_batch() -> Vec<u8> {
    let events = [
        EventData::new("OrderPlaced", br#"{"sku":"A-1","qty":2}"#.to_vec()).with_metadata(b"corr=42".to_vec()),
        EventData::new("OrderPaid", b"\x00\x01\xff".to_vec()),
    ];
    let limits = Limits { max_event_bytes: 1 << 20, max_append_bytes: 1 << 20 };
    let mut b = batch::encode("order-7", &events, limits).unwrap();
    batch::finish(&mut b, 1000, 5, 1_764_115_200_000_000_000, 4096);
    b
}

/// A batch with ids (every kind, and an event with none) and the unit flag (FORMAT.md §7.2,
/// §7.6).
fn golden_batch_with_ids() -> Vec<u8> {
    use crate::event::EventId;
    let id = |s: &str| s.parse::<EventId>().unwrap();
    let events = [
        EventData::new("OrderPlaced", br#"{"sku":"A-1"}"#.to_vec())
            .with_id(id("0190f3a4-5b6c-7d8e-9f00-112233445566"))
            .with_correlation_id(id("0190f3a4-0000-7000-8000-000000000001")),
        EventData::new("OrderPaid", b"7".to_vec())
            .with_id(id("0190f3a4-5b6c-7d8e-9f00-112233445567"))
            .with_correlation_id(id("0190f3a4-0000-7000-8000-000000000001"))
            .with_causation_id(id("0190f3a4-5b6c-7d8e-9f00-112233445566")),
        EventData::new("Noted", b"".to_vec()),
    ];
    let limits = Limits { max_event_bytes: 1 << 20, max_append_bytes: 1 << 20 };
    let mut b = batch::encode("{order-7}/payments", &events, limits).unwrap();
    batch::set_unit_continues(&mut b, true);
    batch::finish(&mut b, 1000, 5, 1_764_115_200_000_000_000, 4096);
    b
}

#[test]
fn batch_with_ids_bytes_are_pinned() {
    let bytes = golden_batch_with_ids();
    assert_eq!(bytes, fixture("batch-ids.bin", &bytes), "the batch encoder's output changed");
    let b = batch::decode(&bytes).unwrap();
    assert!(b.continues);
    let ids: Vec<_> =
        b.events().map(|e| (e.id.is_some(), e.correlation_id.is_some(), e.causation_id.is_some())).collect();
    assert_eq!(ids, vec![(true, true, false), (true, true, true), (false, false, false)]);
    // 48 + 18 + (12 + 32 + 11 + 13) + (12 + 48 + 9 + 1) + (12 + 5), padded to 8.
    assert_eq!(bytes.len(), 224);
}

#[test]
fn batch_bytes_are_pinned() {
    let bytes = golden_batch();
    let pinned = fixture("batch.bin", &bytes);
    assert_eq!(bytes, pinned, "the batch encoder's output changed");
    let b = batch::decode(&pinned).unwrap();
    assert_eq!((b.base_position, b.first_version, b.event_count, b.stream_id), (1000, 5, 2, "order-7"));
    assert_eq!((b.timestamp, b.synced_offset, b.length), (1_764_115_200_000_000_000, 4096, bytes.len()));
    let events: Vec<_> = b.events().map(|e| (e.event_type, e.metadata, e.payload)).collect();
    assert_eq!(events[0], ("OrderPlaced", &b"corr=42"[..], &br#"{"sku":"A-1","qty":2}"#[..]));
    assert_eq!(events[1], ("OrderPaid", &b""[..], &b"\x00\x01\xff"[..]));
}

#[test]
fn segment_header_bytes_are_pinned() {
    let bytes = segment::encode_header(3, 1000, 1_764_115_200_000_000_000);
    assert_eq!(bytes.to_vec(), fixture("segment-header.bin", &bytes));
    let h = segment::decode_header(&bytes).unwrap();
    assert_eq!((h.partition, h.base_position, h.created), (3, 1000, 1_764_115_200_000_000_000));
}

#[test]
fn manifest_bytes_are_pinned() {
    // The fixture predates co-location keys: a scheme-1 manifest, which must go on opening.
    let m = Manifest {
        partition_count: 16,
        hash_id: crate::router::HASH_ID_WHOLE,
        segment_bytes: 256 << 20,
        created: 1_764_115_200_000_000_000,
        partition_epoch: 0,
        growing_to: 0,
        epochs: Vec::new(),
    };
    let bytes = m.encode();
    assert_eq!(bytes.to_vec(), fixture("manifest.bin", &bytes));
    assert_eq!(Manifest::decode(&bytes).unwrap(), m);
}

#[test]
fn manifest_routing_schemes_1_and_2_are_known_and_3_is_not() {
    let mut m = Manifest {
        partition_count: 16,
        hash_id: crate::router::HASH_ID,
        segment_bytes: 256 << 20,
        created: 1,
        partition_epoch: 0,
        growing_to: 0,
        epochs: Vec::new(),
    };
    assert_eq!(crate::router::HASH_ID, 2);
    assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    m.hash_id = 3;
    assert!(Manifest::decode(&m.encode()).is_err());
}

#[test]
fn manifest_with_partition_epochs_round_trips_and_checks_its_chain() {
    use super::manifest::Epoch;
    let m = Manifest {
        partition_count: 5,
        hash_id: crate::router::HASH_ID_WHOLE,
        segment_bytes: 1 << 20,
        created: 7,
        partition_epoch: 2,
        growing_to: 9,
        epochs: vec![
            Epoch { from: 2, to: 3, cut: vec![10, 20], live_from: vec![4] },
            Epoch { from: 3, to: 5, cut: vec![11, 21, 30], live_from: vec![6, 0] },
        ],
    };
    let bytes = m.encode();
    assert_eq!(bytes.len(), 64 + (8 + 24) + (8 + 40));
    assert_eq!(bytes, fixture("manifest-epochs.bin", &bytes));
    assert_eq!(Manifest::decode(&bytes).unwrap(), m);
    let reencode = |m: &Manifest| Manifest::decode(&m.encode());
    // Epochs that do not chain, do not end at the count, or a grow that does not grow.
    let mut broken = m.clone();
    broken.epochs[1].from = 2;
    broken.epochs[1].cut.pop();
    assert!(reencode(&broken).is_err());
    let mut broken = m.clone();
    broken.partition_count = 6;
    broken.growing_to = 0;
    assert!(reencode(&broken).is_err());
    let mut broken = m.clone();
    broken.growing_to = 5;
    assert!(reencode(&broken).is_err());
    // More epochs claimed than present, or fewer.
    let mut broken = m.clone();
    broken.partition_epoch = 3;
    assert!(reencode(&broken).is_err());
    broken.partition_epoch = 1;
    assert!(reencode(&broken).is_err());
}

#[test]
fn index_bytes_are_pinned() {
    let header = index::Header {
        partition: 3,
        base_position: 1000,
        end_position: 1010,
        segment_len: 9000,
        stream_entries: 3,
        position_entries: 2,
    };
    let streams = [
        StreamEntry { stream_hash: 7, first_version: 0, offset: 64, event_count: 2, tag: 0 },
        StreamEntry { stream_hash: 7, first_version: 0, offset: 200, event_count: 1, tag: 1 },
        StreamEntry { stream_hash: u64::MAX, first_version: 9, offset: 4200, event_count: 7, tag: 0 },
    ];
    let positions = [PositionEntry { position: 1000, offset: 64 }, PositionEntry { position: 1003, offset: 4200 }];
    let bytes = index::encode(&header, &streams, &positions);
    let pinned = fixture("index.bin", &bytes);
    assert_eq!(bytes, pinned);
    // Decode from an 8-aligned copy, as a memory map would be.
    let mut aligned = vec![0u64; pinned.len() / 8];
    bytemuck::cast_slice_mut::<u64, u8>(&mut aligned).copy_from_slice(&pinned);
    let view = index::decode(bytemuck::cast_slice(&aligned)).unwrap();
    assert_eq!(view.header, header);
    assert_eq!(view.streams.iter().map(StreamEntry::get).collect::<Vec<_>>(), streams.to_vec());
    assert_eq!(view.positions.iter().map(PositionEntry::get).collect::<Vec<_>>(), positions.to_vec());
}

#[test]
fn scan_of_a_pinned_segment() {
    let mut seg = segment::encode_header(0, 1000, 1).to_vec();
    let mut b = golden_batch();
    batch::finish(&mut b, 1000, 5, 1, 64);
    seg.extend_from_slice(&b);
    let header = segment::decode_header(&seg).unwrap();
    let mut seen = Vec::new();
    let end = segment::scan(&seg, &header, segment::Mode::Sealed, |off, b| seen.push((off, b.base_position))).unwrap();
    assert_eq!(seen, vec![(64, 1000)]);
    assert_eq!(end, segment::End::Clean { data_end: seg.len() as u64 });
}

/// Found by the manifest_decode fuzz target: reserved bytes were ignored on read, so a
/// manifest that re-encodes differently was accepted. Reserved bytes must be zero.
#[test]
fn reserved_bytes_must_be_zero() {
    let m = Manifest {
        partition_count: 16,
        hash_id: 1,
        segment_bytes: 1 << 28,
        created: 1,
        partition_epoch: 0,
        growing_to: 0,
        epochs: Vec::new(),
    };
    let mut bytes = m.encode();
    bytes[56] = 4;
    let sum = crate::format::crc(&bytes[..60]);
    bytes[60..].copy_from_slice(&sum.to_le_bytes());
    assert!(matches!(Manifest::decode(&bytes), Err(Malformed { offset: 52, cause: Cause::Damaged, .. })));
    let mut h = segment::encode_header(0, 0, 1);
    h[40] = 1;
    let sum = crate::format::crc(&h[..60]);
    h[60..].copy_from_slice(&sum.to_le_bytes());
    assert!(matches!(segment::decode_header(&h), Err(Malformed { cause: Cause::Damaged, .. })));
}

fn golden_sidecar() -> Vec<u8> {
    use super::snapshot::{self, Header, Meta};
    let mut bytes =
        snapshot::encode_header(&Header { partition: 3, created: 1_764_115_200_000_000_000, rewrites: 2 }).to_vec();
    let first = Meta {
        version: 99,
        position: 5000,
        event_time: 1_764_115_100_000_000_000,
        written: 1_764_115_150_000_000_000,
        schema: 1,
        replaces: false,
        aggregate: 0x1234_5678,
    };
    bytes.extend_from_slice(&snapshot::encode_record("account-42", &first, b"{\"balance\":1200}"));
    let second = Meta {
        version: 199,
        position: 9000,
        event_time: 1_764_115_190_000_000_000,
        written: 1_764_115_195_000_000_000,
        schema: 2,
        replaces: true,
        aggregate: 0x1234_5678,
    };
    bytes.extend_from_slice(&snapshot::encode_record("account-42", &second, &[0, 1, 2, 0xff]));
    bytes
}

#[test]
fn snapshot_sidecar_bytes_are_pinned() {
    use super::snapshot::{self, ScanEnd};
    let bytes = golden_sidecar();
    let pinned = fixture("snapshot.bin", &bytes);
    assert_eq!(bytes, pinned, "the snapshot sidecar encoder's output changed");
    let h = snapshot::decode_header(&pinned).unwrap();
    assert_eq!((h.partition, h.created, h.rewrites), (3, 1_764_115_200_000_000_000, 2));
    let mut seen = Vec::new();
    let mut r = &pinned[snapshot::HEADER_LEN..];
    let end = snapshot::scan(&mut r, pinned.len() as u64, |off, rec| {
        seen.push((off, rec.stream.to_owned(), rec.meta, rec.state.to_vec()));
    })
    .unwrap();
    assert_eq!(end, ScanEnd::Clean { data_end: pinned.len() as u64 });
    assert_eq!(seen.len(), 2);
    assert_eq!((seen[0].0, seen[0].1.as_str(), seen[0].3.as_slice()), (64, "account-42", &b"{\"balance\":1200}"[..]));
    assert_eq!((seen[0].2.version, seen[0].2.position, seen[0].2.schema), (99, 5000, 1));
    assert_eq!(seen[0].2.event_time, 1_764_115_100_000_000_000);
    assert_eq!(seen[0].2.written, 1_764_115_150_000_000_000);
    // 56-byte header + 10-byte id + 16-byte state = 82, padded to 88.
    assert_eq!(seen[1].0, 64 + 88);
    assert_eq!((seen[1].2.version, seen[1].2.schema, seen[1].3.as_slice()), (199, 2, &[0, 1, 2, 0xff][..]));
    assert!(!seen[0].2.replaces && seen[1].2.replaces);
    assert_eq!((seen[0].2.aggregate, seen[1].2.aggregate), (0x1234_5678, 0x1234_5678));
}

#[test]
fn a_torn_or_flipped_sidecar_record_ends_the_scan_there() {
    use super::snapshot::{self, ScanEnd};
    let bytes = golden_sidecar();
    let second = 64 + 88;
    for cut in [bytes.len() - 1, second + 7, second + 60] {
        let mut r = &bytes[snapshot::HEADER_LEN..cut];
        let mut n = 0;
        let end = snapshot::scan(&mut r, cut as u64, |_, _| n += 1).unwrap();
        assert!(matches!(end, ScanEnd::Damaged { data_end, .. } if data_end == second as u64), "{cut}: {end:?}");
        assert_eq!(n, 1);
    }
    for flip in [second, second + 5, second + 30, second + 47, second + 52, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[flip] ^= 0x40;
        let mut r = &b[snapshot::HEADER_LEN..];
        let end = snapshot::scan(&mut r, b.len() as u64, |_, _| {}).unwrap();
        assert!(matches!(end, ScanEnd::Damaged { data_end, .. } if data_end == second as u64), "{flip}: {end:?}");
    }
}

fn golden_checkpoints() -> Vec<u8> {
    use super::checkpoint::{self, Checkpoint};
    let start = [
        Checkpoint { seq: 3, position: 1200, time: 1_764_115_200_000_000_000 },
        Checkpoint::default(),
        Checkpoint { seq: 8, position: 77, time: 1_764_115_100_000_000_000 },
    ];
    let mut bytes = checkpoint::encode_file(3, 1_764_115_000_000_000_000, &start);
    // A later write of partition 0 goes to the other slot.
    let next = Checkpoint { seq: 4, position: 1500, time: 1_764_115_300_000_000_000 };
    let at = checkpoint::slot_offset(0, next.seq) as usize;
    bytes[at..at + checkpoint::SLOT_LEN].copy_from_slice(&checkpoint::encode_slot(0, &next));
    bytes
}

#[test]
fn checkpoint_bytes_are_pinned() {
    use super::checkpoint::{self, Checkpoint};
    let bytes = golden_checkpoints();
    let pinned = fixture("checkpoint.bin", &bytes);
    assert_eq!(bytes, pinned, "the checkpoint encoder's output changed");
    let c = checkpoint::decode(&pinned).unwrap();
    assert_eq!(c[0], Checkpoint { seq: 4, position: 1500, time: 1_764_115_300_000_000_000 }, "the newer slot wins");
    assert_eq!((c[1], c[2].position), (Checkpoint::default(), 77));
    // A torn newer slot falls back to the older one; damage to both is an error.
    let mut torn = pinned.clone();
    torn[checkpoint::slot_offset(0, 4) as usize + 20] ^= 1;
    assert_eq!(checkpoint::decode(&torn).unwrap()[0].position, 1200);
    torn[checkpoint::slot_offset(0, 3) as usize + 20] ^= 1;
    assert!(checkpoint::decode(&torn).is_err());
}

fn golden_dlq() -> Vec<u8> {
    use super::dlq::{self, Letter, Outcome};
    let mut bytes = dlq::encode_header().to_vec();
    let letter = |id, version, attempts, error: &str| Letter {
        id,
        time: 1_764_115_200_000_000_000 + id,
        partition: 2,
        attempts,
        position: 900 + version,
        version,
        stream: "order-7".into(),
        error: error.into(),
    };
    bytes.extend(dlq::encode_letter(&letter(1, 4, 3, "unknown sku A-9")));
    bytes.extend(dlq::encode_letter(&letter(2, 5, 0, "its stream is parked")));
    bytes.extend(dlq::encode_resolution(1, 1_764_115_300_000_000_000, Outcome::Replayed));
    bytes
}

#[test]
fn dead_letter_queue_bytes_are_pinned() {
    use super::dlq::{self, Outcome, Record};
    let bytes = golden_dlq();
    let pinned = fixture("dlq.bin", &bytes);
    assert_eq!(bytes, pinned, "the dead-letter encoder's output changed");
    let (records, end, damage) = dlq::scan(&pinned).unwrap();
    assert_eq!((records.len(), end, damage), (3, pinned.len(), None));
    match (&records[0].1, &records[2].1) {
        (Record::Letter(l), Record::Resolution { id: 1, outcome: Outcome::Replayed, .. }) => {
            assert_eq!((l.id, l.partition, l.position, l.version, l.attempts), (1, 2, 904, 4, 3));
            assert_eq!((l.stream.as_str(), l.error.as_str()), ("order-7", "unknown sku A-9"));
        }
        other => panic!("{other:?}"),
    }
    // A torn last record ends the scan before it.
    let (records, end, damage) = dlq::scan(&pinned[..pinned.len() - 3]).unwrap();
    assert_eq!((records.len(), end), (2, pinned.len() - 40));
    assert!(damage.is_some());
}

/// Two streams' batches, in two blocks (the golden batch, then two more), with an audit
/// record and a source. The compressed frames are zstd's: their bytes may change with the
/// zstd version, so the fixture pins the layout around them (re-encoding the fixture's own
/// frames must give the fixture) and their content (they must decompress to these batches).
fn golden_archive_blocks() -> (Vec<u8>, Vec<u8>) {
    let limits = Limits { max_event_bytes: 1 << 20, max_append_bytes: 1 << 20 };
    let mut second =
        batch::encode("order-7", &[EventData::new("OrderShipped", br#"{"via":"post"}"#.to_vec())], limits).unwrap();
    batch::finish(&mut second, 1004, 7, 1_764_115_200_000_000_001, 4096);
    let mut other =
        batch::encode("cart-1", &[EventData::new("ItemAdded", br#"{"sku":"B-2"}"#.to_vec())], limits).unwrap();
    batch::finish(&mut other, 1002, 0, 1_764_115_200_000_000_002, 4096);
    let mut first_block = golden_batch();
    first_block.extend_from_slice(&second);
    (first_block, other)
}

/// The golden archive's two blocks compressed as `version` writes them: in version 1 each
/// one frame of its batches; in version 2 the first as columns (a frame per column) and the
/// second as it is, after its layout byte (FORMAT.md §14.2).
fn golden_archive_frames(version: u32) -> [Vec<u8>; 2] {
    use super::columns;
    let (a, b) = golden_archive_blocks();
    if version == 1 {
        return [zstd::bulk::compress(&a, 3).unwrap(), zstd::bulk::compress(&b, 3).unwrap()];
    }
    let cols = columns::split(&a).unwrap();
    let first: Vec<u8> =
        cols.parts().iter().filter(|p| !p.is_empty()).flat_map(|p| zstd::bulk::compress(p, 3).unwrap()).collect();
    let mut plain = vec![columns::LAYOUT_BATCHES];
    plain.extend_from_slice(&b);
    [first, zstd::bulk::compress(&plain, 3).unwrap()]
}

fn golden_archive(frames: Option<[Vec<u8>; 2]>) -> Vec<u8> {
    golden_archive_at(1, frames)
}

/// Two streams' batches, in two blocks (see [`golden_archive_blocks`]), at `version`: in
/// version 2 the stream entries stand for spans (order-7's two batches of the first block are
/// one entry, FORMAT.md §14.3).
fn golden_archive_at(version: u32, frames: Option<[Vec<u8>; 2]>) -> Vec<u8> {
    use super::archive::{self, AuditRecord, Block, Header, Parts, Reason, Source};
    let (a, b) = golden_archive_blocks();
    let frames = frames.unwrap_or_else(|| golden_archive_frames(version));
    let hash = crate::router::stream_hash;
    let crc = |d: &[u8]| if version >= 2 { super::crc(d) } else { 0 };
    let blocks = [
        Block { frames: frames[0].clone(), data_start: 0, data_len: a.len() as u32, data_crc: crc(&a) },
        Block { frames: frames[1].clone(), data_start: a.len() as u64, data_len: b.len() as u32, data_crc: crc(&b) },
    ];
    let order = |first_version, offset, event_count| StreamEntry {
        stream_hash: hash("order-7"),
        first_version,
        offset,
        event_count,
        tag: 0,
    };
    // The second order-7 batch follows the golden one inside the first block.
    let mut streams = if version >= 2 {
        vec![order(5, 0, 3)]
    } else {
        vec![order(5, 0, 2), order(7, golden_batch().len() as u64, 1)]
    };
    streams.push(StreamEntry {
        stream_hash: hash("cart-1"),
        first_version: 0,
        offset: a.len() as u64,
        event_count: 1,
        tag: 0,
    });
    streams.sort_by_key(|e| (e.stream_hash, e.tag, e.first_version));
    let positions = [
        PositionEntry { position: 1000, offset: 0 },
        PositionEntry { position: 1002, offset: a.len() as u64 },
        PositionEntry { position: 1004, offset: golden_batch().len() as u64 },
    ];
    let header = Header {
        version,
        partition: 2,
        base_position: 1000,
        end_position: 1010,
        created: 1_764_200_000_000_000_000,
        job_end: 1010,
        reason: Reason::RetainedAndSnapshotted,
        dict_len: 0,
        block_bytes: 4096,
    };
    let audit = [AuditRecord {
        stream: "customer-3".into(),
        events: 3,
        first_position: 1005,
        last_position: 1009,
        deleted_at: 1_764_150_000_000_000_000,
        erased_at: 1_764_200_000_000_000_000,
    }];
    let parts = Parts {
        dictionary: &[],
        blocks: &blocks,
        streams: &streams,
        positions: &positions,
        sources: &[Source { base_position: 1000, bytes: 4096 }],
        audit: &audit,
    };
    archive::encode(&header, &parts)
}

/// The fixture of `version`: its layout around the frames is pinned, and its blocks give back
/// the golden batches; a flipped bit in a frame is caught by the block CRC, in the index by
/// the meta CRC.
fn check_pinned_archive(version: u32) {
    use super::archive::{self, BlockEntry};
    let dir = format!("v{version}");
    let pinned = fixture_at(&dir, "archive.bin", &golden_archive_at(version, None));
    let mut aligned = vec![0u64; pinned.len().div_ceil(8)];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut aligned);
    let bytes = &mut bytes[..pinned.len()];
    bytes.copy_from_slice(&pinned);
    let layout = archive::decode(bytes).unwrap();
    assert_eq!(layout.header.version, version);
    assert_eq!((layout.header.partition, layout.header.base_position, layout.header.end_position), (2, 1000, 1010));
    let blocks: &[BlockEntry] = archive::cast(bytes, &layout.blocks).unwrap();
    let frame = |i: usize| {
        let b = blocks[i].get();
        bytes[b.file_offset as usize..(b.file_offset + u64::from(b.compressed_len)) as usize].to_vec()
    };
    assert_eq!(golden_archive_at(version, Some([frame(0), frame(1)])), pinned, "the archive encoder's layout changed");
    let (a, b) = golden_archive_blocks();
    assert_eq!(archive::decompress_block(bytes, &layout, 0).unwrap(), a);
    assert_eq!(archive::decompress_block(bytes, &layout, 1).unwrap(), b);
    let audit = archive::audit_records(bytes, &layout).unwrap();
    assert_eq!((audit[0].stream.as_str(), audit[0].events), ("customer-3", 3));
    let at = blocks[1].get().file_offset as usize + 3;
    bytes[at] ^= 1;
    assert!(archive::decompress_block(bytes, &layout, 1).unwrap_err().1.contains("checksum"));
    bytes[at] ^= 1;
    bytes[layout.streams.start + 3] ^= 1;
    assert!(archive::decode(bytes).is_err());
}

#[test]
fn archive_bytes_are_pinned() {
    check_pinned_archive(1);
}

/// Version 2 (FORMAT.md §14): a block of columns and a block as it is, stream spans, and each
/// block's data CRC. Columns that give other batches than the data CRC says are refused.
#[test]
fn archive_v2_bytes_are_pinned() {
    use super::archive;
    check_pinned_archive(2);
    let (a, _) = golden_archive_blocks();
    if std::env::var_os("STRATA_BLESS").is_some() {
        // Seeds of the fuzz targets that read these bytes.
        let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        std::fs::write(seeds.join("archive_decode/golden-v2.bin"), golden_archive_at(2, None)).unwrap();
        std::fs::create_dir_all(seeds.join("archive_columns")).unwrap();
        let mut batches = vec![1u8];
        batches.extend_from_slice(&a);
        std::fs::write(seeds.join("archive_columns/batches.bin"), batches).unwrap();
        let mut cols = vec![0u8];
        cols.extend_from_slice(&(a.len() as u32).to_le_bytes()[..3]);
        cols.extend_from_slice(&super::columns::split(&a).unwrap().concat());
        std::fs::write(seeds.join("archive_columns/columns.bin"), cols).unwrap();
    }
    let mut cols = super::columns::split(&a).unwrap();
    let last = cols.payloads.len() - 1;
    cols.payloads[last] ^= 1;
    let first: Vec<u8> =
        cols.parts().iter().filter(|p| !p.is_empty()).flat_map(|p| zstd::bulk::compress(p, 3).unwrap()).collect();
    let [_, second] = golden_archive_frames(2);
    let image = super::Aligned::new(&golden_archive_at(2, Some([first, second])));
    let layout = archive::decode(image.bytes()).unwrap();
    let err = archive::decompress_block(image.bytes(), &layout, 0).unwrap_err();
    assert!(err.1.contains("do not match their checksum"), "{err:?}");
    // The footer's version must be the header's.
    let mut bytes = golden_archive_at(2, None);
    let f = bytes.len() - 64;
    bytes[f + 48] = 1;
    let sum = super::crc(&bytes[f..f + 52]);
    bytes[f + 52..f + 56].copy_from_slice(&sum.to_le_bytes());
    let err = archive::decode(super::Aligned::new(&bytes).bytes()).unwrap_err();
    assert!(err.what.contains("footer says version 1"), "{err:?}");
}

#[test]
fn tombstone_bytes_are_pinned() {
    use super::tombstone::{self, Tombstone};
    let mut bytes = tombstone::encode_header(3).to_vec();
    bytes.extend(tombstone::encode(&Tombstone { stream: "customer-3".into(), deleted_at: 1_764_150_000_000_000_000 }));
    bytes.extend(tombstone::encode(&Tombstone { stream: "cart-1".into(), deleted_at: 1_764_150_000_000_000_001 }));
    let pinned = fixture("tombstones.bin", &bytes);
    assert_eq!(bytes, pinned, "the tombstone encoder's output changed");
    let (records, end, damage) = tombstone::scan(&pinned).unwrap();
    assert_eq!((records.len(), end, damage), (2, pinned.len(), None));
    assert_eq!(records[1].stream, "cart-1");
    let (records, _, damage) = tombstone::scan(&pinned[..pinned.len() - 2]).unwrap();
    assert_eq!(records.len(), 1);
    assert!(damage.is_some());
}

/// Found by the `archive_decode` fuzz target: a block entry whose offset plus length
/// overflows must be refused, not panic.
#[test]
fn an_archive_block_at_an_overflowing_offset_is_refused() {
    use super::archive;
    let mut bytes = golden_archive(None);
    let len = bytes.len();
    let meta = u64::from_le_bytes(bytes[len - 64..len - 56].try_into().unwrap()) as usize;
    bytes[meta..meta + 8].copy_from_slice(&(u64::MAX - 2).to_le_bytes());
    let meta_crc = super::crc(&bytes[meta..len - 64]);
    bytes[len - 20..len - 16].copy_from_slice(&meta_crc.to_le_bytes());
    let footer_crc = super::crc(&bytes[len - 64..len - 12]);
    bytes[len - 12..len - 8].copy_from_slice(&footer_crc.to_le_bytes());
    let mut aligned = vec![0u64; len.div_ceil(8)];
    let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut aligned);
    buf[..len].copy_from_slice(&bytes);
    assert!(matches!(archive::decode(&buf[..len]), Err(Malformed { cause: Cause::Damaged, .. })));
}

/// A checkpoint file extended for a grown store: zeros past the header's slots (a crash between
/// the extension and the header rewrite) read as partitions never written; anything else past
/// them, or a file cut short, is damage.
#[test]
fn checkpoint_file_extended_for_a_grow() {
    use super::checkpoint::{self as ckp, Checkpoint};
    let c = Checkpoint { seq: 3, position: 42, time: 7 };
    let mut bytes = ckp::encode_file(2, 9, &[c, c]);
    bytes.resize(ckp::file_len(5), 0);
    let got = ckp::decode(&bytes).unwrap();
    assert_eq!(got.len(), 5);
    assert_eq!((got[1], got[4]), (c, Checkpoint::default()));
    // The header rewritten: the same.
    bytes[..ckp::HEADER_LEN].copy_from_slice(&ckp::encode_header(5, 9));
    assert_eq!(ckp::decode(&bytes).unwrap(), got);
    // Not whole slot pairs past the header's, or not zeros: damage.
    let mut torn = ckp::encode_file(2, 9, &[c, c]);
    torn.resize(ckp::file_len(3) - 8, 0);
    assert!(ckp::decode(&torn).is_err());
    let mut garbage = ckp::encode_file(2, 9, &[c, c]);
    garbage.resize(ckp::file_len(3), 0);
    *garbage.last_mut().unwrap() = 1;
    assert!(ckp::decode(&garbage).is_err());
    // Cut short of the header's count: damage.
    let short = &bytes[..ckp::file_len(4)];
    assert!(ckp::decode(short).is_err());
}

#[test]
fn active_index_bytes_are_pinned() {
    use super::active_index::{self as aix, Entry};
    // Partition 2, segment 1000: a record of three batches (two of order-7, one of cart-1 at
    // version 40), then one continuing it with a third order-7 batch.
    let mut bytes = aix::encode_header(2, 1000).to_vec();
    let first = [
        Entry { stream: "order-7", first_version: 5, event_count: 2, len: 184 },
        Entry { stream: "cart-1", first_version: 40, event_count: 1, len: 96 },
        Entry { stream: "order-7", first_version: 7, event_count: 1, len: 88 },
    ];
    bytes.extend(aix::encode(64, 1000, 1_764_115_200_000_000_000, &first));
    let second = [Entry { stream: "order-7", first_version: 8, event_count: 3, len: 200 }];
    bytes.extend(aix::encode(432, 1004, 1_764_115_200_000_000_001, &second));
    let pinned = fixture("active-index.bin", &bytes);
    assert_eq!(bytes, pinned, "the active index journal encoder's output changed");
    let sc = aix::scan(&pinned, 2, 1000).unwrap();
    let records = sc.records;
    assert!(sc.frozen.is_none());
    assert_eq!((records.len(), sc.valid_end, sc.damage), (2, pinned.len(), None));
    assert_eq!(records[0].streams, vec!["order-7", "cart-1"]);
    let last = records[1].batches().next().unwrap();
    assert_eq!(last, records[1].last);
    assert_eq!((last.first_version, last.position, last.offset), (8, 1004, 432));
    assert_eq!((records[1].to_offset, records[1].to_position), (632, 1007));
}

/// Version 3 of the journal (FORMAT.md §8.4): the batches of the version 1 fixture (segment
/// 1000 of partition 2) as a frozen section, then a record of one more `cart-1` batch.
#[test]
fn active_index_frozen_bytes_are_pinned() {
    use super::active_index::{self as aix, Entry, FrozenHeader};
    use super::index::{PositionEntry, StreamEntry};
    use crate::router::stream_hash;
    let (order, cart) = (stream_hash("order-7"), stream_hash("cart-1"));
    let e = |stream_hash, first_version, offset, event_count| StreamEntry {
        stream_hash,
        first_version,
        offset,
        event_count,
        tag: 0,
    };
    let mut streams = vec![e(order, 5, 64, 2), e(cart, 40, 248, 1), e(order, 7, 344, 1), e(order, 8, 432, 3)];
    streams.sort_unstable_by_key(|e| (e.stream_hash, e.tag, e.first_version));
    let positions = [PositionEntry { position: 1000, offset: 64 }];
    let header =
        FrozenHeader { partition: 2, base_position: 1000, to_offset: 632, to_position: 1007, last_offset: 432 };
    let mut bytes = aix::encode_frozen(&header, &streams, &positions);
    assert_eq!(bytes.len(), 64 + 4 * 32 + 16);
    let more = [Entry { stream: "cart-1", first_version: 41, event_count: 1, len: 96 }];
    bytes.extend(aix::encode(632, 1007, 1_764_115_200_000_000_002, &more));
    let pinned = fixture_at("v3", "active-index.bin", &bytes);
    assert_eq!(bytes, pinned, "the version 3 active index journal encoder's output changed");
    let image = super::Aligned::new(&pinned);
    let sc = aix::scan(image.bytes(), 2, 1000).unwrap();
    let f = sc.frozen.unwrap();
    assert_eq!(f.header, header);
    assert_eq!(f.streams.iter().map(StreamEntry::get).collect::<Vec<_>>(), streams);
    assert_eq!(f.end, 64 + 4 * 32 + 16);
    assert_eq!((sc.records.len(), sc.valid_end, sc.damage), (1, pinned.len(), None));
    assert_eq!((sc.records[0].from_offset, sc.records[0].to_position), (632, 1008));
    // Every bit of the section matters: a flip fails the whole journal.
    for bit in 0..f.end * 8 {
        let mut c = pinned.clone();
        c[bit / 8] ^= 1 << (bit % 8);
        let image = super::Aligned::new(&c);
        assert!(aix::scan(image.bytes(), 2, 1000).is_err(), "flip of bit {bit} not detected");
    }
    // Unsorted entries under a valid CRC are refused too.
    let mut swapped = streams.clone();
    swapped.swap(0, 1);
    let bad = aix::encode_frozen(&header, &swapped, &positions);
    assert!(aix::scan(super::Aligned::new(&bad).bytes(), 2, 1000).is_err());
}

/// A zstd bomb: a block whose frame (with a valid CRC) decompresses to far more than the block
/// records. Decompression stops one byte past the recorded length and the block is refused;
/// memory never grows towards what the frame would give.
#[test]
fn an_archive_block_that_decompresses_past_its_length_is_refused() {
    use super::archive;
    let (a, b) = golden_archive_blocks();
    let bomb = zstd::bulk::compress(&vec![0u8; 256 << 20], 3).unwrap();
    assert!(bomb.len() < 64 << 10, "a bomb: {} bytes", bomb.len());
    let bytes = golden_archive(Some([zstd::bulk::compress(&a, 3).unwrap(), bomb]));
    let image = super::Aligned::new(&bytes);
    let layout = archive::decode(image.bytes()).unwrap();
    let err = archive::decompress_block(image.bytes(), &layout, 1).unwrap_err();
    // It stopped one byte past the recorded length, not at 256 MiB.
    assert!(err.1.contains(&format!("decompresses to {} bytes, not {}", b.len() + 1, b.len())), "{err:?}");
    assert!(archive::decompress_block(image.bytes(), &layout, 0).is_ok());
}

/// The bomb in a version 2 block: stopped one byte past the block's length and layout byte.
#[test]
fn an_archive_v2_block_that_decompresses_past_its_length_is_refused() {
    use super::archive;
    let bomb = zstd::bulk::compress(&vec![2u8; 256 << 20], 3).unwrap();
    let [first, _] = golden_archive_frames(2);
    let image = super::Aligned::new(&golden_archive_at(2, Some([first, bomb])));
    let layout = archive::decode(image.bytes()).unwrap();
    let err = archive::decompress_block(image.bytes(), &layout, 1).unwrap_err();
    assert!(err.1.contains("decompresses to more than"), "{err:?}");
    assert!(archive::decompress_block(image.bytes(), &layout, 0).is_ok());
}

#[test]
fn poison_marker_bytes_are_pinned() {
    use super::poison::{self, Marker};
    let m = Marker { partition: 2, segment: 52_311, durable_end: 9_000_064 };
    let bytes = poison::encode(&m);
    assert_eq!(bytes.to_vec(), fixture("poison.bin", &bytes));
    assert_eq!(poison::decode(&bytes), Ok(m));
}

/// The stream metadata of partition 3: `order-7` given a `max_count` of 100 and custom bytes,
/// `cart-1` a `truncate_before` of 5 and a `max_age` of 30 days, then `order-7` changed to a
/// `max_count` of 50 (its custom bytes kept) and `cart-1` soft-deleted at version 11 (FORMAT.md
/// §19).
fn golden_stream_meta() -> (Vec<u8>, Vec<super::stream_meta::MetaRecord>) {
    use super::stream_meta::{self as smd, MetaRecord};
    let t = 1_764_150_000_000_000_000;
    let custom = br#"{"owner":"billing"}"#.to_vec();
    let thirty_days = 30 * 86_400 * 1_000_000_000;
    let records = vec![
        MetaRecord {
            stream: "order-7".into(),
            written_at: t,
            max_count: 100,
            custom: custom.clone(),
            ..Default::default()
        },
        MetaRecord {
            stream: "cart-1".into(),
            written_at: t + 1,
            truncate_before: 5,
            max_age: thirty_days,
            ..Default::default()
        },
        MetaRecord {
            stream: "order-7".into(),
            meta_version: 1,
            written_at: t + 2,
            max_count: 50,
            custom,
            ..Default::default()
        },
        MetaRecord {
            stream: "cart-1".into(),
            meta_version: 1,
            written_at: t + 3,
            truncate_before: 12,
            max_age: thirty_days,
            deleted_at: t + 3,
            ..Default::default()
        },
    ];
    let mut bytes = smd::encode_header(3).to_vec();
    for r in &records {
        bytes.extend(smd::encode(r));
    }
    (bytes, records)
}

#[test]
fn stream_meta_bytes_are_pinned() {
    use super::stream_meta as smd;
    let (bytes, want) = golden_stream_meta();
    let pinned = fixture("stream-meta.bin", &bytes);
    assert_eq!(bytes, pinned, "the stream metadata encoder's output changed");
    assert_eq!(pinned.len(), 64 + 96 + 72 + 96 + 72);
    assert_eq!(smd::check_header(&pinned), Ok(3));
    let (records, end, damage) = smd::scan(&pinned).unwrap();
    assert_eq!((records, end, damage), (want.clone(), pinned.len(), None));
    // A record cut short ends the scan there.
    let (records, end, damage) = smd::scan(&pinned[..pinned.len() - 2]).unwrap();
    assert_eq!((records.len(), end), (3, pinned.len() - 72));
    assert!(damage.is_some());
}

#[test]
fn cursor_bytes_are_pinned() {
    use super::cursor;
    let positions = [1500, 0, 77];
    let bytes = cursor::encode(&positions);
    let pinned = fixture("cursor.bin", &bytes);
    assert_eq!(bytes, pinned, "the cursor encoder's output changed");
    assert_eq!(pinned.len(), 16 + 8 * 3 + 4);
    assert_eq!(cursor::decode(&pinned), Ok(positions.to_vec()));
    // Every flipped bit and every cut is refused.
    for bit in 0..pinned.len() * 8 {
        let mut b = pinned.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(cursor::decode(&b).is_err(), "bit {bit}");
    }
    for len in 0..pinned.len() {
        assert!(cursor::decode(&pinned[..len]).is_err(), "cut to {len}");
    }
    assert_eq!(cursor::decode(&cursor::encode(&[])), Ok(vec![]));
}

/// The archive reasons' codes are part of the format (FORMAT.md §14.1): each has its code,
/// each code reads back as its reason, and the next code is refused.
#[test]
fn archive_reason_codes_are_pinned() {
    use super::archive::Reason;
    let codes = [
        (Reason::RetainedAndSnapshotted, 1),
        (Reason::Retained, 2),
        (Reason::HotBytes, 3),
        (Reason::Erasure, 4),
        (Reason::Forced, 5),
        (Reason::RetainedCold, 6),
    ];
    for (reason, code) in codes {
        assert_eq!(reason.code(), code);
        assert_eq!(Reason::from_code(code), Some(reason));
    }
    assert_eq!(Reason::from_code(0), None);
    assert_eq!(Reason::from_code(7), None);
}
