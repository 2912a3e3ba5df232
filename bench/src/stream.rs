//! The `stream` path: one `ferry.v1.Ingest` stream per connection, each keeping its share
//! of the concurrency in flight and matching acks to requests by id.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry::proto::ferry::v1::ingest_client::IngestClient;
use ferry::proto::ferry::v1::ingest_request::Message;
use ferry::proto::ferry::v1::{IngestAck, IngestRequest};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::BenchError;
use crate::plan::Plan;
use crate::record::Record;
use crate::unary::Request;

/// Sends `n` messages of `plan` over one stream per channel, `plan.concurrency` in flight
/// in all; returns the merged record and the wall time.
pub async fn run(
    channels: &[Channel],
    plan: &Plan,
    n: u64,
    done: Arc<AtomicU64>,
) -> Result<(Record, Duration), BenchError> {
    let streams = channels.len() as u64;
    let window = plan.concurrency.div_ceil(channels.len());
    let messages: Arc<Vec<Message>> = Arc::new(
        Request::all(plan)
            .into_iter()
            .map(|request| match request {
                Request::Kafka(m) => Message::Kafka(m),
                Request::RabbitMq(m) => Message::Rabbitmq(m),
            })
            .collect(),
    );
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(channels.len());
    for (i, channel) in (0_u64..).zip(channels) {
        // Split n as evenly as possible.
        let share = n / streams + u64::from(i < n % streams);
        let one = stream_one(
            channel.clone(),
            Arc::clone(&messages),
            share,
            window,
            plan.message_timeout,
            Arc::clone(&done),
        );
        tasks.push(tokio::spawn(one));
    }
    let mut total = Record::default();
    for task in tasks {
        match task.await {
            Ok(Ok(record)) => total.merge(&record),
            Ok(Err(error)) => return Err(error),
            Err(_) => {}
        }
    }
    Ok((total, started.elapsed()))
}

/// One stream: sends `n` messages, at most `window` unanswered, and records each ack.
async fn stream_one(
    channel: Channel,
    messages: Arc<Vec<Message>>,
    n: u64,
    window: usize,
    timeout: Duration,
    done: Arc<AtomicU64>,
) -> Result<Record, BenchError> {
    let mut record = Record::default();
    if n == 0 {
        return Ok(record);
    }
    let slots = Arc::new(Semaphore::new(window));
    // When message i was handed to the stream, in ns since `epoch`.
    let epoch = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let (requests, outgoing) = mpsc::channel(window);
    let feeder = {
        let (slots, sent_at) = (Arc::clone(&slots), Arc::clone(&sent_at));
        tokio::spawn(async move {
            for id in 0..n {
                let Ok(slot) = slots.acquire().await else {
                    return;
                };
                slot.forget();
                let ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                sent_at[usize::try_from(id).unwrap_or(0)].store(ns, Ordering::Relaxed);
                let index = usize::try_from(id).unwrap_or(0) % messages.len();
                let request = IngestRequest {
                    id,
                    message: Some(messages[index].clone()),
                };
                if requests.send(request).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut acks = IngestClient::new(channel)
        .stream(ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    let mut answered = 0;
    while answered < n {
        let next = tokio::time::timeout(timeout, acks.message()).await;
        let ack: IngestAck = match next {
            Ok(Ok(Some(ack))) => ack,
            Ok(Ok(None)) => {
                *record
                    .errors
                    .entry("stream ended early".to_owned())
                    .or_default() += n - answered;
                break;
            }
            Ok(Err(status)) => {
                *record
                    .errors
                    .entry(format!("grpc {:?}", status.code()))
                    .or_default() += n - answered;
                break;
            }
            Err(_) => {
                *record
                    .errors
                    .entry("no ack within --message-timeout-ms".to_owned())
                    .or_default() += n - answered;
                break;
            }
        };
        answered += 1;
        slots.add_permits(1);
        done.fetch_add(1, Ordering::Relaxed);
        let sent = sent_at
            .get(usize::try_from(ack.id).unwrap_or(usize::MAX))
            .map_or(0, |t| t.load(Ordering::Relaxed));
        let took = epoch.elapsed().saturating_sub(Duration::from_nanos(sent));
        let result = match ack.response.map_or(-1, |r| r.error_no) {
            0 => Ok(()),
            error_no => Err(format!("error_no {error_no}")),
        };
        record.outcome(result, took);
    }
    feeder.abort();
    Ok(record)
}
