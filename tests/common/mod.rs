//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use strata::{EventData, ExpectedVersion, Options, RecordedEvent, Store};

/// Options for a fresh store in a test: small segments so rolls happen.
pub fn opts(partitions: u32, segment_bytes: u64) -> Options {
    Options::default().create_if_missing(true).partitions(partitions).segment_bytes(segment_bytes)
}

pub fn ev(t: &str, payload: impl Into<Vec<u8>>) -> EventData {
    EventData::new(t, payload)
}

/// Appends `n` single-event batches to `stream`, checking versions; returns the payloads.
pub fn fill(store: &Store, stream: &str, n: usize) -> Vec<Vec<u8>> {
    let mut expected = match store.stream_version(stream).unwrap() {
        None => ExpectedVersion::NoStream,
        Some(v) => ExpectedVersion::Exact(v),
    };
    let mut out = Vec::new();
    for i in 0..n {
        let payload = format!("{stream}:{i}:{}", "x".repeat(i % 7)).into_bytes();
        let r = store.append(stream, expected, &[ev("Filled", payload.clone())]).unwrap();
        expected = r.next_expected();
        out.push(payload);
    }
    out
}

pub fn payloads(events: &[RecordedEvent]) -> Vec<Vec<u8>> {
    events.iter().map(|e| e.payload.clone()).collect()
}

/// The segment files of a partition directory, sorted.
pub fn segments(dir: &Path, partition: u32) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(format!("p{partition:05}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// Byte offsets of the batches in a segment file (walking the length fields).
pub fn batch_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut off = 64;
    while off + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push(off);
        off += len;
    }
    out
}

/// Where the batches of a segment file end (preallocated zeros may follow).
pub fn data_end(bytes: &[u8]) -> usize {
    match batch_offsets(bytes).last() {
        Some(&o) => o + u32::from_le_bytes(bytes[o + 4..o + 8].try_into().unwrap()) as usize,
        None => 64,
    }
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A test aggregate: the number of events seen and a digest of their versions, types and
/// payloads, so any missing, repeated or reordered event changes it. `EVERY` is its snapshot
/// interval and `SCHEMA` the only schema tag it accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally<const EVERY: u64 = 3, const SCHEMA: u32 = 1> {
    pub events: u64,
    pub digest: u64,
}

impl<const EVERY: u64, const SCHEMA: u32> Tally<EVERY, SCHEMA> {
    /// The state a full replay of `stream` gives, computed here, not by `Store::load`.
    pub fn replayed(store: &Store, stream: &str) -> Self {
        let mut t = Self::default();
        for e in store.read_stream(stream, 0, usize::MAX).unwrap() {
            strata::Aggregate::apply(&mut t, &e).unwrap();
        }
        t
    }
}

impl<const EVERY: u64, const SCHEMA: u32> strata::Aggregate for Tally<EVERY, SCHEMA> {
    const SCHEMA: u32 = SCHEMA;
    const SNAPSHOT_EVERY: u64 = EVERY;

    /// One name for every interval and schema: they model one aggregate's versions.
    fn name() -> &'static str {
        "Tally"
    }

    fn apply(&mut self, e: &RecordedEvent) -> Result<(), strata::ApplyError> {
        if e.version != self.events {
            return Err(format!("event {} applied after {} events", e.version, self.events).into());
        }
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ e.version;
        for b in e.event_type.bytes().chain(e.payload.iter().copied()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        self.digest = self.digest.rotate_left(7) ^ h;
        self.events += 1;
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = self.events.to_le_bytes().to_vec();
        v.extend_from_slice(&self.digest.to_le_bytes());
        v
    }

    fn decode(schema: u32, state: &[u8]) -> Option<Self> {
        if schema != SCHEMA || state.len() != 16 {
            return None;
        }
        Some(Tally {
            events: u64::from_le_bytes(state[..8].try_into().ok()?),
            digest: u64::from_le_bytes(state[8..].try_into().ok()?),
        })
    }
}

/// The snapshot sidecar of a partition.
pub fn sidecar(dir: &Path, partition: u32) -> PathBuf {
    dir.join(format!("p{partition:05}")).join("snapshots.snap")
}

/// A projection that counts each stream's events and the times one came out of version
/// order.
#[derive(Default)]
pub struct StreamOrder {
    pub next: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    pub violations: std::sync::atomic::AtomicU64,
}

impl strata::Projection for StreamOrder {
    fn handle(&self, e: &RecordedEvent) -> Result<(), strata::projection::HandlerError> {
        let mut next = self.next.lock().unwrap();
        let want = next.entry(e.stream_id.clone()).or_insert(0);
        if e.version != *want {
            self.violations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        *want = e.version + 1;
        Ok(())
    }
}

/// A projection that fails every event.
pub struct AlwaysFails;

impl strata::Projection for AlwaysFails {
    fn handle(&self, _: &RecordedEvent) -> Result<(), strata::projection::HandlerError> {
        Err("always".into())
    }
}
pub mod backends;
pub mod nats;
