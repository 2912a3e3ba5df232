//! Hardening: the target allowlist, the bearer token, the connection bound, malformed
//! requests, a broker that never answers, and a burst of 10,000 distinct targets.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{ferry, free_address, free_port};
use common::{
    BlackHole, client, config, rabbitmq, send_kafka, send_rabbitmq, settings, start, unique,
};
use ferry::client::{Client, Destination};
use ferry_actors::RetryPolicy;
use ferry_testkit::{kafka, shared_amqp_url, shared_kafka};

/// `error_no` of a target outside the allowlist.
const NOT_ALLOWED: i32 = 7;

#[tokio::test]
async fn targets_outside_the_allowlist_are_refused_and_nothing_is_connected() {
    let brokers = shared_kafka();
    let topic = unique("allow");
    kafka::create_topic(&brokers, &topic).await;
    let url = shared_amqp_url();
    let amqp_server = url
        .trim_start_matches("amqp://guest:guest@")
        .trim_end_matches("/%2f");
    let allowed_exchange = unique("ferry.test.allowed");
    let mut config = config();
    config.access.kafka_brokers = vec![brokers.clone()];
    config.access.rabbitmq = vec![ferry::config::RabbitMqAccess {
        server: amqp_server.to_owned(),
        exchanges: vec![allowed_exchange.clone()],
        vhosts: vec!["/".to_owned()],
        users: vec!["guest".to_owned()],
    }];
    let daemon = start(config.validate().unwrap());
    let mut grpc = client(&daemon).await;
    let hole = BlackHole::new();

    let (answer, _) = send_kafka(&mut grpc, common::kafka(&brokers, &topic, "ok")).await;
    assert_eq!(answer.error_no, 0, "{}", answer.error_message);
    let request = rabbitmq(&url, &allowed_exchange, "k", "ok");
    assert_eq!(send_rabbitmq(&mut grpc, request).await.0.error_no, 0);

    let elsewhere = format!("{brokers},{}", hole.address());
    for brokers in [hole.address(), elsewhere] {
        let (answer, took) = send_kafka(&mut grpc, common::kafka(&brokers, &topic, "x")).await;
        assert_eq!(answer.error_no, NOT_ALLOWED, "{}", answer.error_message);
        assert!(
            answer.error_message.contains(&hole.address()),
            "{}",
            answer.error_message
        );
        assert!(took < Duration::from_millis(100), "{took:?}");
    }
    let other_exchange = rabbitmq(&url, "ferry.test.not.listed", "k", "x");
    let (answer, _) = send_rabbitmq(&mut grpc, other_exchange).await;
    assert_eq!(answer.error_no, NOT_ALLOWED, "{}", answer.error_message);
    // The allowed server and exchange, but a vhost or a user the entry does not name.
    let other_vhost = url.replace("/%2f", "/other");
    let other_user = url.replace("guest:guest@", "admin:x@");
    for (url, what) in [
        (other_vhost, "vhost \"other\""),
        (other_user, "user \"admin\""),
    ] {
        let request = rabbitmq(&url, &allowed_exchange, "k", "x");
        let (answer, _) = send_rabbitmq(&mut grpc, request).await;
        assert_eq!(answer.error_no, NOT_ALLOWED, "{}", answer.error_message);
        assert!(
            answer.error_message.contains(what),
            "{}",
            answer.error_message
        );
    }
    let other_server = rabbitmq(
        &format!("amqp://{}", hole.address()),
        &allowed_exchange,
        "k",
        "x",
    );
    assert_eq!(
        send_rabbitmq(&mut grpc, other_server).await.0.error_no,
        NOT_ALLOWED
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        hole.connections(&mut Vec::new()),
        0,
        "nothing was connected"
    );
    assert_eq!(
        daemon.forwarder().registry().len(),
        2,
        "no producer for refused targets"
    );
}

#[test]
fn listening_beyond_loopback_without_an_allowlist_refuses_to_start() {
    let output = ferry(&["serve", "--listen", &format!("0.0.0.0:{}", free_port())])
        .args(["--ops-listen", &free_address()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("allow_any_target"), "{stderr}");
}

#[tokio::test]
async fn the_bearer_token_is_required_on_every_call_but_not_for_health() {
    let dir = std::env::temp_dir().join(unique("ferry-token"));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "correct-horse-battery-staple\n").unwrap();
    let mut config = config();
    config.access.token_file = token_file.to_str().unwrap().to_owned();
    let daemon = start(config.validate().unwrap());
    let address = daemon.local_addr().to_string();
    let brokers = shared_kafka();
    let topic = unique("token");
    kafka::create_topic(&brokers, &topic).await;

    let mut grpc = client(&daemon).await;
    let status = grpc
        .send_kafka_message(common::kafka(&brokers, &topic, "no token"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    let destination = Destination::Kafka {
        brokers: vec![brokers.clone()],
        topic: topic.clone(),
    };
    let policy = RetryPolicy::default();
    let wrong = Client::new([&address], policy, None)
        .unwrap()
        .with_token("correct-horse-battery-stable")
        .unwrap();
    let refused = wrong
        .send(&destination, Bytes::from("wrong"))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("wrong bearer token"),
        "{refused}"
    );
    let right = Client::new([&address], policy, None)
        .unwrap()
        .with_token("correct-horse-battery-staple")
        .unwrap();
    right
        .send(&destination, Bytes::from("right"))
        .await
        .unwrap();

    let check = ferry(&["check", "--address", &address]).output().unwrap();
    assert_eq!(check.status.code(), Some(0), "health needs no token");
    let received = tokio::task::spawn_blocking(move || {
        kafka::read_topic(&brokers, &topic, 2, Duration::from_secs(3))
    })
    .await
    .unwrap();
    assert_eq!(
        received,
        [b"right".to_vec()],
        "only the authenticated message"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once() {
    let mut config = config();
    config.server.max_connections = 2;
    let daemon = start(config.validate().unwrap());
    let brokers = shared_kafka();
    let topic = unique("conns");
    kafka::create_topic(&brokers, &topic).await;
    let mut first = client(&daemon).await;
    let mut second = client(&daemon).await;
    for grpc in [&mut first, &mut second] {
        let (answer, _) = send_kafka(grpc, common::kafka(&brokers, &topic, "in")).await;
        assert_eq!(answer.error_no, 0, "{}", answer.error_message);
    }
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", daemon.local_addr()))
        .unwrap()
        .connect()
        .await;
    let third = match channel {
        Ok(channel) => ferry::proto::message_broker_client::MessageBrokerClient::new(channel)
            .send_kafka_message(common::kafka(&brokers, &topic, "out"))
            .await
            .map(drop),
        Err(error) => Err(tonic::Status::unavailable(error.to_string())),
    };
    assert!(third.is_err(), "the third connection was served");
    let report = common::report(daemon.ops_addr()).await;
    assert!(
        report.totals.connections_refused >= 1,
        "{:?}",
        report.totals
    );
    assert_eq!(report.totals.connections, 2);
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = client(&daemon).await;
    let (answer, _) = send_kafka(&mut again, common::kafka(&brokers, &topic, "again")).await;
    assert_eq!(
        answer.error_no, 0,
        "a place came back: {}",
        answer.error_message
    );
}

#[tokio::test]
async fn malformed_requests_get_an_error_and_the_daemon_keeps_serving() {
    let daemon = start(settings());
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", daemon.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Field 1 of KafkaMessage is a message; send it as a varint.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Bogus {
        #[prost(uint64, tag = "1")]
        target: u64,
    }
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = "/messagebroker.MessageBroker/SendKafkaMessage"
        .parse()
        .unwrap();
    let codec = tonic_prost::ProstCodec::<Bogus, ferry::proto::Response>::default();
    let status = grpc
        .unary(tonic::Request::new(Bogus { target: 7 }), path, codec)
        .await
        .unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok);
    assert!(!status.message().is_empty(), "{status:?}");

    let mut good = ferry::proto::message_broker_client::MessageBrokerClient::new(channel);
    let (answer, _) = send_kafka(&mut good, common::kafka("", "t", "x")).await;
    assert_eq!(answer.error_no, 1, "still serving");
}

#[tokio::test]
async fn a_broker_that_never_answers_is_answered_within_the_bound_and_leaks_nothing() {
    let hole = BlackHole::new();
    let mut config = config();
    config.policy.timeout_step_ms = 200;
    config.producers.connect_timeout_ms = 300;
    let daemon = start(config.validate().unwrap());
    let bound = Duration::from_millis(600);
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut grpc = client(&daemon).await;
        let hole = hole.address();
        calls.push(tokio::spawn(async move {
            if i % 2 == 0 {
                send_kafka(&mut grpc, common::kafka(&hole, "t", "x")).await
            } else {
                let url = format!("amqp://{hole}");
                send_rabbitmq(&mut grpc, rabbitmq(&url, "ex", "k", "x")).await
            }
        }));
    }
    let mut slowest = Duration::ZERO;
    for call in calls {
        let (answer, took) = call.await.unwrap();
        assert!(matches!(answer.error_no, 2 | 4), "{answer:?}");
        slowest = slowest.max(took);
    }
    assert!(slowest < bound + Duration::from_millis(300), "{slowest:?}");
    assert_eq!(daemon.forwarder().in_flight(), 0);
    for producer in daemon.forwarder().registry().snapshot() {
        assert_eq!(producer.in_flight, 0, "{producer:?}");
    }
    assert!(
        hole.connections(&mut Vec::new()) >= 1,
        "the black hole was reached"
    );
    println!("black hole: 20 calls, slowest answered in {slowest:?} (bound {bound:?})");
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_distinct_targets_keep_the_cap_and_memory_bounded() {
    let targets: usize = std::env::var("FERRY_TEST_TARGETS").map_or(10_000, |n| n.parse().unwrap());
    const CAP: usize = 100;
    let mut config = config();
    config.producers.max_targets = CAP;
    let daemon = start(config.validate().unwrap());
    let registry = daemon.forwarder().registry().clone();
    // Distinct exchanges on a server where nothing listens: each is its own target, and
    // each connection attempt is refused at once.
    let nowhere = format!("amqp://{}", free_address());
    let started = Instant::now();
    let mut rss_after_first_thousand = 0;
    let mut answers = std::collections::BTreeMap::new();
    for chunk in 0..targets / 1_000 {
        let mut calls = Vec::new();
        for lane in 0..16 {
            let mut grpc = client(&daemon).await;
            let nowhere = nowhere.clone();
            calls.push(tokio::spawn(async move {
                let mut codes = Vec::new();
                for i in (lane..1_000).step_by(16) {
                    let exchange = format!("ferry.burst.{}", chunk * 1_000 + i);
                    let request = rabbitmq(&nowhere, &exchange, "k", "x");
                    codes.push(send_rabbitmq(&mut grpc, request).await.0.error_no);
                }
                codes
            }));
        }
        for call in calls {
            for code in call.await.unwrap() {
                *answers.entry(code).or_insert(0usize) += 1;
            }
        }
        assert!(registry.len() <= CAP, "cap held: {}", registry.len());
        if chunk == 0 {
            rss_after_first_thousand = rss_kib();
        }
        if std::env::var_os("FERRY_TEST_TRACE_RSS").is_some() {
            println!(
                "after {} targets: RSS {} KiB, cached {}",
                (chunk + 1) * 1_000,
                rss_kib(),
                registry.len()
            );
        }
    }
    let rss = rss_kib();
    let took = started.elapsed();
    assert_eq!(answers.values().sum::<usize>(), targets);
    assert!(
        answers.keys().all(|code| matches!(code, 4 | 5)),
        "{answers:?}"
    );
    assert!(registry.len() <= CAP);
    assert!(
        registry.evictions()
            >= (targets - CAP) as u64 - answers.get(&5).copied().unwrap_or(0) as u64,
        "evictions {} answers {answers:?}",
        registry.evictions()
    );
    let growth = rss.saturating_sub(rss_after_first_thousand);
    assert!(
        growth < 16 * 1024,
        "RSS grew {growth} KiB from 1,000 to 10,000 targets"
    );
    println!(
        "10k targets: {took:?}, answers {answers:?}, cached {}, evictions {}, \
         RSS {rss_after_first_thousand} KiB after 1,000 and {rss} KiB after 10,000",
        registry.len(),
        registry.evictions()
    );
}

#[tokio::test]
async fn the_ingress_speaks_tls_when_given_a_certificate() {
    let dir = std::env::temp_dir().join(unique("ferry-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let mut config = config();
    config.server.tls_cert_file = cert.to_str().unwrap().to_owned();
    config.server.tls_key_file = key.to_str().unwrap().to_owned();
    let daemon = start(config.validate().unwrap());
    let address = daemon.local_addr().to_string();
    let brokers = shared_kafka();
    let topic = unique("tls");
    kafka::create_topic(&brokers, &topic).await;
    let destination = Destination::Kafka {
        brokers: vec![brokers],
        topic,
    };
    let policy = RetryPolicy::default();

    let over_tls = Client::new([&address], policy, None)
        .unwrap()
        .with_tls(certified.cert.pem().as_bytes())
        .unwrap();
    let delivered = over_tls
        .send(&destination, Bytes::from("tls"))
        .await
        .unwrap();
    assert_eq!(delivered.attempts, 1);
    let plain = Client::new([&address], policy, Some(Duration::from_secs(2))).unwrap();
    assert!(
        plain
            .send(&destination, Bytes::from("plain"))
            .await
            .is_err()
    );

    let check = ferry(&[
        "check",
        "--address",
        &address,
        "--tls-ca",
        cert.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    std::fs::remove_dir_all(dir).unwrap();
}
