//! Topic definitions (the files under `topics/`, built into the binary),
//! their creation, and the start-up check that the inputs exist and are
//! co-partitioned.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;

use crate::config::Config;

/// One topic as defined in `topics/<role>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDef {
    /// The `topics.*` config key this definition is for.
    pub role: String,
    /// Default name; the configured name is used when creating.
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub cleanup_policy: String,
    pub retention_ms: i64,
    /// JSON Schema of the values, relative to `topics/`; internal topics hold binary values.
    pub schema: Option<String>,
}

const DEFINITIONS: [&str; 10] = [
    include_str!("../../topics/orders.toml"),
    include_str!("../../topics/payments.toml"),
    include_str!("../../topics/deliveries.toml"),
    include_str!("../../topics/gmv_windows.toml"),
    include_str!("../../topics/gmv_totals.toml"),
    include_str!("../../topics/milestones.toml"),
    include_str!("../../topics/dead_letters.toml"),
    include_str!("../../topics/repartition.toml"),
    include_str!("../../topics/attribution_changelog.toml"),
    include_str!("../../topics/aggregation_changelog.toml"),
];

/// Roles whose partition count must equal the input topics'.
const INPUT_PARTITIONED: [&str; 4] = ["orders", "payments", "deliveries", "attribution_changelog"];
/// Roles whose partition count must equal the repartition topic's.
const AGGREGATION_PARTITIONED: [&str; 2] = ["repartition", "aggregation_changelog"];

/// Partition counts chosen at creation, in place of the definitions'.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// The input topics' (P): one attribution task each.
    pub input: Option<i32>,
    /// The repartition topic's (R): one aggregation task each.
    pub aggregation: Option<i32>,
}

impl TopicDef {
    /// Its partition count with `counts` overriding the definition.
    pub fn partitions_with(&self, counts: Counts) -> i32 {
        let role = self.role.as_str();
        let chosen = if INPUT_PARTITIONED.contains(&role) {
            counts.input
        } else if AGGREGATION_PARTITIONED.contains(&role) {
            counts.aggregation
        } else {
            None
        };
        chosen.unwrap_or(self.partitions)
    }
}

/// Every topic, inputs first, with the configured names.
pub fn definitions(cfg: &Config) -> Vec<TopicDef> {
    let names = cfg.topics.all();
    DEFINITIONS
        .iter()
        .map(|text| {
            let mut def: TopicDef =
                toml::from_str(text).expect("topics/*.toml are valid (checked by tests)");
            let (_, name) = names
                .iter()
                .find(|(role, _)| *role == def.role)
                .expect("every role has a name");
            def.name = name.to_string();
            def
        })
        .collect()
}

/// Creates every topic that does not exist yet, with the definitions' partition
/// counts unless `counts` chooses them.
pub fn create_all(
    cfg: &Config,
    counts: Counts,
    replication: Option<i32>,
) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> =
        super::client_config(&cfg.kafka, &[], &std::collections::BTreeMap::new())
            .create()
            .context("creating the Kafka admin client")?;
    let defs = definitions(cfg);
    let retention: Vec<String> = defs.iter().map(|d| d.retention_ms.to_string()).collect();
    let topics: Vec<NewTopic> = defs
        .iter()
        .zip(&retention)
        .map(|(d, retention)| {
            NewTopic::new(
                &d.name,
                d.partitions_with(counts),
                TopicReplication::Fixed(replication.unwrap_or(d.replication_factor)),
            )
            .set("cleanup.policy", &d.cleanup_policy)
            .set("retention.ms", retention)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = block_on(admin.create_topics(&topics, &opts)).context("creating topics")?;
    let mut report = Vec::new();
    for r in results {
        match r {
            Ok(name) => report.push(format!("created {name}")),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                report.push(format!("exists  {name}"))
            }
            Err((name, code)) => bail!("creating topic {name} failed: {code}"),
        }
    }
    // The controller has created them; the brokers learn of them a moment later. A
    // job started right after this command must find them.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for d in &defs {
        loop {
            let md = admin
                .inner()
                .fetch_metadata(Some(&d.name), Duration::from_secs(5))
                .context("reading topic metadata")?;
            if md
                .topics()
                .first()
                .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty())
            {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "topic {} was created but brokers do not list it after 30 s",
                    d.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(report)
}

/// Runs an admin future to completion on a small private runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

/// A topic's partition count from the broker's metadata; `Err(detail)` when it does
/// not exist or has no partitions.
fn partitions_of<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    name: &str,
) -> anyhow::Result<Result<i32, String>> {
    let md = consumer
        .fetch_metadata(Some(name), Duration::from_secs(15))
        .with_context(|| {
            format!("reading metadata of topic `{name}` (is the broker reachable?)")
        })?;
    Ok(match md.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().len() as i32)
        }
        Some(t) => Err(format!(" or has no partitions ({:?})", t.error())),
        None => Err(String::new()),
    })
}

/// Partition count of a topic the job needs, or an error saying how to create it.
pub fn partition_count<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    name: &str,
) -> anyhow::Result<i32> {
    match partitions_of(consumer, name)? {
        Ok(n) => Ok(n),
        Err(_) => bail!("topic `{name}` does not exist; create it with `gmv topics`"),
    }
}

/// Checks that every topic the job writes exists and accepts records of
/// `kafka.max_record_bytes` (its `max.message.bytes`, which defaults to the
/// broker's `message.max.bytes`), so that no output, dead letter or state
/// record is ever refused for its size: a refusal would fail every commit.
/// (`limits`: whether to read the limits; see `app::Broker`.)
pub fn check_writable<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    cfg: &Config,
    limits: bool,
) -> anyhow::Result<()> {
    let t = &cfg.topics;
    let written = [
        &t.gmv_windows,
        &t.gmv_totals,
        &t.milestones,
        &t.dead_letters,
        &t.repartition,
        &t.attribution_changelog,
        &t.aggregation_changelog,
    ];
    let missing: Vec<String> = written
        .iter()
        .filter_map(|name| match partitions_of(consumer, name) {
            Ok(Ok(_)) => None,
            Ok(Err(detail)) => Some(Ok(format!("`{name}` does not exist{detail}"))),
            Err(e) => Some(Err(e)),
        })
        .collect::<anyhow::Result<_>>()?;
    if !missing.is_empty() {
        bail!(
            "the job cannot write its results: topic {}; create the topics with `gmv topics` (or as in topics/*.toml)",
            missing.join(", topic ")
        );
    }
    if !limits {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        super::client_config(&cfg.kafka, &[], &std::collections::BTreeMap::new())
            .create()
            .context("creating the Kafka admin client")?;
    let specs: Vec<ResourceSpecifier> = written
        .iter()
        .map(|n| ResourceSpecifier::Topic(n))
        .collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(15)));
    let results = match block_on(admin.describe_configs(&specs, &opts)) {
        Ok(r) => r,
        // The job's principal may not be allowed to describe configs: the
        // brokers' defaults then decide, as for any client.
        Err(e) => {
            tracing::warn!("could not read the output topics' max.message.bytes ({e}); not checked against kafka.max_record_bytes");
            return Ok(());
        }
    };
    let want = cfg.kafka.max_record_bytes;
    let mut small = Vec::new();
    for (name, r) in written.iter().zip(results) {
        let limit = r.ok().and_then(|c| {
            c.get("max.message.bytes")?
                .value
                .as_deref()?
                .parse::<i64>()
                .ok()
        });
        match limit {
            Some(limit) if limit < want => small.push(format!("`{name}` accepts {limit}")),
            Some(_) => {}
            None => {
                tracing::warn!(topic = %name, "could not read max.message.bytes; not checked against kafka.max_record_bytes")
            }
        }
    }
    if !small.is_empty() {
        bail!(
            "topics the job writes accept smaller records than kafka.max_record_bytes ({want} bytes): {}. Raise their max.message.bytes, or lower kafka.max_record_bytes (at least {})",
            small.join(", "),
            crate::config::MIN_MAX_RECORD_BYTES
        );
    }
    Ok(())
}

/// Checks that the input topics exist with the same partition count; returns it.
pub fn check_inputs<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    names: &[&str],
) -> anyhow::Result<i32> {
    let mut counts = Vec::new();
    let mut problems = Vec::new();
    for name in names {
        match partitions_of(consumer, name)? {
            Ok(n) => counts.push((name, n)),
            Err(detail) => problems.push(format!(
                "input topic `{name}` does not exist{detail}; create it with `gmv topics`"
            )),
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    let first = counts[0].1;
    if counts.iter().any(|(_, n)| *n != first) {
        let listed: Vec<String> = counts
            .iter()
            .map(|(n, c)| format!("`{n}` has {c}"))
            .collect();
        bail!(
            "input topics are not co-partitioned: {}. One order's events must land on the same partition number in every input topic, so the three need the same partition count",
            listed.join(", ")
        );
    }
    Ok(first)
}

/// Checks an assignment against the partition counts the job started with
/// (`inputs`: the input topics'; `repartition`: the repartition topic's).
/// A partition beyond them was added while the job ran: an order's events
/// written since land on other partition numbers than its earlier ones, and
/// the tasks' state is partitioned by the old counts (so is the changelog,
/// whose partition for a new task does not exist). No task can go on
/// exactly, so the job stops, naming the topics; started again, it refuses
/// to run until the counts agree (`check_inputs`, and the changelogs').
pub fn check_assigned(
    assigned: &[(String, i32)],
    t: &crate::config::TopicNames,
    inputs: i32,
    repartition: i32,
) -> anyhow::Result<()> {
    let count_of = |topic: &str| {
        if topic == t.repartition {
            repartition
        } else {
            inputs
        }
    };
    // Per topic beyond its count, the highest partition assigned.
    let mut added: std::collections::BTreeMap<&str, i32> = Default::default();
    for (topic, p) in assigned {
        if *p >= count_of(topic) {
            let highest = added.entry(topic).or_insert(*p);
            *highest = (*highest).max(*p);
        }
    }
    if added.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = added
        .iter()
        .map(|(topic, p)| {
            format!(
                "`{topic}` (partition {p} assigned; the job started with {})",
                count_of(topic)
            )
        })
        .collect();
    bail!(
        "partitions were added to {} while the job ran. An order's events written since may land on another partition number than its earlier ones, and the tasks' state is partitioned by the old count, so the job stops, its last commit kept, rather than attribute them wrongly. See \"Partition counts\" in docs/scaling.md",
        listed.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_beyond_the_counts_the_job_started_with_names_each_topic() {
        let t = Config::default().topics;
        let within: Vec<(String, i32)> = (0..4)
            .flat_map(|p| [(t.orders.clone(), p), (t.repartition.clone(), p % 2)])
            .collect();
        check_assigned(&within, &t, 4, 2).unwrap();
        let mut beyond = within.clone();
        beyond.push((t.orders.clone(), 4));
        beyond.push((t.orders.clone(), 5));
        beyond.push((t.repartition.clone(), 2));
        let e = check_assigned(&beyond, &t, 4, 2).unwrap_err().to_string();
        assert!(e.starts_with("partitions were added to `"), "{e}");
        for named in [
            format!(
                "`{}` (partition 5 assigned; the job started with 4)",
                t.orders
            ),
            format!(
                "`{}` (partition 2 assigned; the job started with 2)",
                t.repartition
            ),
        ] {
            assert!(e.contains(&named), "{named} in {e}");
        }
        // The repartition topic is checked against its own count, not the inputs'.
        let e = check_assigned(&[(t.repartition.clone(), 3)], &t, 8, 2).unwrap_err();
        assert!(e.to_string().contains(&t.repartition), "{e}");
        check_assigned(&[(t.payments.clone(), 3)], &t, 4, 2).unwrap();
    }

    #[test]
    fn every_definition_parses_and_its_schema_exists() {
        let defs = definitions(&Config::default());
        assert_eq!(defs.len(), 10);
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("topics");
        for d in &defs {
            let internal = d.name.starts_with("gmv-")
                && !d.name.starts_with("gmv-windows")
                && !d.name.starts_with("gmv-totals");
            assert_eq!(d.schema.is_none(), internal, "{}", d.name);
            let Some(schema) = &d.schema else { continue };
            let schema = std::fs::read_to_string(root.join(schema)).unwrap();
            let v: serde_json::Value = serde_json::from_str(&schema).unwrap();
            assert_eq!(v["title"], d.name.as_str());
            assert!(d.partitions > 0);
        }
        // Inputs share one partition count; upsert outputs are compacted.
        assert!(defs[..3].iter().all(|d| d.partitions == defs[0].partitions));
        for d in &defs {
            let upsert =
                d.role == "gmv_windows" || d.role == "gmv_totals" || d.role.ends_with("changelog");
            assert_eq!(d.cleanup_policy == "compact", upsert, "{}", d.role);
        }
    }

    #[test]
    fn chosen_counts_apply_to_each_stage_s_topics_only() {
        let defs = definitions(&Config::default());
        let counts = Counts {
            input: Some(5),
            aggregation: Some(7),
        };
        let chosen: Vec<(&str, i32)> = defs
            .iter()
            .map(|d| (d.role.as_str(), d.partitions_with(counts)))
            .collect();
        for (role, n) in &chosen {
            let want = match *role {
                "orders" | "payments" | "deliveries" | "attribution_changelog" => 5,
                "repartition" | "aggregation_changelog" => 7,
                _ => defs.iter().find(|d| d.role == *role).unwrap().partitions,
            };
            assert_eq!(*n, want, "{role}");
        }
        assert!(defs
            .iter()
            .all(|d| d.partitions_with(Counts::default()) == d.partitions));
    }
}
