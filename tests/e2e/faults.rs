//! End-to-end tests of faults: the broker stopped, paused, the job's loop
//! stuck, its group session lost, an input partition quiet, input records
//! deleted before it read them, partitions added to an input, a restore
//! that cannot finish, a stop that waits for a broker gone. The job rides each out
//! by itself, with exact results, or ends as a supervisor or an operator
//! needs it to.

use super::*;

/// The broker stopped (cleanly) while the job runs with traffic flowing, and
/// started again some seconds later: the job rides it out, and the results
/// are exact for a read_committed reader.
#[test]
fn the_broker_stopped_and_restarted_between_commits_changes_no_result() {
    broker_fault("brokerrestart", "the broker restarted", |broker| {
        println!("stopping the broker");
        broker.stop();
        std::thread::sleep(Duration::from_secs(5));
        println!("starting the broker again");
        broker.restart();
    });
}

/// The broker paused (SIGSTOP) for 30 s with traffic flowing: longer than the
/// job's group session (6 s here) and its transaction timeout (10 s). The job
/// rides it out by itself, without a restart, and the results are exact.
#[test]
fn the_broker_paused_for_30_s_changes_no_result_and_the_job_keeps_running() {
    broker_fault("brokerpause", "the broker paused for 30 s", |broker| {
        println!("pausing the broker for 30 s");
        broker.pause();
        std::thread::sleep(Duration::from_secs(30));
        broker.resume();
        println!("broker resumed");
    });
}

/// A loop that stops turning for longer than `metrics.exit_after_silent_ms`
/// ends the process with status 70, saying why, for a supervisor to start it
/// again (`app/watchdog.rs`: librdkafka calls that never return). Here the
/// broker is paused before the job starts, so the job's first call to it
/// waits past the limit (3 s).
#[test]
fn a_loop_silent_past_its_limit_ends_the_process_for_a_restart() {
    let stage = Stage::own_broker("watchdog");
    let broker = stage.own.as_ref().expect("a broker of its own");
    let config = stage.dir.join("watchdog.toml");
    let settings = std::fs::read_to_string(&stage.config).unwrap();
    // [metrics] is the last table of the test's config.
    std::fs::write(&config, format!("{settings}exit_after_silent_ms = 3000\n")).unwrap();
    let log = stage.dir.join("w.log");
    broker.pause();
    let mut job = start_instance(&config, "w", None, Some(&log));
    let status = wait_for_exit(&mut job, Duration::from_secs(60), || {
        format!(
            "the job still runs a minute after its loop went silent:\n{}",
            log_tail(&log, 30)
        )
    });
    broker.resume();
    let said = log_tail(&log, 30);
    assert_eq!(status.code(), Some(70), "exit status\n{said}");
    assert!(
        said.contains("the processing loop has not turned for"),
        "the job did not say why it exited:\n{said}"
    );
}

/// A signal asks a process to finish its work: `gmv generate` then waits for
/// the records it sent to be delivered, which a paused broker holds back. A
/// second signal ends it at once, status 130, for an operator who will not
/// wait (`app::stop_on_signal`; the job takes the same path).
#[test]
fn a_second_signal_ends_a_process_that_waits_for_the_broker() {
    let stage = Stage::own_broker("twosignals");
    let broker = stage.own.as_ref().expect("a broker of its own");
    let log = stage.dir.join("g.log");
    let mut generator = Proc(
        gmv()
            .args(["generate", "--quiet", "--rate", "2000", "--config"])
            .arg(&stage.config)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting gmv generate"),
    );
    std::thread::sleep(Duration::from_secs(3));
    // Records sent from now on wait for the broker.
    broker.pause();
    std::thread::sleep(Duration::from_secs(1));
    let pid = generator.0.id().to_string();
    signal(&pid, "-INT");
    std::thread::sleep(Duration::from_secs(3));
    let first = generator.0.try_wait().unwrap();
    assert!(
        first.is_none(),
        "the generator ended ({first:?}) at the first signal, its records not delivered:\n{}",
        log_tail(&log, 20)
    );
    signal(&pid, "-INT");
    let status = wait_for_exit(&mut generator, Duration::from_secs(10), || {
        format!(
            "the generator still runs 10 s after the second signal:\n{}",
            log_tail(&log, 20)
        )
    });
    broker.resume();
    assert_eq!(
        status.code(),
        Some(130),
        "exit status\n{}",
        log_tail(&log, 20)
    );
    assert!(
        log_tail(&log, 20).contains("second signal"),
        "it did not say why it exited:\n{}",
        log_tail(&log, 20)
    );
}

/// The group session lost: the job itself paused (SIGSTOP) for longer than
/// its session timeout, with traffic flowing, so the group moves on without
/// it and the broker ends its open transaction. Resumed, it rejoins, restores
/// its tasks and goes on, as Kafka Streams does with a migrated task, instead
/// of exiting; the results are exact.
#[test]
fn an_instance_that_lost_its_session_rejoins_and_the_results_stay_exact() {
    let (seed, _) = chaos_rng("session lost");
    let stage = Stage::new("sessionlost");
    let (want, writer) = traffic_in_background(&stage, seed, 150_000, 5_000);
    let mut cluster = Instances::one_running(&stage);
    std::thread::sleep(Duration::from_secs(3));
    let pid = cluster.pid(0);
    println!("pausing the instance for 15 s (session timeout 6 s, transaction timeout 10 s)");
    signal(&pid, "-STOP");
    std::thread::sleep(Duration::from_secs(15));
    signal(&pid, "-CONT");
    writer.join().unwrap();
    assert_exact(
        &stage,
        &cluster,
        &want,
        "after the instance lost its session",
    );
    cluster.assert_alive(0, "after it lost its session");
}

/// Input partition 0 quiet for far longer than idle_timeout (3 s here) while
/// the others flow, then back: the others' windows close without it, it holds
/// nothing back while quiet, nothing it brings when back is late, and the
/// results are exact. (Records are written to partitions 1 to 3 by a hash of
/// their key, the same in every topic, so co-partitioning holds; partition 0
/// gets the records of the last third of the traffic only.)
#[test]
fn a_quiet_partition_neither_holds_back_nor_closes_the_windows_of_the_others() {
    let stage = Stage::new("quiet");
    let records: Vec<_> = Traffic::new(test_traffic(21)).take(90_000).collect();
    let back_at = records.len() * 2 / 3;
    let partition_of = |key: &str, i: usize| -> Option<i32> {
        let p = partition_of_key(key);
        (p != 0 || i >= back_at).then_some(p)
    };
    let sent: Vec<(i32, &gmv::gen::traffic::GeneratedRecord)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((partition_of(r.key.as_deref()?, i)?, r)))
        .collect();
    let good: Vec<(String, Value)> = sent
        .iter()
        .filter(|(_, r)| !matches!(r.kind, RecordKind::Bad(_)))
        .map(|(_, r)| {
            (
                r.topic.label().to_string(),
                serde_json::from_slice(&r.value).unwrap(),
            )
        })
        .collect();
    let want = reference(&good);
    let mut cluster = Instances::one_running(&stage);
    let p = stage.producer();
    let started = Instant::now();
    for (i, (partition, r)) in sent.iter().enumerate() {
        send_to_partition(&stage, &p, *partition, r);
        // 6,000 records/s: the quiet stretch lasts about 10 s of wall time.
        if let Some(ahead) =
            Duration::from_micros(i as u64 * 1_000_000 / 6_000).checked_sub(started.elapsed())
        {
            std::thread::sleep(ahead);
        }
    }
    gmv::gen::writer::finish(&p).unwrap();
    assert_exact(&stage, &cluster, &want, "with a quiet partition");
    let metrics = http_get(cluster.ports[0], "/metrics");
    assert_eq!(
        metric_sum(&metrics, "gmv_late_partials_total"),
        0.0,
        "no partial sum reached a closed bucket"
    );
    cluster.assert_alive(0, "with a quiet partition");
}

/// Records the broker deleted before the job read them (as retention does;
/// here DeleteRecords): the payments of partition 0 written while the job
/// was stopped, then those of partition 1 written while it was paused
/// (SIGSTOP) with its fetch behind them. Each time librdkafka stops the
/// partition, its offset out of the log's range; the job counts the offsets
/// it skips (`gmv_input_offsets_skipped_total`), reads on from the log's
/// start, and its results are exact over the records it could read.
#[test]
fn records_deleted_before_the_job_read_them_are_counted_and_the_rest_stays_exact() {
    use gmv::model::InputTopic;
    let stage = Stage::new("deleted");
    let records: Vec<_> = Traffic::new(test_traffic(23)).take(45_000).collect();
    // Payments: each counts by itself (an order deleted would hold its
    // payments back for the join's timeout).
    let payments = stage.input(InputTopic::Payments).to_string();
    let producer = stage.producer();
    // The good records the job can still read, for the reference.
    let mut readable: Vec<(String, Value)> = Vec::new();
    // Sends a third of the records; the payments of partition `lost` are to go.
    let mut send = |third: usize, lost: i32| {
        for r in &records[third * 15_000..(third + 1) * 15_000] {
            let p = partition_of_key(r.key.as_deref().unwrap());
            send_to_partition(&stage, &producer, p, r);
            let deleted = r.topic == InputTopic::Payments && p == lost;
            if !deleted && !matches!(r.kind, RecordKind::Bad(_)) {
                let value = serde_json::from_slice(&r.value).unwrap();
                readable.push((r.topic.label().to_string(), value));
            }
        }
        gmv::gen::writer::finish(&producer).unwrap();
    };
    let mut cluster = Instances::one_running(&stage);
    send(0, -1);
    wait_until_committed(&stage, "all read");
    let read_to = |p: i32| input_counts(&stage)[&(payments.clone(), p)];
    let committed = read_to(0);
    cluster.stop(0);
    send(1, 0);
    let mut skipped = delete_unread(&stage, &payments, 0, committed);
    cluster.start(0);
    wait_until_committed(&stage, "after a restart past deleted records");
    let committed = read_to(1);
    let skipped_metric = || {
        let metrics = http_get(cluster.ports[0], "/metrics");
        metric_sum(&metrics, "gmv_input_offsets_skipped_total")
    };
    assert_eq!(
        skipped_metric(),
        skipped as f64,
        "offsets skipped at the restart"
    );
    signal(&cluster.pid(0), "-STOP");
    // A fetch sent before the pause has its answer (empty) by now.
    std::thread::sleep(Duration::from_secs(1));
    send(2, 1);
    skipped += delete_unread(&stage, &payments, 1, committed);
    signal(&cluster.pid(0), "-CONT");
    assert!(skipped > 1_000, "{skipped} offsets deleted unread");
    let want = reference(&readable);
    assert_exact(&stage, &cluster, &want, "with records deleted unread");
    assert_eq!(skipped_metric(), skipped as f64, "offsets skipped in all");
    cluster.assert_alive(0, "with records deleted unread");
}

/// A restore that cannot finish: a transaction left open on a changelog
/// partition holds its last stable offset back (for that producer's 15-minute
/// transaction timeout), and the restore waits for it. `/healthz` stays
/// healthy past its 30 s stall limit while the restore waits, and SIGTERM
/// stops the process promptly, exit 0.
#[test]
fn a_long_restore_stays_healthy_and_sigterm_stops_it_promptly() {
    use rdkafka::producer::{BaseRecord, ThreadedProducer};
    let stage = Stage::new("longrestore");
    let open: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &stage.brokers)
        .set("transactional.id", "e2e-longrestore-open")
        .set("transaction.timeout.ms", "900000")
        .create()
        .unwrap();
    open.init_transactions(Duration::from_secs(30)).unwrap();
    open.begin_transaction().unwrap();
    open.send(
        BaseRecord::to(&stage.cfg.topics.attribution_changelog)
            .partition(0)
            .key("left-open")
            .payload("x"),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    open.flush(Duration::from_secs(30)).unwrap();

    let job = start_job(&stage.config);
    wait_for_port(
        stage.metrics_port,
        Duration::from_secs(30),
        "the job's metrics server",
    );
    let until = Instant::now() + Duration::from_secs(40);
    while Instant::now() < until {
        let health = http_get(stage.metrics_port, "/healthz");
        assert!(
            health.starts_with("ok"),
            "/healthz during the restore: {health}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let metrics = http_get(stage.metrics_port, "/metrics");
    assert!(
        metric_sum(&metrics, "gmv_rebalances_total") >= 1.0,
        "the restore began"
    );
    assert_eq!(metric_sum(&metrics, "gmv_tasks"), 0.0, "and has not ended");
    let mut job = job;
    signal(&job.0.id().to_string(), "-TERM");
    let status = wait_for_exit(&mut job, Duration::from_secs(10), || {
        "SIGTERM during a restore did not stop the process within 10 s".into()
    });
    assert!(status.success(), "stopped during a restore: {status}");
    open.abort_transaction(Duration::from_secs(30)).unwrap();
}

/// Partitions added to an input topic while the job runs: an order's later
/// events now land on other partition numbers than its earlier ones, and the
/// tasks' state is partitioned by the old count. The job stops at the
/// rebalance that brings the new partitions, naming the topic, with what it
/// read committed; started again, it refuses to run (the start's check).
#[test]
fn partitions_added_to_an_input_while_the_job_runs_stop_it_saying_so() {
    let stage = Stage::new("addedpartitions");
    // The consumer sees a topic's new partitions at its next metadata
    // refresh: 5 minutes by default, 1 s here.
    let settings = std::fs::read_to_string(&stage.config).unwrap();
    let fast = settings.replace(
        "\"heartbeat.interval.ms\" = \"1000\"\n",
        "\"heartbeat.interval.ms\" = \"1000\"\n\"topic.metadata.refresh.interval.ms\" = \"1000\"\n",
    );
    assert_ne!(settings, fast, "the test config's consumer properties");
    std::fs::write(&stage.config, fast).unwrap();
    let (_, writer) = traffic_in_background(&stage, 11, 5_000, 5_000);
    writer.join().unwrap();
    let log = stage.dir.join("a.log");
    let mut job = start_instance(&stage.config, "a", None, Some(&log));
    wait_until_committed(&stage, "before partitions are added");

    let orders = stage.cfg.topics.orders.clone();
    let more = rdkafka::admin::NewPartitions::new(&orders, PARTITIONS as usize + 2);
    let added = block_on(admin(&stage.brokers).create_partitions([&more], &AdminOptions::new()))
        .expect("adding partitions");
    assert!(added.iter().all(Result::is_ok), "{added:?}");

    let status = wait_for_exit(&mut job, Duration::from_secs(60), || {
        format!(
            "the job still runs a minute after partitions were added to `{orders}`:\n{}",
            log_tail(&log, 30)
        )
    });
    let said = log_tail(&log, 30);
    assert_eq!(status.code(), Some(1), "exit status\n{said}");
    assert!(
        said.contains(&format!("partitions were added to `{orders}`")),
        "the job did not say why it stopped:\n{said}"
    );
    // What it read stays committed: the old partitions' ends, nothing lost.
    let read = input_counts(&stage);
    let committed = committed_offsets(&stage);
    assert_eq!(committed, read, "committed offsets after the stop");

    let again = stage.dir.join("b.log");
    let mut job = start_instance(&stage.config, "a", None, Some(&again));
    let status = wait_for_exit(&mut job, Duration::from_secs(60), || {
        "started again, the job runs on inputs that are not co-partitioned".into()
    });
    let said = log_tail(&again, 10);
    assert_eq!(status.code(), Some(1), "exit status\n{said}");
    assert!(
        said.contains("not co-partitioned"),
        "started again, the job did not say why it refused:\n{said}"
    );
}
