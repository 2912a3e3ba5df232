//! The entry point of the forwarding core: admits a message, finds its target's producer
//! and runs the retry policy around the producer's attempts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

use crate::error::{ForwardError, ProduceError};
use crate::line::Line;
use crate::metadata::Metadata;
use crate::policy::RetryPolicy;
use crate::producer::{Delivery, Outgoing, Producer};
use crate::registry::Registry;
use crate::spool::{Spooler, ToSpool, UNREACHED_BACKOFF_MAX};
use crate::stats::{InFlight, InFlightGuard};
use crate::target::Target;

/// A message the daemon took responsibility for.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Its id (UUIDv7), as sent to the broker (Kafka header `ferry-id`, AMQP
    /// `message_id`).
    pub id: Arc<str>,
    /// `None` when the broker confirmed it; otherwise it is durable in the spool and this
    /// says why it was spooled.
    pub spooled: Option<String>,
    /// Where the broker put it (Kafka: partition and offset); empty when spooled.
    pub delivery: Delivery,
}

/// Forwards messages to their targets under the retry policy and the in-flight bounds.
pub struct Forwarder {
    /// Finds (or starts) each target's producer.
    registry: Arc<Registry>,
    /// Time and attempt bounds of each message.
    policy: RetryPolicy,
    /// Messages accepted and not yet answered, across all targets.
    in_flight: InFlight,
    /// Bound of `in_flight` (`max_in_flight`); beyond it messages are refused as
    /// overloaded.
    max_in_flight: usize,
    /// Payload bytes of the messages in flight.
    in_flight_bytes: InFlight,
    /// Bound of `in_flight_bytes` (`max_in_flight_bytes`), refused likewise.
    max_in_flight_bytes: u64,
    /// Set once shutdown began: new messages are refused.
    closing: AtomicBool,
    /// Outcomes of every message since start, whatever became of its producer.
    totals: Totals,
    /// The durable spool, when one is configured.
    spooler: Option<Arc<Spooler>>,
}

/// Message outcomes over the daemon's life (per-target counters go with their producer
/// when it is stopped or evicted; these stay).
#[derive(Debug, Default)]
pub struct Totals {
    /// Messages delivered.
    pub sent: AtomicU64,
    /// Messages not delivered, including those refused before reaching a producer.
    pub failed: AtomicU64,
    /// Attempts beyond the first.
    pub retried: AtomicU64,
    /// Messages written to the spool (answered 0, delivered later).
    pub spooled: AtomicU64,
}

impl Forwarder {
    /// A forwarder over `registry` with at most `max_in_flight` messages and
    /// `max_in_flight_bytes` payload bytes in flight; each target's in-flight bound is the
    /// registry's `ProducerSettings::max_in_flight_per_target`. With a `spooler`, a message
    /// its broker cannot take now (unavailable, or the first attempt timed out) is spooled
    /// instead of retried or failed.
    pub fn new(
        registry: Arc<Registry>,
        policy: RetryPolicy,
        max_in_flight: usize,
        max_in_flight_bytes: u64,
        spooler: Option<Arc<Spooler>>,
    ) -> Self {
        Self {
            registry,
            policy,
            in_flight: InFlight::default(),
            max_in_flight,
            in_flight_bytes: InFlight::default(),
            max_in_flight_bytes,
            closing: AtomicBool::new(false),
            totals: Totals::default(),
            spooler,
        }
    }

    /// Delivers `payload` to `target` (topic or routing key `route`), with `metadata`
    /// (checked by the caller, of `target`'s kind), and returns once the broker confirmed
    /// it or (with a spool) it is durable in the spool, or with the reason it was not
    /// delivered. Returns within the policy's total budget.
    ///
    /// `via` names the configured route `target` was resolved from, if any: the spool then
    /// files the message under the route's name (no address or password stored), and
    /// replay resolves the route again under the config in force.
    pub async fn forward(
        &self,
        target: &Target,
        via: Option<&Arc<str>>,
        route: String,
        payload: Bytes,
        metadata: Option<Arc<Metadata>>,
    ) -> Result<Accepted, ForwardError> {
        let result = self
            .forward_counted(target, via, route, payload, metadata)
            .await;
        let total = match &result {
            Ok(Accepted { spooled: None, .. }) => &self.totals.sent,
            Ok(Accepted {
                spooled: Some(_), ..
            }) => &self.totals.spooled,
            Err(_) => &self.totals.failed,
        };
        total.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// [`Self::forward`] without the daemon-wide totals: admit the message, keep it behind
    /// its line's spooled messages if there are any, else publish it under the policy and
    /// settle the outcome.
    async fn forward_counted(
        &self,
        target: &Target,
        via: Option<&Arc<str>>,
        route: String,
        payload: Bytes,
        metadata: Option<Arc<Metadata>>,
    ) -> Result<Accepted, ForwardError> {
        let _admitted =
            self.admit((payload.len() + metadata.as_deref().map_or(0, Metadata::bytes)) as u64)?;
        let id = new_id();
        if let Some(spooler) = &self.spooler
            && spooler.has_lines()
            && let line = line_of(target, via)
            && spooler.is_spooling(&line)
        {
            // Behind the target's spooled messages, in arrival order.
            let why = "earlier messages to this target are spooled".to_owned();
            let message = ToSpool {
                id,
                route: &route,
                payload: &payload,
                metadata: metadata.as_deref(),
            };
            return spool(spooler, &line, message, why).await;
        }
        let producer = self
            .registry
            .producer(target)
            .map_err(ForwardError::refused)?;
        let arrived = Instant::now();
        let _admitted_to_target = self.admit_to(&producer)?;
        let outgoing = Outgoing {
            route: &route,
            payload: &payload,
            id: &id,
            metadata: metadata.as_ref(),
        };
        let result = self.publish(&producer, outgoing).await;
        let stats = producer.stats();
        match result {
            Ok(delivery) => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                stats.latency.record(arrived.elapsed());
                Ok(Accepted {
                    id,
                    spooled: None,
                    delivery,
                })
            }
            Err(error) => {
                stats.record_error(error.to_string());
                match &self.spooler {
                    // The broker cannot take it now: the spool keeps it.
                    Some(spooler) if error.last.is_retriable() => {
                        let message = ToSpool {
                            id,
                            route: &route,
                            payload: &payload,
                            metadata: metadata.as_deref(),
                        };
                        let line = line_of(target, via);
                        let reached = self.registry.has_reached(target, stats);
                        spool(spooler, &line, message, spooled_because(&error, reached)).await
                    }
                    _ => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        Err(error)
                    }
                }
            }
        }
    }

    /// Takes a message's place under `producer`'s in-flight bound (held until it has its
    /// outcome), or refuses it as overloaded.
    fn admit_to(&self, producer: &Producer) -> Result<InFlightGuard, ForwardError> {
        let stats = producer.stats();
        stats.touch();
        let per_target = self.registry.max_in_flight_per_target();
        stats.in_flight.try_enter(per_target).ok_or_else(|| {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            let error = ForwardError::refused(ProduceError::Overloaded(format!(
                "{per_target} messages in flight to this target (max_in_flight_per_target)"
            )));
            stats.record_error(error.to_string());
            error
        })
    }

    /// Publishes `message` through `producer` under the policy, counting the retries. With
    /// a spool, one attempt: a message its broker cannot take now is spooled, not retried
    /// (a retry would only keep the caller waiting).
    async fn publish(
        &self,
        producer: &Producer,
        message: Outgoing<'_>,
    ) -> Result<Delivery, ForwardError> {
        let policy = match &self.spooler {
            Some(_) => self.policy.first_attempt_only(),
            None => self.policy,
        };
        policy
            .run(|attempt| {
                if attempt > 1 {
                    producer.stats().retried.fetch_add(1, Ordering::Relaxed);
                    self.totals.retried.fetch_add(1, Ordering::Relaxed);
                }
                producer.publish(message)
            })
            .await
    }

    /// Takes a message's places under the daemon-wide bounds (messages and `bytes` of
    /// payload in flight), held until it has its outcome; or refuses it (shutting down,
    /// or a bound reached).
    fn admit(&self, bytes: u64) -> Result<(InFlightGuard, InFlightGuard), ForwardError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(ForwardError::refused(ProduceError::ShuttingDown));
        }
        let message = self
            .in_flight
            .try_enter(self.max_in_flight)
            .ok_or_else(|| {
                ForwardError::refused(ProduceError::Overloaded(format!(
                    "{} messages in flight (max_in_flight)",
                    self.max_in_flight
                )))
            })?;
        let bytes = self
            .in_flight_bytes
            .try_add(bytes, self.max_in_flight_bytes)
            .ok_or_else(|| {
                ForwardError::refused(ProduceError::Overloaded(format!(
                    "{} payload bytes in flight (max_in_flight_bytes {})",
                    self.in_flight_bytes.get(),
                    self.max_in_flight_bytes
                )))
            })?;
        Ok((message, bytes))
    }

    /// Refuses new messages from now on (those in flight go on); spool replay stops.
    pub fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(spooler) = &self.spooler {
            spooler.begin_shutdown();
        }
    }

    /// The spool, when one is configured.
    pub fn spooler(&self) -> Option<&Arc<Spooler>> {
        self.spooler.as_ref()
    }

    /// Outcomes since start, across producers stopped or evicted since.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Whether shutdown began.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Messages accepted and not yet answered.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.get()
    }

    /// Payload bytes of the messages accepted and not yet answered.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight_bytes.get()
    }

    /// The producer registry (for its stats and its shutdown).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The policy each message is forwarded under.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }
}

/// A new message id: a UUIDv7 (time-ordered), its random bits from a thread-local
/// generator seeded by the OS (uuid's `fast-rng`: no system call per message), written
/// into the `Arc` without an intermediate `String`.
fn new_id() -> Arc<str> {
    let mut buffer = uuid::Uuid::encode_buffer();
    Arc::from(&*uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buffer))
}

/// The spool line of a message to `target`, sent through the route `via` if any.
fn line_of(target: &Target, via: Option<&Arc<str>>) -> Line {
    match via {
        Some(name) => Line::Route {
            name: Arc::clone(name),
            kind: target.kind(),
        },
        None => Line::Target(target.clone()),
    }
}

/// Writes a message to the spool: accepted once durable, or refused as overloaded when the
/// spool is full (nothing spooled before is dropped).
/// Why a message was spooled, as its sender reads it: the failure, and for a target that
/// has not taken a message since the daemon started using it, that its address may be
/// wrong (a misspelt host is spooled like an outage, and would wait forever unnoticed).
fn spooled_because(error: &ForwardError, reached: bool) -> String {
    if reached {
        return error.to_string();
    }
    format!(
        "{error}; no message has reached this target since the daemon started using it: \
         check its address (until one does, its spooled messages are retried ever more \
         rarely, down to once every {} s)",
        UNREACHED_BACKOFF_MAX.as_secs()
    )
}

async fn spool(
    spooler: &Arc<Spooler>,
    target: &Line,
    message: ToSpool<'_>,
    why: String,
) -> Result<Accepted, ForwardError> {
    match spooler.spool(target, &message).await {
        Ok(()) => Ok(Accepted {
            id: message.id,
            spooled: Some(why),
            delivery: Delivery::default(),
        }),
        Err(ferry_spool::SpoolError::Full(reason)) => Err(ForwardError::refused(
            ProduceError::Overloaded(format!("spool full: {reason}")),
        )),
        Err(error) => Err(ForwardError::refused(ProduceError::Unavailable(format!(
            "cannot spool: {error}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::fake::{self, Answer, Gate, Script, target};
    use crate::settings::RegistrySettings;

    /// A forwarder over `script`'s fake broker under the default policy (2 s, then 4 s),
    /// with `spooler` if given one.
    fn forwarder(registry: Arc<Registry>, spooler: Option<Arc<Spooler>>) -> Forwarder {
        Forwarder::new(registry, RetryPolicy::default(), 100, 1 << 20, spooler)
    }

    /// Forwards `payload` to the fake broker's target.
    async fn forward(forwarder: &Forwarder, payload: &str) -> Result<Accepted, ForwardError> {
        let payload = Bytes::from(payload.to_owned());
        forwarder
            .forward(&target(1), None, "topic".into(), payload, None)
            .await
    }

    /// Asserts that `ms` milliseconds passed since `start`, give or take the timers'
    /// ticks (tokio fires each deadline at the next whole millisecond, up to 1 ms late).
    #[track_caller]
    fn assert_took(start: Instant, ms: u128) {
        let took = start.elapsed().as_millis();
        assert!((ms..=ms + 2).contains(&took), "took {took} ms, not {ms}");
    }

    #[actix_rt::test]
    async fn a_silent_first_attempt_is_retried_once_within_a_doubled_budget() {
        tokio::time::pause();
        let script = Script::new();
        script.answer("m", [Answer::Silent]);
        let forwarder = forwarder(fake::registry(&script, RegistrySettings::default()), None);
        let start = Instant::now();
        let accepted = forward(&forwarder, "m").await.unwrap();
        assert_took(start, 2000);
        assert_eq!(accepted.spooled, None);
        assert_eq!(script.payloads(), ["m", "m"]);
        assert_eq!(forwarder.totals().retried.load(Ordering::Relaxed), 1);
        assert_eq!(forwarder.totals().sent.load(Ordering::Relaxed), 1);
    }

    #[actix_rt::test]
    async fn a_silent_broker_is_answered_timed_out_after_the_whole_budget() {
        tokio::time::pause();
        let script = Script::new();
        script.answer("m", [Answer::Silent, Answer::Silent]);
        let forwarder = forwarder(fake::registry(&script, RegistrySettings::default()), None);
        let start = Instant::now();
        let failed = forward(&forwarder, "m").await.unwrap_err();
        assert_eq!(
            failed,
            ForwardError {
                attempts: 2,
                last: ProduceError::Timeout(Duration::from_secs(4))
            }
        );
        assert_took(start, 6000);
        assert_eq!(forwarder.totals().failed.load(Ordering::Relaxed), 1);
    }

    #[actix_rt::test]
    async fn a_nack_is_answered_at_once_without_retry() {
        tokio::time::pause();
        let script = Script::new();
        script.answer("m", [Answer::Nack]);
        let forwarder = forwarder(fake::registry(&script, RegistrySettings::default()), None);
        let start = Instant::now();
        let failed = forward(&forwarder, "m").await.unwrap_err();
        assert_eq!(failed.attempts, 1);
        assert!(matches!(failed.last, ProduceError::Rejected(_)));
        assert_took(start, 0);
        assert_eq!(script.payloads(), ["m"]);
    }

    #[actix_rt::test]
    async fn with_a_spool_a_message_not_confirmed_in_time_is_spooled_then_replayed() {
        tokio::time::pause();
        let script = Script::new();
        script.answer("m", [Answer::Silent]);
        let registry = fake::registry(&script, RegistrySettings::default());
        let gate = Arc::new(Gate::default());
        let (spooler, _dir) = fake::spooler("hand-off", &registry, 1, gate.clone());
        let forwarder = forwarder(registry, Some(Arc::clone(&spooler)));
        let accepted = forward(&forwarder, "m").await.unwrap();
        assert!(
            accepted
                .spooled
                .is_some_and(|why| why.contains("within 2000 ms")),
            "spooled when the first attempt's budget ran out"
        );
        assert_eq!(
            script.payloads(),
            ["m"],
            "one attempt, not the policy's two"
        );
        let behind = forward(&forwarder, "n").await.unwrap();
        assert_eq!(
            behind.spooled.as_deref(),
            Some("earlier messages to this target are spooled")
        );
        assert_eq!(script.payloads(), ["m"], "n was not published");

        gate.open();
        fake::until("the spool is empty", || !spooler.has_lines()).await;
        assert_eq!(script.acked(), ["m", "n"]);
        assert_eq!(forwarder.totals().spooled.load(Ordering::Relaxed), 2);
        assert_eq!(spooler.totals().replayed.load(Ordering::Relaxed), 2);
    }
}
