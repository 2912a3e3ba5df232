//! Who may send what, end to end: targets outside the `[access]` allowlist refused with
//! nothing connected, a daemon listening beyond loopback without an allowlist refusing to
//! start, the bearer token required on every call (but not for health), the ingress
//! speaking TLS, and calls without the token logged at a bounded rate. Real Kafka (tansu)
//! and RabbitMQ; the daemon in process (`common::start`), or as a `ferry serve` child
//! where its exit code or its log is what is checked. Access per caller (several clients,
//! client certificates) is `tests/clients.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{
    config_file, ferry, free_address, free_port, logged_within_budget, scratch_dir, serve_logged,
};
use common::{BlackHole, client, config, rabbitmq, send_kafka, send_rabbitmq, start, unique};
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
    // A message too large to decode is refused for the token first, not answered error 1.
    let status = grpc
        .send_kafka_message(common::kafka(&brokers, &topic, vec![b'x'; 5_000_000]))
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

#[tokio::test]
async fn calls_without_the_token_are_logged_at_a_bounded_rate() {
    let dir = scratch_dir("token-log-rate");
    let token = dir.join("token");
    std::fs::write(&token, "a-token-of-sixteen-or-more").unwrap();
    let config = config_file(
        &dir,
        &format!("[access]\ntoken_file = {:?}\n", token.to_str().unwrap()),
    );
    let log = dir.join("ferry.log");
    let daemon = serve_logged(&free_address(), &["--config", &config], &log);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", daemon.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let mut grpc = ferry::proto::message_broker_client::MessageBrokerClient::new(channel);
    for _ in 0..2_000 {
        let refused = grpc
            .send_kafka_message(common::kafka("k:9092", "t", "x"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
    let seconds = started.elapsed().as_secs() + 1;
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = logged_within_budget(&text, "Call refused", seconds);
    println!("2,000 calls without the token in {seconds} s: {lines} log lines");
}
