//! The daemon's configuration: a TOML file (every field optional, unknown fields refused),
//! validated into typed [`Settings`] before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_actors::policy::PolicyError;
use ferry_actors::settings::AMQP_FRAME_MIN_BYTES;
use ferry_actors::target::normalise_host_port;
use ferry_actors::{
    AmqpSettings, AmqpTls, ClientIdentity, KafkaCluster, KafkaSettings, ProducerSettings,
    RegistrySettings, RetryPolicy,
};
use serde::Deserialize;

use crate::daemon::access::{Access, Allowlist, Names, ServerAccess};
use crate::daemon::clients::Clients;
use crate::daemon::routes::{RouteConfig, RouteError, Routes};

/// The address the daemon listens on when no config says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:33383";
/// The address of the operations endpoint (HTTP) when no config says otherwise.
pub const DEFAULT_OPS_LISTEN: &str = "127.0.0.1:33384";

/// The configuration file as written. See `config/ferry.toml` for every field documented.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The gRPC ingress.
    pub server: ServerConfig,
    /// The timeout and retry policy applied to every message.
    pub policy: PolicyConfig,
    /// The producer actors and their cache.
    pub producers: ProducersConfig,
    /// Kafka producer tuning.
    pub kafka: KafkaConfig,
    /// RabbitMQ producer settings.
    pub rabbitmq: RabbitMqConfig,
    /// The operations endpoint and process housekeeping.
    pub ops: OpsConfig,
    /// Which targets requests may name, and the bearer token.
    pub access: AccessConfig,
    /// The durable spool.
    pub spool: SpoolConfig,
    /// Named routes (`[routes.NAME]`): targets a job names without knowing them.
    pub routes: std::collections::BTreeMap<String, RouteConfig>,
}

/// `[spool]`: the durable spool for messages a broker cannot take now (off unless `dir`
/// is set).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory on node-local disk ("" = no spool); one daemon per directory.
    pub dir: String,
    /// Most bytes the spool may hold; beyond it, messages that need it get error_no 5.
    pub max_bytes: u64,
    /// Free space the spool's disk must keep, in bytes; below it, as above.
    pub min_free_bytes: u64,
    /// Most bytes the spooled messages of one target may hold (at most `max_bytes`), so
    /// one dead target cannot take the whole spool from the others.
    pub max_bytes_per_target: u64,
    /// Most targets with spooled messages at once; a message for another gets error_no 5.
    pub max_targets: usize,
    /// Spooled messages older than this many seconds move to the dead letters, counted
    /// and logged with their ids; 0 = kept until delivered.
    pub max_age_s: u64,
    /// A spooled message its broker has refused (nack, access refused, no such exchange…)
    /// for this many seconds moves to the dead letters. An unreachable broker does not
    /// count: it has not answered.
    pub dead_letter_after_s: u64,
    /// Spooled messages of one target in flight at once while replaying.
    pub replay_in_flight: usize,
    /// Spooled messages of one target started per second while replaying; 0 = unlimited.
    pub replay_max_rate: u32,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            max_bytes: 1024 * 1024 * 1024,
            min_free_bytes: 256 * 1024 * 1024,
            max_bytes_per_target: 512 * 1024 * 1024,
            max_targets: 1_000,
            max_age_s: 0,
            dead_letter_after_s: 86_400,
            replay_in_flight: 64,
            replay_max_rate: 0,
        }
    }
}

/// The validated spool settings.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// The spool directory.
    pub dir: PathBuf,
    /// Its bounds.
    pub limits: ferry_spool::SpoolLimits,
    /// How it is replayed.
    pub replay: ferry_actors::spooler::SpoolSettings,
}

/// `[server]`: the gRPC ingress.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the gRPC ingress listens on.
    pub listen: String,
    /// Worker threads, each serving gRPC on its own SO_REUSEPORT listener; 0 = one per core;
    /// 1 by default.
    pub workers: usize,
    /// Largest payload accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most messages in flight across all targets; beyond it: error_no 5 (overloaded).
    pub max_in_flight: usize,
    /// Most messages of one `ferry.v1.Ingest` stream in flight; the daemon reads no more
    /// of that stream until one is answered.
    pub max_in_flight_per_stream: usize,
    /// On SIGTERM/SIGINT, how long messages in flight may take to finish, in milliseconds;
    /// those still unanswered then are answered error_no 6.
    pub shutdown_grace_ms: u64,
    /// Most client connections open at once; beyond it a new connection is closed at once.
    pub max_connections: usize,
    /// Most payload bytes in flight across all targets; beyond it: error_no 5. 0 = sized
    /// for the machine (a sixteenth of its memory, at most 1 GiB).
    pub max_in_flight_bytes: u64,
    /// Most concurrent HTTP/2 streams (calls) on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// A new connection that sends nothing within this many milliseconds is closed.
    pub handshake_timeout_ms: u64,
    /// A connection with no traffic either way for this many milliseconds is closed; must
    /// be longer than the policy's total budget.
    pub idle_connection_timeout_ms: u64,
    /// How long a unary call's request may take to arrive, in milliseconds; a call is cut
    /// off after this plus the policy's total budget.
    pub request_body_timeout_ms: u64,
    /// How long one message of a `ferry.v1.Ingest` stream may take to arrive once its
    /// first byte has, in milliseconds; a stream that trickles is ended.
    pub stream_message_timeout_ms: u64,
    /// PEM certificate chain for TLS on the gRPC ingress ("" = plain TCP).
    pub tls_cert_file: String,
    /// PEM private key of that certificate.
    pub tls_key_file: String,
    /// PEM CA whose client certificates the ingress accepts (mTLS; "" = none): a caller
    /// presenting one is identified by its subject (`[[access.clients]]`).
    pub tls_client_ca_file: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            workers: 1,
            max_message_bytes: default_max_message_bytes(),
            max_in_flight: 20_000,
            max_in_flight_per_stream: 1_024,
            shutdown_grace_ms: 7_000,
            max_connections: 4_096,
            max_in_flight_bytes: 0,
            max_streams_per_connection: 256,
            handshake_timeout_ms: 5_000,
            idle_connection_timeout_ms: 60_000,
            request_body_timeout_ms: 4_000,
            stream_message_timeout_ms: 30_000,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_client_ca_file: String::new(),
        }
    }
}

/// `[ops]`: the operations endpoint and process housekeeping.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Address of the HTTP endpoint serving /stats, /metrics and /healthz.
    pub listen: String,
    /// File to write the daemon's process id to ("" = none); removed on exit.
    pub pid_file: String,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_OPS_LISTEN.to_owned(),
            pid_file: String::new(),
        }
    }
}

/// 4 MiB, tonic's own default bound of a decoded request.
const fn default_max_message_bytes() -> usize {
    4 * 1024 * 1024
}

/// `[access]`: which targets requests may name, and the bearer token.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Allow any target even when listening beyond loopback (no allowlist).
    pub allow_any_target: bool,
    /// Kafka bootstrap addresses (`host:port`) requests may name.
    pub kafka_brokers: Vec<String>,
    /// RabbitMQ servers requests may name, with their exchanges.
    pub rabbitmq: Vec<RabbitMqAccess>,
    /// File holding the bearer token clients must send ("" = no token).
    pub token_file: String,
    /// Callers by name, each with its own credential, routes, targets and limits
    /// (`[[access.clients]]`); none by default (access decided per daemon).
    pub clients: Vec<crate::daemon::clients::ClientConfig>,
}

/// One `[[access.rabbitmq]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqAccess {
    /// `host:port` of the server (port 5672 if omitted).
    pub server: String,
    /// Exchanges allowed on it; `"*"` allows any.
    pub exchanges: Vec<String>,
    /// Virtual hosts allowed on it (decoded, e.g. `"/"`); left out or `"*"`: any.
    #[serde(default)]
    pub vhosts: Vec<String>,
    /// Users a URL may log in as; left out or `"*"`: any.
    #[serde(default)]
    pub users: Vec<String>,
}

impl ServerConfig {
    /// The ingress's TLS identity, with the CA of client certificates (mTLS) if one is
    /// given; `None` for plain TCP.
    fn tls(&self) -> Result<Option<TlsIdentity>, ConfigError> {
        let mut tls = tls_identity(&self.tls_cert_file, &self.tls_key_file)?;
        if !self.tls_client_ca_file.is_empty() {
            let Some(tls) = tls.as_mut() else {
                return Err(ConfigError::Invalid {
                    field: "server.tls_client_ca_file",
                    reason: "needs TLS on the ingress: set tls_cert_file and tls_key_file too"
                        .into(),
                });
            };
            tls.client_ca = Some(read_pem(
                "server.tls_client_ca_file",
                &self.tls_client_ca_file,
            )?);
        }
        Ok(tls)
    }

    /// Checks the timeouts that must outlast the policy's total `budget`; returns the idle
    /// connection timeout.
    fn check_against(&self, budget: Duration) -> Result<Duration, ConfigError> {
        let longer = |field, value: u64, why: &str| {
            if Duration::from_millis(value) > budget {
                return Ok(());
            }
            Err(ConfigError::Invalid {
                field,
                reason: format!(
                    "must be longer than the policy's total budget ({} ms){why}",
                    budget.as_millis()
                ),
            })
        };
        longer(
            "server.stream_message_timeout_ms",
            self.stream_message_timeout_ms,
            ": a stream's window can be full of messages waiting for their brokers that \
             long, and its next message waits meanwhile",
        )?;
        longer(
            "server.idle_connection_timeout_ms",
            self.idle_connection_timeout_ms,
            ", or a call waiting for its broker would lose its connection",
        )?;
        Ok(Duration::from_millis(self.idle_connection_timeout_ms))
    }
}

/// `[policy]`: attempt n may take n × `timeout_step_ms`; at most `max_attempts` attempts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Time budget step in milliseconds.
    pub timeout_step_ms: u64,
    /// Attempts per message (1–10).
    pub max_attempts: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            timeout_step_ms: 2_000,
            max_attempts: 2,
        }
    }
}

/// `[producers]`: the per-target producer actors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducersConfig {
    /// Most targets with a cached producer.
    pub max_targets: usize,
    /// Most Kafka broker sets with a cached producer (each costs librdkafka threads).
    pub max_kafka_targets: usize,
    /// Seconds a producer may stay unused before it is stopped.
    pub idle_timeout_s: u64,
    /// Most messages in flight to one target.
    pub max_in_flight_per_target: usize,
    /// Longest a connection attempt may take, in milliseconds.
    pub connect_timeout_ms: u64,
    /// First wait before reconnecting after a failure, in milliseconds (doubles per failure).
    pub restart_backoff_initial_ms: u64,
    /// Longest wait before reconnecting, in milliseconds.
    pub restart_backoff_max_ms: u64,
}

impl Default for ProducersConfig {
    fn default() -> Self {
        let producer = ProducerSettings::default();
        let registry = RegistrySettings::default();
        Self {
            max_targets: registry.max_targets,
            max_kafka_targets: registry.max_kafka_targets,
            idle_timeout_s: registry.idle_timeout.as_secs(),
            max_in_flight_per_target: producer.max_in_flight_per_target,
            connect_timeout_ms: millis(producer.connect_timeout),
            restart_backoff_initial_ms: millis(producer.restart_backoff_initial),
            restart_backoff_max_ms: millis(producer.restart_backoff_max),
        }
    }
}

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

/// `[rabbitmq]`: RabbitMQ producer settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitMqConfig {
    /// Connection name shown by the broker (`rabbitmqctl list_connections client_properties`).
    pub connection_name: String,
    /// Largest AMQP frame proposed to the broker, in bytes (4096 to 131072; a URL's
    /// `frame_max` may only lower it); each connection holds 64 frames of buffer.
    pub frame_max_bytes: u32,
    /// Most exchanges (one channel each) sharing one connection to a server (1 to 2047);
    /// beyond it ferry opens another connection to the same server.
    pub max_channels_per_connection: usize,
    /// Publish mandatory: a message no queue is bound for is answered 3 ("unroutable")
    /// instead of 0. Off by default, as the predecessor published.
    pub mandatory: bool,
    /// PEM file of the CA that signed the `amqps://` servers' certificates, trusted
    /// besides the system's roots ("" = the system's roots only).
    pub tls_ca_file: String,
    /// PEM client certificate chain presented to `amqps://` servers ("" = none); with
    /// `tls_key_file`.
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// TLS files of particular servers, by `host:port`, where a site's servers differ.
    pub servers: std::collections::BTreeMap<String, RabbitMqServerTls>,
}

/// `[rabbitmq.servers."host:port"]`: the TLS files of one RabbitMQ server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitMqServerTls {
    /// As `rabbitmq.tls_ca_file`, for this server.
    pub tls_ca_file: String,
    /// As `rabbitmq.tls_cert_file`, for this server.
    pub tls_cert_file: String,
    /// As `rabbitmq.tls_key_file`, for this server.
    pub tls_key_file: String,
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        let amqp = AmqpSettings::default();
        Self {
            connection_name: amqp.connection_name,
            frame_max_bytes: amqp.frame_max_bytes,
            max_channels_per_connection: amqp.max_channels_per_connection,
            mandatory: amqp.mandatory,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            servers: Default::default(),
        }
    }
}

/// librdkafka properties that carry ferry's delivery guarantee or its routing.
const RESERVED_KAFKA_PROPERTIES: [&str; 3] = ["bootstrap.servers", "acks", "enable.idempotence"];

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
        let reason = if RESERVED_KAFKA_PROPERTIES.contains(&key.as_str()) {
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

/// A configuration that cannot be used; the daemon refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown field, wrong type, …).
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: Box<toml::de::Error>,
    },
    /// A route cannot be used.
    #[error("invalid config: {0}")]
    Route(#[from] RouteError),
    /// A field has a value that cannot work.
    #[error("invalid config: {field}: {reason}")]
    Invalid {
        /// The field, as `section.name`.
        field: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// Everything the daemon needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address of the gRPC ingress.
    pub listen: SocketAddr,
    /// Worker arbiters (≥ 1).
    pub workers: usize,
    /// Largest payload accepted.
    pub max_message_bytes: usize,
    /// Most messages in flight in all.
    pub max_in_flight: usize,
    /// Most messages of one stream in flight.
    pub max_in_flight_per_stream: usize,
    /// How long messages in flight may take to finish once shutdown began.
    pub shutdown_grace: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Most payload bytes in flight across all targets.
    pub max_in_flight_bytes: u64,
    /// Most concurrent HTTP/2 streams on one connection.
    pub max_streams_per_connection: u32,
    /// How long a new connection may send nothing.
    pub handshake_timeout: Duration,
    /// How long a connection may see no traffic.
    pub idle_connection_timeout: Duration,
    /// The longest a unary call may take, request included.
    pub request_timeout: Duration,
    /// The longest one streamed message may take to arrive once begun.
    pub stream_message_timeout: Duration,
    /// Most bootstrap addresses one Kafka target may name.
    pub max_brokers_per_target: usize,
    /// The TLS identity of the gRPC ingress, if it speaks TLS.
    pub tls: Option<TlsIdentity>,
    /// Address of the HTTP operations endpoint.
    pub ops_listen: SocketAddr,
    /// Where to write the process id, if anywhere.
    pub pid_file: Option<PathBuf>,
    /// Which targets requests may name.
    pub access: Access,
    /// The bearer token clients must send, if any.
    pub token: Option<String>,
    /// The callers by name (`[[access.clients]]`).
    pub clients: Arc<Clients>,
    /// The retry policy.
    pub policy: RetryPolicy,
    /// Producer settings.
    pub producer: ProducerSettings,
    /// Producer cache bounds.
    pub registry: RegistrySettings,
    /// The durable spool, if one is configured.
    pub spool: Option<SpoolSettings>,
    /// The named routes.
    pub routes: Routes,
}

/// A certificate chain and its private key, PEM; and the CA of client certificates.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain.
    pub cert: Vec<u8>,
    /// The private key.
    pub key: Vec<u8>,
    /// The CA whose client certificates are accepted (mTLS), if any.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key (nor a checksum of it); the certificates' checksums, so that a
        // reload that changes one is seen (needs_restart compares Debug forms).
        f.debug_struct("TlsIdentity")
            .field("cert_crc", &crc32fast::hash(&self.cert))
            .field(
                "client_ca_crc",
                &self.client_ca.as_deref().map(crc32fast::hash),
            )
            .finish()
    }
}

impl Config {
    /// Reads and parses a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_text(path, &text)
    }

    /// Parses `text`, read from `path` (named in errors).
    pub fn from_text(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks every field and builds the typed settings.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        let listen = self.server.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                "must be an IP address and port, e.g. 127.0.0.1:33383",
            )
        })?;
        let workers = match self.server.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n if n <= 256 => n,
            _ => return Err(invalid("server.workers", "must be 0 (one per core) to 256")),
        };
        let max_message_bytes = self.server.max_message_bytes;
        if !(1..=256 * 1024 * 1024).contains(&max_message_bytes) {
            return Err(invalid(
                "server.max_message_bytes",
                "must be 1 to 268435456",
            ));
        }
        positive("server.max_in_flight", self.server.max_in_flight)?;
        positive(
            "server.max_in_flight_per_stream",
            self.server.max_in_flight_per_stream,
        )?;
        positive("server.shutdown_grace_ms", self.server.shutdown_grace_ms)?;
        positive("server.max_connections", self.server.max_connections)?;
        let max_in_flight_bytes = match self.server.max_in_flight_bytes {
            0 => auto_max_in_flight_bytes(),
            n => n,
        };
        if max_in_flight_bytes < max_message_bytes as u64 {
            return Err(invalid(
                "server.max_in_flight_bytes",
                "must be at least server.max_message_bytes (or 0 for the automatic size)",
            ));
        }
        if !(1..=10_000).contains(&self.server.max_streams_per_connection) {
            return Err(invalid(
                "server.max_streams_per_connection",
                "must be 1 to 10000",
            ));
        }
        positive(
            "server.handshake_timeout_ms",
            self.server.handshake_timeout_ms,
        )?;
        positive(
            "server.request_body_timeout_ms",
            self.server.request_body_timeout_ms,
        )?;
        positive(
            "server.stream_message_timeout_ms",
            self.server.stream_message_timeout_ms,
        )?;
        let tls = self.server.tls()?;
        let ops_listen = self.ops.listen.parse().map_err(|_| {
            invalid(
                "ops.listen",
                "must be an IP address and port, e.g. 127.0.0.1:33384",
            )
        })?;
        let policy = RetryPolicy::try_new(
            Duration::from_millis(self.policy.timeout_step_ms),
            self.policy.max_attempts,
        )
        .map_err(|e| match e {
            PolicyError::ZeroStep => invalid("policy.timeout_step_ms", "must be greater than 0"),
            PolicyError::Attempts(_) => invalid("policy.max_attempts", &e.to_string()),
        })?;

        let budget = policy.total_budget();
        let idle_connection_timeout = self.server.check_against(budget)?;
        if !(1..=64).contains(&self.kafka.max_brokers_per_target) {
            return Err(invalid("kafka.max_brokers_per_target", "must be 1 to 64"));
        }

        let spool = self.spool.validate()?;
        let access = self.access.validate(listen, !self.routes.is_empty())?;
        let token = read_token("access.token_file", &self.access.token_file)?;

        let p = &self.producers;
        positive("producers.max_targets", p.max_targets)?;
        positive("producers.max_kafka_targets", p.max_kafka_targets)?;
        positive("producers.idle_timeout_s", p.idle_timeout_s)?;
        positive(
            "producers.max_in_flight_per_target",
            p.max_in_flight_per_target,
        )?;
        positive("producers.connect_timeout_ms", p.connect_timeout_ms)?;
        positive(
            "producers.restart_backoff_initial_ms",
            p.restart_backoff_initial_ms,
        )?;
        if p.restart_backoff_max_ms < p.restart_backoff_initial_ms {
            return Err(invalid(
                "producers.restart_backoff_max_ms",
                "must be at least restart_backoff_initial_ms",
            ));
        }
        if !(AMQP_FRAME_MIN_BYTES..=128 * 1024).contains(&self.rabbitmq.frame_max_bytes) {
            return Err(invalid(
                "rabbitmq.frame_max_bytes",
                "must be 4096 to 131072",
            ));
        }
        let default_tls = amqp_tls(
            &self.rabbitmq.tls_ca_file,
            &self.rabbitmq.tls_cert_file,
            &self.rabbitmq.tls_key_file,
        )?;
        let mut tls_servers = std::collections::BTreeMap::new();
        for (server, files) in &self.rabbitmq.servers {
            let server = ferry_actors::target::normalise_host_port(server).map_err(|e| {
                ConfigError::Invalid {
                    field: "rabbitmq.servers",
                    reason: format!("{server:?}: {} (give host:port)", e.reason),
                }
            })?;
            let tls = amqp_tls(
                &files.tls_ca_file,
                &files.tls_cert_file,
                &files.tls_key_file,
            )?;
            tls_servers.insert(server, tls);
        }
        if !(1..=2047).contains(&self.rabbitmq.max_channels_per_connection) {
            return Err(invalid(
                "rabbitmq.max_channels_per_connection",
                "must be 1 to 2047 (AMQP's channel_max)",
            ));
        }
        check_kafka_properties("kafka.properties", self.kafka.properties.keys())?;
        let clusters = kafka_clusters(&self.kafka.clusters)?;
        let kafka = KafkaSettings {
            linger_ms: self.kafka.linger_ms,
            queue_max_messages: self.kafka.queue_max_messages,
            // Room for the payload plus Kafka's record and request framing.
            message_max_bytes: (max_message_bytes + 64 * 1024).max(1_000_000),
            // librdkafka gives up on a message when its caller has.
            message_timeout: policy.total_budget(),
            properties: self.kafka.properties.into_iter().collect(),
            clusters,
        };
        ferry_actors::kafka::check_settings(&kafka).map_err(|reason| ConfigError::Invalid {
            field: "kafka",
            reason,
        })?;
        let routes = Routes::from_config(&self.routes, self.kafka.max_brokers_per_target)?;
        let mtls = tls.as_ref().is_some_and(|tls| tls.client_ca.is_some());
        let clients = Arc::new(self.access.clients(&routes, mtls, token.is_some())?);
        Ok(Settings {
            listen,
            workers,
            max_message_bytes,
            max_in_flight: self.server.max_in_flight,
            max_in_flight_per_stream: self.server.max_in_flight_per_stream,
            shutdown_grace: Duration::from_millis(self.server.shutdown_grace_ms),
            max_connections: self.server.max_connections,
            max_in_flight_bytes,
            max_streams_per_connection: self.server.max_streams_per_connection,
            handshake_timeout: Duration::from_millis(self.server.handshake_timeout_ms),
            idle_connection_timeout,
            request_timeout: budget + Duration::from_millis(self.server.request_body_timeout_ms),
            stream_message_timeout: Duration::from_millis(self.server.stream_message_timeout_ms),
            max_brokers_per_target: self.kafka.max_brokers_per_target,
            tls,
            ops_listen,
            pid_file: (!self.ops.pid_file.is_empty()).then(|| PathBuf::from(self.ops.pid_file)),
            access,
            token,
            clients,
            policy,
            producer: ProducerSettings {
                connect_timeout: Duration::from_millis(p.connect_timeout_ms),
                restart_backoff_initial: Duration::from_millis(p.restart_backoff_initial_ms),
                restart_backoff_max: Duration::from_millis(p.restart_backoff_max_ms),
                max_in_flight_per_target: p.max_in_flight_per_target,
                kafka,
                amqp: AmqpSettings {
                    connection_name: self.rabbitmq.connection_name,
                    frame_max_bytes: self.rabbitmq.frame_max_bytes,
                    max_channels_per_connection: self.rabbitmq.max_channels_per_connection,
                    mandatory: self.rabbitmq.mandatory,
                    tls: default_tls,
                    tls_servers,
                },
            },
            registry: RegistrySettings {
                max_targets: p.max_targets,
                max_kafka_targets: p.max_kafka_targets,
                idle_timeout: Duration::from_secs(p.idle_timeout_s),
            },
            spool,
            routes,
        })
    }
}

impl SpoolConfig {
    /// The spool settings, or `None` when no directory is set.
    fn validate(&self) -> Result<Option<SpoolSettings>, ConfigError> {
        if self.dir.is_empty() {
            return Ok(None);
        }
        positive("spool.max_bytes", self.max_bytes)?;
        positive("spool.max_bytes_per_target", self.max_bytes_per_target)?;
        positive("spool.dead_letter_after_s", self.dead_letter_after_s)?;
        if !(1..=1_000_000).contains(&self.max_targets) {
            return Err(ConfigError::Invalid {
                field: "spool.max_targets",
                reason: "must be 1 to 1000000".into(),
            });
        }
        if !(1..=4096).contains(&self.replay_in_flight) {
            return Err(ConfigError::Invalid {
                field: "spool.replay_in_flight",
                reason: "must be 1 to 4096".into(),
            });
        }
        Ok(Some(SpoolSettings {
            dir: PathBuf::from(&self.dir),
            limits: ferry_spool::SpoolLimits {
                max_bytes: self.max_bytes,
                min_free_bytes: self.min_free_bytes,
                max_bytes_per_target: self.max_bytes_per_target.min(self.max_bytes),
                max_targets: self.max_targets,
            },
            replay: ferry_actors::spooler::SpoolSettings {
                replay_in_flight: self.replay_in_flight,
                replay_max_rate: self.replay_max_rate,
                max_age: (self.max_age_s > 0).then(|| Duration::from_secs(self.max_age_s)),
                dead_letter_after: Duration::from_secs(self.dead_letter_after_s),
            },
        }))
    }
}

impl AccessConfig {
    /// The `[[access.clients]]` of a config with `routes`, with or without mTLS on the
    /// ingress; refused beside a daemon-wide token (`has_token`).
    fn clients(
        &self,
        routes: &Routes,
        mtls: bool,
        has_token: bool,
    ) -> Result<Clients, ConfigError> {
        let clients = Clients::from_config(&self.clients, routes, mtls)?;
        if has_token && !clients.is_empty() {
            return Err(ConfigError::Invalid {
                field: "access.token_file",
                reason: "with [[access.clients]], give each client its own token_file instead"
                    .into(),
            });
        }
        Ok(clients)
    }

    /// The access rule: the allowlist if one is given; any target on loopback; beyond
    /// loopback, routes only when there are routes (`has_routes`), and otherwise refused
    /// unless `allow_any_target` says so.
    fn validate(&self, listen: SocketAddr, has_routes: bool) -> Result<Access, ConfigError> {
        let invalid = |field, reason: String| ConfigError::Invalid { field, reason };
        let listed = !self.kafka_brokers.is_empty() || !self.rabbitmq.is_empty();
        if self.allow_any_target {
            if listed {
                return Err(invalid(
                    "access.allow_any_target",
                    "cannot be true together with an allowlist; choose one".into(),
                ));
            }
            return Ok(Access::Any);
        }
        if !listed {
            if listen.ip().is_loopback() {
                return Ok(Access::Any);
            }
            if has_routes {
                // Routes only: a request that names a target itself is answered 7.
                return Ok(Access::Only(Allowlist::default()));
            }
            return Err(invalid(
                "access",
                format!(
                    "listening on {listen}, beyond loopback, needs routes, an \
                     allowlist (kafka_brokers, rabbitmq) or allow_any_target = true"
                ),
            ));
        }
        allowlist(&self.kafka_brokers, &self.rabbitmq, &ACCESS_FIELDS).map(Access::Only)
    }
}

/// The config fields an allowlist's errors name: Kafka brokers, RabbitMQ servers, and
/// their exchanges.
pub struct AllowlistFields(pub &'static str, pub &'static str, pub &'static str);

/// The fields of `[access]`'s own list.
const ACCESS_FIELDS: AllowlistFields = AllowlistFields(
    "access.kafka_brokers",
    "access.rabbitmq.server",
    "access.rabbitmq.exchanges",
);

/// The allowlist of `kafka_brokers` and `rabbitmq` entries, normalised; errors name
/// `fields`.
pub fn allowlist(
    kafka_brokers: &[String],
    rabbitmq: &[RabbitMqAccess],
    fields: &AllowlistFields,
) -> Result<Allowlist, ConfigError> {
    let invalid = |field, reason: String| ConfigError::Invalid { field, reason };
    let mut list = Allowlist::default();
    for broker in kafka_brokers {
        let broker = normalise_host_port(broker).map_err(|e| invalid(fields.0, e.reason))?;
        list.kafka_brokers.insert(broker);
    }
    for entry in rabbitmq {
        let server = if entry
            .server
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            entry.server.clone()
        } else {
            format!("{}:5672", entry.server)
        };
        let server = normalise_host_port(&server).map_err(|e| invalid(fields.1, e.reason))?;
        if entry.exchanges.is_empty() {
            return Err(invalid(
                fields.2,
                format!("{server}: list the exchanges allowed, or \"*\" for any"),
            ));
        }
        let allowed = ServerAccess {
            exchanges: Names::of(&entry.exchanges),
            vhosts: Names::of(&entry.vhosts),
            users: Names::of(&entry.users),
        };
        list.rabbitmq.insert(server, allowed);
    }
    Ok(list)
}

/// The automatic `server.max_in_flight_bytes`: a sixteenth of the machine's memory, at most
/// 1 GiB (1 GiB when the memory cannot be read). Measured: a message in flight costs
/// about four times its payload in the daemon (request buffer, producer queue, copies).
fn auto_max_in_flight_bytes() -> u64 {
    const GIB: u64 = 1024 * 1024 * 1024;
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    total.map_or(GIB, |bytes| (bytes / 16).clamp(16 * 1024 * 1024, GIB))
}

/// Largest certificate chain or key file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;
/// Largest token file read.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Reads at most `limit` bytes of `path` (a config naming /dev/zero must not hang start-up).
fn read_bounded(path: &str, limit: u64) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(limit).read_to_end(&mut bytes))
        .map_err(|source| ConfigError::Read {
            path: PathBuf::from(path),
            source,
        })?;
    Ok(bytes)
}

/// Reads a PEM file (at most [`MAX_PEM_BYTES`]); `field` names it in errors.
fn read_pem(field: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    let bytes = read_bounded(path, MAX_PEM_BYTES)?;
    if !bytes.starts_with(b"-----BEGIN") {
        return Err(ConfigError::Invalid {
            field,
            reason: format!("{path} is not a PEM file"),
        });
    }
    Ok(bytes)
}

/// Reads the TLS certificate chain and key (both or neither).
fn tls_identity(cert: &str, key: &str) -> Result<Option<TlsIdentity>, ConfigError> {
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Ok(Some(TlsIdentity {
            cert: read_pem("server.tls_cert_file", cert)?,
            key: read_pem("server.tls_key_file", key)?,
            client_ca: None,
        })),
        _ => Err(ConfigError::Invalid {
            field: "server.tls_key_file",
            reason: "tls_cert_file and tls_key_file go together: set both or neither".into(),
        }),
    }
}

/// Reads the TLS files of `amqps://` servers: a CA and a client certificate with its key
/// (both or neither); "" means none.
fn amqp_tls(ca: &str, cert: &str, key: &str) -> Result<AmqpTls, ConfigError> {
    let ca_pem = match ca {
        "" => None,
        path => {
            let pem = read_pem("rabbitmq.tls_ca_file", path)?;
            Some(String::from_utf8(pem).map_err(|_| ConfigError::Invalid {
                field: "rabbitmq.tls_ca_file",
                reason: format!("{path} is not a PEM file (not text)"),
            })?)
        }
    };
    let identity = match (cert.is_empty(), key.is_empty()) {
        (true, true) => None,
        (false, false) => Some(ClientIdentity {
            cert_pem: read_pem("rabbitmq.tls_cert_file", cert)?,
            key_pem: read_pem("rabbitmq.tls_key_file", key)?,
        }),
        _ => {
            return Err(ConfigError::Invalid {
                field: "rabbitmq.tls_key_file",
                reason: "tls_cert_file and tls_key_file go together: set both or neither".into(),
            });
        }
    };
    Ok(AmqpTls { ca_pem, identity })
}

/// Reads the bearer token from `path` ("" = no token); errors name `field`.
pub fn read_token(field: &'static str, path: &str) -> Result<Option<String>, ConfigError> {
    if path.is_empty() {
        return Ok(None);
    }
    let bytes = read_bounded(path, MAX_TOKEN_BYTES)?;
    let text = String::from_utf8_lossy(&bytes);
    let token = text.trim();
    if !(16..=4096).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::Invalid {
            field,
            reason: format!("{path}: the token must be 16 to 4096 printable characters"),
        });
    }
    Ok(Some(token.to_owned()))
}

/// Refuses a zero where only a positive bound makes sense.
fn positive<N: Default + PartialEq>(field: &'static str, value: N) -> Result<(), ConfigError> {
    if value == N::default() {
        return Err(ConfigError::Invalid {
            field,
            reason: "must be greater than 0".to_owned(),
        });
    }
    Ok(())
}

/// A duration in whole milliseconds, for defaults.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        toml::from_str::<Config>(text)
            .map_err(|source| ConfigError::Parse {
                path: "test.toml".into(),
                source: Box::new(source),
            })?
            .validate()
    }

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(s.policy, RetryPolicy::default());
        assert_eq!(s.producer.kafka.message_timeout, Duration::from_secs(6));
        assert_eq!(s.workers, 1);
    }

    #[test]
    fn the_sample_config_is_valid_and_holds_the_defaults() {
        let sample = include_str!("../config/ferry.toml");
        let s = parse(sample).unwrap();
        let d = parse("").unwrap();
        assert_eq!(format!("{s:?}"), format!("{d:?}"));
    }

    #[test]
    fn rabbitmq_tls_files_are_read_per_server_and_checked() {
        let dir = std::env::temp_dir().join(format!("ferry-amqp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = |name: &str| {
            let path = dir.join(name);
            let text = format!("-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n");
            std::fs::write(&path, text).unwrap();
            path.to_string_lossy().into_owned()
        };
        let (site, research, cert, key) = (pem("site"), pem("research"), pem("c"), pem("k"));
        let s = parse(&format!(
            "[rabbitmq]\ntls_ca_file = \"{site}\"\ntls_cert_file = \"{cert}\"\n\
             tls_key_file = \"{key}\"\n[rabbitmq.servers.\"MQ.Example:5671\"]\n\
             tls_ca_file = \"{research}\""
        ))
        .unwrap();
        let amqp = &s.producer.amqp;
        assert!(
            amqp.tls_for("other:5671")
                .ca_pem
                .as_ref()
                .unwrap()
                .contains("site")
        );
        assert!(amqp.tls_for("other:5671").identity.is_some());
        let research_tls = amqp.tls_for("mq.example:5671");
        assert!(research_tls.ca_pem.as_ref().unwrap().contains("research"));
        assert!(research_tls.identity.is_none(), "per server, not merged");

        let field = |text: String| match parse(&text).unwrap_err() {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(
            field(format!("[rabbitmq]\ntls_cert_file = \"{cert}\"")),
            "rabbitmq.tls_key_file"
        );
        assert_eq!(
            field("[rabbitmq.servers.\"no port\"]\ntls_ca_file = \"\"".into()),
            "rabbitmq.servers"
        );
        let not_pem = dir.join("not-pem");
        std::fs::write(&not_pem, "hello").unwrap();
        assert_eq!(
            field(format!(
                "[rabbitmq]\ntls_ca_file = \"{}\"",
                not_pem.display()
            )),
            "rabbitmq.tls_ca_file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kafka_clusters_take_properties_and_secret_files_and_this_build_has_tls_and_sasl() {
        let dir = std::env::temp_dir().join(format!("ferry-kafka-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = dir.join("pw");
        std::fs::write(&password, "s3cret\n").unwrap();
        let cluster = |properties: &str, secret: &str| {
            format!(
                "[[kafka.clusters]]\nbrokers = [\"K1:9093\", \"k2:9093\"]\n\
                 properties = {{ {properties} }}\nsecret_files = {{ {secret} }}"
            )
        };
        let secret = format!("\"sasl.password\" = \"{}\"", password.display());
        // SCRAM over TLS, and Kerberos: librdkafka refuses a mechanism it was built without.
        // (Kerberos takes its keytab; librdkafka's kinit command names it.)
        for (mechanism, more) in [
            ("SCRAM-SHA-512", ""),
            ("PLAIN", ""),
            (
                "GSSAPI",
                ", \"sasl.kerberos.keytab\" = \"/etc/ferry/ferry.keytab\"",
            ),
        ] {
            let s = parse(&cluster(
                &format!(
                    "\"security.protocol\" = \"SASL_SSL\", \"sasl.mechanism\" = \"{mechanism}\", \
                     \"sasl.username\" = \"ferry\"{more}"
                ),
                &secret,
            ))
            .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
            let target = ferry_actors::KafkaTarget::try_new(["k2:9093"], 8).unwrap();
            let found = s.producer.kafka.cluster_for(&target).unwrap();
            assert!(
                found
                    .secrets
                    .contains(&("sasl.password".into(), "s3cret".into()))
            );
            assert!(!format!("{s:?}").contains("s3cret"), "a secret in Debug");
        }
        let other = ferry_actors::KafkaTarget::try_new(["k3:9092"], 8).unwrap();
        assert!(
            parse("")
                .unwrap()
                .producer
                .kafka
                .cluster_for(&other)
                .is_none()
        );

        let field = |text: String| match parse(&text).unwrap_err() {
            ConfigError::Invalid { field, reason } => (field, reason),
            other => panic!("{other}"),
        };
        let (f, reason) = field(cluster("\"sasl.password\" = \"inline\"", ""));
        assert_eq!(f, "kafka.clusters");
        assert!(reason.contains("secret_files"), "{reason}");
        let (f, _) = field(cluster("\"acks\" = \"1\"", ""));
        assert_eq!(f, "kafka.clusters");
        let (f, reason) = field(format!("{}\n{}", cluster("", ""), cluster("", "")));
        assert!(reason.contains("two clusters"), "{f}: {reason}");
        let (f, _) = field(cluster("\"security.protocol\" = \"NOPE\"", ""));
        assert_eq!(f, "kafka");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn beyond_loopback_an_allowlist_or_an_explicit_any_is_needed() {
        let open = parse("[server]\nlisten = \"0.0.0.0:1\"\n[access]\nallow_any_target = true");
        assert_eq!(open.unwrap().access, Access::Any);
        let listed = parse(
            "[server]\nlisten = \"0.0.0.0:1\"\n[access]\nkafka_brokers = [\"K:9092\"]\n\
             [[access.rabbitmq]]\nserver = \"MQ\"\nexchanges = [\"*\"]",
        )
        .unwrap();
        let Access::Only(list) = listed.access else {
            panic!("an allowlist")
        };
        assert!(list.kafka_brokers.contains("k:9092"));
        assert_eq!(list.rabbitmq.get("mq:5672"), Some(&ServerAccess::ANY));
        assert_eq!(parse("").unwrap().access, Access::Any, "loopback");
    }

    #[test]
    fn beyond_loopback_routes_alone_allow_only_the_routes() {
        let routes_only = parse(
            "[server]\nlisten = \"0.0.0.0:1\"\n[routes.events]\nkind = \"kafka\"\n\
             brokers = [\"k1:9092\"]\ntopic = \"nwp.events\"\n",
        )
        .unwrap();
        assert_eq!(routes_only.access, Access::Only(Allowlist::default()));
        assert_eq!(routes_only.routes.len(), 1);
        let error = parse("[server]\nlisten = \"0.0.0.0:1\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("needs routes, an allowlist"), "{error}");
        let bad_route =
            parse("[routes.events]\nkind = \"kafka\"\nbrokers = [\"k1:9092\"]\ntopic = \"\"\n")
                .unwrap_err()
                .to_string();
        assert!(bad_route.contains("routes.events.topic"), "{bad_route}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = parse("[server]\nlisten_addr = \"x\"").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (text, field) in [
            ("[server]\nlisten = \"nowhere\"", "server.listen"),
            (
                "[server]\nshutdown_grace_ms = 0",
                "server.shutdown_grace_ms",
            ),
            ("[ops]\nlisten = \"localhost\"", "ops.listen"),
            ("[server]\nlisten = \"0.0.0.0:1\"", "access"),
            (
                "[access]\nallow_any_target = true\nkafka_brokers = [\"k:1\"]",
                "access.allow_any_target",
            ),
            (
                "[access]\nkafka_brokers = [\"nohost\"]",
                "access.kafka_brokers",
            ),
            (
                "[[access.rabbitmq]]\nserver = \"mq\"\nexchanges = []",
                "access.rabbitmq.exchanges",
            ),
            ("[policy]\nmax_attempts = 0", "policy.max_attempts"),
            ("[policy]\ntimeout_step_ms = 0", "policy.timeout_step_ms"),
            ("[producers]\nmax_targets = 0", "producers.max_targets"),
            (
                "[producers]\nmax_kafka_targets = 0",
                "producers.max_kafka_targets",
            ),
            (
                "[server]\nmax_in_flight_bytes = 1000",
                "server.max_in_flight_bytes",
            ),
            (
                "[server]\nmax_streams_per_connection = 0",
                "server.max_streams_per_connection",
            ),
            (
                "[server]\nidle_connection_timeout_ms = 6000",
                "server.idle_connection_timeout_ms",
            ),
            (
                "[server]\nhandshake_timeout_ms = 0",
                "server.handshake_timeout_ms",
            ),
            (
                "[kafka]\nmax_brokers_per_target = 65",
                "kafka.max_brokers_per_target",
            ),
            ("[kafka.properties]\nacks = \"1\"", "kafka.properties"),
            ("[kafka.properties]\n\"no.such.property\" = \"1\"", "kafka"),
        ] {
            match parse(text) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
