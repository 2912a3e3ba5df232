//! Fault injection under sustained load: messages at a steady rate while the broker is
//! killed with SIGKILL and restarted. Every message answered 0 must be in the broker with
//! its content, every other message must have been answered with an error, no call may
//! outlast the policy's bound, delivery must resume soon after the broker's return, and
//! the daemon keeps running throughout.
//!
//! CI runs a short version (10 s at 1,000 msg/s, and on until 5 s after the broker's
//! return; broker down for 3 s plus its restart). The full length of the issue (30 s,
//! down 5 s) is one command:
//! `FERRY_FAULT_SECONDS=30 FERRY_FAULT_DOWN_SECONDS=5 scripts/test --test crash_under_load -- --nocapture`

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{config, start, unique};
use ferry::proto::message_broker_client::MessageBrokerClient;
use ferry_testkit::{BrokerKind, PrivateBroker, amqp, kafka};
use tonic::transport::Channel;

/// Messages per second.
const RATE: u64 = 1_000;
/// gRPC connections the load is spread over.
const CONNECTIONS: usize = 8;
/// The default policy's bound (2 s + 4 s), plus scheduling slack on a loaded machine.
const CALL_BOUND: Duration = Duration::from_millis(6_500);
/// How soon after the broker is back delivery must work again.
const RECOVERY_BOUND: Duration = Duration::from_secs(3);
/// How long the load goes on after the broker is back.
const AFTER_RETURN: Duration = Duration::from_secs(5);

/// A number from the environment, or `default`.
fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().expect("a number of seconds"))
}

/// One call's outcome.
#[derive(Debug, Clone)]
struct Outcome {
    /// The message body (unique).
    body: String,
    /// When it was sent, from the start of the load.
    sent_at: Duration,
    /// `error_no`, or `None` for a gRPC-level failure.
    error_no: Option<i32>,
    /// How long the call took.
    took: Duration,
}

/// Where the load goes.
#[derive(Clone)]
enum Sink {
    Kafka { brokers: String, topic: String },
    Rabbit { url: String, exchange: String },
}

async fn send(grpc: &mut MessageBrokerClient<Channel>, sink: &Sink, body: &str) -> Option<i32> {
    let answer = match sink {
        Sink::Kafka { brokers, topic } => {
            grpc.send_kafka_message(common::kafka(brokers, topic, body.to_owned()))
                .await
        }
        Sink::Rabbit { url, exchange } => {
            grpc.send_rabbit_mq_message(common::rabbitmq(url, exchange, "load", body.to_owned()))
                .await
        }
    };
    answer.ok().map(|a| a.into_inner().error_no)
}

/// The two tests each load the machine fully: run them one after the other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn crash_under_load(kind: BrokerKind) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let seconds = env_secs("FERRY_FAULT_SECONDS", 10);
    let down = Duration::from_secs(env_secs("FERRY_FAULT_DOWN_SECONDS", 3));
    let kill_at = Duration::from_secs(seconds / 4);
    let broker = Arc::new(PrivateBroker::start(kind));
    let (sink, queue) = match kind {
        BrokerKind::Kafka => {
            let topic = unique("crash");
            kafka::create_topic(&broker.address(), &topic).await;
            let sink = Sink::Kafka {
                brokers: broker.address(),
                topic,
            };
            (sink, None)
        }
        BrokerKind::RabbitMq => {
            let exchange = unique("ferry.test.crash");
            let queue = unique("crash");
            amqp::bind_queue(&broker.amqp_url(), &exchange, &queue, "#").await;
            let sink = Sink::Rabbit {
                url: broker.amqp_url(),
                exchange,
            };
            (sink, Some(queue))
        }
    };
    let daemon = start(config().validate().unwrap());
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(common::client(&daemon).await);
    }

    // The crash: SIGKILL at a quarter of the run, restart `down` later.
    let started = Instant::now();
    let back = Arc::new(OnceLock::new());
    let crash = {
        let (broker, back) = (broker.clone(), back.clone());
        tokio::spawn(async move {
            tokio::time::sleep(kill_at).await;
            let killed = started.elapsed();
            let broker2 = broker.clone();
            tokio::task::spawn_blocking(move || broker2.kill())
                .await
                .unwrap();
            tokio::time::sleep(down).await;
            tokio::task::spawn_blocking(move || broker.restart())
                .await
                .unwrap();
            let _ = back.set(started.elapsed());
            killed
        })
    };

    // The load: RATE messages per second, each its own call, for `seconds` and at least
    // AFTER_RETURN past the broker's return (a RabbitMQ node takes seconds to boot).
    let mut calls = common::paced(
        RATE,
        || {
            let now = started.elapsed();
            let returned = back.get().is_some_and(|back| now >= *back + AFTER_RETURN);
            !(now >= Duration::from_secs(seconds) && returned)
        },
        |n| {
            let mut grpc = clients[n as usize % CONNECTIONS].clone();
            let sink = sink.clone();
            async move {
                let body = format!("m{n}");
                let sent_at = started.elapsed();
                let error_no = send(&mut grpc, &sink, &body).await;
                Outcome {
                    body,
                    sent_at,
                    error_no,
                    took: started.elapsed() - sent_at,
                }
            }
        },
    )
    .await;
    let total = calls.len() as u64;
    let mut outcomes = Vec::new();
    while let Some(outcome) = calls.join_next().await {
        outcomes.push(outcome.unwrap());
    }
    let killed_at = crash.await.unwrap();
    let back_at = *back.get().unwrap();

    let mut codes: BTreeMap<Option<i32>, usize> = BTreeMap::new();
    for outcome in &outcomes {
        *codes.entry(outcome.error_no).or_default() += 1;
    }
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap();
    let delivered: BTreeSet<&str> = outcomes
        .iter()
        .filter(|o| o.error_no == Some(0))
        .map(|o| o.body.as_str())
        .collect();
    let first_after_return = outcomes
        .iter()
        .filter(|o| o.error_no == Some(0) && o.sent_at >= back_at)
        .map(|o| o.sent_at)
        .min();
    let failed_after_recovery: Vec<_> = outcomes
        .iter()
        .filter(|o| o.error_no != Some(0) && o.sent_at >= back_at + RECOVERY_BOUND)
        .collect();

    // What the broker holds.
    let quiet = Duration::from_secs(3);
    let in_broker: BTreeSet<Vec<u8>> = match (&sink, &queue) {
        (Sink::Kafka { brokers, topic }, _) => {
            let (brokers, topic) = (brokers.clone(), topic.clone());
            tokio::task::spawn_blocking(move || {
                kafka::drain_topic(&brokers, &topic, quiet, Duration::from_secs(120))
            })
            .await
            .unwrap()
            .into_iter()
            .collect()
        }
        (Sink::Rabbit { url, .. }, Some(queue)) => {
            amqp::drain_queue(url, queue, quiet, Duration::from_secs(120))
                .await
                .into_iter()
                .map(|m| m.data)
                .collect()
        }
        _ => unreachable!(),
    };
    let missing: Vec<&&str> = delivered
        .iter()
        .filter(|body| !in_broker.contains(body.as_bytes()))
        .collect();
    let producers = daemon.forwarder().registry().snapshot();
    println!(
        "{kind:?}: {total} messages over {:.1?}; killed at {killed_at:.1?}, back at \
         {back_at:.1?}; answers {codes:?}; slowest call {slowest:.2?}; first delivery after \
         the return {:.2?} later; {} answered 0, all {} found in the broker ({} records \
         there); producer restarts {}",
        started.elapsed(),
        first_after_return.map(|t| t - back_at),
        delivered.len(),
        delivered.len() - missing.len(),
        in_broker.len(),
        producers.iter().map(|p| p.restarts).sum::<u64>(),
    );

    assert_eq!(outcomes.len() as u64, total, "every call was answered");
    assert!(
        missing.is_empty(),
        "answered 0 but not in the broker: {missing:?}"
    );
    assert!(
        !codes.contains_key(&None),
        "every call got an answer, not a gRPC failure: {codes:?}"
    );
    assert!(slowest <= CALL_BOUND, "a call took {slowest:?}");
    let recovered = first_after_return.expect("deliveries after the broker returned");
    assert!(
        recovered - back_at <= RECOVERY_BOUND,
        "recovered {:?} after the return",
        recovered - back_at
    );
    assert!(
        failed_after_recovery.is_empty(),
        "failures long after the return: {:?}",
        &failed_after_recovery[..failed_after_recovery.len().min(5)]
    );
    assert!(
        codes.get(&Some(0)).copied().unwrap_or(0) > 0 && codes.len() > 1,
        "the crash was felt: {codes:?}"
    );
    assert!(producers.iter().map(|p| p.restarts).sum::<u64>() >= 1);
    // The daemon kept serving: it still answers, in the same process.
    let mut grpc = clients[0].clone();
    let body = format!("after-{}", unique("x"));
    assert_eq!(send(&mut grpc, &sink, &body).await, Some(0));
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_crash_under_load_loses_nothing_answered_delivered() {
    crash_under_load(BrokerKind::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_crash_under_load_loses_nothing_answered_delivered() {
    crash_under_load(BrokerKind::RabbitMq).await;
}
