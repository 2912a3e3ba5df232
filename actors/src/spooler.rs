//! The spool side of forwarding: which messages go to the spool, the per-target state
//! that keeps a target's messages in arrival order, and the replay of each target's
//! records once its broker takes messages again.
//!
//! Spooled messages are filed by [`Line`]: the target a sender named, or the name of the
//! route it sent through. A line is *spooling* from its first spooled record until its
//! spool is empty again. While it spools, every new message for it goes to the spool too,
//! behind the others. One replay task per spooling line ([`crate::replay`]) reads its
//! records in order, publishes them to the target the line resolves to under the config
//! in force, and removes each only after the broker confirmed it. Once a line's spool is
//! empty its state is dropped (the daemon-wide totals keep its counts), so the state grows
//! with the lines that have records, not with every target ever spooled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ferry_spool::{Moved, NewRecord, Record, Spool, SpoolError, Summary};
use tokio::sync::Notify;

use crate::forwarder::ToSpool;
use crate::line::{Line, Resolve};
use crate::metadata::Metadata;
use crate::policy::RetryPolicy;
use crate::registry::Registry;
use crate::replay::Replay;
use crate::target::Target;
/// How the spool is used.
#[derive(Debug, Clone, Copy)]
pub struct SpoolSettings {
    /// Records of one target in flight at once while replaying.
    pub replay_in_flight: usize,
    /// Records of one target started per second while replaying (0 = unlimited).
    pub replay_max_rate: u32,
    /// Records older than this move to the dead letters instead of being delivered.
    pub max_age: Option<Duration>,
    /// A record the broker has refused for this long moves to the dead letters.
    pub dead_letter_after: Duration,
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
    /// Records moved to the dead letters by `max_age_s` since start.
    pub expired_total: AtomicU64,
    /// Records moved to the dead letters for any reason since start.
    pub dead_lettered_total: AtomicU64,
    /// Records moved to quarantine because their checksum failed.
    pub lost_total: AtomicU64,
    /// The last replay failure (empty once a record is confirmed after it).
    last_error: Mutex<String>,
    /// Why the config in force holds the line's records ("" when it does not).
    held: Mutex<String>,
}

impl SpoolStats {
    /// Records the last replay failure.
    pub(crate) fn set_error(&self, error: &str) {
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        error.clone_into(&mut last);
    }

    /// The last replay failure, if one is standing.
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records why the line is held ("" once the config allows it again).
    pub(crate) fn set_held(&self, reason: &str) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        reason.clone_into(&mut held);
    }

    /// Why the line is held, or "" when it is not.
    pub fn held(&self) -> String {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A snapshot of one line's spool counters.
#[derive(Debug, Clone)]
pub struct SpoolSnapshot {
    /// The target (password redacted) or the route's name.
    pub target: String,
    /// `kafka`, `rabbitmq` or `route`.
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
    /// Records moved to the dead letters by `max_age_s` since start.
    pub expired_total: u64,
    /// Records moved to the dead letters for any reason since start.
    pub dead_lettered_total: u64,
    /// Records whose checksum failed, moved to quarantine, since start.
    pub lost_total: u64,
    /// The last replay failure still standing ("" when none).
    pub last_error: String,
    /// Why the config in force holds its records ("" when it does not).
    pub held: String,
}

/// Spool counts over the daemon's life, across targets (a target's own counters go with
/// its state once its spool is empty).
#[derive(Debug, Default)]
pub struct SpoolTotals {
    /// Records replayed (confirmed by the broker).
    pub replayed: AtomicU64,
    /// Records moved to the dead letters.
    pub dead_lettered: AtomicU64,
    /// Records moved to quarantine (checksum failed).
    pub lost: AtomicU64,
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
    /// Where each line's records go under the config in force.
    resolver: Arc<dyn Resolve>,
    /// Lines that have spooled records.
    targets: Mutex<HashMap<Line, TargetSpool>>,
    /// Set when the daemon stops: replay tasks end (their records stay spooled).
    closing: AtomicBool,
    /// What opening the spool repaired: a torn log tail (0 or 1), database files moved
    /// aside.
    recovered: (AtomicU64, AtomicU64),
    /// Counts across targets.
    totals: SpoolTotals,
}

impl Spooler {
    /// A spooler over an opened `spool`, replaying each line to the target `resolver`
    /// gives it.
    pub fn new(
        spool: Spool,
        registry: Arc<Registry>,
        policy: RetryPolicy,
        settings: SpoolSettings,
        resolver: Arc<dyn Resolve>,
    ) -> Arc<Self> {
        Arc::new(Self {
            spool,
            registry,
            policy,
            settings,
            resolver,
            targets: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            recovered: (AtomicU64::new(0), AtomicU64::new(0)),
            totals: SpoolTotals::default(),
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
            let Some(line) = Line::of(&entry.destination) else {
                log::error!(
                    "Spooled records for a target that does not validate as stored are left in the spool records={} kind={}",
                    entry.count,
                    entry.destination.kind.as_str()
                );
                continue;
            };
            log::info!(
                "Spool holds records from before start target={line} records={} bytes={}",
                entry.count,
                entry.bytes
            );
            let mut targets = self.lock();
            let state = targets.entry(line.clone()).or_default();
            state.pending += entry.count;
            let start = !state.replaying;
            state.replaying = true;
            let stats = &state.stats;
            stats.spooled_now.fetch_add(entry.count, Ordering::Relaxed);
            stats.bytes_now.fetch_add(entry.bytes, Ordering::Relaxed);
            let _ = stats.oldest_ms.compare_exchange(
                0,
                entry.oldest_ms,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            let appended = Arc::clone(&state.appended);
            drop(targets);
            if start {
                self.spawn_replay(line, appended);
            }
        }
    }

    /// Whether any line has records in the spool (cheap: the common answer is no).
    pub fn has_lines(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Whether `line` has records in the spool (its new messages must go there too).
    pub fn is_spooling(&self, line: &Line) -> bool {
        self.lock().get(line).is_some_and(|s| s.pending > 0)
    }

    /// Writes a message to the spool under `line`; returns once it is durable. Starts the
    /// line's replay task if none runs.
    pub(crate) async fn spool(
        self: &Arc<Self>,
        target: &Line,
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
            destination: target.destination(),
            route: message.route.to_owned(),
            payload: message.payload.clone(),
            meta,
        };
        let size = record.bytes();
        // Counted before the append: the replay task may remove the record as soon as it
        // is committed, and its count must not go below zero first.
        stats.spooled_now.fetch_add(1, Ordering::Relaxed);
        stats.bytes_now.fetch_add(size, Ordering::Relaxed);
        match self.spool.append(record).await {
            Ok(_) => {
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
                self.settle(target, &stats, 1, size);
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

    /// Bytes the spool holds (records and dead letters).
    pub fn bytes(&self) -> u64 {
        self.spool.bytes()
    }

    /// The spool's integrity check: `ok`, `running` or `failed: …`.
    pub fn integrity(&self) -> String {
        self.spool.integrity()
    }

    /// Dead letters the spool holds.
    pub fn dead_letters(&self) -> u64 {
        self.spool.dead_letters()
    }

    /// The spool counters of every target that spooled since start.
    pub fn snapshot(&self) -> Vec<SpoolSnapshot> {
        let now = ferry_spool::spool::now_ms();
        let mut snapshot: Vec<_> = self
            .lock()
            .iter()
            // A line whose only append was refused (spool full) keeps its state until its
            // replay task sees it empty, a moment later; it never held a record.
            .filter(|(_, state)| {
                let s = &state.stats;
                s.spooled_now.load(Ordering::Relaxed) > 0
                    || s.spooled_total.load(Ordering::Relaxed) > 0
            })
            .map(|(line, state)| {
                let s = &state.stats;
                let oldest = s.oldest_ms.load(Ordering::Relaxed);
                let spooled_now = s.spooled_now.load(Ordering::Relaxed);
                SpoolSnapshot {
                    target: line.endpoint(),
                    kind: line.kind(),
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
                    dead_lettered_total: s.dead_lettered_total.load(Ordering::Relaxed),
                    lost_total: s.lost_total.load(Ordering::Relaxed),
                    last_error: s.last_error(),
                    held: s.held(),
                }
            })
            .collect();
        snapshot.sort_by(|a, b| (a.kind, &a.target).cmp(&(b.kind, &b.target)));
        snapshot
    }

    /// Starts the replay task of `line`.
    fn spawn_replay(self: &Arc<Self>, line: Line, appended: Arc<Notify>) {
        let replay = Replay::new(Arc::clone(self), line, appended);
        tokio::spawn(replay.run());
    }

    /// Counts across targets since start.
    pub fn totals(&self) -> &SpoolTotals {
        &self.totals
    }

    /// The durable store.
    pub(crate) fn store(&self) -> &Spool {
        &self.spool
    }

    /// Where `line`'s records go under the config in force, or why they are held.
    pub(crate) fn resolve(&self, line: &Line) -> Result<Target, String> {
        self.resolver.resolve(line)
    }

    /// The producer registry replay publishes through.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The retry policy (its first attempt bounds a replayed publish).
    pub(crate) fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Replay bounds, expiry and dead-letter rule.
    pub(crate) fn settings(&self) -> &SpoolSettings {
        &self.settings
    }

    /// Whether the daemon is stopping.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Records of `target` confirmed and removed.
    pub(crate) fn replayed(&self, target: &Line, stats: &SpoolStats, done: &[Record]) {
        let bytes = done.iter().map(Record::bytes).sum();
        let count = done.len() as u64;
        stats.replayed_total.fetch_add(count, Ordering::Relaxed);
        self.totals.replayed.fetch_add(count, Ordering::Relaxed);
        stats.set_error("");
        self.settle(target, stats, count, bytes);
    }

    /// Records of `target` moved to the dead letters because of `reason`: counted,
    /// logged with their ids.
    pub(crate) fn buried(&self, target: &Line, stats: &SpoolStats, moved: &[Moved], reason: &str) {
        if moved.is_empty() {
            return;
        }
        let ids: Vec<&str> = moved.iter().map(|m| m.id.as_str()).collect();
        log::warn!(
            "Spooled messages moved to the dead letters (ferry spool requeue puts them back) target={target} count={} reason={reason} ids={}",
            ids.len(),
            ids.join(",")
        );
        let count = moved.len() as u64;
        stats
            .dead_lettered_total
            .fetch_add(count, Ordering::Relaxed);
        self.totals
            .dead_lettered
            .fetch_add(count, Ordering::Relaxed);
        self.settle(target, stats, count, moved.iter().map(|m| m.bytes).sum());
    }

    /// Records of `target` whose checksum failed, moved to quarantine by a read.
    pub(crate) fn quarantined(&self, target: &Line, stats: &SpoolStats, ids: &[String]) {
        log::error!(
            "Spooled records failed their checksum and were moved to quarantine target={target} ids={}",
            ids.join(",")
        );
        let count = ids.len() as u64;
        stats.lost_total.fetch_add(count, Ordering::Relaxed);
        self.totals.lost.fetch_add(count, Ordering::Relaxed);
        self.settle(target, stats, count, 0);
    }

    /// Ends `target`'s replay if it has no records (its state is dropped); returns whether
    /// it ended.
    pub(crate) fn finish_if_empty(&self, target: &Line) -> bool {
        let mut targets = self.lock();
        match targets.get(target) {
            Some(state) if state.pending > 0 => false,
            _ => {
                targets.remove(target);
                true
            }
        }
    }

    /// `target`'s replay task stopped with the daemon; its records stay spooled.
    pub(crate) fn stopped(&self, target: &Line) {
        if let Some(state) = self.lock().get_mut(target) {
            state.replaying = false;
        }
    }

    /// Records that `count` records of `target` (of `bytes` bytes) left its queue.
    fn settle(&self, target: &Line, stats: &SpoolStats, count: u64, bytes: u64) {
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
    pub(crate) fn stats_of(&self, target: &Line) -> Arc<SpoolStats> {
        Arc::clone(&self.lock().entry(target.clone()).or_default().stats)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Line, TargetSpool>> {
        self.targets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The metadata stored with `record`. It was encoded by this daemon, so a record whose
/// metadata does not decode is replayed without it (and logged): its bytes still arrive.
pub(crate) fn decode_metadata(record: &Record) -> Option<Arc<Metadata>> {
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
