//! What one run measured: a latency histogram, the outcome counts, and the broker's count.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::plan::Mode;

/// Latencies and outcomes of the messages one task sent.
#[derive(Debug, Clone)]
pub struct Record {
    /// Latency of each delivered message, in microseconds.
    latency_us: Histogram<u64>,
    /// Messages the path reported delivered.
    pub delivered: u64,
    /// Messages not delivered, by reason (`error_no 5`, `grpc Unavailable`, …).
    pub errors: BTreeMap<String, u64>,
}

impl Default for Record {
    fn default() -> Self {
        Self {
            // 1 µs to 10 min at 3 significant digits: constant, valid bounds.
            #[allow(clippy::expect_used)]
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("valid histogram bounds"),
            delivered: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl Record {
    /// Records one message's outcome and how long it took.
    pub fn outcome(&mut self, result: Result<(), String>, took: Duration) {
        match result {
            Ok(()) => {
                self.delivered += 1;
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
                // Saturates at the highest trackable value instead of failing.
                self.latency_us.saturating_record(us);
            }
            Err(reason) => *self.errors.entry(reason).or_default() += 1,
        }
    }

    /// Adds another task's record to this one.
    pub fn merge(&mut self, other: &Record) {
        // Both have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.delivered += other.delivered;
        for (reason, count) in &other.errors {
            *self.errors.entry(reason.clone()).or_default() += count;
        }
    }

    /// Messages not delivered.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The latency at `quantile` (0–1) of the delivered messages, in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> Option<f64> {
        (self.delivered > 0).then(|| self.latency_us.value_at_quantile(quantile) as f64 / 1000.0)
    }
}

/// The figures of one run of one mode.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Which path.
    pub mode: Mode,
    /// Round number, from 1.
    pub round: usize,
    /// Wall time from the first send to the last answer.
    pub elapsed: Duration,
    /// Outcomes and latencies.
    pub record: Record,
    /// Messages the broker gained during the run (None if it could not be counted).
    pub broker_count: Option<u64>,
    /// The daemon's CPU time during the run (with `--daemon-pid`); for `direct`, the
    /// bench process's own.
    pub daemon_cpu: Option<Duration>,
}

impl RunResult {
    /// The daemon's CPU time per delivered message, in µs (for `direct`: the bench
    /// process's own, i.e. the client library's cost without a daemon).
    pub fn cpu_us(&self) -> Option<f64> {
        crate::cpu::per_message_us(self.daemon_cpu?, self.record.delivered)
    }

    /// Delivered messages per second.
    pub fn rate(&self) -> f64 {
        self.record.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Whether the broker holds exactly what was reported delivered.
    pub fn verified(&self) -> Option<bool> {
        self.broker_count
            .map(|count| count == self.record.delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_counts_errors_and_latencies() {
        let mut a = Record::default();
        a.outcome(Ok(()), Duration::from_millis(1));
        a.outcome(Err("error_no 5".into()), Duration::ZERO);
        let mut b = Record::default();
        b.outcome(Ok(()), Duration::from_millis(3));
        b.outcome(Err("error_no 5".into()), Duration::ZERO);
        a.merge(&b);
        assert_eq!(a.delivered, 2);
        assert_eq!(a.failed(), 2);
        assert_eq!(a.errors["error_no 5"], 2);
        let p100 = a.latency_ms(1.0).unwrap();
        assert!((2.99..3.01).contains(&p100), "{p100}");
        assert!(Record::default().latency_ms(0.5).is_none());
    }
}
