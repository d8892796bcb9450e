//! Typed aggregates (feature `serde`): an [`Aggregate`] whose events are a [`DomainEvent`]
//! and whose state is snapshotted through serde.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Aggregate, ApplyError, Loaded, commit, stamp};
use crate::codec::{Codec, DomainEvent, encode_all};
use crate::error::Result;
use crate::event::{AppendResult, EventId, RecordedEvent};
use crate::store::Store;

/// An aggregate over typed events: [`apply`](TypedAggregate::apply) receives the decoded
/// event, after its upcasters, and the state is snapshotted with serde. Every
/// `TypedAggregate` is an [`Aggregate`], so [`Store::load`] and the command bus take it as
/// they are; [`Store::commit_typed`] appends typed events to it.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use strata::typed::{DomainEvent, TypedAggregate};
/// use strata::{ApplyError, Options, Store};
///
/// #[derive(Serialize, Deserialize)]
/// enum AccountEvent { Deposited { cents: u64 }, Withdrawn { cents: u64 } }
/// impl DomainEvent for AccountEvent {}
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Account { balance: i64 }
///
/// impl TypedAggregate for Account {
///     type Event = AccountEvent;
///     fn apply(&mut self, event: &AccountEvent) -> Result<(), ApplyError> {
///         match event {
///             AccountEvent::Deposited { cents } => self.balance += *cents as i64,
///             AccountEvent::Withdrawn { cents } => self.balance -= *cents as i64,
///         }
///         Ok(())
///     }
/// }
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), Options::default().create_if_missing(true))?;
/// let mut acct = store.load::<Account>("account-1")?;
/// store.commit_typed(&mut acct, &[AccountEvent::Deposited { cents: 100 }, AccountEvent::Withdrawn { cents: 30 }])?;
/// assert_eq!(store.load::<Account>("account-1")?.state().balance, 70);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait TypedAggregate: Default + Serialize + DeserializeOwned {
    /// The aggregate's events.
    type Event: DomainEvent;

    /// The schema tag of the state's snapshots ([`Aggregate::SCHEMA`]): raise it when the
    /// state's shape changes. Snapshots under other tags go to
    /// [`TypedAggregate::upgrade_snapshot`], and by default are refused, so the state is
    /// rebuilt from the events (through their upcasters).
    const SCHEMA: u32 = 1;

    /// [`Aggregate::SNAPSHOT_EVERY`].
    const SNAPSHOT_EVERY: u64 = 100;

    /// The codec of the state's snapshots: JSON by default. postcard is smaller and faster,
    /// and not self-describing: with it, raise `SCHEMA` on every change of the state's fields.
    const SNAPSHOT_CODEC: Codec = Codec::Json;

    /// [`Aggregate::name`]: the Rust type name by default.
    fn name() -> &'static str {
        std::any::type_name::<Self>()
    }

    /// Applies one event of the stream (in version order) to the state.
    fn apply(&mut self, event: &Self::Event) -> std::result::Result<(), ApplyError>;

    /// The state from a snapshot taken under another schema tag, or `None` (the default) to
    /// refuse it and rebuild from the events.
    fn upgrade_snapshot(schema: u32, state: &[u8]) -> Option<Self> {
        let _ = (schema, state);
        None
    }
}

impl<T: TypedAggregate> Aggregate for T {
    const SCHEMA: u32 = <T as TypedAggregate>::SCHEMA;
    const SNAPSHOT_EVERY: u64 = <T as TypedAggregate>::SNAPSHOT_EVERY;

    fn name() -> &'static str {
        <T as TypedAggregate>::name()
    }

    fn apply(&mut self, event: &RecordedEvent) -> std::result::Result<(), ApplyError> {
        let decoded: T::Event = event.decode()?;
        TypedAggregate::apply(self, &decoded)
    }

    /// The state in `SNAPSHOT_CODEC`. A state serde cannot encode (a map with non-string keys
    /// in JSON) gives empty bytes, which `decode` refuses: such a state is never restored
    /// from a snapshot, only replayed.
    fn encode(&self) -> Vec<u8> {
        match T::SNAPSHOT_CODEC {
            Codec::Json => serde_json::to_vec(self).unwrap_or_default(),
            Codec::Postcard => postcard::to_allocvec(self).unwrap_or_default(),
        }
    }

    fn decode(schema: u32, state: &[u8]) -> Option<Self> {
        if schema != <T as TypedAggregate>::SCHEMA {
            return T::upgrade_snapshot(schema, state);
        }
        match T::SNAPSHOT_CODEC {
            Codec::Json => serde_json::from_slice(state).ok(),
            Codec::Postcard => match postcard::take_from_bytes(state) {
                Ok((value, [])) => Some(value),
                _ => None,
            },
        }
    }
}

impl Store {
    /// [`Store::commit`] of typed events: encodes them ([`EventData::encode`](crate::EventData::encode)), appends them
    /// expecting the version the aggregate was loaded at, and applies them.
    ///
    /// Errors: as [`Store::commit`], and [`Error::Codec`](crate::Error::Codec) (nothing written) if an event does
    /// not encode.
    pub fn commit_typed<A: TypedAggregate>(&self, loaded: &mut Loaded<A>, events: &[A::Event]) -> Result<AppendResult> {
        commit(self, loaded, &encode_all(events)?)
    }

    /// [`Store::commit_command`] of typed events: at most once per `command_id`.
    pub fn commit_command_typed<A: TypedAggregate>(
        &self,
        loaded: &mut Loaded<A>,
        command_id: EventId,
        events: &[A::Event],
    ) -> Result<AppendResult> {
        let events = stamp(command_id, None, &loaded.stream, encode_all(events)?);
        commit(self, loaded, &events)
    }
}
