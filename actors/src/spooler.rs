//! The spool side of forwarding: which messages go to the spool, the per-target state
//! that keeps a target's messages in arrival order, and the replay of each target's
//! records once its broker takes messages again.
//!
//! A target is *spooling* from its first spooled record until its spool is empty again.
//! While it spools, every new message for it goes to the spool too, behind the others. One
//! replay task per spooling target reads its records in order and removes each only after
//! the broker confirmed it. It probes with one record at a time until the broker confirms
//! one, then publishes up to `replay_in_flight` at once through the target's producer.
//! After a failed round it waits the producer's backoff before it tries again, so a dead
//! broker is probed, not hammered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ferry_spool::{Destination, Kind, NewRecord, Record, Spool, SpoolError, Summary};
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::Notify;

use crate::error::ProduceError;
use crate::forwarder::ToSpool;
use crate::metadata::Metadata;
use crate::policy::RetryPolicy;
use crate::producer::Publish;
use crate::registry::Registry;
use crate::target::{AmqpTarget, KafkaTarget, Target};

/// Bootstrap addresses accepted for a broker set read back from the spool (it was
/// validated against the configured bound when it was spooled).
const MAX_SPOOLED_BROKERS: usize = 64;
/// How long a replay task with nothing to read waits for an append it was told of.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How often a replay task looks for expired records (the query scans the spool).
const EXPIRY_EVERY: Duration = Duration::from_secs(1);

/// How the spool is used.
#[derive(Debug, Clone, Copy)]
pub struct SpoolSettings {
    /// Records of one target published at once while replaying.
    pub replay_in_flight: usize,
    /// Records older than this are removed, counted and logged instead of delivered.
    pub max_age: Option<Duration>,
}

/// The spool counters of one target.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Records in the spool now.
    pub spooled_now: AtomicU64,
    /// Their bytes.
    pub bytes_now: AtomicU64,
    /// When the oldest was spooled (ms since the Unix epoch; 0 when none).
    pub oldest_ms: AtomicI64,
    /// Records spooled since start.
    pub spooled_total: AtomicU64,
    /// Records replayed (confirmed by the broker) since start.
    pub replayed_total: AtomicU64,
    /// Records removed by `max_age_s` since start.
    pub expired_total: AtomicU64,
    /// Records moved to quarantine (checksum failed) or rejected by the broker on replay.
    pub lost_total: AtomicU64,
}

/// A snapshot of one target's spool counters.
#[derive(Debug, Clone)]
pub struct SpoolSnapshot {
    /// The target (password redacted).
    pub target: String,
    /// `kafka` or `rabbitmq`.
    pub kind: &'static str,
    /// Records in the spool now.
    pub spooled_now: u64,
    /// Their bytes.
    pub bytes_now: u64,
    /// Seconds since the oldest was spooled (0 when none).
    pub oldest_age_s: f64,
    /// Records spooled since start.
    pub spooled_total: u64,
    /// Records replayed since start.
    pub replayed_total: u64,
    /// Records expired since start.
    pub expired_total: u64,
    /// Records lost to corruption or a broker's rejection on replay, since start.
    pub lost_total: u64,
}

/// The state of one target that has (or had) spooled records.
#[derive(Debug, Default)]
struct TargetSpool {
    /// Records appended (or being appended) and not yet removed: while above zero, new
    /// messages go to the spool.
    pending: u64,
    /// Whether a replay task runs for it.
    replaying: bool,
    /// Wakes the replay task when a record was appended.
    appended: Arc<Notify>,
    /// Counters.
    stats: Arc<SpoolStats>,
}

/// The spool, the per-target spooling state and the replay tasks.
pub struct Spooler {
    /// The durable store.
    spool: Spool,
    /// Where replayed records are published.
    registry: Arc<Registry>,
    /// The time bound of one replay attempt (the policy's first attempt).
    policy: RetryPolicy,
    /// Replay bounds and expiry.
    settings: SpoolSettings,
    /// Targets that have spooled records (or had, for their counters).
    targets: Mutex<HashMap<Target, TargetSpool>>,
    /// Set when the daemon stops: replay tasks end (their records stay spooled).
    closing: AtomicBool,
    /// What opening the spool repaired: a torn log tail (0 or 1), database files moved
    /// aside.
    recovered: (AtomicU64, AtomicU64),
}

impl Spooler {
    /// A spooler over an opened `spool`.
    pub fn new(
        spool: Spool,
        registry: Arc<Registry>,
        policy: RetryPolicy,
        settings: SpoolSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            spool,
            registry,
            policy,
            settings,
            targets: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            recovered: (AtomicU64::new(0), AtomicU64::new(0)),
        })
    }

    /// Records what opening the spool repaired, for the stats.
    pub fn note_recovery(&self, recovery: &ferry_spool::Recovery) {
        self.recovered
            .0
            .store(u64::from(recovery.torn_tail), Ordering::Relaxed);
        self.recovered
            .1
            .store(recovery.moved_aside.len() as u64, Ordering::Relaxed);
    }

    /// What opening the spool repaired: torn log tails truncated (0 or 1), and database
    /// files moved aside.
    pub fn recovered(&self) -> (u64, u64) {
        (
            self.recovered.0.load(Ordering::Relaxed),
            self.recovered.1.load(Ordering::Relaxed),
        )
    }

    /// Starts replaying what the spool held at start (`summary` from opening it). Must run
    /// inside a Tokio runtime. A destination that no longer validates is logged and left.
    pub fn resume(self: &Arc<Self>, summary: &[Summary]) {
        for entry in summary {
            let Some(target) = target_of(&entry.destination) else {
                log::error!(
                    "Spooled records for a target that no longer validates are left in the spool records={} kind={}",
                    entry.count,
                    entry.destination.kind.as_str()
                );
                continue;
            };
            log::info!(
                "Spool holds records from before start target={target} records={} bytes={}",
                entry.count,
                entry.bytes
            );
            let mut targets = self.lock();
            let state = targets.entry(target.clone()).or_default();
            state.pending += entry.count;
            state.replaying = true;
            state
                .stats
                .spooled_now
                .store(entry.count, Ordering::Relaxed);
            state.stats.bytes_now.store(entry.bytes, Ordering::Relaxed);
            state
                .stats
                .oldest_ms
                .store(entry.oldest_ms, Ordering::Relaxed);
            let appended = Arc::clone(&state.appended);
            drop(targets);
            self.spawn_replay(target, appended);
        }
    }

    /// Whether `target` has records in the spool (its new messages must go there too).
    pub fn is_spooling(&self, target: &Target) -> bool {
        self.lock().get(target).is_some_and(|s| s.pending > 0)
    }

    /// Writes a message to the spool; returns once it is durable. Starts the target's
    /// replay task if none runs.
    pub(crate) async fn spool(
        self: &Arc<Self>,
        target: &Target,
        message: &ToSpool<'_>,
    ) -> Result<(), SpoolError> {
        let meta = match message.metadata.map(serde_json::to_vec).transpose() {
            Ok(meta) => meta.map(Bytes::from),
            Err(error) => return Err(SpoolError::Io(format!("cannot encode metadata: {error}"))),
        };
        let (start, appended, stats) = {
            let mut targets = self.lock();
            let state = targets.entry(target.clone()).or_default();
            state.pending += 1;
            let start = !state.replaying;
            state.replaying = true;
            (start, Arc::clone(&state.appended), Arc::clone(&state.stats))
        };
        if start {
            self.spawn_replay(target.clone(), Arc::clone(&appended));
        }
        let record = NewRecord {
            id: message.id.to_string(),
            destination: destination_of(target),
            route: message.route.to_owned(),
            payload: message.payload.clone(),
            meta,
        };
        let size = record.bytes();
        match self.spool.append(record).await {
            Ok(_) => {
                stats.spooled_now.fetch_add(1, Ordering::Relaxed);
                stats.bytes_now.fetch_add(size, Ordering::Relaxed);
                stats.spooled_total.fetch_add(1, Ordering::Relaxed);
                let _ = stats.oldest_ms.compare_exchange(
                    0,
                    ferry_spool::spool::now_ms(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                appended.notify_one();
                Ok(())
            }
            Err(error) => {
                if let Some(state) = self.lock().get_mut(target) {
                    state.pending = state.pending.saturating_sub(1);
                }
                appended.notify_one();
                Err(error)
            }
        }
    }

    /// Stops the replay tasks after their current round; records stay spooled.
    pub fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::Release);
        for state in self.lock().values() {
            state.appended.notify_one();
        }
    }

    /// Bytes the spool holds.
    pub fn bytes(&self) -> u64 {
        self.spool.bytes()
    }

    /// The spool counters of every target that spooled since start.
    pub fn snapshot(&self) -> Vec<SpoolSnapshot> {
        let now = ferry_spool::spool::now_ms();
        let mut snapshot: Vec<_> = self
            .lock()
            .iter()
            .map(|(target, state)| {
                let s = &state.stats;
                let oldest = s.oldest_ms.load(Ordering::Relaxed);
                let spooled_now = s.spooled_now.load(Ordering::Relaxed);
                SpoolSnapshot {
                    target: target.endpoint(),
                    kind: target.kind(),
                    spooled_now,
                    bytes_now: s.bytes_now.load(Ordering::Relaxed),
                    oldest_age_s: if spooled_now == 0 || oldest == 0 {
                        0.0
                    } else {
                        (now - oldest).max(0) as f64 / 1e3
                    },
                    spooled_total: s.spooled_total.load(Ordering::Relaxed),
                    replayed_total: s.replayed_total.load(Ordering::Relaxed),
                    expired_total: s.expired_total.load(Ordering::Relaxed),
                    lost_total: s.lost_total.load(Ordering::Relaxed),
                }
            })
            .collect();
        snapshot.sort_by(|a, b| (a.kind, &a.target).cmp(&(b.kind, &b.target)));
        snapshot
    }

    /// Starts the replay task of `target`.
    fn spawn_replay(self: &Arc<Self>, target: Target, appended: Arc<Notify>) {
        let spooler = Arc::clone(self);
        tokio::spawn(async move { spooler.replay(target, appended).await });
    }

    /// Replays `target`'s records until its spool is empty (or the daemon stops).
    async fn replay(self: Arc<Self>, target: Target, appended: Arc<Notify>) {
        let destination = destination_of(&target);
        let stats = self.stats_of(&target);
        let mut failures: u32 = 0;
        // Until the broker has confirmed a record, one record at a time: a full window sent
        // to a connection being re-established would have its first records refused and
        // later ones accepted, out of order.
        let mut proven = false;
        let mut expired_at: Option<tokio::time::Instant> = None;
        log::info!("Spool replay started target={target}");
        loop {
            if self.closing.load(Ordering::Acquire) {
                if let Some(state) = self.lock().get_mut(&target) {
                    state.replaying = false;
                }
                return;
            }
            if let Some(max_age) = self.settings.max_age
                && expired_at.is_none_or(|at| at.elapsed() >= EXPIRY_EVERY)
            {
                expired_at = Some(tokio::time::Instant::now());
                self.expire(max_age).await;
            }
            let limit = if proven {
                self.settings.replay_in_flight
            } else {
                1
            };
            let (records, corrupt) = match self.spool.read(&destination, 0, limit).await {
                Ok(read) => read,
                Err(error) => {
                    log::error!("Spool read failed target={target} error={error}");
                    failures += 1;
                    tokio::time::sleep(self.registry.restart_delay(failures)).await;
                    continue;
                }
            };
            if !corrupt.is_empty() {
                log::error!(
                    "Spooled records failed their checksum and were moved to quarantine (lost) target={target} ids={}",
                    corrupt.join(",")
                );
                stats
                    .lost_total
                    .fetch_add(corrupt.len() as u64, Ordering::Relaxed);
                self.settle(&target, &stats, corrupt.len() as u64, 0);
            }
            if records.is_empty() {
                let empty = {
                    let mut targets = self.lock();
                    let state = targets.entry(target.clone()).or_default();
                    if state.pending == 0 {
                        state.replaying = false;
                    }
                    state.pending == 0
                };
                if empty {
                    stats.oldest_ms.store(0, Ordering::Relaxed);
                    log::info!("Spool replay done: the target's spool is empty target={target}");
                    return;
                }
                // An append was counted and is not committed yet.
                let _ = tokio::time::timeout(IDLE_WAIT, appended.notified()).await;
                continue;
            }
            stats
                .oldest_ms
                .store(records[0].created_ms, Ordering::Relaxed);
            let (confirmed, rejected, failure) = self.publish_round(&target, &records).await;
            let done: Vec<Record> = confirmed.iter().chain(&rejected).cloned().collect();
            if !done.is_empty() {
                if let Err(error) = self.spool.remove(&done).await {
                    log::error!("Spool remove failed target={target} error={error}");
                }
                let bytes: u64 = done.iter().map(Record::bytes).sum();
                stats
                    .replayed_total
                    .fetch_add(confirmed.len() as u64, Ordering::Relaxed);
                self.settle(&target, &stats, done.len() as u64, bytes);
            }
            match failure {
                None => {
                    failures = 0;
                    proven = true;
                }
                Some(error) => {
                    failures += 1;
                    proven = false;
                    let delay = self.registry.restart_delay(failures);
                    log::debug!(
                        "Spool replay waiting target={target} failures={failures} delay_ms={} error={error}",
                        delay.as_millis()
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Publishes `records` in order, at most all at once, each under the policy's first
    /// attempt budget; returns those confirmed, those the broker rejected (logged as lost:
    /// they can never be delivered), and the failure that ended the round, if any.
    async fn publish_round(
        &self,
        target: &Target,
        records: &[Record],
    ) -> (Vec<Record>, Vec<Record>, Option<ProduceError>) {
        let producer = match self.registry.producer(target) {
            Ok(producer) => producer,
            Err(error) => return (Vec::new(), Vec::new(), Some(error)),
        };
        let budget = self.policy.attempt_timeout(1);
        let mut sends: FuturesOrdered<_> = records
            .iter()
            .map(|record| {
                let publish = producer.publish_owned(Publish {
                    route: record.route.clone(),
                    payload: record.payload.clone(),
                    id: Arc::from(record.id.as_str()),
                    metadata: decode_metadata(record),
                });
                async move {
                    tokio::time::timeout(budget, publish)
                        .await
                        .unwrap_or(Err(ProduceError::Timeout(budget)))
                }
            })
            .collect();
        let mut confirmed = Vec::new();
        let mut rejected = Vec::new();
        let mut failure = None;
        let mut index = 0;
        while let Some(outcome) = sends.next().await {
            let record = &records[index];
            index += 1;
            match outcome {
                Ok(_) => confirmed.push(record.clone()),
                Err(error)
                    if error.is_retriable() || matches!(error, ProduceError::Overloaded(_)) =>
                {
                    failure.get_or_insert(error);
                }
                Err(error) => {
                    log::error!(
                        "Spooled message rejected by its broker on replay; removed (lost) target={target} id={} error={error}",
                        record.id
                    );
                    self.stats_of(target)
                        .lost_total
                        .fetch_add(1, Ordering::Relaxed);
                    rejected.push(record.clone());
                }
            }
        }
        (confirmed, rejected, failure)
    }

    /// Removes records older than `max_age` from the whole spool; counts and logs them.
    async fn expire(&self, max_age: Duration) {
        let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let expired = match self.spool.expire(max_age_ms).await {
            Ok(expired) => expired,
            Err(error) => {
                log::error!("Spool expiry failed error={error}");
                return;
            }
        };
        let mut by_target: HashMap<Target, (Vec<String>, u64)> = HashMap::new();
        for record in expired {
            if let Some(target) = target_of(&record.destination) {
                let (ids, bytes) = by_target.entry(target).or_default();
                ids.push(record.id);
                *bytes += record.bytes;
            }
        }
        for (target, (ids, bytes)) in by_target {
            log::warn!(
                "Spooled messages expired (max_age_s) and were removed undelivered target={target} count={} ids={}",
                ids.len(),
                ids.join(",")
            );
            let stats = self.stats_of(&target);
            stats
                .expired_total
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            self.settle(&target, &stats, ids.len() as u64, bytes);
        }
    }

    /// Records that `count` records of `target` (of `bytes` bytes) left the spool.
    fn settle(&self, target: &Target, stats: &SpoolStats, count: u64, bytes: u64) {
        if let Some(state) = self.lock().get_mut(target) {
            state.pending = state.pending.saturating_sub(count);
        }
        let _ = stats
            .spooled_now
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(count))
            });
        let _ = stats
            .bytes_now
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(bytes))
            });
    }

    /// The counters of `target`.
    fn stats_of(&self, target: &Target) -> Arc<SpoolStats> {
        Arc::clone(&self.lock().entry(target.clone()).or_default().stats)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Target, TargetSpool>> {
        self.targets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How a target is stored in the spool.
pub fn destination_of(target: &Target) -> Destination {
    match target {
        Target::Kafka(t) => Destination {
            kind: Kind::Kafka,
            address: t.bootstrap_servers().to_owned(),
            exchange: String::new(),
        },
        Target::Amqp(t) => Destination {
            kind: Kind::Amqp,
            address: t.url().to_owned(),
            exchange: t.exchange().to_owned(),
        },
    }
}

/// The target of a stored destination, validated again.
pub fn target_of(destination: &Destination) -> Option<Target> {
    match destination.kind {
        Kind::Kafka => KafkaTarget::try_new(destination.address.split(','), MAX_SPOOLED_BROKERS)
            .ok()
            .map(Target::Kafka),
        Kind::Amqp => AmqpTarget::try_new(&destination.address, &destination.exchange)
            .ok()
            .map(Target::Amqp),
    }
}

/// The metadata stored with `record`. It was encoded by this daemon, so a record whose
/// metadata does not decode is replayed without it (and logged): its bytes still arrive.
fn decode_metadata(record: &Record) -> Option<Arc<Metadata>> {
    let meta = record.meta.as_ref()?;
    match serde_json::from_slice(meta) {
        Ok(metadata) => Some(Arc::new(metadata)),
        Err(error) => {
            log::error!(
                "Spooled metadata unreadable, replaying the message without it id={} error={error}",
                record.id
            );
            None
        }
    }
}
