//! What the big screen shows, from the job's committed output records alone:
//! a plain struct fed `gmv-totals`, `gmv-windows` and `milestones` records as
//! a `read_committed` reader sees them, and asked for the current view. It
//! needs no job in the process, so every instance, and `gmv screen` run
//! anywhere, shows the same figures.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Seconds of GMV per second kept for the chart.
pub const CHART_SECONDS: usize = 300;
/// Rows in each top list.
pub const TOP_N: usize = 10;
/// Milestones kept for the feed.
pub const FEED: usize = 20;
/// No record for this long: the stream has stalled.
pub const STALL_AFTER_MS: i64 = 5_000;
/// The orders/s rate is taken over this much wall time (totals arrive once per
/// emit interval: a rate over one interval alternates bursts and zeros).
const RATE_WINDOW_MS: i64 = 5_000;

/// The output topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Totals,
    Windows,
    Milestones,
}

/// A `gmv-totals` value, as the contract defines it: read as any consumer of
/// the topic would, not through the engine's own types, so the screen rests
/// on the contract alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TotalsRow {
    pub dim: String,
    pub key: String,
    pub gmv_fen: i128,
    pub refund_fen: i128,
    pub paid_orders: u64,
    pub placed_orders: u64,
    pub shipped_orders: u64,
    pub delivered_orders: u64,
    pub watermark_ms: i64,
}

#[derive(Debug, Deserialize)]
struct WindowRow {
    dim: String,
    window_start_ms: i64,
    window_size_ms: i64,
    gmv_fen: i128,
}

/// A `milestones` value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Milestone {
    pub dim: String,
    pub key: String,
    #[serde(with = "fen")]
    pub threshold_fen: i128,
    pub crossed_at_ms: i64,
    #[serde(with = "fen")]
    pub gmv_fen: i128,
}

/// Money as a decimal string in the view: a JavaScript number is exact only
/// to 2^53 (about 90 trillion CNY in fen), and the view is read by browsers.
mod fen {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i128, D::Error> {
        i128::deserialize(d)
    }
}

/// One row of a top list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ranked {
    /// The key; for the last row of a list that does not show every key, the
    /// number of the others (with `others: true`).
    pub key: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub others: bool,
    #[serde(with = "fen")]
    pub gmv_fen: i128,
    /// Its share of the overall GMV, in basis points (1/100 of a percent).
    pub share_bp: i64,
}

/// What the page, `/api/summary` and `/events` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct View {
    #[serde(with = "fen")]
    pub gmv_fen: i128,
    #[serde(with = "fen")]
    pub refund_fen: i128,
    /// GMV less refunds.
    #[serde(with = "fen")]
    pub net_fen: i128,
    pub paid_orders: u64,
    pub placed_orders: u64,
    pub shipped_orders: u64,
    pub delivered_orders: u64,
    /// Orders placed per second of wall time, over the last 5 s, and its peak.
    pub orders_per_sec: u64,
    pub peak_orders_per_sec: u64,
    /// GMV per event-time second (the 1 s `total` windows), oldest first:
    /// `[window_start_ms, gmv_fen]`.
    pub per_second: Vec<(i64, String)>,
    pub top_brands: Vec<Ranked>,
    pub top_channels: Vec<Ranked>,
    pub countries: Vec<Ranked>,
    /// Newest first.
    pub milestones: Vec<Milestone>,
    /// The overall watermark (`None` before the job has one) and how far it
    /// trails the wall clock.
    pub watermark_ms: Option<i64>,
    pub watermark_lag_ms: Option<i64>,
    /// Wall time of the newest record read (`None`: none yet).
    pub updated_ms: Option<i64>,
    /// No record for `STALL_AFTER_MS`.
    pub stalled: bool,
    pub now_ms: i64,
}

/// The sale as the output topics tell it.
#[derive(Debug, Default)]
pub struct Screen {
    totals: HashMap<String, TotalsRow>,
    per_second: BTreeMap<i64, i128>,
    milestones: VecDeque<Milestone>,
    /// (wall ms, placed orders) samples for the rate.
    placed: VecDeque<(i64, u64)>,
    peak_orders_per_sec: u64,
    updated_ms: Option<i64>,
}

impl Screen {
    /// Applies one output record (its key, if any, and value) read at wall
    /// time `now_ms`; a value that is not what the contract says is skipped,
    /// and says so.
    pub fn apply(
        &mut self,
        source: Source,
        key: Option<&[u8]>,
        value: &[u8],
        now_ms: i64,
    ) -> Result<(), String> {
        self.updated_ms = Some(now_ms);
        let bad = |e: serde_json::Error| format!("{source:?} record skipped: {e}");
        // Only the overall 1 s windows are charted: the others, most of the
        // topic, are skipped by their key (`{dim}|{key}|{size}|{start}`) unparsed.
        if source == Source::Windows && key.is_some_and(|k| !k.starts_with(b"total|all|1000|")) {
            return Ok(());
        }
        match source {
            Source::Totals => {
                let row: TotalsRow = serde_json::from_slice(value).map_err(bad)?;
                if row.dim == "total" {
                    self.placed.push_back((now_ms, row.placed_orders));
                }
                self.totals.insert(format!("{}|{}", row.dim, row.key), row);
            }
            Source::Windows => {
                let w: WindowRow = serde_json::from_slice(value).map_err(bad)?;
                if w.dim == "total" && w.window_size_ms == 1_000 {
                    self.per_second.insert(w.window_start_ms, w.gmv_fen);
                    while self.per_second.len() > CHART_SECONDS {
                        self.per_second.pop_first();
                    }
                }
            }
            Source::Milestones => {
                let m: Milestone = serde_json::from_slice(value).map_err(bad)?;
                self.milestones.push_front(m);
                self.milestones.truncate(FEED);
            }
        }
        Ok(())
    }

    /// The current view at wall time `now_ms`.
    pub fn view(&mut self, now_ms: i64) -> View {
        let all = self.totals.get("total|all").cloned().unwrap_or_default();
        let rate = self.rate(now_ms);
        self.peak_orders_per_sec = self.peak_orders_per_sec.max(rate);
        let watermark_ms = (all.watermark_ms > 0).then_some(all.watermark_ms);
        View {
            gmv_fen: all.gmv_fen,
            refund_fen: all.refund_fen,
            net_fen: all.gmv_fen - all.refund_fen,
            paid_orders: all.paid_orders,
            placed_orders: all.placed_orders,
            shipped_orders: all.shipped_orders,
            delivered_orders: all.delivered_orders,
            orders_per_sec: rate,
            peak_orders_per_sec: self.peak_orders_per_sec,
            per_second: self
                .per_second
                .iter()
                .map(|(t, g)| (*t, g.to_string()))
                .collect(),
            top_brands: self.top("brand", all.gmv_fen, TOP_N),
            top_channels: self.top("channel", all.gmv_fen, TOP_N),
            countries: self.top("country", all.gmv_fen, TOP_N),
            milestones: self.milestones.iter().cloned().collect(),
            watermark_ms,
            watermark_lag_ms: watermark_ms.map(|w| now_ms - w),
            updated_ms: self.updated_ms,
            stalled: self.updated_ms.is_none_or(|u| now_ms - u > STALL_AFTER_MS),
            now_ms,
        }
    }

    /// Orders placed per second over the last `RATE_WINDOW_MS` of wall time.
    fn rate(&mut self, now_ms: i64) -> u64 {
        while self.placed.len() > 1 && self.placed[1].0 <= now_ms - RATE_WINDOW_MS {
            self.placed.pop_front();
        }
        let (Some(first), Some(last)) = (self.placed.front(), self.placed.back()) else {
            return 0;
        };
        let span_ms = (now_ms - first.0).max(1_000);
        (last.1.saturating_sub(first.1) * 1_000) / span_ms as u64
    }

    /// The `n` keys of `dim` with the highest GMV (ties by key), with their
    /// share of `total_fen`, then one row for all the others, if any.
    fn top(&self, dim: &str, total_fen: i128, n: usize) -> Vec<Ranked> {
        let mut rows: Vec<&TotalsRow> = self.totals.values().filter(|r| r.dim == dim).collect();
        let by_gmv =
            |a: &&TotalsRow, b: &&TotalsRow| b.gmv_fen.cmp(&a.gmv_fen).then(a.key.cmp(&b.key));
        let mut others = None;
        if rows.len() > n {
            rows.select_nth_unstable_by(n, by_gmv);
            let rest = rows.split_off(n);
            others = Some((rest.len(), rest.iter().map(|r| r.gmv_fen).sum::<i128>()));
        }
        rows.sort_by(by_gmv);
        let share = |gmv: i128| {
            if total_fen > 0 {
                (gmv * 10_000 / total_fen) as i64
            } else {
                0
            }
        };
        let mut ranked: Vec<Ranked> = rows
            .into_iter()
            .map(|r| Ranked {
                key: r.key.clone(),
                others: false,
                gmv_fen: r.gmv_fen,
                share_bp: share(r.gmv_fen),
            })
            .collect();
        if let Some((count, gmv_fen)) = others {
            ranked.push(Ranked {
                key: count.to_string(),
                others: true,
                gmv_fen,
                share_bp: share(gmv_fen),
            });
        }
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(dim: &str, key: &str, gmv: i128, placed: u64, wm: i64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "dim": dim, "key": key, "gmv_fen": gmv, "refund_fen": 10, "paid_orders": 3,
            "placed_orders": placed, "shipped_orders": 2, "delivered_orders": 1,
            "watermark_ms": wm, "revision": 1
        }))
        .unwrap()
    }

    #[test]
    fn the_view_is_the_latest_totals_ranked_with_shares() {
        let mut s = Screen::default();
        let t = 1_000_000;
        s.apply(
            Source::Totals,
            None,
            &total("total", "all", 1_000, 5, t - 2_000),
            t,
        )
        .unwrap();
        s.apply(Source::Totals, None, &total("brand", "b1", 600, 3, t), t)
            .unwrap();
        s.apply(Source::Totals, None, &total("brand", "b2", 400, 2, t), t)
            .unwrap();
        s.apply(Source::Totals, None, &total("brand", "b1", 700, 3, t), t)
            .unwrap();
        let v = s.view(t);
        assert_eq!((v.gmv_fen, v.refund_fen, v.net_fen), (1_000, 10, 990));
        assert_eq!(
            v.top_brands,
            vec![
                Ranked {
                    key: "b1".into(),
                    others: false,
                    gmv_fen: 700,
                    share_bp: 7_000
                },
                Ranked {
                    key: "b2".into(),
                    others: false,
                    gmv_fen: 400,
                    share_bp: 4_000
                },
            ]
        );
        for i in 0..(TOP_N + 5) {
            s.apply(
                Source::Totals,
                None,
                &total("country", &format!("C{i:02}"), 10 + i as i128, 1, t),
                t,
            )
            .unwrap();
        }
        let countries = s.view(t).countries;
        assert_eq!(countries.len(), TOP_N + 1);
        assert_eq!(
            (countries[0].key.as_str(), countries[0].gmv_fen),
            ("C14", 24)
        );
        let others = countries.last().unwrap();
        assert_eq!(
            (others.others, others.key.as_str(), others.gmv_fen),
            (true, "5", 10 + 11 + 12 + 13 + 14),
            "the five smallest, summed"
        );
        assert_eq!(
            (v.watermark_ms, v.watermark_lag_ms),
            (Some(t - 2_000), Some(2_000))
        );
        assert!(!v.stalled);
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["gmv_fen"], "1000", "money is a string for browsers");
    }

    #[test]
    fn a_stream_without_records_for_five_seconds_has_stalled() {
        let mut s = Screen::default();
        assert!(s.view(0).stalled, "nothing read yet");
        s.apply(
            Source::Totals,
            None,
            &total("total", "all", 1, 1, 1),
            10_000,
        )
        .unwrap();
        assert!(!s.view(10_000 + STALL_AFTER_MS).stalled);
        assert!(s.view(10_000 + STALL_AFTER_MS + 1).stalled);
    }

    #[test]
    fn orders_per_second_over_five_seconds_and_its_peak() {
        let mut s = Screen::default();
        for i in 0..=10 {
            // 1,000 orders a second for 10 s.
            s.apply(
                Source::Totals,
                None,
                &total("total", "all", 0, i * 1_000, 0),
                i as i64 * 1_000,
            )
            .unwrap();
        }
        assert_eq!(s.view(10_000).orders_per_sec, 1_000);
        s.apply(
            Source::Totals,
            None,
            &total("total", "all", 0, 10_000, 0),
            16_000,
        )
        .unwrap();
        let v = s.view(16_000);
        assert_eq!((v.orders_per_sec, v.peak_orders_per_sec), (0, 1_000));
    }

    #[test]
    fn the_chart_keeps_the_last_minutes_of_one_second_total_windows() {
        let mut s = Screen::default();
        let w = |start: i64, size: i64, dim: &str| {
            serde_json::to_vec(&serde_json::json!({
                "dim": dim, "key": "all", "window_start_ms": start, "window_size_ms": size,
                "gmv_fen": start / 1000, "refund_fen": 0, "paid_orders": 1, "final": false, "revision": 1
            }))
            .unwrap()
        };
        for i in 0..(CHART_SECONDS as i64 + 10) {
            s.apply(Source::Windows, None, &w(i * 1_000, 1_000, "total"), 0)
                .unwrap();
        }
        s.apply(Source::Windows, None, &w(0, 60_000, "total"), 0)
            .unwrap();
        s.apply(Source::Windows, None, &w(999_000, 1_000, "brand"), 0)
            .unwrap();
        let v = s.view(0);
        assert_eq!(v.per_second.len(), CHART_SECONDS);
        assert_eq!(v.per_second[0], (10_000, "10".to_string()));
        assert_eq!(
            v.per_second.last().unwrap().0,
            (CHART_SECONDS as i64 + 9) * 1_000
        );
    }

    #[test]
    fn milestones_newest_first_and_bad_records_skipped_with_a_reason() {
        let mut s = Screen::default();
        for i in 0..(FEED + 3) {
            let m = serde_json::json!({"dim": "brand", "key": format!("b{i}"), "threshold_fen": 100,
                                       "crossed_at_ms": i, "gmv_fen": 120});
            s.apply(
                Source::Milestones,
                None,
                &serde_json::to_vec(&m).unwrap(),
                0,
            )
            .unwrap();
        }
        let v = s.view(0);
        assert_eq!(v.milestones.len(), FEED);
        assert_eq!(v.milestones[0].key, format!("b{}", FEED + 2));
        let err = s.apply(Source::Totals, None, b"{not json", 0).unwrap_err();
        assert!(err.contains("Totals record skipped"), "{err}");
    }
}
