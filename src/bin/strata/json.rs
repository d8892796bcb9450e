//! `--json` output: what `dump`, `stats` and `tail` print, as one JSON object per line.
//!
//! Times are given twice, as nanoseconds since the Unix epoch (`*_nanos`) and as UTC text.
//! Bytes that are UTF-8 go out as a string under their name; other bytes as hex under
//! `<name>_hex`.

use serde_json::{Map, Value, json};
use strata::StreamMetaRecord;
use strata::inspect::{BatchInfo, DeadLetterInfo, Dump};

use crate::common::time;

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Puts `bytes` into `obj` as `name` (UTF-8) or `name_hex`.
pub fn put_bytes(obj: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => obj.insert(name.to_owned(), s.into()),
        Err(_) => obj.insert(format!("{name}_hex"), hex(bytes).into()),
    };
}

/// Puts a time into `obj` as `name` (UTC text) and `name_nanos`.
pub fn put_time(obj: &mut Map<String, Value>, name: &str, nanos: u64) {
    obj.insert(name.to_owned(), time(nanos).into());
    obj.insert(format!("{name}_nanos"), nanos.into());
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A stream metadata record.
pub fn meta(stream: &str, r: &StreamMetaRecord) -> Value {
    let m = &r.metadata;
    let mut o = object(json!({
        "stream": stream,
        "version": r.version,
        "max_count": m.max_count,
        "max_age_nanos": m.max_age.map(|a| a.as_nanos() as u64),
        "truncate_before": m.truncate_before,
        "soft_deleted": r.soft_deleted_at.is_some(),
    }));
    put_time(&mut o, "written", r.written_at);
    if let Some(d) = r.soft_deleted_at {
        put_time(&mut o, "soft_deleted_at", d);
    }
    put_bytes(&mut o, "custom", &m.custom);
    Value::Object(o)
}

fn batches(batches: &[BatchInfo], headers_only: bool) -> Value {
    batches
        .iter()
        .map(|b| {
            let mut o = object(json!({
                "offset": b.offset,
                "length": b.length,
                "position": b.position,
                "stream": b.stream,
                "first_version": b.first_version,
                "event_count": b.event_count,
                "unit_continues": b.unit_continues,
            }));
            put_time(&mut o, "timestamp", b.timestamp);
            if !headers_only {
                let events: Vec<Value> = b
                    .events
                    .iter()
                    .map(|e| {
                        let mut ev = object(json!({
                            "position": e.position,
                            "type": e.event_type,
                            "id": e.id.map(|i| i.to_string()),
                            "correlation_id": e.correlation_id.map(|i| i.to_string()),
                            "causation_id": e.causation_id.map(|i| i.to_string()),
                        }));
                        put_bytes(&mut ev, "metadata", &e.metadata);
                        put_bytes(&mut ev, "payload", &e.payload);
                        Value::Object(ev)
                    })
                    .collect();
                o.insert("events".into(), events.into());
            }
            Value::Object(o)
        })
        .collect()
}

fn damage(d: &Option<(u64, String)>) -> Value {
    match d {
        None => Value::Null,
        Some((at, why)) => json!({ "at": at, "why": why }),
    }
}

/// A file's dump.
pub fn dump(d: &Dump, headers_only: bool) -> Value {
    let o = match d {
        Dump::Segment { partition, base_position, created, batches: b, damage: dmg } => {
            let mut o = object(json!({
                "kind": "segment",
                "partition": partition,
                "base_position": base_position,
                "batches": batches(b, headers_only),
                "damage": damage(dmg),
            }));
            put_time(&mut o, "created", *created);
            o
        }
        Dump::Index { partition, base_position, end_position, segment_len, stream_entries, position_entries } => {
            object(json!({
                "kind": "index",
                "partition": partition,
                "base_position": base_position,
                "end_position": end_position,
                "segment_len": segment_len,
                "stream_entries": stream_entries,
                "position_entries": position_entries,
            }))
        }
        Dump::Archive {
            partition,
            base_position,
            end_position,
            reason,
            created,
            blocks,
            data_len,
            file_len,
            sources,
            audit,
            batches: b,
            problems,
        } => {
            let erased: Vec<Value> = audit
                .iter()
                .map(|a| {
                    let mut e = object(json!({
                        "stream": a.stream,
                        "events": a.events,
                        "first_position": a.first_position,
                        "last_position": a.last_position,
                    }));
                    put_time(&mut e, "deleted_at", a.deleted_at);
                    put_time(&mut e, "erased_at", a.erased_at);
                    Value::Object(e)
                })
                .collect();
            let mut o = object(json!({
                "kind": "archive",
                "partition": partition,
                "base_position": base_position,
                "end_position": end_position,
                "reason": reason.to_string(),
                "blocks": blocks,
                "data_len": data_len,
                "file_len": file_len,
                "sources": sources.iter().map(|(base, bytes)| json!({ "base_position": base, "bytes": bytes })).collect::<Vec<_>>(),
                "erased": erased,
                "batches": batches(b, headers_only),
                "problems": problems,
            }));
            put_time(&mut o, "created", *created);
            o
        }
        Dump::Snapshots { partition, rewrites, records, damage: dmg } => {
            let records: Vec<Value> = records
                .iter()
                .map(|r| {
                    let mut s = object(json!({
                        "offset": r.offset,
                        "length": r.length,
                        "stream": r.stream,
                        "version": r.version,
                        "schema": r.schema,
                        "aggregate": r.aggregate,
                        "state_len": r.state_len,
                        "position": r.position,
                        "replaces": r.replaces,
                        "superseded": r.superseded,
                    }));
                    put_time(&mut s, "event_time", r.event_time);
                    put_time(&mut s, "written", r.written);
                    Value::Object(s)
                })
                .collect();
            object(json!({
                "kind": "snapshots",
                "partition": partition,
                "rewrites": rewrites,
                "records": records,
                "damage": damage(dmg),
            }))
        }
        Dump::ActiveIndex { partition, base_position, frozen, records, damage: dmg } => object(json!({
            "kind": "index_journal",
            "partition": partition,
            "base_position": base_position,
            "frozen": frozen.as_ref().map(|r| json!({
                "offsets": [r.offsets.0, r.offsets.1],
                "positions": [r.positions.0, r.positions.1],
                "batches": r.batches,
                "streams": r.streams,
            })),
            "records": records.iter().map(|r| json!({
                "offsets": [r.offsets.0, r.offsets.1],
                "positions": [r.positions.0, r.positions.1],
                "batches": r.batches,
                "streams": r.streams,
            })).collect::<Vec<_>>(),
            "damage": damage(dmg),
        })),
        Dump::PoisonMarker { partition, segment, durable_end } => object(json!({
            "kind": "poison_marker",
            "partition": partition,
            "segment": segment,
            "durable_end": durable_end,
        })),
        Dump::Tombstones { partition, deleted, damage: dmg } => object(json!({
            "kind": "tombstones",
            "partition": partition,
            "deleted": deleted.iter().map(|(stream, at)| {
                let mut t = object(json!({ "stream": stream }));
                put_time(&mut t, "deleted_at", *at);
                Value::Object(t)
            }).collect::<Vec<_>>(),
            "damage": damage(dmg),
        })),
        Dump::StreamMetadata { partition, records, damage: dmg } => object(json!({
            "kind": "stream_metadata",
            "partition": partition,
            "records": records.iter().map(|(stream, r)| meta(stream, r)).collect::<Vec<_>>(),
            "damage": damage(dmg),
        })),
        Dump::Checkpoints { positions } => object(json!({ "kind": "checkpoints", "positions": positions })),
        Dump::DeadLetters { records, damage: dmg } => {
            let records: Vec<Value> = records
                .iter()
                .map(|r| match r {
                    DeadLetterInfo::Letter {
                        offset,
                        id,
                        time: t,
                        partition,
                        position,
                        stream,
                        version,
                        attempts,
                        error,
                        ..
                    } => {
                        let mut l = object(json!({
                            "record": "letter",
                            "offset": offset,
                            "id": id,
                            "partition": partition,
                            "position": position,
                            "stream": stream,
                            "version": version,
                            "attempts": attempts,
                            "error": error,
                        }));
                        put_time(&mut l, "time", *t);
                        Value::Object(l)
                    }
                    DeadLetterInfo::Resolution { offset, id, time: t, replayed, .. } => {
                        let mut l = object(json!({
                            "record": if *replayed { "replayed" } else { "discarded" },
                            "offset": offset,
                            "id": id,
                        }));
                        put_time(&mut l, "time", *t);
                        Value::Object(l)
                    }
                    _ => json!({ "record": "unknown" }),
                })
                .collect();
            object(json!({ "kind": "dead_letters", "records": records, "damage": damage(dmg) }))
        }
        Dump::Manifest { partition_count, segment_bytes, created, partition_epoch, growing_to, epochs } => {
            let mut o = object(json!({
                "kind": "manifest",
                "partition_count": partition_count,
                "segment_bytes": segment_bytes,
                "partition_epoch": partition_epoch,
                "growing_to": growing_to,
                "grows": epochs.iter().map(|(from, to)| json!({ "from": from, "to": to })).collect::<Vec<_>>(),
            }));
            put_time(&mut o, "created", *created);
            o
        }
        _ => object(json!({ "kind": "unknown" })),
    };
    Value::Object(o)
}
