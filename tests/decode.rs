//! The job's JSON reader against the serde_json baseline it replaced
//! (`gmv::decode::baseline`): for every input, the same event, or a
//! rejection for the same dead-letter reason. Inputs: the scenario fixtures,
//! the generator's records (good and bad), hand-written edge cases of JSON,
//! and a few hundred thousand random edits of generated records. The fuzz
//! target `decode` checks the same on arbitrary bytes (scripts/fuzz.sh).

use gmv::core::fx::{default_rates, FxTable};
use gmv::decode::{baseline, decode};
use gmv::gen::traffic::{Traffic, TrafficConfig};
use gmv::model::InputTopic;

/// Asserts both decoders agree on `value` as a record of every topic; true
/// when the reader accepted it as one.
fn agree(value: &[u8], fx: &FxTable) -> bool {
    let mut accepted = false;
    for topic in InputTopic::ALL {
        let got = decode(topic, value, fx);
        let want = baseline::decode(topic, value, fx);
        assert_eq!(
            got.as_ref().map_err(|r| r.reason),
            want.as_ref().map_err(|r| r.reason),
            "{topic:?} {:?}: {:?} against serde_json's {:?}",
            String::from_utf8_lossy(value),
            got.as_ref().err(),
            want.as_ref().err()
        );
        accepted |= got.is_ok();
    }
    accepted
}

#[test]
fn fixtures_and_generated_records_decode_as_with_serde_json() {
    let fx = FxTable::new(&default_rates());
    let mut n = 0;
    for case in std::fs::read_dir("tests/scenarios").unwrap() {
        let input = case.unwrap().path().join("input.jsonl");
        for line in std::fs::read_to_string(input).unwrap().lines() {
            let Ok(r) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let value = match (&r["raw"], &r["value"]) {
                (serde_json::Value::String(raw), _) => raw.clone().into_bytes(),
                (_, v) if !v.is_null() => serde_json::to_vec(v).unwrap(),
                _ => continue,
            };
            agree(&value, &fx);
            n += 1;
        }
    }
    assert!(n >= 30, "fixture records read: {n}");
    let (mut good, mut bad) = (0, 0);
    for r in Traffic::new(TrafficConfig::default()).take(200_000) {
        match agree(&r.value, &fx) {
            true => good += 1,
            false => bad += 1,
        }
    }
    assert!(
        good > 150_000 && bad > 100,
        "accepted {good}, refused {bad}"
    );
}

#[test]
fn edge_cases_of_json_decode_as_with_serde_json() {
    let fx = FxTable::new(&default_rates());
    let p = |rest: &str| {
        format!(
            r#"{{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":5{rest}"#
        )
    };
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let cases: Vec<String> = vec![
        // Numbers: sign, zero, fractions, exponents, overflow, out of range.
        p(r#","ts_ms":1700000000000}"#),
        p(r#","ts_ms":-0}"#),
        p(r#","ts_ms":0}"#),
        p(r#","ts_ms":01}"#),
        p(r#","ts_ms":1.}"#),
        p(r#","ts_ms":1.0}"#),
        p(r#","ts_ms":1e3}"#),
        p(r#","ts_ms":1E+3}"#),
        p(r#","ts_ms":1e}"#),
        p(r#","ts_ms":-}"#),
        p(r#","ts_ms":1e999}"#),
        p(r#","ts_ms":-1e999}"#),
        p(r#","ts_ms":1e-999}"#),
        p(r#","ts_ms":18446744073709551615}"#),
        p(r#","ts_ms":18446744073709551616}"#),
        p(r#","ts_ms":-9223372036854775808}"#),
        p(r#","ts_ms":-9223372036854775809}"#),
        p(&format!(r#","ts_ms":1{}}}"#, "0".repeat(400))),
        r#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":-0,"ts_ms":1}"#.into(),
        r#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":1e12,"ts_ms":1}"#.into(),
        r#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":1.5e12,"ts_ms":1}"#.into(),
        r#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":-99999999999999999999,"ts_ms":1}"#.into(),
        // serde_json's float is not the nearest one here: 26666666666663.996.
        r#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":26666666666664.000000000000,"ts_ms":1}"#.into(),
        // Wrong types, well formed or not.
        p(r#","ts_ms":"1"}"#),
        p(r#","ts_ms":"1\x"}"#),
        p(r#","ts_ms":true}"#),
        p(r#","ts_ms":tru}"#),
        p(r#","ts_ms":[}"#),
        p(r#","ts_ms":{}"#),
        p(r#","ts_ms":x}"#),
        p(r#","ts_ms":null}"#),
        p(r#","ts_ms":nul}"#),
        p(r#","ts_ms":"#),
        r#"{"payment_id":5,"order_id":"o1"}"#.into(),
        r#"{"payment_id":5x,"order_id":"o1"}"#.into(),
        r#"{"payment_id":-,"order_id":"o1"}"#.into(),
        r#"{"payment_id":1e999,"order_id":"o1"}"#.into(),
        r#"{"payment_id":[[[,"order_id":"o1"}"#.into(),
        r#"{"payment_id":{"a":,"order_id":"o1"}"#.into(),
        r#"{"payment_id":false,"order_id":"o1"}"#.into(),
        r#"{"payment_id":fals,"order_id":"o1"}"#.into(),
        r#"{"payment_id":?,"order_id":"o1"}"#.into(),
        // Duplicates: a known field (before its colon is checked), an unknown one.
        p(r#","ts_ms":1,"ts_ms":2}"#),
        p(r#","ts_ms":1,"ts_ms" 2}"#),
        p(r#","ts_ms":1,"x":1,"x":2}"#),
        // Structure: commas, colons, keys, trailing bytes, whitespace.
        p(r#","ts_ms":1,}"#),
        p(r#","ts_ms":1 "x":1}"#),
        p(r#","ts_ms" 1}"#),
        p(r#",ts_ms:1}"#),
        p(r#","ts_ms":1} "#),
        p(r#","ts_ms":1}x"#),
        p(r#","ts_ms":5x}"#),
        p(r#","ts_ms":1}}"#),
        p(" ,\"ts_ms\" :\t1 \r\n}"),
        "{}".into(),
        "{".into(),
        "{,}".into(),
        " {\"a\":1} ".into(),
        "\x0c{\"a\":1}".into(),
        // Strings: escapes, surrogates, control characters.
        p(r#","ts_ms":1,"order_id":"o1"}"#),
        r#"{"payment_id":"p\u0031","order_\u0069d":"o\"1","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":1}"#.into(),
        r#"{"payment_id":"p\ud83d\ude00","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":1}"#.into(),
        r#"{"payment_id":"p\ud83d","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":1}"#.into(),
        r#"{"payment_id":"p\ud83dx","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":1}"#.into(),
        r#"{"payment_id":"p\ud83d\u0041","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":1}"#.into(),
        r#"{"payment_id":"p\ude00","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":1}"#.into(),
        r#"{"payment_id":"p\u12","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":1}"#.into(),
        r#"{"payment_id":"p\q","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":1}"#.into(),
        "{\"payment_id\":\"p\x01\",\"order_id\":\"o1\"}".into(),
        p(r#","ts_ms":1,"x":"\ud83d"}"#),
        p(r#","ts_ms":1,"x":"\ude00\q"}"#),
        p("\",\"ts_ms\":1,\"x\":\"\x1f\"}"),
        // Skipped values of every shape, deep nesting, broken nesting.
        p(&format!(r#","ts_ms":1,"x":{deep}}}"#)),
        p(r#","ts_ms":1,"x":{"a":[1,{"b":null},true,false,-1.5e-3,"s\n"]}}"#),
        p(r#","ts_ms":1,"x":[1,]}"#),
        p(r#","ts_ms":1,"x":[1 2]}"#),
        p(r#","ts_ms":1,"x":{"a":1,}}"#),
        p(r#","ts_ms":1,"x":{"a" 1}}"#),
        p(r#","ts_ms":1,"x":{1:1}}"#),
        p(r#","ts_ms":1,"x":[}"#),
        p(r#","ts_ms":1,"x":{]}"#),
        p(r#","ts_ms":1,"x":[01]}"#),
        p(r#","ts_ms":1,"x":1e999}"#),
        p(r#","ts_ms":1,"x":[]}"#),
        p(r#","ts_ms":1,"x":{}}"#),
        p(r#","ts_ms":1,"x":"#),
        p(r#","ts_ms":1,"x":[[[[["#),
        format!(r#"{{"order_id":"h-7","user_id":"u","brand_id":{deep},"channel_id":null,"country":"CN","device":"pc","currency":"CNY","amount_minor":1,"ts_ms":1}}"#),
        r#"{"order_id":"o","user_id":"u","brand_id":"b","channel_id":null,"country":"CN","device":"pc","currency":"CNY","amount_minor":1,"ts_ms":1}"#.into(),
        r#"{"order_id":"o","user_id":"u","brand_id":"b","country":"CN","device":"pc","currency":"CNY","amount_minor":1,"ts_ms":1}"#.into(),
        r#"{"order_id":"o","user_id":"u","brand_id":"b","channel_id":7,"country":"CN","device":"pc","currency":"CNY","amount_minor":1,"ts_ms":1}"#.into(),
        r#"{"delivery_id":"d","order_id":"o","status":"shipped","ts_ms":1}"#.into(),
        r#"{"delivery_id":"d","order_id":"o","status":null,"ts_ms":1}"#.into(),
        // Keys: escaped (the same name, so a duplicate too), a name's prefix or
        // extension, one byte off, near the end of the input (under 16 bytes left).
        r#"{"delivery_id":"d","order\u005fid":"o","status":"shipped","ts_ms":1}"#.into(),
        r#"{"delivery_id":"d","order_id":"o","order\u005fid":"o","status":"shipped","ts_ms":1}"#.into(),
        r#"{"delivery_id":"d","order_i":"o","order_idx":"o","order_id":"o","status":"shipped","ts_ms":1}"#.into(),
        r#"{"delivery_id":"d","order_id":"o","statuS":"shipped","ts_ms":1}"#.into(),
        r#"{"delivery_id":"d","order_id":"o","status":"shipped","ts_ms":1,"ts_ms":2}"#.into(),
        r#"{"delivery_id":"d","order_id":"o","status":"shipped","ts_ms":1,"ts_ms"#.into(),
        r#"{"delivery_id":"d","order_id":"o","status":"shipped","ts_ms":1,"ts_m"#.into(),
        r#"{"delivery_id":"d","order_id":"o","status":"shipped","ts_ms":1,"ts_ms":"#.into(),
        r#"{"ts_ms":1,"status":"shipped","order_id":"o","delivery_id":"d"}"#.into(),
        // The next field's `,"name":` read in one comparison, or not: with
        // whitespace in it, a field repeated right after itself, its value
        // missing, a field read out of order then repeated where expected.
        r#"{"payment_id":"p1","order_id":"o1","currency":"CNY","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":1}"#.into(),
        r#"{"delivery_id":"d", "order_id":"o","status":"shipped","ts_ms":1}"#.into(),
        r#"{"delivery_id":"d","order_id" :"o","status":"shipped","ts_ms":1}"#.into(),
        r#"{"delivery_id":"d","order_id":"o","status":"shipped","status":"x","ts_ms":1}"#.into(),
        r#"{"delivery_id":"d","order_id":,"status":"shipped","ts_ms":1}"#.into(),
        r#"{"delivery_id":"d","order_id":"#.into(),
    ];
    for c in &cases {
        agree(c.as_bytes(), &fx);
    }
    // Invalid UTF-8 inside a string, and outside one.
    agree(b"{\"payment_id\":\"p\xff\"}", &fx);
    agree(b"{\"payment_id\":\"p\"}\xff", &fx);
    // The same past the first 32 bytes, where the check reads whole words, and
    // valid characters of two, three and four bytes there.
    let long = r#"{"payment_id":"p","order_id":"o","kind":"paid","amount_minor":1,"currency":"CNY","ts_ms":1,"x":"X"}"#;
    for bad in [&b"\xff"[..], b"\xe4\xb8", b"\x80"] {
        for at in [40, 47, 95] {
            let mut v = long.as_bytes().to_vec();
            v.splice(at..at, bad.iter().copied());
            agree(&v, &fx);
        }
    }
    for good in ["é", "中", "😀"] {
        agree(long.replace('X', good).as_bytes(), &fx);
    }
}

/// Random edits of generated records: bytes deleted, inserted (JSON's
/// significant ones most), repeated and cut, many per record.
#[test]
fn random_edits_decode_as_with_serde_json() {
    let fx = FxTable::new(&default_rates());
    const BYTES: &[u8] = b"{}[]\",:\\ 0123456789eE.-+ntfrul\"\"\"\\u00dX";
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let records: Vec<Vec<u8>> = Traffic::new(TrafficConfig::default())
        .take(2_000)
        .map(|r| r.value)
        .collect();
    let mut accepted = 0;
    for round in 0..150 {
        for r in &records {
            let mut v = r.clone();
            for _ in 0..=round % 4 {
                if v.is_empty() {
                    break;
                }
                let at = next(v.len());
                match next(5) {
                    0 => {
                        v.remove(at);
                    }
                    1 => v.insert(at, BYTES[next(BYTES.len())]),
                    2 => {
                        let end = (at + 1 + next(8)).min(v.len());
                        let span = v[at..end].to_vec();
                        v.splice(at..at, span);
                    }
                    3 => v.truncate(at),
                    _ => v[at] = BYTES[next(BYTES.len())],
                }
            }
            accepted += agree(&v, &fx) as usize;
        }
    }
    assert!(accepted > 10_000, "some edits still decode: {accepted}");
}
