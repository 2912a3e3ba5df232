//! The [`Spooler`]: what the forwarder hands a message its broker cannot take now to. It
//! files the message under its line, durably, and starts the line's replay task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ferry_spool::{NewRecord, Spool, SpoolError, Summary};

use super::lines::{Filed, Lines, SpoolSnapshot, SpoolTotals};
use super::replay::{ReplaySettings, Replayer};
use crate::line::{Line, Resolve};
use crate::metadata::Metadata;
use crate::policy::RetryPolicy;
use crate::registry::Registry;

/// A message on its way into the spool, borrowed from the forwarder.
pub(crate) struct ToSpool<'a> {
    /// Its id, kept on replay.
    pub(crate) id: Arc<str>,
    /// Topic or routing key.
    pub(crate) route: &'a str,
    /// The message bytes.
    pub(crate) payload: &'a Bytes,
    /// Key, headers, properties, stored as JSON beside the bytes.
    pub(crate) metadata: Option<&'a Metadata>,
}

/// The spool, the per-line spooling state and the replay tasks.
pub struct Spooler {
    /// The durable store.
    spool: Arc<Spool>,
    /// The lines that have spooled records.
    lines: Arc<Lines>,
    /// Starts a line's replay task.
    replayer: Arc<Replayer>,
    /// What opening the spool repaired: a torn log tail (0 or 1), database files moved
    /// aside.
    recovered: (AtomicU64, AtomicU64),
}

impl Spooler {
    /// A spooler over an opened `spool`, replaying each line to the target `resolver`
    /// gives it, through `registry`, each publish within the `policy`'s first attempt.
    pub fn new(
        spool: Spool,
        registry: Arc<Registry>,
        policy: RetryPolicy,
        settings: ReplaySettings,
        resolver: Arc<dyn Resolve>,
    ) -> Arc<Self> {
        let spool = Arc::new(spool);
        let lines = Arc::new(Lines::default());
        let replayer = Arc::new(Replayer {
            store: Arc::clone(&spool),
            lines: Arc::clone(&lines),
            registry,
            resolver,
            attempt_budget: policy.attempt_timeout(1),
            settings,
        });
        Arc::new(Self {
            spool,
            lines,
            replayer,
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
    pub fn resume(&self, summary: &[Summary]) {
        for entry in summary {
            let Some(line) = Line::of(&entry.destination) else {
                log::error!(
                    records = entry.count,
                    kind:% = entry.destination.kind.as_str();
                    "Spooled records for a target that does not validate as stored are left in the spool"
                );
                continue;
            };
            log::info!(
                "target":% = line,
                records = entry.count,
                bytes = entry.bytes;
                "Spool holds records from before start"
            );
            let filed = self.lines.file(&line, entry.count);
            let stats = &filed.stats;
            stats.spooled_now.fetch_add(entry.count, Ordering::Relaxed);
            stats.bytes_now.fetch_add(entry.bytes, Ordering::Relaxed);
            let _ = stats.oldest_ms.compare_exchange(
                0,
                entry.oldest_ms,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if filed.start_replay {
                self.replayer.spawn(line, filed.appended);
            }
        }
    }

    /// Whether any line has records in the spool (cheap: the common answer is no).
    pub fn has_lines(&self) -> bool {
        self.lines.any()
    }

    /// Whether `line` has records in the spool (its new messages must go there too).
    pub fn is_spooling(&self, line: &Line) -> bool {
        self.lines.is_spooling(line)
    }

    /// Writes a message to the spool under `line`; returns once it is durable. Starts the
    /// line's replay task if none runs.
    pub(crate) async fn spool(
        &self,
        target: &Line,
        message: &ToSpool<'_>,
    ) -> Result<(), SpoolError> {
        let meta = match message.metadata.map(serde_json::to_vec).transpose() {
            Ok(meta) => meta.map(Bytes::from),
            Err(error) => return Err(SpoolError::Io(format!("cannot encode metadata: {error}"))),
        };
        let Filed {
            start_replay,
            appended,
            stats,
        } = self.lines.file(target, 1);
        if start_replay {
            self.replayer.spawn(target.clone(), Arc::clone(&appended));
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
                self.lines.settle(target, &stats, 1, size);
                appended.notify_one();
                Err(error)
            }
        }
    }

    /// Stops the replay tasks after their current round; records stay spooled.
    pub fn begin_shutdown(&self) {
        self.lines.begin_shutdown();
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

    /// The spool counters of every line that spooled since start.
    pub fn snapshot(&self) -> Vec<SpoolSnapshot> {
        self.lines.snapshot()
    }

    /// Counts across lines since start.
    pub fn totals(&self) -> &SpoolTotals {
        self.lines.totals()
    }
}
