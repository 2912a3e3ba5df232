//! One warning per failure, not one per retry: a target that fails the same way on every
//! attempt (a name that does not resolve, a refused login) logs it once, then again at
//! most once a [`REPEAT_EVERY`] with how many repeats were left out. A different failure
//! is logged at once. The repeats themselves go to the debug log.

use std::time::Duration;

use tokio::time::Instant;

/// How often a failure that keeps repeating is logged again as a warning.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// Failures remembered at once: enough for the brokers of one cluster failing in turn.
const REMEMBERED: usize = 8;

/// The failures one actor warned about lately, and what it left out since.
#[derive(Debug, Default)]
pub struct Repeats {
    /// Each failure warned about, when, and its repeats left out since; oldest first.
    recent: Vec<(String, Instant, u64)>,
}

impl Repeats {
    /// Whether `failure` is to be logged as a warning now: `Some(repeats left out since
    /// its last warning)` when it is new or [`REPEAT_EVERY`] has passed, `None` for a
    /// repeat.
    pub fn warn(&mut self, failure: &str) -> Option<u64> {
        let now = Instant::now();
        match self.recent.iter_mut().find(|(known, ..)| known == failure) {
            Some((_, at, left_out)) if now.duration_since(*at) < REPEAT_EVERY => {
                *left_out = left_out.saturating_add(1);
                None
            }
            Some((_, at, left_out)) => {
                *at = now;
                Some(std::mem::take(left_out))
            }
            None => {
                if self.recent.len() == REMEMBERED {
                    self.recent.remove(0);
                }
                self.recent.push((failure.to_owned(), now, 0));
                Some(0)
            }
        }
    }

    /// Whether no failure is being repeated (none yet, or cleared).
    pub fn is_quiet(&self) -> bool {
        self.recent.is_empty()
    }

    /// The failures are over (a message got through): the next one is news.
    pub fn clear(&mut self) {
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_repeated_failure_is_warned_once_a_minute_and_a_new_one_at_once() {
        let mut repeats = Repeats::default();
        assert_eq!(repeats.warn("refused"), Some(0));
        assert_eq!(repeats.warn("refused"), None);
        assert_eq!(repeats.warn("refused"), None);
        tokio::time::advance(REPEAT_EVERY).await;
        assert_eq!(
            repeats.warn("refused"),
            Some(2),
            "the next warning counts the repeats"
        );
        assert_eq!(
            repeats.warn("unresolved"),
            Some(0),
            "another failure is news"
        );
        assert_eq!(
            repeats.warn("refused"),
            None,
            "two failures in turn are both known"
        );
        assert!(!repeats.is_quiet());
        repeats.clear();
        assert!(repeats.is_quiet());
        assert_eq!(repeats.warn("unresolved"), Some(0));
    }
}
