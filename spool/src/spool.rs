//! The spool as the daemon uses it: an exclusive lock on the directory, one writer thread
//! that owns the database, and async calls that return once the thread has done the work.
//!
//! Appends that arrive while a commit is under way are committed together in the next
//! transaction (group commit), so concurrent messages share one fsync.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use crate::error::SpoolError;
use crate::record::{Destination, NewRecord, Record};
use crate::store::{Recovery, Store, Summary};

/// Most appends committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Operations queued for the writer thread before callers wait for room.
const QUEUE: usize = 4096;
/// The lock file in the spool directory.
pub const LOCK_FILE: &str = "LOCK";

/// Bounds of the spool.
#[derive(Debug, Clone, Copy)]
pub struct SpoolLimits {
    /// Most bytes the records may hold (payload, route, id, destination).
    pub max_bytes: u64,
    /// Free space the disk must keep; appends beyond it are refused.
    pub min_free_bytes: u64,
}

/// What the writer thread is asked to do.
enum Op {
    /// Append a record durably.
    Append(NewRecord, oneshot::Sender<Result<i64, SpoolError>>),
    /// Read a destination's records after a seq.
    Read(Destination, i64, usize, oneshot::Sender<ReadResult>),
    /// Remove confirmed records (with their bytes).
    Remove(Vec<i64>, u64, oneshot::Sender<Result<(), SpoolError>>),
    /// Remove records spooled before a time.
    Expire(
        i64,
        oneshot::Sender<Result<Vec<crate::store::Expired>, SpoolError>>,
    ),
    /// List the destinations.
    Summary(oneshot::Sender<Result<Vec<Summary>, SpoolError>>),
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
    /// Bytes the records hold now.
    bytes: Arc<AtomicU64>,
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
        std::fs::create_dir_all(dir)?;
        let lock = File::create(dir.join(LOCK_FILE))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked(dir.display().to_string()));
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(error.into()),
        }
        let (store, recovery) = Store::open(dir)?;
        let summary = store.summary()?;
        let bytes = Arc::new(AtomicU64::new(summary.iter().map(|s| s.bytes).sum()));
        let (ops, queue) = mpsc::channel(QUEUE);
        let writer = Writer {
            store,
            dir: dir.to_owned(),
            limits,
            bytes: Arc::clone(&bytes),
        };
        std::thread::Builder::new()
            .name("ferry-spool".into())
            .spawn(move || writer.run(queue))?;
        Ok((
            Self {
                ops,
                dir: dir.to_owned(),
                bytes,
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

    /// Bytes the records hold now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
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

    /// Removes `records` (their broker confirmed them).
    pub async fn remove(&self, records: &[Record]) -> Result<(), SpoolError> {
        let seqs = records.iter().map(|r| r.seq).collect();
        let bytes = records.iter().map(Record::bytes).sum();
        self.call(|reply| Op::Remove(seqs, bytes, reply)).await?
    }

    /// Removes the records spooled more than `max_age_ms` ago; returns them (id,
    /// destination, bytes).
    pub async fn expire(&self, max_age_ms: u64) -> Result<Vec<crate::store::Expired>, SpoolError> {
        let before = now_ms().saturating_sub(i64::try_from(max_age_ms).unwrap_or(i64::MAX));
        self.call(|reply| Op::Expire(before, reply)).await?
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The writer thread's state.
struct Writer {
    /// The database.
    store: Store,
    /// The spool directory (for the free-space check).
    dir: PathBuf,
    /// The bounds.
    limits: SpoolLimits,
    /// Bytes the records hold, shared with the handle.
    bytes: Arc<AtomicU64>,
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
        let free = free_bytes(&self.dir);
        let mut used = self.bytes.load(Ordering::Relaxed);
        let mut batch = Vec::with_capacity(appends.len());
        let mut replies = Vec::with_capacity(appends.len());
        let mut added = 0;
        for (record, reply) in appends {
            let size = record.bytes();
            let refusal = if used + size > self.limits.max_bytes {
                Some(format!(
                    "{used} bytes spooled, max_bytes is {}",
                    self.limits.max_bytes
                ))
            } else if free.is_some_and(|free| free < self.limits.min_free_bytes + added + size) {
                Some(format!(
                    "less than min_free_bytes ({}) free on the spool's disk",
                    self.limits.min_free_bytes
                ))
            } else {
                None
            };
            match refusal {
                Some(reason) => {
                    let _ = reply.send(Err(SpoolError::Full(reason)));
                }
                None => {
                    used += size;
                    added += size;
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
                self.bytes.fetch_add(added, Ordering::Relaxed);
                for (reply, seq) in replies.into_iter().zip(seqs) {
                    let _ = reply.send(Ok(seq));
                }
            }
            Err(error) => {
                log::error!("Spool append failed records={} error={error}", batch.len());
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
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
            Op::Remove(seqs, bytes, reply) => {
                let removed = self.store.remove(&seqs);
                if removed.is_ok() {
                    let _ = self
                        .bytes
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                            Some(b.saturating_sub(bytes))
                        });
                }
                let _ = reply.send(removed);
            }
            Op::Expire(before, reply) => {
                let expired = self.store.expire(before);
                if matches!(&expired, Ok(ids) if !ids.is_empty()) {
                    self.recount();
                }
                let _ = reply.send(expired);
            }
            Op::Summary(reply) => {
                let _ = reply.send(self.store.summary());
            }
        }
    }

    /// Recounts the bytes held after records left other than by removal.
    fn recount(&mut self) {
        if let Ok(summary) = self.store.summary() {
            self.bytes
                .store(summary.iter().map(|s| s.bytes).sum(), Ordering::Relaxed);
        }
    }
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
        spool.remove(&records[..100]).await.unwrap();
        let summary = spool.summary().await.unwrap();
        assert_eq!(summary[0].count, 400);
        assert_eq!(spool.bytes(), summary[0].bytes);
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
            min_free_bytes: 0,
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
            max_bytes: 1 << 40,
            min_free_bytes: u64::MAX / 2,
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
