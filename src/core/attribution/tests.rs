use super::*;
use crate::core::state::{Delta, PartialEntry};

fn src(topic: InputTopic, offset: i64) -> Source {
    Source {
        topic,
        partition: 2,
        offset,
    }
}

/// Test times are relative to 2024-11-11T00:00:00Z: the contract rejects
/// event times before 2000 and ahead of the wall clock, which is `NOW`.
const T0: i64 = 1_731_283_200_000;
const NOW: i64 = T0 + 100_000_000;

/// Feeds `value` with its `ts_ms` moved by `T0`, keyed by its `order_id`.
fn feed(
    a: &mut AttributionTask,
    topic: InputTopic,
    offset: i64,
    value: &[u8],
    stats: &mut Stats,
    out: &mut Vec<Output>,
) {
    let mut v: serde_json::Value = serde_json::from_slice(value).unwrap();
    v["ts_ms"] = (T0 + v["ts_ms"].as_i64().unwrap()).into();
    let key = v["order_id"].as_str().unwrap().to_string();
    let value = serde_json::to_vec(&v).unwrap();
    a.on_record(
        src(topic, offset),
        Some(key.as_bytes()),
        Some(&value),
        stats,
        out,
    );
}

#[test]
fn state_round_trips_through_the_changelog() {
    let cfg = Arc::new(EngineConfig::default());
    let mut a = AttributionTask::new(2, cfg.clone(), NOW);
    a.track_changes();
    let (mut stats, mut out) = (Stats::default(), vec![]);
    let order = br#"{"order_id":"o1","user_id":"u","brand_id":"b1","channel_id":"c1","country":"FR","device":"pc","currency":"EUR","amount_minor":100,"ts_ms":10000}"#;
    let pay = br#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"EUR","amount_minor":100,"ts_ms":11000}"#;
    let early = br#"{"payment_id":"p2","order_id":"o2","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":12000}"#;
    let ship = br#"{"delivery_id":"d1","order_id":"o1","status":"shipped","ts_ms":13000}"#;
    feed(&mut a, InputTopic::Orders, 0, order, &mut stats, &mut out);
    feed(&mut a, InputTopic::Payments, 0, pay, &mut stats, &mut out);
    feed(&mut a, InputTopic::Payments, 1, early, &mut stats, &mut out);
    feed(
        &mut a,
        InputTopic::Deliveries,
        0,
        ship,
        &mut stats,
        &mut out,
    );
    let changes = a.take_changes();
    let keys: Vec<&[u8]> = changes.iter().map(|(k, _)| &k[..]).collect();
    assert_eq!(
        keys,
        [&b"keys"[..], b"s00000000000000000001.000000", b"~clock"],
        "the keys of the ids' fingerprints, one batch (o1, o2, p1, p2, d1) and the clock"
    );

    let mut b = AttributionTask::new(2, cfg, NOW);
    for (k, v) in &changes {
        b.restore(k, v.as_deref().unwrap()).unwrap();
    }
    assert_eq!(b.sizes(), a.sizes());
    assert_eq!(b.watermark_ms(), a.watermark_ms());
    assert_eq!(
        b.joins.order("o1").map(|o| o.first_paid_ms),
        Some(T0 + 11_000)
    );
    assert_eq!(
        b.names.borrow()[1].name(b.joins.order("o1").unwrap().attribution.channel),
        "c1"
    );
    // The keys are written once: neither task writes them again. Put back
    // into a task that holds ids already, they are an error, not a mix.
    b.track_changes();
    for t in [&mut a, &mut b] {
        t.joins.touch(t.joins.fingerprint("o1"));
        let again = t.take_changes();
        assert!(!again.is_empty() && again.iter().all(|(k, _)| k != b"keys"));
    }
    let err = b
        .restore(b"keys", changes[0].1.as_deref().unwrap())
        .unwrap_err();
    assert!(err.contains("after ids"), "{err}");
    // The restored task knows the duplicates and releases the waiting payment to its order.
    a.take_partials();
    for t in [&mut a, &mut b] {
        feed(t, InputTopic::Payments, 2, pay, &mut stats, &mut out);
        let o2 = br#"{"order_id":"o2","user_id":"u","brand_id":"b2","channel_id":null,"country":"CN","device":"pc","currency":"CNY","amount_minor":5,"ts_ms":12500}"#;
        feed(t, InputTopic::Orders, 1, o2, &mut stats, &mut out);
    }
    let by_name = |mut v: Vec<PartialEntry>| {
        v.sort_by(|x, y| (x.dim, &x.key, x.bucket_ms).cmp(&(y.dim, &y.key, y.bucket_ms)));
        v
    };
    // The restored task interned the names in another order: compare by name.
    let (pa, pb) = (by_name(a.take_partials()), by_name(b.take_partials()));
    assert_eq!(pa, pb);
    assert!(pb.iter().any(|e| e.key == "b2" && e.delta.gmv_fen == 5));
    assert!(
        !pb.iter().any(|e| e.delta.paid_orders > 0 && e.key == "b1"),
        "p1 was a duplicate"
    );
}

use std::collections::BTreeMap;

/// Sums of the partial sums, by (dim, key, bucket).
type Sums = BTreeMap<(Dim, String, i64), Delta>;

fn add(sums: &mut Sums, entries: Vec<PartialEntry>) {
    for e in entries {
        let d = sums
            .entry((e.dim, e.key.to_string(), e.bucket_ms))
            .or_default();
        d.gmv_fen += e.delta.gmv_fen;
        d.refund_fen += e.delta.refund_fen;
        d.paid_orders += e.delta.paid_orders;
        d.placed_orders += e.delta.placed_orders;
        d.shipped_orders += e.delta.shipped_orders;
        d.delivered_orders += e.delta.delivered_orders;
    }
}

/// Runs `records` through one task without a crash, then again committing
/// every few hundred records and crashing (losing what is not committed) at
/// random, each restart restoring the compacted changelog and replaying;
/// asserts the sums are the same. Returns (crashes, batches written, the
/// changelog's keys at the end).
fn crash_and_compare(
    cfg: EngineConfig,
    records: &[crate::gen::traffic::GeneratedRecord],
) -> (usize, u64, usize) {
    use rand::{Rng, SeedableRng};
    let cfg = Arc::new(cfg);
    let feed = |t: &mut AttributionTask, i: usize, stats: &mut Stats, out: &mut Vec<Output>| {
        let r = &records[i];
        t.on_record(
            Source {
                topic: r.topic,
                partition: 0,
                offset: i as i64,
            },
            r.key.as_deref().map(str::as_bytes),
            Some(&r.value),
            stats,
            out,
        );
    };
    // The wall clock at the end of the traffic: a live job's, as far as
    // pinning goes (nothing here ticks, so no partition turns idle).
    let now = records.iter().map(|r| r.emit_ms).max().unwrap_or(0);
    let (mut stats, mut out) = (Stats::default(), vec![]);
    let mut want = Sums::new();
    let mut t = AttributionTask::new(0, cfg.clone(), now);
    for i in 0..records.len() {
        feed(&mut t, i, &mut stats, &mut out);
    }
    add(&mut want, t.take_partials());

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut got = Sums::new();
    let mut changelog: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let (mut committed, mut n) = (0, 0);
    let r_topic = |i: usize| records[i].topic.index();
    let mut t = AttributionTask::new(0, cfg.clone(), now);
    t.track_changes();
    let (mut i, mut crashes) = (0, 0);
    while i < records.len() {
        feed(&mut t, i, &mut stats, &mut out);
        i += 1;
        if rng.gen_ratio(1, 300) || i == records.len() {
            add(&mut got, t.take_partials());
            n += 1;
            state::compact_into(&mut changelog, t.take_changes());
            assert_eq!(t.next_offsets()[r_topic(i - 1)], Some(i as i64));
            committed = i;
        } else if rng.gen_ratio(1, 1_000) {
            crashes += 1;
            t = AttributionTask::new(0, cfg.clone(), now);
            for (k, v) in &changelog {
                t.restore(k, v).unwrap();
            }
            t.track_changes();
            // Every input resumes at its committed offset.
            i = committed;
        }
    }
    let diff: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .take(5)
        .map(|(k, v)| format!("{k:?}: want {v:?} got {:?}", got.get(k)))
        .collect();
    assert!(diff.is_empty(), "{diff:#?}");
    assert_eq!(want.len(), got.len());
    (crashes, n, changelog.len())
}

fn traffic(seed: u64, n: usize, orders_per_sec: f64) -> Vec<crate::gen::traffic::GeneratedRecord> {
    use crate::gen::traffic::{Traffic, TrafficConfig};
    Traffic::new(TrafficConfig {
        seed,
        orders_per_sec,
        brands: 50,
        ..TrafficConfig::default()
    })
    .take(n)
    .collect()
}

#[test]
fn crashes_between_commits_change_no_sum() {
    let (crashes, _, _) = crash_and_compare(EngineConfig::default(), &traffic(11, 40_000, 2_000.0));
    assert!(crashes > 10, "{crashes} crashes");
}

/// With TTLs of seconds, orders and ids are swept, payments time out, and
/// whole batches of the changelog get tombstones while the crashes go on.
#[test]
fn crashes_with_short_ttls_change_no_sum_and_the_changelog_stays_small() {
    let mut cfg = EngineConfig::default();
    cfg.time.dedup_ttl_ms = 2_000;
    cfg.time.order_ttl_ms = 3_000;
    cfg.time.join_timeout_ms = 1_000;
    cfg.time.allowed_lateness_ms = 1_000;
    // Deliveries come minutes after payments: without these (for orders that
    // never come) the deliveries partition would hold the watermark back.
    // And one order from a clock a year ahead (accepted only with a
    // time.max_future that large): it is never swept, and must not keep
    // the batches after it from their tombstones.
    cfg.time.max_future_ms = 400 * 86_400_000;
    let mut records = Vec::new();
    for (i, r) in traffic(12, 60_000, 100.0).into_iter().enumerate() {
        if i == 100 {
            records.push(crate::gen::traffic::GeneratedRecord {
                topic: InputTopic::Orders,
                key: Some("future".into()),
                value: format!(
                    r#"{{"order_id":"future","user_id":"u","brand_id":"b","channel_id":null,"country":"CN","device":"pc","currency":"CNY","amount_minor":5,"ts_ms":{}}}"#,
                    r.emit_ms + 365 * 86_400_000
                )
                .into_bytes(),
                ..r.clone()
            });
        }
        if i % 200 == 0 {
            records.push(crate::gen::traffic::GeneratedRecord {
                topic: InputTopic::Deliveries,
                key: Some(format!("none{i}")),
                value: format!(
                    r#"{{"delivery_id":"dx{i}","order_id":"none{i}","status":"shipped","ts_ms":{}}}"#,
                    r.emit_ms
                )
                .into_bytes(),
                ..r.clone()
            });
        }
        records.push(r);
    }
    let (crashes, written, kept) = crash_and_compare(cfg, &records);
    assert!(crashes > 10, "{crashes} crashes");
    // 60,000 records of about 30 s of event time; about 4 s of it live at the end.
    assert!(
        kept * 4 < written as usize,
        "{kept} changelog keys kept of {written} batches written"
    );
}

#[test]
fn forgotten_ids_stay_forgotten_after_a_restore_and_dead_batches_get_tombstones() {
    let mut cfg = EngineConfig::default();
    cfg.time.dedup_ttl_ms = 1_000;
    cfg.time.order_ttl_ms = 1_000;
    let cfg = Arc::new(cfg);
    let mut a = AttributionTask::new(2, cfg.clone(), NOW);
    a.track_changes();
    let (mut stats, mut out) = (Stats::default(), vec![]);
    let pay = |id: &str, ts: i64| {
        format!(
            r#"{{"payment_id":"{id}","order_id":"x{id}","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":{ts}}}"#
        )
    };
    let p1 = pay("p1", 1_000);
    feed(
        &mut a,
        InputTopic::Payments,
        0,
        p1.as_bytes(),
        &mut stats,
        &mut out,
    );
    let first = a.take_changes();
    let batch = |c: &[(Vec<u8>, Option<Vec<u8>>)]| {
        c.iter()
            .filter(|(k, v)| k[0] == batch_log::BATCH_PREFIX && v.is_some())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    let first_batch = batch(&first);
    assert_eq!(first_batch.len(), 1);
    // Far later on every partition: p1 is forgotten, its payment times out to unknown.
    for t in InputTopic::ALL {
        let v = match t {
            InputTopic::Payments => pay("p9", 10_000_000),
            InputTopic::Orders => r#"{"order_id":"o9","user_id":"u","brand_id":"b","channel_id":null,"country":"CN","device":"pc","currency":"CNY","amount_minor":5,"ts_ms":10000000}"#.into(),
            InputTopic::Deliveries => r#"{"delivery_id":"d9","order_id":"o9","status":"shipped","ts_ms":10000000}"#.into(),
        };
        feed(&mut a, t, 5, v.as_bytes(), &mut stats, &mut out);
    }
    assert_eq!(stats.join_timeouts[InputTopic::Payments.index()], 1);
    let second = a.take_changes();
    // The first batch held only what is now gone: a tombstone, in the same transaction.
    assert!(
        second.contains(&(first_batch[0].0.clone(), None)),
        "{second:?}"
    );
    // A restore from both batches (as an uncompacted log holds them) does not
    // bring p1 or its waiting payment back: the new batch says the payment's
    // order id is forgotten (its expiry is written), and p1, swept (sweeps are
    // not written), is swept again once the restore ends.
    let mut b = AttributionTask::new(2, cfg, NOW);
    for (k, v) in first_batch.iter().chain(&batch(&second)) {
        b.restore(k, v.as_deref().unwrap()).unwrap();
    }
    for (k, v) in &second {
        if k[0] != batch_log::BATCH_PREFIX {
            b.restore(k, v.as_deref().unwrap()).unwrap();
        }
    }
    assert_eq!(b.payment_ids.len(), 2, "p1 is back until the restore ends");
    b.track_changes();
    assert_eq!(b.sizes(), a.sizes());
    assert!(b.joins.order("xp1").is_none() && b.payment_ids.len() == 1);
    assert!(b
        .restore(b"op1", b"")
        .unwrap_err()
        .contains("cannot be restored"));
}

#[test]
fn no_changelog_record_exceeds_the_record_limit() {
    // The smallest limit allowed, one order id with the most events waiting
    // (at the largest amounts and times), and many ids of the largest size.
    let cfg = EngineConfig {
        max_record_bytes: crate::config::MIN_MAX_RECORD_BYTES as usize,
        ..EngineConfig::default()
    };
    let mut a = AttributionTask::new(2, Arc::new(cfg), NOW);
    a.track_changes();
    let (mut stats, mut out) = (Stats::default(), vec![]);
    let waiting_for = "w".repeat(64);
    for i in 0..crate::core::join::MAX_WAITING_PER_ORDER + 10 {
        let v = format!(
            r#"{{"payment_id":"{i:064}","order_id":"{waiting_for}","kind":"refund","currency":"CNY","amount_minor":1000000000000,"ts_ms":99999999}}"#
        );
        feed(
            &mut a,
            InputTopic::Payments,
            i as i64,
            v.as_bytes(),
            &mut stats,
            &mut out,
        );
    }
    for i in 0..5_000 {
        let v = format!(
            r#"{{"order_id":"{i:064}","user_id":"u","brand_id":"{i:064}","channel_id":"{i:064}","country":"CN","device":"pc","currency":"CNY","amount_minor":5,"ts_ms":99999999}}"#
        );
        feed(
            &mut a,
            InputTopic::Orders,
            i,
            v.as_bytes(),
            &mut stats,
            &mut out,
        );
    }
    assert_eq!(stats.join_overflows[InputTopic::Payments.index()], 10);
    let changes = a.take_changes();
    assert!(changes.len() > 3, "{} records", changes.len());
    for (k, v) in &changes {
        let size = k.len() + v.as_ref().map_or(0, Vec::len);
        assert!(
            size <= crate::config::MIN_MAX_RECORD_BYTES as usize,
            "{size} bytes"
        );
    }
}

/// Each order's names and times, by name, as a task holds them.
fn orders_by_name(t: &AttributionTask, ids: &[String]) -> Vec<(String, String, String, i64, i64)> {
    let names = t.names.borrow();
    ids.iter()
        .map(|id| {
            let o = t.joins.order(id).unwrap_or_else(|| panic!("{id} restored"));
            let a = o.attribution;
            let channel = match a.channel {
                NO_CHANNEL => "-".to_string(),
                c => names[1].name(c).to_string(),
            };
            (
                names[0].name(a.brand).to_string(),
                channel,
                names[2].name(a.country).to_string(),
                o.ts_ms,
                o.first_paid_ms,
            )
        })
        .collect()
}

#[test]
fn names_numbered_in_each_chunk_restore_across_chunks_and_keep_entries_small() {
    // The smallest chunks allowed: 3,000 orders span several, each chunk
    // numbering the names it uses anew. Paid and unpaid, with and without a channel.
    let cfg = Arc::new(EngineConfig {
        max_record_bytes: crate::config::MIN_MAX_RECORD_BYTES as usize,
        ..EngineConfig::default()
    });
    let mut a = AttributionTask::new(2, cfg.clone(), NOW);
    a.track_changes();
    let (mut stats, mut out) = (Stats::default(), vec![]);
    let n = 3_000;
    let ids: Vec<String> = (0..n).map(|i| format!("o-{i}-abcd")).collect();
    for (i, id) in ids.iter().enumerate() {
        let channel = match i % 3 {
            0 => "null".to_string(),
            c => format!(r#""live-{c}""#),
        };
        let v = format!(
            r#"{{"order_id":"{id}","user_id":"u","brand_id":"brand-{}","channel_id":{channel},"country":"{}","device":"pc","currency":"CNY","amount_minor":5,"ts_ms":{}}}"#,
            i % 7,
            ["CN", "FR", "BR"][i % 2],
            10_000 + i as i64
        );
        feed(
            &mut a,
            InputTopic::Orders,
            i as i64,
            v.as_bytes(),
            &mut stats,
            &mut out,
        );
        if i % 2 == 0 {
            let p = format!(
                r#"{{"payment_id":"p-{i}","order_id":"{id}","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":{}}}"#,
                10_500 + i as i64
            );
            feed(
                &mut a,
                InputTopic::Payments,
                i as i64,
                p.as_bytes(),
                &mut stats,
                &mut out,
            );
        }
    }
    let changes = a.take_changes();
    let chunks: Vec<&Vec<u8>> = changes
        .iter()
        .filter(|(k, _)| k.first() == Some(&batch_log::BATCH_PREFIX))
        .map(|(_, v)| v.as_ref().unwrap())
        .collect();
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let bytes: usize = chunks.iter().map(|v| v.len()).sum();
    // An order's entry: its kind, its id's fingerprint (10 bytes), a name
    // number per dimension, two times as short differences and its waiting
    // list; a payment id's with its time. Names spelled out in each entry
    // and whole times made an order's entry about 50 bytes, and its id
    // spelled out (12 bytes here) 24.
    let entries = n + n / 2;
    assert!(bytes < entries * 20, "{bytes} bytes for {entries} entries");
    let mut b = AttributionTask::new(2, cfg.clone(), NOW);
    for (k, v) in &changes {
        b.restore(k, v.as_deref().unwrap()).unwrap();
    }
    assert_eq!(b.sizes(), a.sizes());
    assert_eq!(orders_by_name(&b, &ids), orders_by_name(&a, &ids));
    let paid = orders_by_name(&b, &ids[..2]);
    assert_eq!(paid[0].4, T0 + 10_500, "paid");
    assert_eq!(paid[1].4, i64::MAX, "not paid");
    assert_eq!(paid[0].1, "-");

    // The other half paid in the next commit: each order's entry is its first
    // payment's time alone (its kind, fingerprint and a short difference),
    // not the order again (about 23 bytes here).
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        let p = format!(
            r#"{{"payment_id":"p-{i}","order_id":"{id}","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":{}}}"#,
            20_000 + i as i64
        );
        let offset = (n + i) as i64;
        feed(
            &mut a,
            InputTopic::Payments,
            offset,
            p.as_bytes(),
            &mut stats,
            &mut out,
        );
    }
    let later = a.take_changes();
    let bytes: usize = later
        .iter()
        .filter(|(k, _)| k.first() == Some(&batch_log::BATCH_PREFIX))
        .map(|(_, v)| v.as_ref().unwrap().len())
        .sum();
    assert!(bytes < n * 16, "{bytes} bytes for {n} entries");
    let mut c = AttributionTask::new(2, cfg, NOW);
    for (k, v) in changes.iter().chain(&later) {
        c.restore(k, v.as_deref().unwrap()).unwrap();
    }
    assert_eq!(c.sizes(), a.sizes());
    assert_eq!(orders_by_name(&c, &ids), orders_by_name(&a, &ids));
    assert_eq!(
        orders_by_name(&c, &ids[1..2])[0].4,
        T0 + 20_001,
        "paid later"
    );
}

#[test]
fn a_changelog_of_the_first_batch_format_still_restores() {
    // Version 1: names spelled out, times whole, `i64::MAX` while not paid.
    let mut v1 = vec![1u8, b'o'];
    let waiting: Vec<Waiting> = vec![];
    let order = ("b1", Some("c1"), "FR", T0 + 10_000, T0 + 11_000);
    v1.extend(postcard::to_stdvec(&("o1", Some((Some(order), &waiting)))).unwrap());
    v1.push(b'o');
    let unpaid = ("b2", None::<&str>, "CN", T0 + 12_000, i64::MAX);
    v1.extend(postcard::to_stdvec(&("o2", Some((Some(unpaid), &waiting)))).unwrap());
    v1.push(b'p');
    v1.extend(postcard::to_stdvec(&("p1", Some(T0 + 11_000))).unwrap());
    let mut t = AttributionTask::new(2, Arc::new(EngineConfig::default()), NOW);
    t.restore(b"s00000000000000000001.000000", &v1).unwrap();
    let ids = ["o1".to_string(), "o2".to_string()];
    assert_eq!(
        orders_by_name(&t, &ids),
        [
            (
                "b1".into(),
                "c1".into(),
                "FR".into(),
                T0 + 10_000,
                T0 + 11_000
            ),
            ("b2".into(), "-".into(), "CN".into(), T0 + 12_000, i64::MAX)
        ]
    );
    assert_eq!(t.sizes(), (2, 0, 1));
    // Version 2: ids spelled out too, times from the chunk's base (here 0).
    let mut v2 = vec![2u8, 0, b'p'];
    v2.extend(postcard::to_stdvec(&("p2", Some(T0 + 11_500))).unwrap());
    t.restore(b"s00000000000000000002.000000", &v2).unwrap();
    assert_eq!(t.sizes(), (2, 0, 2));
    let (mut stats, mut out) = (Stats::default(), vec![]);
    let again = br#"{"payment_id":"p2","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":11500}"#;
    feed(&mut t, InputTopic::Payments, 0, again, &mut stats, &mut out);
    assert_eq!(stats.duplicates[1], 1, "p2 was restored: a duplicate");
    // A name number its chunk never gave is an error, not a wrong name.
    let mut v2 = vec![2u8, 0, b'o'];
    let bad = (0u32, None::<u32>, 0u32, 0i64, None::<i64>);
    v2.extend(postcard::to_stdvec(&("o3", Some((Some(bad), &waiting)))).unwrap());
    let err = t.restore(b"s00000000000000000003.000000", &v2).unwrap_err();
    assert!(err.contains("not given in its chunk"), "{err}");
}

/// The key's comparison with the order id answers as `==` does, for every
/// length from 0 to 40 and a single byte changed at any place.
#[test]
fn keys_compare_with_ids_as_equality_does() {
    for n in 0..=40usize {
        let a: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
        assert!(same_bytes(&a, &a.clone()), "{n}");
        assert!(
            !same_bytes(&a, &a[..n.saturating_sub(1)]) || n == 0,
            "{n}: shorter"
        );
        for at in 0..n {
            let mut b = a.clone();
            b[at] ^= 0x20;
            assert!(!same_bytes(&a, &b), "{n}: byte {at}");
        }
    }
}
