//! A simulated disk for power-cut tests: it records every mutation strata makes through the
//! file seam (creates, writes, truncations, syncs, renames, removals), and rebuilds from that
//! trace what a disk would hold after the power failed at any step of it.
//!
//! The store keeps running on the real file system (its reads go through the page cache and
//! see everything), so one run of a workload yields a trace that can be cut at every step.
//! Each operation is recorded and carried out under one lock, so the trace's order is the
//! order the operations happened in. Real `fsync`s are skipped while recording: what is
//! durable is decided by the trace alone.
//!
//! What survives a cut ([`SimDisk::crash_image`]), per FORMAT.md §3.3:
//! - a file's writes and truncations survive if a `fdatasync`/`fsync` of that file followed
//!   them; each later one is, by a seeded choice, lost, kept, torn (a prefix kept up to a
//!   512-byte or 4 KiB boundary, the rest lost), or scattered (each sector kept or lost on its
//!   own). So unsynced writes to different files, and to different sectors of one file,
//!   survive in any order. A lost sector shows what the file held there before: zeros in a
//!   preallocated or extended region, the old bytes in one that was overwritten;
//! - a write that extended a file and was lost may still leave the file longer, zero-filled;
//!   a lost extension by `set_len` leaves it shorter;
//! - a directory entry (a create, rename, unlink or removal of a directory) survives only if
//!   that directory was fsynced after it; each later one is kept or lost on its own, and a
//!   rename is kept or lost whole. Syncing a file never persists its entry.
//!
//! Sectors are written whole or not at all: a sector never comes back as a mix of old and new
//! bytes. A lost sector reads as what it held before, except in segments, where in a quarter
//! of the cuts the sectors an unsynced write lost (and the space a lost write extended the file
//! by) read as random bytes: stale garbage, which segments tell from damage by their sync marks
//! (FORMAT.md §7.5). Record files cannot (`format::records`), so their lost sectors keep what
//! they held.
#![cfg_attr(not(feature = "fault-injection"), allow(dead_code))]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

type NodeId = usize;

/// Bytes of one write: zeros (preallocation) are kept as a length.
#[derive(Debug, Clone)]
enum Data {
    Zeros(usize),
    Bytes(Arc<[u8]>),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::Zeros(n) => *n,
            Data::Bytes(b) => b.len(),
        }
    }

    fn copy_into(&self, from: usize, dst: &mut [u8]) {
        match self {
            Data::Zeros(_) => dst.fill(0),
            Data::Bytes(b) => dst.copy_from_slice(&b[from..from + dst.len()]),
        }
    }
}

/// One recorded step.
#[derive(Debug, Clone)]
enum Op {
    Link { dir: NodeId, name: OsString, node: NodeId },
    Unlink { dir: NodeId, name: OsString },
    Rename { from_dir: NodeId, from: OsString, to_dir: NodeId, to: OsString, node: NodeId },
    Write { node: NodeId, offset: u64, data: Data },
    SetLen { node: NodeId, len: u64 },
    SyncFile { node: NodeId },
    SyncDir { node: NodeId },
}

/// What kind of step a cut fell before, for the harness's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StepKind {
    /// A file or directory was created.
    Create,
    /// A file or directory was removed.
    Remove,
    /// A rename.
    Rename,
    /// A positional write.
    Write,
    /// A `set_len`.
    SetLen,
    /// A file's `fdatasync`/`fsync`.
    SyncFile,
    /// A directory's `fsync`.
    SyncDir,
    /// The end of the trace: nothing was cut short.
    End,
}

#[derive(Debug, Clone)]
enum Kind {
    File,
    Dir { live: BTreeMap<OsString, NodeId> },
}

#[derive(Debug)]
struct Recorder {
    ops: Vec<Op>,
    /// Per op, the path it touched (for reports), relative to the root.
    paths: Vec<PathBuf>,
    nodes: Vec<Kind>,
    /// Contents of the files that existed when recording began (their durable state).
    initial: HashMap<NodeId, Vec<u8>>,
    /// Directory entries that existed when recording began.
    initial_dirs: HashMap<NodeId, BTreeMap<OsString, NodeId>>,
    /// Mutations of paths the recorder could not resolve (made outside the seam).
    untracked: Vec<String>,
}

/// A disk that remembers what was made durable, for power-cut tests
/// ([`Options::sim_disk`](crate::Options::sim_disk)).
///
/// Record a workload through a store opened with it, note [`SimDisk::steps`] when each
/// operation is acknowledged, then rebuild the directory as a power cut at any step would have
/// left it with [`SimDisk::crash_image`], and open that with the real code.
#[derive(Debug)]
pub struct SimDisk {
    root: PathBuf,
    rec: Mutex<Recorder>,
}

/// How each unsynced mutation fared in one [`SimDisk::crash_image`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutReport {
    /// The step the power failed before (`steps()` at the end: none).
    pub step: u64,
    /// Its kind.
    pub kind: Option<StepKind>,
    /// Its path, relative to the store's directory.
    pub path: Option<PathBuf>,
    /// The survival style drawn for this cut.
    pub style: &'static str,
    /// Unsynced writes lost whole.
    pub writes_lost: u64,
    /// Unsynced writes kept whole.
    pub writes_kept: u64,
    /// Unsynced writes torn at a sector boundary.
    pub writes_torn: u64,
    /// Whether the segments' lost sectors read as random bytes in this cut.
    pub garbage: bool,
    /// Unsynced writes whose sectors survived each on its own.
    pub writes_scattered: u64,
    /// Lost writes that still left their file longer, zero-filled.
    pub extensions_kept: u64,
    /// Unsynced `set_len`s kept / lost.
    pub set_len_kept: u64,
    /// Unsynced `set_len`s lost.
    pub set_len_lost: u64,
    /// Unsynced directory entries (creates, renames, removals) kept.
    pub entries_kept: u64,
    /// Unsynced directory entries lost.
    pub entries_lost: u64,
}

/// A small deterministic generator (xorshift64*), so a cut replays from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// A file's state while the trace is replayed.
#[derive(Debug, Clone, Default)]
struct FileState {
    durable: Vec<u8>,
    /// Unsynced mutations, with their step.
    pending: Vec<(usize, Op)>,
}

#[derive(Debug, Clone, Default)]
struct DirState {
    durable: BTreeMap<OsString, NodeId>,
    pending: Vec<(usize, Op)>,
}

/// Which survival rule a cut uses for its unsynced mutations.
#[derive(Debug, Clone, Copy)]
enum Style {
    /// Everything unsynced is lost.
    LoseAll,
    /// Everything is kept (what a process crash leaves).
    KeepAll,
    /// Each mutation on its own: lost, kept, torn or scattered.
    Random,
    /// Writes go to disk in order up to some point, the first one after it torn.
    InOrder,
}

impl SimDisk {
    /// A simulated disk for the store in `root`. What `root` already holds (a store created
    /// without the simulator, say) counts as durable.
    pub fn new(root: &Path) -> Arc<SimDisk> {
        let mut rec = Recorder {
            ops: Vec::new(),
            paths: Vec::new(),
            nodes: vec![Kind::Dir { live: BTreeMap::new() }],
            initial: HashMap::new(),
            initial_dirs: HashMap::new(),
            untracked: Vec::new(),
        };
        import(&mut rec, root, 0);
        Arc::new(SimDisk { root: root.to_path_buf(), rec: Mutex::new(rec) })
    }

    /// The number of steps recorded so far. An operation acknowledged after `steps()` returned
    /// `n` must survive every cut at step `n` or later.
    pub fn steps(&self) -> u64 {
        self.rec.lock().ops.len() as u64
    }

    /// Mutations the recorder could not follow, because they touched a path it never saw
    /// created (a file made outside the I/O seam). A harness should insist on none.
    pub fn untracked(&self) -> Vec<String> {
        self.rec.lock().untracked.clone()
    }

    /// The kind and path of every step, for counting where cuts fall.
    pub fn step_kind(&self, step: u64) -> (StepKind, Option<PathBuf>) {
        let rec = self.rec.lock();
        match rec.ops.get(step as usize) {
            None => (StepKind::End, None),
            Some(op) => (kind_of(op), rec.paths.get(step as usize).cloned()),
        }
    }

    /// Writes into `out` (a new or empty directory) what the store's directory holds after a
    /// power cut just before step `step`: steps before it happened, it and those after did
    /// not. `seed` draws every survival choice, so the same `(step, seed)` gives the same image.
    /// `ignore_syncs_of` names files or directories whose syncs are treated as if never
    /// issued, to test that a sync is needed: `/` is the store's directory, anything else
    /// matches the end of a path relative to it (`.log`, `p00000`, `MANIFEST.tmp`).
    pub fn crash_image(
        &self,
        step: u64,
        seed: u64,
        out: &Path,
        ignore_syncs_of: Option<&str>,
    ) -> std::io::Result<CutReport> {
        let rec = self.rec.lock();
        let step = step.min(rec.ops.len() as u64);
        let mut rng = Rng::new(seed ^ step.rotate_left(32));
        let style = match rng.below(8) {
            0 => Style::LoseAll,
            1 => Style::KeepAll,
            2 | 3 => Style::InOrder,
            _ => Style::Random,
        };
        let (kind, path) = match rec.ops.get(step as usize) {
            None => (StepKind::End, None),
            Some(op) => (kind_of(op), rec.paths.get(step as usize).cloned()),
        };
        let mut report = CutReport {
            step,
            kind: Some(kind),
            path,
            style: match style {
                Style::LoseAll => "lose-all",
                Style::KeepAll => "keep-all",
                Style::Random => "random",
                Style::InOrder => "in-order",
            },
            ..CutReport::default()
        };
        let mut files: HashMap<NodeId, FileState> =
            rec.initial.iter().map(|(&n, b)| (n, FileState { durable: b.clone(), pending: Vec::new() })).collect();
        let mut dirs: HashMap<NodeId, DirState> =
            rec.initial_dirs.iter().map(|(&n, m)| (n, DirState { durable: m.clone(), pending: Vec::new() })).collect();
        dirs.entry(0).or_default();
        for (i, op) in rec.ops.iter().take(step as usize).enumerate() {
            match op {
                Op::Link { dir, .. } | Op::Unlink { dir, .. } => {
                    dirs.entry(*dir).or_default().pending.push((i, op.clone()))
                }
                Op::Rename { from_dir, to_dir, .. } => {
                    dirs.entry(*to_dir).or_default().pending.push((i, op.clone()));
                    if from_dir != to_dir {
                        dirs.entry(*from_dir).or_default().pending.push((i, op.clone()));
                    }
                }
                Op::Write { node, .. } | Op::SetLen { node, .. } => {
                    files.entry(*node).or_default().pending.push((i, op.clone()))
                }
                Op::SyncFile { node } => {
                    let ignored = ignore_syncs_of.is_some_and(|s| names(&rec.paths[i], s));
                    if !ignored {
                        let f = files.entry(*node).or_default();
                        for (_, m) in std::mem::take(&mut f.pending) {
                            apply_file(&mut f.durable, &m, Fate::Keep, None);
                        }
                    }
                }
                Op::SyncDir { node } => {
                    let ignored = ignore_syncs_of.is_some_and(|s| names(&rec.paths[i], s));
                    if !ignored {
                        let d = dirs.entry(*node).or_default();
                        for (_, m) in std::mem::take(&mut d.pending) {
                            apply_dir(&mut d.durable, &m, *node);
                        }
                    }
                }
            }
        }
        // The cut: decide every unsynced mutation.
        let sector = if rng.chance(2) { 512 } else { 4096 };
        let garbage = rng.chance(4);
        report.garbage = garbage;
        // In order: every unsynced step before `threshold` reached the disk, the one at it
        // may be torn, and none after it did.
        let first_pending = files
            .values()
            .flat_map(|f| f.pending.first())
            .chain(dirs.values().flat_map(|d| d.pending.first()))
            .map(|(i, _)| *i)
            .min()
            .unwrap_or(0);
        let threshold = first_pending + rng.below(step + 1 - first_pending as u64) as usize;
        let mut final_dirs: HashMap<NodeId, BTreeMap<OsString, NodeId>> = HashMap::new();
        // Every directory, including those that never had an entry.
        for (id, k) in rec.nodes.iter().enumerate() {
            if matches!(k, Kind::Dir { .. }) {
                dirs.entry(id).or_default();
            }
        }
        let mut dir_ids: Vec<NodeId> = dirs.keys().copied().collect();
        dir_ids.sort_unstable();
        for id in dir_ids {
            let d = &dirs[&id];
            let mut entries = d.durable.clone();
            for (i, m) in &d.pending {
                let keep = match style {
                    Style::LoseAll => false,
                    Style::KeepAll => true,
                    Style::InOrder => *i < threshold,
                    Style::Random => rng.chance(2),
                };
                if keep {
                    report.entries_kept += 1;
                    apply_dir(&mut entries, m, id);
                } else {
                    report.entries_lost += 1;
                }
            }
            final_dirs.insert(id, entries);
        }
        let mut contents: HashMap<NodeId, Vec<u8>> = HashMap::new();
        let mut file_ids: Vec<NodeId> = files.keys().copied().collect();
        file_ids.sort_unstable();
        for id in file_ids {
            let f = &files[&id];
            let mut bytes = f.durable.clone();
            for (i, m) in &f.pending {
                let fate = match (style, m) {
                    (Style::LoseAll, _) => Fate::Lose,
                    (Style::KeepAll, _) => Fate::Keep,
                    (Style::InOrder, _) if *i < threshold => Fate::Keep,
                    (Style::InOrder, Op::SetLen { .. }) => Fate::Lose,
                    (Style::InOrder, _) if *i == threshold => Fate::Torn { at: rng.next(), sector },
                    (Style::InOrder, _) => Fate::Lose,
                    (Style::Random, Op::SetLen { .. }) => {
                        if rng.chance(2) {
                            Fate::Keep
                        } else {
                            Fate::Lose
                        }
                    }
                    (Style::Random, _) => match rng.below(4) {
                        0 => Fate::Lose,
                        1 => Fate::Keep,
                        2 => Fate::Torn { at: rng.next(), sector },
                        _ => Fate::Scatter { seed: rng.next(), sector },
                    },
                };
                let fate = match (fate, m) {
                    (Fate::Lose, Op::Write { offset, data, .. })
                        if offset + data.len() as u64 > bytes.len() as u64 && rng.chance(2) =>
                    {
                        report.extensions_kept += 1;
                        Fate::LoseButExtend
                    }
                    (f, _) => f,
                };
                match (m, fate) {
                    (Op::SetLen { .. }, Fate::Keep) => report.set_len_kept += 1,
                    (Op::SetLen { .. }, _) => report.set_len_lost += 1,
                    (_, Fate::Lose | Fate::LoseButExtend) => report.writes_lost += 1,
                    (_, Fate::Keep) => report.writes_kept += 1,
                    (_, Fate::Torn { .. }) => report.writes_torn += 1,
                    (_, Fate::Scatter { .. }) => report.writes_scattered += 1,
                }
                // Segments tell garbage from damage (FORMAT.md §7.5): a quarter of the cuts
                // give their lost sectors random bytes.
                let noise = (garbage && rec.paths[*i].to_string_lossy().ends_with(".log")).then(|| rng.next());
                apply_file(&mut bytes, m, fate, noise);
            }
            contents.insert(id, bytes);
        }
        drop(rec);
        std::fs::create_dir_all(out)?;
        write_tree(out, 0, &final_dirs, &contents, &mut vec![0])?;
        Ok(report)
    }

    /// Takes the recorder's lock for one operation: the caller carries it out for real while
    /// holding the guard, then records it.
    pub(crate) fn lock(&self) -> SimGuard<'_> {
        SimGuard { root: &self.root, rec: self.rec.lock() }
    }
}

/// Whether `pattern` names `path` (relative to the root): `/` is the root itself, anything
/// else matches the end of the path (`.log`, `p00000`, `MANIFEST.tmp`).
fn names(path: &Path, pattern: &str) -> bool {
    if pattern == "/" { path.as_os_str().is_empty() } else { path.to_string_lossy().ends_with(pattern) }
}

fn kind_of(op: &Op) -> StepKind {
    match op {
        Op::Link { .. } => StepKind::Create,
        Op::Unlink { .. } => StepKind::Remove,
        Op::Rename { .. } => StepKind::Rename,
        Op::Write { .. } => StepKind::Write,
        Op::SetLen { .. } => StepKind::SetLen,
        Op::SyncFile { .. } => StepKind::SyncFile,
        Op::SyncDir { .. } => StepKind::SyncDir,
    }
}

/// Records what is already on disk as durable.
fn import(rec: &mut Recorder, dir: &Path, id: NodeId) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut map = BTreeMap::new();
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        let node = rec.nodes.len();
        if t.is_dir() {
            rec.nodes.push(Kind::Dir { live: BTreeMap::new() });
            import(rec, &e.path(), node);
        } else if t.is_file() {
            rec.nodes.push(Kind::File);
            rec.initial.insert(node, std::fs::read(e.path()).unwrap_or_default());
        } else {
            continue;
        }
        map.insert(e.file_name(), node);
    }
    if let Some(Kind::Dir { live }) = rec.nodes.get_mut(id) {
        *live = map.clone();
    }
    rec.initial_dirs.insert(id, map);
}

#[derive(Debug, Clone, Copy)]
enum Fate {
    Lose,
    /// Lost, but the file's new length survived (zero-filled).
    LoseButExtend,
    Keep,
    /// A prefix up to a sector boundary drawn from `at`.
    Torn {
        at: u64,
        sector: u64,
    },
    /// Each sector kept or lost on its own, drawn from `seed`.
    Scatter {
        seed: u64,
        sector: u64,
    },
}

/// Applies one mutation with its fate. With `garbage`, the sectors a torn or scattered write
/// did not get to the disk, and the space a lost write extended the file by, read as random
/// bytes (drawn from that seed) instead of what they held.
fn apply_file(bytes: &mut Vec<u8>, op: &Op, fate: Fate, garbage: Option<u64>) {
    match op {
        Op::SetLen { len, .. } => {
            if matches!(fate, Fate::Keep) {
                bytes.resize(*len as usize, 0);
            }
        }
        Op::Write { offset, data, .. } => {
            let offset = *offset as usize;
            let end = offset + data.len();
            let put = |bytes: &mut Vec<u8>, from: usize, to: usize| {
                if bytes.len() < to {
                    bytes.resize(to, 0);
                }
                data.copy_into(from - offset, &mut bytes[from..to]);
            };
            let mut noise = garbage.map(Rng::new);
            let mut lost = |bytes: &mut Vec<u8>, from: usize, to: usize| {
                if let Some(rng) = noise.as_mut()
                    && from < to
                {
                    if bytes.len() < to {
                        bytes.resize(to, 0);
                    }
                    for b in &mut bytes[from..to] {
                        *b = rng.next() as u8;
                    }
                }
            };
            match fate {
                Fate::Lose => {}
                Fate::LoseButExtend => {
                    let old = bytes.len();
                    if old < end {
                        bytes.resize(end, 0);
                        lost(bytes, old.max(offset), end);
                    }
                }
                Fate::Keep => put(bytes, offset, end),
                Fate::Torn { at, sector } => {
                    let sector = sector as usize;
                    // Sector boundaries strictly inside the write.
                    let first = (offset / sector + 1) * sector;
                    let mut cuts: Vec<usize> = (first..end).step_by(sector).collect();
                    if cuts.is_empty() {
                        cuts.push(offset);
                    }
                    let cut = cuts[(at % cuts.len() as u64) as usize];
                    put(bytes, offset, cut);
                    lost(bytes, cut, end);
                }
                Fate::Scatter { seed, sector } => {
                    let sector = sector as usize;
                    let mut rng = Rng::new(seed);
                    let mut from = offset;
                    while from < end {
                        let to = ((from / sector + 1) * sector).min(end);
                        if rng.chance(2) {
                            put(bytes, from, to);
                        } else {
                            lost(bytes, from, to);
                        }
                        from = to;
                    }
                }
            }
        }
        _ => {}
    }
}

fn apply_dir(entries: &mut BTreeMap<OsString, NodeId>, op: &Op, this: NodeId) {
    match op {
        Op::Link { name, node, .. } => {
            entries.insert(name.clone(), *node);
        }
        Op::Unlink { name, .. } => {
            entries.remove(name);
        }
        Op::Rename { from_dir, from, to_dir, to, node } => {
            if *from_dir == this {
                entries.remove(from);
            }
            if *to_dir == this {
                entries.insert(to.clone(), *node);
            }
        }
        _ => {}
    }
}

fn write_tree(
    out: &Path,
    dir: NodeId,
    dirs: &HashMap<NodeId, BTreeMap<OsString, NodeId>>,
    contents: &HashMap<NodeId, Vec<u8>>,
    seen: &mut Vec<NodeId>,
) -> std::io::Result<()> {
    let Some(entries) = dirs.get(&dir) else { return Ok(()) };
    for (name, &node) in entries {
        let path = out.join(name);
        if dirs.contains_key(&node) {
            // A directory reachable twice (a rename kept beside its lost unlink) is written once.
            if seen.contains(&node) {
                continue;
            }
            seen.push(node);
            std::fs::create_dir_all(&path)?;
            write_tree(&path, node, dirs, contents, seen)?;
        } else {
            std::fs::write(&path, contents.get(&node).map_or(&[][..], |b| &b[..]))?;
        }
    }
    Ok(())
}

/// The recorder, locked for one operation.
pub(crate) struct SimGuard<'a> {
    root: &'a Path,
    rec: MutexGuard<'a, Recorder>,
}

impl SimGuard<'_> {
    fn rel(&self, path: &Path) -> Option<PathBuf> {
        path.strip_prefix(self.root).ok().map(Path::to_path_buf)
    }

    /// The node at `path`, if the recorder knows it.
    fn resolve(&self, path: &Path) -> Option<NodeId> {
        let rel = self.rel(path)?;
        let mut at = 0;
        for c in rel.components() {
            match c {
                Component::Normal(name) => match self.rec.nodes.get(at) {
                    Some(Kind::Dir { live }) => at = *live.get(name)?,
                    _ => return None,
                },
                Component::CurDir => {}
                _ => return None,
            }
        }
        Some(at)
    }

    fn parent(&self, path: &Path) -> Option<(NodeId, OsString)> {
        let name = path.file_name()?.to_os_string();
        Some((self.resolve(path.parent()?)?, name))
    }

    fn push(&mut self, op: Op, path: &Path) {
        let rel = self.rel(path).unwrap_or_default();
        self.rec.ops.push(op);
        self.rec.paths.push(rel);
    }

    fn untracked(&mut self, what: &str, path: &Path) {
        if path.starts_with(self.root) && path != self.root {
            self.rec.untracked.push(format!("{what} {}", path.display()));
        }
    }

    fn live_mut(&mut self, dir: NodeId) -> Option<&mut BTreeMap<OsString, NodeId>> {
        match self.rec.nodes.get_mut(dir) {
            Some(Kind::Dir { live }) => Some(live),
            _ => None,
        }
    }

    /// The node a file opened at `path` has (none if it is not under the root or unknown).
    pub fn node_of(&self, path: &Path) -> Option<NodeId> {
        self.resolve(path)
    }

    /// A file was created at `path` (or truncated, if it existed).
    pub fn created(&mut self, path: &Path) -> Option<NodeId> {
        if let Some(node) = self.resolve(path) {
            self.push(Op::SetLen { node, len: 0 }, path);
            return Some(node);
        }
        let Some((dir, name)) = self.parent(path) else {
            self.untracked("create", path);
            return None;
        };
        let node = self.rec.nodes.len();
        self.rec.nodes.push(Kind::File);
        self.live_mut(dir)?.insert(name.clone(), node);
        self.push(Op::Link { dir, name, node }, path);
        Some(node)
    }

    /// A directory was created at `path` (nothing if it existed).
    pub fn created_dir(&mut self, path: &Path) {
        if self.resolve(path).is_some() || self.rel(path).is_none_or(|r| r.as_os_str().is_empty()) {
            return;
        }
        let Some((dir, name)) = self.parent(path) else {
            self.untracked("create directory", path);
            return;
        };
        let node = self.rec.nodes.len();
        self.rec.nodes.push(Kind::Dir { live: BTreeMap::new() });
        if let Some(live) = self.live_mut(dir) {
            live.insert(name.clone(), node);
        }
        self.push(Op::Link { dir, name, node }, path);
    }

    /// `path` (a file, or a directory with everything in it) was removed.
    pub fn removed(&mut self, path: &Path) {
        let Some((dir, name)) = self.parent(path) else {
            self.untracked("remove", path);
            return;
        };
        if let Some(live) = self.live_mut(dir)
            && live.remove(&name).is_some()
        {
            self.push(Op::Unlink { dir, name }, path);
        } else {
            self.untracked("remove", path);
        }
    }

    /// `from` was renamed to `to`.
    pub fn renamed(&mut self, from: &Path, to: &Path) {
        let (Some((from_dir, from_name)), Some((to_dir, to_name))) = (self.parent(from), self.parent(to)) else {
            self.untracked("rename", to);
            return;
        };
        let Some(node) = self.live_mut(from_dir).and_then(|l| l.remove(&from_name)) else {
            self.untracked("rename", from);
            return;
        };
        if let Some(live) = self.live_mut(to_dir) {
            live.insert(to_name.clone(), node);
        }
        self.push(Op::Rename { from_dir, from: from_name, to_dir, to: to_name, node }, to);
    }

    /// `bytes` were written at `offset` of the file `node`.
    pub fn wrote(&mut self, node: Option<NodeId>, path: &Path, offset: u64, bytes: &[u8]) {
        let Some(node) = node else { return self.untracked("write", path) };
        let data = if bytes.iter().all(|&b| b == 0) { Data::Zeros(bytes.len()) } else { Data::Bytes(bytes.into()) };
        self.push(Op::Write { node, offset, data }, path);
    }

    /// The file `node` was cut or extended to `len`.
    pub fn set_len(&mut self, node: Option<NodeId>, path: &Path, len: u64) {
        let Some(node) = node else { return self.untracked("set_len", path) };
        self.push(Op::SetLen { node, len }, path);
    }

    /// The file `node` was synced.
    pub fn synced(&mut self, node: Option<NodeId>, path: &Path) {
        let Some(node) = node else { return self.untracked("sync", path) };
        self.push(Op::SyncFile { node }, path);
    }

    /// The directory at `path` was synced.
    pub fn synced_dir(&mut self, path: &Path) {
        if let Some(node) = self.resolve(path) {
            self.push(Op::SyncDir { node }, path);
        }
    }
}
