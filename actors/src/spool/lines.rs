//! The spooling state of each line the spool holds records of: how many are pending
//! (while any are, the line's new messages go to the spool too, behind them), whether its
//! replay task runs, and its counters. The spooler files messages under a line; the line's
//! replay task settles them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ferry_spool::{Moved, Record};
use tokio::sync::Notify;

use crate::line::Line;

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
struct LineState {
    /// Records appended (or being appended) and not yet removed: while above zero, new
    /// messages go to the spool.
    pending: u64,
    /// Whether a replay task runs for it.
    replaying: bool,
    /// Wakes the replay task when a record was appended.
    appended: Arc<Notify>,
    /// Its counters, shared with its replay task and reported in `/stats`.
    stats: Arc<SpoolStats>,
}

/// The lines that have spooled records, and whether the daemon stops.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    /// The state of each line with records.
    lines: Mutex<HashMap<Line, LineState>>,
    /// Set when the daemon stops: replay tasks end (their records stay spooled).
    closing: AtomicBool,
    /// Counts across lines, which outlive each line's state.
    totals: SpoolTotals,
}

/// What filing records under a line tells the caller.
pub(crate) struct Filed {
    /// No replay task runs for the line: the caller starts one.
    pub(crate) start_replay: bool,
    /// Wakes the line's replay task.
    pub(crate) appended: Arc<Notify>,
    /// The line's counters.
    pub(crate) stats: Arc<SpoolStats>,
}

impl Lines {
    /// Counts `count` records as pending under `line` (appended, or being appended) and
    /// marks its replay as running.
    pub(crate) fn file(&self, line: &Line, count: u64) -> Filed {
        let mut lines = self.lock();
        let state = lines.entry(line.clone()).or_default();
        state.pending += count;
        let start_replay = !state.replaying;
        state.replaying = true;
        Filed {
            start_replay,
            appended: Arc::clone(&state.appended),
            stats: Arc::clone(&state.stats),
        }
    }

    /// Whether any line has records in the spool (cheap: the common answer is no).
    pub(crate) fn any(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Whether `line` has records in the spool (its new messages must go there too).
    pub(crate) fn is_spooling(&self, line: &Line) -> bool {
        self.lock().get(line).is_some_and(|s| s.pending > 0)
    }

    /// Stops the replay tasks after their current round; records stay spooled.
    pub(crate) fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::Release);
        for state in self.lock().values() {
            state.appended.notify_one();
        }
    }

    /// Whether the daemon is stopping.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Counts across lines since start.
    pub(crate) fn totals(&self) -> &SpoolTotals {
        &self.totals
    }

    /// The spool counters of every target that spooled since start.
    pub(crate) fn snapshot(&self) -> Vec<SpoolSnapshot> {
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
            "target":% = target,
            count = ids.len() as u64,
            reason:% = reason,
            ids:% = ids.join(",");
            "Spooled messages moved to the dead letters (ferry spool requeue puts them back)"
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
            "target":% = target,
            ids:% = ids.join(",");
            "Spooled records failed their checksum and were moved to quarantine"
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
    pub(crate) fn settle(&self, target: &Line, stats: &SpoolStats, count: u64, bytes: u64) {
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

    /// Locks the table. Every update is a single change of one line's state, so a panic
    /// while it was held leaves it consistent, and a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, HashMap<Line, LineState>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
