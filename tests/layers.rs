//! The folders of `src/` are the floors of the house (see the crate docs in `src/lib.rs`):
//! no file names a module of a floor above its own, no module inside the crate names an
//! item through a crate-root re-export, and no two files in different folders use each
//! other, directly or through others. A small scan of the source: `crate::`, `super::` and
//! child-module paths outside comments, resolved to the files that define them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floor of each top-level module, from the bottom (`src/lib.rs` documents them).
const FLOORS: &[(&str, u32)] = &[
    ("error", 1),
    ("event", 1),
    ("router", 1),
    ("clock", 1),
    ("sync", 1),
    ("report", 1),
    ("codec", 1),
    ("trace", 1),
    ("io", 2),
    ("format", 3),
    ("log", 4),
    ("inspect", 4),
    ("snapshot", 5),
    ("compaction", 5),
    ("store", 6),
    ("aggregate", 7),
    ("projection", 7),
    ("subscription", 7),
    ("bus", 8),
    ("cache", 8),
    ("metrics", 9),
    ("fuzzing", 10),
];

fn floor(top: &str) -> Option<u32> {
    FLOORS.iter().find(|(m, _)| *m == top).map(|(_, f)| *f)
}

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file of the library (not the binary), with its module path.
fn library_files() -> Vec<(PathBuf, Vec<String>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "bin") {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(src()).unwrap().with_extension("");
            let mut m: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            if m.last().is_some_and(|l| l == "mod" || l == "lib") {
                m.pop();
            }
            (f, m)
        })
        .collect()
}

/// The source without comments and string literals (their contents become spaces).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let (mut in_str, mut in_line_comment, mut in_block) = (false, false, 0usize);
    while let Some(c) = chars.next() {
        if in_line_comment {
            if c == '\n' {
                in_line_comment = false;
                out.push('\n');
            }
            continue;
        }
        if in_block > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                in_block -= 1;
            } else if c == '\n' {
                out.push('\n');
            }
            continue;
        }
        if in_str {
            if c == '\\' {
                chars.next();
            } else if c == '"' {
                in_str = false;
            }
            out.push(if c == '\n' { '\n' } else { ' ' });
            continue;
        }
        match c {
            '/' if chars.peek() == Some(&'/') => in_line_comment = true,
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                in_block += 1;
            }
            '"' => in_str = true,
            // A char literal holding a quote must not open a string.
            '\'' if chars.peek() == Some(&'"') => {
                chars.next();
                out.push_str("  ");
            }
            _ => out.push(c),
        }
    }
    out
}

/// The module paths a file names: every `crate::a::b` path, every `super::` path and every
/// path through a child module, made absolute; `use` groups `{x, y::z}` expand to each.
fn named_paths(module: &[String], code: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < bytes.len() {
        if (i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != ':') && is_ident(bytes[i]) {
            let start = i;
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            let first: String = bytes[start..i].iter().collect();
            if i + 1 < bytes.len() && bytes[i] == ':' && bytes[i + 1] == ':' {
                let base: Option<Vec<String>> = match first.as_str() {
                    "crate" => Some(Vec::new()),
                    "super" => Some(module[..module.len().saturating_sub(1)].to_vec()),
                    "self" => Some(module.to_vec()),
                    c if children.contains(c) => Some([module.to_vec(), vec![c.to_owned()]].concat()),
                    _ => None,
                };
                if let Some(base) = base {
                    let (paths, next) = path_rest(&bytes, i + 2, base);
                    out.extend(paths);
                    i = next;
                    continue;
                }
            }
            continue;
        }
        i += 1;
    }
    out
}

/// Reads `a::b::{c, d::e}` from `at`, each path appended to `base`.
fn path_rest(b: &[char], mut at: usize, base: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut path = base;
    loop {
        while at < b.len() && b[at].is_whitespace() {
            at += 1;
        }
        if at < b.len() && b[at] == '{' {
            let mut out = Vec::new();
            at += 1;
            loop {
                while at < b.len() && (b[at].is_whitespace() || b[at] == ',') {
                    at += 1;
                }
                if at >= b.len() || b[at] == '}' {
                    return (out, at + 1);
                }
                let (inner, next) = path_rest(b, at, path.clone());
                out.extend(inner);
                at = next;
                // Skip an `as name` and anything else up to the next item.
                while at < b.len() && b[at] != ',' && b[at] != '}' {
                    at += 1;
                }
            }
        }
        let start = at;
        while at < b.len() && is_ident(b[at]) {
            at += 1;
        }
        if at == start {
            return (vec![path], at);
        }
        let seg: String = b[start..at].iter().collect();
        if seg != "self" {
            path.push(seg);
        }
        if at + 1 < b.len() && b[at] == ':' && b[at + 1] == ':' {
            at += 2;
        } else {
            return (vec![path], at);
        }
    }
}

/// The file defining the longest module prefix of `path`, and what follows it.
fn resolve(path: &[String], modules: &BTreeMap<Vec<String>, PathBuf>) -> Option<(PathBuf, Vec<String>)> {
    (0..=path.len()).rev().find_map(|k| modules.get(&path[..k]).map(|f| (f.clone(), path[k..].to_vec())))
}

struct Scan {
    /// file -> files it names
    edges: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
    upward: Vec<String>,
    through_root: Vec<String>,
}

fn scan() -> Scan {
    let files = library_files();
    let modules: BTreeMap<Vec<String>, PathBuf> = files.iter().map(|(f, m)| (m.clone(), f.clone())).collect();
    let mut scan = Scan { edges: BTreeMap::new(), upward: Vec::new(), through_root: Vec::new() };
    for (file, module) in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let code = code(&text);
        let children: BTreeSet<String> = modules
            .keys()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
            .map(|m| m[module.len()].clone())
            .collect();
        let rel = file.strip_prefix(src()).unwrap().display().to_string();
        if module.is_empty() {
            continue; // lib.rs declares and re-exports every floor
        }
        let own_floor = floor(&module[0]).unwrap_or_else(|| panic!("{rel}: its module {:?} has no floor", module[0]));
        for path in named_paths(module, &code, &children) {
            let Some(top) = path.first() else { continue };
            let Some((target, rest)) = resolve(&path, &modules) else { continue };
            if target.ends_with("lib.rs") {
                scan.through_root.push(format!("{rel} names crate::{}", path.join("::")));
                continue;
            }
            if let Some(f) = floor(top)
                && f > own_floor
            {
                scan.upward.push(format!("{rel} (floor {own_floor}) names crate::{} (floor {f})", path.join("::")));
            }
            let _ = rest;
            if &target != file {
                scan.edges.entry(file.clone()).or_default().insert(target);
            }
        }
    }
    scan
}

#[test]
fn no_file_imports_from_a_floor_above_its_own() {
    let s = scan();
    assert!(s.upward.is_empty(), "upward imports:\n{}", s.upward.join("\n"));
}

#[test]
fn no_module_names_a_crate_root_reexport() {
    let s = scan();
    assert!(s.through_root.is_empty(), "paths through the crate root:\n{}", s.through_root.join("\n"));
}

/// Files that use each other (directly or through others) only within one folder.
#[test]
fn no_import_loop_crosses_a_folder() {
    let s = scan();
    let folder = |f: &Path| f.parent().map(Path::to_path_buf);
    // Reachability by depth-first search from each file; a loop is a file reaching itself
    // through a file of another folder.
    let mut loops = Vec::new();
    for start in s.edges.keys() {
        let mut stack: Vec<(PathBuf, bool)> = vec![(start.clone(), false)];
        let mut seen = BTreeSet::new();
        while let Some((f, crossed)) = stack.pop() {
            for next in s.edges.get(&f).into_iter().flatten() {
                let crossed = crossed || folder(next) != folder(start);
                if next == start && crossed {
                    loops.push(start.strip_prefix(src()).unwrap().display().to_string());
                }
                if seen.insert((next.clone(), crossed)) {
                    stack.push((next.clone(), crossed));
                }
            }
        }
    }
    loops.sort();
    loops.dedup();
    assert!(loops.is_empty(), "files in a loop through another folder:\n{}", loops.join("\n"));
}

/// The scan itself sees what it must: a sanity check that it does not pass by seeing nothing.
#[test]
fn the_scan_sees_the_imports() {
    let s = scan();
    let uses = |a: &str, b: &str| s.edges.get(&src().join(a)).is_some_and(|t| t.contains(&src().join(b)));
    assert!(uses("store/open.rs", "log/mod.rs"), "{:?}", s.edges.get(&src().join("store/open.rs")));
    assert!(uses("log/writer.rs", "log/partition.rs"));
    assert!(uses("projection/worker.rs", "projection/state.rs"));
    assert!(uses("aggregate.rs", "store/seam.rs"));
    assert!(s.edges.len() > 40, "{} files with imports", s.edges.len());
}
