//! Kafka only: client settings, the input consumer and its per-partition
//! lanes, the transactional producer, and topic creation and checks.

pub mod consumer;
pub mod lanes;
pub mod producer;
pub mod topics;

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// Client settings: ours first, then the user's pass-through properties (which win).
/// The client id names the instance: the group's member list then shows which
/// instance each member is (`consumer::another_member_is`).
pub fn client_config(
    k: &KafkaConfig,
    ours: &[(&str, &str)],
    specific: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("client.id", format!("{}-{}", k.client_id, k.instance_id));
    for (key, value) in ours {
        c.set(*key, *value);
    }
    for (key, value) in k.properties.iter().chain(specific) {
        c.set(key, value);
    }
    c
}
