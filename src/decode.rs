//! Bytes of an input record → a validated [`Event`], or the dead-letter reason.
//!
//! Pure and allocation-light: strings borrow from the record unless escaped.
//! Two steps: the JSON reader ([`json`]) fills a raw struct of the topic's
//! fields, then the contract's rules turn it into an event (here).

use std::borrow::Cow;

use serde::Deserialize;

pub mod baseline;
mod json;

use json::{field, Field, Kind, Value};

use crate::core::fx::FxTable;
use crate::model::{
    DeadReason, Delivery, DeliveryStatus, Device, Event, InputTopic, Order, Payment, PaymentKind,
};

/// Largest value accepted (contract: `too_large` above 64 KiB).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest identifier, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// Amounts are 1 ..= 10^12 minor units.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;
/// 2000-01-01T00:00:00Z: an event time before it is seconds, not milliseconds
/// (contract; checked with the wall-clock bound by the attribution task).
pub const MIN_EVENT_MS: i64 = 946_684_800_000;
/// Timestamps beyond this (year 2255) are not plausible milliseconds.
pub const MAX_TS_MS: i64 = 9_000_000_000_000;

/// Why a record was rejected, with a short human sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    pub reason: DeadReason,
    pub detail: String,
}

fn reject(reason: DeadReason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

/// A JSON number as written: money and time must be integers. Integers
/// beyond 64 bits are floats, as serde_json reads them. Not one `i128` for
/// both integer kinds: 16 bytes, not 32, in every value read.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    /// Above `i64::MAX`.
    Huge(u64),
    Float(f64),
}

/// A JSON string that borrows from the input unless it had escapes.
#[derive(Debug)]
struct Str<'a>(Cow<'a, str>);

// The raw fields of each topic, as read. `Deserialize` is for the serde_json
// baseline (`baseline.rs`); the job's reader fills them itself (`read_order`…).
#[derive(Deserialize, Default)]
struct RawOrder<'a> {
    #[serde(borrow, default)]
    order_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    user_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    brand_id: Option<Str<'a>>,
    #[serde(borrow, default, deserialize_with = "baseline::nullable")]
    channel_id: Option<Option<Str<'a>>>,
    #[serde(borrow, default)]
    country: Option<Str<'a>>,
    #[serde(borrow, default)]
    device: Option<Str<'a>>,
    #[serde(borrow, default)]
    currency: Option<Str<'a>>,
    #[serde(default)]
    amount_minor: Option<Num>,
    #[serde(default)]
    ts_ms: Option<Num>,
}

#[derive(Deserialize, Default)]
struct RawPayment<'a> {
    #[serde(borrow, default)]
    payment_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    order_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    currency: Option<Str<'a>>,
    #[serde(default)]
    amount_minor: Option<Num>,
    #[serde(default)]
    ts_ms: Option<Num>,
}

#[derive(Deserialize, Default)]
struct RawDelivery<'a> {
    #[serde(borrow, default)]
    delivery_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    order_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    status: Option<Str<'a>>,
    #[serde(default)]
    ts_ms: Option<Num>,
}

/// Decodes and validates one record of `topic`. `Err` is bad input, never a failure of the job.
pub fn decode<'a>(
    topic: InputTopic,
    value: &'a [u8],
    fx: &FxTable,
) -> Result<Event<'a>, Rejection> {
    decode_with::<JsonReader>(topic, value, fx)
}

/// A field's name with its quotes (`"payment_id"`), as [`peek_str`] looks for
/// it: its searcher made once, not at each look.
pub struct FieldName(memchr::memmem::Finder<'static>);

impl FieldName {
    pub fn new(quoted: &'static str) -> Self {
        FieldName(memchr::memmem::Finder::new(quoted))
    }
}

/// The bytes of the string field `name` in a record's value, found by a
/// scan, not read as JSON: for a hint of the id the record will be looked up
/// by, a record or two before it is decoded (`core::Engine::prefetch`). Wrong
/// or absent on odd input (the name inside another string, an escape in the
/// id), which costs the hint, never a result: [`decode`] alone decides what a
/// record holds.
pub fn peek_str<'a>(value: &'a [u8], name: &FieldName) -> Option<&'a [u8]> {
    let at = name.0.find(value)? + name.0.needle().len();
    let rest = value[at..].trim_ascii_start().strip_prefix(b":")?;
    let rest = rest.trim_ascii_start().strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then(|| &rest[..end])
}

/// Reads the raw fields of each topic from a record's text.
trait Fields {
    fn order(text: &str) -> Result<RawOrder<'_>, Rejection>;
    fn payment(text: &str) -> Result<RawPayment<'_>, Rejection>;
    fn delivery(text: &str) -> Result<RawDelivery<'_>, Rejection>;
}

/// The job's own JSON reader ([`json`]).
struct JsonReader;

impl Fields for JsonReader {
    fn order(text: &str) -> Result<RawOrder<'_>, Rejection> {
        read_order(text)
    }
    fn payment(text: &str) -> Result<RawPayment<'_>, Rejection> {
        read_payment(text)
    }
    fn delivery(text: &str) -> Result<RawDelivery<'_>, Rejection> {
        read_delivery(text)
    }
}

/// [`decode`] with the fields read by `F`.
fn decode_with<'a, F: Fields>(
    topic: InputTopic,
    value: &'a [u8],
    fx: &FxTable,
) -> Result<Event<'a>, Rejection> {
    let text = precheck(value)?;
    match topic {
        InputTopic::Orders => order(F::order(text)?, fx),
        InputTopic::Payments => payment(F::payment(text)?, fx),
        InputTopic::Deliveries => delivery(F::delivery(text)?),
    }
}

/// The checks before any JSON is read: the size, an object, and UTF-8 (once
/// for the whole value).
fn precheck(value: &[u8]) -> Result<&str, Rejection> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(reject(
            DeadReason::TooLarge,
            format!(
                "value is {} bytes, over the {} byte limit",
                value.len(),
                MAX_VALUE_BYTES
            ),
        ));
    }
    match value.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => {
            return Err(reject(
                DeadReason::MalformedJson,
                "value is not a JSON object",
            ))
        }
        None => return Err(reject(DeadReason::MalformedJson, "value is empty")),
    }
    if ascii(value) {
        // SAFETY: ASCII is UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(value) });
    }
    std::str::from_utf8(value)
        .map_err(|e| reject(DeadReason::MalformedJson, format!("not UTF-8: {e}")))
}

/// Whether every byte is ASCII: 32 bytes a step, one test at the end, which
/// the compiler turns into vector instructions. Records are ASCII nearly
/// always, and this check costs a fraction of std's UTF-8 one (which tests
/// its words one at a time; docs/performance.md).
fn ascii(b: &[u8]) -> bool {
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut chunks = b.chunks_exact(32);
    let mut acc = 0u64;
    for c in &mut chunks {
        for w in c.chunks_exact(8) {
            acc |= u64::from_le_bytes(w.try_into().expect("8 bytes"));
        }
    }
    acc & HIGHS == 0 && chunks.remainder().is_ascii()
}

/// A JSON fault as a rejection: a known field of the wrong type is
/// `invalid_field`, anything else `malformed_json`.
fn fault(f: json::Fault) -> Rejection {
    let reason = match f.data {
        true => DeadReason::InvalidField,
        false => DeadReason::MalformedJson,
    };
    reject(reason, f.detail)
}

fn str_of(v: Value<'_>) -> Option<Str<'_>> {
    match v {
        Value::Str(s) => s,
        Value::Num(_) => unreachable!("a string field"),
    }
}

fn num_of(v: Value<'_>) -> Option<Num> {
    match v {
        Value::Num(n) => n,
        Value::Str(_) => unreachable!("a number field"),
    }
}

const ORDER_FIELDS: &[Field] = &[
    field("order_id", Kind::Str),
    field("user_id", Kind::Str),
    field("brand_id", Kind::Str),
    field("channel_id", Kind::Str),
    field("country", Kind::Str),
    field("device", Kind::Str),
    field("currency", Kind::Str),
    field("amount_minor", Kind::Num),
    field("ts_ms", Kind::Num),
];

fn read_order(text: &str) -> Result<RawOrder<'_>, Rejection> {
    let mut r = RawOrder::default();
    json::read_object(text, ORDER_FIELDS, |k, v| match k {
        0 => r.order_id = str_of(v),
        1 => r.user_id = str_of(v),
        2 => r.brand_id = str_of(v),
        // Present as null is not absent: `Some(None)`.
        3 => r.channel_id = Some(str_of(v)),
        4 => r.country = str_of(v),
        5 => r.device = str_of(v),
        6 => r.currency = str_of(v),
        7 => r.amount_minor = num_of(v),
        _ => r.ts_ms = num_of(v),
    })
    .map_err(|f| fault(*f))?;
    Ok(r)
}

const PAYMENT_FIELDS: &[Field] = &[
    field("payment_id", Kind::Str),
    field("order_id", Kind::Str),
    field("kind", Kind::Str),
    field("currency", Kind::Str),
    field("amount_minor", Kind::Num),
    field("ts_ms", Kind::Num),
];

fn read_payment(text: &str) -> Result<RawPayment<'_>, Rejection> {
    let mut r = RawPayment::default();
    json::read_object(text, PAYMENT_FIELDS, |k, v| match k {
        0 => r.payment_id = str_of(v),
        1 => r.order_id = str_of(v),
        2 => r.kind = str_of(v),
        3 => r.currency = str_of(v),
        4 => r.amount_minor = num_of(v),
        _ => r.ts_ms = num_of(v),
    })
    .map_err(|f| fault(*f))?;
    Ok(r)
}

const DELIVERY_FIELDS: &[Field] = &[
    field("delivery_id", Kind::Str),
    field("order_id", Kind::Str),
    field("status", Kind::Str),
    field("ts_ms", Kind::Num),
];

fn read_delivery(text: &str) -> Result<RawDelivery<'_>, Rejection> {
    let mut r = RawDelivery::default();
    json::read_object(text, DELIVERY_FIELDS, |k, v| match k {
        0 => r.delivery_id = str_of(v),
        1 => r.order_id = str_of(v),
        2 => r.status = str_of(v),
        _ => r.ts_ms = num_of(v),
    })
    .map_err(|f| fault(*f))?;
    Ok(r)
}

fn cow(v: Option<Str<'_>>) -> Option<Cow<'_, str>> {
    v.map(|s| s.0)
}

fn required<T>(v: Option<T>, name: &str) -> Result<T, Rejection> {
    v.ok_or_else(|| {
        reject(
            DeadReason::MissingField,
            format!("required field `{name}` is missing or null"),
        )
    })
}

fn id<'a>(v: Option<Cow<'a, str>>, name: &str) -> Result<Cow<'a, str>, Rejection> {
    let v = required(v, name)?;
    if v.is_empty() || v.len() > MAX_ID_BYTES {
        return Err(reject(
            DeadReason::InvalidField,
            format!(
                "`{name}` must be 1 to {MAX_ID_BYTES} bytes, got {}",
                v.len()
            ),
        ));
    }
    Ok(v)
}

fn ts(v: Option<Num>) -> Result<i64, Rejection> {
    match required(v, "ts_ms")? {
        Num::Int(t) if (0..=MAX_TS_MS).contains(&t) => Ok(t),
        Num::Int(t) => Err(implausible_ts(t)),
        Num::Huge(t) => Err(implausible_ts(t)),
        Num::Float(t) => Err(reject(
            DeadReason::InvalidField,
            format!("`ts_ms` must be an integer, got {t}"),
        )),
    }
}

fn implausible_ts(t: impl std::fmt::Display) -> Rejection {
    reject(
        DeadReason::InvalidField,
        format!("`ts_ms` {t} is not a plausible epoch millisecond"),
    )
}

fn amount(v: Option<Num>) -> Result<i64, Rejection> {
    let out_of_range = |shown: String| {
        reject(
            DeadReason::AmountOutOfRange,
            format!("`amount_minor` {shown} is outside 1..={MAX_AMOUNT_MINOR}"),
        )
    };
    match required(v, "amount_minor")? {
        Num::Int(a) if (1..=MAX_AMOUNT_MINOR).contains(&a) => Ok(a),
        Num::Int(a) => Err(out_of_range(a.to_string())),
        Num::Huge(a) => Err(out_of_range(a.to_string())),
        // Integers too large for 64 bits arrive as floats; they are out of range, not fractional.
        Num::Float(a) if a.fract() == 0.0 && a.abs() > MAX_AMOUNT_MINOR as f64 => {
            Err(out_of_range(a.to_string()))
        }
        Num::Float(a) => Err(reject(
            DeadReason::InvalidField,
            format!("`amount_minor` must be an integer count of minor units, got {a}"),
        )),
    }
}

/// The currency's FX rate, or `unknown_currency`.
fn currency_rate(c: &str, fx: &FxTable) -> Result<crate::core::fx::Rate, Rejection> {
    fx.rate(c).ok_or_else(|| {
        reject(
            DeadReason::UnknownCurrency,
            format!("currency `{}` is not in the FX table", truncate(c)),
        )
    })
}

fn truncate(s: &str) -> &str {
    crate::core::output::cut_str(s, 16)
}

/// Each topic's event built in place, not mapped into an `Event` after: that
/// moved it once more.
fn order<'a>(r: RawOrder<'a>, fx: &FxTable) -> Result<Event<'a>, Rejection> {
    // Presence first, so the reason names the first missing field.
    let order_id = id(cow(r.order_id), "order_id")?;
    let user_id = id(cow(r.user_id), "user_id")?;
    let brand_id = id(cow(r.brand_id), "brand_id")?;
    let channel_id = match required(r.channel_id.map(|c| c.map(|s| s.0)), "channel_id")? {
        None => None,
        Some(c) => Some(id(Some(c), "channel_id")?),
    };
    let country = required(cow(r.country), "country")?;
    let device = required(cow(r.device), "device")?;
    let currency = required(cow(r.currency), "currency")?;
    let amount_minor = amount(r.amount_minor)?;
    let ts_ms = ts(r.ts_ms)?;
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(reject(
            DeadReason::InvalidField,
            format!(
                "`country` must be an ISO 3166-1 alpha-2 code, got `{}`",
                truncate(&country)
            ),
        ));
    }
    let device = match &*device {
        "mobile" => Device::Mobile,
        "pc" => Device::Pc,
        "other" => Device::Other,
        d => {
            return Err(reject(
                DeadReason::InvalidField,
                format!(
                    "`device` must be mobile, pc or other, got `{}`",
                    truncate(d)
                ),
            ))
        }
    };
    currency_rate(&currency, fx)?;
    Ok(Event::Order(Order {
        order_id,
        user_id,
        brand_id,
        channel_id,
        country,
        device,
        currency,
        amount_minor,
        ts_ms,
    }))
}

fn payment<'a>(r: RawPayment<'a>, fx: &FxTable) -> Result<Event<'a>, Rejection> {
    let payment_id = id(cow(r.payment_id), "payment_id")?;
    let order_id = id(cow(r.order_id), "order_id")?;
    let kind = required(cow(r.kind), "kind")?;
    let currency = required(cow(r.currency), "currency")?;
    let amount_minor = amount(r.amount_minor)?;
    let ts_ms = ts(r.ts_ms)?;
    let kind = match &*kind {
        "paid" => PaymentKind::Paid,
        "refund" => PaymentKind::Refund,
        k => {
            return Err(reject(
                DeadReason::InvalidField,
                format!("`kind` must be paid or refund, got `{}`", truncate(k)),
            ))
        }
    };
    let rate = currency_rate(&currency, fx)?;
    let amount_fen = crate::core::fx::convert(amount_minor, rate);
    Ok(Event::Payment(Payment {
        payment_id,
        order_id,
        kind,
        amount_fen,
        ts_ms,
    }))
}

fn delivery(r: RawDelivery<'_>) -> Result<Event<'_>, Rejection> {
    let delivery_id = id(cow(r.delivery_id), "delivery_id")?;
    let order_id = id(cow(r.order_id), "order_id")?;
    let status = required(cow(r.status), "status")?;
    let ts_ms = ts(r.ts_ms)?;
    let status = match &*status {
        "shipped" => DeliveryStatus::Shipped,
        "delivered" => DeliveryStatus::Delivered,
        s => {
            return Err(reject(
                DeadReason::InvalidField,
                format!(
                    "`status` must be shipped or delivered, got `{}`",
                    truncate(s)
                ),
            ))
        }
    };
    Ok(Event::Delivery(Delivery {
        delivery_id,
        order_id,
        status,
        ts_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fx::default_rates;

    fn fx() -> FxTable {
        FxTable::new(&default_rates())
    }

    /// The hint's scan finds a plain string field wherever it sits, and
    /// nothing where the value is not such a string.
    #[test]
    fn peek_finds_a_plain_string_field_and_nothing_else() {
        let name = FieldName::new("\"payment_id\"");
        let peek = |v: &str| peek_str(v.as_bytes(), &name).map(<[u8]>::to_vec);
        let some = |s: &str| Some(s.as_bytes().to_vec());
        assert_eq!(
            peek(r#"{"payment_id":"p-1","order_id":"o-1"}"#),
            some("p-1")
        );
        assert_eq!(
            peek(r#"{"order_id":"o-1", "payment_id" :  "p-2" }"#),
            some("p-2")
        );
        assert_eq!(peek(r#"{"payment_id":""}"#), some(""));
        // Escaped, the id's bytes are not the id: no hint.
        assert_eq!(peek(r#"{"payment_id":"p\u002d3"}"#), None);
        assert_eq!(peek(r#"{"payment_id":null}"#), None);
        assert_eq!(peek(r#"{"payment_id":7}"#), None);
        assert_eq!(peek(r#"{"order_id":"o-1"}"#), None);
        assert_eq!(peek(r#"{"payment_id":"p-4"#), None, "unterminated");
    }

    /// The word-at-a-time ASCII check finds a high byte wherever it is.
    #[test]
    fn ascii_check_finds_a_high_byte_anywhere() {
        for len in 0..100 {
            let mut v = vec![b'a'; len];
            assert!(ascii(&v), "{len} ASCII bytes");
            for at in 0..len {
                v[at] = 0x80;
                assert!(!ascii(&v), "a high byte at {at} of {len}");
                v[at] = b'a';
            }
        }
    }

    fn reason(topic: InputTopic, v: &str) -> DeadReason {
        decode(topic, v.as_bytes(), &fx()).unwrap_err().reason
    }

    const ORDER: &str = r#"{"order_id":"o1","user_id":"u1","brand_id":"b1","channel_id":null,"country":"CN","device":"mobile","currency":"CNY","amount_minor":1999,"ts_ms":1000,"extra":[1,2]}"#;

    #[test]
    fn valid_order_with_null_channel_and_unknown_field() {
        let e = decode(InputTopic::Orders, ORDER.as_bytes(), &fx()).unwrap();
        match e {
            Event::Order(o) => {
                assert_eq!(o.order_id, "o1");
                assert_eq!(o.channel_id, None);
                assert_eq!(o.amount_minor, 1999);
                assert_eq!(o.device, Device::Mobile);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn payment_is_converted_to_fen() {
        let v = r#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"JPY","amount_minor":5,"ts_ms":7}"#;
        match decode(InputTopic::Payments, v.as_bytes(), &fx()).unwrap() {
            Event::Payment(p) => {
                assert_eq!((p.amount_fen, p.kind, p.ts_ms), (24, PaymentKind::Paid, 7))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn escaped_strings_decode() {
        let v = r#"{"delivery_id":"d\u0031","order_id":"o\"1","status":"shipped","ts_ms":7}"#;
        match decode(InputTopic::Deliveries, v.as_bytes(), &fx()).unwrap() {
            Event::Delivery(d) => assert_eq!((&*d.delivery_id, &*d.order_id), ("d1", "o\"1")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_reason_is_detected() {
        use DeadReason::*;
        let p = |s: &str| reason(InputTopic::Payments, s);
        assert_eq!(p("{not json"), MalformedJson);
        assert_eq!(p(""), MalformedJson);
        assert_eq!(p("[1,2]"), MalformedJson);
        assert_eq!(
            decode(InputTopic::Payments, b"{\"payment_id\":\"p\xff\"}", &fx())
                .unwrap_err()
                .reason,
            MalformedJson
        );
        assert_eq!(
            p(r#"{"payment_id":"p1","kind":"paid","currency":"CNY","amount_minor":1,"ts_ms":1}"#),
            MissingField
        );
        assert_eq!(
            p(
                r#"{"payment_id":"p1","order_id":null,"kind":"paid","currency":"CNY","amount_minor":1,"ts_ms":1}"#
            ),
            MissingField
        );
        assert_eq!(
            p(
                r#"{"payment_id":"p1","order_id":"o1","kind":"gift","currency":"CNY","amount_minor":1,"ts_ms":1}"#
            ),
            InvalidField
        );
        assert_eq!(
            p(
                r#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":"1","ts_ms":1}"#
            ),
            InvalidField
        );
        assert_eq!(
            p(
                r#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":1.5,"ts_ms":1}"#
            ),
            InvalidField
        );
        assert_eq!(
            p(
                r#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":1,"ts_ms":1.5}"#
            ),
            InvalidField
        );
        assert_eq!(
            p(
                r#"{"payment_id":"","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":1,"ts_ms":1}"#
            ),
            InvalidField
        );
        let long = "x".repeat(65);
        assert_eq!(
            p(&format!(
                r#"{{"payment_id":"{long}","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":1,"ts_ms":1}}"#
            )),
            InvalidField
        );
        assert_eq!(
            p(
                r#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"XYZ","amount_minor":1,"ts_ms":1}"#
            ),
            UnknownCurrency
        );
        assert_eq!(
            p(
                r#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":0,"ts_ms":1}"#
            ),
            AmountOutOfRange
        );
        assert_eq!(
            p(
                r#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":-5,"ts_ms":1}"#
            ),
            AmountOutOfRange
        );
        assert_eq!(
            p(
                r#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":1000000000001,"ts_ms":1}"#
            ),
            AmountOutOfRange
        );
        assert_eq!(
            p(
                r#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":99999999999999999999999,"ts_ms":1}"#
            ),
            AmountOutOfRange
        );
        let big = format!(
            r#"{{"payment_id":"p1","pad":"{}"}}"#,
            "x".repeat(MAX_VALUE_BYTES)
        );
        assert_eq!(p(&big), TooLarge);
        let o = |s: &str| reason(InputTopic::Orders, s);
        assert_eq!(o(&ORDER.replace("\"CN\"", "\"China\"")), InvalidField);
        assert_eq!(o(&ORDER.replace("\"mobile\"", "\"tablet\"")), InvalidField);
        assert_eq!(o(&ORDER.replace("\"CNY\"", "\"BTC\"")), UnknownCurrency);
        assert_eq!(o(&ORDER.replace("\"channel_id\":null,", "")), MissingField);
        assert_eq!(
            o(&ORDER.replace("\"channel_id\":null", "\"channel_id\":\"\"")),
            InvalidField
        );
        assert_eq!(
            o(&ORDER.replace("\"ts_ms\":1000", "\"ts_ms\":-1")),
            InvalidField
        );
        assert_eq!(
            reason(
                InputTopic::Deliveries,
                r#"{"delivery_id":"d1","order_id":"o1","status":"lost","ts_ms":1}"#
            ),
            InvalidField
        );
    }
}
