//! The replay of one target's spooled records, once its broker takes messages again.
//!
//! The rule it keeps: **a record leaves the spool only when its broker confirmed it, or by
//! an explicit, configured, counted and logged decision** (`max_age_s`, or refused by the
//! broker for longer than `dead_letter_after_s`), and then it moves to the dead letters;
//! it is never deleted because of one answer. Any failure keeps the record and waits the
//! producer's backoff before trying again.
//!
//! ```text
//!             ┌──────────── probing: one record at a time, from the head ◄────────┐
//!  start ─────┤  confirmed                                          any failure  │
//!             └──► streaming: a window of up to replay_in_flight in flight ───────┘
//!                  (refilled as each is confirmed; removals in batches)
//! ```
//!
//! **Order.** On a failure the window is no longer refilled; the records already in it
//! finish (those confirmed are removed: they passed the failed one), and replay goes back
//! to the head one record at a time until the broker confirms one. So a record can be
//! overtaken only by records already in flight when it failed: at most
//! `replay_in_flight − 1`.
//!
//! **Where.** A line's records go where its [`Line`] resolves under the config in force,
//! asked again before each publish round: a route's records follow a reload (a rotated
//! password, a moved broker), and a line the config no longer allows is *held* — nothing
//! is published or deleted, expiry still applies, and replay asks again every
//! [`HELD_RECHECK`] until the config allows it.
//!
//! **Removals.** Confirmed records are removed in batches. A removal that fails (a disk
//! gone read-only) stops the replay: nothing more is published, the removal is retried
//! at the backoff pace, and the error shows in `/stats`; records are never re-sent in a
//! loop because they could not be deleted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_spool::{Burial, Destination, Expiry, Record, Spool};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::lines::{Lines, SpoolStats};
use crate::error::ProduceError;
use crate::line::{HELD_RECHECK, Line, Resolve};
use crate::metadata::Metadata;
use crate::producer::{Delivery, Publish};
use crate::registry::Registry;

/// How long a replay task with nothing to read waits for an append it was told of.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How often a replay task looks for its records past `max_age_s`.
const EXPIRY_EVERY: Duration = Duration::from_secs(1);
/// Confirmed records removed in one transaction, at most.
const REMOVE_BATCH: usize = 256;
/// How often a waiting replay asks whether a reload pointed its line elsewhere.
const MOVED_RECHECK: Duration = Duration::from_secs(1);
/// The longest wait between replay rounds of a target that has not taken a message since
/// the daemon started using it (a misspelt host, a wrong port; or an outage that began
/// before the daemon did). Its wait grows with how long it has been failing — a quarter
/// of that, at least the producer's backoff — up to this: a target that may never answer
/// costs a try every two minutes rather than every two seconds, and a broker that comes
/// back after an outage of t is tried again within t/4. A target that has taken a message
/// (or answered one, even with a refusal) is tried at the producer's pace.
pub const UNREACHED_BACKOFF_MAX: Duration = Duration::from_secs(120);

/// How spooled records are replayed, and when replay gives a record up to the dead letters.
#[derive(Debug, Clone, Copy)]
pub struct ReplaySettings {
    /// Records of one target in flight at once while replaying.
    pub replay_in_flight: usize,
    /// Records of one target started per second while replaying (0 = unlimited).
    pub replay_max_rate: u32,
    /// Records older than this move to the dead letters instead of being delivered.
    pub max_age: Option<Duration>,
    /// A record the broker has refused for this long moves to the dead letters.
    pub dead_letter_after: Duration,
}

/// What the replay tasks of one spool share.
pub(crate) struct Replayer {
    /// The durable store.
    pub(crate) store: Arc<Spool>,
    /// Each line's spooling state and counters.
    pub(crate) lines: Arc<Lines>,
    /// Where replayed records are published.
    pub(crate) registry: Arc<Registry>,
    /// Where each line's records go under the config in force.
    pub(crate) resolver: Arc<dyn Resolve>,
    /// The time bound of one replayed publish (the policy's first attempt).
    pub(crate) attempt_budget: Duration,
    /// Replay bounds, expiry and dead-letter rule.
    pub(crate) settings: ReplaySettings,
}

impl Replayer {
    /// Starts the replay task of `line`, woken by `appended`.
    pub(crate) fn spawn(self: &Arc<Self>, line: Line, appended: Arc<Notify>) {
        tokio::spawn(Replay::new(Arc::clone(self), line, appended).run());
    }
}

/// The wait after a failure at a target not yet reached, failing for `failing_for`: a
/// quarter of that, at least the producer's `usual` backoff, at most
/// [`UNREACHED_BACKOFF_MAX`].
fn unreached_delay(usual: Duration, failing_for: Duration) -> Duration {
    (failing_for / 4).clamp(usual, UNREACHED_BACKOFF_MAX.max(usual))
}

/// A record's publish and its outcome.
type Outcome = (Record, Result<Delivery, ProduceError>);

/// The state of one target's replay task.
pub(crate) struct Replay {
    /// The spool, the line states and the settings.
    replayer: Arc<Replayer>,
    /// The line replayed (a target, or a route resolved again each round).
    target: Line,
    /// How the spool stores the line.
    destination: Destination,
    /// The target's counters.
    stats: Arc<SpoolStats>,
    /// Wakes the task when a record was appended.
    appended: Arc<Notify>,
    /// Publishes in flight, answered in spool order.
    window: FuturesOrdered<BoxFuture<'static, Outcome>>,
    /// Records read and not yet published (read in batches, published one per free place).
    ahead: VecDeque<Record>,
    /// The highest seq read: every record of the target at or before it is read ahead,
    /// in the window, or confirmed and waiting for removal.
    cursor: i64,
    /// Confirmed, not yet removed.
    confirmed: Vec<Record>,
    /// Whether the broker confirmed the last record it answered (the window is open).
    streaming: bool,
    /// Consecutive failures, for the backoff.
    failures: u32,
    /// Whether the target has taken or answered a message (replayed or live) since its
    /// producer started: until it has, failures back off to [`UNREACHED_BACKOFF_MAX`].
    reached: bool,
    /// Since when replay has failed without a confirmation in between.
    failing_since: Option<Instant>,
    /// Where the line's records went last round: a route a reload points elsewhere starts
    /// its backoff and its "reached" afresh.
    resolved: Option<crate::target::Target>,
    /// The record that failed last, and how it has been failing.
    head: Head,
    /// The token bucket of `replay_max_rate`.
    pace: Pace,
    /// When expiry last ran.
    expired_at: Option<Instant>,
}

impl Replay {
    /// A replay of `target`'s records.
    fn new(replayer: Arc<Replayer>, target: Line, appended: Arc<Notify>) -> Self {
        let stats = replayer.lines.stats_of(&target);
        Self {
            destination: target.destination(),
            replayer,
            target,
            stats,
            appended,
            window: FuturesOrdered::new(),
            ahead: VecDeque::new(),
            cursor: 0,
            confirmed: Vec::new(),
            streaming: false,
            failures: 0,
            reached: false,
            failing_since: None,
            resolved: None,
            head: Head::default(),
            pace: Pace {
                tokens: 0.0,
                at: Instant::now(),
            },
            expired_at: None,
        }
    }

    /// Replays until the target's spool is empty, or the daemon stops (records stay).
    async fn run(mut self) {
        log::info!("target":% = self.target; "Spool replay started");
        loop {
            if self.replayer.lines.is_closing() {
                self.finish().await;
                return;
            }
            self.expire_if_due().await;
            let batch_full = self.confirmed.len() >= REMOVE_BATCH;
            let settled = self.window.is_empty() && !self.confirmed.is_empty();
            if (batch_full || settled) && !self.flush().await {
                continue;
            }
            if let Err(error) = self.fill().await {
                log::error!("target":% = self.target, error:% = error; "Spool read failed");
                self.back_off(&error).await;
                continue;
            }
            let Some((record, outcome)) = self.window.next().await else {
                if self.idle().await {
                    return;
                }
                continue;
            };
            match outcome {
                Ok(_) => self.on_confirmed(record),
                Err(error) => self.on_failure(record, error).await,
            }
        }
    }

    /// Tops the window up: to `replay_in_flight` while streaming, else to one.
    async fn fill(&mut self) -> Result<(), String> {
        let want = if self.streaming {
            self.replayer.settings.replay_in_flight
        } else {
            1
        };
        let rate = self.replayer.settings.replay_max_rate;
        let mut room = self.pace.take(want.saturating_sub(self.window.len()), rate);
        if room == 0 && self.window.is_empty() && rate > 0 {
            tokio::time::sleep(self.pace.wait(rate)).await;
            room = self.pace.take(want, rate);
        }
        if room == 0 {
            return Ok(());
        }
        let Some(target) = self.resolve().await else {
            self.pace.give_back(room);
            return Ok(());
        };
        if self.ahead.len() < room {
            self.read_ahead(want.max(room)).await?;
        }
        let count = room.min(self.ahead.len());
        self.pace.give_back(room - count);
        if count == 0 {
            return Ok(());
        }
        let producer = match self.replayer.registry.producer(&target) {
            Ok(producer) => producer,
            Err(error) => return Err(error.to_string()),
        };
        if self.resolved.as_ref() != Some(&target) {
            // A new place (or the first): its own backoff, its own history.
            self.failures = 0;
            self.failing_since = None;
            self.reached = false;
            self.resolved = Some(target.clone());
        }
        self.reached |= self
            .replayer
            .registry
            .has_reached(&target, producer.stats());
        if self.window.is_empty() && self.confirmed.is_empty() {
            let oldest = self.ahead.front().map_or(0, |r| r.created_ms);
            self.stats.oldest_ms.store(oldest, Ordering::Relaxed);
        }
        let records: Vec<Record> = self.ahead.drain(..count).collect();
        let budget = self.replayer.attempt_budget;
        for record in records {
            let message = Publish {
                route: record.route.clone(),
                payload: record.payload.clone(),
                id: Arc::from(record.id.as_str()),
                metadata: decode_metadata(&record),
            };
            let producer = producer.clone();
            self.window.push_back(Box::pin(async move {
                let outcome = tokio::time::timeout(budget, producer.publish_owned(message))
                    .await
                    .unwrap_or(Err(ProduceError::Timeout(budget)));
                (record, outcome)
            }));
        }
        Ok(())
    }

    /// The target the line's records go to under the config in force. When the config
    /// holds them, records why and waits [`HELD_RECHECK`] (or an append, or shutdown)
    /// before the caller asks again; returns `None` then.
    async fn resolve(&mut self) -> Option<crate::target::Target> {
        match self.replayer.resolver.resolve(&self.target) {
            Ok(target) => {
                if !self.stats.held().is_empty() {
                    log::info!("target":% = self.target; "Spooled records no longer held");
                    self.stats.set_held("");
                }
                Some(target)
            }
            Err(reason) => {
                if self.stats.held() != reason {
                    log::warn!(
                        "target":% = self.target,
                        reason:% = reason;
                        "Spooled records held: the config in force does not allow them; they are kept and sent once it does"
                    );
                    self.stats.set_held(&reason);
                }
                if self.window.is_empty() {
                    if self.confirmed.is_empty() {
                        // Records read ahead are read again once released, so that expiry
                        // (which skips what may be in flight) sees them meanwhile.
                        self.ahead.clear();
                        self.cursor = 0;
                    }
                    let _ = tokio::time::timeout(HELD_RECHECK, self.appended.notified()).await;
                }
                None
            }
        }
    }

    /// Reads up to `limit` more records after the cursor into the read-ahead.
    async fn read_ahead(&mut self, limit: usize) -> Result<(), String> {
        let (records, corrupt) = self
            .replayer
            .store
            .read(&self.destination, self.cursor, limit)
            .await
            .map_err(|e| e.to_string())?;
        if !corrupt.is_empty() {
            self.replayer
                .lines
                .quarantined(&self.target, &self.stats, &corrupt);
        }
        if let Some(last) = records.last() {
            self.cursor = last.seq;
        }
        self.ahead.extend(records);
        Ok(())
    }

    /// The broker confirmed `record`: it waits for the next removal batch.
    fn on_confirmed(&mut self, record: Record) {
        self.streaming = true;
        self.reached = true;
        self.failing_since = None;
        self.failures = 0;
        if self.head.seq == record.seq {
            self.head = Head::default();
        }
        self.confirmed.push(record);
    }

    /// `record` failed: keep it, let the window finish, go back to the head, and either
    /// move it to the dead letters (refused for longer than `dead_letter_after_s`) or wait
    /// the backoff.
    async fn on_failure(&mut self, record: Record, error: ProduceError) {
        let was_streaming = self.streaming;
        self.streaming = false;
        while let Some((other, outcome)) = self.window.next().await {
            if outcome.is_ok() {
                self.confirmed.push(other);
            }
        }
        // Every record not confirmed is read again from the head; confirmed ones must be
        // gone first, or they would be read (and sent) again.
        while !self.confirmed.is_empty() {
            if !self.flush().await && self.replayer.lines.is_closing() {
                return;
            }
        }
        self.ahead.clear();
        self.cursor = 0;
        self.stats.set_error(&error.to_string());
        if !was_streaming
            && self.head.refused_long_enough(
                &record,
                &error,
                self.replayer.settings.dead_letter_after,
            )
        {
            self.bury(record, &error).await;
        }
        // A refusal is an answer: the broker was reached.
        self.reached |= !error.is_retriable() && !matches!(error, ProduceError::Overloaded(_));
        let unreached = !self.reached;
        self.wait_after_failure(&error.to_string(), unreached).await;
    }

    /// Moves `record` (the head, refused for too long) to the dead letters.
    async fn bury(&mut self, record: Record, error: &ProduceError) {
        let burial = Burial {
            seq: record.seq,
            last_error: error.to_string(),
            attempts: self.head.attempts,
        };
        match self
            .replayer
            .store
            .bury(&self.destination, vec![burial])
            .await
        {
            Ok(moved) => {
                let after = self.replayer.settings.dead_letter_after.as_secs();
                self.replayer.lines.buried(
                    &self.target,
                    &self.stats,
                    &moved,
                    &format!("refused by the broker for longer than dead_letter_after_s ({after} s): {error}"),
                );
            }
            Err(failed) => {
                log::error!(
                    "target":% = self.target,
                    id:% = record.id,
                    error:% = failed;
                    "Spool: cannot move a record to the dead letters"
                );
                self.back_off(&failed.to_string()).await;
            }
        }
    }

    /// Removes the confirmed records; on failure keeps them, records the error and waits
    /// the backoff. Returns whether they were removed.
    async fn flush(&mut self) -> bool {
        let result = self
            .replayer
            .store
            .remove(&self.destination, &self.confirmed)
            .await;
        match result {
            Ok(()) => {
                let done = std::mem::take(&mut self.confirmed);
                self.replayer
                    .lines
                    .replayed(&self.target, &self.stats, &done);
                true
            }
            Err(error) => {
                log::error!(
                    "target":% = self.target,
                    records = self.confirmed.len() as u64,
                    error:% = error;
                    "Spool remove failed; replay of this target stops until it succeeds"
                );
                self.stats
                    .set_error(&format!("spool remove failed: {error}"));
                self.back_off(&error.to_string()).await;
                false
            }
        }
    }

    /// Nothing in flight and nothing read: ends the task if the target's spool is empty
    /// (returns true), else waits for an append.
    async fn idle(&mut self) -> bool {
        if self.replayer.lines.finish_if_empty(&self.target) {
            log::info!("target":% = self.target; "Spool replay done: the target's spool is empty");
            return true;
        }
        // An append was counted and is not committed yet, or records were all read.
        let _ = tokio::time::timeout(IDLE_WAIT, self.appended.notified()).await;
        false
    }

    /// Moves the records past `max_age_s` that are not in flight to the dead letters,
    /// at most once per [`EXPIRY_EVERY`].
    async fn expire_if_due(&mut self) {
        let Some(max_age) = self.replayer.settings.max_age else {
            return;
        };
        if self
            .expired_at
            .is_some_and(|at| at.elapsed() < EXPIRY_EVERY)
        {
            return;
        }
        self.expired_at = Some(Instant::now());
        let max_age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        let expiry = Expiry {
            destination: self.destination.clone(),
            before_ms: ferry_spool::spool::now_ms().saturating_sub(max_age_ms),
            after: self.cursor,
            reason: format!(
                "expired: not delivered within max_age_s ({} s)",
                max_age.as_secs()
            ),
        };
        let reason = expiry.reason.clone();
        match self.replayer.store.bury_expired(expiry).await {
            Ok(moved) if !moved.is_empty() => {
                self.stats
                    .expired_total
                    .fetch_add(moved.len() as u64, Ordering::Relaxed);
                self.replayer
                    .lines
                    .buried(&self.target, &self.stats, &moved, &reason);
            }
            Ok(_) => {}
            Err(error) => {
                log::error!("target":% = self.target, error:% = error; "Spool expiry failed")
            }
        }
    }

    /// Counts a failure and waits the producer's backoff for that many.
    async fn back_off(&mut self, error: &str) {
        self.wait_after_failure(error, false).await;
    }

    /// Counts a failure and waits the producer's backoff for that many, or, for a target
    /// not yet reached (`unreached`), a quarter of how long it has been failing, up to
    /// [`UNREACHED_BACKOFF_MAX`]. Returns early when the daemon stops.
    async fn wait_after_failure(&mut self, error: &str, unreached: bool) {
        self.failures = self.failures.saturating_add(1);
        let failing_for = self
            .failing_since
            .get_or_insert_with(Instant::now)
            .elapsed();
        let mut delay = self.replayer.registry.restart_delay(self.failures);
        if unreached {
            delay = unreached_delay(delay, failing_for);
        }
        log::debug!(
            "target":% = self.target,
            failures = self.failures as u64,
            delay_ms = delay.as_millis() as u64,
            unreached = unreached,
            error:% = error;
            "Spool replay waiting"
        );
        // Appends wake the wait (and are let be); shutdown ends it, and so does a reload
        // that points the line elsewhere (a misspelt route fixed), looked for each second.
        let until = Instant::now() + delay;
        while !self.replayer.lines.is_closing() && Instant::now() < until {
            let step = until.min(Instant::now() + MOVED_RECHECK);
            let woken = tokio::time::timeout_at(step, self.appended.notified()).await;
            if woken.is_err() && self.moved() {
                break;
            }
        }
    }

    /// Whether the config in force now sends the line somewhere other than where its last
    /// round went.
    fn moved(&self) -> bool {
        match (self.replayer.resolver.resolve(&self.target), &self.resolved) {
            (Ok(now), Some(before)) => now != *before,
            _ => false,
        }
    }

    /// The daemon stops: lets the publishes in flight finish (each within its attempt
    /// budget), removes those confirmed (one try), and leaves the rest spooled.
    async fn finish(&mut self) {
        while let Some((record, outcome)) = self.window.next().await {
            if outcome.is_ok() {
                self.confirmed.push(record);
            }
        }
        if !self.confirmed.is_empty() {
            let _ = self.flush_once().await;
        }
        self.replayer.lines.stopped(&self.target);
    }

    /// One removal attempt, without backoff (at shutdown).
    async fn flush_once(&mut self) -> Result<(), ferry_spool::SpoolError> {
        self.replayer
            .store
            .remove(&self.destination, &self.confirmed)
            .await?;
        let done = std::mem::take(&mut self.confirmed);
        self.replayer
            .lines
            .replayed(&self.target, &self.stats, &done);
        Ok(())
    }
}

/// The record that failed last: how many times, and since when the broker has refused it
/// without a break (a failure that is not a refusal, or another record, starts again).
#[derive(Debug, Default)]
struct Head {
    /// Its seq (0: none).
    seq: i64,
    /// Failed attempts on it.
    attempts: u32,
    /// Since when it has been refused, when it has.
    refused_since: Option<Instant>,
}

impl Head {
    /// Notes that `record` failed with `error`; returns whether it has now been refused
    /// for at least `after` without a break.
    fn refused_long_enough(
        &mut self,
        record: &Record,
        error: &ProduceError,
        after: Duration,
    ) -> bool {
        if self.seq != record.seq {
            *self = Self {
                seq: record.seq,
                ..Self::default()
            };
        }
        self.attempts = self.attempts.saturating_add(1);
        if !is_refusal(error) {
            self.refused_since = None;
            return false;
        }
        self.refused_since
            .get_or_insert_with(Instant::now)
            .elapsed()
            >= after
    }
}

/// Whether the broker answered and refused (as opposed to not answering in time, being
/// unreachable, or the daemon's own bounds): only refusals count toward
/// `dead_letter_after_s`.
fn is_refusal(error: &ProduceError) -> bool {
    matches!(error, ProduceError::Rejected(_) | ProduceError::Invalid(_))
}

/// A token bucket: `replay_max_rate` records per second, in bursts of at most a tenth of
/// a second's worth (at least one).
struct Pace {
    /// Records that may start now.
    tokens: f64,
    /// When `tokens` was last topped up.
    at: Instant,
}

impl Pace {
    /// Takes up to `want` tokens (all of them when `rate` is 0, unlimited).
    fn take(&mut self, want: usize, rate: u32) -> usize {
        if rate == 0 {
            return want;
        }
        let now = Instant::now();
        let burst = (f64::from(rate) / 10.0).max(1.0);
        let earned = now.duration_since(self.at).as_secs_f64() * f64::from(rate);
        self.tokens = (self.tokens + earned).min(burst);
        self.at = now;
        let taken = (self.tokens.floor() as usize).min(want);
        self.tokens -= taken as f64;
        taken
    }

    /// Returns tokens taken and not used.
    fn give_back(&mut self, unused: usize) {
        self.tokens += unused as f64;
    }

    /// How long until one token is earned.
    fn wait(&self, rate: u32) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / f64::from(rate.max(1)))
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
                id:% = record.id,
                error:% = error;
                "Spooled metadata unreadable, replaying the message without it"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: i64) -> Record {
        Record {
            seq,
            id: format!("id{seq}"),
            destination: Destination {
                kind: ferry_spool::Kind::Kafka,
                address: "k:9092".into(),
                exchange: String::new(),
            },
            route: "t".into(),
            payload: bytes::Bytes::new(),
            meta: None,
            created_ms: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_refusal_of_the_same_record_without_a_break_counts() {
        let after = Duration::from_secs(10);
        let nack = ProduceError::Rejected("nack".into());
        let down = ProduceError::Unavailable("connection refused".into());
        let mut head = Head::default();
        assert!(!head.refused_long_enough(&record(1), &nack, after));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            !head.refused_long_enough(&record(1), &down, after),
            "an outage"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            !head.refused_long_enough(&record(1), &nack, after),
            "the outage broke the refusals: the clock starts again"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(head.refused_long_enough(&record(1), &nack, after));
        assert_eq!(head.attempts, 4);
        assert!(
            !head.refused_long_enough(&record(2), &nack, after),
            "the next record has its own clock"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_pace_allows_the_rate_in_small_bursts() {
        let mut pace = Pace {
            tokens: 0.0,
            at: Instant::now(),
        };
        assert_eq!(pace.take(64, 0), 64, "0 is unlimited");
        assert_eq!(pace.take(64, 100), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            pace.take(64, 100),
            10,
            "a burst is a tenth of a second's worth"
        );
        pace.give_back(4);
        assert_eq!(pace.take(64, 100), 4);
        assert_eq!(pace.wait(100), Duration::from_millis(10));
        let mut started = 0;
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(10)).await;
            started += pace.take(64, 100);
        }
        assert_eq!(started, 100, "one second at 100/s");
    }

    /// Spools `payloads` through a forwarder (`script` leaves the first attempt at the first
    /// of them unanswered, so it and those behind it are spooled), replays them once the
    /// config lets them through, with `replay_in_flight` in flight, and returns the
    /// payloads the fake broker received during the replay.
    async fn replay(
        name: &str,
        script: &Arc<crate::fake::Script>,
        replay_in_flight: usize,
        payloads: &[&str],
    ) -> Vec<String> {
        use crate::fake::{self, Gate, target};
        let registry = fake::registry(script, crate::settings::RegistrySettings::default());
        let gate = Arc::new(Gate::default());
        let (spooler, _dir) = fake::spooler(name, &registry, replay_in_flight, gate.clone());
        let forwarder = crate::Forwarder::new(
            registry,
            crate::RetryPolicy::default(),
            100,
            1 << 20,
            Some(Arc::clone(&spooler)),
        );
        for payload in payloads {
            let payload = bytes::Bytes::from(payload.to_string());
            let accepted = forwarder
                .forward(&target(1), None, "topic".into(), payload, None)
                .await
                .unwrap();
            assert!(accepted.spooled.is_some());
        }
        assert_eq!(
            script.payloads(),
            [payloads[0]],
            "the rest went to the spool"
        );
        gate.open();
        fake::until("the spool is empty", || !spooler.has_lines()).await;
        script.payloads().split_off(1)
    }

    /// Spools one message, "m1", for `target(1)` of a broker no connection reaches (every
    /// attempt fails until `script` says otherwise), replayed to where `resolver` says;
    /// the spooler, its directory, and why the answer said it was spooled.
    async fn spool_unreachable(
        name: &str,
        script: &Arc<crate::fake::Script>,
        resolver: Arc<dyn Resolve>,
    ) -> (Arc<crate::spool::Spooler>, crate::fake::SpoolDir, String) {
        use crate::fake::{self, target};
        script.fail_connects(u32::MAX);
        let registry = fake::registry(script, crate::settings::RegistrySettings::default());
        let (spooler, dir) = fake::spooler(name, &registry, 1, resolver);
        let forwarder = crate::Forwarder::new(
            registry,
            crate::RetryPolicy::default(),
            100,
            1 << 20,
            Some(Arc::clone(&spooler)),
        );
        let payload = bytes::Bytes::from_static(b"m1");
        let accepted = forwarder
            .forward(&target(1), None, "topic".into(), payload, None)
            .await
            .unwrap();
        (spooler, dir, accepted.spooled.expect("spooled"))
    }

    /// Lets `seconds` of paused time pass, a second at a time.
    async fn pass(seconds: u64) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(seconds) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    #[actix_rt::test]
    async fn a_target_never_reached_is_tried_ever_more_rarely_up_to_two_minutes() {
        use crate::fake::{Gate, Script};
        tokio::time::pause();
        let script = Script::new();
        let gate = Arc::new(Gate::default());
        let (_spooler, _dir, why) = spool_unreachable("unreached", &script, gate.clone()).await;
        assert!(why.contains("no message has reached this target"), "{why}");
        gate.open();
        pass(1800).await;
        // The producer's own backoff stops at 1 s here: at that pace 30 min would be
        // hundreds of attempts; a quarter of the failing time, up to 2 min, is about 40.
        // (The gaps are not exact: paused time jumps while the spool's writer thread
        // works in real time.)
        let connects = script.connects().len();
        assert!(connects < 60, "{connects} attempts in 30 min");
    }

    /// Sends every line where it says now: a route that a reload points elsewhere.
    struct Pointing(std::sync::Mutex<crate::target::Target>);

    impl Resolve for Pointing {
        fn resolve(&self, _: &Line) -> Result<crate::target::Target, String> {
            Ok(self.0.lock().unwrap().clone())
        }
    }

    #[actix_rt::test]
    async fn a_reload_that_points_a_waiting_line_elsewhere_ends_its_wait() {
        use crate::fake::{self, Script, target};
        tokio::time::pause();
        let script = Script::new();
        let pointing = Arc::new(Pointing(std::sync::Mutex::new(target(1))));
        let (spooler, _dir, _) = spool_unreachable("moved", &script, pointing.clone()).await;
        // Ten minutes of failures: each wait is now two minutes long.
        pass(600).await;
        // Just after an attempt failed (a whole wait ahead), the route is fixed.
        let attempts = script.connects().len();
        fake::until("another attempt", || script.connects().len() > attempts).await;
        script.fail_connects(0);
        *pointing.0.lock().unwrap() = target(2);
        let fixed = Instant::now();
        fake::until("the record delivered", || !spooler.has_lines()).await;
        assert!(
            fixed.elapsed() < Duration::from_secs(30),
            "delivered {:?} after the fix",
            fixed.elapsed()
        );
        assert_eq!(script.acked(), ["m1"]);
    }

    #[test]
    fn the_unreached_backoff_is_a_quarter_of_the_failing_time_up_to_two_minutes() {
        let usual = Duration::from_secs(2);
        let delays: Vec<u64> = [0, 4, 8, 60, 240, 480, 3600]
            .into_iter()
            .map(|s| unreached_delay(usual, Duration::from_secs(s)).as_secs())
            .collect();
        assert_eq!(delays, [2, 2, 2, 15, 60, 120, 120]);
    }

    #[actix_rt::test]
    async fn replay_keeps_arrival_order_through_nacks_and_timeouts() {
        use crate::fake::{Answer, Script};
        tokio::time::pause();
        let script = Script::new();
        let unavailable = ProduceError::Unavailable("connection reset".into());
        // The forwarder's attempt at m1 gets no answer, nor does the first replay of it;
        // the next is nacked, the next fails.
        let m1 = [
            Answer::Silent,
            Answer::Silent,
            Answer::Nack,
            Answer::Fail(unavailable),
        ];
        script.answer("m1", m1);
        script.answer("m3", [Answer::Nack]);
        let sent = replay("order", &script, 1, &["m1", "m2", "m3", "m4", "m5"]).await;
        assert_eq!(
            sent,
            ["m1", "m1", "m1", "m1", "m2", "m3", "m3", "m4", "m5"],
            "one at a time, each failure tried again before the next record"
        );
        assert_eq!(script.acked(), ["m1", "m2", "m3", "m4", "m5"]);
    }

    #[actix_rt::test]
    async fn a_failed_record_is_overtaken_only_by_records_already_in_flight() {
        use crate::fake::{Answer, Script};
        tokio::time::pause();
        let script = Script::new();
        script.answer("m1", [Answer::Silent]);
        script.answer("m2", [Answer::Nack]);
        let sent = replay("window", &script, 3, &["m1", "m2", "m3", "m4", "m5"]).await;
        let acked = script.acked();
        assert_eq!(acked.len(), 5, "each record confirmed once: {sent:?}");
        let mut overtook = acked[..3].to_vec();
        overtook.sort();
        assert_eq!(
            overtook,
            ["m1", "m3", "m4"],
            "m3 and m4 were in flight with m2 and finished"
        );
        assert_eq!(acked[3..], ["m2", "m5"], "m5 waited for m2");
    }
}
