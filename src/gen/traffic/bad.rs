//! Bad records: a valid record turned into one the job rejects for one
//! dead-letter reason, cycling over every reason but `late`.

use super::*;

/// Every dead-letter reason but `late` (the last of `DeadReason::ALL`): lateness is not in a record.
pub(super) const BAD_REASONS: &[DeadReason] = DeadReason::ALL.split_last().expect("reasons").1;

impl Traffic {
    /// A bad record with fresh ids, released at `at`; the reasons take turns.
    pub(super) fn make_bad(&mut self, at: i64) -> Side {
        let reason = BAD_REASONS[self.bad_cycle % BAD_REASONS.len()];
        self.bad_cycle += 1;
        let seq = self.take_seq();
        let o = self.sample_order(seq, at);
        let topic = match reason {
            DeadReason::UnknownCurrency | DeadReason::AmountOutOfRange => {
                if self.rng.gen() {
                    InputTopic::Orders
                } else {
                    InputTopic::Payments
                }
            }
            _ => InputTopic::ALL[self.rng.gen_range(0..InputTopic::ALL.len())],
        };
        let mut rec = match topic {
            InputTopic::Orders => self.render_order(&o),
            InputTopic::Payments => self.render_pending(&Pending {
                release: at,
                tb: (seq << 4) | ST_PAID,
                amount: o.amount,
                jitter: o.jitter,
                currency: o.currency,
            }),
            InputTopic::Deliveries => self.render_pending(&Pending {
                release: at,
                tb: (seq << 4) | ST_SHIPPED,
                amount: 0,
                jitter: o.jitter,
                currency: 0,
            }),
        };
        rec.value = self.corrupt(topic, reason, std::mem::take(&mut rec.value));
        rec.kind = RecordKind::Bad(reason);
        Side {
            release: at,
            tb: (seq << 4) | ST_BAD,
            rec,
        }
    }

    /// Turns a valid record of `topic` into one the job rejects with `reason`.
    fn corrupt(&mut self, topic: InputTopic, reason: DeadReason, mut value: Vec<u8>) -> Vec<u8> {
        if reason == DeadReason::MalformedJson {
            // Any proper prefix of a JSON object is incomplete.
            let keep = value.len() * self.rng.gen_range(20..=95) / 100;
            value.truncate(keep.clamp(1, value.len() - 1));
            return value;
        }
        let mut obj: Map<String, Value> =
            serde_json::from_slice(&value).expect("the generator writes valid JSON");
        match reason {
            DeadReason::MissingField => {
                let i = self.rng.gen_range(0..obj.len());
                let name = obj.keys().nth(i).cloned().expect("index in range");
                obj.remove(&name);
            }
            DeadReason::InvalidField => {
                let pick = self.rng.gen_range(0..4);
                let (name, bad) = match (topic, pick) {
                    (InputTopic::Orders, 0) => ("device", Value::from("tablet")),
                    (InputTopic::Orders, 1) => ("country", Value::from("China")),
                    (InputTopic::Orders, 2) => ("channel_id", Value::from("")),
                    (InputTopic::Orders, _) => ("user_id", Value::from("u".repeat(65))),
                    (InputTopic::Payments, 0) => ("kind", Value::from("gift")),
                    (InputTopic::Payments, 1) => ("amount_minor", Value::from(12.5)),
                    (InputTopic::Payments, 2) => ("payment_id", Value::from("")),
                    (InputTopic::Payments, _) => ("ts_ms", Value::from(-1)),
                    (InputTopic::Deliveries, 0) => ("status", Value::from("lost")),
                    (InputTopic::Deliveries, 1) => ("ts_ms", Value::from("yesterday")),
                    (InputTopic::Deliveries, 2) => ("delivery_id", Value::from("d".repeat(65))),
                    (InputTopic::Deliveries, _) => ("ts_ms", Value::from(1.5)),
                };
                obj.insert(name.to_string(), bad);
            }
            DeadReason::UnknownCurrency => {
                obj.insert("currency".to_string(), Value::from("BTC"));
            }
            DeadReason::AmountOutOfRange => {
                let amount = match self.rng.gen_range(0..3) {
                    0 => 0,
                    1 => MAX_AMOUNT_MINOR * 10,
                    _ => -self.rng.gen_range(1..=MAX_AMOUNT_MINOR),
                };
                obj.insert("amount_minor".to_string(), Value::from(amount));
            }
            DeadReason::TooLarge => {
                obj.insert(
                    "padding".to_string(),
                    Value::from("x".repeat(MAX_VALUE_BYTES + 1_024)),
                );
            }
            DeadReason::MalformedJson | DeadReason::Late => {
                unreachable!("not produced this way")
            }
        }
        serde_json::to_vec(&obj).expect("a JSON map serializes")
    }
}
