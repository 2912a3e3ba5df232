//! The Kafka backend: one idempotent, acks=all librdkafka producer per broker set.
//!
//! The producer's events (delivery reports, errors) are served on the producer actor's
//! own arbiter, not on a thread of their own ([`super::events`]): a produce response
//! confirming many messages costs one wake-up of that arbiter rather than one per message
//! from a polling thread, and the confirmations are completed together. (A confirmation
//! of a message whose caller runs on another arbiter still wakes that arbiter.)

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{self, FutureExt, LocalBoxFuture};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use tokio::sync::oneshot;

use crate::error::ProduceError;
use crate::metadata::Metadata;
use crate::producer::{Backend, Confirmation, Delivery, LostSignal, Outgoing, ProducerActor};
use crate::repeats::Repeats;
use crate::settings::KafkaSettings;
use crate::target::KafkaTarget;

use super::config::client_config;
use super::explain::{self, Causes};

/// The Kafka header that carries a message's id, for consumers to drop duplicates.
pub const ID_HEADER: &str = "ferry-id";

/// The producer actor of one Kafka broker set.
pub type KafkaProducer = ProducerActor<KafkaBackend>;

/// Connects to one Kafka cluster; the topic is chosen per message.
pub struct KafkaBackend {
    /// The cluster's bootstrap brokers.
    target: KafkaTarget,
    /// Tuning, extra properties and each cluster's properties.
    settings: Arc<KafkaSettings>,
    /// librdkafka's warning last logged, kept across the producers of this cluster (one
    /// per restart): a broker that stays unreachable is logged once a minute.
    repeats: Arc<Warned>,
}

/// librdkafka's warnings of one cluster, and whether any is remembered (so a delivery,
/// which ends them, clears them without a lock when there is nothing to clear).
#[derive(Debug, Default)]
struct Warned {
    /// The warnings.
    repeats: Mutex<Repeats>,
    /// Whether `repeats` may hold one.
    any: std::sync::atomic::AtomicBool,
}

impl Warned {
    /// Whether `failure` is to be logged as a warning now ([`Repeats::warn`]).
    fn warn(&self, failure: &str) -> Option<u64> {
        self.any.store(true, std::sync::atomic::Ordering::Relaxed);
        self.repeats
            .lock()
            .map_or(Some(0), |mut repeats| repeats.warn(failure))
    }

    /// A message was delivered: the next failure is news.
    fn clear(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.any.load(Relaxed)
            && self.any.swap(false, Relaxed)
            && let Ok(mut repeats) = self.repeats.lock()
        {
            repeats.clear();
        }
    }
}

impl KafkaBackend {
    /// A backend for `target`.
    pub fn new(target: KafkaTarget, settings: Arc<KafkaSettings>) -> Self {
        Self {
            target,
            settings,
            repeats: Arc::default(),
        }
    }
}

/// The librdkafka producer, its delivery reports sent to each message's waiting task.
type Native = BaseProducer<LossReporter>;

/// How long closing a producer waits for its event task to let go of it.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// A connected Kafka producer and the task that serves its events on the actor's arbiter.
pub struct KafkaConnection {
    /// The producer; the publishers hold the other handles, and the actor takes them back
    /// before this is dropped.
    producer: Arc<Native>,
    /// Tells the event task to stop (and let go of its producer handle).
    stop_events: Option<oneshot::Sender<()>>,
    /// The pipe's write end librdkafka signals new events on; closed only after the
    /// producer is destroyed, so librdkafka never writes to a closed (or reused) fd.
    wakeup: Option<OwnedFd>,
}

impl Drop for KafkaConnection {
    /// Stops the event task, then destroys the producer (which purges its queue and
    /// serves the last delivery reports, so no message is left waiting), then closes the
    /// pipe. Blocks for up to `RELEASE_WAIT` plus librdkafka's 500 ms flush: the backend
    /// drops it off the runtime.
    fn drop(&mut self) {
        if let Some(stop) = self.stop_events.take() {
            let _ = stop.send(());
        }
        // The event task holds a handle only until it sees the stop; the destroy must run
        // here, off the runtime, not in that task.
        let started = std::time::Instant::now();
        while Arc::strong_count(&self.producer) > 1 && started.elapsed() < RELEASE_WAIT {
            std::thread::sleep(Duration::from_millis(1));
        }
        if Arc::strong_count(&self.producer) > 1 {
            // The producer outlives this drop, so its pipe must too: one fd leaked rather
            // than librdkafka writing into whatever file reuses the number.
            log::warn!("a Kafka producer's event task did not stop in {RELEASE_WAIT:?}");
            std::mem::forget(self.wakeup.take());
        }
    }
}

/// Creates the producer of `backend`'s cluster and starts serving its events on the
/// current arbiter.
fn start_producer(
    backend: &KafkaBackend,
    lost: LostSignal<KafkaBackend>,
) -> Result<KafkaConnection, ProduceError> {
    let cluster = backend.settings.cluster_for(&backend.target);
    let producer: Native = client_config(
        backend.target.bootstrap_servers(),
        &backend.settings,
        cluster,
    )
    .create_with_context(LossReporter {
        lost,
        label: backend.target.bootstrap_servers().to_owned(),
        causes: Causes::default(),
        repeats: Arc::clone(&backend.repeats),
    })
    .map_err(|e| ProduceError::Rejected(format!("invalid Kafka producer settings: {e}")))?;
    let producer = Arc::new(producer);
    let events = super::events::serve(&producer)?;
    Ok(KafkaConnection {
        producer,
        stop_events: Some(events.stop),
        wakeup: Some(events.wakeup),
    })
}

impl Backend for KafkaBackend {
    type Connection = KafkaConnection;
    /// A handle on the same librdkafka producer; the actor takes it back before it closes
    /// the connection.
    type Publisher = Arc<Native>;

    fn connect(
        &self,
        lost: LostSignal<Self>,
    ) -> LocalBoxFuture<'static, Result<Self::Connection, ProduceError>> {
        // Creating the producer opens no connection; librdkafka connects in its own threads
        // and reports a dead cluster through `LossReporter`.
        future::ready(start_producer(self, lost)).boxed_local()
    }

    fn publisher(&self, connection: &KafkaConnection, _lost: LostSignal<Self>) -> Arc<Native> {
        // A dead cluster is reported by `LossReporter`, not by a publish.
        Arc::clone(&connection.producer)
    }

    fn publish(producer: &Self::Publisher, message: &Outgoing<'_>) -> Confirmation {
        let kafka = match message.metadata.map(|m| &**m) {
            Some(Metadata::Kafka(kafka)) => Some(kafka),
            _ => None,
        };
        let mut headers =
            OwnedHeaders::new_with_capacity(1 + kafka.map_or(0, |kafka| kafka.headers.len()));
        // The sender's headers first, in their order; ferry's id last.
        for (name, value) in kafka.into_iter().flat_map(|kafka| &kafka.headers) {
            headers = headers.insert(Header {
                key: name.as_str(),
                value: Some(&value[..]),
            });
        }
        headers = headers.insert(Header {
            key: ID_HEADER,
            value: Some(message.id.as_bytes()),
        });
        let (confirmed, confirmation) = oneshot::channel();
        let mut record =
            BaseRecord::<[u8], [u8], _>::with_opaque_to(message.route, Box::new(confirmed))
                .payload(&message.payload[..])
                .headers(headers);
        if let Some(key) = kafka.and_then(|kafka| kafka.key.as_ref()) {
            record = record.key(&key[..]);
        }
        if let Some(partition) = kafka.and_then(|kafka| kafka.partition) {
            record = record.partition(partition);
        }
        match producer.send(record) {
            Ok(()) => async move {
                confirmation.await.unwrap_or_else(|_closed| {
                    Err(ProduceError::Unavailable(
                        "the Kafka producer was closed before delivery".into(),
                    ))
                })
            }
            .boxed(),
            Err((error, _)) => future::ready(Err(classify(&error))).boxed(),
        }
    }

    fn close(connection: KafkaConnection) {
        // Dropping a producer purges its queue and joins librdkafka's threads: it blocks.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(connection))),
            Err(_) => drop(connection),
        }
    }
}

/// Maps a librdkafka failure to a [`ProduceError`] by its error code.
pub fn classify(error: &KafkaError) -> ProduceError {
    use RDKafkaErrorCode as C;
    let text = error.to_string();
    match error.rdkafka_error_code() {
        Some(C::QueueFull) => {
            ProduceError::Overloaded(format!("Kafka producer queue full: {text}"))
        }
        Some(C::UnknownPartition) => ProduceError::Invalid(format!(
            "partition: the topic has no such partition ({text})"
        )),
        Some(C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue) => {
            ProduceError::Unavailable(text)
        }
        Some(
            C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::Resolve
            | C::BrokerNotAvailable
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::PurgeQueue
            | C::PurgeInflight
            | C::Fatal
            | C::BrokerDestroy
            | C::DestroyBroker,
        ) => ProduceError::Unavailable(text),
        // Anything else is the broker's answer about this message (unknown topic, too
        // large, not authorised, …): sending it again would get the same answer.
        _ => ProduceError::Rejected(text),
    }
}

/// Where a message's delivery report goes: the task waiting for its confirmation.
type Confirmed = oneshot::Sender<Result<Delivery, ProduceError>>;

impl ProducerContext for LossReporter {
    type DeliveryOpaque = Box<Confirmed>;

    /// Completes the message's confirmation (on the arbiter that serves the events, or on
    /// the thread destroying the producer, which reports what it purged).
    fn delivery(&self, result: &DeliveryResult<'_>, confirmed: Box<Confirmed>) {
        let outcome = match result {
            Ok(written) => {
                self.repeats.clear();
                Ok(Delivery {
                    partition: Some(written.partition()),
                    offset: Some(written.offset()),
                })
            }
            Err((error, message)) => Err(self.explain(error, message.topic())),
        };
        // The caller may have given up (its budget ran out): nothing to tell.
        let _ = confirmed.send(outcome);
    }
}

/// librdkafka's client callbacks: turns "the cluster is gone" into a producer restart.
pub struct LossReporter {
    /// Where to report a dead cluster.
    lost: LostSignal<KafkaBackend>,
    /// The broker set, for logs.
    label: String,
    /// Why the cluster was last unreachable, in words a user acts on.
    causes: Causes,
    /// librdkafka's warnings last logged for this cluster.
    repeats: Arc<Warned>,
}

impl LossReporter {
    /// A failed delivery to `topic` as its sender should read it: a broker's refusal with
    /// the topic named and what to do, a failure to reach the cluster with the reason
    /// librdkafka gave for it (the original text goes to the debug log).
    fn explain(&self, error: &KafkaError, topic: &str) -> ProduceError {
        if let Some(refused) = error
            .rdkafka_error_code()
            .and_then(|code| explain::refusal(code, topic, &self.label))
        {
            log::debug!("target":% = self.label; "librdkafka said: {error}");
            return refused;
        }
        self.causes.explain(classify(error))
    }
}

impl ClientContext for LossReporter {
    /// librdkafka's own log lines; its "error" lines (a refused connection, say) are
    /// logged as warnings: the message's caller is told, nothing is lost.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, line: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
                // The same failure, however timed: "… (after 3ms in state CONNECT)".
                let failure = line.split(" (after ").next().unwrap_or(line);
                match self.repeats.warn(failure) {
                    Some(left_out) => log::warn!(
                        "target":% = self.label,
                        facility = facility,
                        suppressed_before = left_out;
                        "librdkafka: {line}"
                    ),
                    None => log::debug!(
                        "target":% = self.label, facility = facility; "librdkafka: {line}"
                    ),
                }
            }
            L::Notice | L::Info => {
                log::info!("target":% = self.label, facility = facility; "librdkafka: {line}")
            }
            L::Debug => {
                log::debug!("target":% = self.label, facility = facility; "librdkafka: {line}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                let original = format!("{error}: {reason}");
                self.lost
                    .signal(self.causes.explain(ProduceError::Unavailable(original)));
            }
            Some(RDKafkaErrorCode::Fatal) => {
                self.lost
                    .signal(ProduceError::Unavailable(format!("{error}: {reason}")));
            }
            // A TLS handshake that failed (an untrusted certificate, most often): the
            // producer restarts, and its messages meanwhile are told why.
            Some(RDKafkaErrorCode::SSL) => {
                log::warn!("target":% = self.label, reason:% = reason; "Kafka TLS failed");
                self.lost
                    .signal(ProduceError::Unavailable(format!("TLS failed: {reason}")));
            }
            // The cluster refused ferry's credentials (SASL): trying again would meet the
            // same answer, so the producer stops with a rejection that its messages get at
            // once (and restarts after its backoff, in case the credentials were fixed).
            Some(RDKafkaErrorCode::Authentication) => {
                log::warn!(
                    "target":% = self.label,
                    reason:% = reason;
                    "Kafka authentication failed"
                );
                self.lost.signal(ProduceError::Rejected(format!(
                    "authentication failed: {reason}"
                )));
            }
            // A broker that cannot be reached: librdkafka's own log line (a warning) has
            // said so; the translation is kept for the messages it fails.
            _ if self.causes.note(reason).is_some() => {
                log::debug!("target":% = self.label, reason:% = reason; "librdkafka error: {error}")
            }
            _ => {
                log::warn!(
                    "target":% = self.label,
                    error:% = error,
                    reason:% = reason;
                    "Kafka client error"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_errors_are_classified_by_code() {
        let e = |code| KafkaError::MessageProduction(code);
        assert!(classify(&e(RDKafkaErrorCode::AllBrokersDown)).is_retriable());
        assert!(classify(&e(RDKafkaErrorCode::MessageTimedOut)).is_retriable());
        assert!(classify(&e(RDKafkaErrorCode::PurgeInflight)).is_retriable());
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::QueueFull)),
            ProduceError::Overloaded(_)
        ));
        for code in [
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert!(
                matches!(classify(&e(code)), ProduceError::Rejected(_)),
                "{code:?}"
            );
        }
    }
}
