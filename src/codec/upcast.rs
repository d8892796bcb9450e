//! Upcasters: how an event stored in an older shape is read as its newest one, without
//! rewriting it.

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Codec, decode_content, encode_content};

/// The longest chain of steps one event may take (a guard against a rename cycle).
const MAX_STEPS: usize = 256;

type Transform = Box<dyn Fn(Codec, &str, &[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

enum Kind {
    Transform(Transform),
    Rename(String),
}

struct Step {
    event_type: String,
    schema: u32,
    kind: Kind,
}

/// A registry of upcasters by (event type, schema version): each turns the payload of an
/// event stored under that type and schema into the payload of the next schema (or renames
/// the type). Reads through the typed API ([`RecordedEvent::decode`](crate::RecordedEvent::decode),
/// typed aggregates and projections) apply the chain, so that an event written years ago
/// decodes as today's type; what is on disk never changes.
///
/// A [`DomainEvent`](super::DomainEvent) names its registry in
/// [`DomainEvent::upcasters`](super::DomainEvent::upcasters), usually a `static`:
///
/// ```
/// use std::sync::LazyLock;
/// use serde::{Deserialize, Serialize};
/// use strata::typed::{DomainEvent, Upcasters};
///
/// // Schema 1 stored whole units; schema 2 stores cents.
/// #[derive(Deserialize)]
/// struct DepositedV1 { amount: u64 }
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// enum AccountEvent { Deposited { cents: u64 } }
///
/// impl DomainEvent for AccountEvent {
///     fn schema_version(&self) -> u32 { 2 }
///     fn upcasters() -> &'static Upcasters {
///         static UP: LazyLock<Upcasters> = LazyLock::new(|| {
///             Upcasters::new().add("Deposited", 1, |old: DepositedV1| AccountEvent::Deposited { cents: old.amount * 100 })
///         });
///         &UP
///     }
/// }
///
/// let (ty, payload) = AccountEvent::upcasters().upcast("Deposited", 1, Default::default(), br#"{"amount":3}"#)?;
/// assert_eq!((&*ty, &*payload), ("Deposited", &br#"{"cents":300}"#[..]));
/// # Ok::<(), String>(())
/// ```
///
/// A step's output is encoded with the stored event's codec; an enum variant's output is its
/// content, as [`EventData::encode`](crate::EventData::encode) writes it, so a step may return
/// the new enum itself (as above) or a struct of the variant's fields.
#[derive(Default)]
pub struct Upcasters {
    steps: Vec<Step>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for s in &self.steps {
            match &s.kind {
                Kind::Transform(_) => list.entry(&format_args!("{}@{} -> @{}", s.event_type, s.schema, s.schema + 1)),
                Kind::Rename(to) => list.entry(&format_args!("{}@{} -> {to}@{}", s.event_type, s.schema, s.schema)),
            };
        }
        list.finish()
    }
}

static NONE: Upcasters = Upcasters::new();

impl Upcasters {
    /// An empty registry.
    pub const fn new() -> Upcasters {
        Upcasters { steps: Vec::new() }
    }

    /// The empty registry, for events that were never reshaped.
    pub fn none() -> &'static Upcasters {
        &NONE
    }

    /// Adds the step from schema `schema` of `event_type` to schema `schema + 1`: the stored
    /// payload is decoded as `Old`, mapped by `f`, and encoded again. A step already
    /// registered for the same type and schema is replaced.
    pub fn add<Old, New>(
        self,
        event_type: impl Into<String>,
        schema: u32,
        f: impl Fn(Old) -> New + Send + Sync + 'static,
    ) -> Upcasters
    where
        Old: DeserializeOwned,
        New: Serialize,
    {
        let transform = move |codec: Codec, ty: &str, payload: &[u8]| -> Result<Vec<u8>, String> {
            let old: Old = decode_content(codec, ty, payload)?;
            encode_content(codec, &f(old)).map(|(_, bytes)| bytes)
        };
        self.with(event_type.into(), schema, Kind::Transform(Box::new(transform)))
    }

    /// Adds a step from schema `schema` to `schema + 1` of a JSON event, on its parsed value
    /// (handy for adding a field with a default, or renaming one). An event stored with
    /// another codec fails to decode at this step.
    pub fn add_json(
        self,
        event_type: impl Into<String>,
        schema: u32,
        f: impl Fn(serde_json::Value) -> Result<serde_json::Value, String> + Send + Sync + 'static,
    ) -> Upcasters {
        let transform = move |codec: Codec, _: &str, payload: &[u8]| -> Result<Vec<u8>, String> {
            if codec != Codec::Json {
                return Err(format!("a JSON upcaster cannot read a {codec:?} payload"));
            }
            let value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
            serde_json::to_vec(&f(value)?).map_err(|e| e.to_string())
        };
        self.with(event_type.into(), schema, Kind::Transform(Box::new(transform)))
    }

    /// Renames: an event stored as `event_type` at schema `schema` reads as `new_type` at the
    /// same schema (and the chain goes on from there). A step already registered for the
    /// same type and schema is replaced.
    pub fn rename(self, event_type: impl Into<String>, schema: u32, new_type: impl Into<String>) -> Upcasters {
        self.with(event_type.into(), schema, Kind::Rename(new_type.into()))
    }

    fn with(mut self, event_type: String, schema: u32, kind: Kind) -> Upcasters {
        self.steps.retain(|s| !(s.event_type == event_type && s.schema == schema));
        self.steps.push(Step { event_type, schema, kind });
        self
    }

    /// Whether any step starts from `event_type` (at any schema).
    pub fn knows(&self, event_type: &str) -> bool {
        self.steps.iter().any(|s| s.event_type == event_type)
    }

    /// The event types steps start from.
    pub(crate) fn source_types(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().map(|s| s.event_type.as_str())
    }

    /// The event type and payload that an event stored as `event_type` at `schema`, with
    /// `codec`, has after every step that applies. Borrows the input when no step does.
    ///
    /// Errors: a step failed (the payload did not decode as its old shape), or the chain is
    /// longer than 256 steps (a cycle of renames).
    pub fn upcast<'a>(
        &self,
        event_type: &'a str,
        schema: u32,
        codec: Codec,
        payload: &'a [u8],
    ) -> Result<(Cow<'a, str>, Cow<'a, [u8]>), String> {
        let mut ty: Cow<'a, str> = Cow::Borrowed(event_type);
        let mut payload: Cow<'a, [u8]> = Cow::Borrowed(payload);
        let mut schema = schema;
        if self.steps.is_empty() {
            return Ok((ty, payload));
        }
        for _ in 0..MAX_STEPS {
            let Some(step) = self.steps.iter().find(|s| s.schema == schema && s.event_type == *ty) else {
                return Ok((ty, payload));
            };
            match &step.kind {
                Kind::Transform(f) => {
                    let next =
                        f(codec, &ty, &payload).map_err(|e| format!("upcasting {ty} from schema {schema}: {e}"))?;
                    payload = Cow::Owned(next);
                    schema = schema.checked_add(1).ok_or("schema version overflow")?;
                }
                Kind::Rename(to) => ty = Cow::Owned(to.clone()),
            }
        }
        Err(format!("more than {MAX_STEPS} upcasting steps from {event_type} at schema {schema}: a cycle of renames?"))
    }
}
