//! Scenario tests: each folder under tests/scenarios/ holds `input.jsonl`
//! (records, in arrival order), `expected.json` (the final state of the
//! upsert topics, milestones and dead letters, worked out by hand) and an
//! optional `config.toml`. A new case is a new folder, not new code. A record
//! is keyed by its `order_id` unless its line gives `key` (null: no key); the
//! wall clock starts at `clock_ms` in `expected.json`, by default the latest
//! event time of the input.
//!
//! Cases marked `"shuffle": true` are also replayed in several arrival orders
//! that keep the disorder within `max_out_of_orderness`; the final state must
//! not change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use gmv::config::{Config, Overrides};
use gmv::core::output::Output;
use gmv::core::LocalJob;
use gmv::model::{InputTopic, Source};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

struct Record {
    topic: InputTopic,
    /// The line's `key` (null: none), else the value's `order_id`, as producers key them.
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    ts_ms: i64,
}

fn topic(name: &str) -> InputTopic {
    *InputTopic::ALL
        .iter()
        .find(|t| t.label() == name)
        .unwrap_or_else(|| panic!("unknown topic {name}"))
}

fn load_input(dir: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(dir.join("input.jsonl")).expect("input.jsonl");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: {e}: {line}", dir.display()));
            let t = topic(v["topic"].as_str().expect("topic"));
            let value = if let Some(raw) = v.get("raw") {
                raw.as_str().unwrap().as_bytes().to_vec()
            } else if let Some(b64) = v.get("raw_base64") {
                base64::engine::general_purpose::STANDARD
                    .decode(b64.as_str().unwrap())
                    .unwrap()
            } else {
                let mut obj = v["value"].clone();
                if let Some(pad) = v.get("pad_bytes").and_then(Value::as_u64) {
                    obj["pad"] = Value::String("x".repeat(pad as usize));
                }
                serde_json::to_vec(&obj).unwrap()
            };
            let ts_ms = v["value"]["ts_ms"].as_i64().unwrap_or(0);
            let key = match v.get("key") {
                Some(k) => k.as_str().map(|k| k.as_bytes().to_vec()),
                None => v["value"]["order_id"]
                    .as_str()
                    .map(|k| k.as_bytes().to_vec()),
            };
            Record {
                topic: t,
                key,
                value,
                ts_ms,
            }
        })
        .collect()
}

/// The final state a reader of the output topics ends with.
#[derive(Debug, Clone, PartialEq)]
struct FinalState {
    windows: BTreeMap<String, Vec<i64>>,
    totals: BTreeMap<String, Vec<i64>>,
    milestones: Vec<(String, i64, i64)>,
    dead_letters: Vec<(String, i64, String)>,
}

/// `clock_ms`: the wall clock when the first record is read.
fn run(cfg: &Config, records: &[&Record], clock_ms: i64) -> FinalState {
    // The production path: stage one, commit protocol, repartition, stage two.
    let mut now = clock_ms;
    let mut engine = LocalJob::new(cfg.engine(), &[0], 1, now);
    let mut out = Vec::new();
    let mut offsets = [0i64; 3];
    let mut windows: BTreeMap<String, (Vec<i64>, u64, bool)> = BTreeMap::new();
    let mut totals: BTreeMap<String, (Vec<i64>, u64)> = BTreeMap::new();
    let mut milestones = Vec::new();
    let mut dead_letters = Vec::new();
    let mut collect = |out: &mut Vec<Output>| {
        for o in out.drain(..) {
            match o {
                Output::Window(w) => {
                    let key = format!(
                        "{}|{}|{}|{}",
                        w.dim.as_str(),
                        w.key,
                        w.window_size_ms,
                        w.window_start_ms
                    );
                    let prev = windows.get(&key);
                    assert!(
                        prev.is_none_or(|p| !p.2),
                        "{key}: an update followed a final one"
                    );
                    assert!(
                        prev.is_none_or(|p| w.revision == p.1 + 1),
                        "{key}: revision must grow by one"
                    );
                    windows.insert(
                        key,
                        (
                            vec![w.gmv_fen as i64, w.refund_fen as i64, w.paid_orders as i64],
                            w.revision,
                            w.is_final,
                        ),
                    );
                }
                Output::Total(record) => {
                    let t = &record.totals;
                    let key = format!("{}|{}", record.dim.as_str(), record.key);
                    let prev = totals.get(&key);
                    assert!(
                        prev.is_none_or(|p| record.revision == p.1 + 1),
                        "{key}: revision must grow by one"
                    );
                    let v = vec![
                        t.gmv_fen as i64,
                        t.refund_fen as i64,
                        t.paid_orders as i64,
                        t.placed_orders as i64,
                        t.shipped_orders as i64,
                        t.delivered_orders as i64,
                    ];
                    totals.insert(key, (v, record.revision));
                }
                Output::Milestone(m) => milestones.push((
                    format!("{}|{}|{}", m.dim.as_str(), m.key, m.threshold_fen),
                    m.crossed_at_ms,
                    m.gmv_fen as i64,
                )),
                Output::DeadLetter(d) => dead_letters.push((
                    d.source.topic.label().to_string(),
                    d.source.offset,
                    d.reason.as_str().to_string(),
                )),
                Output::PayToDelivery { .. } => {}
            }
        }
    };
    for r in records {
        let offset = &mut offsets[r.topic.index()];
        let src = Source {
            topic: r.topic,
            partition: 0,
            offset: *offset,
        };
        *offset += 1;
        engine
            .engine_mut()
            .on_record(src, r.key.as_deref(), Some(&r.value), &mut out);
        now += 1;
        engine.on_tick(now, &mut out);
        collect(&mut out);
    }
    // End of input: every partition goes idle, everything closes.
    for _ in 0..3 {
        now += cfg.time.idle_timeout_ms.max(cfg.time.emit_interval_ms);
        engine.on_tick(now, &mut out);
        collect(&mut out);
    }
    let not_final: Vec<_> = windows
        .iter()
        .filter(|(_, v)| !v.2)
        .map(|(k, _)| k.clone())
        .collect();
    assert!(not_final.is_empty(), "windows never closed: {not_final:?}");
    milestones.sort();
    FinalState {
        windows: windows.into_iter().map(|(k, v)| (k, v.0)).collect(),
        totals: totals.into_iter().map(|(k, v)| (k, v.0)).collect(),
        milestones,
        dead_letters,
    }
}

/// The case's wall clock at the start (`clock_ms`), by default its latest event time.
fn clock(dir: &Path, input: &[Record]) -> i64 {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    v["clock_ms"]
        .as_i64()
        .unwrap_or_else(|| input.iter().map(|r| r.ts_ms).max().unwrap_or(0))
}

fn expected(dir: &Path) -> (FinalState, bool) {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let table = |name: &str| -> BTreeMap<String, Vec<i64>> {
        v[name]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, row)| {
                (
                    k.clone(),
                    row.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_i64().unwrap())
                        .collect(),
                )
            })
            .collect()
    };
    let mut milestones: Vec<(String, i64, i64)> = v["milestones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m[0].as_str().unwrap().to_string(),
                m[1].as_i64().unwrap(),
                m[2].as_i64().unwrap(),
            )
        })
        .collect();
    milestones.sort();
    let dead_letters = v["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d[0].as_str().unwrap().to_string(),
                d[1].as_i64().unwrap(),
                d[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (
        FinalState {
            windows: table("windows"),
            totals: table("totals"),
            milestones,
            dead_letters,
        },
        v["shuffle"].as_bool().unwrap_or(false),
    )
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no scenario folders under {}",
        root.display()
    );
    dirs
}

fn config(dir: &Path) -> Config {
    let file = dir.join("config.toml");
    Config::load(
        file.exists().then_some(file.as_path()),
        &Overrides::default(),
    )
    .unwrap()
}

#[test]
fn every_scenario_ends_in_its_expected_state() {
    for dir in cases() {
        let cfg = config(&dir);
        let input = load_input(&dir);
        let (want, _) = expected(&dir);
        let got = run(&cfg, &input.iter().collect::<Vec<_>>(), clock(&dir, &input));
        assert_eq!(got, want, "scenario {}", dir.display());
    }
}

#[test]
fn shuffling_within_the_disorder_bound_changes_nothing() {
    let mut shuffled_cases = 0;
    for dir in cases() {
        let (want, shuffle) = expected(&dir);
        if !shuffle {
            continue;
        }
        shuffled_cases += 1;
        let cfg = config(&dir);
        let input = load_input(&dir);
        let bound = cfg.time.max_out_of_orderness_ms;
        for seed in 0..50u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            // Sorting by ts plus a jitter below the bound only swaps events closer than the bound.
            let mut keyed: Vec<(i64, &Record)> = input
                .iter()
                .map(|r| (r.ts_ms + rng.gen_range(0..bound.max(1)), r))
                .collect();
            keyed.shuffle(&mut rng);
            keyed.sort_by_key(|(k, _)| *k);
            let order: Vec<&Record> = keyed.into_iter().map(|(_, r)| r).collect();
            let mut got = run(&cfg, &order, clock(&dir, &input));
            // Dead letters name offsets, which depend on arrival order; their reasons must not.
            got.dead_letters.clear();
            let want = FinalState {
                dead_letters: vec![],
                ..want.clone()
            };
            assert_eq!(
                got,
                want,
                "scenario {} with shuffle seed {seed}",
                dir.display()
            );
        }
    }
    assert!(shuffled_cases > 0, "no scenario is marked for shuffling");
}
