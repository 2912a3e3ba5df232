//! `[access]`: which targets requests may name beyond the routes (so the daemon cannot be
//! used to reach anything else on the site LAN), the daemon-wide bearer token, and the
//! clients (`[[access.clients]]`), validated into the rule of [`crate::config::allowlist`].

use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::config::allowlist::{Access, Allowlist, AllowlistFields, RabbitMqAccess, allowlist};
use crate::config::clients::{ClientConfig, Clients};
use crate::config::routes::Routes;

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
    pub clients: Vec<ClientConfig>,
}

impl AccessConfig {
    /// The `[[access.clients]]` of a config with `routes`, with or without mTLS on the
    /// ingress; refused beside a daemon-wide token (`has_token`).
    pub fn clients(
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
    pub fn validate(&self, listen: SocketAddr, has_routes: bool) -> Result<Access, ConfigError> {
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

/// The fields of `[access]`'s own list.
const ACCESS_FIELDS: AllowlistFields = AllowlistFields(
    "access.kafka_brokers",
    "access.rabbitmq.server",
    "access.rabbitmq.exchanges",
);
