//! Exact integer currency conversion to CNY fen, rounding half to even.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One currency of the FX table: its minor-unit exponent and CNY rate × 10^6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Minor-unit exponent (2 for cents, 0 for yen).
    pub exp: u32,
    /// CNY per unit, times 10^6.
    pub rate_micro: i64,
}

/// The conversion table; small, so lookups scan a packed array.
#[derive(Debug, Clone)]
pub struct FxTable {
    entries: Vec<([u8; 3], Rate)>,
}

/// The contract's default rates.
pub fn default_rates() -> BTreeMap<String, Rate> {
    [
        ("CNY", 2, 1_000_000),
        ("USD", 2, 7_100_000),
        ("EUR", 2, 7_750_000),
        ("HKD", 2, 910_000),
        ("JPY", 0, 47_000),
        ("KRW", 0, 5_200),
        ("GBP", 2, 9_050_000),
        ("AUD", 2, 4_650_000),
    ]
    .into_iter()
    .map(|(c, exp, rate_micro)| (c.to_string(), Rate { exp, rate_micro }))
    .collect()
}

impl FxTable {
    /// Builds the table; codes are validated by `Config::validate`.
    pub fn new(rates: &BTreeMap<String, Rate>) -> Self {
        let entries = rates
            .iter()
            .filter_map(|(code, rate)| {
                let b = code.as_bytes();
                (b.len() == 3).then(|| ([b[0], b[1], b[2]], *rate))
            })
            .collect();
        FxTable { entries }
    }

    pub fn rate(&self, currency: &str) -> Option<Rate> {
        // As an array, each entry's test is one comparison, not a slice's.
        let code: [u8; 3] = currency.as_bytes().try_into().ok()?;
        self.entries
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, r)| *r)
    }

    /// Converts `amount_minor` of `currency` to fen; `None` for an unknown currency.
    pub fn to_fen(&self, currency: &str, amount_minor: i64) -> Option<i64> {
        self.rate(currency).map(|r| convert(amount_minor, r))
    }
}

/// `round_half_even(amount_minor × 10^(2−exp) × rate_micro / 10^6)`, exactly.
pub fn convert(amount_minor: i64, rate: Rate) -> i64 {
    let mut num = amount_minor as i128 * rate.rate_micro as i128;
    let mut den: i128 = 1_000_000;
    if rate.exp <= 2 {
        num *= 10i128.pow(2 - rate.exp);
    } else {
        den *= 10i128.pow(rate.exp - 2);
    }
    div_round_half_even(num, den) as i64
}

/// Integer division of a non-negative numerator, rounding ties to even.
fn div_round_half_even(num: i128, den: i128) -> i128 {
    // With the default rates every conversion fits 64 bits: one hardware
    // division then, where i128's takes two library calls (the conversion
    // was 1.5% of the engine's samples, docs/performance.md).
    if let (Ok(n), Ok(d)) = (u64::try_from(num), u64::try_from(den)) {
        let (q, r) = (n / d, n % d);
        return i128::from(q + round_up(q, r, d - r) as u64);
    }
    let q = num.div_euclid(den);
    let r = num.rem_euclid(den);
    q + i128::from(round_up(q as u64, r, den - r))
}

/// Whether a quotient `q` with remainder `r` (and `rest` = divisor − `r`)
/// rounds up: past half, or at half when `q` is odd.
fn round_up<T: Ord>(q: u64, r: T, rest: T) -> bool {
    match r.cmp(&rest) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal => q & 1 == 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> FxTable {
        FxTable::new(&default_rates())
    }

    #[test]
    fn every_default_currency_converts_exactly() {
        let t = table();
        // 1 unit of each currency in its minor units -> fen.
        assert_eq!(t.to_fen("CNY", 100), Some(100));
        assert_eq!(t.to_fen("USD", 100), Some(710));
        assert_eq!(t.to_fen("EUR", 100), Some(775));
        assert_eq!(t.to_fen("HKD", 100), Some(91));
        assert_eq!(t.to_fen("GBP", 100), Some(905));
        assert_eq!(t.to_fen("AUD", 100), Some(465));
        assert_eq!(t.to_fen("JPY", 1000), Some(4700)); // 1000 yen = 47 CNY
        assert_eq!(t.to_fen("KRW", 10000), Some(5200)); // 10000 won = 52 CNY
    }

    #[test]
    fn ties_round_to_even() {
        let t = table();
        // HKD: 1 cent * 0.91 = 0.91 fen -> 1; 50 cents = 45.5 fen -> 46 (even)
        assert_eq!(t.to_fen("HKD", 1), Some(1));
        assert_eq!(t.to_fen("HKD", 50), Some(46));
        // 150 cents = 136.5 fen -> 136 (even)
        assert_eq!(t.to_fen("HKD", 150), Some(136));
        // USD 0.5 -> 1 cent * 7.1 = 7.1 fen -> 7
        assert_eq!(t.to_fen("USD", 1), Some(7));
        // KRW: 1 won = 0.52 fen -> 1; 25 won = 13 fen exactly
        assert_eq!(t.to_fen("KRW", 1), Some(1));
        assert_eq!(t.to_fen("KRW", 25), Some(13));
        // JPY: 1 yen = 4.7 fen -> 5; 5 yen = 23.5 -> 24 (even); 15 yen = 70.5 -> 70
        assert_eq!(t.to_fen("JPY", 1), Some(5));
        assert_eq!(t.to_fen("JPY", 5), Some(24));
        assert_eq!(t.to_fen("JPY", 15), Some(70));
        // EUR: 2 cents = 15.5 fen -> 16; 6 cents = 46.5 -> 46
        assert_eq!(t.to_fen("EUR", 2), Some(16));
        assert_eq!(t.to_fen("EUR", 6), Some(46));
        // GBP: 10 cents = 90.5 -> 90; 30 cents = 271.5 -> 272
        assert_eq!(t.to_fen("GBP", 10), Some(90));
        assert_eq!(t.to_fen("GBP", 30), Some(272));
        // AUD: 10 cents = 46.5 -> 46; 30 cents = 139.5 -> 140
        assert_eq!(t.to_fen("AUD", 10), Some(46));
        assert_eq!(t.to_fen("AUD", 30), Some(140));
    }

    #[test]
    fn largest_amounts_do_not_overflow() {
        let t = table();
        assert_eq!(t.to_fen("GBP", 1_000_000_000_000), Some(9_050_000_000_000));
        assert_eq!(t.to_fen("CNY", 1_000_000_000_000), Some(1_000_000_000_000));
    }

    #[test]
    fn exponent_above_two_divides() {
        // A three-decimal currency at 20 CNY per unit: 1 fils = 0.02 CNY = 2 fen.
        let r = Rate {
            exp: 3,
            rate_micro: 20_000_000,
        };
        assert_eq!(convert(1, r), 2);
        // 0.25 fen ties? 1 fils at 2.5 CNY -> 0.25 fen -> 0
        assert_eq!(
            convert(
                1,
                Rate {
                    exp: 3,
                    rate_micro: 2_500_000
                }
            ),
            0
        );
        // 2 fils at 2.5 CNY -> 0.5 fen -> 0 (even); 6 fils -> 1.5 -> 2
        assert_eq!(
            convert(
                2,
                Rate {
                    exp: 3,
                    rate_micro: 2_500_000
                }
            ),
            0
        );
        assert_eq!(
            convert(
                6,
                Rate {
                    exp: 3,
                    rate_micro: 2_500_000
                }
            ),
            2
        );
    }

    /// The 64-bit division and the 128-bit one agree, ties and both sides
    /// of the 64-bit limit included.
    #[test]
    fn division_in_64_bits_rounds_as_in_128() {
        fn wide(num: i128, den: i128) -> i128 {
            let (q, r) = (num.div_euclid(den), num.rem_euclid(den));
            match (2 * r).cmp(&den) {
                std::cmp::Ordering::Less => q,
                std::cmp::Ordering::Greater => q + 1,
                std::cmp::Ordering::Equal => q + (q & 1),
            }
        }
        let limit = i128::from(u64::MAX);
        let nums = (0..2_000i128).chain([
            limit - 2,
            limit - 1,
            limit,
            limit + 1,
            limit + 2,
            limit * 7 + 3,
        ]);
        let dens = [1i128, 2, 3, 4, 10, 1_000_000, 10_000_000, limit, limit + 1];
        for num in nums {
            for den in dens {
                assert_eq!(
                    div_round_half_even(num, den),
                    wide(num, den),
                    "{num} / {den}"
                );
            }
        }
        // Ties: 5 / 2 = 2.5 -> 2, 7 / 2 = 3.5 -> 4, at both widths.
        assert_eq!(div_round_half_even(5, 2), 2);
        assert_eq!(div_round_half_even(7, 2), 4);
        assert_eq!(
            div_round_half_even(limit * 2 + 1, 2),
            wide(limit * 2 + 1, 2)
        );
    }

    #[test]
    fn unknown_currency_is_none() {
        let t = table();
        assert_eq!(t.to_fen("XYZ", 100), None);
        assert_eq!(t.to_fen("usd", 100), None);
        assert_eq!(t.to_fen("", 100), None);
    }
}
