//! Synthetic Singles Day traffic for the `orders`, `payments` and `deliveries`
//! topics: an infinite, deterministic iterator of keyed input records.
//!
//! Pure synthesis: no Kafka, no I/O, no clock. The same [`TrafficConfig`]
//! (seed included) always yields the same records, byte for byte.
//!
//! # Model
//!
//! - Orders arrive in event time at `orders_per_sec × (1 + (surge − 1)·e^(−t/surge_decay_ms))`
//!   per second, `t` measured from `start_ms` (the midnight surge decays to the baseline).
//! - Each order is paid (except ~2%) by one `paid` payment 1–120 s later (skewed
//!   short), or, for `early_payment_share` of them, up to 3 s *before* the order.
//!   `orphan_share` of payments belong to an order that is never emitted.
//! - A payment is followed by a `refund` (`refund_share`, 1–10 min later, amount
//!   ≤ paid) and by a `shipped` delivery (~60%, 2–20 min later), half of which
//!   are `delivered` 5–40 min after shipping.
//! - Every event has a release time, its emission time (`emit_ms`, non-decreasing
//!   over the iterator); its `ts_ms` is the release time minus a uniform jitter in
//!   `[0, disorder_ms]`, so the stream is disordered by at most `disorder_ms`.
//! - `duplicate_share` of good records are re-sent byte for byte shortly after
//!   (still within the disorder bound); `bad_share` of good records are followed by
//!   a bad record with fresh ids, cycling over every dead-letter reason except `late`.
//!   Bad records are always extra: the good traffic stays complete.
//!
//! All records are keyed by their `order_id`. Orders are generated 3 s ahead of
//! the emission clock (for early payments); scheduled payments, refunds and
//! deliveries wait as compact 32-byte entries in a calendar queue, ordered by
//! (release time, order sequence, stage), which also fixes the order of
//! simultaneous events. A follow-up is scheduled only when its predecessor is
//! emitted. Memory grows with the events scheduled ahead: at a steady 20,000
//! orders/s that is some millions of entries (about an hour of follow-ups).

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use crate::decode::{MAX_AMOUNT_MINOR, MAX_VALUE_BYTES};

mod bad;
mod schedule;

use crate::model::{DeadReason, InputTopic};
use schedule::{Pending, Schedule, SLOT_MS};

/// 2026-11-11T00:00:00+08:00 (midnight in Beijing), the start of the sale.
pub const SINGLES_DAY_START_MS: i64 = 1_794_326_400_000;

/// Buyer countries, ISO 3166-1 alpha-2 (inhabited territories), most popular first.
#[rustfmt::skip]
pub const COUNTRIES: [&str; 244] = [
    "CN", "US", "JP", "KR", "GB", "DE", "FR", "AU", "HK", "SG", "MY", "TW", "CA", "TH", "IT", "ES",
    "NL", "RU", "NZ", "AE", "MO", "VN", "PH", "ID", "IN", "BR", "MX", "SA", "IL", "CH", "SE", "BE",
    "AT", "IE", "DK", "NO", "FI", "PL", "PT", "GR", "TR", "AD", "AF", "AG", "AI", "AL", "AM", "AO",
    "AR", "AS", "AW", "AX", "AZ", "BA", "BB", "BD", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN",
    "BO", "BQ", "BS", "BT", "BW", "BY", "BZ", "CC", "CD", "CF", "CG", "CI", "CK", "CL", "CM", "CO",
    "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DJ", "DM", "DO", "DZ", "EC", "EE", "EG", "EH", "ER",
    "ET", "FJ", "FK", "FM", "FO", "GA", "GD", "GE", "GF", "GG", "GH", "GI", "GL", "GM", "GN", "GP",
    "GQ", "GT", "GU", "GW", "GY", "HN", "HR", "HT", "HU", "IM", "IO", "IQ", "IR", "IS", "JE", "JM",
    "JO", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KW", "KY", "KZ", "LA", "LB", "LC", "LI", "LK",
    "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK", "ML", "MM",
    "MN", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MZ", "NA", "NC", "NE", "NF", "NG", "NI",
    "NP", "NR", "NU", "OM", "PA", "PE", "PF", "PG", "PK", "PM", "PN", "PR", "PS", "PW", "PY", "QA",
    "RE", "RO", "RS", "RW", "SB", "SC", "SD", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR",
    "SS", "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TT", "TV", "TZ", "UA", "UG", "UY", "UZ", "VA", "VC", "VE", "VG", "VI", "VU", "WF", "WS", "YE",
    "YT", "ZA", "ZM", "ZW",
];

/// Shares of the first countries of [`COUNTRIES`] (CN, US, JP, KR, GB, DE, FR, AU, HK, SG).
const HEAD_COUNTRY_SHARES: [f64; 10] = [
    0.80, 0.035, 0.025, 0.02, 0.012, 0.011, 0.009, 0.009, 0.009, 0.008,
];
/// The long tail shares what the head leaves, decaying as `1/(rank + 10)^0.8`.
const TAIL_COUNTRY_DECAY: f64 = 0.8;

/// Buyers are drawn uniformly from this many user ids.
const USERS: u32 = 80_000_000;
/// Share of orders never paid.
const NEVER_PAID_SHARE: f64 = 0.02;
/// Share of orders placed from a livestream channel.
const LIVESTREAM_SHARE: f64 = 0.35;
/// Device shares: mobile, then pc; the rest is `other`.
const MOBILE_SHARE: f64 = 0.93;
const PC_SHARE: f64 = 0.05;
/// Popularity exponent of brands and channels.
const ZIPF_EXPONENT: f64 = 1.1;
/// Order value: log-normal around this median (CNY), with this sigma.
const MEDIAN_ORDER_CNY: f64 = 200.0;
const ORDER_VALUE_SIGMA: f64 = 1.1;
/// A few bulk or luxury orders are worth this many times more.
const BULK_SHARE: f64 = 0.002;
const BULK_FACTOR: f64 = 40.0;
/// Early payments come at most this long before their order; also how far
/// ahead of the emission clock orders are generated.
const MAX_EARLY_MS: i64 = 3_000;
/// Payment delay after the order, skewed short.
const PAY_DELAY_MS: (i64, i64) = (1_000, 120_000);
/// Refund delay after the payment.
const REFUND_DELAY_MS: (i64, i64) = (60_000, 600_000);
/// Share of refunds that return the whole amount (the rest are partial).
const FULL_REFUND_SHARE: f64 = 0.7;
/// Share of paid orders shipped, and delay after the payment.
const SHIPPED_SHARE: f64 = 0.6;
const SHIP_DELAY_MS: (i64, i64) = (120_000, 1_200_000);
/// Share of shipped orders delivered, and delay after shipping.
const DELIVERED_SHARE: f64 = 0.5;
const DELIVER_DELAY_MS: (i64, i64) = (300_000, 2_400_000);

/// What to generate. Every share is a probability in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficConfig {
    pub seed: u64,
    /// Event time of the first order.
    pub start_ms: i64,
    /// Baseline event-time rate of orders, before the surge shape.
    pub orders_per_sec: f64,
    /// Rate multiplier at `start_ms`, decaying exponentially to 1.
    pub surge: f64,
    /// Time constant of the surge decay; 0 disables the surge.
    pub surge_decay_ms: i64,
    pub brands: usize,
    pub channels: usize,
    /// Share of good records re-sent as exact copies.
    pub duplicate_share: f64,
    /// Share of good records followed by an extra bad record.
    pub bad_share: f64,
    /// Bound on `emit_ms − ts_ms`; keep it below the job's `max_out_of_orderness`.
    pub disorder_ms: i64,
    /// Share of paid orders later refunded.
    pub refund_share: f64,
    /// Share of payments whose order is never emitted.
    pub orphan_share: f64,
    /// Share of payments emitted before their order (by up to 3 s).
    pub early_payment_share: f64,
    /// Multiplier of the delays of refunds, shipments and deliveries after
    /// their payment (1.0: minutes, as in the model above; the demo uses 1/20,
    /// so its screen shows refunds and deliveries within the first minute).
    pub follow_up_time: f64,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            seed: 0,
            start_ms: SINGLES_DAY_START_MS,
            orders_per_sec: 20_000.0,
            surge: 5.0,
            surge_decay_ms: 600_000,
            brands: 2_000,
            channels: 300,
            duplicate_share: 0.01,
            bad_share: 0.001,
            disorder_ms: 2_000,
            refund_share: 0.03,
            orphan_share: 0.0005,
            early_payment_share: 0.02,
            follow_up_time: 1.0,
        }
    }
}

/// Whether a record is a first copy, a re-sent copy, or bad input the job must dead-letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Good,
    Duplicate,
    Bad(DeadReason),
}

/// One record to write to `topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedRecord {
    pub topic: InputTopic,
    /// The order id (every input topic is keyed by it).
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub kind: RecordKind,
    /// Simulated emission time; non-decreasing over the iterator.
    pub emit_ms: i64,
}

/// A settlement currency: code, minor-unit exponent, approximate CNY per unit.
struct Currency {
    code: &'static str,
    exp: i32,
    cny_per_unit: f64,
}

#[rustfmt::skip]
const CURRENCIES: [Currency; 8] = [
    Currency { code: "CNY", exp: 2, cny_per_unit: 1.0 },
    Currency { code: "USD", exp: 2, cny_per_unit: 7.1 },
    Currency { code: "EUR", exp: 2, cny_per_unit: 7.75 },
    Currency { code: "HKD", exp: 2, cny_per_unit: 0.91 },
    Currency { code: "JPY", exp: 0, cny_per_unit: 0.047 },
    Currency { code: "KRW", exp: 0, cny_per_unit: 0.0052 },
    Currency { code: "GBP", exp: 2, cny_per_unit: 9.05 },
    Currency { code: "AUD", exp: 2, cny_per_unit: 4.65 },
];

/// Index into [`CURRENCIES`] of the currency a buyer from `country` pays in.
fn currency_of(country: &str) -> u8 {
    match country {
        "CN" => 0,
        "US" => 1,
        // Euro area, plus the small states that use the euro by agreement.
        "AT" | "BE" | "HR" | "CY" | "EE" | "FI" | "FR" | "DE" | "GR" | "IE" | "IT" | "LV"
        | "LT" | "LU" | "MT" | "NL" | "PT" | "SK" | "SI" | "ES" | "AD" | "MC" | "SM" | "VA"
        | "ME" => 2,
        "HK" => 3,
        "JP" => 4,
        "KR" => 5,
        "GB" => 6,
        "AU" => 7,
        _ => 1,
    }
}

/// Sampling from a fixed discrete distribution: cumulative weights + binary search.
struct Categorical {
    cdf: Vec<f64>,
}

impl Categorical {
    fn from_weights(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = weights
            .into_iter()
            .map(|w| {
                acc += w.max(0.0);
                acc
            })
            .collect();
        assert!(!cdf.is_empty() && acc > 0.0, "empty distribution");
        for c in &mut cdf {
            *c /= acc;
        }
        *cdf.last_mut().expect("non-empty") = 1.0;
        Categorical { cdf }
    }

    /// Zipf over ranks 0..n: rank k has weight `1/(k+1)^s`.
    fn zipf(n: usize, s: f64) -> Self {
        Self::from_weights((1..=n).map(|k| (k as f64).powf(-s)))
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> usize {
        let u: f64 = rng.gen();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

// Stages of an order's life, the low 4 bits of a tie-break key `(order_seq << 4) | stage`.
const ST_ORDER: u64 = 0;
const ST_PAID: u64 = 1;
const ST_PAID_ORPHAN: u64 = 2;
const ST_REFUND: u64 = 3;
const ST_SHIPPED: u64 = 4;
const ST_DELIVERED: u64 = 5;
/// Set on a duplicate's key, so it never equals its original's.
const DUP_FLAG: u64 = 8;
const ST_BAD: u64 = 15;

/// An order generated ahead of the emission clock (orders are released in generation order).
#[derive(Debug, Clone, Copy)]
struct OrderData {
    release: i64,
    seq: u64,
    amount: i64,
    user: u32,
    brand: u32,
    /// `u32::MAX` when not placed from a livestream.
    channel: u32,
    jitter: u32,
    country: u16,
    device: u8,
    currency: u8,
}

/// An already rendered record (a duplicate or a bad record) waiting for its release.
#[derive(Debug)]
struct Side {
    release: i64,
    tb: u64,
    rec: GeneratedRecord,
}

impl PartialEq for Side {
    fn eq(&self, other: &Self) -> bool {
        (self.release, self.tb) == (other.release, other.tb)
    }
}
impl Eq for Side {}
impl PartialOrd for Side {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Side {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.release, self.tb).cmp(&(other.release, other.tb))
    }
}

#[derive(Clone, Copy)]
enum Source {
    Order,
    Pending,
    Side,
}

/// The generator. An infinite iterator: use `.take(n)`.
pub struct Traffic {
    cfg: TrafficConfig,
    rng: ChaCha8Rng,
    countries: Categorical,
    country_currency: Vec<u8>,
    brands: Categorical,
    channels: Categorical,
    disorder: u32,
    /// Next order's event time, in nanoseconds after `start_ms`.
    next_order_ns: i64,
    /// Next order sequence number (bad records take fresh ones too).
    next_seq: u64,
    orders: VecDeque<OrderData>,
    pending: Schedule,
    side: BinaryHeap<Reverse<Side>>,
    bad_cycle: usize,
}

impl Traffic {
    /// Panics on a nonsensical configuration (non-positive rate, share outside `[0, 1]`, …).
    pub fn new(cfg: TrafficConfig) -> Self {
        assert!(
            cfg.orders_per_sec.is_finite() && cfg.orders_per_sec > 0.0,
            "orders_per_sec must be positive"
        );
        assert!(
            cfg.surge.is_finite() && cfg.surge > 0.0,
            "surge must be positive"
        );
        assert!(
            cfg.surge_decay_ms >= 0,
            "surge_decay_ms must not be negative"
        );
        assert!(
            (1..=u32::MAX as usize - 1).contains(&cfg.brands),
            "brands out of range"
        );
        assert!(
            (1..=u32::MAX as usize - 1).contains(&cfg.channels),
            "channels out of range"
        );
        assert!(
            (0..=u32::MAX as i64).contains(&cfg.disorder_ms),
            "disorder_ms out of range"
        );
        for (name, share) in [
            ("duplicate_share", cfg.duplicate_share),
            ("bad_share", cfg.bad_share),
            ("refund_share", cfg.refund_share),
            ("orphan_share", cfg.orphan_share),
            ("early_payment_share", cfg.early_payment_share),
        ] {
            assert!((0.0..=1.0).contains(&share), "{name} must be in [0, 1]");
        }
        assert!(cfg.follow_up_time > 0.0, "follow_up_time must be positive");
        let head: f64 = HEAD_COUNTRY_SHARES.iter().sum();
        let tail_weight = |rank: usize| ((rank + 10) as f64).powf(-TAIL_COUNTRY_DECAY);
        let tail_len = COUNTRIES.len() - HEAD_COUNTRY_SHARES.len();
        let tail_total: f64 = (0..tail_len).map(tail_weight).sum();
        let countries = Categorical::from_weights(
            HEAD_COUNTRY_SHARES
                .iter()
                .copied()
                .chain((0..tail_len).map(|r| (1.0 - head) * tail_weight(r) / tail_total)),
        );
        Traffic {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            countries,
            country_currency: COUNTRIES.iter().map(|c| currency_of(c)).collect(),
            brands: Categorical::zipf(cfg.brands, ZIPF_EXPONENT),
            channels: Categorical::zipf(cfg.channels, ZIPF_EXPONENT),
            disorder: cfg.disorder_ms as u32,
            next_order_ns: 0,
            next_seq: 0,
            orders: VecDeque::new(),
            pending: Schedule::new(cfg.start_ms - MAX_EARLY_MS - SLOT_MS),
            side: BinaryHeap::new(),
            bad_cycle: 0,
            cfg,
        }
    }

    pub fn config(&self) -> &TrafficConfig {
        &self.cfg
    }

    fn next_order_release(&self) -> i64 {
        self.cfg.start_ms + self.next_order_ns / 1_000_000
    }

    /// Moves the order clock by one inter-arrival time at the current surge-shaped rate.
    fn advance_order_clock(&mut self) {
        let t_ms = self.next_order_ns as f64 / 1e6;
        let shape = if self.cfg.surge_decay_ms > 0 {
            1.0 + (self.cfg.surge - 1.0) * (-t_ms / self.cfg.surge_decay_ms as f64).exp()
        } else {
            1.0
        };
        let rate = self.cfg.orders_per_sec * shape;
        let dt_ns = (1e9 / rate).round().clamp(1.0, 1e15) as i64;
        self.next_order_ns += dt_ns;
    }

    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen::<f64>() < p
    }

    fn jitter(&mut self) -> u32 {
        self.rng.gen_range(0..=self.disorder)
    }

    /// `lo + (hi − lo)·u^power`: a delay in `[lo, hi]` skewed towards `lo`.
    /// A follow-up's delay scaled by `follow_up_time`.
    fn follow_up(&self, delay_ms: i64) -> i64 {
        (delay_ms as f64 * self.cfg.follow_up_time) as i64
    }

    fn skewed_delay(&mut self, (lo, hi): (i64, i64), power: i32) -> i64 {
        let u: f64 = self.rng.gen();
        lo + ((hi - lo) as f64 * u.powi(power)) as i64
    }

    /// Order value in minor units of `currency`: log-normal around the median, heavy-tailed.
    fn sample_amount(&mut self, currency: u8) -> i64 {
        // Box–Muller: one standard normal from two uniforms.
        let u1 = 1.0 - self.rng.gen::<f64>();
        let u2: f64 = self.rng.gen();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let mut cny = MEDIAN_ORDER_CNY * (ORDER_VALUE_SIGMA * z).exp();
        if self.chance(BULK_SHARE) {
            cny *= BULK_FACTOR;
        }
        let c = &CURRENCIES[currency as usize];
        let minor = cny / c.cny_per_unit * 10f64.powi(c.exp);
        (minor.round() as i64).clamp(1, MAX_AMOUNT_MINOR)
    }

    fn sample_order(&mut self, seq: u64, release: i64) -> OrderData {
        let country = self.countries.sample(&mut self.rng);
        let currency = self.country_currency[country];
        let brand = self.brands.sample(&mut self.rng) as u32;
        let channel = if self.chance(LIVESTREAM_SHARE) {
            self.channels.sample(&mut self.rng) as u32
        } else {
            u32::MAX
        };
        let d: f64 = self.rng.gen();
        let device = if d < MOBILE_SHARE {
            0
        } else if d < MOBILE_SHARE + PC_SHARE {
            1
        } else {
            2
        };
        let user = self.rng.gen_range(0..USERS);
        let amount = self.sample_amount(currency);
        let jitter = self.jitter();
        OrderData {
            release,
            seq,
            amount,
            user,
            brand,
            channel,
            jitter,
            country: country as u16,
            device,
            currency,
        }
    }

    /// Generates the next order and schedules its payment (and the order itself).
    fn gen_order(&mut self) {
        let t = self.next_order_release();
        self.advance_order_clock();
        let seq = self.take_seq();
        let o = self.sample_order(seq, t);
        if self.chance(NEVER_PAID_SHARE) {
            self.orders.push_back(o);
            return;
        }
        let (stage, release) = if self.chance(self.cfg.orphan_share) {
            // The order is never emitted.
            (ST_PAID_ORPHAN, t + self.skewed_delay(PAY_DELAY_MS, 3))
        } else {
            self.orders.push_back(o);
            if self.chance(self.cfg.early_payment_share) {
                (ST_PAID, t - self.rng.gen_range(1..=MAX_EARLY_MS))
            } else {
                (ST_PAID, t + self.skewed_delay(PAY_DELAY_MS, 3))
            }
        };
        self.schedule(release, seq, stage, o.amount, o.currency);
    }

    fn schedule(&mut self, release: i64, seq: u64, stage: u64, amount: i64, currency: u8) {
        let jitter = self.jitter();
        self.pending.push(Pending {
            release,
            tb: (seq << 4) | stage,
            amount,
            jitter,
            currency,
        });
    }

    /// The earliest queued entry released before `limit`: its (release, tie-break key)
    /// and where it is.
    fn earliest_before(&mut self, limit: i64) -> Option<((i64, u64), Source)> {
        let o = self
            .orders
            .front()
            .map(|o| ((o.release, (o.seq << 4) | ST_ORDER), Source::Order));
        let p = self
            .pending
            .peek_before(limit)
            .map(|p| ((p.release, p.tb), Source::Pending));
        let s = self
            .side
            .peek()
            .map(|Reverse(s)| ((s.release, s.tb), Source::Side));
        [o, p, s]
            .into_iter()
            .flatten()
            .filter(|((release, _), _)| *release < limit)
            .min_by_key(|(k, _)| *k)
    }

    fn suffix(&self, seq: u64) -> u16 {
        (splitmix64(self.cfg.seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 48) as u16
    }

    fn order_key(&self, seq: u64) -> String {
        let mut k = Vec::with_capacity(28);
        push_id(&mut k, b"o-", seq, self.suffix(seq));
        String::from_utf8(k).expect("ids are ASCII")
    }

    fn render_order(&self, o: &OrderData) -> GeneratedRecord {
        let key = self.order_key(o.seq);
        let mut v = Vec::with_capacity(232);
        v.extend_from_slice(b"{\"order_id\":\"");
        v.extend_from_slice(key.as_bytes());
        v.extend_from_slice(b"\",\"user_id\":\"u-");
        push_u64(&mut v, o.user as u64);
        v.extend_from_slice(b"\",\"brand_id\":\"brand-");
        push_u64(&mut v, o.brand as u64 + 1);
        v.extend_from_slice(b"\",\"channel_id\":");
        if o.channel == u32::MAX {
            v.extend_from_slice(b"null");
        } else {
            v.extend_from_slice(b"\"live-");
            push_u64(&mut v, o.channel as u64 + 1);
            v.push(b'"');
        }
        v.extend_from_slice(b",\"country\":\"");
        v.extend_from_slice(COUNTRIES[o.country as usize].as_bytes());
        v.extend_from_slice(b"\",\"device\":\"");
        v.extend_from_slice(match o.device {
            0 => b"mobile".as_slice(),
            1 => b"pc",
            _ => b"other",
        });
        v.extend_from_slice(b"\",\"currency\":\"");
        v.extend_from_slice(CURRENCIES[o.currency as usize].code.as_bytes());
        v.extend_from_slice(b"\",\"amount_minor\":");
        push_i64(&mut v, o.amount);
        v.extend_from_slice(b",\"ts_ms\":");
        push_i64(&mut v, o.release - o.jitter as i64);
        v.push(b'}');
        GeneratedRecord {
            topic: InputTopic::Orders,
            key: Some(key),
            value: v,
            kind: RecordKind::Good,
            emit_ms: o.release,
        }
    }

    fn render_pending(&self, p: &Pending) -> GeneratedRecord {
        let seq = p.tb >> 4;
        let stage = p.tb & 0xF;
        let key = self.order_key(seq);
        let sfx = self.suffix(seq);
        let ts = p.release - p.jitter as i64;
        let mut v = Vec::with_capacity(160);
        let topic = match stage {
            ST_PAID | ST_PAID_ORPHAN | ST_REFUND => {
                let refund = stage == ST_REFUND;
                v.extend_from_slice(b"{\"payment_id\":\"");
                push_id(&mut v, if refund { b"r-" } else { b"p-" }, seq, sfx);
                v.extend_from_slice(b"\",\"order_id\":\"");
                v.extend_from_slice(key.as_bytes());
                v.extend_from_slice(if refund {
                    b"\",\"kind\":\"refund\",\"currency\":\"".as_slice()
                } else {
                    b"\",\"kind\":\"paid\",\"currency\":\""
                });
                v.extend_from_slice(CURRENCIES[p.currency as usize].code.as_bytes());
                v.extend_from_slice(b"\",\"amount_minor\":");
                push_i64(&mut v, p.amount);
                v.extend_from_slice(b",\"ts_ms\":");
                push_i64(&mut v, ts);
                v.push(b'}');
                InputTopic::Payments
            }
            _ => {
                let delivered = stage == ST_DELIVERED;
                v.extend_from_slice(b"{\"delivery_id\":\"");
                push_id(&mut v, b"d-", seq, sfx);
                v.extend_from_slice(if delivered {
                    b"-d\",\"order_id\":\"".as_slice()
                } else {
                    b"-s\",\"order_id\":\""
                });
                v.extend_from_slice(key.as_bytes());
                v.extend_from_slice(if delivered {
                    b"\",\"status\":\"delivered\",\"ts_ms\":".as_slice()
                } else {
                    b"\",\"status\":\"shipped\",\"ts_ms\":"
                });
                push_i64(&mut v, ts);
                v.push(b'}');
                InputTopic::Deliveries
            }
        };
        GeneratedRecord {
            topic,
            key: Some(key),
            value: v,
            kind: RecordKind::Good,
            emit_ms: p.release,
        }
    }

    /// Schedules what follows an emitted payment or shipment.
    fn follow_ups(&mut self, p: &Pending) {
        let seq = p.tb >> 4;
        match p.tb & 0xF {
            ST_PAID => {
                if self.chance(self.cfg.refund_share) {
                    let delay = self.rng.gen_range(REFUND_DELAY_MS.0..=REFUND_DELAY_MS.1);
                    let at = p.release + self.follow_up(delay);
                    let amount = if self.chance(FULL_REFUND_SHARE) {
                        p.amount
                    } else {
                        self.rng.gen_range(1..=p.amount)
                    };
                    self.schedule(at, seq, ST_REFUND, amount, p.currency);
                }
                if self.chance(SHIPPED_SHARE) {
                    let delay = self.skewed_delay(SHIP_DELAY_MS, 2);
                    let at = p.release + self.follow_up(delay);
                    self.schedule(at, seq, ST_SHIPPED, 0, 0);
                }
            }
            ST_SHIPPED if self.chance(DELIVERED_SHARE) => {
                let delay = self.skewed_delay(DELIVER_DELAY_MS, 2);
                let at = p.release + self.follow_up(delay);
                self.schedule(at, seq, ST_DELIVERED, 0, 0);
            }
            _ => {}
        }
    }

    /// After a good record: maybe a duplicate of it, maybe an extra bad record.
    fn extras(&mut self, rec: &GeneratedRecord, tb: u64, jitter: u32) {
        if self.chance(self.cfg.duplicate_share) {
            // Stay within the disorder bound: ts_ms is the original's.
            let delay = self.rng.gen_range(0..=self.disorder - jitter) as i64;
            let mut dup = rec.clone();
            dup.kind = RecordKind::Duplicate;
            dup.emit_ms += delay;
            self.side.push(Reverse(Side {
                release: dup.emit_ms,
                tb: tb | DUP_FLAG,
                rec: dup,
            }));
        }
        if self.chance(self.cfg.bad_share) {
            let bad = self.make_bad(rec.emit_ms);
            self.side.push(Reverse(bad));
        }
    }
}

impl Iterator for Traffic {
    type Item = GeneratedRecord;

    fn next(&mut self) -> Option<GeneratedRecord> {
        // Generate orders ahead of the emission clock, far enough that an early
        // payment is never released before something already emitted: emit the
        // earliest entry only once every order up to its release + 3 s exists.
        let source = loop {
            let limit = self.next_order_release() - MAX_EARLY_MS;
            match self.earliest_before(limit) {
                Some((_, source)) => break source,
                None => self.gen_order(),
            }
        };
        let rec = match source {
            Source::Order => {
                let o = self.orders.pop_front().expect("peeked");
                let rec = self.render_order(&o);
                self.extras(&rec, (o.seq << 4) | ST_ORDER, o.jitter);
                rec
            }
            Source::Pending => {
                let p = self.pending.pop().expect("peeked");
                let rec = self.render_pending(&p);
                self.follow_ups(&p);
                self.extras(&rec, p.tb, p.jitter);
                rec
            }
            Source::Side => self.side.pop().expect("peeked").0.rec,
        };
        Some(rec)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

/// `{prefix}{seq}-{4 hex digits}`, e.g. `o-42-9f0c`.
fn push_id(out: &mut Vec<u8>, prefix: &[u8], seq: u64, suffix: u16) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(prefix);
    push_u64(out, seq);
    out.push(b'-');
    for shift in [12, 8, 4, 0] {
        out.push(HEX[(suffix >> shift) as usize & 0xF]);
    }
}

#[cfg(test)]
mod tests;
