//! The daemon's stats document: what `/stats` serves as JSON, `/metrics` renders for
//! Prometheus and `ferry stats` prints as a table.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use ferry_actors::{Forwarder, StatsSnapshot};
use serde::{Deserialize, Serialize};

use crate::daemon::connections::ConnectionLimit;
use crate::daemon::ingress::Refused;

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
    pub routes: Vec<crate::config::routes::RouteSummary>,
    /// The config now serving and its reloads.
    #[serde(default)]
    pub config: crate::daemon::live::ConfigStatus,
    /// Per-client counts, when access is decided per client (`[[access.clients]]`): by
    /// name, never by credential.
    #[serde(default)]
    pub clients: Vec<crate::config::clients::ClientReport>,
}

/// The durable spool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpoolReport {
    /// Bytes it holds now.
    pub bytes: u64,
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

/// What `/stats` shows of one producer actor: its target, state, counts and latency.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProducerReport {
    /// `kafka` or `rabbitmq`.
    pub kind: String,
    /// The target (broker set, or AMQP URL with the password as `***` plus exchange).
    pub target: String,
    /// `connecting`, `ready`, `restarting`, `idle` or `stopped`.
    pub state: String,
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

impl ProducerReport {
    /// The entry of one snapshot.
    fn of(snapshot: StatsSnapshot) -> Self {
        let millis = |q| snapshot.latency.quantile(q).map(|d| d.as_secs_f64() * 1e3);
        Self {
            kind: snapshot.kind.to_owned(),
            target: snapshot.target,
            state: snapshot.state.as_str().to_owned(),
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

/// What the report is built from: the forwarding core and the daemon's own counters.
#[derive(Clone)]
pub struct Source {
    /// The forwarding core.
    pub forwarder: Arc<Forwarder>,
    /// Requests refused before forwarding, counted by the ingress.
    pub refused: Arc<Refused>,
    /// The client connections.
    pub connections: ConnectionLimit,
    /// When the daemon started, by the wall clock.
    pub started_at: SystemTime,
    /// When the daemon started, by the monotonic clock.
    pub started: Instant,
    /// The live config: routes (names and kinds) and the reload history.
    pub live: Arc<crate::daemon::live::Live>,
}

impl Source {
    /// A source for a daemon starting now.
    pub fn new(
        forwarder: Arc<Forwarder>,
        refused: Arc<Refused>,
        connections: ConnectionLimit,
        live: Arc<crate::daemon::live::Live>,
    ) -> Self {
        Self {
            forwarder,
            refused,
            connections,
            live,
            started_at: SystemTime::now(),
            started: Instant::now(),
        }
    }

    /// The report now.
    pub fn report(&self) -> Report {
        let registry = self.forwarder.registry();
        let mut producers: Vec<ProducerReport> = registry
            .snapshot()
            .into_iter()
            .map(ProducerReport::of)
            .collect();
        producers.sort_by(|a, b| (&a.kind, &a.target).cmp(&(&b.kind, &b.target)));
        let totals = self.forwarder.totals();
        Report {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: rfc3339(self.started_at),
            uptime_s: round_ms(self.started.elapsed()),
            serving: !self.forwarder.is_closing(),
            in_flight: self.forwarder.in_flight(),
            in_flight_bytes: self.forwarder.in_flight_bytes(),
            totals: Totals {
                sent: totals.sent.load(Ordering::Relaxed),
                failed: totals.failed.load(Ordering::Relaxed),
                invalid: self.refused.invalid.load(Ordering::Relaxed),
                not_allowed: self.refused.not_allowed.load(Ordering::Relaxed),
                retried: totals.retried.load(Ordering::Relaxed),
                evictions: registry.evictions(),
                producers: producers.len() as u64,
                connections: self.connections.open(),
                connections_refused: self.connections.refused(),
                connections_timed_out: self.connections.timed_out(),
            },
            producers,
            spool: self.forwarder.spooler().map(|spooler| SpoolReport {
                bytes: spooler.bytes(),
                spooled_total: totals.spooled.load(Ordering::Relaxed),
                torn_tails_truncated: spooler.recovered().0,
                files_moved_aside: spooler.recovered().1,
                dead_letters: spooler.dead_letters(),
                integrity_check: spooler.integrity(),
                replayed_total: spooler.totals().replayed.load(Ordering::Relaxed),
                dead_lettered_total: spooler.totals().dead_lettered.load(Ordering::Relaxed),
                lost_total: spooler.totals().lost.load(Ordering::Relaxed),
                targets: spooler
                    .snapshot()
                    .into_iter()
                    .map(|s| SpoolTarget {
                        kind: s.kind.to_owned(),
                        target: s.target,
                        spooled: s.spooled_now,
                        bytes: s.bytes_now,
                        oldest_age_s: s.oldest_age_s,
                        spooled_total: s.spooled_total,
                        replayed_total: s.replayed_total,
                        expired_total: s.expired_total,
                        dead_lettered_total: s.dead_lettered_total,
                        lost_total: s.lost_total,
                        last_error: s.last_error,
                        held: s.held,
                    })
                    .collect(),
            }),
            routes: self.live.route_summaries(),
            config: self.live.status(),
            clients: self.live.clients().report(),
        }
    }
}

/// A time as RFC 3339 in UTC with milliseconds.
fn rfc3339(time: SystemTime) -> String {
    DateTime::<Utc>::from(time).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Seconds with millisecond precision.
fn round_ms(duration: Duration) -> f64 {
    (duration.as_millis() as f64) / 1e3
}
