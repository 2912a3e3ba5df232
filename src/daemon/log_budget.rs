//! A bound on the log lines any client can cause (refused calls, undelivered messages):
//! a flood of bad requests must not become a flood of log lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Log lines per second about refused or undelivered messages, across all workers.
pub const LOG_LINES_PER_SECOND: u64 = 20;

/// A bound on log lines that any client can cause: at most `per_second` lines in each
/// second; the first line after a suppressed stretch says how many were left out.
#[derive(Debug)]
pub struct LogBudget {
    /// Lines allowed per second.
    per_second: u64,
    /// The clock the windows are counted on.
    epoch: Instant,
    /// The second (since `epoch`) the current window began.
    window: AtomicU64,
    /// Lines asked for in the current window.
    used: AtomicU64,
    /// Lines left out since the last one logged.
    suppressed: AtomicU64,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new(LOG_LINES_PER_SECOND)
    }
}

impl LogBudget {
    /// A budget of `per_second` lines per second.
    pub fn new(per_second: u64) -> Self {
        Self {
            per_second,
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now: `Some(n)` with the lines left out since the last
    /// one logged, or `None` (and the line is counted as left out).
    pub fn admit(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_secs();
        let window = self.window.load(Ordering::Relaxed);
        if now != window
            && self
                .window
                .compare_exchange(window, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_budget_lets_a_few_lines_through_and_counts_the_rest() {
        let budget = LogBudget::new(3);
        let admitted: Vec<_> = (0..10).map(|_| budget.admit()).collect();
        assert_eq!(&admitted[..3], [Some(0), Some(0), Some(0)]);
        assert!(admitted[3..].iter().all(Option::is_none));
        // The next window's first line reports the 7 left out.
        budget.window.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(budget.admit(), Some(7));
        assert_eq!(budget.admit(), Some(0));
    }
}
