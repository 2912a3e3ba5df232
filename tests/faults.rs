//! Broker faults, end to end: unreachable targets answered unavailable within the policy's
//! bound, a missing Kafka topic and an exchange of another type rejected without retries,
//! and a broker killed and restarted failing within the bound, then recovering (its
//! producer restarted). The daemon in process (`common::start`) against real brokers: the
//! shared Kafka (tansu) and RabbitMQ, or a private one of its own for a test that kills it.
//! Invalid requests are `tests/malformed_input.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_testkit::{BrokerKind, PrivateBroker, amqp, kafka, shared_amqp_url, shared_kafka};

/// Error codes of `proto/messagebroker.proto`.
const TIMEOUT: i32 = 2;
const REJECTED: i32 = 3;
const UNAVAILABLE: i32 = 4;

/// Retries `send` until it succeeds or `within` passes; returns how long it took.
async fn until_delivered<F, Fut>(within: Duration, mut send: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ferry::proto::Response>,
{
    let started = Instant::now();
    loop {
        let response = send().await;
        if response.error_no == 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "still failing after {within:?}: {}",
            response.error_message
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn unreachable_targets_are_answered_unavailable_within_the_policy_bound() {
    let daemon = start(settings());
    let mut client = client(&daemon).await;

    let kafka_target = format!("127.0.0.1:{}", dead_port());
    let (response, took) = send_kafka(&mut client, common::kafka(&kafka_target, "t", "x")).await;
    println!(
        "kafka, nothing listening: error_no {} in {took:?}: {}",
        response.error_no, response.error_message
    );
    assert!(
        [UNAVAILABLE, TIMEOUT].contains(&response.error_no),
        "{}",
        response.error_message
    );
    assert!(took < POLICY_BOUND, "{took:?}");

    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", dead_port());
    let (response, took) = send_rabbitmq(&mut client, rabbitmq(&url, "ex", "k", "x")).await;
    println!(
        "rabbitmq, nothing listening: error_no {} in {took:?}: {}",
        response.error_no, response.error_message
    );
    assert_eq!(response.error_no, UNAVAILABLE, "{}", response.error_message);
    assert!(took < POLICY_BOUND, "{took:?}");

    // Both producers failed and were restarted by their supervisor; the daemon still serves.
    assert!(
        stats_of(&daemon, "rabbitmq").restarts >= 1,
        "{:?}",
        stats(&daemon)
    );
    assert_eq!(stats_of(&daemon, "rabbitmq").failed, 1);
    let brokers = shared_kafka();
    let topic = unique("after-unreachable");
    kafka::create_topic(&brokers, &topic).await;
    let (response, _) = send_kafka(&mut client, common::kafka(&brokers, &topic, "ok")).await;
    assert_eq!(response.error_no, 0, "{}", response.error_message);
}

#[tokio::test]
async fn a_missing_kafka_topic_is_rejected_not_retried() {
    let brokers = shared_kafka();
    let daemon = start(settings());
    let mut client = client(&daemon).await;
    let (response, took) = send_kafka(
        &mut client,
        common::kafka(&brokers, &unique("missing"), "x"),
    )
    .await;
    println!(
        "missing topic: error_no {} in {took:?}: {}",
        response.error_no, response.error_message
    );
    assert_eq!(response.error_no, REJECTED, "{}", response.error_message);
    assert_eq!(stats_of(&daemon, "kafka").retried, 0);
}

#[tokio::test]
async fn kafka_broker_killed_then_restarted_fails_within_the_bound_then_recovers() {
    let broker = PrivateBroker::start(BrokerKind::Kafka);
    let address = broker.address();
    let topic = unique("killed");
    kafka::create_topic(&address, &topic).await;
    let daemon = start(settings());
    let mut client = client(&daemon).await;
    let send = |data: &str| common::kafka(&address, &topic, data.to_owned());

    let (response, _) = send_kafka(&mut client, send("before")).await;
    assert_eq!(response.error_no, 0, "{}", response.error_message);

    broker.kill();
    let (response, took) = send_kafka(&mut client, send("while down")).await;
    println!(
        "kafka killed: error_no {} in {took:?}: {}",
        response.error_no, response.error_message
    );
    assert_ne!(response.error_no, 0);
    assert!(took < POLICY_BOUND, "{took:?}");

    broker.restart();
    let recovered = until_delivered(Duration::from_secs(20), || {
        let request = send("after");
        let mut c = client.clone();
        async move { send_kafka(&mut c, request).await.0 }
    })
    .await;
    println!("kafka restarted: delivering again after {recovered:?}");
    let producer = stats_of(&daemon, "kafka");
    assert!(producer.restarts >= 1, "{producer:?}");
    let received = tokio::task::spawn_blocking(move || {
        kafka::read_topic(&address, &topic, 3, Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(received.contains(&b"before".to_vec()) && received.contains(&b"after".to_vec()));
}

#[tokio::test]
async fn rabbitmq_broker_killed_then_restarted_fails_within_the_bound_then_recovers() {
    let broker = PrivateBroker::start(BrokerKind::RabbitMq);
    let url = broker.amqp_url();
    let exchange = "ferry.test.killed";
    let queue = unique("killed");
    amqp::bind_queue(&url, exchange, &queue, "#").await;
    let daemon = start(settings());
    let mut client = client(&daemon).await;
    let send = |data: &str| rabbitmq(&url, exchange, "k", data.to_owned());

    let (response, _) = send_rabbitmq(&mut client, send("before")).await;
    assert_eq!(response.error_no, 0, "{}", response.error_message);

    broker.kill();
    let (response, took) = send_rabbitmq(&mut client, send("while down")).await;
    println!(
        "rabbitmq killed: error_no {} in {took:?}: {}",
        response.error_no, response.error_message
    );
    assert_eq!(response.error_no, UNAVAILABLE, "{}", response.error_message);
    assert!(took < POLICY_BOUND, "{took:?}");

    broker.restart();
    let recovered = until_delivered(Duration::from_secs(20), || {
        let request = send("after");
        let mut c = client.clone();
        async move { send_rabbitmq(&mut c, request).await.0 }
    })
    .await;
    println!("rabbitmq restarted: delivering again after {recovered:?}");
    let producer = stats_of(&daemon, "rabbitmq");
    assert!(producer.restarts >= 1, "{producer:?}");
    // Persistent messages in a durable queue survive the crash.
    let bodies: Vec<_> = amqp::read_queue(&url, &queue, 2, Duration::from_secs(5))
        .await
        .into_iter()
        .map(|m| m.data)
        .collect();
    assert_eq!(bodies, [b"before".to_vec(), b"after".to_vec()]);
}

#[tokio::test]
async fn an_exchange_of_another_type_is_rejected_not_retried() {
    let url = shared_amqp_url();
    let exchange = unique("ferry.test.direct");
    // Someone declared the exchange as `direct`; ferry declares `topic`, as its predecessor did.
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let daemon = start(settings());
    let mut client = client(&daemon).await;
    for _ in 0..2 {
        let (response, took) =
            send_rabbitmq(&mut client, rabbitmq(&url, &exchange, "k", "x")).await;
        println!(
            "exchange of another type: error_no {} in {took:?}: {}",
            response.error_no, response.error_message
        );
        assert_eq!(response.error_no, REJECTED, "{}", response.error_message);
        assert!(
            response.error_message.contains("PRECONDITION"),
            "{}",
            response.error_message
        );
    }
    assert_eq!(stats_of(&daemon, "rabbitmq").retried, 0);
    let _ = connection.close(200, "done".into()).await;
}
