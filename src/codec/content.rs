//! An event's payload is the content of its enum variant, and its event type is the variant's
//! name: `AccountEvent::Deposited { cents: 10 }` is stored as type `"Deposited"` and JSON
//! `{"cents":10}`, the shape other event stores and tools expect, rather than serde's own
//! `{"Deposited":{"cents":10}}`. Variants are named, not numbered, in every codec, so reordering
//! an enum's variants never changes what its stored events mean (postcard alone would number
//! them).
//!
//! This module does that without a derive macro of its own, by wrapping the codec's serde
//! `Serializer` and `Deserializer`:
//! - [`AsContent`] serializes an enum variant as its content alone and records the variant's
//!   name (a struct, tuple struct, or newtype struct event records the struct's name);
//! - [`Content`] deserializes an enum from its content, given the variant's name, and
//!   forwards everything else;
//! - [`Probe`] asks a type which event types it has, from the variant names serde's derive
//!   passes to `deserialize_enum` (or the struct name), without any input.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, VariantAccess, Visitor};
use serde::ser::{self, Serialize, Serializer};

/// `value`, serialized as the content of its variant; `name` receives the variant's name.
pub(crate) struct AsContent<'a, T: ?Sized> {
    pub(crate) value: &'a T,
    pub(crate) name: &'a Cell<Option<&'static str>>,
}

impl<T: Serialize + ?Sized> Serialize for AsContent<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(ContentSerializer { inner: serializer, name: self.name })
    }
}

struct ContentSerializer<'a, S> {
    inner: S,
    name: &'a Cell<Option<&'static str>>,
}

macro_rules! forward_ser {
    ($($method:ident($ty:ty))*) => {
        $(fn $method(self, v: $ty) -> Result<S::Ok, S::Error> {
            self.inner.$method(v)
        })*
    };
}

impl<S: Serializer> Serializer for ContentSerializer<'_, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = S::SerializeSeq;
    type SerializeTuple = S::SerializeTuple;
    type SerializeTupleStruct = S::SerializeTupleStruct;
    type SerializeTupleVariant = TupleVariant<S::SerializeTuple>;
    type SerializeMap = S::SerializeMap;
    type SerializeStruct = S::SerializeStruct;
    type SerializeStructVariant = StructVariant<S::SerializeStruct>;

    forward_ser! {
        serialize_bool(bool) serialize_i8(i8) serialize_i16(i16) serialize_i32(i32)
        serialize_i64(i64) serialize_i128(i128) serialize_u8(u8) serialize_u16(u16)
        serialize_u32(u32) serialize_u64(u64) serialize_u128(u128) serialize_f32(f32)
        serialize_f64(f64) serialize_char(char) serialize_str(&str) serialize_bytes(&[u8])
    }

    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_none()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.inner.serialize_some(value)
    }

    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit()
    }

    fn serialize_unit_struct(self, name: &'static str) -> Result<S::Ok, S::Error> {
        self.name.set(Some(name));
        self.inner.serialize_unit_struct(name)
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<S::Ok, S::Error> {
        self.name.set(Some(variant));
        self.inner.serialize_unit()
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, name: &'static str, value: &T) -> Result<S::Ok, S::Error> {
        self.name.set(Some(name));
        self.inner.serialize_newtype_struct(name, value)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.name.set(Some(variant));
        value.serialize(self.inner)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<S::SerializeSeq, S::Error> {
        self.inner.serialize_seq(len)
    }

    fn serialize_tuple(self, len: usize) -> Result<S::SerializeTuple, S::Error> {
        self.inner.serialize_tuple(len)
    }

    fn serialize_tuple_struct(self, name: &'static str, len: usize) -> Result<S::SerializeTupleStruct, S::Error> {
        self.name.set(Some(name));
        self.inner.serialize_tuple_struct(name, len)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.name.set(Some(variant));
        self.inner.serialize_tuple(len).map(TupleVariant)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<S::SerializeMap, S::Error> {
        self.inner.serialize_map(len)
    }

    fn serialize_struct(self, name: &'static str, len: usize) -> Result<S::SerializeStruct, S::Error> {
        self.name.set(Some(name));
        self.inner.serialize_struct(name, len)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.name.set(Some(variant));
        self.inner.serialize_struct(variant, len).map(StructVariant)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A tuple variant's fields, written as a tuple.
pub(crate) struct TupleVariant<T>(T);

impl<T: ser::SerializeTuple> ser::SerializeTupleVariant for TupleVariant<T> {
    type Ok = T::Ok;
    type Error = T::Error;

    fn serialize_field<F: Serialize + ?Sized>(&mut self, value: &F) -> Result<(), T::Error> {
        self.0.serialize_element(value)
    }

    fn end(self) -> Result<T::Ok, T::Error> {
        self.0.end()
    }
}

/// A struct variant's fields, written as a struct.
pub(crate) struct StructVariant<T>(T);

impl<T: ser::SerializeStruct> ser::SerializeStructVariant for StructVariant<T> {
    type Ok = T::Ok;
    type Error = T::Error;

    fn serialize_field<F: Serialize + ?Sized>(&mut self, key: &'static str, value: &F) -> Result<(), T::Error> {
        self.0.serialize_field(key, value)
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), T::Error> {
        self.0.skip_field(key)
    }

    fn end(self) -> Result<T::Ok, T::Error> {
        self.0.end()
    }
}

/// A deserializer of a value whose enum variant is `name` and whose content `inner` holds.
pub(crate) struct Content<'n, D> {
    pub(crate) name: &'n str,
    pub(crate) inner: D,
}

/// Deserializes `T` through [`Content`] (a seed, so that the codec's deserializer can be
/// checked for trailing input afterwards).
pub(crate) struct ContentSeed<'n, T> {
    pub(crate) name: &'n str,
    pub(crate) marker: std::marker::PhantomData<T>,
}

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for ContentSeed<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        T::deserialize(Content { name: self.name, inner: deserializer })
    }
}

macro_rules! forward_de {
    ($($method:ident($($arg:ident: $ty:ty),*))*) => {
        $(fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method($($arg,)* visitor)
        })*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Content<'_, D> {
    type Error = D::Error;

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        visitor.visit_enum(Enum { name: self.name, inner: self.inner })
    }

    forward_de! {
        deserialize_any() deserialize_bool() deserialize_i8() deserialize_i16() deserialize_i32()
        deserialize_i64() deserialize_i128() deserialize_u8() deserialize_u16() deserialize_u32()
        deserialize_u64() deserialize_u128() deserialize_f32() deserialize_f64() deserialize_char()
        deserialize_str() deserialize_string() deserialize_bytes() deserialize_byte_buf()
        deserialize_option() deserialize_unit() deserialize_unit_struct(name: &'static str)
        deserialize_newtype_struct(name: &'static str) deserialize_seq() deserialize_tuple(len: usize)
        deserialize_tuple_struct(name: &'static str, len: usize) deserialize_map()
        deserialize_struct(name: &'static str, fields: &'static [&'static str])
        deserialize_identifier() deserialize_ignored_any()
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

struct Enum<'n, D> {
    name: &'n str,
    inner: D,
}

impl<'de, D: Deserializer<'de>> EnumAccess<'de> for Enum<'_, D> {
    type Error = D::Error;
    type Variant = Variant<D>;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Variant<D>), D::Error> {
        let de: de::value::StrDeserializer<'_, D::Error> = self.name.into_deserializer();
        Ok((seed.deserialize(de)?, Variant(self.inner)))
    }
}

struct Variant<D>(D);

impl<'de, D: Deserializer<'de>> VariantAccess<'de> for Variant<D> {
    type Error = D::Error;

    fn unit_variant(self) -> Result<(), D::Error> {
        <() as de::Deserialize>::deserialize(self.0)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, D::Error> {
        seed.deserialize(self.0)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct("", fields, visitor)
    }
}

/// The event types a type has, as far as serde tells without input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// An enum: its variants' names.
    Variants(&'static [&'static str]),
    /// A struct (or unit, tuple or newtype struct): its name.
    Named(&'static str),
    /// Something else (an untagged or internally tagged enum, a map, ...).
    Unknown,
}

/// The answer of [`Probe`], carried in its error (a probe stops at the first call).
#[derive(Debug)]
pub(crate) struct ProbeDone(pub(crate) Shape);

impl fmt::Display for ProbeDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "probed: {:?}", self.0)
    }
}

impl std::error::Error for ProbeDone {}

impl de::Error for ProbeDone {
    fn custom<T: fmt::Display>(_: T) -> ProbeDone {
        ProbeDone(Shape::Unknown)
    }
}

/// A deserializer with no input that reports what it is asked to deserialize.
pub(crate) struct Probe;

impl<'de> Deserializer<'de> for Probe {
    type Error = ProbeDone;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeDone> {
        Err(ProbeDone(Shape::Unknown))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, ProbeDone> {
        Err(ProbeDone(Shape::Variants(variants)))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, ProbeDone> {
        Err(ProbeDone(Shape::Named(name)))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, _: V) -> Result<V::Value, ProbeDone> {
        Err(ProbeDone(Shape::Named(name)))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, _: V) -> Result<V::Value, ProbeDone> {
        Err(ProbeDone(Shape::Named(name)))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _: usize,
        _: V,
    ) -> Result<V::Value, ProbeDone> {
        Err(ProbeDone(Shape::Named(name)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit seq tuple map identifier ignored_any
    }
}

/// What `T`'s `Deserialize` asks for first.
pub(crate) fn shape<T: de::DeserializeOwned>() -> Shape {
    match T::deserialize(Probe) {
        Err(ProbeDone(shape)) => shape,
        // A type that deserializes from nothing at all (a `Deserialize` written by hand that
        // asks for no input): it names no event types.
        Ok(_) => Shape::Unknown,
    }
}
