//! `[server]`: the gRPC ingress — its address, workers, bounds of messages, connections
//! and streams, the timeouts that must outlast the policy's budget, and TLS (with client
//! certificates for mTLS).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::files::read_pem;
use crate::config::{ConfigError, positive};

pub use crate::contract::DEFAULT_LISTEN;

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

/// The validated `[server]` table.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address of the gRPC ingress.
    pub listen: SocketAddr,
    /// Worker arbiters (≥ 1), each with its own SO_REUSEPORT listener.
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
    /// The TLS identity of the gRPC ingress, if it speaks TLS.
    pub tls: Option<TlsIdentity>,
}

/// What [`ServerConfig::check`] found: the parts of the settings that do not depend on the
/// policy.
#[derive(Debug)]
pub struct Checked {
    /// The ingress's address.
    listen: SocketAddr,
    /// Worker arbiters.
    workers: usize,
    /// The bound of bytes in flight (sized for the machine when configured 0).
    max_in_flight_bytes: u64,
    /// The ingress's TLS identity, if any.
    tls: Option<TlsIdentity>,
}

impl ServerSettings {
    /// Whether the ingress verifies client certificates (mTLS).
    pub fn mtls(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some())
    }
}

impl ServerConfig {
    /// Checks the address, the bounds and the TLS files: all that does not depend on the
    /// policy (see [`Self::validate`]).
    pub fn check(&self) -> Result<Checked, ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        let listen = super::listen_address(&self.listen).ok_or_else(|| {
            invalid(
                "server.listen",
                "must be an IP address and port (or localhost:PORT), e.g. 127.0.0.1:33383",
            )
        })?;
        let workers = match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n if n <= 256 => n,
            _ => return Err(invalid("server.workers", "must be 0 (one per core) to 256")),
        };
        let max_in_flight_bytes = self.check_bounds()?;
        let tls = self.tls()?;
        Ok(Checked {
            listen,
            workers,
            max_in_flight_bytes,
            tls,
        })
    }

    /// The validated table, from what [`Self::check`] found and the policy's total
    /// `budget`, which the server's timeouts must outlast.
    pub fn validate(
        &self,
        checked: Checked,
        budget: Duration,
    ) -> Result<ServerSettings, ConfigError> {
        let Checked {
            listen,
            workers,
            max_in_flight_bytes,
            tls,
        } = checked;
        let idle_connection_timeout = self.check_against(budget)?;
        Ok(ServerSettings {
            listen,
            workers,
            max_message_bytes: self.max_message_bytes,
            max_in_flight: self.max_in_flight,
            max_in_flight_per_stream: self.max_in_flight_per_stream,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            max_connections: self.max_connections,
            max_in_flight_bytes,
            max_streams_per_connection: self.max_streams_per_connection,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            idle_connection_timeout,
            request_timeout: budget + Duration::from_millis(self.request_body_timeout_ms),
            stream_message_timeout: Duration::from_millis(self.stream_message_timeout_ms),
            tls,
        })
    }

    /// Checks the bounds of messages, connections and streams; returns the bound of bytes
    /// in flight (sized for the machine when 0).
    fn check_bounds(&self) -> Result<u64, ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        if !(1..=256 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(invalid(
                "server.max_message_bytes",
                "must be 1 to 268435456",
            ));
        }
        positive("server.max_in_flight", self.max_in_flight)?;
        positive(
            "server.max_in_flight_per_stream",
            self.max_in_flight_per_stream,
        )?;
        positive("server.shutdown_grace_ms", self.shutdown_grace_ms)?;
        positive("server.max_connections", self.max_connections)?;
        let max_in_flight_bytes = match self.max_in_flight_bytes {
            0 => auto_max_in_flight_bytes(),
            n => n,
        };
        if max_in_flight_bytes < self.max_message_bytes as u64 {
            return Err(invalid(
                "server.max_in_flight_bytes",
                "must be at least server.max_message_bytes (or 0 for the automatic size)",
            ));
        }
        if !(1..=10_000).contains(&self.max_streams_per_connection) {
            return Err(invalid(
                "server.max_streams_per_connection",
                "must be 1 to 10000",
            ));
        }
        positive("server.handshake_timeout_ms", self.handshake_timeout_ms)?;
        positive(
            "server.request_body_timeout_ms",
            self.request_body_timeout_ms,
        )?;
        positive(
            "server.stream_message_timeout_ms",
            self.stream_message_timeout_ms,
        )?;
        Ok(max_in_flight_bytes)
    }
}

/// 4 MiB, tonic's own default bound of a decoded request.
const fn default_max_message_bytes() -> usize {
    crate::contract::DEFAULT_MAX_MESSAGE_BYTES as usize
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

/// A certificate chain and its private key, PEM; and the CA of client certificates.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain the ingress presents, its own first.
    pub cert: Vec<u8>,
    /// The certificate's private key (never logged: see the `Debug` below).
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
