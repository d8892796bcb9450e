//! The archiving policy: for each sealed segment, whether it is archived now and why. Cheap
//! first: the age comes from the segment's last batch, deleted streams from index lookups,
//! and only an old enough segment has its streams' snapshots looked up. No segment is read
//! whole here, and nothing is written: the job (`job.rs`) acts on the decision.
//!
//! `compact_partition` first rewrites the archives holding events of deleted streams, then
//! looks at the sealed, unarchived segments, oldest first, each loaded first. A segment's newest
//! timestamp comes from its last batches (found through the index's last position entry),
//! deleted streams are looked up in its index, and its streams' last versions come from the
//! index's stream entries (each stream's id peeked from its first batch). A segment that cannot
//! be loaded or looked at is left as it is and reported in `CompactionReport::skipped` (and the
//! store's compaction counters). A segment is chosen with the first of these reasons (the codes
//! of FORMAT.md §14.1) that applies:
//!
//! 1. `Forced`, when compaction is forced: every sealed segment;
//! 2. `Erasure`, when it holds an event of a deleted stream, or a batch whose events its
//!    stream's metadata all hides by version (`truncate_before`, `max_count`, soft delete);
//! 3. `Retained`, when its newest batch's timestamp is at least `retention` (default 7 days)
//!    old and `require_snapshots` is off;
//! 4. `RetainedAndSnapshotted`, when it is that old and every stream with events in it, deleted
//!    streams excepted, has a snapshot whose version is at least its last version in the
//!    segment;
//! 5. `RetainedCold`, when it is that old and every such stream either has that snapshot or is
//!    cold: its newest event in the whole partition is at least `retention` old too. A cold
//!    aggregate (an account that never reached its 100th event, and is no longer used) does
//!    not keep its segment hot for ever: its events are archived without a snapshot, and stay
//!    readable from the archive (a load of it replays from there, slower, which is what a
//!    cold aggregate can afford). A stream appended to within the retention period still
//!    needs its snapshot;
//! 6. `HotBytes`, when the sealed, unarchived segments not chosen so far (this one included)
//!    hold more than `max_hot_bytes` bytes (default: no bound).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::archive::Reason;
use crate::log::sealed::SealedSegment;
use crate::log::stream_meta::Visible;
use crate::log::{Archive, Segment, View};
use crate::router::stream_hash;

use super::{CompactionOptions, SnapshotIndex};

/// What the policy weighs a partition's sealed segments against.
pub(super) struct Weigh<'a> {
    /// The partition's directory (named by errors about its snapshots).
    pub dir: &'a Path,
    pub snapshots: &'a dyn SnapshotIndex,
    /// The partition's deleted streams, with when they were deleted.
    pub deleted: &'a HashMap<String, u64>,
    /// The streams whose metadata hides some of their events (see `job.rs`).
    pub rules: &'a HashMap<String, (Visible, u64, u64)>,
    pub opts: &'a CompactionOptions,
    /// Archive every sealed segment.
    pub force: bool,
    pub now: u64,
    /// Whether a stream is cold: its newest event in the partition is at least `retention`
    /// old (or not visible at all).
    pub cold: &'a dyn Fn(&str) -> Result<bool>,
}

/// Why `sealed` (the segment of `slot`) is to be archived now, if it is; `hot` is the bytes
/// of the partition's sealed, unarchived segments not chosen yet.
pub(super) fn choose(w: &Weigh<'_>, slot: &Segment, sealed: &Arc<SealedSegment>, hot: u64) -> Result<Option<Reason>> {
    if w.force {
        return Ok(Some(Reason::Forced));
    }
    let view = View::Sealed(sealed.clone());
    for stream in w.deleted.keys() {
        if view.last_version(slot, stream, stream_hash(stream), u64::MAX)?.is_some() {
            return Ok(Some(Reason::Erasure));
        }
    }
    if holds_hidden(&view, slot, w.rules)? {
        return Ok(Some(Reason::Erasure));
    }
    let retention = u64::try_from(w.opts.retention.as_nanos()).unwrap_or(u64::MAX);
    let old = w.now.saturating_sub(sealed.last_timestamp(slot)?) >= retention;
    if old && !w.opts.require_snapshots {
        return Ok(Some(Reason::Retained));
    }
    if old {
        match covered(w, &sealed.stream_last_versions(slot)?)? {
            Covered::All => return Ok(Some(Reason::RetainedAndSnapshotted)),
            Covered::WithCold => return Ok(Some(Reason::RetainedCold)),
            Covered::No => {}
        }
    }
    Ok(w.opts.max_hot_bytes.is_some_and(|m| hot > m).then_some(Reason::HotBytes))
}

/// How a segment's streams are covered.
enum Covered {
    /// Each by a snapshot at or past its last version there.
    All,
    /// Each by such a snapshot, or cold, and some are cold.
    WithCold,
    /// Some stream neither.
    No,
}

/// Whether every stream has a snapshot at or past `last_versions`, or is cold (deleted ones
/// need neither).
fn covered(w: &Weigh<'_>, last_versions: &[(&str, u64)]) -> Result<Covered> {
    let mut cold = false;
    for (stream, last) in last_versions {
        if w.deleted.contains_key(*stream) {
            continue;
        }
        match w.snapshots.latest_version(stream) {
            Ok(Some(v)) if v >= *last => {}
            Ok(_) if (w.cold)(stream)? => cold = true,
            Ok(_) => return Ok(Covered::No),
            Err(why) => return Err(Error::corruption(w.dir, 0, why)),
        }
    }
    Ok(if cold { Covered::WithCold } else { Covered::All })
}

/// Whether archive `a` (the slot `slot`) holds events of a deleted stream, or a batch that a
/// stream's metadata hides by version.
pub(super) fn holds_deleted(
    slot: &Segment,
    a: &Arc<Archive>,
    deleted: &HashMap<String, u64>,
    rules: &HashMap<String, (Visible, u64, u64)>,
) -> Result<bool> {
    let view = View::Archived(a.clone());
    for stream in deleted.keys() {
        if view.last_version(slot, stream, stream_hash(stream), u64::MAX)?.is_some() {
            return Ok(true);
        }
    }
    holds_hidden(&view, slot, rules)
}

/// Whether `view` holds a batch whose events a stream's metadata all hides by version (its
/// first batch there ends before the first visible version). Batches hidden by age alone are
/// found when the segment is archived for another reason.
fn holds_hidden(view: &View, slot: &Segment, rules: &HashMap<String, (Visible, u64, u64)>) -> Result<bool> {
    for (stream, (vis, _, _)) in rules {
        if vis.from_version == 0 {
            continue;
        }
        if let Some(end) = view.first_batch_end(slot, stream, stream_hash(stream))?
            && end <= vis.from_version
        {
            return Ok(true);
        }
    }
    Ok(false)
}
