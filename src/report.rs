//! The daemon's stats document: what `/stats` serves as JSON, `/metrics` renders for
//! Prometheus and `ferry stats` prints as a table.

#[cfg(feature = "daemon")]
use std::time::{Duration, SystemTime};

#[cfg(feature = "daemon")]
use chrono::{DateTime, SecondsFormat, Utc};
#[cfg(feature = "daemon")]
use ferry_actors::StatsSnapshot;
use serde::{Deserialize, Serialize};

/// The whole daemon at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// ferry's version.
    pub version: String,
    /// When the daemon started (RFC 3339, UTC).
    pub started_at: String,
    /// Seconds since it started.
    pub uptime_s: f64,
    /// Whether it accepts messages (false once shutdown began).
    pub serving: bool,
    /// Messages accepted and not yet answered.
    pub in_flight: u64,
    /// Payload bytes of those messages (bounded by `server.max_in_flight_bytes`).
    pub in_flight_bytes: u64,
    /// Counts since start.
    pub totals: Totals,
    /// One entry per cached producer actor, sorted by kind and target.
    pub producers: Vec<ProducerReport>,
    /// The durable spool, when one is configured.
    #[serde(default)]
    pub spool: Option<SpoolReport>,
    /// The named routes the daemon serves: names and kinds only, never an address or a
    /// credential.
    #[serde(default)]
    pub routes: Vec<RouteSummary>,
    /// The config now serving and its reloads.
    #[serde(default)]
    pub config: ConfigStatus,
    /// Per-client counts, when access is decided per client (`[[access.clients]]`): by
    /// name, never by credential.
    #[serde(default)]
    pub clients: Vec<ClientReport>,
    /// Serving, degraded (with reasons) or not serving: what `/healthz` says. `None` from
    /// a daemon older than the field: [`Self::health`] falls back to `serving`.
    #[serde(default)]
    pub health: Option<Health>,
    /// The bounds the daemon runs with, so that a rule can alert before they are reached.
    #[serde(default)]
    pub limits: Limits,
}

/// The daemon's bounds of messages and bytes in flight (`server.max_in_flight`,
/// `server.max_in_flight_bytes` as sized for the machine).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// Most messages in flight; beyond it a message is answered error_no 5.
    pub max_in_flight: u64,
    /// Most payload bytes in flight; beyond it a message is answered error_no 5.
    pub max_in_flight_bytes: u64,
}

/// The durable spool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpoolReport {
    /// Bytes it holds now.
    pub bytes: u64,
    /// The most it may hold (`spool.max_bytes`).
    #[serde(default)]
    pub max_bytes: u64,
    /// Messages spooled since start (answered 0 with `spooled`).
    pub spooled_total: u64,
    /// At start, the spool's log ended in a partial commit (a crash mid-write; never
    /// acknowledged), which was truncated: 0 or 1.
    pub torn_tails_truncated: u64,
    /// At start, spool database files that were damaged and moved aside.
    pub files_moved_aside: u64,
    /// The database's integrity check: `ok`, `running` (a spool over 64 MiB is checked
    /// after the start) or `failed: …` (stop the daemon, then `ferry spool salvage`).
    #[serde(default)]
    pub integrity_check: String,
    /// Dead letters held now (`ferry spool --dir DIR` lists them).
    #[serde(default)]
    pub dead_letters: u64,
    /// Messages replayed (confirmed by their broker) since start.
    #[serde(default)]
    pub replayed_total: u64,
    /// Messages moved to the dead letters since start.
    #[serde(default)]
    pub dead_lettered_total: u64,
    /// Messages whose checksum failed, moved to quarantine, since start.
    #[serde(default)]
    pub lost_total: u64,
    /// One entry per target with spooled messages now, sorted by kind and target.
    pub targets: Vec<SpoolTarget>,
}

/// The spool of one target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpoolTarget {
    /// `kafka`, `rabbitmq`, or `route` for messages sent through a named route.
    pub kind: String,
    /// The target (password as `***`), or the route's name.
    pub target: String,
    /// Messages in the spool now.
    pub spooled: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Seconds since the oldest of them was spooled.
    pub oldest_age_s: f64,
    /// Messages spooled since start.
    pub spooled_total: u64,
    /// Messages replayed (confirmed by the broker) since start.
    pub replayed_total: u64,
    /// Messages moved to the dead letters by `spool.max_age_s` since start.
    pub expired_total: u64,
    /// Messages moved to the dead letters for any reason since start.
    #[serde(default)]
    pub dead_lettered_total: u64,
    /// Messages whose checksum failed, moved to quarantine, since start.
    pub lost_total: u64,
    /// The last replay failure still standing ("" when none): a broker's refusal, or a
    /// removal the spool's disk failed.
    #[serde(default)]
    pub last_error: String,
    /// Why the config in force holds these messages, neither sending nor deleting them
    /// (a route removed, a target the allowlist no longer names); "" when it does not.
    #[serde(default)]
    pub held: String,
}

/// Counts since the daemon started.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Totals {
    /// Messages delivered.
    pub sent: u64,
    /// Messages not delivered (every `error_no` other than 0 and 1).
    pub failed: u64,
    /// Requests refused as invalid (`error_no` 1).
    pub invalid: u64,
    /// Requests naming a target outside the allowlist (`error_no` 7).
    pub not_allowed: u64,
    /// Attempts beyond the first.
    pub retried: u64,
    /// Producers evicted to make room for new targets.
    pub evictions: u64,
    /// Producers cached now.
    pub producers: u64,
    /// Client connections open now.
    pub connections: u64,
    /// Client connections closed at once because `max_connections` was reached.
    pub connections_refused: u64,
    /// Client connections closed because they sent nothing within
    /// `handshake_timeout_ms` or had no traffic for `idle_connection_timeout_ms`.
    pub connections_timed_out: u64,
}

impl Report {
    /// A report of a serving daemon with `producers` and `spool` as JSON (as `/stats`
    /// serves them) and every count 0, for unit tests.
    #[cfg(all(test, feature = "daemon"))]
    #[allow(clippy::unwrap_used)]
    pub(crate) fn for_tests(producers: serde_json::Value, spool: serde_json::Value) -> Self {
        serde_json::from_value(serde_json::json!({
            "version": "0", "started_at": "", "uptime_s": 1.0, "serving": true,
            "in_flight": 0, "in_flight_bytes": 0,
            "totals": {"sent": 0, "failed": 0, "invalid": 0, "not_allowed": 0, "retried": 0,
                "evictions": 0, "producers": 0, "connections": 0, "connections_refused": 0,
                "connections_timed_out": 0},
            "producers": producers, "spool": spool,
        }))
        .unwrap()
    }

    /// The daemon's health; from a daemon that does not report one, what `serving` says.
    pub fn health(&self) -> Health {
        self.health.clone().unwrap_or_else(|| Health {
            state: if self.serving {
                State::Serving
            } else {
                State::NotServing
            },
            reasons: Vec::new(),
        })
    }
}

/// What `/stats` shows of one producer actor: its target, state, counts and latency.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProducerReport {
    /// `kafka` or `rabbitmq`.
    pub kind: String,
    /// The target (broker set, or AMQP URL with the password as `***` plus exchange).
    pub target: String,
    /// `connecting`, `ready`, `restarting`, `idle` or `stopped`.
    pub state: String,
    /// Seconds it has failed without a delivery in between (none when it has not failed
    /// since its last delivery).
    #[serde(default)]
    pub failing_for_s: Option<f64>,
    /// Seconds since its last failure.
    #[serde(default)]
    pub last_error_age_s: Option<f64>,
    /// Connections that had carried deliveries, lost within `ops.restart_window_s` (a
    /// broker that accepts connections and drops them shows as many).
    #[serde(default)]
    pub drops_in_window: u64,
    /// Connections that had carried deliveries, lost since the producer was created.
    #[serde(default)]
    pub drops: u64,
    /// Messages delivered.
    pub sent: u64,
    /// Messages not delivered.
    pub failed: u64,
    /// Attempts beyond the first.
    pub retried: u64,
    /// Supervisor restarts.
    pub restarts: u64,
    /// Messages the broker returned as unroutable (RabbitMQ with `rabbitmq.mandatory`).
    pub returned: u64,
    /// Messages in flight now.
    pub in_flight: u64,
    /// Median delivery latency in milliseconds (none before the first delivery).
    pub latency_p50_ms: Option<f64>,
    /// 99th-percentile delivery latency in milliseconds.
    pub latency_p99_ms: Option<f64>,
    /// The last failure.
    pub last_error: Option<String>,
    /// When it happened (RFC 3339, UTC).
    pub last_error_at: Option<String>,
    /// When the producer was created (RFC 3339, UTC).
    pub created_at: String,
    /// When its last message arrived (RFC 3339, UTC).
    pub last_used_at: String,
    /// Delivery latencies per bucket (upper bounds in
    /// [`ferry_actors::stats::LATENCY_BUCKETS_US`]) and their sum, for `/metrics`.
    #[serde(skip)]
    pub latency: ferry_actors::LatencySnapshot,
}

#[cfg(feature = "daemon")]
impl ProducerReport {
    /// The entry of one snapshot taken at `now`, counting restarts within `window`.
    pub(crate) fn of(snapshot: StatsSnapshot, now: SystemTime, window: Duration) -> Self {
        let millis = |q| snapshot.latency.quantile(q).map(|d| d.as_secs_f64() * 1e3);
        let since = |time: SystemTime| now.duration_since(time).unwrap_or_default();
        Self {
            kind: snapshot.kind.to_owned(),
            target: snapshot.target,
            state: snapshot.state.as_str().to_owned(),
            failing_for_s: snapshot.failing_for.map(round_ms),
            last_error_age_s: snapshot.last_error.as_ref().map(|e| round_ms(since(e.at))),
            drops_in_window: snapshot
                .drop_ages
                .iter()
                .filter(|age| **age <= window)
                .count() as u64,
            drops: snapshot.drops,
            sent: snapshot.sent,
            failed: snapshot.failed,
            retried: snapshot.retried,
            restarts: snapshot.restarts,
            returned: snapshot.returned,
            in_flight: snapshot.in_flight,
            latency_p50_ms: millis(0.5),
            latency_p99_ms: millis(0.99),
            last_error_at: snapshot.last_error.as_ref().map(|e| rfc3339(e.at)),
            last_error: snapshot.last_error.map(|e| e.message),
            created_at: rfc3339(snapshot.created),
            last_used_at: rfc3339(snapshot.last_used),
            latency: snapshot.latency,
        }
    }
}

/// A time as RFC 3339 in UTC with milliseconds.
#[cfg(feature = "daemon")]
pub(crate) fn rfc3339(time: SystemTime) -> String {
    DateTime::<Utc>::from(time).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Seconds with millisecond precision.
#[cfg(feature = "daemon")]
pub(crate) fn round_ms(duration: Duration) -> f64 {
    (duration.as_millis() as f64) / 1e3
}

/// One of the three states.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Accepting messages, nothing to look at.
    #[default]
    Serving,
    /// Accepting messages, with reasons to look.
    Degraded,
    /// Not accepting messages (shutting down).
    NotServing,
}

impl State {
    /// The state as `/healthz` and `ferry check` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Degraded => "degraded",
            Self::NotServing => "not serving",
        }
    }
}

/// The state and why.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// Serving, degraded or not serving.
    pub state: State,
    /// One sentence per reason, saying what to look at; empty while serving.
    pub reasons: Vec<String>,
}

impl Health {
    /// One line: the state, then the reasons after a colon.
    pub fn line(&self) -> String {
        if self.reasons.is_empty() {
            self.state.as_str().to_owned()
        } else {
            format!("{}: {}", self.state.as_str(), self.reasons.join("; "))
        }
    }
}

/// The config's identity and reload history, as `/stats` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// When the config now serving was loaded (RFC 3339, UTC).
    pub loaded_at: String,
    /// CRC-32 of the config file now serving, hex ("" without a file).
    pub hash: String,
    /// Reloads applied since start.
    pub reloads: u64,
    /// Reloads refused (the file unreadable or invalid; the old config kept serving).
    pub reload_failures: u64,
    /// Why the last refused reload was refused ("" if none was).
    pub last_error: String,
    /// Whether the last reload was refused (a later one applied clears it).
    #[serde(default)]
    pub last_reload_failed: bool,
    /// Fields changed in the file that apply only after a restart.
    pub needs_restart: Vec<String>,
    /// What the last reload allows that the config before it did not (routes added or
    /// pointing elsewhere, targets the allowlist now names, the bearer token removed), one
    /// sentence each; `ferry reload` prints them.
    #[serde(default)]
    pub widened: Vec<String>,
}

/// What the ops endpoint shows of a route: never an address or a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSummary {
    /// The route's name.
    pub name: String,
    /// `kafka` or `rabbitmq`.
    pub kind: String,
}

/// What `/stats` shows of one client: its name and counts, never its credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientReport {
    /// The client's name.
    pub name: String,
    /// Messages it sent since start (calls and streamed messages).
    pub requests: u64,
    /// Refused over its `max_rate` or `max_in_flight` (5).
    pub rate_limited: u64,
    /// Refused as not given to it (7).
    pub not_allowed: u64,
    /// Its messages in flight now.
    pub in_flight: u64,
}
