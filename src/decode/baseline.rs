//! The job's decoder before its own JSON reader: `serde_json` into the same
//! raw structs, then the same rules. The job does not use it. It stays for
//! two readers: the core benchmark's baseline (issue 19 measures the engine
//! against it), and the tests and fuzz target that check the reader accepts
//! and rejects what it does, for the same reasons (`tests/decode.rs`).

use std::borrow::Cow;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{decode_with, reject, Fields, Num, RawDelivery, RawOrder, RawPayment, Rejection, Str};
use crate::core::fx::FxTable;
use crate::model::{DeadReason, Event, InputTopic};

/// [`super::decode`], reading the JSON with serde_json.
pub fn decode<'a>(
    topic: InputTopic,
    value: &'a [u8],
    fx: &FxTable,
) -> Result<Event<'a>, Rejection> {
    decode_with::<Serde>(topic, value, fx)
}

struct Serde;

impl Fields for Serde {
    fn order(text: &str) -> Result<RawOrder<'_>, Rejection> {
        parse(text)
    }
    fn payment(text: &str) -> Result<RawPayment<'_>, Rejection> {
        parse(text)
    }
    fn delivery(text: &str) -> Result<RawDelivery<'_>, Rejection> {
        parse(text)
    }
}

fn parse<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, Rejection> {
    serde_json::from_str(text).map_err(|e| {
        let reason = match e.classify() {
            serde_json::error::Category::Data => DeadReason::InvalidField,
            _ => DeadReason::MalformedJson,
        };
        reject(reason, e.to_string())
    })
}

/// Distinguishes an explicit `null` (Some(None)) from an absent field (None).
pub(super) fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(i64::try_from(v).map_or(Num::Huge(v), Num::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num::Float(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Borrows unless the string had escapes (serde's own `Option<Cow<str>>`
/// always copies, which costs an allocation per field).
impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}
