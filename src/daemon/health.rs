//! The daemon's health in three states, so that trouble shows before users notice it:
//!
//! - **serving**: accepting messages, nothing to look at;
//! - **degraded**: still accepting (gRPC health stays SERVING; restarting the daemon would
//!   not help), but an operator should look: a target failing or its spooled messages
//!   waiting for longer than `ops.degraded_after_s`, the spool fuller than
//!   `ops.spool_warn_ratio` of its bound, a producer restarting in a loop, dead letters
//!   held, the spool's integrity check failed;
//! - **not serving**: shutting down (or not started): only then does a restart help.
//!
//! [`assess`] reads a [`Report`], so `/healthz`, `/stats`, `/metrics` and `ferry check`
//! say the same thing with the same reasons.

use std::time::Duration;

use crate::config::ops::HealthRules;
pub use crate::report::{Health, State};
use crate::report::{ProducerReport, Report, SpoolReport};

/// Reasons given at most: one dead RabbitMQ server behind hundreds of exchanges must not
/// make `/healthz` (or an ecFlow label) hundreds of kilobytes.
pub const MAX_REASONS: usize = 10;

/// The daemon's health as `report` shows it, under `rules`.
pub fn assess(report: &Report, rules: &HealthRules) -> Health {
    if !report.serving {
        return Health {
            state: State::NotServing,
            reasons: vec!["shutting down".to_owned()],
        };
    }
    let mut reasons: Vec<String> = report
        .producers
        .iter()
        .filter_map(|producer| producer_trouble(producer, rules))
        .collect();
    if let Some(spool) = &report.spool {
        reasons.extend(spool_trouble(spool, rules));
    }
    if reasons.len() > MAX_REASONS {
        let more = reasons.len() - MAX_REASONS + 1;
        reasons.truncate(MAX_REASONS - 1);
        reasons.push(format!("and {more} more (ferry stats shows every target)"));
    }
    Health {
        state: if reasons.is_empty() {
            State::Serving
        } else {
            State::Degraded
        },
        reasons,
    }
}

/// Why one producer makes the daemon degraded, if it does: it has failed without a
/// delivery for longer than the bound and is still failing (a producer whose one
/// message failed long ago and that nobody has used since is not), or it keeps losing
/// connections that had carried deliveries.
fn producer_trouble(producer: &ProducerReport, rules: &HealthRules) -> Option<String> {
    let bound = rules.degraded_after.as_secs_f64();
    let name = format!("{} {}", producer.kind, producer.target);
    let failing_for = producer.failing_for_s.unwrap_or(0.0);
    let still_failing = producer.last_error_age_s.is_some_and(|age| age <= bound);
    if failing_for > bound && still_failing {
        let error = producer.last_error.as_deref().unwrap_or("none");
        return Some(format!(
            "{name} has failed for {} without a delivery (last error: {error})",
            seconds(failing_for)
        ));
    }
    if producer.drops_in_window > u64::from(rules.restart_loop_restarts) {
        return Some(format!(
            "{name} lost its connection {} times in the last {} (a restart loop: the broker accepts connections and drops them)",
            producer.drops_in_window,
            seconds(rules.restart_window.as_secs_f64())
        ));
    }
    None
}

/// Why the spool makes the daemon degraded: lines waiting too long, the spool nearly
/// full, dead letters, a failed integrity check.
fn spool_trouble(spool: &SpoolReport, rules: &HealthRules) -> Vec<String> {
    let mut reasons: Vec<String> = spool
        .targets
        .iter()
        .filter(|line| line.oldest_age_s > rules.degraded_after.as_secs_f64())
        .map(|line| {
            let why = match (line.held.is_empty(), line.last_error.is_empty()) {
                (false, _) => format!(" (held: {})", line.held),
                (true, false) => format!(" (last error: {})", line.last_error),
                (true, true) => String::new(),
            };
            format!(
                "{} spooled messages for {} {} have waited {}{why}",
                line.spooled,
                line.kind,
                line.target,
                seconds(line.oldest_age_s)
            )
        })
        .collect();
    if spool.max_bytes > 0 && spool.bytes as f64 > rules.spool_warn_ratio * spool.max_bytes as f64 {
        reasons.push(format!(
            "the spool is {:.0} % full ({} of {} bytes)",
            100.0 * spool.bytes as f64 / spool.max_bytes as f64,
            spool.bytes,
            spool.max_bytes
        ));
    }
    if spool.dead_letters > 0 {
        reasons.push(format!(
            "{} dead letters held (ferry spool --dir DIR lists them; requeue or purge)",
            spool.dead_letters
        ));
    }
    if spool.integrity_check.starts_with("failed") {
        reasons.push(format!(
            "the spool's integrity check {} (stop the daemon, then ferry spool salvage)",
            spool.integrity_check
        ));
    }
    reasons
}

/// `s` seconds as a person reads them: "42 s", "7 min", "3 h".
fn seconds(s: f64) -> String {
    let d = Duration::from_secs_f64(s.max(0.0));
    match d.as_secs() {
        n if n < 120 => format!("{n} s"),
        n if n < 7200 => format!("{} min", n / 60),
        n => format!("{} h", n / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A report of a serving daemon with `producers` and `spool` (JSON).
    fn report(producers: serde_json::Value, spool: serde_json::Value) -> Report {
        Report::for_tests(producers, spool)
    }

    /// A producer failing for `failing_for_s` (`None`: not failing), its last error `error_age_s`
    /// ago, with `drops` lost connections in the window.
    fn producer(failing_for_s: Option<f64>, error_age_s: f64, drops: u64) -> serde_json::Value {
        json!({"kind": "rabbitmq", "target": "amqp://u:***@mq1:5672/%2f x", "state": "x",
            "failing_for_s": failing_for_s, "last_error_age_s": error_age_s, "drops_in_window": drops,
            "sent": 0, "failed": 0, "retried": 0, "restarts": drops, "returned": 0,
            "in_flight": 0, "latency_p50_ms": null, "latency_p99_ms": null,
            "last_error": "connection refused", "last_error_at": null, "created_at": "",
            "last_used_at": ""})
    }

    fn spool(bytes: u64, dead_letters: u64, oldest_age_s: f64) -> serde_json::Value {
        json!({"bytes": bytes, "max_bytes": 1000, "spooled_total": 0, "torn_tails_truncated": 0,
            "files_moved_aside": 0, "dead_letters": dead_letters, "targets": [
                {"kind": "route", "target": "events", "spooled": 3, "bytes": bytes,
                 "oldest_age_s": oldest_age_s, "spooled_total": 3, "replayed_total": 0,
                 "expired_total": 0, "lost_total": 0}]})
    }

    fn rules() -> HealthRules {
        HealthRules {
            degraded_after: Duration::from_secs(300),
            spool_warn_ratio: 0.8,
            restart_loop_restarts: 5,
            restart_window: Duration::from_secs(600),
        }
    }

    #[test]
    fn a_daemon_with_nothing_to_look_at_is_serving() {
        let healthy = report(json!([producer(None, 1.0, 5)]), spool(100, 0, 299.0));
        assert_eq!(assess(&healthy, &rules()), Health::default());
        assert_eq!(Health::default().line(), "serving");
    }

    #[test]
    fn a_target_failing_longer_than_the_bound_makes_it_degraded_and_names_the_target() {
        let failing = report(json!([producer(Some(301.0), 2.0, 0)]), json!(null));
        let health = assess(&failing, &rules());
        assert_eq!(health.state, State::Degraded);
        assert!(health.reasons[0].contains("mq1:5672"), "{health:?}");
        assert!(
            health.reasons[0].contains("connection refused"),
            "{health:?}"
        );
        // Briefly failing is not degraded: a broker restart takes seconds.
        let brief = report(json!([producer(Some(299.0), 2.0, 0)]), json!(null));
        assert_eq!(assess(&brief, &rules()).state, State::Serving);
        // Nor is a producer whose one message failed long ago and that nobody used since.
        let unused = report(json!([producer(Some(3000.0), 2900.0, 0)]), json!(null));
        assert_eq!(assess(&unused, &rules()).state, State::Serving);
    }

    #[test]
    fn a_restart_loop_makes_it_degraded() {
        let looping = report(json!([producer(None, 1.0, 6)]), json!(null));
        let health = assess(&looping, &rules());
        assert_eq!(health.state, State::Degraded);
        assert!(
            health.reasons[0].contains("lost its connection 6 times"),
            "{health:?}"
        );
        let once = report(json!([producer(None, 1.0, 5)]), json!(null));
        assert_eq!(assess(&once, &rules()).state, State::Serving);
    }

    #[test]
    fn spooled_messages_waiting_a_full_spool_and_dead_letters_each_give_a_reason() {
        let waiting = assess(&report(json!([]), spool(100, 0, 301.0)), &rules());
        assert_eq!(waiting.state, State::Degraded);
        assert!(waiting.reasons[0].contains("route events"), "{waiting:?}");
        let full = assess(&report(json!([]), spool(801, 0, 1.0)), &rules());
        assert!(full.reasons[0].contains("80 % full"), "{full:?}");
        let dead = assess(&report(json!([]), spool(100, 2, 1.0)), &rules());
        assert!(dead.reasons[0].contains("2 dead letters"), "{dead:?}");
        assert_eq!(
            assess(&report(json!([]), spool(801, 2, 301.0)), &rules())
                .reasons
                .len(),
            3
        );
    }

    #[test]
    fn shutting_down_is_not_serving_whatever_else_holds() {
        let mut stopping = report(json!([producer(Some(999.0), 1.0, 0)]), json!(null));
        stopping.serving = false;
        let old = report(json!([]), json!(null));
        assert_eq!(
            old.health(),
            Health::default(),
            "an old daemon's serving: serving"
        );
        let health = assess(&stopping, &rules());
        assert_eq!(health.state, State::NotServing);
        assert_eq!(health.line(), "not serving: shutting down");
    }
}
