//! The daemon's configuration: a TOML file (every field optional, unknown fields refused),
//! validated into typed [`Settings`] before anything starts.
//!
//! One file per table of the file, each with its `…Config` (the table as written, with its
//! defaults) and its `validate` (the typed settings, or a [`ConfigError`] naming the field):
//! [`server`] (the gRPC ingress), [`ops`] (the HTTP endpoint, the pid file), [`producers`]
//! (`[policy]` and `[producers]`), [`kafka`], [`rabbitmq`], [`spool`], [`access`] (the
//! allowlist and the token), [`clients`] (`[[access.clients]]`) and [`routes`];
//! [`allowlist`] is the rule requests are checked against, built from either. [`files`] reads the files a config names (tokens,
//! certificates, secrets), each bounded in size. This module imports nothing from the
//! daemon: the daemon reads what it validated.

pub mod access;
pub mod allowlist;
pub mod clients;
pub mod files;
pub mod kafka;
pub mod ops;
pub mod producers;
pub mod rabbitmq;
pub mod routes;
pub mod server;
pub mod spool;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_actors::{ProducerSettings, RegistrySettings, RetryPolicy};
use serde::Deserialize;

pub use access::AccessConfig;
pub use allowlist::{AllowlistFields, RabbitMqAccess, allowlist};
pub use files::read_token;
pub use kafka::{KafkaClusterConfig, KafkaConfig};
pub use ops::{DEFAULT_OPS_LISTEN, OpsConfig, OpsSettings};
pub use producers::{PolicyConfig, ProducersConfig};
pub use rabbitmq::{RabbitMqConfig, RabbitMqServerTls};
pub use server::{DEFAULT_LISTEN, ServerConfig, ServerSettings, TlsIdentity};
pub use spool::{SpoolConfig, SpoolSettings};

use self::allowlist::Access;
use self::clients::Clients;
use self::routes::{RouteConfig, RouteError, Routes};

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

/// A configuration that cannot be used; the daemon refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file the config named (or the config itself).
        path: PathBuf,
        /// The operating system's reason: missing, unreadable, a directory…
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown field, wrong type, …).
    #[error("invalid config file {path}: {place}{message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// Where: `line L, column C: `, or "" when TOML gave no place.
        place: String,
        /// TOML's message: what was expected there, on one line.
        message: String,
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
    /// The gRPC ingress: its address, bounds, timeouts and TLS.
    pub server: ServerSettings,
    /// The operations endpoint and the pid file.
    pub ops: OpsSettings,
    /// Most bootstrap addresses one Kafka target may name.
    pub max_brokers_per_target: usize,
    /// Which targets requests may name.
    pub access: Access,
    /// The bearer token clients must send, if any.
    pub token: Option<String>,
    /// The callers by name (`[[access.clients]]`).
    pub clients: Arc<Clients>,
    /// The retry policy.
    pub policy: RetryPolicy,
    /// How producers connect, restart and publish, per backend.
    pub producer: ProducerSettings,
    /// Bounds of the producer cache.
    pub registry: RegistrySettings,
    /// The durable spool, if one is configured.
    pub spool: Option<SpoolSettings>,
    /// The named routes.
    pub routes: Routes,
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
        toml::from_str(text).map_err(|error| ConfigError::parse(path, text, &error))
    }

    /// Checks every field and builds the typed settings, table by table, in the order the
    /// first error found is reported: the server, ops, the policy (the server's timeouts
    /// and Kafka's message timeout must outlast its total budget), the spool, access, the
    /// producers, RabbitMQ, Kafka, the routes and the clients.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let checked = self.server.check()?;
        let ops = self.ops.validate()?;
        let policy = self.policy.validate()?;
        let server = self.server.validate(checked, policy.total_budget())?;
        let max_brokers_per_target = self.kafka.check_brokers_per_target()?;
        let spool = self.spool.validate()?;
        let access = self
            .access
            .validate(server.listen, !self.routes.is_empty())?;
        let token = read_token("access.token_file", &self.access.token_file)?;
        self.producers.check()?;
        let amqp = self.rabbitmq.validate()?;
        let kafka = self.kafka.validate(server.max_message_bytes, &policy)?;
        let (producer, registry) = self.producers.settings(kafka, amqp);
        let routes = Routes::from_config(&self.routes, max_brokers_per_target)?;
        let clients = self
            .access
            .clients(&routes, server.mtls(), token.is_some())?;
        Ok(Settings {
            server,
            ops,
            max_brokers_per_target,
            access,
            token,
            clients: Arc::new(clients),
            policy,
            producer,
            registry,
            spool,
            routes,
        })
    }
}

/// Refuses a zero where only a positive bound makes sense.
/// A listen address: an IP address and port, or `localhost:PORT` (taken as 127.0.0.1,
/// the address `localhost` means to most users; other names are refused, so what the
/// daemon binds never depends on a resolver).
pub fn listen_address(text: &str) -> Option<std::net::SocketAddr> {
    if let Some(port) = text.strip_prefix("localhost:") {
        let port = port.parse().ok()?;
        return Some((std::net::Ipv4Addr::LOCALHOST, port).into());
    }
    text.parse().ok()
}

impl ConfigError {
    /// TOML's `error` in `text` (read from `path`), on one line, placed where the mistake
    /// is ([`crate::toml_place`]).
    pub fn parse(path: &Path, text: &str, error: &toml::de::Error) -> Self {
        let (place, message) = crate::toml_place::describe(text, error);
        ConfigError::Parse {
            path: path.to_owned(),
            place,
            message,
        }
    }
}

fn positive<N: Default + PartialEq>(field: &'static str, value: N) -> Result<(), ConfigError> {
    if value == N::default() {
        return Err(ConfigError::Invalid {
            field,
            reason: "must be greater than 0".to_owned(),
        });
    }
    Ok(())
}
