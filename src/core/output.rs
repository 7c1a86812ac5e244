//! What the core produces: upsert records, milestones, dead letters, and
//! observations for metrics. Each record knows its Kafka key and JSON value.

use serde::{Deserialize, Serialize};

use super::engine::Totals;
use crate::model::{DeadReason, Source};

/// A dimension of the aggregates; the strings are the contract's `dim` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dim {
    Total,
    Brand,
    Channel,
    Country,
}

impl Dim {
    pub const ALL: [Dim; 4] = [Dim::Total, Dim::Brand, Dim::Channel, Dim::Country];

    pub fn as_str(self) -> &'static str {
        match self {
            Dim::Total => "total",
            Dim::Brand => "brand",
            Dim::Channel => "channel",
            Dim::Country => "country",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// `gmv-windows` value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowRecord {
    pub dim: Dim,
    pub key: String,
    pub window_start_ms: i64,
    pub window_size_ms: i64,
    pub gmv_fen: i128,
    pub refund_fen: i128,
    pub paid_orders: u64,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub revision: u64,
}

/// `gmv-totals` value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TotalRecord {
    pub dim: Dim,
    pub key: String,
    #[serde(flatten)]
    pub totals: Totals,
    pub watermark_ms: i64,
    pub revision: u64,
}

/// `milestones` value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MilestoneRecord {
    pub dim: Dim,
    pub key: String,
    pub threshold_fen: i128,
    pub crossed_at_ms: i64,
    pub gmv_fen: i128,
}

/// A rejected input record, with what is needed to find and replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub source: Source,
    pub topic_name: String,
    pub reason: DeadReason,
    pub detail: String,
    /// The input key, cut to [`DEAD_LETTER_KEY_BYTES`].
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Largest payload copied into a dead letter (contract: cut to 4 KiB).
pub const DEAD_LETTER_PAYLOAD_BYTES: usize = 4 * 1024;
/// Largest key of a dead letter (contract: the input key cut to 256 bytes).
pub const DEAD_LETTER_KEY_BYTES: usize = 256;
/// Largest detail: parser messages can quote a whole field of the input.
pub const DEAD_LETTER_DETAIL_BYTES: usize = 512;
/// Bound on a dead letter's size, key and value, whatever the input: each
/// byte of payload or detail escapes to at most 6 (`\u001f`), plus the key,
/// the topic name (at most 249 bytes) and the field names. Every record the
/// job writes must fit `kafka.max_record_bytes`, which may not be set lower.
pub const DEAD_LETTER_MAX_BYTES: usize =
    DEAD_LETTER_KEY_BYTES + 6 * (DEAD_LETTER_PAYLOAD_BYTES + DEAD_LETTER_DETAIL_BYTES + 249) + 256;

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn cut_str(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Serialize)]
struct DeadLetterJson<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    reason: &'static str,
    detail: &'a str,
    payload: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    payload_base64: bool,
}

/// Everything the engine hands to the outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Window(WindowRecord),
    Total(TotalRecord),
    Milestone(MilestoneRecord),
    DeadLetter(DeadLetter),
    /// An order was delivered this long (event time) after it was paid; metrics only.
    PayToDelivery {
        millis: i64,
    },
}

/// The output topic a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputTopic {
    GmvWindows,
    GmvTotals,
    Milestones,
    DeadLetters,
}

impl OutputTopic {
    pub const ALL: [OutputTopic; 4] = [
        OutputTopic::GmvWindows,
        OutputTopic::GmvTotals,
        OutputTopic::Milestones,
        OutputTopic::DeadLetters,
    ];

    /// The contract's default name, also the metric label.
    pub fn label(self) -> &'static str {
        match self {
            OutputTopic::GmvWindows => "gmv-windows",
            OutputTopic::GmvTotals => "gmv-totals",
            OutputTopic::Milestones => "milestones",
            OutputTopic::DeadLetters => "dead-letters",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl Output {
    /// The topic, key and JSON value to publish; `None` for metrics-only outputs.
    pub fn to_record(&self) -> Option<(OutputTopic, Option<Vec<u8>>, Vec<u8>)> {
        Some(match self {
            Output::Window(w) => (
                OutputTopic::GmvWindows,
                Some(
                    format!(
                        "{}|{}|{}|{}",
                        w.dim.as_str(),
                        w.key,
                        w.window_size_ms,
                        w.window_start_ms
                    )
                    .into_bytes(),
                ),
                json(w),
            ),
            Output::Total(t) => (
                OutputTopic::GmvTotals,
                Some(format!("{}|{}", t.dim.as_str(), t.key).into_bytes()),
                json(t),
            ),
            Output::Milestone(m) => (
                OutputTopic::Milestones,
                Some(format!("{}|{}|{}", m.dim.as_str(), m.key, m.threshold_fen).into_bytes()),
                json(m),
            ),
            Output::DeadLetter(d) => (OutputTopic::DeadLetters, d.key.clone(), dead_letter_json(d)),
            Output::PayToDelivery { .. } => return None,
        })
    }
}

fn dead_letter_json(d: &DeadLetter) -> Vec<u8> {
    let cut = &d.payload[..d.payload.len().min(DEAD_LETTER_PAYLOAD_BYTES)];
    let (payload, payload_base64) = match std::str::from_utf8(cut) {
        Ok(s) => (s.to_string(), false),
        // Cutting may split the last character of valid UTF-8: keep the whole characters.
        Err(e) if e.error_len().is_none() && std::str::from_utf8(&d.payload).is_ok() => (
            String::from_utf8_lossy(&cut[..e.valid_up_to()]).into_owned(),
            false,
        ),
        Err(_) => {
            use base64::Engine as _;
            (base64::engine::general_purpose::STANDARD.encode(cut), true)
        }
    };
    let v = DeadLetterJson {
        topic: &d.topic_name,
        partition: d.source.partition,
        offset: d.source.offset,
        reason: d.reason.as_str(),
        detail: cut_str(&d.detail, DEAD_LETTER_DETAIL_BYTES),
        payload,
        payload_base64,
    };
    serde_json::to_vec(&v).expect("dead letter serializes")
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("output records serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InputTopic;

    fn dl(payload: &[u8]) -> serde_json::Value {
        let d = DeadLetter {
            source: Source {
                topic: InputTopic::Payments,
                partition: 2,
                offset: 9,
            },
            topic_name: "payments".into(),
            reason: DeadReason::MalformedJson,
            detail: "x".into(),
            key: None,
            payload: payload.to_vec(),
        };
        serde_json::from_slice(&dead_letter_json(&d)).unwrap()
    }

    #[test]
    fn dead_letter_payload_is_text_cut_to_4k_or_base64() {
        let v = dl(b"{oops");
        assert_eq!(v["payload"], "{oops");
        assert!(v.get("payload_base64").is_none());
        assert_eq!(v["partition"], 2);
        assert_eq!(v["offset"], 9);
        let long = "é".repeat(3000); // 6000 bytes, 2-byte chars
        let v = dl(long.as_bytes());
        let p = v["payload"].as_str().unwrap();
        assert!(p.len() <= DEAD_LETTER_PAYLOAD_BYTES && p.len() >= DEAD_LETTER_PAYLOAD_BYTES - 1);
        let v = dl(&[0xff, 0xfe, b'a']);
        assert_eq!(v["payload_base64"], true);
        assert_eq!(v["payload"], "//5h");
    }

    #[test]
    fn the_largest_dead_letter_is_bounded_whatever_the_input() {
        // Every byte of payload and detail a control character (escaped to 6),
        // a key and a value far over every limit.
        let nasty = vec![0x01u8; 1 << 20];
        let d = DeadLetter {
            source: Source {
                topic: InputTopic::Orders,
                partition: i32::MAX,
                offset: i64::MAX,
            },
            topic_name: "t".repeat(249),
            reason: DeadReason::InvalidField,
            detail: String::from_utf8(nasty.clone()).unwrap(),
            key: Some(nasty[..DEAD_LETTER_KEY_BYTES].to_vec()),
            payload: nasty,
        };
        let (_, key, value) = Output::DeadLetter(d).to_record().unwrap();
        let size = key.unwrap().len() + value.len();
        assert!(
            size <= DEAD_LETTER_MAX_BYTES,
            "{size} > {DEAD_LETTER_MAX_BYTES}"
        );
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(
            v["detail"].as_str().unwrap().len(),
            DEAD_LETTER_DETAIL_BYTES
        );
        assert_eq!(
            v["payload"].as_str().unwrap().len(),
            DEAD_LETTER_PAYLOAD_BYTES
        );
    }

    #[test]
    fn upsert_keys_follow_the_contract() {
        let w = Output::Window(WindowRecord {
            dim: Dim::Brand,
            key: "b1".into(),
            window_start_ms: 60_000,
            window_size_ms: 60_000,
            gmv_fen: 5,
            refund_fen: 0,
            paid_orders: 1,
            is_final: true,
            revision: 2,
        });
        let (topic, key, value) = w.to_record().unwrap();
        assert_eq!(topic, OutputTopic::GmvWindows);
        assert_eq!(key.unwrap(), b"brand|b1|60000|60000");
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(v["final"], true);
        let t = Output::Total(TotalRecord {
            dim: Dim::Channel,
            key: "live-1".into(),
            totals: Totals {
                gmv_fen: 7,
                placed_orders: 2,
                ..Totals::default()
            },
            watermark_ms: 9,
            revision: 3,
        });
        let (topic, key, value) = t.to_record().unwrap();
        assert_eq!(
            (topic, key.unwrap()),
            (OutputTopic::GmvTotals, b"channel|live-1".to_vec())
        );
        let flat: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(
            (
                flat["gmv_fen"].as_i64(),
                flat["placed_orders"].as_i64(),
                flat["revision"].as_i64()
            ),
            (Some(7), Some(2), Some(3))
        );
        assert_eq!(v["dim"], "brand");
        assert_eq!(v["gmv_fen"], 5);
    }
}
