//! Validated, typed settings of the producers and the registry (the daemon's config file
//! is turned into these before any actor starts).

use std::time::Duration;

/// How producer actors connect, restart and bound their traffic.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    /// Longest a connection attempt (TCP, AMQP handshake, channel, exchange) may take.
    pub connect_timeout: Duration,
    /// Wait before the first reconnection after a failure; doubles per consecutive failure.
    pub restart_backoff_initial: Duration,
    /// Upper bound of the reconnection wait; a connection that lived this long resets it.
    pub restart_backoff_max: Duration,
    /// Most messages in flight to one target; beyond it callers get an overload error.
    pub max_in_flight_per_target: usize,
    /// Kafka producer settings.
    pub kafka: KafkaSettings,
    /// RabbitMQ producer settings.
    pub amqp: AmqpSettings,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            restart_backoff_initial: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(2),
            max_in_flight_per_target: 10_000,
            kafka: KafkaSettings::default(),
            amqp: AmqpSettings::default(),
        }
    }
}

impl ProducerSettings {
    /// The wait before reconnecting after `failures` consecutive failures (1, 2, …).
    pub fn restart_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.restart_backoff_initial
            .saturating_mul(1 << doublings)
            .min(self.restart_backoff_max)
    }
}

/// Settings of each Kafka producer (one per broker set).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// librdkafka `linger.ms`: how long a message may wait to join a batch.
    pub linger_ms: u32,
    /// librdkafka `queue.buffering.max.messages`: the producer's queue bound.
    pub queue_max_messages: u32,
    /// librdkafka `message.max.bytes`: the largest request the producer sends.
    pub message_max_bytes: usize,
    /// librdkafka `message.timeout.ms`: how long the producer keeps trying one message.
    /// The daemon sets it to the policy's total budget, so nothing outlives its caller long.
    pub message_timeout: Duration,
    /// Further librdkafka properties, applied after the above (they override them).
    pub properties: Vec<(String, String)>,
    /// Properties of particular clusters (security, mostly), applied last to a target
    /// that names one of a cluster's brokers.
    pub clusters: Vec<KafkaCluster>,
}

impl KafkaSettings {
    /// The cluster whose brokers include one of `target`'s.
    pub fn cluster_for(&self, target: &crate::KafkaTarget) -> Option<&KafkaCluster> {
        self.clusters
            .iter()
            .find(|cluster| target.brokers().any(|b| cluster.brokers.contains(b)))
    }
}

/// The librdkafka properties of one Kafka cluster: clusters at one site differ (TLS, SASL
/// mechanism, user).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaCluster {
    /// Its brokers, `host:port` normalised as in [`crate::KafkaTarget`]; a target naming
    /// any of them is this cluster.
    pub brokers: std::collections::BTreeSet<String>,
    /// librdkafka properties (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`, …).
    pub properties: Vec<(String, String)>,
    /// Properties whose values are secrets (`sasl.password`, …), read from files: never
    /// logged nor shown.
    pub secrets: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secrets' names and a fingerprint of their values, so that a reload can tell
        // that they changed (the daemon compares settings by their Debug form).
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.secrets.hash(&mut hasher);
        let names: Vec<&str> = self.secrets.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("KafkaCluster")
            .field("brokers", &self.brokers)
            .field("properties", &self.properties)
            .field("secrets", &names)
            .field("fingerprint", &format_args!("{:016x}", hasher.finish()))
            .finish()
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            linger_ms: 1,
            queue_max_messages: 100_000,
            message_max_bytes: 5 * 1024 * 1024,
            message_timeout: Duration::from_secs(6),
            properties: Vec::new(),
            clusters: Vec::new(),
        }
    }
}

/// Settings of each RabbitMQ producer (one per server URL and exchange).
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// The connection name shown in the broker's management tools.
    pub connection_name: String,
    /// The largest AMQP frame ferry proposes (the broker may lower it, and so may a URL's
    /// own `frame_max`, within 4 KiB–128 KiB). lapin keeps 2 × 32 frames of buffer per connection and
    /// zero-fills them when the negotiated frame is larger than its first guess, so this
    /// sets each connection's memory: RabbitMQ's default 128 KiB costs 8 MiB of resident
    /// memory per connection; at 8 KiB the 512 KiB of buffer stays mostly untouched (a
    /// target measured 80 KiB in all).
    pub frame_max_bytes: u32,
    /// Most channels (one per exchange) on one connection; beyond it a second connection
    /// to the same server is opened. The broker's own `channel_max` lowers it.
    pub max_channels_per_connection: usize,
    /// Publish mandatory: a message no queue is bound for is returned by the broker and
    /// answered as rejected ("unroutable"). Off by default, as the predecessor published.
    pub mandatory: bool,
    /// TLS towards `amqps://` servers, unless `tls_servers` names the server.
    pub tls: AmqpTls,
    /// TLS of particular servers, by `host:port` (host lower-cased, as
    /// [`crate::AmqpTarget::server`] gives it): sites mix CAs and client certificates.
    pub tls_servers: std::collections::BTreeMap<String, AmqpTls>,
}

impl AmqpSettings {
    /// The TLS settings for `server` (`host:port`).
    pub fn tls_for(&self, server: &str) -> &AmqpTls {
        self.tls_servers.get(server).unwrap_or(&self.tls)
    }
}

/// How ferry speaks TLS to one RabbitMQ server (`amqps://`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AmqpTls {
    /// PEM certificates trusted besides the system's roots: the site's CA.
    pub ca_pem: Option<String>,
    /// A client certificate chain and its private key, PEM, presented to the server (for
    /// the EXTERNAL mechanism, or a server that requires a client certificate).
    pub identity: Option<ClientIdentity>,
}

/// A client certificate chain and its private key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate chain.
    pub cert_pem: Vec<u8>,
    /// The private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for AmqpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key: a fingerprint of the files, so that a reload can tell that they
        // changed (the daemon compares settings by their Debug form).
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.ca_pem.hash(&mut hasher);
        if let Some(identity) = &self.identity {
            identity.cert_pem.hash(&mut hasher);
            identity.key_pem.hash(&mut hasher);
        }
        f.debug_struct("AmqpTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("fingerprint", &format_args!("{:016x}", hasher.finish()))
            .finish()
    }
}

// The bound `frame_max_bytes` is checked against; it lives with the AMQP URL rules.
pub use crate::target::AMQP_FRAME_MIN_BYTES;

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            connection_name: "ferry".to_owned(),
            frame_max_bytes: 8192,
            max_channels_per_connection: 1024,
            mandatory: false,
            tls: AmqpTls::default(),
            tls_servers: std::collections::BTreeMap::new(),
        }
    }
}

/// Bounds of the producer registry.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Most targets with a cached producer; the least recently used idle one is evicted
    /// to make room, and when none is idle new targets are refused as overloaded.
    pub max_targets: usize,
    /// Most of those that are Kafka broker sets: each is a librdkafka producer with a
    /// thread per broker, so they are bounded apart (the least recently used idle one is
    /// evicted, as above).
    pub max_kafka_targets: usize,
    /// A producer unused for this long, with nothing in flight, is stopped.
    pub idle_timeout: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            max_targets: 1_000,
            max_kafka_targets: 16,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delay_doubles_up_to_its_bound() {
        let s = ProducerSettings::default();
        let delays: Vec<_> = (1..=7).map(|n| s.restart_delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(s.restart_delay(u32::MAX), Duration::from_secs(2));
    }
}
