//! Typed projections (feature `serde`): a [`Projection`] whose handler receives decoded
//! events.

use super::{HandlerError, Projection};
use crate::codec::DomainEvent;
use crate::event::RecordedEvent;

/// A projection over typed events: [`handle`](TypedProjection::handle) receives each event of
/// its [`DomainEvent`] type, decoded after its upcasters, with the stored event beside it (for
/// its stream, version and position). Events of other types
/// ([`DomainEvent::handles`] says no) are passed over and count as handled. An event of its
/// type that does not decode fails like a handler error: it is retried, then dead-lettered
/// ([`OnFailure`](crate::projection::OnFailure)).
///
/// Every `TypedProjection` is a [`Projection`]: register it with
/// [`ProjectionEngine::register`](crate::ProjectionEngine::register) as any other.
///
/// ```
/// use std::sync::atomic::{AtomicI64, Ordering};
/// use serde::{Deserialize, Serialize};
/// use strata::projection::HandlerError;
/// use strata::typed::{DomainEvent, TypedProjection};
/// use strata::RecordedEvent;
///
/// #[derive(Serialize, Deserialize)]
/// enum AccountEvent { Deposited { cents: u64 } }
/// impl DomainEvent for AccountEvent {}
///
/// #[derive(Default)]
/// struct TotalDeposits(AtomicI64);
///
/// impl TypedProjection for TotalDeposits {
///     type Event = AccountEvent;
///     fn handle(&self, event: &AccountEvent, _: &RecordedEvent) -> Result<(), HandlerError> {
///         let AccountEvent::Deposited { cents } = event;
///         self.0.fetch_add(*cents as i64, Ordering::Relaxed);
///         Ok(())
///     }
/// }
/// ```
pub trait TypedProjection: Send + Sync + 'static {
    /// The events it handles.
    type Event: DomainEvent;

    /// Handles one event of its type.
    fn handle(&self, event: &Self::Event, recorded: &RecordedEvent) -> Result<(), HandlerError>;

    /// Whether to decode and handle `recorded`, an event of one of its types (by default,
    /// all of them). Narrow it when another aggregate's events share a type name, say to the
    /// streams of one category: `recorded.stream_id.starts_with("account-")`.
    fn wants(&self, recorded: &RecordedEvent) -> bool {
        let _ = recorded;
        true
    }

    /// [`Projection::reset`].
    fn reset(&self) -> Result<(), HandlerError> {
        Ok(())
    }

    /// [`Projection::checkpoint`].
    fn checkpoint(&self, partition: u32) -> u64 {
        let _ = partition;
        0
    }
}

impl<P: TypedProjection> Projection for P {
    fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        if !P::Event::handles(&event.event_type) || !self.wants(event) {
            return Ok(());
        }
        let decoded: P::Event = event.decode()?;
        TypedProjection::handle(self, &decoded, event)
    }

    fn reset(&self) -> Result<(), HandlerError> {
        TypedProjection::reset(self)
    }

    fn checkpoint(&self, partition: u32) -> u64 {
        TypedProjection::checkpoint(self, partition)
    }
}
