//! The `strata` binary: `load` runs end to end on a small workload and reports in JSON.

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
