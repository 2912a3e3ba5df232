//! `[ops]`: the HTTP operations endpoint (`/stats`, `/metrics`, `/healthz`) and the pid
//! file.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::ConfigError;

/// The address of the operations endpoint (HTTP) when no config says otherwise.
pub const DEFAULT_OPS_LISTEN: &str = "127.0.0.1:33384";

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

/// The validated `[ops]` table.
#[derive(Debug, Clone)]
pub struct OpsSettings {
    /// Address of the HTTP operations endpoint.
    pub listen: SocketAddr,
    /// Where to write the process id, if anywhere.
    pub pid_file: Option<PathBuf>,
}

impl OpsConfig {
    /// The validated table.
    pub fn validate(&self) -> Result<OpsSettings, ConfigError> {
        let listen = self.listen.parse().map_err(|_| ConfigError::Invalid {
            field: "ops.listen",
            reason: "must be an IP address and port, e.g. 127.0.0.1:33384".into(),
        })?;
        Ok(OpsSettings {
            listen,
            pid_file: (!self.pid_file.is_empty()).then(|| PathBuf::from(&self.pid_file)),
        })
    }
}
