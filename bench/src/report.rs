//! The tables `ferry-bench load` prints: one row per run as it ends, then medians per mode
//! and each mode's ratio to `direct`.

use crate::plan::{Mode, Pace, Plan};
use crate::record::RunResult;

/// Prints what is measured and the table header.
pub fn print_header(plan: &Plan) {
    let pace = match plan.pace {
        Pace::ClosedLoop => format!("as fast as {} in flight allow", plan.concurrency),
        Pace::Rate(rate) => format!(
            "{rate} msg/s steady, at most {} in flight",
            plan.concurrency
        ),
    };
    println!(
        "{} target, {} messages of {} bytes per run, {pace}, {} connection(s) to the daemon at {}",
        crate::plan::kind(&plan.destination),
        plan.messages,
        plan.payload.len(),
        plan.connections,
        plan.daemon
    );
    println!(
        "{:<7} {:>5} {:>9} {:>10} {:>8} {:>8} {:>8} {:>7} {:>9} {:>7}  errors",
        "MODE",
        "ROUND",
        "DELIVERED",
        "MSG/S",
        "P50_MS",
        "P99_MS",
        "P999_MS",
        "SECS",
        "IN_BROKER",
        "CPU_US"
    );
}

/// Prints one run's row.
pub fn print_run(r: &RunResult) {
    let ms = |q| {
        r.record
            .latency_ms(q)
            .map_or("-".to_owned(), |v| format!("{v:.2}"))
    };
    let broker = match (r.broker_count, r.verified()) {
        (Some(count), Some(true)) => format!("{count} ok"),
        (Some(count), _) => format!("{count} !="),
        (None, _) => "?".to_owned(),
    };
    let errors = if r.record.errors.is_empty() {
        "-".to_owned()
    } else {
        r.record
            .errors
            .iter()
            .map(|(reason, n)| format!("{n}× {reason}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "{:<7} {:>5} {:>9} {:>10.0} {:>8} {:>8} {:>8} {:>7.2} {:>9} {:>7}  {errors}",
        r.mode.name(),
        r.round,
        r.record.delivered,
        r.rate(),
        ms(0.5),
        ms(0.99),
        ms(0.999),
        r.elapsed.as_secs_f64(),
        broker,
        cpu(r.cpu_us())
    );
}

/// The medians of one mode's runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The mode.
    pub mode: Mode,
    /// Median delivered msg/s.
    pub rate: f64,
    /// Median p50 latency, ms.
    pub p50_ms: Option<f64>,
    /// Median p99 latency, ms.
    pub p99_ms: Option<f64>,
    /// Median p99.9 latency, ms.
    pub p999_ms: Option<f64>,
    /// Errors over all runs.
    pub errors: u64,
    /// Whether every run's broker count matched what was reported delivered.
    pub verified: bool,
    /// Median over rounds of this mode's rate ÷ `direct`'s rate in the same round (the
    /// broker and machine drift between rounds; within one they are alike).
    pub vs_direct: Option<f64>,
    /// Median CPU time per message, µs (with `--daemon-pid`): the daemon's, and for
    /// `direct` the bench process's own.
    pub cpu_us: Option<f64>,
}

/// A CPU figure in µs per message, or "-".
fn cpu(us: Option<f64>) -> String {
    us.map_or("-".to_owned(), |us| format!("{us:.1}"))
}

/// Medians per mode, in the order the modes ran.
pub fn summarise(plan: &Plan, results: &[RunResult]) -> Vec<Summary> {
    plan.modes
        .iter()
        .map(|&mode| {
            let runs: Vec<&RunResult> = results.iter().filter(|r| r.mode == mode).collect();
            let latency = |q| median(runs.iter().filter_map(|r| r.record.latency_ms(q)).collect());
            Summary {
                mode,
                rate: median(runs.iter().map(|r| r.rate()).collect()).unwrap_or(0.0),
                p50_ms: latency(0.5),
                p99_ms: latency(0.99),
                p999_ms: latency(0.999),
                errors: runs.iter().map(|r| r.record.failed()).sum(),
                verified: runs.iter().all(|r| {
                    r.verified() == Some(true) || (!plan.count && r.broker_count.is_none())
                }),
                vs_direct: median(
                    runs.iter()
                        .filter_map(|r| {
                            let direct = results.iter().find(|d| {
                                d.mode == Mode::Direct && d.round == r.round && d.rate() > 0.0
                            })?;
                            Some(r.rate() / direct.rate())
                        })
                        .collect(),
                ),
                cpu_us: median(runs.iter().filter_map(|r| r.cpu_us()).collect()),
            }
        })
        .collect()
}

/// Prints the medians and each mode's ratio to `direct` (median of per-round ratios).
pub fn print_summary(plan: &Plan, summaries: &[Summary]) {
    println!("\nmedians of {} run(s):", plan.runs);
    println!(
        "{:<7} {:>10} {:>8} {:>8} {:>8} {:>7} {:>9} {:>10} {:>7}",
        "MODE", "MSG/S", "P50_MS", "P99_MS", "P999_MS", "ERRORS", "VERIFIED", "VS_DIRECT", "CPU_US"
    );
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    for s in summaries {
        println!(
            "{:<7} {:>10.0} {:>8} {:>8} {:>8} {:>7} {:>9} {:>10} {:>7}",
            s.mode.name(),
            s.rate,
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.p999_ms),
            s.errors,
            if s.verified { "yes" } else { "NO" },
            s.vs_direct.map_or("-".to_owned(), |r| format!("{r:.2}")),
            cpu(s.cpu_us)
        );
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
