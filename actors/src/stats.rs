//! Per-target counters shared by a producer actor, the registry and the forwarder.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// What a producer actor is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ProducerState {
    /// Opening its connection; messages wait in its mailbox.
    Connecting = 0,
    /// Connected; messages are published.
    Ready = 1,
    /// Waiting to reconnect after a failure; messages are refused as unavailable.
    Restarting = 2,
    /// Stopped (idle, evicted or shut down).
    Stopped = 3,
}

impl ProducerState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Connecting,
            1 => Self::Ready,
            2 => Self::Restarting,
            _ => Self::Stopped,
        }
    }

    /// The state's name in stats output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Ready => "ready",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
        }
    }
}

/// A count of things in flight, with a guard that takes one place and gives it back.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicU64>);

impl InFlight {
    /// Takes a place unless `limit` places are taken already.
    pub fn try_enter(&self, limit: usize) -> Option<InFlightGuard> {
        let limit = limit as u64;
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlightGuard(self.0.clone()))
    }

    /// How many places are taken.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// One place in an [`InFlight`] count, given back when dropped (also when a caller's
/// request is cancelled midway).
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicU64>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The counters of one target's producer.
#[derive(Debug, Default)]
pub struct TargetStats {
    /// Messages delivered and confirmed by the broker.
    pub sent: AtomicU64,
    /// Messages answered with an error after the policy ran out.
    pub failed: AtomicU64,
    /// Attempts beyond the first.
    pub retried: AtomicU64,
    /// Times the producer actor was restarted by its supervisor.
    pub restarts: AtomicU64,
    /// Messages accepted for this target and not yet answered.
    pub in_flight: InFlight,
    /// The [`ProducerState`] as its `u8` value.
    state: AtomicU8,
}

impl TargetStats {
    /// Records the producer's new state.
    pub fn set_state(&self, state: ProducerState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// The producer's current state.
    pub fn state(&self) -> ProducerState {
        ProducerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// A consistent-enough copy of the counters for reporting.
    pub fn snapshot(&self, kind: &'static str, target: String) -> StatsSnapshot {
        StatsSnapshot {
            kind,
            target,
            state: self.state(),
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            in_flight: self.in_flight.get(),
        }
    }
}

/// The counters of one target at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// `kafka` or `rabbitmq`.
    pub kind: &'static str,
    /// The target, credentials redacted.
    pub target: String,
    /// What the producer is doing.
    pub state: ProducerState,
    /// Messages delivered.
    pub sent: u64,
    /// Messages that failed after all attempts.
    pub failed: u64,
    /// Attempts beyond the first.
    pub retried: u64,
    /// Supervisor restarts of the producer.
    pub restarts: u64,
    /// Messages in flight now.
    pub in_flight: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_refuses_beyond_its_limit_and_frees_on_drop() {
        let gauge = InFlight::default();
        let a = gauge.try_enter(2).unwrap();
        let _b = gauge.try_enter(2).unwrap();
        assert!(gauge.try_enter(2).is_none());
        assert_eq!(gauge.get(), 2);
        drop(a);
        assert!(gauge.try_enter(2).is_some());
    }
}
