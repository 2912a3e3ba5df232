//! Typed errors of the forwarding core, each classified as retriable or not.

use std::time::Duration;

/// Why one attempt to hand a message to a broker failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    /// The broker could not be reached, or the connection to it was lost.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker answered and refused the message (nack, unknown topic, too large, …).
    #[error("broker rejected the message: {0}")]
    Rejected(String),
    /// The attempt did not complete within its time budget.
    #[error("no confirmation from the broker within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// A bound on in-flight messages or cached targets was reached.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The daemon is shutting down and accepts no new messages.
    #[error("shutting down")]
    ShuttingDown,
    /// The broker refused the message for a field the sender set that cannot be honoured
    /// (a partition the topic does not have): the sender's error, answered as invalid.
    #[error("invalid {0}")]
    Invalid(String),
}

impl ForwardError {
    /// A message refused before any attempt (overload, shutdown).
    pub fn refused(last: ProduceError) -> Self {
        Self { attempts: 0, last }
    }
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.attempts {
            0 | 1 => write!(f, "{}", self.last),
            n => write!(f, "{} (after {n} attempts)", self.last),
        }
    }
}

impl ProduceError {
    /// Whether another attempt may succeed where this one failed.
    ///
    /// Only failures of reachability and time are retried: a broker that refused a
    /// message would refuse it again, and an overloaded daemon must shed load at once.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Timeout(_))
    }
}

/// A message that could not be delivered after the retry policy ran its course.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ForwardError {
    /// How many attempts were made (0 when the message was refused before any).
    pub attempts: u32,
    /// The failure of the last attempt, which decides the error reported to the caller.
    pub last: ProduceError,
}

/// A request that names an invalid target or route; it is refused before any actor sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidRequest {
    /// The request field at fault, named as on the wire (`brokers`, `topic`, `server`, …).
    pub field: &'static str,
    /// What is wrong with it, in words the sender can act on.
    pub reason: String,
}

impl InvalidRequest {
    /// Builds the error for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_and_timeout_are_retried() {
        assert!(ProduceError::Unavailable("x".into()).is_retriable());
        assert!(ProduceError::Timeout(Duration::from_secs(2)).is_retriable());
        assert!(!ProduceError::Rejected("x".into()).is_retriable());
        assert!(!ProduceError::Overloaded("x".into()).is_retriable());
        assert!(!ProduceError::ShuttingDown.is_retriable());
    }

    #[test]
    fn forward_error_names_attempts_and_cause() {
        let err = ForwardError {
            attempts: 2,
            last: ProduceError::Timeout(Duration::from_secs(4)),
        };
        assert_eq!(
            err.to_string(),
            "no confirmation from the broker within 4000 ms (after 2 attempts)"
        );
    }
}
