//! How the registry starts a target's producer actor: over the Kafka or RabbitMQ backend
//! of the target's kind ([`Brokers`]), or, in tests, over a scripted backend.

use std::sync::Arc;

use actix_rt::ArbiterHandle;

use crate::amqp::{AmqpBackend, Servers};
#[cfg(feature = "kafka")]
use crate::kafka::KafkaBackend;
use crate::producer::Producer;
use crate::settings::{AmqpSettings, ProducerSettings};
use crate::stats::TargetStats;
use crate::target::Target;

/// Starts the producer actor of a target: the registry's one way to make producers.
pub(crate) trait StartProducer: Send + Sync {
    /// Starts a supervised producer actor for `target` on `arbiter`, with counters of its
    /// own.
    fn start(&self, target: &Target, arbiter: &ArbiterHandle) -> Producer;
}

/// The daemon's producers: a librdkafka producer per Kafka broker set, a channel per
/// RabbitMQ exchange on its server's shared connection.
pub(crate) struct Brokers {
    /// Settings handed to every producer.
    settings: Arc<ProducerSettings>,
    /// The RabbitMQ settings, shared by every AMQP producer and connection actor (they
    /// hold the TLS files: one copy, not one per exchange).
    amqp_settings: Arc<AmqpSettings>,
    /// The connection actor of each RabbitMQ server.
    amqp_servers: Servers,
}

impl Brokers {
    /// Producers with `settings`.
    pub(crate) fn new(settings: Arc<ProducerSettings>) -> Self {
        let amqp_settings = Arc::new(settings.amqp.clone());
        let amqp_servers = Servers::new(
            Arc::clone(&amqp_settings),
            settings.connect_timeout,
            settings.restart_backoff_initial,
        );
        Self {
            settings,
            amqp_settings,
            amqp_servers,
        }
    }
}

impl StartProducer for Brokers {
    fn start(&self, target: &Target, arbiter: &ArbiterHandle) -> Producer {
        let stats = Arc::new(TargetStats::default());
        let settings = Arc::clone(&self.settings);
        let label = target.to_string();
        match target.clone() {
            #[cfg(feature = "kafka")]
            Target::Kafka(t) => {
                let backend = KafkaBackend::new(t, Arc::new(settings.kafka.clone()));
                Producer::start(arbiter, backend, label, settings, stats)
            }
            #[cfg(not(feature = "kafka"))]
            Target::Kafka(_) => Producer::start(arbiter, absent::NoKafka, label, settings, stats),
            Target::Amqp(t) => {
                let server = self.amqp_servers.of(&t, arbiter);
                let backend = AmqpBackend::new(
                    t,
                    server,
                    Arc::clone(&self.amqp_settings),
                    Arc::clone(&stats),
                );
                Producer::start(arbiter, backend, label, settings, stats)
            }
        }
    }
}

/// The Kafka "backend" of a build without the `kafka` feature (ferry's static client,
/// which never starts a forwarder): every connection attempt fails, saying why.
#[cfg(not(feature = "kafka"))]
mod absent {
    use futures_util::future::{self, BoxFuture, FutureExt, LocalBoxFuture};

    use crate::error::ProduceError;
    use crate::producer::{Backend, Confirmation, LostSignal, Outgoing};

    /// Refuses every connection: this build links no Kafka client.
    pub(crate) struct NoKafka;

    fn absent() -> ProduceError {
        ProduceError::Unavailable(
            "this build of ferry has no Kafka producer (built without the `kafka` feature)".into(),
        )
    }

    impl Backend for NoKafka {
        type Connection = ();
        type Publisher = ();

        fn connect(
            &self,
            _lost: LostSignal<Self>,
        ) -> LocalBoxFuture<'static, Result<(), ProduceError>> {
            future::ready(Err(absent())).boxed_local()
        }

        fn publisher(&self, _connection: &(), _lost: LostSignal<Self>) {}

        fn publish(_publisher: &(), _message: &Outgoing<'_>) -> Confirmation {
            let failed: BoxFuture<'static, _> = future::ready(Err(absent())).boxed();
            failed
        }

        fn close(_connection: ()) {}
    }
}
