//! Entry points for the fuzz targets under `fuzz/` (feature `fuzzing`; not a stable API).
//! Each feeds arbitrary bytes to one reader of on-disk data and checks what the reader
//! accepts: it must never panic, and what it accepts must be self-consistent.
#![allow(missing_docs, clippy::missing_panics_doc)]

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::event::EventData;
use crate::format::batch::{self, Limits};
use crate::format::index;
use crate::format::manifest::Manifest;
use crate::format::segment::{self, Mode};
use crate::{Error, ExpectedVersion, Options, Store};

/// Decodes a batch; an accepted batch must re-encode to exactly the same bytes.
pub fn batch_decode(data: &[u8]) {
    let Ok(b) = batch::decode(data) else { return };
    let events: Vec<EventData> = b
        .events()
        .map(|e| EventData::new(e.event_type, e.payload.to_vec()).with_metadata(e.metadata.to_vec()))
        .collect();
    assert_eq!(events.len(), b.event_count as usize);
    let limits = Limits { max_event_bytes: u64::MAX, max_append_bytes: 1 << 31 };
    let mut again = batch::encode(b.stream_id, &events, limits).expect("an accepted batch re-encodes");
    batch::finish(&mut again, b.base_position, b.first_version, b.timestamp, b.synced_offset);
    assert_eq!(Some(&again[..]), data.get(..b.length), "decode and encode disagree");
}

/// Scans bytes as a segment body (behind a valid header) and as a whole segment file.
pub fn segment_scan(data: &[u8]) {
    let mut bytes = segment::encode_header(0, 0, 0).to_vec();
    bytes.extend_from_slice(data);
    for file in [&bytes[..], data] {
        let Ok(header) = segment::decode_header(file) else { continue };
        for mode in [Mode::Active, Mode::Sealed] {
            let mut next = header.base_position;
            let mut prev_end = segment::HEADER_LEN as u64;
            let result = segment::scan(file, &header, mode, |off, b| {
                assert_eq!(off, prev_end, "batches are contiguous");
                assert_eq!(b.base_position, next, "positions are contiguous");
                next = b.end_position();
                prev_end = off + b.length as u64;
            });
            if let Ok(end) = result {
                assert_eq!(end.data_end(), prev_end);
                assert!(end.data_end() as usize <= file.len());
            }
        }
    }
}

/// Validates bytes as an index file (from an 8-aligned copy, as a memory map would be).
pub fn index_decode(data: &[u8]) {
    let mut aligned = vec![0u64; data.len().div_ceil(8)];
    let buf = bytemuck::cast_slice_mut::<u64, u8>(&mut aligned);
    let Some(buf) = buf.get_mut(..data.len()) else { return };
    buf.copy_from_slice(data);
    if let Ok(view) = index::decode(buf) {
        let again = index::encode(
            &view.header,
            &view.streams.iter().map(index::StreamEntry::get).collect::<Vec<_>>(),
            &view.positions.iter().map(index::PositionEntry::get).collect::<Vec<_>>(),
        );
        assert_eq!(&again[..], &buf[..], "decode and encode disagree");
    }
}

/// Decodes a manifest; an accepted one re-encodes to the same bytes.
pub fn manifest_decode(data: &[u8]) {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(&m.encode()[..], data);
    }
}

fn template() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
        let dir = tempfile::Builder::new().prefix("strata-fuzz").tempdir_in(base).expect("temp dir").keep();
        let opts = Options::default().create_if_missing(true).partitions(1).segment_bytes(4096).preallocate(false);
        Store::open(&dir, opts).expect("create the fuzz store").close().expect("close");
        dir
    })
}

/// Opens a store whose only segment is a valid header followed by `data`, then reads
/// everything and appends: open fails cleanly or recovers a consistent log.
pub fn store_open(data: &[u8]) {
    let dir = template();
    let pdir = dir.join("p00000");
    for entry in std::fs::read_dir(&pdir).expect("list") {
        std::fs::remove_file(entry.expect("entry").path()).expect("clean");
    }
    let mut bytes = segment::encode_header(0, 0, 0).to_vec();
    bytes.extend_from_slice(data);
    std::fs::write(pdir.join(segment::file_name(0)), &bytes).expect("write segment");
    let store = match Store::open(dir, Options::default().preallocate(false)) {
        Ok(s) => s,
        Err(Error::Corruption { .. }) => return,
        Err(e) => panic!("open failed with an unexpected error: {e}"),
    };
    let all = store.read_partition(0, 0, usize::MAX).expect("recovered data reads back");
    assert_eq!(all.len() as u64, store.head(0).expect("head"));
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, i as u64);
        let from_stream = store.read_stream(&e.stream_id, e.version, 1).expect("stream read");
        assert_eq!(from_stream.first(), Some(e));
    }
    let r = store.append("fuzz", ExpectedVersion::Any, &[EventData::new("T", b"x".to_vec())]).expect("append");
    assert_eq!(r.first_position, all.len() as u64);
    store.close().expect("close");
}
