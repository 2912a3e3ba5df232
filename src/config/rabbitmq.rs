//! `[rabbitmq]`: how RabbitMQ producers connect (frame size, channels per connection,
//! mandatory publishing) and the TLS files of `amqps://` servers, by default and per server.

use std::collections::BTreeMap;

use ferry_actors::settings::AMQP_FRAME_MIN_BYTES;
use ferry_actors::target::normalise_host_port;
use ferry_actors::{AmqpSettings, AmqpTls, ClientIdentity};
use serde::Deserialize;

use crate::config::ConfigError;
use crate::config::files::read_pem;

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

impl RabbitMqConfig {
    /// The RabbitMQ producers' settings, with every TLS file read.
    pub fn validate(&self) -> Result<AmqpSettings, ConfigError> {
        let invalid = |field, reason: String| ConfigError::Invalid { field, reason };
        if !(AMQP_FRAME_MIN_BYTES..=128 * 1024).contains(&self.frame_max_bytes) {
            return Err(invalid(
                "rabbitmq.frame_max_bytes",
                "must be 4096 to 131072".into(),
            ));
        }
        let tls = amqp_tls(&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file)?;
        let mut tls_servers = BTreeMap::new();
        for (server, files) in &self.servers {
            let server = normalise_host_port(server).map_err(|e| {
                invalid(
                    "rabbitmq.servers",
                    format!("{server:?}: {} (give host:port)", e.reason),
                )
            })?;
            let server_tls = amqp_tls(
                &files.tls_ca_file,
                &files.tls_cert_file,
                &files.tls_key_file,
            )?;
            tls_servers.insert(server, server_tls);
        }
        if !(1..=2047).contains(&self.max_channels_per_connection) {
            return Err(invalid(
                "rabbitmq.max_channels_per_connection",
                "must be 1 to 2047 (AMQP's channel_max)".into(),
            ));
        }
        Ok(AmqpSettings {
            connection_name: self.connection_name.clone(),
            frame_max_bytes: self.frame_max_bytes,
            max_channels_per_connection: self.max_channels_per_connection,
            mandatory: self.mandatory,
            tls,
            tls_servers,
        })
    }
}
