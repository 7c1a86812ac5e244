//! One `Config` with the contract's defaults, read from a TOML file, then
//! `GMV_*` environment variables, then flags. Unknown keys are errors that
//! name the key; `validate` lists every problem at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use crate::core::engine::TimeConfig;
use crate::core::fx::{default_rates, Rate};
use crate::core::milestone::ThresholdRule;
use crate::core::EngineConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicNames,
    pub time: TimeConfig,
    pub windows: WindowConfig,
    pub milestones: MilestoneConfig,
    /// Currency code → minor-unit exponent and CNY rate × 10^6.
    pub fx: BTreeMap<String, Rate>,
    pub metrics: MetricsConfig,
    pub state: StateConfig,
}

/// Kafka client settings; `properties` go to librdkafka as they are (security, SASL, TLS…).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub client_id: String,
    /// Stable name of this instance: its transactional id is `{group_id}-{instance_id}`,
    /// so a restarted instance fences its previous self. Unique per running instance.
    pub instance_id: String,
    /// Outputs, state changes and input offsets are committed in one transaction
    /// at least this often; every emission (`time.emit_interval_ms`) is also
    /// committed at once.
    pub commit_interval_ms: i64,
    /// Largest record (key and value) the job writes to any topic; every topic
    /// it writes must accept it (`max.message.bytes`), checked at start.
    pub max_record_bytes: i64,
    /// librdkafka properties for every client, e.g. `"security.protocol" = "SASL_SSL"`.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only.
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only.
    pub producer_properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicNames {
    pub orders: String,
    pub payments: String,
    pub deliveries: String,
    pub gmv_windows: String,
    pub gmv_totals: String,
    pub milestones: String,
    pub dead_letters: String,
    /// Internal: partial sums from the attribution stage, keyed by dimension key.
    pub repartition: String,
    /// Internal: state of the attribution tasks (one partition per input partition).
    pub attribution_changelog: String,
    /// Internal: state of the aggregation tasks (one partition per repartition partition).
    pub aggregation_changelog: String,
}

/// Tumbling window sizes per dimension, in ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    pub total_ms: Vec<i64>,
    pub brand_ms: Vec<i64>,
    pub channel_ms: Vec<i64>,
    pub country_ms: Vec<i64>,
}

/// Milestone thresholds in fen (1 CNY = 100 fen).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MilestoneConfig {
    pub brand_fen: Vec<i64>,
    pub channel_fen: Vec<i64>,
    pub total_fen: Vec<i64>,
    /// The total also fires at every multiple of this; 0 turns it off.
    pub total_every_fen: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP server for /metrics and /healthz.
    pub listen: String,
    /// Keys per dimension exported as `gmv_top_gmv_fen` series; the rest sum to `other`.
    pub top_n: usize,
    /// Serve the big screen (`/`, `/events`, `/api/summary`) from this
    /// instance: a reader of the output topics on its own thread. With many
    /// instances, a few screens (or `gmv screen`) spare the brokers a reader each.
    pub screen: bool,
    /// The process exits (status 70) when the processing loop has not turned
    /// for this long, so that a supervisor starts it again (`app/watchdog.rs`:
    /// librdkafka calls that never return). 0: never; otherwise at least 1,000.
    pub exit_after_silent_ms: i64,
}

/// Sizing of the in-memory state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Orders the order store (and as many payment ids) should hold without
    /// growing, over all input partitions: the orders of one `order_ttl`.
    /// Growing puts every id into an index half as large again, a pause of
    /// most of a second at 50 million, mid-peak (README, "Sizing the
    /// state"). 0: grow as needed.
    pub expected_orders: i64,
}

/// Most orders `state.expected_orders` may ask for: about 9 to 10 GB up
/// front (90 to 100 bytes an order, as the README says).
pub const MAX_EXPECTED_ORDERS: i64 = 100_000_000;
/// librdkafka's and Kafka's usual limit (a topic accepts 1,048,588 bytes by default).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;
/// The smallest `kafka.max_record_bytes`: a dead letter takes up to 30 KB
/// (`DEAD_LETTER_MAX_BYTES`), and a changelog chunk (a quarter of the limit)
/// plus its last entry (one order id with its waiting events, up to about
/// 25 KB) must fit.
pub const MIN_MAX_RECORD_BYTES: i64 = 128 * 1024;

impl Default for Config {
    fn default() -> Self {
        Config {
            kafka: KafkaConfig::default(),
            topics: TopicNames::default(),
            time: TimeConfig::default(),
            windows: WindowConfig::default(),
            milestones: MilestoneConfig::default(),
            fx: default_rates(),
            metrics: MetricsConfig::default(),
            state: StateConfig::default(),
        }
    }
}

/// librdkafka settings the job's guarantees rest on: read_committed inputs,
/// transactions with their own id, offsets committed only in transactions,
/// partition p of every input on one member (docs/scaling.md), its own group,
/// input records deleted unread counted, not passed over (`consumer::create`).
const GUARDED_PROPERTIES: [&str; 8] = [
    "auto.offset.reset",
    "isolation.level",
    "transactional.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "partition.assignment.strategy",
    "enable.idempotence",
    "group.id",
];

/// This host's name, as an instance id: two replicas started with the defaults
/// on two hosts do not fence each other. Characters other than letters, digits,
/// `-` and `_` become `-` (it ends up in the transactional and client ids).
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "0".into()
    } else {
        name
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "localhost:9092".into(),
            group_id: "gmv-job".into(),
            client_id: "gmv".into(),
            instance_id: host_name(),
            commit_interval_ms: 100,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES as i64,
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
        }
    }
}

impl Default for TopicNames {
    fn default() -> Self {
        TopicNames {
            orders: "orders".into(),
            payments: "payments".into(),
            deliveries: "deliveries".into(),
            gmv_windows: "gmv-windows".into(),
            gmv_totals: "gmv-totals".into(),
            milestones: "milestones".into(),
            dead_letters: "dead-letters".into(),
            repartition: "gmv-repartition".into(),
            attribution_changelog: "gmv-attribution-changelog".into(),
            aggregation_changelog: "gmv-aggregation-changelog".into(),
        }
    }
}

impl Default for WindowConfig {
    fn default() -> Self {
        let [total_ms, brand_ms, channel_ms, country_ms] = EngineConfig::default().window_sizes_ms;
        WindowConfig {
            total_ms,
            brand_ms,
            channel_ms,
            country_ms,
        }
    }
}

impl Default for MilestoneConfig {
    fn default() -> Self {
        MilestoneConfig {
            brand_fen: vec![10_000_000_000],
            channel_fen: vec![10_000_000_000],
            total_fen: vec![],
            total_every_fen: 1_000_000_000_000,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            // Loopback unless configured: /metrics and the page are not for the
            // whole network by default (the compose file sets its own).
            listen: "127.0.0.1:9100".into(),
            top_n: 10,
            screen: true,
            exit_after_silent_ms: crate::app::watchdog::EXIT_AFTER_SILENT_MS,
        }
    }
}

/// Settings given as flags, applied over file and environment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none", rename = "kafka.brokers")]
    pub brokers: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "kafka.group_id")]
    pub group_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "metrics.listen")]
    pub metrics_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "kafka.instance_id")]
    pub instance_id: Option<String>,
}

impl Config {
    /// Defaults, then the file (if any), then `GMV_SECTION__KEY` variables, then flags.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            anyhow::ensure!(
                path.exists(),
                "config file {} does not exist",
                path.display()
            );
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Env::prefixed("GMV_").split("__"));
        for (key, value) in [
            ("kafka.brokers", &overrides.brokers),
            ("kafka.group_id", &overrides.group_id),
            ("metrics.listen", &overrides.metrics_listen),
            ("kafka.instance_id", &overrides.instance_id),
        ] {
            if let Some(v) = value {
                fig = fig.merge(Serialized::default(key, v));
            }
        }
        let cfg: Config = fig.extract().map_err(|e| {
            let all: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("invalid configuration:\n  - {}", all.join("\n  - "))
        })?;
        cfg.validate().map_err(|problems| {
            anyhow::anyhow!("invalid configuration:\n  - {}", problems.join("\n  - "))
        })?;
        Ok(cfg)
    }

    /// Every problem, named by its key.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        if self.kafka.brokers.trim().is_empty() {
            p.push("kafka.brokers must not be empty".to_string());
        }
        if self.kafka.group_id.trim().is_empty() {
            p.push("kafka.group_id must not be empty".to_string());
        }
        if self.kafka.instance_id.trim().is_empty() {
            p.push("kafka.instance_id must not be empty".to_string());
        }
        for (section, props) in [
            ("properties", &self.kafka.properties),
            ("consumer_properties", &self.kafka.consumer_properties),
            ("producer_properties", &self.kafka.producer_properties),
        ] {
            for key in props
                .keys()
                .filter(|k| GUARDED_PROPERTIES.contains(&k.as_str()))
            {
                p.push(format!(
                    "kafka.{section}.\"{key}\" cannot be set: the job's exactly-once guarantee rests on its own value"
                ));
            }
        }
        if !(0..=MAX_EXPECTED_ORDERS).contains(&self.state.expected_orders) {
            p.push(format!(
                "state.expected_orders must be between 0 and {MAX_EXPECTED_ORDERS}, got {}",
                self.state.expected_orders
            ));
        }
        if !(MIN_MAX_RECORD_BYTES..=1_000_000_000).contains(&self.kafka.max_record_bytes) {
            p.push(format!(
                "kafka.max_record_bytes must be between {MIN_MAX_RECORD_BYTES} and 1000000000, got {}",
                self.kafka.max_record_bytes
            ));
        }
        if self.kafka.commit_interval_ms < 10 {
            p.push(format!(
                "kafka.commit_interval_ms must be at least 10, got {}",
                self.kafka.commit_interval_ms
            ));
        }
        let t = &self.time;
        for (name, v, min) in [
            ("time.max_out_of_orderness_ms", t.max_out_of_orderness_ms, 0),
            ("time.idle_timeout_ms", t.idle_timeout_ms, 1),
            ("time.allowed_lateness_ms", t.allowed_lateness_ms, 0),
            ("time.join_timeout_ms", t.join_timeout_ms, 0),
            ("time.dedup_ttl_ms", t.dedup_ttl_ms, 0),
            ("time.order_ttl_ms", t.order_ttl_ms, 1),
            ("time.max_future_ms", t.max_future_ms, 0),
            ("time.emit_interval_ms", t.emit_interval_ms, 1),
        ] {
            if v < min {
                p.push(format!("{name} must be at least {min}, got {v}"));
            }
        }
        if t.join_timeout_ms > t.allowed_lateness_ms {
            p.push(format!(
                "time.join_timeout_ms ({}) may not exceed time.allowed_lateness_ms ({}): a joined payment's windows must still be open",
                t.join_timeout_ms, t.allowed_lateness_ms
            ));
        }
        if t.order_ttl_ms < t.dedup_ttl_ms {
            p.push(format!(
                "time.order_ttl_ms ({}) must be at least time.dedup_ttl_ms ({}): orders are de-duplicated by the order store",
                t.order_ttl_ms, t.dedup_ttl_ms
            ));
        }
        for (name, sizes) in [
            ("windows.total_ms", &self.windows.total_ms),
            ("windows.brand_ms", &self.windows.brand_ms),
            ("windows.channel_ms", &self.windows.channel_ms),
            ("windows.country_ms", &self.windows.country_ms),
        ] {
            if let Some(bad) = sizes.iter().find(|s| **s <= 0 || **s % 1_000 != 0) {
                p.push(format!(
                    "{name} sizes must be positive whole seconds (the stages exchange 1-second sums), got {bad}"
                ));
            }
        }
        for (name, list) in [
            ("milestones.brand_fen", &self.milestones.brand_fen),
            ("milestones.channel_fen", &self.milestones.channel_fen),
            ("milestones.total_fen", &self.milestones.total_fen),
        ] {
            if let Some(bad) = list.iter().find(|s| **s <= 0) {
                p.push(format!("{name} thresholds must be positive, got {bad}"));
            }
        }
        if self.milestones.total_every_fen < 0 {
            p.push(format!(
                "milestones.total_every_fen must be 0 (off) or positive, got {}",
                self.milestones.total_every_fen
            ));
        }
        for (code, rate) in &self.fx {
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                p.push(format!(
                    "fx.{code}: currency codes are three upper-case letters (ISO 4217)"
                ));
            }
            if rate.exp > 6 {
                p.push(format!("fx.{code}.exp must be at most 6, got {}", rate.exp));
            }
            if rate.rate_micro <= 0 {
                p.push(format!(
                    "fx.{code}.rate_micro must be positive, got {}",
                    rate.rate_micro
                ));
            }
        }
        let names = self.topics.all();
        for (i, (key, name)) in names.iter().enumerate() {
            if name.trim().is_empty() {
                p.push(format!("topics.{key} must not be empty"));
            }
            if let Some((other, _)) = names[..i].iter().find(|(_, n)| n == name) {
                p.push(format!("topics.{key} and topics.{other} are both `{name}`"));
            }
        }
        if self.metrics.listen.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "metrics.listen must be host:port with an IP address, got `{}`",
                self.metrics.listen
            ));
        }
        if self.metrics.top_n > 100 {
            p.push(format!(
                "metrics.top_n must be at most 100 (one series each), got {}",
                self.metrics.top_n
            ));
        }
        // Below a second, a commit or the start itself would end the process.
        let silent = self.metrics.exit_after_silent_ms;
        if silent != 0 && silent < 1_000 {
            p.push(format!(
                "metrics.exit_after_silent_ms must be 0 (never) or at least 1000, got {silent}"
            ));
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(p)
        }
    }

    /// The engine's view of these settings.
    pub fn engine(&self) -> EngineConfig {
        let list = |v: &Vec<i64>| ThresholdRule {
            list_fen: v.clone(),
            every_fen: None,
        };
        EngineConfig {
            time: self.time.clone(),
            window_sizes_ms: [
                self.windows.total_ms.clone(),
                self.windows.brand_ms.clone(),
                self.windows.channel_ms.clone(),
                self.windows.country_ms.clone(),
            ],
            milestones: [
                ThresholdRule {
                    list_fen: self.milestones.total_fen.clone(),
                    every_fen: (self.milestones.total_every_fen > 0)
                        .then_some(self.milestones.total_every_fen),
                },
                list(&self.milestones.brand_fen),
                list(&self.milestones.channel_fen),
                ThresholdRule::default(),
            ],
            fx: self.fx.clone(),
            input_topic_names: [
                self.topics.orders.clone(),
                self.topics.payments.clone(),
                self.topics.deliveries.clone(),
            ],
            max_record_bytes: self.kafka.max_record_bytes as usize,
        }
    }
}

impl Config {
    /// The producer's `transactional.id`: stable across restarts of one instance.
    pub fn transactional_id(&self) -> String {
        format!("{}-{}", self.kafka.group_id, self.kafka.instance_id)
    }
}

impl TopicNames {
    /// (config key, topic name) of every topic, inputs first.
    pub fn all(&self) -> [(&'static str, &str); 10] {
        [
            ("orders", &self.orders),
            ("payments", &self.payments),
            ("deliveries", &self.deliveries),
            ("gmv_windows", &self.gmv_windows),
            ("gmv_totals", &self.gmv_totals),
            ("milestones", &self.milestones),
            ("dead_letters", &self.dead_letters),
            ("repartition", &self.repartition),
            ("attribution_changelog", &self.attribution_changelog),
            ("aggregation_changelog", &self.aggregation_changelog),
        ]
    }

    pub fn inputs(&self) -> [&str; 3] {
        [&self.orders, &self.payments, &self.deliveries]
    }

    /// Which input topic `name` is, if it is one.
    pub fn input_topic(&self, name: &str) -> Option<crate::model::InputTopic> {
        let i = self.inputs().iter().position(|t| *t == name)?;
        Some(crate::model::InputTopic::ALL[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_contracts_and_valid() {
        let c = Config::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.time.allowed_lateness_ms, 60_000);
        assert_eq!(c.windows.total_ms, vec![1_000, 60_000]);
        assert_eq!(c.milestones.brand_fen, vec![10_000_000_000]);
        assert_eq!(c.fx.len(), 8);
    }

    #[test]
    fn settings_the_guarantees_rest_on_are_refused_by_name() {
        let mut c = Config::default();
        c.kafka
            .consumer_properties
            .insert("isolation.level".into(), "read_uncommitted".into());
        c.kafka
            .properties
            .insert("security.protocol".into(), "SSL".into());
        let p = c.validate().unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("kafka.consumer_properties.\"isolation.level\""),
            "{p:?}"
        );
    }

    #[test]
    fn the_instance_id_defaults_to_the_host_name() {
        let id = Config::default().kafka.instance_id;
        assert!(!id.is_empty());
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            assert_eq!(id.len(), host.trim().len().max(1), "{id} for {host}");
        }
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{id}"
        );
    }

    #[test]
    fn validate_lists_every_problem() {
        let mut c = Config::default();
        c.time.join_timeout_ms = 120_000;
        c.windows.brand_ms = vec![0];
        c.topics.payments = "orders".into();
        c.metrics.listen = "nowhere".into();
        c.kafka.commit_interval_ms = 5;
        c.state.expected_orders = MAX_EXPECTED_ORDERS + 1;
        c.metrics.exit_after_silent_ms = 999;
        let p = c.validate().unwrap_err();
        assert_eq!(p.len(), 7, "{p:#?}");
        assert!(p.iter().any(|m| m.contains("metrics.exit_after_silent_ms")));
        assert!(p.iter().any(|m| m.contains("state.expected_orders")));
        assert!(p.iter().any(|m| m.contains("kafka.commit_interval_ms")));
        assert!(p.iter().any(|m| m.contains("time.join_timeout_ms")));
        assert!(p.iter().any(|m| m.contains("windows.brand_ms")));
        assert!(p.iter().any(|m| m.contains("topics.payments")));
        assert!(p.iter().any(|m| m.contains("metrics.listen")));
    }

    #[test]
    fn the_documented_example_is_valid_and_matches_the_defaults() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.example.toml");
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn file_unknown_key_is_named() {
        let dir = std::env::temp_dir().join(format!("gmv-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[time]\nallowed_latness_ms = 5\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("allowed_latness_ms"), "{err}");
        std::fs::write(&path, "[time]\nallowed_lateness_ms = 90000\njoin_timeout_ms = 30000\n[kafka.properties]\n\"security.protocol\" = \"SSL\"\n").unwrap();
        let c = Config::load(
            Some(&path),
            &Overrides {
                brokers: Some("b:1".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (c.time.allowed_lateness_ms, c.time.join_timeout_ms),
            (90_000, 30_000)
        );
        assert_eq!(c.kafka.brokers, "b:1");
        assert_eq!(c.kafka.properties["security.protocol"], "SSL");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn input_topics_are_known_by_their_configured_names() {
        use crate::model::InputTopic;
        let mut t = Config::default().topics;
        t.payments = "pay".into();
        assert_eq!(t.input_topic("pay"), Some(InputTopic::Payments));
        assert_eq!(t.input_topic(&t.orders.clone()), Some(InputTopic::Orders));
        assert_eq!(
            t.input_topic("payments"),
            None,
            "the default name no longer"
        );
        assert_eq!(t.input_topic(&t.repartition.clone()), None);
    }
}
