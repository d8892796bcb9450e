//! An event as a JetStream message, and what the server answers (docs/jetstream.md,
//! "Messages"): the payload is the event's payload, and headers carry the rest.
//!
//! | header | value |
//! |---|---|
//! | `Strata-Version` | the event's version in its stream, decimal |
//! | `Strata-Type` | the event type, if it is printable ASCII without spaces |
//! | `Strata-Type-B64` | otherwise: the event type's UTF-8, base64 (standard, padded) |
//! | `Strata-Meta` | the metadata, base64, if there is any |
//! | `Strata-Time` | when the append was made, nanoseconds since the Unix epoch, decimal |
//! | `Strata-Correlation`, `Strata-Causation` | the ids, as UUIDs, if given |
//! | `Nats-Msg-Id` | the event's id as a UUID if it has one, else `{append id}-{index}` (`{append id}/{part}-{index}` in an atomic append of several streams) |
//!
//! The message id makes the server drop a retried publish within its duplicate window, and
//! lets a retry tell whether its first attempt landed.

use std::str::FromStr;

use async_nats::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::error::{Error, Result};
use crate::event::{EventData, EventId, EventView};

/// One message read back, decoded.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub seq: u64,
    pub subject: String,
    pub version: u64,
    pub event_type: String,
    pub metadata: Vec<u8>,
    pub payload: bytes::Bytes,
    pub time: u64,
    pub id: Option<EventId>,
    pub msg_id: Option<String>,
    pub correlation: Option<EventId>,
    pub causation: Option<EventId>,
    pub partition: u32,
}

impl Decoded {
    /// The event, borrowed, as a member of `stream`.
    pub fn view<'a>(&'a self, stream: &'a str) -> EventView<'a> {
        EventView {
            stream_id: stream,
            version: self.version,
            partition: self.partition,
            position: self.seq - 1,
            timestamp_nanos: self.time,
            event_type: &self.event_type,
            metadata: &self.metadata,
            payload: &self.payload,
            id: self.id,
            correlation_id: self.correlation,
            causation_id: self.causation,
        }
    }
}

/// The message id of event `index` of an append: its own id, or one derived from the
/// append's.
pub(crate) fn msg_id(e: &EventData, append_id: &str, index: usize) -> String {
    match e.id {
        Some(id) => id.to_string(),
        None => format!("{append_id}-{index}"),
    }
}

/// The headers of `e` at `version`.
pub(crate) fn headers(e: &EventData, version: u64, time: u64, msg_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Strata-Version", version.to_string().as_str());
    if !e.event_type.is_empty() && e.event_type.bytes().all(|b| b.is_ascii_graphic()) {
        h.insert("Strata-Type", e.event_type.as_str());
    } else {
        h.insert("Strata-Type-B64", B64.encode(e.event_type.as_bytes()).as_str());
    }
    if !e.metadata.is_empty() {
        h.insert("Strata-Meta", B64.encode(&e.metadata).as_str());
    }
    h.insert("Strata-Time", time.to_string().as_str());
    if let Some(c) = e.correlation_id {
        h.insert("Strata-Correlation", c.to_string().as_str());
    }
    if let Some(c) = e.causation_id {
        h.insert("Strata-Causation", c.to_string().as_str());
    }
    h.insert("Nats-Msg-Id", msg_id);
    h
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.as_str())
}

/// A header holding a decimal number.
pub(crate) fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    header(h, name)?.trim().parse().ok()
}

/// The strata version a message carries.
pub(crate) fn version_of(h: &HeaderMap) -> Option<u64> {
    header_u64(h, "Strata-Version")
}

/// A message from a direct get, decoded; `Err` for one strata did not write.
pub(crate) fn decode(m: &async_nats::Message, partition: u32) -> Result<Decoded> {
    let bad = |what: &str| Error::Remote { cause: format!("a message on {} {what}", m.subject) };
    let h = m.headers.as_ref().ok_or_else(|| bad("has no headers"))?;
    let seq = header_u64(h, "Nats-Sequence").filter(|&s| s > 0).ok_or_else(|| bad("has no sequence"))?;
    let subject = header(h, "Nats-Subject").unwrap_or(m.subject.as_str());
    decode_parts(subject, h, m.payload.clone(), seq, partition)
}

/// A message of stream sequence `seq` on `subject`, decoded (from a direct get or a
/// consumer's delivery).
pub(crate) fn decode_parts(
    subject: &str,
    h: &HeaderMap,
    payload: bytes::Bytes,
    seq: u64,
    partition: u32,
) -> Result<Decoded> {
    let bad = |what: &str| Error::Remote { cause: format!("a message on {subject} {what}") };
    let subject = subject.to_owned();
    let version = version_of(h).ok_or_else(|| bad("has no Strata-Version header"))?;
    let event_type = match (header(h, "Strata-Type"), header(h, "Strata-Type-B64")) {
        (Some(t), _) => t.to_owned(),
        (None, Some(b)) => B64
            .decode(b)
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| bad("has a Strata-Type-B64 header that is not base64 of UTF-8"))?,
        (None, None) => String::new(),
    };
    let metadata = match header(h, "Strata-Meta") {
        Some(b) => B64.decode(b).map_err(|_| bad("has a Strata-Meta header that is not base64"))?,
        None => Vec::new(),
    };
    let id_of = |name: &str| header(h, name).and_then(|v| EventId::from_str(v).ok());
    let msg_id = header(h, "Nats-Msg-Id").map(str::to_owned);
    Ok(Decoded {
        seq,
        subject,
        version,
        event_type,
        metadata,
        payload,
        time: header_u64(h, "Strata-Time").unwrap_or(0),
        id: msg_id.as_deref().and_then(|v| EventId::from_str(v).ok()),
        msg_id,
        correlation: id_of("Strata-Correlation"),
        causation: id_of("Strata-Causation"),
        partition,
    })
}

/// A publish's acknowledgment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ack {
    /// The sequence of the (last) message.
    pub seq: u64,
    /// Whether the server had it already (a retry within the duplicate window).
    pub duplicate: bool,
}

/// What the server answered a publish.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Ack(Ack),
    /// The subject's last sequence was not the expected one (JetStream error 10071).
    WrongLastSequence,
}

/// JetStream's error code for a failed `Nats-Expected-Last-Subject-Sequence`.
const WRONG_LAST_SEQUENCE: u64 = 10071;

/// Decodes a publish's answer; `Err` for an error other than a failed expectation.
pub(crate) fn ack(payload: &[u8]) -> std::result::Result<Answer, String> {
    let v: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| format!("an answer that is not JSON ({e}): {:?}", String::from_utf8_lossy(payload)))?;
    if let Some(err) = v.get("error") {
        if err.get("err_code").and_then(serde_json::Value::as_u64) == Some(WRONG_LAST_SEQUENCE) {
            return Ok(Answer::WrongLastSequence);
        }
        return Err(format!("the server refused the append: {err}"));
    }
    let seq = v
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .filter(|&s| s > 0)
        .ok_or_else(|| format!("an answer without a sequence: {v}"))?;
    let duplicate = v.get("duplicate").and_then(serde_json::Value::as_bool).unwrap_or(false);
    Ok(Answer::Ack(Ack { seq, duplicate }))
}

/// A fresh id for one append (its batch id, and the base of its events' message ids).
pub(crate) fn append_id() -> String {
    let mut b = [0u8; 16];
    let t = now_nanos();
    b[..8].copy_from_slice(&t.to_le_bytes());
    let r = std::collections::hash_map::RandomState::new();
    let h = std::hash::BuildHasher::hash_one(&r, (t, std::thread::current().id()));
    b[8..].copy_from_slice(&h.to_le_bytes());
    EventId::from_bytes(b).to_string()
}

/// Nanoseconds since the Unix epoch, now.
pub(crate) fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(ack(br#"{"stream":"S","seq":3}"#), Ok(Answer::Ack(Ack { seq: 3, duplicate: false })));
        assert_eq!(
            ack(br#"{"stream":"S","seq":3,"duplicate":true}"#),
            Ok(Answer::Ack(Ack { seq: 3, duplicate: true }))
        );
        assert_eq!(
            ack(br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"},"stream":"S","seq":0}"#),
            Ok(Answer::WrongLastSequence)
        );
        assert!(ack(br#"{"error":{"code":503,"err_code":10008,"description":"no leader"}}"#).is_err());
        assert!(ack(b"not json").is_err());
        assert!(ack(br#"{"stream":"S","seq":0}"#).is_err());
    }

    #[test]
    fn append_ids_differ() {
        assert_ne!(append_id(), append_id());
    }

    #[test]
    fn event_types_that_are_not_plain_ascii_travel_in_base64() {
        let e = EventData::new("Order Placed ✓", "x");
        let h = headers(&e, 0, 1, "m");
        assert!(h.get("Strata-Type").is_none());
        let b = h.get("Strata-Type-B64").map(|v| v.as_str().to_owned()).unwrap_or_default();
        assert_eq!(B64.decode(b).ok().and_then(|v| String::from_utf8(v).ok()).as_deref(), Some("Order Placed ✓"));
    }
}
