//! The bounded cache of producer actors: one supervised actor per target, started on
//! first use on one of the daemon's arbiters, stopped when idle or evicted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use actix_rt::ArbiterHandle;
use tokio::time::Instant;

use crate::backends::{Brokers, StartProducer};
use crate::error::ProduceError;
use crate::producer::Producer;
use crate::settings::{ProducerSettings, RegistrySettings};
use crate::stats::{StatsSnapshot, TargetStats};
use crate::target::Target;

/// A cached producer and when a message for its target last arrived (which decides
/// idleness and the least recently used).
#[allow(missing_docs)] // The type's doc says what each field is.
struct Entry {
    producer: Producer,
    last_used: Instant,
}

/// Targets remembered as reached after their producers stopped, at most.
const MAX_REMEMBERED: usize = 4096;

/// One producer actor per target, bounded in number and stopped when idle.
pub struct Registry {
    /// The cached producers, by target.
    entries: Mutex<HashMap<Target, Entry>>,
    /// Arbiters new actors are spread over, round robin.
    arbiters: Vec<ArbiterHandle>,
    /// The arbiter the next actor starts on.
    next_arbiter: AtomicUsize,
    /// The producers' settings: their backoff paces spool replay, their in-flight bound
    /// the forwarder.
    producer_settings: Arc<ProducerSettings>,
    /// Bounds of this registry.
    limits: RegistrySettings,
    /// Producers stopped to make room for new targets.
    evictions: AtomicU64,
    /// Targets whose stopped producers had delivered: a target used rarely is still known
    /// to have worked once its idle producer is gone (see [`Registry::has_reached`]).
    /// At most [`MAX_REMEMBERED`]; emptied when full.
    reached: Mutex<HashSet<Target>>,
    /// Starts the producer of a target not cached.
    starter: Box<dyn StartProducer>,
}

impl Registry {
    /// A registry that starts its actors on `arbiters`, over the brokers' backends.
    ///
    /// # Panics
    /// If `arbiters` is empty (a start-up error, never on a request path).
    pub fn new(
        arbiters: Vec<ArbiterHandle>,
        producer_settings: ProducerSettings,
        limits: RegistrySettings,
    ) -> Arc<Self> {
        let producer_settings = Arc::new(producer_settings);
        let brokers = Brokers::new(Arc::clone(&producer_settings));
        Self::with_starter(arbiters, producer_settings, limits, Box::new(brokers))
    }

    /// A registry whose producers `starter` starts (tests give it a scripted backend).
    ///
    /// # Panics
    /// If `arbiters` is empty.
    pub(crate) fn with_starter(
        arbiters: Vec<ArbiterHandle>,
        producer_settings: Arc<ProducerSettings>,
        limits: RegistrySettings,
        starter: Box<dyn StartProducer>,
    ) -> Arc<Self> {
        assert!(
            !arbiters.is_empty(),
            "a registry needs at least one arbiter"
        );
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            arbiters,
            next_arbiter: AtomicUsize::new(0),
            producer_settings,
            limits,
            evictions: AtomicU64::new(0),
            reached: Mutex::default(),
            starter,
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
            if let Some(dead) = entries.remove(target) {
                self.remember(target, &dead);
            }
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
        log::info!("target":% = target, targets = entries.len() as u64; "Producer created");
        Ok(producer)
    }

    /// The producers' wait before reconnecting after `failures` consecutive failures (the
    /// spool's replay probes a dead broker at the same pace).
    pub fn restart_delay(&self, failures: u32) -> std::time::Duration {
        self.producer_settings.restart_delay(failures)
    }

    /// Whether `target` has taken a message since the daemon started: its producer's
    /// `stats` say so, or an earlier producer of it did.
    pub fn has_reached(&self, target: &Target, stats: &TargetStats) -> bool {
        stats.delivered() > 0
            || self
                .reached
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(target)
    }

    /// Keeps in mind that `target` was reached, if the producer being stopped delivered.
    fn remember(&self, target: &Target, entry: &Entry) {
        if entry.producer.stats().delivered() == 0 {
            return;
        }
        let mut reached = self.reached.lock().unwrap_or_else(PoisonError::into_inner);
        if reached.len() >= MAX_REMEMBERED {
            reached.clear();
        }
        reached.insert(target.clone());
    }

    /// Stops producers unused for longer than the idle timeout; returns how many.
    pub fn stop_idle(&self) -> usize {
        let idle_timeout = self.limits.idle_timeout;
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|target, entry| {
            let idle = entry.last_used.elapsed() >= idle_timeout && is_idle(entry);
            if idle {
                log::info!("target":% = target; "Producer idle, stopping");
                self.remember(target, entry);
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
                    .stats()
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
        if let Some(evicted) = entries.remove(&victim) {
            self.remember(&victim, &evicted);
        }
        self.evictions.fetch_add(1, Ordering::Relaxed);
        log::info!("target":% = victim; "Producer evicted to make room");
        Ok(())
    }

    /// Starts a supervised producer actor for `target` on the next arbiter.
    fn start(&self, target: &Target) -> Producer {
        let index = self.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
        self.starter.start(target, &self.arbiters[index])
    }
}

/// Whether a cached producer has nothing in flight.
fn is_idle(entry: &Entry) -> bool {
    entry.producer.stats().in_flight.get() == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{self, Script, target};
    use crate::stats::ProducerState;

    /// A registry of fake producers within `limits`.
    fn registry(limits: RegistrySettings) -> Arc<Registry> {
        fake::registry(&Script::new(), limits)
    }

    /// The targets cached, sorted.
    fn cached(registry: &Registry) -> Vec<String> {
        let mut targets: Vec<_> = registry.snapshot().into_iter().map(|s| s.target).collect();
        targets.sort();
        targets
    }

    #[actix_rt::test]
    async fn stops_producers_idle_for_the_idle_timeout_unless_messages_are_in_flight() {
        tokio::time::pause();
        let registry = registry(RegistrySettings {
            idle_timeout: Duration::from_secs(10),
            ..RegistrySettings::default()
        });
        let idle = registry.producer(&target(1)).unwrap();
        let busy = registry.producer(&target(2)).unwrap();
        let _in_flight = busy.stats().in_flight.try_enter(10).unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(registry.stop_idle(), 0, "9 s is not idle yet");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(registry.stop_idle(), 1);
        assert_eq!(cached(&registry), ["k2:9092"]);

        let stats = Arc::clone(idle.stats());
        drop(idle);
        fake::until("the idle actor stopped", || {
            stats.state() == ProducerState::Stopped
        })
        .await;
        assert!(busy.is_alive());
    }

    #[actix_rt::test]
    async fn a_target_that_delivered_is_known_reached_after_its_producer_stopped() {
        tokio::time::pause();
        let registry = registry(RegistrySettings {
            idle_timeout: Duration::from_secs(10),
            ..RegistrySettings::default()
        });
        let used = registry.producer(&target(1)).unwrap();
        used.stats().note_delivered();
        let unused = registry.producer(&target(2)).unwrap();
        let (used, unused) = (Arc::clone(used.stats()), Arc::clone(unused.stats()));
        assert!(registry.has_reached(&target(1), &used));
        assert!(!registry.has_reached(&target(2), &unused));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(registry.stop_idle(), 2);
        // New producers start with new stats: the registry remembers.
        let again = registry.producer(&target(1)).unwrap();
        assert!(registry.has_reached(&target(1), again.stats()));
        let again = registry.producer(&target(2)).unwrap();
        assert!(!registry.has_reached(&target(2), again.stats()));
    }

    #[actix_rt::test]
    async fn evicts_the_least_recently_used_idle_producer_to_make_room() {
        tokio::time::pause();
        let registry = registry(RegistrySettings {
            max_targets: 3,
            ..RegistrySettings::default()
        });
        for n in [1, 2, 3, 1] {
            registry.producer(&target(n)).unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let busy = registry.producer(&target(2)).unwrap();
        let _in_flight = busy.stats().in_flight.try_enter(10).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        registry.producer(&target(4)).unwrap();
        assert_eq!(
            cached(&registry),
            ["k1:9092", "k2:9092", "k4:9092"],
            "3 was the least recently used of those with nothing in flight"
        );
        assert_eq!(registry.evictions(), 1);
    }

    #[actix_rt::test]
    async fn refuses_a_new_target_as_overloaded_when_no_producer_is_idle() {
        tokio::time::pause();
        let registry = registry(RegistrySettings {
            max_targets: 2,
            ..RegistrySettings::default()
        });
        let busy: Vec<_> = [1, 2]
            .map(|n| registry.producer(&target(n)).unwrap())
            .into_iter()
            .map(|p| p.stats().in_flight.try_enter(10).unwrap())
            .collect();
        let refused = registry.producer(&target(3)).err();
        assert!(
            matches!(&refused, Some(ProduceError::Overloaded(why)) if why.contains("max_targets")),
            "{refused:?}"
        );
        assert_eq!(registry.evictions(), 0);
        drop(busy);
        assert!(
            registry.producer(&target(3)).is_ok(),
            "room once one is idle"
        );
    }

    #[actix_rt::test]
    async fn kafka_producers_are_bounded_apart() {
        tokio::time::pause();
        let registry = registry(RegistrySettings {
            max_targets: 10,
            max_kafka_targets: 1,
            ..RegistrySettings::default()
        });
        let amqp = Target::Amqp(crate::target::AmqpTarget::try_new("amqp://mq/%2f", "x").unwrap());
        registry.producer(&amqp).unwrap();
        registry.producer(&target(1)).unwrap();
        registry.producer(&target(2)).unwrap();
        assert_eq!(cached(&registry).len(), 2, "the RabbitMQ producer stays");
        assert!(cached(&registry).contains(&"k2:9092".to_owned()));
        assert_eq!(registry.evictions(), 1);
    }
}
