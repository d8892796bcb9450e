//! The `strata` binary: `load` runs end to end on a small workload and reports in JSON.
//! `dump_verify_stats_and_compact` also grows a store of 2 partitions with
//! `strata grow --partitions 3` (epoch 1), checks that `--partitions 2` is then refused, and
//! runs `stats` and `verify` on the grown store.

use std::process::Command;

#[test]
fn load_runs_end_to_end_and_reports() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("store");
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["load", "--events", "3000", "--streams", "40", "--writers", "4", "--partitions", "2", "--json", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.trim();
    assert!(line.starts_with('{') && line.ends_with('}') && !line.contains('\n'), "one JSON object: {line}");
    let field = |name: &str| -> f64 {
        let at = line.find(&format!("\"{name}\":")).unwrap_or_else(|| panic!("no {name} in {line}"));
        let rest = &line[at + name.len() + 3..];
        let end = rest.find([',', '}']).unwrap();
        rest[..end].parse().unwrap_or_else(|_| panic!("{name}: {}", &rest[..end]))
    };
    let events = field("events");
    assert!(events > 0.0 && events <= 3000.0, "{events}");
    assert!(field("events_per_sec") > 0.0);
    assert_eq!(field("rebuild_events"), events, "the rebuilt projection saw every event");
    assert!(field("cache_hit_ratio") >= 0.0);
    // The store it leaves behind opens and holds what was reported.
    let store = strata::Store::open(&dir, strata::Options::default()).unwrap();
    let held: u64 = (0..store.partition_count()).map(|p| store.head(p).unwrap()).sum();
    assert_eq!(held as f64, events);
    // A second run into the same directory is refused (a store is there).
    let again = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["load", "--events", "10", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
}

fn strata(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strata")).args(args).arg(dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "strata {args:?} panicked: {stderr}");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &stderr)
}

/// A store with sealed segments, a deleted stream, a snapshot: `compact` archives and erases,
/// `stats` and `dump` show it, `verify` says all ok; then, damaged, `verify` names the file
/// and offset and fails, and `dump` shows where the damage starts, without panicking.
#[test]
fn dump_verify_stats_and_compact() {
    use strata::{EventData, ExpectedVersion, Options, Store};
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("store");
    {
        let store = Store::open(&dir, Options::default().create_if_missing(true).partitions(2).segment_bytes(64 << 10))
            .unwrap();
        for i in 0..3000u64 {
            let stream = format!("order-{}", i % 30);
            let payload = format!(r#"{{"order":"{stream}","line":{i},"sku":"SKU-{}"}}"#, i % 17);
            store.append(&stream, ExpectedVersion::Any, &[EventData::new("LineAdded", payload.into_bytes())]).unwrap();
        }
        store.delete_stream("order-7").unwrap();
    }
    let (ok, text) = strata(&["compact", "--force"], &dir);
    assert!(ok, "{text}");
    assert!(text.contains("compacted") && !text.contains(", 0 erased"), "{text}");
    let (ok, text) = strata(&["stats"], &dir);
    assert!(ok && text.contains("streams per partition"), "{text}");
    // Each partition's row: some archives and a ratio.
    assert!(text.lines().filter(|l| l.trim_start().starts_with(['0', '1'])).all(|l| !l.contains(" - ")), "{text}");
    let (ok, text) = strata(&["verify"], &dir);
    assert!(ok && text.contains("all ok"), "{text}");
    // Grow: the moved streams read as before; growing to fewer partitions is refused.
    let (ok, text) = strata(&["grow", "--partitions", "3"], &dir);
    assert!(ok && text.contains("from 2 to 3 partitions (epoch 1)"), "{text}");
    let (ok, text) = strata(&["grow", "--partitions", "2"], &dir);
    assert!(!ok && text.contains("cannot grow from 3 to 2"), "{text}");
    let (ok, text) = strata(&["stats"], &dir);
    assert!(ok && text.contains("3 partitions"), "{text}");
    let (ok, text) = strata(&["verify"], &dir);
    assert!(ok && text.contains("all ok"), "{text}");
    let (ok, text) = strata(&["dump", "--stream", "order-3"], &dir);
    assert!(ok, "{text}");
    assert!(text.contains("\"order-3\"") && text.contains(r#""sku":"SKU-"#), "payloads as text: {text:.2000}");
    assert!(!text.contains("\"order-4\" v"), "the filter keeps one stream");
    assert!(text.contains("erased: stream \"order-7\""), "archives say what was erased: {text:.3000}");
    assert!(text.contains("archived because: compaction was forced"), "{text:.3000}");
    // Damage a sealed file: verify fails naming it; dump shows where it stops.
    let p = dir.join(format!("p{:05}", 0));
    let mut arcs: Vec<_> = std::fs::read_dir(&p)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|f| f.extension().is_some_and(|e| e == "arc"))
        .collect();
    arcs.sort();
    let target = arcs[0].clone();
    let mut bytes = std::fs::read(&target).unwrap();
    bytes[200] ^= 0x55;
    std::fs::write(&target, &bytes).unwrap();
    let (ok, text) = strata(&["verify"], &dir);
    assert!(!ok, "{text}");
    let name = target.file_name().unwrap().to_string_lossy().into_owned();
    assert!(text.contains(&name) && text.contains("PROBLEM"), "{text}");
    let (_, text) = strata(&["dump"], &target);
    assert!(text.contains("PROBLEM") || text.contains("checksum"), "{text}");
    // A foreign file and a missing one are errors, not panics.
    std::fs::write(work.path().join("junk"), b"not a strata file").unwrap();
    let (ok, text) = strata(&["dump"], &work.path().join("junk"));
    assert!(!ok && text.contains("not a strata file"), "{text}");
    let (ok, text) = strata(&["dump"], &dir.join("MANIFEST"));
    assert!(ok && text.contains("manifest: 3 partitions") && text.contains("grow 1: 2 -> 3"), "{text}");
    let (ok, _) = strata(&["verify"], &work.path().join("missing"));
    assert!(!ok);
}

/// `dump` shows event ids, correlation and causation, and the atomic-unit flag;
/// `--correlation ID` keeps only one flow's events.
#[test]
fn dump_shows_ids_and_follows_a_flow() {
    use strata::{EventData, EventId, ExpectedVersion, Options, Store};
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("store");
    let flow = EventId::from_u128(0xf10);
    {
        let store = Store::open(&dir, Options::default().create_if_missing(true).partitions(1)).unwrap();
        let root = EventData::new("Placed", "{}").with_id(flow);
        store.append("order-1", ExpectedVersion::NoStream, &[root]).unwrap();
        let parent = store.read_stream("order-1", 0, 1).unwrap().remove(0);
        store
            .append_atomic([
                ("{o1}/pay", ExpectedVersion::NoStream, vec![EventData::new("Paid", "1").caused_by(&parent)]),
                ("{o1}/ship", ExpectedVersion::NoStream, vec![EventData::new("Asked", "2").caused_by(&parent)]),
            ])
            .unwrap();
        store.append("other", ExpectedVersion::NoStream, &[EventData::new("Unrelated", "3")]).unwrap();
        store.close().unwrap();
    }
    let (ok, all) = strata(&["dump"], &dir);
    assert!(ok, "{all}");
    assert!(all.contains(&format!("id {flow}")), "{all}");
    assert!(all.contains(&format!("correlation {flow} causation {flow}")), "{all}");
    assert!(all.contains("(atomic unit continues)"), "{all}");
    let (ok, one) = strata(&["dump", "--correlation", &flow.to_string()], &dir);
    assert!(ok, "{one}");
    assert!(one.contains("Placed") && one.contains("Paid") && one.contains("Asked"), "{one}");
    assert!(!one.contains("Unrelated"), "{one}");
}
