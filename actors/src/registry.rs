//! The bounded cache of producer actors: one supervised actor per target, started on
//! first use on one of the daemon's arbiters, stopped when idle or evicted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Supervisor, WeakAddr};
use actix_rt::ArbiterHandle;

use crate::amqp::AmqpBackend;
use crate::amqp_server::AmqpServer;
use crate::error::ProduceError;
use crate::kafka::KafkaBackend;
use crate::producer::{Backend, Delivery, Direct, Outgoing, ProducerActor, Publish, mailbox_error};
use crate::settings::{AmqpSettings, ProducerSettings, RegistrySettings};
use crate::stats::{StatsSnapshot, TargetStats};
use crate::target::Target;

/// The address of a producer actor of either kind.
#[derive(Clone)]
enum ProducerAddr {
    /// A Kafka broker set's producer.
    Kafka(Handle<KafkaBackend>),
    /// A RabbitMQ server+exchange's producer.
    Amqp(Handle<AmqpBackend>),
}

/// A producer actor and the publisher it lends while ready.
struct Handle<B: Backend> {
    /// The actor (holding it keeps the actor running).
    addr: Addr<ProducerActor<B>>,
    /// Its ready connection's publisher.
    direct: Arc<Direct<B>>,
}

impl<B: Backend> Clone for Handle<B> {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            direct: Arc::clone(&self.direct),
        }
    }
}

impl<B: Backend> Handle<B> {
    /// Starts a supervised producer actor over `backend` on `arbiter`, lending its
    /// publisher to the handle.
    fn start(
        arbiter: &ArbiterHandle,
        backend: B,
        label: String,
        settings: Arc<ProducerSettings>,
        stats: Arc<TargetStats>,
    ) -> Self
    where
        B: Send,
    {
        let direct = Arc::default();
        let lent = Arc::clone(&direct);
        let addr = Supervisor::start_in_arbiter(arbiter, move |_| {
            ProducerActor::new(backend, label, settings, stats, lent)
        });
        Self { addr, direct }
    }

    /// Publishes through the ready connection, or through the actor's mailbox when it is
    /// not ready (the actor reconnects, or answers why it cannot).
    async fn publish(&self, message: Outgoing<'_>) -> Result<Delivery, ProduceError> {
        match self.direct.try_publish(&message) {
            Some(confirmation) => confirmation.await,
            None => self
                .addr
                .send(message.to_publish())
                .await
                .unwrap_or_else(|e| Err(mailbox_error(e))),
        }
    }
}

/// A handle on one target's producer actor and its counters.
#[derive(Clone)]
pub struct Producer {
    /// The actor.
    addr: ProducerAddr,
    /// Its counters.
    stats: Arc<TargetStats>,
}

impl Producer {
    /// The producer's counters.
    pub fn stats(&self) -> &Arc<TargetStats> {
        &self.stats
    }

    /// Publishes one message and waits for the broker's confirmation (unbounded in
    /// time: the caller applies the policy's timeout).
    pub async fn publish(&self, message: Outgoing<'_>) -> Result<Delivery, ProduceError> {
        match &self.addr {
            ProducerAddr::Kafka(actor) => actor.publish(message).await,
            ProducerAddr::Amqp(actor) => actor.publish(message).await,
        }
    }

    /// [`Self::publish`] of a message the future owns.
    pub async fn publish_owned(&self, message: Publish) -> Result<Delivery, ProduceError> {
        let outgoing = Outgoing {
            route: &message.route,
            payload: &message.payload,
            id: &message.id,
            metadata: message.metadata.as_ref(),
        };
        self.publish(outgoing).await
    }

    /// Whether the actor still runs.
    fn is_alive(&self) -> bool {
        match &self.addr {
            ProducerAddr::Kafka(actor) => actor.addr.connected(),
            ProducerAddr::Amqp(actor) => actor.addr.connected(),
        }
    }
}

/// A cached producer and when it was last asked for.
struct Entry {
    /// The producer.
    producer: Producer,
    /// When a message for this target last arrived.
    last_used: Instant,
}

/// One producer actor per target, bounded in number and stopped when idle.
pub struct Registry {
    /// The cached producers.
    entries: Mutex<HashMap<Target, Entry>>,
    /// Arbiters new actors are spread over, round robin.
    arbiters: Vec<ArbiterHandle>,
    /// The arbiter the next actor starts on.
    next_arbiter: AtomicUsize,
    /// Settings handed to every producer.
    producer_settings: Arc<ProducerSettings>,
    /// Bounds of this registry.
    limits: RegistrySettings,
    /// Producers stopped to make room for new targets.
    evictions: AtomicU64,
    /// The connection actor of each RabbitMQ server (by URL), weakly held: it stops when
    /// the last producer on it stops.
    amqp_servers: Mutex<HashMap<String, WeakAddr<AmqpServer>>>,
    /// The RabbitMQ settings, shared by every AMQP producer and connection actor (they
    /// hold the TLS files: one copy, not one per exchange).
    amqp_settings: Arc<AmqpSettings>,
}

impl Registry {
    /// A registry that starts its actors on `arbiters`.
    ///
    /// # Panics
    /// If `arbiters` is empty (a start-up error, never on a request path).
    pub fn new(
        arbiters: Vec<ArbiterHandle>,
        producer_settings: ProducerSettings,
        limits: RegistrySettings,
    ) -> Arc<Self> {
        assert!(
            !arbiters.is_empty(),
            "a registry needs at least one arbiter"
        );
        let amqp_settings = Arc::new(producer_settings.amqp.clone());
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            arbiters,
            next_arbiter: AtomicUsize::new(0),
            producer_settings: Arc::new(producer_settings),
            limits,
            evictions: AtomicU64::new(0),
            amqp_servers: Mutex::new(HashMap::new()),
            amqp_settings,
        })
    }

    /// The producer of `target`, started now if it has none. When the registry is full the
    /// least recently used idle producer is evicted; when none is idle, the target is
    /// refused as overloaded.
    pub fn producer(&self, target: &Target) -> Result<Producer, ProduceError> {
        let now = Instant::now();
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(target) {
            if entry.producer.is_alive() {
                entry.last_used = now;
                return Ok(entry.producer.clone());
            }
            entries.remove(target);
        }
        if let Target::Kafka(_) = target {
            let kafka = entries
                .keys()
                .filter(|t| matches!(t, Target::Kafka(_)))
                .count();
            if kafka >= self.limits.max_kafka_targets {
                self.evict_one(&mut entries, |t| matches!(t, Target::Kafka(_)))
                    .map_err(|()| {
                        ProduceError::Overloaded(format!(
                            "all {} Kafka producer slots are busy (max_kafka_targets)",
                            self.limits.max_kafka_targets
                        ))
                    })?;
            }
        }
        if entries.len() >= self.limits.max_targets {
            self.evict_one(&mut entries, |_| true).map_err(|()| {
                ProduceError::Overloaded(format!(
                    "all {} producer slots are busy (max_targets)",
                    self.limits.max_targets
                ))
            })?;
        }
        let producer = self.start(target);
        entries.insert(
            target.clone(),
            Entry {
                producer: producer.clone(),
                last_used: now,
            },
        );
        log::info!("Producer created target={target} targets={}", entries.len());
        Ok(producer)
    }

    /// The producers' wait before reconnecting after `failures` consecutive failures (the
    /// spool's replay probes a dead broker at the same pace).
    pub fn restart_delay(&self, failures: u32) -> std::time::Duration {
        self.producer_settings.restart_delay(failures)
    }

    /// Stops producers unused for longer than the idle timeout; returns how many.
    pub fn stop_idle(&self) -> usize {
        let idle_timeout = self.limits.idle_timeout;
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|target, entry| {
            let idle = entry.last_used.elapsed() >= idle_timeout && is_idle(entry);
            if idle {
                log::info!("Producer idle, stopping target={target}");
            }
            !idle
        });
        before - entries.len()
    }

    /// Stops every producer (at shutdown, once nothing is in flight): each closes its
    /// connection. Returns how many there were.
    pub fn stop_all(&self) -> usize {
        let mut entries = self.lock();
        let count = entries.len();
        entries.clear();
        count
    }

    /// Runs [`Self::stop_idle`] periodically on the first arbiter, for as long as the
    /// registry exists.
    pub fn spawn_idle_sweeper(self: &Arc<Self>) {
        let registry: Weak<Self> = Arc::downgrade(self);
        let period = (self.limits.idle_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(30));
        self.arbiters[0].spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                match registry.upgrade() {
                    Some(registry) => drop(registry.stop_idle()),
                    None => break,
                }
            }
        });
    }

    /// The counters of every cached producer.
    pub fn snapshot(&self) -> Vec<StatsSnapshot> {
        self.lock()
            .iter()
            .map(|(target, entry)| {
                entry
                    .producer
                    .stats
                    .snapshot(target.kind(), target.endpoint())
            })
            .collect()
    }

    /// How many producers are cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no producer is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound of messages in flight to one target.
    pub fn max_in_flight_per_target(&self) -> usize {
        self.producer_settings.max_in_flight_per_target
    }

    /// How many producers were evicted to make room for new targets.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Locks the cache. A panic while it was held cannot leave it inconsistent (every
    /// update is a single insert or remove), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, HashMap<Target, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes the least recently used producer among those `which` selects that has
    /// nothing in flight; fails when there is none.
    fn evict_one(
        &self,
        entries: &mut HashMap<Target, Entry>,
        which: impl Fn(&Target) -> bool,
    ) -> Result<(), ()> {
        let victim = entries
            .iter()
            .filter(|(target, entry)| which(target) && is_idle(entry))
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(target, _)| target.clone());
        let Some(victim) = victim else {
            return Err(());
        };
        entries.remove(&victim);
        self.evictions.fetch_add(1, Ordering::Relaxed);
        log::info!("Producer evicted to make room target={victim}");
        Ok(())
    }

    /// Starts a supervised producer actor for `target` on the next arbiter.
    fn start(&self, target: &Target) -> Producer {
        let index = self.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
        let arbiter = &self.arbiters[index];
        let stats = Arc::new(TargetStats::default());
        let settings = self.producer_settings.clone();
        let label = target.to_string();
        let actor_stats = stats.clone();
        let addr = match target.clone() {
            Target::Kafka(t) => {
                let backend = KafkaBackend::new(t, Arc::new(settings.kafka.clone()));
                ProducerAddr::Kafka(Handle::start(
                    arbiter,
                    backend,
                    label,
                    settings,
                    actor_stats,
                ))
            }
            Target::Amqp(t) => {
                let server = self.amqp_server(&t, arbiter);
                let backend = AmqpBackend::new(
                    t,
                    server,
                    Arc::clone(&self.amqp_settings),
                    Arc::clone(&stats),
                );
                ProducerAddr::Amqp(Handle::start(
                    arbiter,
                    backend,
                    label,
                    settings,
                    actor_stats,
                ))
            }
        };
        Producer { addr, stats }
    }

    /// The connection actor of `target`'s server, started on `arbiter` if it has none.
    fn amqp_server(
        &self,
        target: &crate::target::AmqpTarget,
        arbiter: &ArbiterHandle,
    ) -> Addr<AmqpServer> {
        let mut servers = self
            .amqp_servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(addr) = servers.get(target.url()).and_then(WeakAddr::upgrade)
            && addr.connected()
        {
            return addr;
        }
        servers.retain(|_, addr| addr.upgrade().is_some_and(|a| a.connected()));
        let settings = Arc::clone(&self.amqp_settings);
        let connect_timeout = self.producer_settings.connect_timeout;
        let retry_after = self.producer_settings.restart_backoff_initial;
        let server = AmqpServer::new(target, settings, connect_timeout, retry_after);
        let addr = AmqpServer::start_in_arbiter(arbiter, move |_| server);
        servers.insert(target.url().to_owned(), addr.downgrade());
        addr
    }
}

/// Whether a cached producer has nothing in flight.
fn is_idle(entry: &Entry) -> bool {
    entry.producer.stats.in_flight.get() == 0
}
