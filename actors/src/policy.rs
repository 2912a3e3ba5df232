//! The timeout and retry policy: attempt n may take at most n × `timeout_step`, at most
//! `max_attempts` attempts, and only retriable failures are tried again.

use std::future::Future;
use std::time::Duration;

use crate::error::{ForwardError, ProduceError};

/// Most attempts a policy may allow; keeps the worst-case answer time bounded.
pub const MAX_ATTEMPTS_LIMIT: u32 = 10;

/// How long each attempt may take and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempt n may take n times this long.
    timeout_step: Duration,
    /// How many attempts a message gets before the caller is told it failed.
    max_attempts: u32,
}

/// A policy that cannot bound the answer time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `timeout_step` was zero.
    #[error("timeout_step must be greater than zero")]
    ZeroStep,
    /// `max_attempts` was zero or above [`MAX_ATTEMPTS_LIMIT`].
    #[error("max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, not {0}")]
    Attempts(u32),
}

impl Default for RetryPolicy {
    /// The predecessor's client policy: 2 s, 4 s; 6 s in all.
    fn default() -> Self {
        Self {
            timeout_step: Duration::from_secs(2),
            max_attempts: 2,
        }
    }
}

impl RetryPolicy {
    /// A policy of `max_attempts` attempts, attempt n limited to n × `timeout_step`.
    pub fn try_new(timeout_step: Duration, max_attempts: u32) -> Result<Self, PolicyError> {
        if timeout_step.is_zero() {
            return Err(PolicyError::ZeroStep);
        }
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return Err(PolicyError::Attempts(max_attempts));
        }
        Ok(Self {
            timeout_step,
            max_attempts,
        })
    }

    /// The budget of attempt `n` (counted from 1).
    pub fn attempt_timeout(&self, n: u32) -> Duration {
        self.timeout_step * n
    }

    /// The same policy with a single attempt (when a spool takes over after it).
    pub fn first_attempt_only(&self) -> Self {
        Self {
            max_attempts: 1,
            ..*self
        }
    }

    /// How many attempts a message gets.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The longest a caller can wait for an answer: the sum of all attempt budgets.
    pub fn total_budget(&self) -> Duration {
        (1..=self.max_attempts)
            .map(|n| self.attempt_timeout(n))
            .sum()
    }

    /// Runs `attempt(n)` for n = 1, 2, … under the policy and returns the first success,
    /// or the last failure once the failure is not retriable or the attempts are spent.
    pub async fn run<F, Fut, T>(&self, mut attempt: F) -> Result<T, ForwardError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, ProduceError>>,
    {
        let mut n = 1;
        loop {
            let budget = self.attempt_timeout(n);
            let outcome = tokio::time::timeout(budget, attempt(n))
                .await
                .unwrap_or(Err(ProduceError::Timeout(budget)));
            match outcome {
                Ok(value) => return Ok(value),
                Err(last) if !last.is_retriable() || n >= self.max_attempts => {
                    return Err(ForwardError { attempts: n, last });
                }
                Err(err) => {
                    log::debug!(attempt = n as u64, error:% = err; "Retrying");
                    n += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use tokio::time::Instant;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    #[test]
    fn default_policy_is_two_attempts_of_two_and_four_seconds() {
        let p = policy();
        assert_eq!(p.attempt_timeout(1), Duration::from_secs(2));
        assert_eq!(p.attempt_timeout(2), Duration::from_secs(4));
        assert_eq!(p.total_budget(), Duration::from_secs(6));
    }

    #[test]
    fn policies_that_cannot_bound_time_are_refused() {
        assert_eq!(
            RetryPolicy::try_new(Duration::ZERO, 2),
            Err(PolicyError::ZeroStep)
        );
        assert_eq!(
            RetryPolicy::try_new(Duration::from_secs(1), 0),
            Err(PolicyError::Attempts(0))
        );
        assert!(RetryPolicy::try_new(Duration::from_secs(1), 11).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_black_hole_times_out_each_attempt_then_reports_timeout() {
        let start = Instant::now();
        let ends = RefCell::new(Vec::new());
        let result: Result<(), _> = policy()
            .run(|n| {
                ends.borrow_mut().push((n, start.elapsed()));
                std::future::pending()
            })
            .await;
        let err = result.unwrap_err();
        assert_eq!(err.attempts, 2);
        assert_eq!(err.last, ProduceError::Timeout(Duration::from_secs(4)));
        // Attempt 1 started at 0 s, attempt 2 when attempt 1's 2 s ran out; 6 s in all.
        assert_eq!(
            *ends.borrow(),
            vec![(1, Duration::ZERO), (2, Duration::from_secs(2))]
        );
        assert_eq!(start.elapsed(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_once_after_a_retriable_failure_then_succeeds() {
        let calls = RefCell::new(0);
        let result = policy()
            .run(|n| {
                *calls.borrow_mut() += 1;
                async move {
                    if n == 1 {
                        Err(ProduceError::Unavailable("connection reset".into()))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(result, Ok(2));
        assert_eq!(*calls.borrow(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejection_is_not_retried() {
        let calls = RefCell::new(0);
        let start = Instant::now();
        let result: Result<(), _> = policy()
            .run(|_| {
                *calls.borrow_mut() += 1;
                async { Err(ProduceError::Rejected("unknown topic".into())) }
            })
            .await;
        assert_eq!(
            result,
            Err(ForwardError {
                attempts: 1,
                last: ProduceError::Rejected("unknown topic".into())
            })
        );
        assert_eq!(*calls.borrow(), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn overload_is_answered_at_once_without_retry() {
        let result: Result<(), _> = policy()
            .run(|_| async { Err(ProduceError::Overloaded("queue full".into())) })
            .await;
        assert_eq!(result.unwrap_err().attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_success_within_the_second_budget_counts() {
        let start = Instant::now();
        let result = policy()
            .run(|n| async move {
                // Each attempt needs 3 s: too slow for attempt 1 (2 s), fine for 2 (4 s).
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok::<_, ProduceError>(n)
            })
            .await;
        assert_eq!(result, Ok(2));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_attempt_count_is_configurable() {
        let p = RetryPolicy::try_new(Duration::from_millis(100), 3).unwrap();
        let start = Instant::now();
        let result: Result<(), _> = p.run(|_| std::future::pending()).await;
        assert_eq!(result.unwrap_err().attempts, 3);
        assert_eq!(start.elapsed(), Duration::from_millis(600));
        assert_eq!(p.total_budget(), Duration::from_millis(600));
    }
}
