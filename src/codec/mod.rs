//! Typed events (feature `serde`), the base of the public [`typed`](crate::typed) module:
//! [`DomainEvent`], the codecs, the metadata envelope, and [`Upcasters`]. The typed
//! aggregate and projection traits live on their own floors (`aggregate::typed`,
//! `projection::typed`).

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::event::{EventData, EventView, RecordedEvent};

mod content;
mod upcast;

pub use upcast::Upcasters;

use content::{AsContent, ContentSeed, Shape};

/// How a typed event's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// JSON (serde_json): readable by any tool, tolerant of added optional fields.
    #[default]
    Json,
    /// postcard: compact varint-based binary, fast; not self-describing (see the module docs).
    Postcard,
}

impl Codec {
    fn tag(self) -> u8 {
        match self {
            Codec::Json => 1,
            Codec::Postcard => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<Codec> {
        match tag {
            1 => Some(Codec::Json),
            2 => Some(Codec::Postcard),
            _ => None,
        }
    }
}

/// The first bytes of a typed event's metadata: `0xFF` (never in UTF-8 text, so no JSON or
/// text metadata written through the byte API starts with it) and `"st"`.
const MAGIC: [u8; 3] = [0xFF, b's', b't'];

/// The envelope's length: magic, codec, schema version (u32, little-endian).
pub const ENVELOPE_LEN: usize = 8;

/// What a stored event's metadata says about its payload (FORMAT.md §22).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The payload's codec.
    pub codec: Codec,
    /// The event's schema version.
    pub schema: u32,
    /// The application's own metadata, after the envelope.
    pub metadata: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Reads the envelope at the start of `metadata`. Metadata that does not start with the
    /// envelope's magic is an event written through the byte API: JSON at schema 1, and all of
    /// the metadata is the application's.
    ///
    /// Errors: the magic is there but the envelope is cut short or names an unknown codec.
    pub fn parse(metadata: &'a [u8]) -> std::result::Result<Envelope<'a>, String> {
        if !metadata.starts_with(&MAGIC) {
            return Ok(Envelope { codec: Codec::Json, schema: 1, metadata });
        }
        let Some((head, rest)) = metadata.split_first_chunk::<ENVELOPE_LEN>() else {
            return Err(format!("typed-event envelope cut short: {} of {ENVELOPE_LEN} bytes", metadata.len()));
        };
        let codec =
            Codec::from_tag(head[3]).ok_or_else(|| format!("unknown codec {} in the typed-event envelope", head[3]))?;
        let schema = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        Ok(Envelope { codec, schema, metadata: rest })
    }

    /// The envelope's bytes followed by `metadata`.
    fn write(codec: Codec, schema: u32, metadata: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENVELOPE_LEN + metadata.len());
        out.extend_from_slice(&MAGIC);
        out.push(codec.tag());
        out.extend_from_slice(&schema.to_le_bytes());
        out.extend_from_slice(metadata);
        out
    }
}

/// A domain event: a Rust type (usually an enum, one variant per event type) that strata
/// stores and reads back through serde. Every method has a default; `impl DomainEvent for
/// MyEvent {}` is a complete implementation for a serde-derived enum.
///
/// The event type of a value is its variant's name (for a struct event, the struct's name).
/// Enums must be externally tagged (serde's default) for that; an internally tagged or
/// untagged enum is stored under the enum's name, and should override
/// [`DomainEvent::handles`].
pub trait DomainEvent: Serialize + DeserializeOwned {
    /// The codec new events of this type are written with. Stored events are read with the
    /// codec their envelope names, so changing this affects only new events.
    const CODEC: Codec = Codec::Json;

    /// The schema version of this value's shape, stored with it (by default 1). Raise it for
    /// a variant whose fields change, and register an upcaster from the old version.
    fn schema_version(&self) -> u32 {
        1
    }

    /// The upcasters that bring older stored shapes of these events to the current one (by
    /// default none).
    fn upcasters() -> &'static Upcasters {
        Upcasters::none()
    }

    /// Whether a stored event of this type is one of these events: a variant's name (or the
    /// struct's), or a type an upcaster starts from. Typed projections and
    /// [`Filter::domain`](crate::Filter::domain) skip the events it refuses.
    fn handles(event_type: &str) -> bool {
        let known = match content::shape::<Self>() {
            Shape::Variants(names) => names.contains(&event_type),
            Shape::Named(name) => name == event_type,
            Shape::Unknown => true,
        };
        known || Self::upcasters().knows(event_type)
    }
}

/// Every event type `E` may be stored under: its variants' names (or the struct's name), and
/// the types its upcasters start from; `None` if serde does not say (see
/// [`DomainEvent::handles`]).
pub(crate) fn event_types<E: DomainEvent>() -> Option<Vec<String>> {
    let mut types: Vec<String> = match content::shape::<E>() {
        Shape::Variants(names) => names.iter().map(|n| (*n).to_owned()).collect(),
        Shape::Named(name) => vec![name.to_owned()],
        Shape::Unknown => return None,
    };
    for t in E::upcasters().source_types() {
        if !types.iter().any(|known| known == t) {
            types.push(t.to_owned());
        }
    }
    Some(types)
}

/// `value` as the content of its variant, with the variant's (or struct's) name.
pub(crate) fn encode_content<T: Serialize + ?Sized>(
    codec: Codec,
    value: &T,
) -> std::result::Result<(Option<&'static str>, Vec<u8>), String> {
    let name = std::cell::Cell::new(None);
    let content = AsContent { value, name: &name };
    let bytes = match codec {
        Codec::Json => serde_json::to_vec(&content).map_err(|e| e.to_string())?,
        Codec::Postcard => postcard::to_allocvec(&content).map_err(|e| e.to_string())?,
    };
    Ok((name.get(), bytes))
}

/// A `T` from the content of variant `name` (or a struct `T` from its fields), with nothing
/// left over.
pub(crate) fn decode_content<T: DeserializeOwned>(
    codec: Codec,
    name: &str,
    bytes: &[u8],
) -> std::result::Result<T, String> {
    let seed = ContentSeed { name, marker: PhantomData::<T> };
    match codec {
        Codec::Json => {
            // A unit variant written by another tool may have an empty payload.
            let bytes = if bytes.is_empty() { b"null" } else { bytes };
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let value = serde::de::DeserializeSeed::deserialize(seed, &mut de).map_err(|e| e.to_string())?;
            de.end().map_err(|e| e.to_string())?;
            Ok(value)
        }
        Codec::Postcard => {
            let mut de = postcard::Deserializer::from_bytes(bytes);
            let value = serde::de::DeserializeSeed::deserialize(seed, &mut de).map_err(|e| e.to_string())?;
            let rest = de.finalize().map_err(|e| e.to_string())?;
            if !rest.is_empty() {
                return Err(format!("{} bytes after the event", rest.len()));
            }
            Ok(value)
        }
    }
}

/// Decodes a stored event as `E`, through `E`'s upcasters.
fn decode_stored<E: DomainEvent>(
    event_type: &str,
    metadata: &[u8],
    payload: &[u8],
    at: impl FnOnce() -> (String, u64),
) -> Result<E> {
    let fail = |reason: String, at: (String, u64)| Error::Codec {
        event_type: event_type.to_owned(),
        at: Some(at),
        decoding: true,
        reason,
    };
    let envelope = match Envelope::parse(metadata) {
        Ok(e) => e,
        Err(reason) => return Err(fail(reason, at())),
    };
    let decoded = E::upcasters()
        .upcast(event_type, envelope.schema, envelope.codec, payload)
        .and_then(|(ty, payload)| decode_content(envelope.codec, &ty, &payload));
    decoded.map_err(|reason| fail(reason, at()))
}

impl EventData {
    /// A typed event, encoded: its variant's name as the event type, its content as the
    /// payload (in `E::CODEC`), and the envelope (codec, schema version) as the metadata.
    ///
    /// Errors: [`Error::Codec`] if serde cannot encode the value (a map with non-string keys
    /// in JSON, say), or if it has no name (a map or a number is not an event).
    pub fn encode<E: DomainEvent>(event: &E) -> Result<EventData> {
        EventData::encode_with_metadata(event, &[])
    }

    /// [`EventData::encode`], with the application's own metadata after the envelope
    /// ([`RecordedEvent::user_metadata`] gives it back).
    pub fn encode_with_metadata<E: DomainEvent>(event: &E, metadata: &[u8]) -> Result<EventData> {
        let fail = |event_type: &str, reason: String| Error::Codec {
            event_type: event_type.to_owned(),
            at: None,
            decoding: false,
            reason,
        };
        let type_name = std::any::type_name::<E>();
        let (name, payload) = encode_content(E::CODEC, event).map_err(|r| fail(type_name, r))?;
        let Some(name) = name else {
            return Err(fail(
                type_name,
                "not an enum variant or a struct: it has no name to store as the event type".into(),
            ));
        };
        Ok(EventData::new(name, payload).with_metadata(Envelope::write(E::CODEC, event.schema_version(), metadata)))
    }
}

/// Encodes each of `events` ([`EventData::encode`]): what a command's decision or an append
/// of typed events needs.
///
/// Errors: [`Error::Codec`] for the first event that does not encode.
pub fn encode_all<E: DomainEvent>(events: &[E]) -> Result<Vec<EventData>> {
    events.iter().map(EventData::encode).collect()
}

impl RecordedEvent {
    /// The event as `E`, after `E`'s upcasters.
    ///
    /// Errors: [`Error::Codec`], naming the stream and version, if the payload is not an `E`
    /// (another type's event, a shape no upcaster brings forward, damaged bytes).
    pub fn decode<E: DomainEvent>(&self) -> Result<E> {
        decode_stored(&self.event_type, &self.metadata, &self.payload, || (self.stream_id.clone(), self.version))
    }

    /// The application's metadata: what follows the typed-event envelope, or all of the
    /// metadata for an event written through the byte API.
    pub fn user_metadata(&self) -> &[u8] {
        Envelope::parse(&self.metadata).map_or(&self.metadata[..], |e| e.metadata)
    }
}

impl EventView<'_> {
    /// [`RecordedEvent::decode`], from the borrowed event.
    pub fn decode<E: DomainEvent>(&self) -> Result<E> {
        decode_stored(self.event_type, self.metadata, self.payload, || (self.stream_id.to_owned(), self.version))
    }
}
