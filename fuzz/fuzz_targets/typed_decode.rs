//! Typed-event decoding (feature `serde`) on arbitrary stored events: the metadata envelope,
//! a chain of upcasters (a rename, a typed step, a JSON step), and both codecs. It never
//! panics, every refusal is `Error::Codec`, and what decodes re-encodes to an event that
//! decodes to the same value.
//!
//! Input: `[type length u8][type][metadata length u8][metadata][payload ...]`.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use strata::typed::{Codec, DomainEvent, Upcasters};
use strata::{Error, EventData, RecordedEvent};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Event {
    Opened { owner: String, tags: Vec<String> },
    Deposited { cents: u64, currency: String },
    Moved(i32, Option<bool>),
    Note(String),
    Closed,
}

#[derive(Deserialize)]
struct AmountV1 {
    amount: u64,
}

#[derive(Serialize)]
struct AmountV2 {
    cents: u64,
}

impl DomainEvent for Event {
    fn schema_version(&self) -> u32 {
        if matches!(self, Event::Deposited { .. }) { 3 } else { 1 }
    }

    fn upcasters() -> &'static Upcasters {
        static UP: LazyLock<Upcasters> = LazyLock::new(|| {
            Upcasters::new()
                .rename("MoneyIn", 1, "Deposited")
                .add("Deposited", 1, |old: AmountV1| AmountV2 { cents: old.amount.wrapping_mul(100) })
                .add_json("Deposited", 2, |mut v| {
                    v.as_object_mut().ok_or("not an object")?.insert("currency".into(), "EUR".into());
                    Ok(v)
                })
                // A cycle, which the chain's bound must end.
                .rename("Ping", 1, "Pong")
                .rename("Pong", 1, "Ping")
        });
        &UP
    }
}

/// The same events, written compactly.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Compact {
    Opened { owner: String, tags: Vec<String> },
    Deposited { cents: u64, currency: String },
    Moved(i32, Option<bool>),
    Note(String),
    Closed,
}

impl DomainEvent for Compact {
    const CODEC: Codec = Codec::Postcard;
}

fn take<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let (n, rest) = data.split_first().map_or((0, &[][..]), |(n, rest)| (*n as usize, rest));
    let (head, tail) = rest.split_at(n.min(rest.len()));
    *data = tail;
    head
}

fn recorded(event_type: &str, metadata: &[u8], payload: &[u8]) -> RecordedEvent {
    let data = EventData::new(event_type, payload.to_vec()).with_metadata(metadata.to_vec());
    RecordedEvent {
        stream_id: "fuzz".into(),
        version: 0,
        partition: 0,
        position: 0,
        timestamp_nanos: 0,
        event_type: data.event_type,
        metadata: data.metadata,
        payload: data.payload,
        id: None,
        correlation_id: None,
        causation_id: None,
    }
}

fn check<E: DomainEvent + PartialEq + std::fmt::Debug>(e: &RecordedEvent) {
    match e.decode::<E>() {
        Ok(value) => {
            let again = EventData::encode(&value).expect("a decoded event encodes");
            let back = recorded(&again.event_type, &again.metadata, &again.payload);
            assert_eq!(back.decode::<E>().expect("a re-encoded event decodes"), value);
        }
        Err(Error::Codec { decoding: true, at: Some(_), .. }) => {}
        Err(other) => panic!("not a codec error: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let Ok(event_type) = std::str::from_utf8(take(&mut data)) else { return };
    let metadata = take(&mut data);
    let e = recorded(event_type, metadata, data);
    check::<Event>(&e);
    check::<Compact>(&e);
    let _ = e.user_metadata();
    let _ = Event::handles(event_type);
});
