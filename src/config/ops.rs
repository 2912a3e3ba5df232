//! `[ops]`: the HTTP operations endpoint (`/stats`, `/metrics`, `/healthz`), the pid file,
//! and when the daemon calls itself degraded: serving, but with something an operator
//! should look at before users notice.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use ferry_actors::stats::RECENT_DROPS;

use crate::config::ConfigError;
use crate::logging::LogFormat;

/// A week in seconds: the longest window of the health rules.
const WEEK_S: u64 = 7 * 24 * 3600;

pub use crate::contract::DEFAULT_OPS_LISTEN;

/// `[ops]`: the operations endpoint and process housekeeping.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Address of the HTTP endpoint serving /stats, /metrics and /healthz.
    pub listen: String,
    /// File to write the daemon's process id to ("" = none); removed on exit.
    pub pid_file: String,
    /// A target failing without a delivery, or whose spooled messages have waited, for
    /// longer than this many seconds (1 to a week) makes the daemon degraded.
    pub degraded_after_s: u64,
    /// A spool fuller than this share of `spool.max_bytes` makes the daemon degraded.
    pub spool_warn_ratio: f64,
    /// A producer that lost more than this many connections (each of which had carried a
    /// delivery; failed attempts to connect do not count) within `restart_window_s` makes
    /// the daemon degraded: a restart loop, the broker accepting connections and dropping
    /// them. 1 to 63.
    pub restart_loop_restarts: u32,
    /// The window of `restart_loop_restarts`, in seconds.
    pub restart_window_s: u64,
    /// `text` (env_logger's lines, the default) or `json` (one object per line);
    /// `--log-format` overrides it.
    pub log_format: LogFormat,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_OPS_LISTEN.to_owned(),
            pid_file: String::new(),
            degraded_after_s: 300,
            spool_warn_ratio: 0.8,
            restart_loop_restarts: 5,
            restart_window_s: 600,
            log_format: LogFormat::Text,
        }
    }
}

/// When the daemon is degraded (see [`OpsConfig`]'s fields of the same names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthRules {
    /// How long a target may fail, or its spooled messages wait, before it counts.
    pub degraded_after: Duration,
    /// The share of the spool's bound above which it counts.
    pub spool_warn_ratio: f64,
    /// Restarts within `restart_window` above which a producer counts.
    pub restart_loop_restarts: u32,
    /// The window of `restart_loop_restarts`.
    pub restart_window: Duration,
}

impl Default for HealthRules {
    fn default() -> Self {
        OpsConfig::default().health_rules()
    }
}

/// The validated `[ops]` table.
#[derive(Debug, Clone)]
pub struct OpsSettings {
    /// Address of the HTTP operations endpoint.
    pub listen: SocketAddr,
    /// Where to write the process id, if anywhere.
    pub pid_file: Option<PathBuf>,
    /// When the daemon is degraded.
    pub health: HealthRules,
    /// The form of log lines.
    pub log_format: LogFormat,
}

impl OpsConfig {
    /// The validated table.
    pub fn validate(&self) -> Result<OpsSettings, ConfigError> {
        let listen = super::listen_address(&self.listen).ok_or_else(|| ConfigError::Invalid {
            field: "ops.listen",
            reason: "must be an IP address and port (or localhost:PORT), e.g. 127.0.0.1:33384"
                .into(),
        })?;
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        if !(1..=WEEK_S).contains(&self.degraded_after_s) {
            return Err(invalid(
                "ops.degraded_after_s",
                "must be 1 to 604800 (a week)",
            ));
        }
        if !(self.spool_warn_ratio > 0.0 && self.spool_warn_ratio <= 1.0) {
            return Err(invalid(
                "ops.spool_warn_ratio",
                "must be above 0 and at most 1 (0.8 = warn at 80 % full)",
            ));
        }
        // A producer remembers its last RECENT_DROPS lost connections: a bound at or
        // above it could never be passed.
        if !(1..RECENT_DROPS as u32).contains(&self.restart_loop_restarts) {
            return Err(invalid("ops.restart_loop_restarts", "must be 1 to 63"));
        }
        if !(1..=WEEK_S).contains(&self.restart_window_s) {
            return Err(invalid(
                "ops.restart_window_s",
                "must be 1 to 604800 (a week)",
            ));
        }
        Ok(OpsSettings {
            listen,
            pid_file: (!self.pid_file.is_empty()).then(|| PathBuf::from(&self.pid_file)),
            health: self.health_rules(),
            log_format: self.log_format,
        })
    }

    /// The health rules as written.
    fn health_rules(&self) -> HealthRules {
        HealthRules {
            degraded_after: Duration::from_secs(self.degraded_after_s),
            spool_warn_ratio: self.spool_warn_ratio,
            restart_loop_restarts: self.restart_loop_restarts,
            restart_window: Duration::from_secs(self.restart_window_s),
        }
    }
}
