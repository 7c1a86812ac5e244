//! Kafka only: client settings, the input consumer and its per-partition
//! lanes, the transactional producer, reading changelogs back on a restore,
//! and topic creation and checks.

pub mod changelog;
pub mod consumer;
pub mod lanes;
pub mod producer;
pub mod topics;

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// This instance's client id, ending with what tells this process from another
/// one started with the same instance id (its pid and start time).
pub fn client_id(k: &KafkaConfig) -> String {
    static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let process = PROCESS.get_or_init(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("{}-{started}", std::process::id())
    });
    format!("{}.{process}", instance_client_id(k))
}

/// The part of the client id every process of one instance shares.
pub fn instance_client_id(k: &KafkaConfig) -> String {
    format!("{}-{}", k.client_id, k.instance_id)
}

/// Client settings: ours first, then the user's pass-through properties (which win).
/// The client id names the instance and this process (`{client_id}-{instance_id}.{process}`):
/// the group's member list then shows which instance, and which process of it,
/// each member is (`consumer::another_process_is`).
pub fn client_config(
    k: &KafkaConfig,
    ours: &[(&str, &str)],
    specific: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("client.id", client_id(k));
    for (key, value) in ours {
        c.set(*key, *value);
    }
    for (key, value) in k.properties.iter().chain(specific) {
        c.set(key, value);
    }
    c
}
