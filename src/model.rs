//! Input events after validation: the typed form the core works on.
//! Strings borrow from the input record unless JSON escapes forced a copy.
//!
//! Money is `i64` minor units (input) or fen (converted); time is `i64`
//! milliseconds since the Unix epoch. No floats anywhere that sums.

use std::borrow::Cow;

/// Which input topic an event came from; also the label of per-topic metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputTopic {
    Orders,
    Payments,
    Deliveries,
}

impl InputTopic {
    pub const ALL: [InputTopic; 3] = [
        InputTopic::Orders,
        InputTopic::Payments,
        InputTopic::Deliveries,
    ];

    /// The contract's default topic name, used as a stable label.
    pub fn label(self) -> &'static str {
        match self {
            InputTopic::Orders => "orders",
            InputTopic::Payments => "payments",
            InputTopic::Deliveries => "deliveries",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Where a record was read from: dead letters and watermarks need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    pub topic: InputTopic,
    pub partition: i32,
    pub offset: i64,
}

/// Device the order was placed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Mobile,
    Pc,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PaymentKind {
    Paid,
    Refund,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeliveryStatus {
    Shipped,
    Delivered,
}

/// A validated order. Strings borrow from the input record where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order<'a> {
    pub order_id: Cow<'a, str>,
    pub user_id: Cow<'a, str>,
    pub brand_id: Cow<'a, str>,
    pub channel_id: Option<Cow<'a, str>>,
    pub country: Cow<'a, str>,
    pub device: Device,
    pub currency: Cow<'a, str>,
    pub amount_minor: i64,
    pub ts_ms: i64,
}

/// A validated payment or refund, already converted to fen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment<'a> {
    pub payment_id: Cow<'a, str>,
    pub order_id: Cow<'a, str>,
    pub kind: PaymentKind,
    pub amount_fen: i64,
    pub ts_ms: i64,
}

/// A validated delivery event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<'a> {
    pub delivery_id: Cow<'a, str>,
    pub order_id: Cow<'a, str>,
    pub status: DeliveryStatus,
    pub ts_ms: i64,
}

/// One validated input event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    Order(Order<'a>),
    Payment(Payment<'a>),
    Delivery(Delivery<'a>),
}

impl Event<'_> {
    /// The order the event belongs to: the record's key by contract.
    pub fn order_id(&self) -> &str {
        match self {
            Event::Order(o) => &o.order_id,
            Event::Payment(p) => &p.order_id,
            Event::Delivery(d) => &d.order_id,
        }
    }

    pub fn ts_ms(&self) -> i64 {
        match self {
            Event::Order(o) => o.ts_ms,
            Event::Payment(p) => p.ts_ms,
            Event::Delivery(d) => d.ts_ms,
        }
    }
}

/// Why a record went to `dead-letters`; the strings are the contract's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadReason {
    MalformedJson,
    MissingField,
    InvalidField,
    UnknownCurrency,
    AmountOutOfRange,
    TooLarge,
    Late,
}

impl DeadReason {
    pub const ALL: [DeadReason; 7] = [
        DeadReason::MalformedJson,
        DeadReason::MissingField,
        DeadReason::InvalidField,
        DeadReason::UnknownCurrency,
        DeadReason::AmountOutOfRange,
        DeadReason::TooLarge,
        DeadReason::Late,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::MalformedJson => "malformed_json",
            DeadReason::MissingField => "missing_field",
            DeadReason::InvalidField => "invalid_field",
            DeadReason::UnknownCurrency => "unknown_currency",
            DeadReason::AmountOutOfRange => "amount_out_of_range",
            DeadReason::TooLarge => "too_large",
            DeadReason::Late => "late",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}
