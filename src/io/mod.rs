//! Kafka only: client settings, the input consumer and its per-partition
//! lanes, the acknowledged output producer and the thread that hands it the
//! changelog records, and topic creation and checks.

pub mod consumer;
pub mod lanes;
pub mod producer;
pub mod topics;

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// Client settings: ours first, then the user's pass-through properties (which win).
pub fn client_config(
    k: &KafkaConfig,
    ours: &[(&str, &str)],
    specific: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("client.id", &k.client_id);
    for (key, value) in ours {
        c.set(*key, *value);
    }
    for (key, value) in k.properties.iter().chain(specific) {
        c.set(key, value);
    }
    c
}
