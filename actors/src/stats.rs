//! Per-target counters shared by a producer actor, the registry and the forwarder.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// Not connected, and past its backoff: the next message reconnects.
    Idle = 3,
    /// Stopped (idle, evicted or shut down).
    Stopped = 4,
}

impl ProducerState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Connecting,
            1 => Self::Ready,
            2 => Self::Restarting,
            3 => Self::Idle,
            _ => Self::Stopped,
        }
    }

    /// The state's name in stats output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Ready => "ready",
            Self::Restarting => "restarting",
            Self::Idle => "idle",
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
        self.try_add(1, limit as u64)
    }

    /// Takes `amount` places unless that would make more than `limit` (a message's bytes
    /// against a byte bound).
    pub fn try_add(&self, amount: u64, limit: u64) -> Option<InFlightGuard> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                n.checked_add(amount).filter(|&total| total <= limit)
            })
            .ok()
            .map(|_| InFlightGuard(self.0.clone(), amount))
    }

    /// How many places are taken.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Places taken in an [`InFlight`] count, given back when dropped (also when a caller's
/// request is cancelled midway).
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicU64>, u64);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::AcqRel);
    }
}

/// Upper bounds of the delivery-latency buckets, in microseconds (the last is unbounded).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    u64::MAX,
];

/// A lock-free histogram of delivery latencies with fixed buckets.
#[derive(Debug, Default)]
pub struct Latency {
    /// Deliveries per bucket of [`LATENCY_BUCKETS_US`] (not cumulative).
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    /// Sum of all latencies, in microseconds.
    sum_us: AtomicU64,
}

impl Latency {
    /// Records one delivery that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(LATENCY_BUCKETS_US.len() - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// A copy of the buckets.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// The delivery latencies of one target at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LatencySnapshot {
    /// Deliveries per bucket of [`LATENCY_BUCKETS_US`] (not cumulative).
    pub buckets: Vec<u64>,
    /// Sum of all latencies, in microseconds.
    pub sum_us: u64,
}

impl LatencySnapshot {
    /// Deliveries recorded: the sum of the buckets.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The latency below which a fraction `q` of deliveries fell, interpolated linearly
    /// inside its bucket (as Prometheus' `histogram_quantile` does); `None` without data.
    /// Above the last finite bound the answer is that bound.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let mut below = 0u64;
        let mut lower = 0u64;
        for (bucket, upper) in self.buckets.iter().zip(LATENCY_BUCKETS_US) {
            if *bucket > 0 && (below + bucket) as f64 >= rank {
                if upper == u64::MAX {
                    return Some(Duration::from_micros(lower));
                }
                let fraction = (rank - below as f64) / *bucket as f64;
                let micros = lower as f64 + fraction * (upper - lower) as f64;
                return Some(Duration::from_micros(micros as u64));
            }
            below += bucket;
            lower = upper;
        }
        Some(Duration::from_micros(lower))
    }
}

/// The last failure seen for a target: its message and when it happened (wall-clock
/// time, as `/stats` shows it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // The type's doc says what each field is.
pub struct LastError {
    pub message: String,
    pub at: SystemTime,
}

/// The counters of one target's producer.
#[derive(Debug)]
pub struct TargetStats {
    /// Messages delivered and confirmed by the broker.
    pub sent: AtomicU64,
    /// Messages answered with an error after the policy ran out.
    pub failed: AtomicU64,
    /// Attempts beyond the first.
    pub retried: AtomicU64,
    /// Times the producer actor was restarted by its supervisor.
    pub restarts: AtomicU64,
    /// Messages the broker returned as unroutable (RabbitMQ, published mandatory).
    pub returned: AtomicU64,
    /// Messages accepted for this target and not yet answered.
    pub in_flight: InFlight,
    /// Latencies of delivered messages, from arrival to the broker's confirmation.
    pub latency: Latency,
    /// The [`ProducerState`] as its `u8` value.
    state: AtomicU8,
    /// When the producer was created.
    created: SystemTime,
    /// When the last message for this target arrived, in ms since the Unix epoch.
    last_used_ms: AtomicU64,
    /// The last failure (rare, so a lock is fine).
    last_error: Mutex<Option<LastError>>,
    /// Since when the target has failed without a delivery in between, in ms of the
    /// monotonic clock ([`mono_ms`]); 0 when it has not failed since its last delivery.
    /// Counted from failures and deliveries, not from the producer's state: a producer
    /// that cannot connect cycles through several states, and a Kafka producer is
    /// "ready" at once even with every broker down.
    failing_since_ms: AtomicU64,
    /// Deliveries confirmed (answered or replayed): a connection that carried one had
    /// proved itself, so losing it is a drop.
    delivered: AtomicU64,
    /// When the producer lost a connection that had carried a delivery, oldest first, at
    /// most [`RECENT_DROPS`]: a broker that accepts connections and drops them shows as
    /// many within a short window (failed attempts to connect do not count).
    recent_drops: Mutex<VecDeque<Instant>>,
    /// Connections that had carried a delivery, lost since the producer was created.
    drops: AtomicU64,
}

/// Lost connections kept per target: enough to tell a loop (more than a few within
/// minutes) from a broker that went away once.
pub const RECENT_DROPS: usize = 64;

impl Default for TargetStats {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            in_flight: InFlight::default(),
            latency: Latency::default(),
            state: AtomicU8::new(ProducerState::Connecting as u8),
            created: SystemTime::now(),
            last_used_ms: AtomicU64::new(unix_ms(SystemTime::now())),
            last_error: Mutex::new(None),
            failing_since_ms: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            recent_drops: Mutex::new(VecDeque::with_capacity(RECENT_DROPS)),
            drops: AtomicU64::new(0),
        }
    }
}

impl TargetStats {
    /// Records the producer's new state.
    pub fn set_state(&self, state: ProducerState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Records a confirmed delivery (answered or replayed): the target is not failing.
    pub fn note_delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    /// Deliveries confirmed so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Remembers that the producer lost a connection that had carried a delivery.
    pub fn note_drop(&self) {
        self.drops.fetch_add(1, Ordering::Relaxed);
        let mut recent = self
            .recent_drops
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if recent.len() == RECENT_DROPS {
            recent.pop_front();
        }
        recent.push_back(Instant::now());
    }

    /// The producer's current state.
    pub fn state(&self) -> ProducerState {
        ProducerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Records that a message for this target arrived now.
    pub fn touch(&self) {
        self.last_used_ms
            .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
    }

    /// Counts a message the broker returned as unroutable.
    pub fn record_returned(&self) {
        self.returned.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a failure (a message not delivered, or the producer's connection lost);
    /// the target is failing from now unless it already was.
    pub fn record_error(&self, message: String) {
        let _ = self.failing_since_ms.compare_exchange(
            0,
            mono_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let record = LastError {
            message,
            at: SystemTime::now(),
        };
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(record);
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
            returned: self.returned.load(Ordering::Relaxed),
            in_flight: self.in_flight.get(),
            latency: self.latency.snapshot(),
            created: self.created,
            last_used: UNIX_EPOCH
                + Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed)),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            failing_for: match self.failing_since_ms.load(Ordering::Relaxed) {
                0 => None,
                since => Some(Duration::from_millis(mono_ms().saturating_sub(since))),
            },
            drop_ages: self
                .recent_drops
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(Instant::elapsed)
                .collect(),
            drops: self.drops.load(Ordering::Relaxed),
        }
    }
}

/// Milliseconds of the monotonic clock since the first call, plus 1 (0 means "never"):
/// a wall clock stepped by NTP must not make a target look failing for hours, or not at
/// all.
fn mono_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let elapsed = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(elapsed).unwrap_or(u64::MAX - 1) + 1
}

/// Milliseconds since the Unix epoch (0 for a clock before it).
fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    /// Messages the broker returned as unroutable.
    pub returned: u64,
    /// Messages in flight now.
    pub in_flight: u64,
    /// Latencies of delivered messages.
    pub latency: LatencySnapshot,
    /// When the producer was created.
    pub created: SystemTime,
    /// When the last message for it arrived.
    pub last_used: SystemTime,
    /// The last failure, if any.
    pub last_error: Option<LastError>,
    /// How long the target has failed without a delivery in between (`None`: it has
    /// not failed since its last delivery).
    pub failing_for: Option<Duration>,
    /// How long ago it lost connections that had carried deliveries, oldest first (at
    /// most [`RECENT_DROPS`]).
    pub drop_ages: Vec<Duration>,
    /// Connections that had carried deliveries, lost since the producer was created.
    pub drops: u64,
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

    #[test]
    fn latency_quantiles_interpolate_inside_buckets() {
        let latency = Latency::default();
        assert_eq!(latency.snapshot().quantile(0.5), None);
        // 100 deliveries spread evenly inside the 1–2.5 ms bucket, one slow outlier.
        for i in 0..100u64 {
            latency.record(Duration::from_micros(1_001 + i * 15));
        }
        latency.record(Duration::from_millis(300));
        let snapshot = latency.snapshot();
        assert_eq!(snapshot.count(), 101);
        let p50 = snapshot.quantile(0.5).unwrap();
        assert!(
            p50 > Duration::from_millis(1) && p50 < Duration::from_micros(2_500),
            "{p50:?}"
        );
        let p99 = snapshot.quantile(0.99).unwrap();
        assert!(p99 <= Duration::from_micros(2_500), "{p99:?}");
        let max = snapshot.quantile(1.0).unwrap();
        assert!(
            max > Duration::from_millis(250) && max <= Duration::from_millis(500),
            "{max:?}"
        );
        // Beyond the last finite bound: that bound.
        latency.record(Duration::from_secs(3600));
        assert_eq!(
            latency.snapshot().quantile(1.0),
            Some(Duration::from_secs(10))
        );
    }
}
