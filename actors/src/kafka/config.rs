//! The librdkafka configuration of a Kafka producer: the properties ferry sets itself and
//! may not be overridden, its tuning, then the configured and per-cluster properties.

use rdkafka::config::ClientConfig;
use rdkafka::producer::BaseProducer;

use crate::settings::{KafkaCluster, KafkaSettings};

/// The librdkafka properties ferry sets on every producer and a config may not override:
///
/// - `bootstrap.servers`: a target *is* its broker set (the registry caches one producer
///   per set), so another value would deliver a sender's messages to a cluster it did not
///   name.
/// - `acks` (`all`): the broker confirms a message only once every in-sync replica has
///   it, and that confirmation is what the sender is answered with.
/// - `enable.idempotence` (`true`): librdkafka's own retries within `message.timeout.ms`
///   neither duplicate nor reorder a partition's messages.
pub const RESERVED_PROPERTIES: [&str; 3] = ["bootstrap.servers", "acks", "enable.idempotence"];

/// The librdkafka configuration of a producer for `bootstrap_servers`, with `cluster`'s
/// properties last.
pub(super) fn client_config(
    bootstrap_servers: &str,
    s: &KafkaSettings,
    cluster: Option<&KafkaCluster>,
) -> ClientConfig {
    // Named from the reserved list, so that the list a config is checked against is the
    // list set here (a fourth entry does not compile until it is set).
    let [bootstrap, acks, idempotence] = RESERVED_PROPERTIES;
    let mut config = ClientConfig::new();
    config
        .set(bootstrap, bootstrap_servers)
        .set(acks, "all")
        .set(idempotence, "true")
        .set("linger.ms", s.linger_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            s.queue_max_messages.to_string(),
        )
        .set("message.max.bytes", s.message_max_bytes.to_string())
        .set(
            "message.timeout.ms",
            s.message_timeout.as_millis().to_string(),
        )
        .set("client.id", "ferry")
        // A topic the cluster does not know fails its messages after 1 s (not librdkafka's
        // 30 s), so a misspelt topic is answered "rejected" instead of timing out.
        .set("topic.metadata.propagation.max.ms", "1000");
    // The portable build's OpenSSL is built in and does not know where this system keeps
    // its trusted CAs: librdkafka then looks in the usual places (Debian's, RHEL's, SUSE's
    // bundles), unless the config names a CA file.
    if cfg!(feature = "kafka-vendored-libs") {
        config.set("ssl.ca.location", "probe");
    }
    for (key, value) in &s.properties {
        config.set(key, value);
    }
    if let Some(cluster) = cluster {
        for (key, value) in cluster.properties.iter().chain(&cluster.secrets) {
            config.set(key, value);
        }
    }
    config
}

/// Checks that librdkafka accepts `settings` (unknown properties, bad values, a security
/// protocol this build lacks), the common ones and each cluster's, at start-up rather than
/// at the first message. It opens no connection.
pub fn check_settings(settings: &KafkaSettings) -> Result<(), String> {
    let check = |cluster: Option<&KafkaCluster>| {
        client_config("", settings, cluster)
            .create::<BaseProducer>()
            .map(drop)
            .map_err(|e| match cluster {
                None => e.to_string(),
                Some(c) => format!("cluster {:?}: {e}", c.brokers),
            })
    };
    check(None)?;
    settings.clusters.iter().try_for_each(|c| check(Some(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_portable_build_finds_the_systems_cas_unless_a_config_names_one() {
        let settings = KafkaSettings::default();
        let config = client_config("b:9092", &settings, None);
        let probe = cfg!(feature = "kafka-vendored-libs").then_some("probe");
        assert_eq!(config.get("ssl.ca.location"), probe);
        let mut named = KafkaSettings::default();
        named
            .properties
            .push(("ssl.ca.location".into(), "/etc/site/ca.pem".into()));
        let config = client_config("b:9092", &named, None);
        assert_eq!(config.get("ssl.ca.location"), Some("/etc/site/ca.pem"));
    }

    #[test]
    fn every_reserved_property_is_set_with_ferry_s_value() {
        let config = client_config("k1:9092,k2:9092", &KafkaSettings::default(), None);
        let set: Vec<_> = RESERVED_PROPERTIES.map(|key| config.get(key)).into();
        assert_eq!(set, [Some("k1:9092,k2:9092"), Some("all"), Some("true")]);
    }
}
