//! What `ferry top` shows: one row per target of each daemon, with rates taken between two
//! reports, sorted by trouble first.

use std::collections::HashMap;
use std::time::Duration;

use crate::report::{ProducerReport, Report, SpoolTarget, State};

/// One target of one daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The daemon's operations endpoint, as given.
    pub daemon: String,
    /// `kafka`, `rabbitmq`, or `route` (spooled messages of a named route).
    pub kind: String,
    /// The target (password as `***`) or the route's name.
    pub target: String,
    /// The producer's state; `held` or `spooled` for spooled messages without a producer.
    pub state: String,
    /// Whether its last attempts failed with no delivery since.
    pub failing: bool,
    /// Messages delivered per second since the previous report (none for a new target).
    pub sent_per_s: Option<f64>,
    /// Messages not delivered per second since the previous report.
    pub failed_per_s: Option<f64>,
    /// Messages not delivered since the producer was created.
    pub failed: u64,
    /// 99th-percentile delivery latency, in milliseconds.
    pub p99_ms: Option<f64>,
    /// Messages in flight now.
    pub in_flight: u64,
    /// Messages waiting in the spool.
    pub spooled: u64,
    /// Age of the oldest of them, in seconds.
    pub oldest_s: Option<f64>,
}

impl Row {
    /// How much the row needs a person: 2 failing or its producer restarting or stopped,
    /// 1 spooling (with a producer or without: a route's spool has none), 0 fine.
    pub fn trouble(&self) -> u8 {
        let failing = self.failing || self.failed_per_s.is_some_and(|rate| rate > 0.0);
        let broken = !matches!(
            self.state.as_str(),
            "ready" | "idle" | "connecting" | "spooled" | "held"
        );
        if failing || broken {
            2
        } else if self.spooled > 0 {
            1
        } else {
            0
        }
    }
}

/// The rows of `now` (the report of `daemon`), with rates against `before`, taken
/// `elapsed` earlier (none: no rates yet).
pub fn rows(daemon: &str, before: Option<&Report>, now: &Report, elapsed: Duration) -> Vec<Row> {
    let previous: HashMap<(&str, &str), &ProducerReport> = before
        .map(|report| {
            report
                .producers
                .iter()
                .map(|p| ((p.kind.as_str(), p.target.as_str()), p))
                .collect()
        })
        .unwrap_or_default();
    let spool: HashMap<(&str, &str), &SpoolTarget> = now
        .spool
        .iter()
        .flat_map(|spool| &spool.targets)
        .map(|t| ((t.kind.as_str(), t.target.as_str()), t))
        .collect();
    let seconds = elapsed.as_secs_f64();
    let mut rows: Vec<Row> = now
        .producers
        .iter()
        .map(|p| {
            let key = (p.kind.as_str(), p.target.as_str());
            let rate = |count: fn(&ProducerReport) -> u64| {
                let earlier = previous.get(&key).filter(|_| seconds > 0.0)?;
                Some(count(p).saturating_sub(count(earlier)) as f64 / seconds)
            };
            let spooled = spool.get(&key);
            Row {
                daemon: daemon.to_owned(),
                kind: p.kind.clone(),
                target: p.target.clone(),
                state: p.state.clone(),
                failing: p.failing_for_s.is_some(),
                sent_per_s: rate(|p| p.sent),
                failed_per_s: rate(|p| p.failed),
                failed: p.failed,
                p99_ms: p.latency_p99_ms,
                in_flight: p.in_flight,
                spooled: spooled.map_or(0, |t| t.spooled),
                oldest_s: spooled.map(|t| t.oldest_age_s),
            }
        })
        .collect();
    let with_producer: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.kind.clone(), r.target.clone()))
        .collect();
    for ((kind, target), spooled) in spool {
        if !with_producer.iter().any(|(k, t)| k == kind && t == target) {
            rows.push(spooled_only(daemon, spooled));
        }
    }
    rows
}

/// A row for spooled messages whose target has no producer now (a route's, or one
/// evicted or not yet replayed).
fn spooled_only(daemon: &str, spooled: &SpoolTarget) -> Row {
    Row {
        daemon: daemon.to_owned(),
        kind: spooled.kind.clone(),
        target: spooled.target.clone(),
        state: if spooled.held.is_empty() {
            "spooled"
        } else {
            "held"
        }
        .to_owned(),
        failing: false,
        sent_per_s: None,
        failed_per_s: None,
        failed: 0,
        p99_ms: None,
        in_flight: 0,
        spooled: spooled.spooled,
        oldest_s: Some(spooled.oldest_age_s),
    }
}

/// Sorts `rows` trouble first, then busiest first, then by daemon, kind and target.
pub fn sort(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        b.trouble()
            .cmp(&a.trouble())
            .then(
                b.sent_per_s
                    .unwrap_or(0.0)
                    .total_cmp(&a.sent_per_s.unwrap_or(0.0)),
            )
            .then_with(|| (&a.daemon, &a.kind, &a.target).cmp(&(&b.daemon, &b.kind, &b.target)))
    });
}

/// One line about a daemon: its health and totals, or why it could not be read.
pub fn daemon_line(daemon: &str, report: Result<&Report, &String>) -> String {
    let report = match report {
        Ok(report) => report,
        Err(error) => return format!("{daemon}: unreachable: {error}"),
    };
    let health = report.health();
    let state = match health.state {
        State::Serving => "serving".to_owned(),
        State::Degraded => format!("degraded: {}", health.reasons.join("; ")),
        State::NotServing => "not serving".to_owned(),
    };
    let spool = report.spool.as_ref().map_or(String::new(), |s| {
        format!(
            ", spool {} B of {} B, {} dead letters",
            s.bytes, s.max_bytes, s.dead_letters
        )
    });
    format!(
        "{daemon}: {state}; {} producers, {} in flight, {} sent, {} failed{spool}",
        report.producers.len(),
        report.in_flight,
        report.totals.sent,
        report.totals.failed
    )
}

/// The column titles of the table.
pub const HEADER: [&str; 11] = [
    "DAEMON",
    "KIND",
    "TARGET",
    "STATE",
    "MSG/S",
    "FAIL/S",
    "FAILED",
    "P99_MS",
    "IN_FLIGHT",
    "SPOOLED",
    "OLDEST_S",
];

/// The cells of `row`, in the order of [`HEADER`].
pub fn cells(row: &Row) -> Vec<String> {
    let rate = |rate: Option<f64>| rate.map_or("-".to_owned(), |r| format!("{r:.1}"));
    vec![
        row.daemon.clone(),
        row.kind.clone(),
        row.target.clone(),
        row.state.clone(),
        rate(row.sent_per_s),
        rate(row.failed_per_s),
        row.failed.to_string(),
        row.p99_ms.map_or("-".to_owned(), |ms| format!("{ms:.1}")),
        row.in_flight.to_string(),
        row.spooled.to_string(),
        row.oldest_s.map_or("-".to_owned(), |s| format!("{s:.0}")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(producers: serde_json::Value, spool: serde_json::Value) -> Report {
        Report::for_tests(producers, spool)
    }

    fn producer(target: &str, state: &str, sent: u64, failed: u64) -> serde_json::Value {
        json!({"kind": "kafka", "target": target, "state": state, "sent": sent,
            "failed": failed, "retried": 0, "restarts": 0, "returned": 0, "in_flight": 0,
            "latency_p50_ms": null, "latency_p99_ms": 2.5, "last_error": null,
            "last_error_at": null, "created_at": "", "last_used_at": ""})
    }

    #[test]
    fn rates_come_from_two_reports_and_trouble_sorts_first() {
        let before = report(
            json!([
                producer("busy", "ready", 100, 0),
                producer("sick", "ready", 10, 0)
            ]),
            json!(null),
        );
        let now = report(
            json!([
                producer("busy", "ready", 300, 0),
                producer("sick", "ready", 10, 4),
                producer("new", "ready", 5, 0)
            ]),
            json!({"bytes": 10, "spooled_total": 1, "torn_tails_truncated": 0,
                "files_moved_aside": 0, "targets": [{"kind": "route", "target": "events",
                "spooled": 3, "bytes": 10, "oldest_age_s": 42.0, "spooled_total": 3,
                "replayed_total": 0, "expired_total": 0, "lost_total": 0}]}),
        );
        let mut rows = rows("d", Some(&before), &now, Duration::from_secs(2));
        sort(&mut rows);
        let order: Vec<&str> = rows.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(order, ["sick", "events", "busy", "new"]);
        assert_eq!(rows[0].failed_per_s, Some(2.0));
        assert_eq!((rows[1].state.as_str(), rows[1].spooled), ("spooled", 3));
        assert_eq!(
            (rows[0].trouble(), rows[1].trouble(), rows[2].trouble()),
            (2, 1, 0)
        );
        assert_eq!(rows[2].sent_per_s, Some(100.0));
        assert_eq!(rows[3].sent_per_s, None, "a new target has no rate yet");
        assert_eq!(cells(&rows[2])[4], "100.0");
    }
}
