//! From batches to events: the one place a batch's events become [`EventView`]s (for every
//! read path, the seam and the projection engine alike), and the one place a partition read
//! cuts a batch to the positions it wants.

use std::ops::ControlFlow;

use crate::event::{EventView, RecordedEvent};
use crate::format::batch::{BatchView, EventRef};

/// Event `i` (`e`) of batch `b`, in `partition`, borrowed.
pub(crate) fn view<'a>(b: &BatchView<'a>, partition: u32, i: usize, e: &EventRef<'a>) -> EventView<'a> {
    EventView {
        stream_id: b.stream_id,
        version: b.first_version + i as u64,
        partition,
        position: b.base_position + i as u64,
        timestamp_nanos: b.timestamp,
        event_type: e.event_type,
        metadata: e.metadata,
        payload: e.payload,
        id: e.id,
        correlation_id: e.correlation_id,
        causation_id: e.causation_id,
    }
}

/// Hands `f` the events `skip..skip + take` of batch `b`, until it breaks. Generic, so that a
/// scan's per-event work inlines here.
pub(crate) fn each_event<F>(b: &BatchView<'_>, partition: u32, skip: usize, take: usize, f: &mut F) -> ControlFlow<()>
where
    F: FnMut(&EventView<'_>) -> ControlFlow<()> + ?Sized,
{
    if skip == 0 && take == 1 {
        // One event (a batch of one, the most common kind): no iterator.
        return f(&view(b, partition, 0, b.first()));
    }
    for (i, e) in b.events().enumerate().skip(skip).take(take) {
        f(&view(b, partition, i, &e))?;
    }
    ControlFlow::Continue(())
}

/// Appends copies of the events `skip..skip + take` of batch `b` to `out`.
pub(crate) fn emit(b: &BatchView<'_>, partition: u32, skip: usize, take: usize, out: &mut Vec<RecordedEvent>) {
    let _ = each_event(b, partition, skip, take, &mut |e| {
        out.push(e.to_recorded());
        ControlFlow::Continue(())
    });
}

/// Hands `f` the events of batch `b` (which starts before `end`) at positions `from..end`,
/// at most `limit - *taken` of them, adding how many to `taken`; nothing if `b` ends before
/// `from`. The one place partition reads (of segments and of archives) cut batches.
pub(crate) fn offer(
    b: &BatchView<'_>,
    from: u64,
    end: u64,
    limit: usize,
    taken: &mut usize,
    f: &mut dyn FnMut(&BatchView<'_>, usize, usize) -> ControlFlow<()>,
) -> ControlFlow<()> {
    if b.end_position() <= from {
        return ControlFlow::Continue(());
    }
    let skip = from.saturating_sub(b.base_position);
    let upto = u64::from(b.event_count).min(end - b.base_position);
    let take = (upto.saturating_sub(skip) as usize).min(limit - *taken);
    *taken += take;
    f(b, skip as usize, take)
}
