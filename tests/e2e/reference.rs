//! The independent reference computation of the end-to-end tests
//! (`tests/e2e.rs`): the totals, windows and milestones the job's outputs
//! must come to, worked out here from the generated input, independently of
//! the engine.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::harness::{BRAND_THRESHOLD_FEN, TOTAL_EVERY_FEN};

// ---------- the independent reference computation ----------

fn fx(currency: &str) -> (u32, i128) {
    match currency {
        "CNY" => (2, 1_000_000),
        "USD" => (2, 7_100_000),
        "EUR" => (2, 7_750_000),
        "HKD" => (2, 910_000),
        "JPY" => (0, 47_000),
        "KRW" => (0, 5_200),
        "GBP" => (2, 9_050_000),
        "AUD" => (2, 4_650_000),
        other => panic!("generator wrote an unexpected currency {other}"),
    }
}

fn to_fen(currency: &str, amount: i64) -> i128 {
    let (exp, rate) = fx(currency);
    let n = amount as i128 * rate * 10i128.pow(2 - exp);
    let (q, r) = (n / 1_000_000, n % 1_000_000);
    if 2 * r > 1_000_000 || (2 * r == 1_000_000 && q % 2 == 1) {
        q + 1
    } else {
        q
    }
}

#[derive(Default, Debug, PartialEq)]
pub(crate) struct Expected {
    /// key → (gmv, refund, paid)
    pub(crate) windows: BTreeMap<String, (i128, i128, i64)>,
    /// key → (gmv, refund, paid, placed, shipped, delivered)
    pub(crate) totals: BTreeMap<String, [i128; 6]>,
    /// key → (crossed_at_ms, gmv_fen)
    pub(crate) milestones: BTreeMap<String, (i64, i128)>,
}

pub(crate) fn reference(values: &[(String, Value)]) -> Expected {
    let mut orders: HashMap<String, (String, Option<String>, String)> = HashMap::new();
    for (topic, v) in values {
        if topic == "orders" {
            let id = v["order_id"].as_str().unwrap().to_string();
            orders.entry(id).or_insert((
                v["brand_id"].as_str().unwrap().into(),
                v["channel_id"].as_str().map(String::from),
                v["country"].as_str().unwrap().into(),
            ));
        }
    }
    let mut e = Expected::default();
    let mut seen = HashSet::new();
    let mut buckets: BTreeMap<String, BTreeMap<i64, i128>> = BTreeMap::new();
    let total = |e: &mut Expected, key: String, col: usize, v: i128| {
        e.totals.entry(key).or_default()[col] += v
    };
    for (topic, v) in values {
        let (id_field, col) = match topic.as_str() {
            "orders" => ("order_id", 3),
            "payments" => ("payment_id", 0),
            _ => ("delivery_id", if v["status"] == "shipped" { 4 } else { 5 }),
        };
        if !seen.insert((topic.clone(), v[id_field].as_str().unwrap().to_string())) {
            continue;
        }
        let ts = v["ts_ms"].as_i64().unwrap();
        let order = orders.get(v["order_id"].as_str().unwrap());
        let mut keys = vec!["total|all".to_string()];
        match order {
            Some((brand, channel, country)) => {
                keys.push(format!("brand|{brand}"));
                keys.push(format!("country|{country}"));
                if let Some(c) = channel {
                    keys.push(format!("channel|{c}"));
                }
            }
            None => {
                keys.push("brand|unknown".into());
                keys.push("country|unknown".into());
            }
        }
        if topic != "payments" {
            for k in keys {
                total(&mut e, k, col, 1);
            }
            continue;
        }
        let fen = to_fen(
            v["currency"].as_str().unwrap(),
            v["amount_minor"].as_i64().unwrap(),
        );
        let paid = v["kind"] == "paid";
        for k in keys {
            if paid {
                total(&mut e, k.clone(), 0, fen);
                total(&mut e, k.clone(), 2, 1);
                if !k.starts_with("country|") {
                    *buckets
                        .entry(k.clone())
                        .or_default()
                        .entry(ts.div_euclid(1000))
                        .or_default() += fen;
                }
            } else {
                total(&mut e, k.clone(), 1, fen);
            }
            let sizes: &[i64] = if k == "total|all" {
                &[1_000, 60_000]
            } else {
                &[60_000]
            };
            for size in sizes {
                let w = e
                    .windows
                    .entry(format!("{k}|{size}|{}", ts.div_euclid(*size) * size))
                    .or_default();
                if paid {
                    w.0 += fen;
                    w.2 += 1;
                } else {
                    w.1 += fen;
                }
            }
        }
    }
    for (k, b) in buckets {
        let mut cum = 0i128;
        for (sec, g) in b {
            let before = cum;
            cum += g;
            let thresholds: Vec<i128> = if k == "total|all" {
                ((before / TOTAL_EVERY_FEN as i128 + 1)..=(cum / TOTAL_EVERY_FEN as i128))
                    .map(|i| i * TOTAL_EVERY_FEN as i128)
                    .collect()
            } else {
                [BRAND_THRESHOLD_FEN as i128]
                    .into_iter()
                    .filter(|t| before < *t && *t <= cum)
                    .collect()
            };
            for t in thresholds {
                e.milestones
                    .insert(format!("{k}|{t}"), ((sec + 1) * 1000, cum));
            }
        }
    }
    e
}
