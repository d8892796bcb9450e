//! The `strata` binary: `load` runs end to end on a small workload and reports in JSON.
//! `dump_verify_stats_and_compact` also grows a store of 2 partitions with
//! `strata grow --partitions 3` (epoch 1), checks that `--partitions 2` is then refused, and
//! runs `stats` and `verify` on the grown store. `dump --json` and `stats --json` give
//! objects that parse and say what the text says, soft and hard deletes and stream metadata
//! included; `tail` follows a store it opens itself and, while another process holds the
//! store, its segment files; its printed cursor resumes where it stopped. `audit` lists the
//! erasure audit records of every archive (and reports a damaged one), and `dump --stream`
//! a stream's whole history across archives and segments.

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

/// With no bound on hot bytes, the load still archives: its accounts go quiet as the window of
/// active ones moves on, and a quiet (cold) account needs no snapshot to be archived.
#[test]
fn load_archives_cold_accounts_without_a_hot_bytes_bound() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("store");
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        // Bounded by time: the early accounts must have been quiet past the retention period
        // by the end, however fast the machine is.
        .args(["load", "--events", "100000000", "--duration", "1.5", "--streams", "400", "--writers", "4"])
        .args(["--partitions", "2"])
        .args(["--segment-mib", "1", "--retention", "0.3", "--compact-every", "0.3", "--json", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap();
    let reasons = line
        .split("\"archive_reasons\":{")
        .nth(1)
        .and_then(|r| r.split('}').next())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(reasons.contains("\"cold\":"), "cold accounts' segments were archived: {line}");
    assert!(!line.contains("\"hot_bytes\""), "{line}");
    // Everything acknowledged is still there, archived or not.
    let store = strata::Store::open(&dir, strata::Options::default()).unwrap();
    let mut read = 0;
    for a in 0..400 {
        read += store.read_stream(&format!("account-{a}"), 0, usize::MAX).unwrap().len();
    }
    let held: u64 = (0..store.partition_count()).map(|p| store.head(p).unwrap()).sum();
    assert_eq!(read as u64, held);
    assert!(store.storage().unwrap().iter().map(|p| p.archived_events).sum::<u64>() > 0);
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

fn strata_args(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strata")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "strata {args:?} panicked: {stderr}");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// A store with a hard-deleted stream, a soft-deleted one and one with `max_count`.
fn store_with_deletes_and_metadata(dir: &std::path::Path) {
    use strata::{EventData, ExpectedVersion, Options, Store, StreamMetadata};
    let store = Store::open(dir, Options::default().create_if_missing(true).partitions(1)).unwrap();
    for i in 0..40u64 {
        let stream = format!("order-{}", i % 4);
        let ty = if i % 2 == 0 { "Placed" } else { "Paid" };
        store.append(&stream, ExpectedVersion::Any, &[EventData::new(ty, format!("line {i}"))]).unwrap();
    }
    store.append("bin-1", ExpectedVersion::Any, &[EventData::new("Raw", vec![0xff, 0x00, 0xfe])]).unwrap();
    store.delete_stream("order-0").unwrap();
    store.soft_delete("order-1", ExpectedVersion::Any).unwrap();
    let meta = StreamMetadata { max_count: Some(3), custom: b"owner=billing".to_vec(), ..Default::default() };
    store.set_stream_metadata("order-2", ExpectedVersion::Any, meta).unwrap();
    store.close().unwrap();
}

#[test]
fn dump_and_stats_as_json_show_deletes_and_metadata() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("store");
    store_with_deletes_and_metadata(&dir);
    let d = dir.to_str().unwrap();

    let (ok, text, err) = strata_args(&["dump", d]);
    assert!(ok, "{err}");
    assert!(text.contains("stream metadata of partition 0"), "{text}");
    assert!(text.contains(r#""order-1" metadata v0"#) && text.contains("soft-deleted"), "{text}");
    assert!(text.contains("max_count 3") && text.contains("custom owner=billing"), "{text}");

    let (ok, text, err) = strata_args(&["dump", "--json", d]);
    assert!(ok, "{err}");
    let files: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = files.iter().filter_map(|f| f["kind"].as_str()).collect();
    assert!(kinds.contains(&"manifest") && kinds.contains(&"segment") && kinds.contains(&"tombstones"), "{kinds:?}");
    let meta = files.iter().find(|f| f["kind"] == "stream_metadata").expect("a stream metadata dump");
    let records = meta["records"].as_array().unwrap();
    let soft = records.iter().find(|r| r["stream"] == "order-1").unwrap();
    assert_eq!(soft["soft_deleted"], true);
    assert!(soft["soft_deleted_at_nanos"].as_u64().unwrap() > 0);
    let capped = records.iter().find(|r| r["stream"] == "order-2").unwrap();
    assert_eq!(capped["max_count"], 3);
    assert_eq!(capped["custom"], "owner=billing");
    let tomb = files.iter().find(|f| f["kind"] == "tombstones").unwrap();
    assert_eq!(tomb["deleted"][0]["stream"], "order-0");
    let seg = files.iter().find(|f| f["kind"] == "segment").unwrap();
    let events: Vec<&serde_json::Value> =
        seg["batches"].as_array().unwrap().iter().flat_map(|b| b["events"].as_array().unwrap()).collect();
    assert_eq!(events.len(), 41);
    assert!(events.iter().any(|e| e["payload"] == "line 7" && e["type"] == "Paid"));
    // Bytes that are not UTF-8 go out as hex.
    assert!(events.iter().any(|e| e["payload_hex"] == "ff00fe"), "{events:?}");

    let (ok, text, err) = strata_args(&["stats", "--json", d]);
    assert!(ok, "{err}");
    let stats: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    let p = &stats["partitions"][0];
    assert_eq!(stats["partition_count"], 1);
    assert_eq!(p["deleted_streams"], 1, "{p}");
    assert_eq!(p["soft_deleted_streams"], 1, "{p}");
    assert_eq!(p["streams_with_metadata"], 2, "{p}");
    let (ok, text, err) = strata_args(&["stats", d]);
    assert!(ok, "{err}");
    assert!(text.contains("soft-del") && text.contains("meta"), "{text}");
}

#[test]
fn tail_follows_a_store_and_resumes_from_its_cursor() {
    use strata::{EventData, ExpectedVersion, Options, Store};
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("store");
    store_with_deletes_and_metadata(&dir);
    let d = dir.to_str().unwrap();

    // The store opened by tail itself: deleted and hidden events are passed over.
    let (ok, text, err) = strata_args(&["tail", d, "--from", "start", "--idle-ms", "300", "--json"]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |s: &str| lines.iter().filter(|l| l["stream"] == s).count();
    assert_eq!((of("order-0"), of("order-1"), of("order-2"), of("order-3")), (0, 0, 3, 10), "{text}");
    assert_eq!(of("bin-1"), 1);
    let cursor = err.lines().find_map(|l| l.strip_prefix("cursor ")).expect("tail prints its cursor").to_owned();

    // A type filter, text output, and a count.
    let (ok, text, err) = strata_args(&["tail", d, "--from", "start", "--type", "Paid", "--count", "4"]);
    assert!(ok, "{err}");
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.lines().all(|l| l.contains(" Paid: ")), "{text}");

    // Events appended after the cursor: a resumed tail shows those only.
    {
        let store = Store::open(&dir, Options::default()).unwrap();
        store.append("order-3", ExpectedVersion::Any, &[EventData::new("Shipped", "late")]).unwrap();
        store.close().unwrap();
    }
    let (ok, text, err) = strata_args(&["tail", d, "--from", &cursor, "--idle-ms", "300"]);
    assert!(ok, "{err}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("order-3 v10 Shipped: late"), "{text}");

    // Another process (this one) holds the store: tail follows the segment files, and sees an
    // event appended while it runs.
    let store = Store::open(&dir, Options::default()).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["tail", d, "--from", "end", "--count", "1", "--idle-ms", "20000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    store.append("order-9", ExpectedVersion::NoStream, &[EventData::new("Placed", "live")]).unwrap();
    let out = child.wait_with_output().unwrap();
    let (text, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{err}");
    assert!(err.contains("following its segment files"), "{err}");
    assert!(text.contains("order-9 v0 Placed: live"), "{text}");
    // Stopped by a count, the files-follow tail's cursor is at the first event it did not
    // show: resumed, it shows the next one.
    let (ok, text, err) = strata_args(&["tail", d, "--from", "start", "--count", "2"]);
    assert!(ok && text.lines().count() == 2 && text.contains("line 1"), "{text}{err}");
    let cursor = err.lines().find_map(|l| l.strip_prefix("cursor ")).expect("a cursor").to_owned();
    let (ok, text, err) = strata_args(&["tail", d, "--from", &cursor, "--count", "1"]);
    assert!(ok, "{err}");
    assert!(text.contains("@2 ") && text.contains("order-2 v0 Placed: line 2"), "{text}");
    drop(store);
}

/// The facts of one deleted stream: its partition, how many events it had, its first and
/// last positions.
struct Gone {
    stream: &'static str,
    partition: u64,
    events: u64,
    first: u64,
    last: u64,
}

/// A closed store of 2 partitions whose older segments are archived: `acct-0` .. `acct-7`
/// appended; `acct-3` deleted, then compacted (erased from sealed segments); `acct-5` deleted
/// after that, compacted again (its archives rewritten); then more events for `acct-0`, which
/// stay in the active segment. Returns the deleted streams' facts and `acct-0`'s event count.
fn store_with_erasures(dir: &std::path::Path) -> (Vec<Gone>, u64) {
    use std::time::Duration;
    use strata::compaction::CompactionOptions;
    use strata::{Durability, EventData, ExpectedVersion, Options, Store};
    let opts = || {
        Options::default()
            .create_if_missing(true)
            .partitions(2)
            .segment_bytes(64 << 10)
            .durability(Durability::Buffered { sync_interval: Duration::from_millis(5) })
            .compaction(
                CompactionOptions::default()
                    .retention(Duration::ZERO)
                    .require_snapshots(false)
                    .interval(None)
                    .max_archive_bytes(64 << 10),
            )
    };
    let payload = |s: &str, i: u64| format!(r#"{{"account":"{s}","n":{i},"memo":"transfer number {i}"}}"#);
    let store = Store::open(dir, opts()).unwrap();
    let mut acct0 = 0;
    let mut append = |store: &Store, s: &str, i: u64| {
        store.append(s, ExpectedVersion::Any, &[EventData::new("Moved", payload(s, i))]).unwrap();
        acct0 += u64::from(s == "acct-0");
    };
    // Every stream first, then the live ones only, so that the deleted streams' events all lie
    // in segments that are sealed, far from each partition's head, and so are erased.
    for i in 0..1200u64 {
        append(&store, &format!("acct-{}", i % 8), i);
    }
    for i in 0..3600u64 {
        let s = ["acct-0", "acct-1", "acct-2", "acct-4", "acct-6", "acct-7"][i as usize % 6];
        append(&store, s, i);
    }
    let facts = |store: &Store, stream: &'static str| {
        let events = store.read_stream(stream, 0, usize::MAX).unwrap();
        let p = store.partition_of(stream);
        assert!(store.head(p).unwrap() > events.last().unwrap().position + 600, "{stream}: filler after it");
        Gone {
            stream,
            partition: u64::from(p),
            events: events.len() as u64,
            first: events[0].position,
            last: events.last().unwrap().position,
        }
    };
    let gone = vec![facts(&store, "acct-3"), facts(&store, "acct-5")];
    store.close().unwrap();
    // Reopened, every full segment is sealed.
    let store = Store::open(dir, opts()).unwrap();
    assert!(store.delete_stream("acct-3").unwrap());
    let r = store.compact().unwrap();
    assert_eq!(r.events_erased, gone[0].events, "{r:?}");
    assert!(store.delete_stream("acct-5").unwrap());
    let r = store.compact().unwrap();
    assert!(r.archives_rewritten > 0 && r.events_erased == gone[1].events, "{r:?}");
    for i in 0..20 {
        append(&store, "acct-0", 10_000 + i);
    }
    store.close().unwrap();
    (gone, acct0)
}

/// `audit` lists exactly the erased streams' records, with their counts and positions, oldest
/// erasure first, in text and `--json`; `dump --stream` shows a live stream's whole history,
/// archived and hot, in version order, and a deleted stream's audit records; a damaged archive
/// is a problem `audit` reports (exit 1) while listing the records of the others.
#[test]
fn audit_lists_erasures_and_dump_shows_a_streams_whole_history() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("store");
    let (gone, acct0) = store_with_erasures(&dir);
    let d = dir.to_str().unwrap();
    let archives: Vec<std::path::PathBuf> = (0..2)
        .flat_map(|p| std::fs::read_dir(dir.join(format!("p{p:05}"))).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|f| f.extension().is_some_and(|e| e == "arc"))
        .collect();

    let (ok, text, err) = strata_args(&["audit", "--json", d]);
    assert!(ok, "{text}{err}");
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (summary, records) = lines.split_last().unwrap();
    assert!(records.iter().all(|r| r["kind"] == "erasure"), "{text}");
    let mut streams: Vec<&str> = records.iter().map(|r| r["stream"].as_str().unwrap()).collect();
    streams.dedup();
    assert_eq!(streams, ["acct-3", "acct-5"], "exactly the erased streams, oldest erasure first: {text}");
    let erased_at: Vec<u64> = records.iter().map(|r| r["erased_at_nanos"].as_u64().unwrap()).collect();
    assert!(erased_at.windows(2).all(|w| w[0] <= w[1]), "sorted by erasure time: {text}");
    for g in &gone {
        let of: Vec<&serde_json::Value> = records.iter().filter(|r| r["stream"] == g.stream).collect();
        let n = |r: &serde_json::Value, k: &str| r[k].as_u64().unwrap();
        assert_eq!(of.iter().map(|r| n(r, "events")).sum::<u64>(), g.events, "{}: {text}", g.stream);
        assert_eq!(of.iter().map(|r| n(r, "first_position")).min(), Some(g.first), "{}: {text}", g.stream);
        assert_eq!(of.iter().map(|r| n(r, "last_position")).max(), Some(g.last), "{}: {text}", g.stream);
        assert!(of.iter().all(|r| n(r, "partition") == g.partition), "{text}");
        assert!(of.iter().all(|r| n(r, "deleted_at_nanos") <= n(r, "erased_at_nanos")), "{text}");
        assert!(of.iter().all(|r| r["erased_at"].as_str().unwrap().ends_with('Z')), "RFC 3339: {text}");
    }
    let total = gone[0].events + gone[1].events;
    assert_eq!(summary["kind"], "summary");
    let facts = [&summary["records"], &summary["streams"], &summary["events_erased"], &summary["problems"]];
    assert_eq!(serde_json::json!(facts), serde_json::json!([records.len(), 2, total, 0]), "{summary}");
    assert_eq!(summary["archives_read"], archives.len(), "{summary}");

    // The same in text, and one stream's only.
    let (ok, text, err) = strata_args(&["audit", d]);
    assert!(ok, "{text}{err}");
    assert_eq!(text.lines().filter(|l| l.starts_with("erased ")).count(), records.len(), "{text}");
    let last = text.lines().last().unwrap();
    assert!(last.contains("of 2 streams") && last.contains(&format!("{total} events erased")), "{text}");
    assert!(last.contains(&format!("{} archives read", archives.len())), "{text}");
    let (ok, text, err) = strata_args(&["audit", "--stream", "acct-5", d]);
    assert!(ok, "{text}{err}");
    assert!(text.lines().filter(|l| l.starts_with("erased ")).all(|l| l.contains(r#""acct-5" of partition"#)));
    assert!(text.contains(&format!("of 1 stream, {} events erased", gone[1].events)), "{text}");

    // A live stream's whole history: archived events, then the active segment's, in order.
    let (ok, text, err) = strata_args(&["dump", "--stream", "acct-0", "--headers", d]);
    assert!(ok, "{err}");
    let mut versions = Vec::new();
    let mut positions = Vec::new();
    for l in text.lines().filter(|l| l.contains(r#" "acct-0" v"#)) {
        let words: Vec<&str> = l.split_whitespace().collect();
        positions.push(words[2].parse::<u64>().unwrap());
        let (a, b) = words[4].trim_start_matches('v').split_once("..=").unwrap();
        versions.push((a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()));
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "position order: {text:.3000}");
    assert_eq!(versions.first().map(|v| v.0), Some(0), "{text:.3000}");
    assert!(versions.windows(2).all(|w| w[1].0 == w[0].1 + 1), "versions without a gap: {text:.3000}");
    assert_eq!(versions.last().map(|v| v.1), Some(acct0 - 1), "{text:.3000}");
    let history = text.lines().find(|l| l.starts_with(r#"== history of stream "acct-0""#)).expect(&text);
    assert!(history.contains(&format!("{acct0} events, versions 0..={}", acct0 - 1)), "{history}");
    assert!(!history.contains(" 0 in ") && history.contains("in 1 segment"), "archived and hot: {history}");

    // A deleted stream: its erasure, in text and as JSON.
    let g = &gone[0];
    let (ok, text, err) = strata_args(&["dump", "--stream", g.stream, d]);
    assert!(ok, "{err}");
    assert!(!text.contains(r#""acct-3" v"#), "no event of it is left: {text:.3000}");
    let history = format!(r#"== history of stream "acct-3" in partition {} (deleted "#, g.partition);
    assert!(text.contains(&history) && text.contains("no events left"), "{text}");
    let of: Vec<&serde_json::Value> = records.iter().filter(|r| r["stream"] == g.stream).collect();
    for r in &of {
        let n = r["events"].as_u64().unwrap();
        let line = format!(
            "  erased: {n} event{} at positions {}..={}, deleted {}, erased {} ({})",
            if n == 1 { "" } else { "s" },
            r["first_position"],
            r["last_position"],
            r["deleted_at"].as_str().unwrap(),
            r["erased_at"].as_str().unwrap(),
            r["file"].as_str().unwrap()
        );
        assert!(text.contains(&line), "{line} in {text}");
    }
    let (ok, text, err) = strata_args(&["dump", "--json", "--stream", g.stream, d]);
    assert!(ok, "{err}");
    let h: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(
        serde_json::json!([h["kind"], h["stream"], h["events"]]),
        serde_json::json!(["stream_history", g.stream, 0])
    );
    assert_eq!(h["erased"].as_array().unwrap().len(), of.len(), "{h}");

    // Damage one archive's first block in its middle: audit says so, fails, and still lists
    // the other archives' records.
    let target = archives.iter().max_by_key(|a| std::fs::metadata(a).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(target).unwrap();
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let meta = u64_at(&bytes, bytes.len() - 64) as usize;
    let (frame, len) =
        (u64_at(&bytes, meta) as usize, u32::from_le_bytes(bytes[meta + 16..meta + 20].try_into().unwrap()));
    bytes[frame + len as usize / 2] ^= 0x55;
    std::fs::write(target, &bytes).unwrap();
    let (ok, text, err) = strata_args(&["audit", "--json", d]);
    assert!(!ok, "a damaged archive fails the audit: {text}{err}");
    let after: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let problems: Vec<&serde_json::Value> = after.iter().filter(|l| l["kind"] == "problem").collect();
    assert_eq!(problems.len(), 1, "{text}");
    assert_eq!(problems[0]["file"], target.display().to_string(), "{text}");
    let others = |r: &&serde_json::Value| r["file"] != target.display().to_string();
    let still: Vec<&serde_json::Value> = after.iter().filter(|l| l["kind"] == "erasure").filter(others).collect();
    assert_eq!(still, records.iter().filter(others).collect::<Vec<_>>(), "{text}");
    let (ok, text, _) = strata_args(&["audit", d]);
    assert!(!ok && text.contains("PROBLEM: ") && text.contains("1 problem(s)"), "{text}");
}

/// One raw HTTP/1.1 GET of `path` from `addr`: the whole answer (status line, head, body).
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}

/// `load --metrics-addr 127.0.0.1:0` prints the address it bound and serves the store's
/// Prometheus text on `GET /metrics` while it runs (anything else: 404); an address that is
/// not loopback is refused without `--metrics-public`, before any store is made.
#[test]
fn load_serves_metrics_while_it_runs() {
    use std::io::BufRead;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("store");
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["load", "--events", "5000000", "--duration", "3", "--streams", "40", "--writers", "4"])
        .args(["--partitions", "2", "--json", "--metrics-addr", "127.0.0.1:0", "--dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // stderr read on a thread: the first line's address comes back, the rest is kept.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let rest = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if let Some(url) = line.strip_prefix("metrics: http://") {
                let _ = tx.send(url.trim_end_matches("/metrics").to_owned());
            }
            all += &line;
            all.push('\n');
        }
        all
    });
    let addr = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the metrics address on stderr");
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{addr}");
    let answer = http_get(&addr, "/metrics");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:.500}");
    assert!(answer.contains("Content-Type: text/plain; version=0.0.4"), "{answer:.500}");
    assert!(answer.contains("# TYPE strata_events_total counter\nstrata_events_total "), "{answer:.2000}");
    assert!(answer.contains("strata_append_seconds_bucket{le="), "{answer:.2000}");
    let answer = http_get(&addr, "/nothing");
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    let out = child.wait_with_output().unwrap();
    let err = rest.join().unwrap();
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).trim().starts_with("{\"dir\""), "stdout stays one JSON object");

    let refused = work.path().join("refused");
    let (ok, _, err) =
        strata_args(&["load", "--events", "10", "--metrics-addr", "0.0.0.0:0", "--dir", refused.to_str().unwrap()]);
    assert!(!ok && err.contains("not a loopback address") && err.contains("--metrics-public"), "{err}");
    assert!(!refused.exists(), "refused before a store was made");
}

/// `load --report DIR` writes DIR/index.html: the parameters, the text report, and one SVG
/// plot per title, each with its data (lines of many points, the histogram's bars).
#[cfg(feature = "report")]
#[test]
fn load_writes_an_html_report() {
    let work = tempfile::tempdir().unwrap();
    let (store, out) = (work.path().join("store"), work.path().join("report"));
    // Bounded by time, not by events: a run of a fixed length has enough samples however
    // fast the machine is (20,000 events once took under 0.4 s, 17 samples).
    let (ok, json, err) = strata_args(&[
        "load",
        "--events",
        "100000000",
        "--duration",
        "1.5",
        "--streams",
        "200",
        "--writers",
        "4",
        "--partitions",
        "2",
        "--segment-mib",
        "1",
        "--hot-mib",
        "1",
        "--compact-every",
        "0.5",
        "--json",
        "--dir",
        store.to_str().unwrap(),
        "--report",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(json.trim().starts_with('{') && json.trim().ends_with('}'), "stdout stays one JSON object: {json}");
    let page = out.join("index.html");
    assert!(err.contains(&format!("report: {}", page.display())), "{err}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert!(html.contains("durable events") && html.contains("command latency"), "the text report is in the page");
    let samples: usize = html
        .split("samples</span> ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .expect("the sample count");
    assert!(samples >= 20, "{samples} samples");
    let titles = [
        "Throughput: events/s",
        "Command latency per interval",
        "Command latency histogram",
        "Projection lag against the SLA",
        "Read model cache hit ratio",
        "Compaction and archive bytes",
    ];
    let svgs: Vec<&str> = html.split("<svg").skip(1).map(|s| s.split("</svg>").next().unwrap()).collect();
    assert_eq!(svgs.len(), titles.len(), "one <svg> per plot");
    // Points of the lines of data: axes and ticks are lines of two points.
    let line_points = |svg: &str| -> usize {
        let lines = svg.split("<polyline").skip(1).filter_map(|p| p.split("points=\"").nth(1));
        lines.map(|pts| pts.split('"').next().unwrap().split_whitespace().count()).filter(|&n| n > 2).sum()
    };
    for (svg, title) in svgs.iter().zip(titles) {
        assert!(svg.contains(title), "{title} in its plot");
        if title.contains("histogram") {
            assert!(svg.matches("<rect").count() > 5, "the histogram has bars");
        } else {
            assert!(line_points(svg) >= 10, "{title}: lines of data ({} points)", line_points(svg));
        }
    }
    assert!(svgs[3].contains("SLA of balances"), "the lag plot shows the SLA");
}

/// Without the `report` feature, `--report` says how to get it, before making a store.
#[cfg(not(feature = "report"))]
#[test]
fn load_report_needs_its_feature() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let (ok, _, err) = strata_args(&["load", "--events", "10", "--dir", store.to_str().unwrap(), "--report", "r"]);
    assert!(!ok && err.contains("--features report"), "{err}");
    assert!(!store.exists());
}
