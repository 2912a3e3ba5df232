//! `[kafka]` and `[[kafka.clusters]]`: librdkafka tuning for every Kafka producer, and the
//! properties (TLS, SASL, with secrets read from files) of particular clusters.

use ferry_actors::kafka::RESERVED_PROPERTIES;
use ferry_actors::{KafkaCluster, KafkaSettings, RetryPolicy};
use serde::Deserialize;

use crate::config::ConfigError;
use crate::config::files::read_bounded;

/// `[kafka]`: tuning of each Kafka producer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// librdkafka `linger.ms`.
    pub linger_ms: u32,
    /// librdkafka `queue.buffering.max.messages`.
    pub queue_max_messages: u32,
    /// Most bootstrap addresses one request may name (librdkafka keeps a thread and a
    /// socket per broker).
    pub max_brokers_per_target: usize,
    /// Further librdkafka producer properties (`bootstrap.servers`, `acks` and
    /// `enable.idempotence` may not be overridden).
    pub properties: std::collections::BTreeMap<String, String>,
    /// `[[kafka.clusters]]`: properties of particular clusters (TLS, SASL).
    pub clusters: Vec<KafkaClusterConfig>,
}

/// One `[[kafka.clusters]]` entry: librdkafka properties for the targets that name one of
/// `brokers`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaClusterConfig {
    /// The cluster's brokers, `host:port`.
    pub brokers: Vec<String>,
    /// librdkafka properties (`security.protocol`, `sasl.mechanism`, `sasl.username`,
    /// `ssl.ca.location`, …).
    pub properties: std::collections::BTreeMap<String, String>,
    /// Secret properties, each read from a file (trailing newline dropped):
    /// `{ "sasl.password" = "/etc/ferry/kafka.password" }`.
    pub secret_files: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        let kafka = KafkaSettings::default();
        Self {
            linger_ms: kafka.linger_ms,
            queue_max_messages: kafka.queue_max_messages,
            max_brokers_per_target: ferry_actors::target::DEFAULT_MAX_BROKERS_PER_TARGET,
            properties: Default::default(),
            clusters: Vec::new(),
        }
    }
}

/// librdkafka properties whose values are secrets: only in `secret_files`, never inline.
const SECRET_KAFKA_PROPERTIES: [&str; 5] = [
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "sasl.oauthbearer.client.secret",
];

/// Largest secret file read.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Checks `properties` of `field` against the reserved and secret names.
fn check_kafka_properties<'a>(
    field: &'static str,
    mut names: impl Iterator<Item = &'a String>,
) -> Result<(), ConfigError> {
    names.try_for_each(|key| {
        let reason = if RESERVED_PROPERTIES.contains(&key.as_str()) {
            format!("{key} is set by ferry and may not be overridden")
        } else if SECRET_KAFKA_PROPERTIES.contains(&key.as_str()) {
            format!("{key} is a secret: give it in a cluster's secret_files, not inline")
        } else {
            return Ok(());
        };
        Err(ConfigError::Invalid { field, reason })
    })
}

/// Validates `[[kafka.clusters]]`: normalised brokers, each in one cluster only, allowed
/// property names, secrets read from their files.
fn kafka_clusters(entries: &[KafkaClusterConfig]) -> Result<Vec<KafkaCluster>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        field: "kafka.clusters",
        reason,
    };
    let mut clusters: Vec<KafkaCluster> = Vec::new();
    for entry in entries {
        let mut brokers = std::collections::BTreeSet::new();
        for broker in &entry.brokers {
            let broker =
                ferry_actors::target::normalise_host_port(broker).map_err(|e| invalid(e.reason))?;
            if clusters.iter().any(|c| c.brokers.contains(&broker)) {
                return Err(invalid(format!("{broker} is listed in two clusters")));
            }
            brokers.insert(broker);
        }
        if brokers.is_empty() {
            return Err(invalid("a cluster lists no brokers".into()));
        }
        check_kafka_properties("kafka.clusters", entry.properties.keys())?;
        check_kafka_properties(
            "kafka.clusters",
            entry
                .secret_files
                .keys()
                .filter(|k| !SECRET_KAFKA_PROPERTIES.contains(&k.as_str())),
        )?;
        let mut secrets = Vec::new();
        for (key, path) in &entry.secret_files {
            let bytes = read_bounded(path, MAX_SECRET_BYTES)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| invalid(format!("{path} ({key}) is not text")))?;
            let value = text.trim_end_matches(['\r', '\n']).to_owned();
            if value.is_empty() {
                return Err(invalid(format!("{path} ({key}) is empty")));
            }
            secrets.push((key.clone(), value));
        }
        clusters.push(KafkaCluster {
            brokers,
            properties: entry.properties.clone().into_iter().collect(),
            secrets,
        });
    }
    Ok(clusters)
}

impl KafkaConfig {
    /// Checks `max_brokers_per_target` (requests are validated against it, not producers).
    pub fn check_brokers_per_target(&self) -> Result<usize, ConfigError> {
        if !(1..=64).contains(&self.max_brokers_per_target) {
            return Err(ConfigError::Invalid {
                field: "kafka.max_brokers_per_target",
                reason: "must be 1 to 64".into(),
            });
        }
        Ok(self.max_brokers_per_target)
    }

    /// The Kafka producers' settings, for payloads of at most `max_message_bytes` under
    /// `policy` (librdkafka gives up on a message when its caller has).
    pub fn validate(
        &self,
        max_message_bytes: usize,
        policy: &RetryPolicy,
    ) -> Result<KafkaSettings, ConfigError> {
        check_kafka_properties("kafka.properties", self.properties.keys())?;
        let kafka = KafkaSettings {
            linger_ms: self.linger_ms,
            queue_max_messages: self.queue_max_messages,
            // Room for the payload plus Kafka's record and request framing.
            message_max_bytes: (max_message_bytes + 64 * 1024).max(1_000_000),
            message_timeout: policy.total_budget(),
            properties: self.properties.clone().into_iter().collect(),
            clusters: kafka_clusters(&self.clusters)?,
        };
        ferry_actors::kafka::check_settings(&kafka).map_err(|reason| ConfigError::Invalid {
            field: "kafka",
            reason,
        })?;
        Ok(kafka)
    }
}
