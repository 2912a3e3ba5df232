//! The spool as the daemon uses it: an exclusive lock on the directory, one writer thread
//! that owns the database, and async calls that return once the thread has done the work.
//!
//! Appends that arrive while a commit is under way are committed together in the next
//! transaction (group commit), so concurrent messages share one fsync.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::dead::{Burial, Moved};
use crate::error::SpoolError;
use crate::open::{Recovery, lock, prepare_dir};
pub use crate::record::now_ms;
use crate::record::{Destination, NewRecord, Record};
use crate::store::{Store, Summary};

/// Most appends committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Operations queued for the writer thread before callers wait for room.
const QUEUE: usize = 4096;

/// Bounds of the spool.
#[derive(Debug, Clone, Copy)]
pub struct SpoolLimits {
    /// Most bytes the records may hold (payload, route, id, destination).
    pub max_bytes: u64,
    /// Free space the disk must keep; appends beyond it are refused.
    pub min_free_bytes: u64,
    /// Most bytes the records of one target may hold, so one dead target cannot take the
    /// whole spool from the others.
    pub max_bytes_per_target: u64,
    /// Most targets with records at once; a record for another one is refused.
    pub max_targets: usize,
}

/// What the writer thread is asked to do.
enum Op {
    /// Append a record durably.
    Append(NewRecord, oneshot::Sender<Result<i64, SpoolError>>),
    /// Read a destination's records after a seq.
    Read(Destination, i64, usize, oneshot::Sender<ReadResult>),
    /// Remove confirmed records of one destination (with their bytes).
    Remove(
        Destination,
        Vec<i64>,
        u64,
        oneshot::Sender<Result<(), SpoolError>>,
    ),
    /// Move records of one destination to the dead letters.
    Bury(Destination, Vec<Burial>, oneshot::Sender<BuryResult>),
    /// Move a destination's records spooled before a time, after a seq, to the dead
    /// letters.
    BuryExpired(Expiry, oneshot::Sender<BuryResult>),
    /// List the destinations.
    Summary(oneshot::Sender<Result<Vec<Summary>, SpoolError>>),
}

/// Records moved to the dead letters.
pub type BuryResult = Result<Vec<Moved>, SpoolError>;

/// Which records of a destination have expired.
#[derive(Debug, Clone)]
pub struct Expiry {
    /// The destination.
    pub destination: Destination,
    /// Records spooled before this time (ms since the Unix epoch)…
    pub before_ms: i64,
    /// …and positioned after this seq (those before it may be in flight).
    pub after: i64,
    /// The last error the dead letters record.
    pub reason: String,
}

/// Records read, and the ids of those moved to quarantine because their checksum failed.
pub type ReadResult = Result<(Vec<Record>, Vec<String>), SpoolError>;

/// The open spool. Dropping it stops the writer thread once its queue is done and
/// releases the directory lock.
pub struct Spool {
    /// Work for the writer thread.
    ops: mpsc::Sender<Op>,
    /// The spool directory.
    dir: PathBuf,
    /// Bytes the records and dead letters hold now.
    bytes: Arc<AtomicU64>,
    /// Dead letters held now.
    dead: Arc<AtomicU64>,
    /// The integrity check's verdict: `ok`, `running`, or why not.
    integrity: Arc<std::sync::Mutex<String>>,
    /// The directory lock, held while the spool is open.
    _lock: File,
}

impl Spool {
    /// Locks `dir` (refusing it when another process holds it), opens and recovers the
    /// database, and starts the writer thread. Returns what recovery found and the
    /// destinations that have records.
    pub fn open(
        dir: &Path,
        limits: SpoolLimits,
    ) -> Result<(Self, Recovery, Vec<Summary>), SpoolError> {
        prepare_dir(dir)?;
        let lock = lock(dir)?;
        let (store, recovery) = Store::open(dir)?;
        let integrity = Arc::new(std::sync::Mutex::new("ok".to_owned()));
        if recovery.check_deferred {
            crate::open::check_in_background(dir, Arc::clone(&integrity));
        }
        let summary = store.summary()?;
        let dead_summary = store.dead_summary()?;
        let dead: u64 = dead_summary.iter().map(|s| s.bytes).sum();
        let dead_count = Arc::new(AtomicU64::new(dead_summary.iter().map(|s| s.count).sum()));
        let per_target: HashMap<Destination, u64> = summary
            .iter()
            .map(|s| (s.destination.clone(), s.bytes))
            .collect();
        let held = per_target.values().sum::<u64>() + dead;
        let bytes = Arc::new(AtomicU64::new(held));
        let (ops, queue) = mpsc::channel(QUEUE);
        let writer = Writer {
            store,
            dir: dir.to_owned(),
            limits,
            bytes: Arc::clone(&bytes),
            dead: Arc::clone(&dead_count),
            per_target,
        };
        std::thread::Builder::new()
            .name("ferry-spool".into())
            .spawn(move || writer.run(queue))?;
        Ok((
            Self {
                ops,
                dir: dir.to_owned(),
                bytes,
                dead: dead_count,
                integrity,
                _lock: lock,
            },
            recovery,
            summary,
        ))
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes the records and dead letters hold now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The integrity check's verdict: `ok`, `running` (a large spool is checked after the
    /// start), or `failed: …`.
    pub fn integrity(&self) -> String {
        self.integrity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Dead letters held now.
    pub fn dead_letters(&self) -> u64 {
        self.dead.load(Ordering::Relaxed)
    }

    /// Appends `record`; returns its seq once it is durable on disk.
    pub async fn append(&self, record: NewRecord) -> Result<i64, SpoolError> {
        self.call(|reply| Op::Append(record, reply)).await?
    }

    /// Up to `limit` records of `destination` after seq `after`, in order, and the ids of
    /// records moved to quarantine on the way.
    pub async fn read(&self, destination: &Destination, after: i64, limit: usize) -> ReadResult {
        let destination = destination.clone();
        self.call(|reply| Op::Read(destination, after, limit, reply))
            .await?
    }

    /// Removes `records` of `destination` (their broker confirmed them), in one
    /// transaction: all of them, or none and an error.
    pub async fn remove(
        &self,
        destination: &Destination,
        records: &[Record],
    ) -> Result<(), SpoolError> {
        let seqs = records.iter().map(|r| r.seq).collect();
        let bytes = records.iter().map(Record::bytes).sum();
        let destination = destination.clone();
        self.call(|reply| Op::Remove(destination, seqs, bytes, reply))
            .await?
    }

    /// Moves records of `destination` to the dead letters; returns those moved.
    pub async fn bury(&self, destination: &Destination, burials: Vec<Burial>) -> BuryResult {
        let destination = destination.clone();
        self.call(|reply| Op::Bury(destination, burials, reply))
            .await?
    }

    /// Moves the records `expiry` names to the dead letters; returns those moved.
    pub async fn bury_expired(&self, expiry: Expiry) -> BuryResult {
        self.call(|reply| Op::BuryExpired(expiry, reply)).await?
    }

    /// Every destination with records.
    pub async fn summary(&self) -> Result<Vec<Summary>, SpoolError> {
        self.call(Op::Summary).await?
    }

    /// Sends an operation to the writer thread and waits for its answer.
    async fn call<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(op(reply))
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)
    }
}

/// The writer thread's state.
struct Writer {
    /// The database.
    store: Store,
    /// The spool directory (for the free-space check).
    dir: PathBuf,
    /// The bounds.
    limits: SpoolLimits,
    /// Bytes the records and dead letters hold, shared with the handle.
    bytes: Arc<AtomicU64>,
    /// Dead letters held, shared with the handle.
    dead: Arc<AtomicU64>,
    /// Bytes the records of each destination hold (only destinations with records).
    per_target: HashMap<Destination, u64>,
}

impl Writer {
    /// Serves operations until every handle is gone.
    fn run(mut self, mut queue: mpsc::Receiver<Op>) {
        while let Some(first) = queue.blocking_recv() {
            let mut appends = Vec::new();
            let mut others = Vec::new();
            let mut next = Some(first);
            while let Some(op) = next {
                match op {
                    Op::Append(record, reply) => appends.push((record, reply)),
                    other => others.push(other),
                }
                next = if appends.len() < MAX_BATCH {
                    queue.try_recv().ok()
                } else {
                    None
                };
            }
            if !appends.is_empty() {
                self.append(appends);
            }
            for op in others {
                self.serve(op);
            }
        }
    }

    /// Commits the appends that fit the bounds in one transaction and answers each.
    fn append(&mut self, appends: Vec<(NewRecord, oneshot::Sender<Result<i64, SpoolError>>)>) {
        let mut room = Room {
            free: free_bytes(&self.dir),
            used: self.bytes.load(Ordering::Relaxed),
            added: 0,
            targets: HashMap::new(),
        };
        let mut batch = Vec::with_capacity(appends.len());
        let mut replies = Vec::with_capacity(appends.len());
        for (record, reply) in appends {
            match self.refusal(&record, &room) {
                Some(reason) => {
                    let _ = reply.send(Err(SpoolError::Full(reason)));
                }
                None => {
                    let size = record.bytes();
                    room.used += size;
                    room.added += size;
                    *room.targets.entry(record.destination.clone()).or_default() += size;
                    batch.push(record);
                    replies.push(reply);
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        match self.store.append(&batch, now_ms()) {
            Ok(seqs) => {
                self.bytes.fetch_add(room.added, Ordering::Relaxed);
                for (destination, added) in room.targets {
                    *self.per_target.entry(destination).or_default() += added;
                }
                for (reply, seq) in replies.into_iter().zip(seqs) {
                    let _ = reply.send(Ok(seq));
                }
            }
            Err(error) => {
                log::error!(records = batch.len() as u64, error:% = error; "Spool append failed");
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Why `record` does not fit, given what this batch already took; `None` if it fits.
    fn refusal(&self, record: &NewRecord, room: &Room) -> Option<String> {
        let size = record.bytes();
        let limits = &self.limits;
        let destination = &record.destination;
        let held = self.per_target.get(destination).copied();
        let in_batch = room.targets.get(destination).copied();
        let target_bytes = held.unwrap_or(0) + in_batch.unwrap_or(0);
        let new_targets = room
            .targets
            .keys()
            .filter(|d| !self.per_target.contains_key(*d))
            .count();
        if room.used + size > limits.max_bytes {
            Some(format!(
                "{} bytes spooled, max_bytes is {}",
                room.used, limits.max_bytes
            ))
        } else if target_bytes + size > limits.max_bytes_per_target {
            Some(format!(
                "{target_bytes} bytes spooled for this target, max_bytes_per_target is {}",
                limits.max_bytes_per_target
            ))
        } else if held.is_none()
            && in_batch.is_none()
            && self.per_target.len() + new_targets >= limits.max_targets
        {
            Some(format!(
                "{} targets have spooled messages, max_targets is {}",
                self.per_target.len() + new_targets,
                limits.max_targets
            ))
        } else if room
            .free
            .is_some_and(|free| free < limits.min_free_bytes + room.added + size)
        {
            Some(format!(
                "less than min_free_bytes ({}) free on the spool's disk",
                limits.min_free_bytes
            ))
        } else {
            None
        }
    }

    /// Serves one operation other than an append.
    fn serve(&mut self, op: Op) {
        match op {
            Op::Append(..) => {}
            Op::Read(destination, after, limit, reply) => {
                let read = self.store.read(&destination, after, limit);
                if matches!(&read, Ok((_, corrupt)) if !corrupt.is_empty()) {
                    self.recount();
                }
                let _ = reply.send(read);
            }
            Op::Remove(destination, seqs, bytes, reply) => {
                let removed = self
                    .injected_failure()
                    .map_or_else(|| self.store.remove(&seqs), Err);
                if removed.is_ok() {
                    self.forget(&destination, bytes, true);
                }
                let _ = reply.send(removed);
            }
            Op::Bury(destination, burials, reply) => {
                let moved = self.store.bury(&burials, now_ms());
                self.moved(&destination, &moved);
                let _ = reply.send(moved);
            }
            Op::BuryExpired(expiry, reply) => {
                let moved = self.store.bury_expired(
                    &expiry.destination,
                    expiry.before_ms,
                    expiry.after,
                    &expiry.reason,
                    now_ms(),
                );
                self.moved(&expiry.destination, &moved);
                let _ = reply.send(moved);
            }
            Op::Summary(reply) => {
                let _ = reply.send(self.store.summary());
            }
        }
    }

    /// With the `fault-injection` feature (test builds), the error a removal fails with
    /// while `FAIL_REMOVE` exists in the spool directory.
    fn injected_failure(&self) -> Option<SpoolError> {
        if cfg!(feature = "fault-injection") && self.dir.join("FAIL_REMOVE").exists() {
            return Some(SpoolError::Io("injected failure (FAIL_REMOVE)".into()));
        }
        None
    }

    /// Accounts for records of `destination` moved to the dead letters: they leave the
    /// target's bytes and stay in the spool's.
    fn moved(&mut self, destination: &Destination, moved: &BuryResult) {
        if let Ok(moved) = moved {
            self.dead.fetch_add(moved.len() as u64, Ordering::Relaxed);
            let bytes = moved.iter().map(|m| m.bytes).sum();
            self.forget(destination, bytes, false);
        }
    }

    /// Takes `bytes` off `destination` (dropping it once it holds nothing) and, when they
    /// left the spool, off the total.
    fn forget(&mut self, destination: &Destination, bytes: u64, left_the_spool: bool) {
        if left_the_spool {
            let _ = self
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(bytes))
                });
        }
        if let Some(held) = self.per_target.get_mut(destination) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                self.per_target.remove(destination);
            }
        }
    }

    /// Recounts the bytes held after records left other than by removal.
    fn recount(&mut self) {
        let Ok(summary) = self.store.summary() else {
            return;
        };
        let dead: u64 = self
            .store
            .dead_summary()
            .map_or(0, |d| d.iter().map(|s| s.bytes).sum());
        self.per_target = summary
            .iter()
            .map(|s| (s.destination.clone(), s.bytes))
            .collect();
        self.bytes.store(
            self.per_target.values().sum::<u64>() + dead,
            Ordering::Relaxed,
        );
    }
}

/// What one group commit may still take.
struct Room {
    /// Free bytes on the disk (None if unknown).
    free: Option<u64>,
    /// Bytes the spool holds, with this batch's so far.
    used: u64,
    /// Bytes this batch added.
    added: u64,
    /// Bytes this batch added per destination.
    targets: HashMap<Destination, u64>,
}

/// Bytes free to unprivileged users on the file system of `dir` (None if unknown).
fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Kind;
    use bytes::Bytes;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    const ROOMY: SpoolLimits = SpoolLimits {
        max_bytes: 1 << 30,
        min_free_bytes: 0,
        max_bytes_per_target: 1 << 30,
        max_targets: 100,
    };

    fn record(id: usize, payload: usize) -> NewRecord {
        NewRecord {
            id: format!("id-{id:05}"),
            destination: Destination {
                kind: Kind::Amqp,
                address: "amqp://u:p@mq:5672/%2f".into(),
                exchange: "ex".into(),
            },
            route: "a.b".into(),
            payload: Bytes::from(vec![b'x'; payload]),
            meta: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_all_durable_and_read_back_in_order() {
        let dir = scratch("concurrent");
        let (spool, _, _) = Spool::open(&dir, ROOMY).unwrap();
        let spool = Arc::new(spool);
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let spool = Arc::clone(&spool);
                tokio::spawn(async move { spool.append(record(i, 100)).await })
            })
            .collect();
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.push(task.await.unwrap().unwrap());
        }
        let destination = record(0, 0).destination;
        let (records, _) = spool.read(&destination, 0, 1000).await.unwrap();
        assert_eq!(records.len(), 500);
        assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
        spool.remove(&destination, &records[..100]).await.unwrap();
        let summary = spool.summary().await.unwrap();
        assert_eq!(summary[0].count, 400);
        assert_eq!(spool.bytes(), summary[0].bytes);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn to(exchange: &str, id: usize, payload: usize) -> NewRecord {
        let mut record = record(id, payload);
        record.destination.exchange = exchange.into();
        record
    }

    #[tokio::test]
    async fn one_target_cannot_take_the_spool_from_the_others() {
        let dir = scratch("per-target");
        let limits = SpoolLimits {
            max_bytes_per_target: 2_500,
            max_targets: 2,
            ..ROOMY
        };
        let (spool, _, _) = Spool::open(&dir, limits).unwrap();
        for i in 0..2 {
            spool.append(to("dead", i, 1_000)).await.unwrap();
        }
        match spool.append(to("dead", 2, 1_000)).await {
            Err(SpoolError::Full(reason)) => {
                assert!(reason.contains("max_bytes_per_target"), "{reason}");
            }
            other => panic!("expected Full, got {other:?}"),
        }
        spool.append(to("alive", 3, 1_000)).await.unwrap();
        match spool.append(to("third", 4, 10)).await {
            Err(SpoolError::Full(reason)) => assert!(reason.contains("max_targets"), "{reason}"),
            other => panic!("expected Full, got {other:?}"),
        }
        // Once a target's records are gone, it no longer counts.
        let alive = to("alive", 0, 0).destination;
        let (records, _) = spool.read(&alive, 0, 10).await.unwrap();
        spool.remove(&alive, &records).await.unwrap();
        spool.append(to("third", 4, 10)).await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_directory_is_refused() {
        let dir = scratch("lock");
        let (_spool, _, _) = Spool::open(&dir, ROOMY).unwrap();
        match Spool::open(&dir, ROOMY) {
            Err(SpoolError::Locked(_)) => {}
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_full_spool_refuses_new_records_and_keeps_the_old_ones() {
        let dir = scratch("full");
        let limits = SpoolLimits {
            max_bytes: 3_000,
            ..ROOMY
        };
        let (spool, _, _) = Spool::open(&dir, limits).unwrap();
        for i in 0..2 {
            spool.append(record(i, 1_000)).await.unwrap();
        }
        match spool.append(record(2, 1_000)).await {
            Err(SpoolError::Full(reason)) => assert!(reason.contains("max_bytes"), "{reason}"),
            other => panic!("expected Full, got {other:?}"),
        }
        let (records, _) = spool.read(&record(0, 0).destination, 0, 10).await.unwrap();
        assert_eq!(records.len(), 2);
        let floor = SpoolLimits {
            min_free_bytes: u64::MAX / 2,
            ..ROOMY
        };
        drop(spool);
        let (spool, _, _) = Spool::open(&dir, floor).unwrap();
        match spool.append(record(3, 10)).await {
            Err(SpoolError::Full(reason)) => assert!(reason.contains("min_free_bytes"), "{reason}"),
            other => panic!("expected Full, got {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
