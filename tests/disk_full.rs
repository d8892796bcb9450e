//! A full disk, for real: a store on a small tmpfs is filled until appends fail with
//! `StorageFull`. Every acknowledged append stays readable; once space is freed, appends go
//! on without a reopen, and a reopen finds everything. The test mounts the tmpfs itself and
//! is skipped, saying why, where mounting is refused (not root, no `mount`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use strata::{Error, ExpectedVersion, Options, Store};

/// A mounted tmpfs, unmounted (by its path) when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount refused: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { path, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn append_until_full(store: &Store, stream: &str, acked: &mut Vec<Vec<u8>>) -> Error {
    loop {
        let payload = format!("{stream}:{}:{}", acked.len(), "f".repeat(900)).into_bytes();
        let expected = match acked.len() {
            0 => ExpectedVersion::NoStream,
            n => ExpectedVersion::Exact(n as u64 - 1),
        };
        match store.append(stream, expected, &[ev("Filled", payload.clone())]) {
            Ok(_) => acked.push(payload),
            Err(e) => return e,
        }
        assert!(acked.len() < 100_000, "the disk never filled");
    }
}

fn check(store: &Store, stream: &str, acked: &[Vec<u8>]) {
    let got = store.read_stream(stream, 0, usize::MAX).unwrap();
    assert_eq!(payloads(&got), acked, "every acknowledged append is readable");
}

fn run(root: &Path, preallocate: bool) {
    // Ballast to free later: the store must fit around it.
    let ballast = root.join("ballast");
    std::fs::write(&ballast, vec![1u8; 768 << 10]).unwrap();
    let dir = root.join("store");
    let options = || Options::default().partitions(1).segment_bytes(256 << 10).preallocate(preallocate);
    let store = Store::open(&dir, options().create_if_missing(true)).unwrap();
    let mut acked = Vec::new();
    let e = append_until_full(&store, "s", &mut acked);
    assert!(matches!(e, Error::StorageFull { .. }), "a full disk is StorageFull, got {e:?}");
    assert!(!acked.is_empty());
    assert_eq!(store.poisoned(0).unwrap(), None, "a full disk does not poison");
    check(&store, "s", &acked);
    // Still full: refused again, nothing lost.
    let again = append_until_full(&store, "s", &mut acked);
    assert!(matches!(again, Error::StorageFull { .. }), "{again:?}");
    check(&store, "s", &acked);
    // Space is freed: appends go on without a reopen.
    std::fs::remove_file(&ballast).unwrap();
    let before = acked.len();
    for _ in 0..50 {
        let payload = format!("s:{}:after", acked.len()).into_bytes();
        store.append("s", ExpectedVersion::Exact(acked.len() as u64 - 1), &[ev("Filled", payload.clone())]).unwrap();
        acked.push(payload);
    }
    check(&store, "s", &acked);
    // Fill it again, close, reopen: everything acknowledged is there.
    let e = append_until_full(&store, "s", &mut acked);
    assert!(matches!(e, Error::StorageFull { .. }), "{e:?}");
    assert!(acked.len() > before + 50);
    let _ = store.close();
    drop(store);
    // The reopen may need room for its repairs: a full disk at open is an error, never a loss.
    let store = match Store::open(&dir, options()) {
        Ok(s) => s,
        Err(e) => panic!("reopen on a full disk: {e:?}"),
    };
    check(&store, "s", &acked);
    assert!(store.verify().is_empty());
}

#[test]
fn a_full_disk_refuses_appends_and_loses_nothing() {
    for preallocate in [false, true] {
        let fs = match Tmpfs::mount(2 << 20) {
            Ok(fs) => fs,
            Err(why) => {
                println!("skipped: {why}");
                return;
            }
        };
        run(&fs.path, preallocate);
    }
}
