use super::*;

fn batch(source: i32, gmv: i128) -> PartialBatch {
    PartialBatch {
        progress: vec![(
            source,
            Progress {
                watermark_ms: 0,
                max_event_ms: 5_000,
                idle: false,
            },
        )],
        entries: vec![PartialEntry {
            dim: Dim::Total,
            key: TOTAL_KEY.into(),
            bucket_ms: 100_000,
            delta: Delta {
                gmv_fen: gmv,
                paid_orders: 1,
                ..Delta::default()
            },
        }],
    }
}

fn gmv(t: &AggregationTask) -> i128 {
    t.totals(Dim::Total, TOTAL_KEY).map_or(0, |t| t.gmv_fen)
}

#[test]
fn every_batch_read_is_applied_at_once() {
    let mut t = AggregationTask::new(0, Arc::new(EngineConfig::default()), 2);
    let (mut s, mut out) = (Stats::default(), vec![]);
    assert_eq!(t.committable_offset(), None);
    t.receive(0, batch(0, 1), &mut s, &mut out);
    t.receive(1, batch(1, 100), &mut s, &mut out);
    assert_eq!(gmv(&t), 101, "applied as soon as read");
    assert_eq!(t.committable_offset(), Some(2));
}

#[test]
fn restored_state_continues_sums_and_revisions() {
    let cfg = Arc::new(EngineConfig::default());
    let mut a = AggregationTask::new(0, cfg.clone(), 1);
    a.track_changes();
    let (mut s, mut out) = (Stats::default(), vec![]);
    a.receive(0, batch(0, 5), &mut s, &mut out);
    a.receive(1, batch(0, 7), &mut s, &mut out);
    a.emit(&mut out);
    let changes = a.take_changes();
    let mut b = AggregationTask::new(0, cfg, 1);
    for (k, v) in &changes {
        if let Some(v) = v {
            b.restore(k, v).unwrap();
        }
    }
    assert_eq!(
        b.committable_offset(),
        None,
        "the group's offsets say where it resumes"
    );
    assert_same_next_update(&mut a, &mut b, 2);
    assert_eq!((gmv(&a), gmv(&b)), (15, 15));
}

/// `a` and its restored copy `b` read the same next batch: they emit the
/// same records, revisions included.
fn assert_same_next_update(a: &mut AggregationTask, b: &mut AggregationTask, offset: i64) {
    let (mut s, mut out) = (Stats::default(), vec![]);
    a.receive(offset, batch(0, 3), &mut s, &mut out);
    b.receive(offset, batch(0, 3), &mut s, &mut out);
    let (mut ea, mut eb) = (vec![], vec![]);
    a.emit(&mut ea);
    b.emit(&mut eb);
    assert_eq!(ea, eb, "same records, same revisions");
}

/// A task restored from `changelog`, as after a crash.
fn restored(cfg: &Arc<EngineConfig>, changelog: &BTreeMap<Vec<u8>, Vec<u8>>) -> AggregationTask {
    let mut t = AggregationTask::new(0, cfg.clone(), 1);
    t.track_changes();
    for (k, v) in changelog {
        t.restore(k, v).unwrap();
    }
    t
}

/// A task that read a batch of `gmv` and committed it, not emitted yet: its
/// config, the task, and the changelog as compacted.
fn summed_and_committed(
    gmv: i128,
) -> (
    Arc<EngineConfig>,
    AggregationTask,
    BTreeMap<Vec<u8>, Vec<u8>>,
) {
    let cfg = Arc::new(EngineConfig::default());
    let mut changelog = BTreeMap::new();
    let mut a = restored(&cfg, &changelog);
    let (mut s, mut out) = (Stats::default(), vec![]);
    a.receive(0, batch(0, gmv), &mut s, &mut out);
    state::compact_into(&mut changelog, a.take_changes());
    (cfg, a, changelog)
}

#[test]
fn revisions_emitted_after_a_commit_are_in_the_next_commits_changelog() {
    // A commit without an emission, then an emission, then a commit: what
    // the restore reads must carry the emitted revision, or the next update
    // after a restore repeats it.
    let (cfg, mut a, mut changelog) = summed_and_committed(5);
    a.emit(&mut vec![]);
    state::compact_into(&mut changelog, a.take_changes());
    let mut b = restored(&cfg, &changelog);
    assert_same_next_update(&mut a, &mut b, 1);
}

#[test]
fn an_update_committed_before_its_emission_is_emitted_after_a_restore() {
    // Commits are more frequent than emissions: a commit carries new sums,
    // then the transaction with their emission is aborted. The restore must
    // emit them, or a key that changes no more keeps its old figures.
    let (cfg, mut a, mut changelog) = summed_and_committed(5);
    let mut aborted = vec![];
    a.emit(&mut aborted);
    let mut b = restored(&cfg, &changelog);
    let mut emitted = vec![];
    b.emit(&mut emitted);
    assert_eq!(emitted, aborted, "the aborted emission, again");
    assert!(
        emitted
            .iter()
            .any(|o| matches!(o, Output::Total(t) if t.totals.gmv_fen == 5))
            && emitted
                .iter()
                .any(|o| matches!(o, Output::Window(w) if w.gmv_fen == 5)),
        "{emitted:?}"
    );
    // Emitted and committed: a restore emits nothing more.
    state::compact_into(&mut changelog, b.take_changes());
    let mut again = vec![];
    restored(&cfg, &changelog).emit(&mut again);
    assert_eq!(again, vec![]);
}

#[test]
fn a_changelog_value_of_the_format_before_the_emission_flag_is_emitted_again() {
    let cfg = Arc::new(EngineConfig::default());
    let mut t = AggregationTask::new(0, cfg, 1);
    let sums = Totals {
        gmv_fen: 9,
        ..Totals::default()
    };
    t.restore(b"tbrand|b-1", &state::encode(&(sums, 4u64)))
        .unwrap();
    t.restore(
        b"wbrand|60000|60000|b-1",
        &state::encode(&(9i128, 0i128, 1u64, 2u64)),
    )
    .unwrap();
    let mut out = vec![];
    t.emit(&mut out);
    let revisions: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Total(t) if t.totals.gmv_fen == 9 => Some(t.revision),
            Output::Window(w) if w.gmv_fen == 9 => Some(w.revision),
            _ => None,
        })
        .collect();
    assert_eq!(revisions, vec![3, 5], "{out:?}");
}

#[test]
fn crashes_anywhere_leave_every_committed_output_at_its_sums() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    // Few updates per key: a lost emission is not hidden by a later one.
    let topic: Vec<PartialBatch> = (0..3_000)
        .map(|_| {
            let mut b = batch(0, rng.gen_range(1..1_000));
            b.entries[0].dim = Dim::Brand;
            b.entries[0].key = format!("brand-{}", rng.gen_range(0..1_000)).into();
            b
        })
        .collect();
    let mut want: BTreeMap<String, i128> = BTreeMap::new();
    for b in &topic {
        *want.entry(b.entries[0].key.to_string()).or_default() += b.entries[0].delta.gmv_fen;
    }
    // Commits, emissions and crashes at random; a transaction's outputs are
    // seen only once it commits (with its changelog records and offset).
    let cfg = Arc::new(EngineConfig::default());
    let st = &mut Stats::default();
    let mut changelog: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let (mut pending, mut committed_out) = (vec![], vec![]);
    let mut t = restored(&cfg, &changelog);
    let (mut offset, mut committed, mut crashes) = (0usize, 0usize, 0);
    while offset < topic.len() {
        t.receive(offset as i64, topic[offset].clone(), st, &mut pending);
        offset += 1;
        if rng.gen_ratio(1, 8) {
            t.emit(&mut pending);
        }
        if rng.gen_ratio(1, 5) {
            state::compact_into(&mut changelog, t.take_changes());
            committed_out.append(&mut pending);
            committed = offset;
        } else if rng.gen_ratio(1, 40) {
            crashes += 1;
            pending.clear();
            t = restored(&cfg, &changelog);
            offset = committed;
        }
    }
    t.emit(&mut committed_out);
    assert!(crashes > 10, "{crashes} crashes");
    let mut seen: BTreeMap<String, (i128, u64)> = BTreeMap::new();
    for o in committed_out {
        if let Output::Total(r) = o {
            let rev = seen.get(&r.key).map_or(0, |s| s.1);
            assert_eq!(r.revision, rev + 1, "{}: revisions grow by one", r.key);
            seen.insert(r.key, (r.totals.gmv_fen, r.revision));
        }
    }
    let got: BTreeMap<String, i128> = seen.into_iter().map(|(k, (g, _))| (k, g)).collect();
    assert_eq!(got, want);
}

#[test]
fn crashes_of_the_merge_change_no_total() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    // What a read_committed reader of the repartition partition sees.
    let topic: Vec<PartialBatch> = (0..3_000)
        .map(|_| batch(rng.gen_range(0..2), rng.gen_range(1..1_000)))
        .collect();
    let want: i128 = topic.iter().map(|b| b.entries[0].delta.gmv_fen).sum();
    // The merge commits now and then and dies now and then; a restart restores
    // the committed changelog and reads on from the committed offset.
    let cfg = Arc::new(EngineConfig::default());
    let (mut st, mut out) = (Stats::default(), vec![]);
    let mut changelog: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut t = AggregationTask::new(0, cfg.clone(), 2);
    t.track_changes();
    let (mut offset, mut committed, mut crashes) = (0usize, 0usize, 0);
    while offset < topic.len() {
        t.receive(offset as i64, topic[offset].clone(), &mut st, &mut out);
        offset += 1;
        if rng.gen_ratio(1, 20) || offset == topic.len() {
            state::compact_into(&mut changelog, t.take_changes());
            committed = t.committable_offset().unwrap() as usize;
        } else if rng.gen_ratio(1, 50) {
            crashes += 1;
            t = AggregationTask::new(0, cfg.clone(), 2);
            t.track_changes();
            for (k, v) in &changelog {
                t.restore(k, v).unwrap();
            }
            offset = committed;
        }
    }
    assert!(crashes > 10, "{crashes} crashes");
    assert_eq!(gmv(&t), want);
}

/// Changelog keys are byte for byte what `format!` wrote before (restores
/// and compaction go by them).
#[test]
fn changelog_keys_are_written_as_before() {
    for dim in [Dim::Total, Dim::Brand, Dim::Channel, Dim::Country] {
        let d = dim.as_str();
        for name in ["all", "b|x", "", "品牌"] {
            assert_eq!(
                state_key(b't', dim, &[], name),
                format!("t{d}|{name}").into_bytes()
            );
            assert_eq!(
                state_key(b'm', dim, &[], name),
                format!("m{d}|{name}").into_bytes()
            );
            for (a, b) in [
                (60_000, 1_731_283_200_000),
                (1, -5_000),
                (i64::MAX, i64::MIN),
            ] {
                assert_eq!(
                    state_key(b'w', dim, &[a, b], name),
                    format!("w{d}|{a}|{b}|{name}").into_bytes()
                );
                assert_eq!(
                    state_key(b'b', dim, &[b], name),
                    format!("b{d}|{b}|{name}").into_bytes()
                );
            }
        }
    }
}
