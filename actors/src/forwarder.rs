//! The entry point of the forwarding core: admits a message, finds its target's producer
//! and runs the retry policy around the producer's attempts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use crate::error::{ForwardError, ProduceError};
use crate::policy::RetryPolicy;
use crate::producer::Publish;
use crate::registry::Registry;
use crate::stats::InFlight;
use crate::target::Target;

/// Forwards messages to their targets under the retry policy and the in-flight bounds.
pub struct Forwarder {
    /// The producer actors.
    registry: Arc<Registry>,
    /// Time and attempt bounds of each message.
    policy: RetryPolicy,
    /// Messages accepted and not yet answered, across all targets.
    in_flight: InFlight,
    /// Bound of `in_flight`.
    max_in_flight: usize,
    /// Set once shutdown began: new messages are refused.
    closing: AtomicBool,
}

impl Forwarder {
    /// A forwarder over `registry`; each target's in-flight bound is the registry's
    /// `ProducerSettings::max_in_flight_per_target`.
    pub fn new(registry: Arc<Registry>, policy: RetryPolicy, max_in_flight: usize) -> Self {
        Self {
            registry,
            policy,
            in_flight: InFlight::default(),
            max_in_flight,
            closing: AtomicBool::new(false),
        }
    }

    /// Delivers `payload` to `target` (topic or routing key `route`) and returns once the
    /// broker confirmed it, or with the reason it was not delivered. Returns within the
    /// policy's total budget.
    pub async fn forward(
        &self,
        target: &Target,
        route: String,
        payload: Bytes,
    ) -> Result<(), ForwardError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(ForwardError::refused(ProduceError::ShuttingDown));
        }
        let _admitted = self
            .in_flight
            .try_enter(self.max_in_flight)
            .ok_or_else(|| {
                ForwardError::refused(ProduceError::Overloaded(format!(
                    "{} messages in flight (max_in_flight)",
                    self.max_in_flight
                )))
            })?;
        let producer = self
            .registry
            .producer(target)
            .map_err(ForwardError::refused)?;
        let stats = producer.stats();
        let per_target = self.registry.max_in_flight_per_target();
        let Some(_admitted_to_target) = stats.in_flight.try_enter(per_target) else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            return Err(ForwardError::refused(ProduceError::Overloaded(format!(
                "{per_target} messages in flight to this target (max_in_flight_per_target)"
            ))));
        };
        let result = self
            .policy
            .run(|attempt| {
                if attempt > 1 {
                    stats.retried.fetch_add(1, Ordering::Relaxed);
                }
                producer.publish(Publish {
                    route: route.clone(),
                    payload: payload.clone(),
                })
            })
            .await;
        let counter = if result.is_ok() {
            &stats.sent
        } else {
            &stats.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Refuses new messages from now on (those in flight go on).
    pub fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Messages accepted and not yet answered.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.get()
    }

    /// The producer registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The retry policy.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }
}
