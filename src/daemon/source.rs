//! Where the report comes from: the forwarding core, the daemon's own counters and the
//! live config, read at each request to `/stats`, `/metrics` or `/healthz`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use ferry_actors::Forwarder;
use ferry_actors::spool::Spooler;

use crate::config::ops::HealthRules;
use crate::daemon::connections::ConnectionLimit;
use crate::daemon::health::assess;
use crate::daemon::ingress::Refused;
use crate::report::{
    Limits, ProducerReport, Report, SpoolReport, SpoolTarget, Totals, rfc3339, round_ms,
};

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
    /// When the daemon is degraded.
    pub rules: HealthRules,
    /// The spool's bound of bytes (0 without a spool).
    pub spool_max_bytes: u64,
    /// The bounds of messages and bytes in flight.
    pub limits: Limits,
}

impl Source {
    /// A source for a daemon starting now.
    pub fn new(
        forwarder: Arc<Forwarder>,
        refused: Arc<Refused>,
        connections: ConnectionLimit,
        live: Arc<crate::daemon::live::Live>,
        rules: HealthRules,
        spool_max_bytes: u64,
        limits: Limits,
    ) -> Self {
        Self {
            forwarder,
            refused,
            connections,
            live,
            rules,
            spool_max_bytes,
            limits,
            started_at: SystemTime::now(),
            started: Instant::now(),
        }
    }

    /// The report now.
    pub fn report(&self) -> Report {
        let registry = self.forwarder.registry();
        let now = SystemTime::now();
        let window = self.rules.restart_window;
        let mut producers: Vec<ProducerReport> = registry
            .snapshot()
            .into_iter()
            .map(|snapshot| ProducerReport::of(snapshot, now, window))
            .collect();
        producers.sort_by(|a, b| (&a.kind, &a.target).cmp(&(&b.kind, &b.target)));
        let totals = self.forwarder.totals();
        let mut report = Report {
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
            spool: self
                .forwarder
                .spooler()
                .map(|spooler| self.spool_report(spooler, totals.spooled.load(Ordering::Relaxed))),
            routes: self.live.route_summaries(),
            config: self.live.status(),
            clients: self.live.clients().report(),
            health: None,
            limits: self.limits,
        };
        report.health = Some(assess(&report, &self.rules));
        report
    }
    /// The spool's part of the report; `spooled_total` is the forwarder's count.
    fn spool_report(&self, spooler: &Spooler, spooled_total: u64) -> SpoolReport {
        SpoolReport {
            bytes: spooler.bytes(),
            max_bytes: self.spool_max_bytes,
            spooled_total,
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
        }
    }
}
