//! Runs a [`Sink`] closed-loop (C tasks, each sending its next message once the previous
//! was answered) or open-loop (one message due every 1/rate s).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::record::Record;
use crate::sink::Sink;

/// Sends messages `0..n` through `sink` with `concurrency` in flight; returns the merged
/// record and the wall time. Each message is bounded by `timeout`.
pub async fn closed_loop<S: Sink>(
    sink: Arc<S>,
    n: u64,
    concurrency: usize,
    timeout: Duration,
    done: Arc<AtomicU64>,
) -> (Record, Duration) {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (sink, next, done) = (Arc::clone(&sink), Arc::clone(&next), Arc::clone(&done));
            tokio::spawn(async move {
                let mut record = Record::default();
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= n {
                        break record;
                    }
                    let sent = Instant::now();
                    let result = bounded(timeout, sink.send(seq)).await;
                    record.outcome(result, sent.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (merge(tasks).await, started.elapsed())
}

/// Sends messages `0..n` through `sink` at `rate` per second, each due at
/// start + seq / rate, with at most `concurrency` unanswered. A message's latency counts
/// from when the pacer released it, so a wait for a free slot (the system falling behind)
/// is counted, but not the timer's own millisecond granularity.
pub async fn open_loop<S: Sink>(
    sink: Arc<S>,
    n: u64,
    rate: u32,
    concurrency: usize,
    timeout: Duration,
    done: Arc<AtomicU64>,
) -> (Record, Duration) {
    let slots = Arc::new(Semaphore::new(concurrency));
    // One record for all (a histogram is ~200 KB: not one per message).
    let record = Arc::new(Mutex::new(Record::default()));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    let tick = Duration::from_secs(1) / rate;
    for seq in 0..n {
        let due = started + tick * u32::try_from(seq).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due.into()).await;
        let released = Instant::now();
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let (sink, done, record) = (Arc::clone(&sink), Arc::clone(&done), Arc::clone(&record));
        tasks.spawn(async move {
            let _slot = slot;
            let result = bounded(timeout, sink.send(seq)).await;
            let took = released.elapsed();
            record
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .outcome(result, took);
            done.fetch_add(1, Ordering::Relaxed);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let record = record
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    (record, elapsed)
}

/// `send`, or a timeout error after `timeout`.
async fn bounded(
    timeout: Duration,
    send: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(timeout, send)
        .await
        .unwrap_or_else(|_| Err("no answer within --message-timeout-ms".to_owned()))
}

/// Waits for every task and merges their records (a task that panicked counts nothing).
async fn merge(tasks: Vec<tokio::task::JoinHandle<Record>>) -> Record {
    let mut total = Record::default();
    for task in tasks {
        if let Ok(record) = task.await {
            total.merge(&record);
        }
    }
    total
}
