//! End-to-end through the real binaries: `ferry serve` forwards what `ferry send`
//! sends, stops cleanly on SIGTERM, and refuses a bad config with exit code 64.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

use std::process::Command;
use std::time::{Duration, Instant};

use ferry_testkit::{amqp, kafka, shared_amqp_url, shared_kafka};

mod common;

use common::process::{FERRY, free_address, serve};

#[tokio::test]
async fn ferry_send_through_ferry_serve_reaches_both_brokers() {
    let brokers = shared_kafka();
    let topic = kafka::unique_topic("binary");
    kafka::create_topic(&brokers, &topic).await;
    let url = shared_amqp_url();
    let exchange = kafka::unique_topic("ferry.test.binary");
    let queue = kafka::unique_topic("binary");
    amqp::bind_queue(&url, &exchange, &queue, "#").await;
    let listen = free_address();
    let daemon = serve(&listen);

    let kafka_send = Command::new(FERRY)
        .args(["send", "kafka", "--brokers", &brokers, "--topic", &topic])
        .args(["--data", "via the binary", "--proxy", &listen])
        .output()
        .unwrap();
    assert!(
        kafka_send.status.success(),
        "{}",
        String::from_utf8_lossy(&kafka_send.stderr)
    );
    let rabbit_send = Command::new(FERRY)
        .args([
            "send",
            "rabbitmq",
            "--server",
            &url,
            "--exchange",
            &exchange,
        ])
        .args([
            "--routing-key",
            "a.b",
            "--data",
            "via the binary",
            "--proxy",
            &listen,
        ])
        .output()
        .unwrap();
    assert!(
        rabbit_send.status.success(),
        "{}",
        String::from_utf8_lossy(&rabbit_send.stderr)
    );

    // A message that cannot be delivered: exit 1 and one line on stderr naming the cause.
    let missing = Command::new(FERRY)
        .args([
            "send",
            "kafka",
            "--brokers",
            &brokers,
            "--topic",
            "no-such-topic",
        ])
        .args(["--data", "x", "--proxy", &listen])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("error_no 3"), "{stderr}");

    let (code, took) = daemon.terminate();
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert!(took < Duration::from_secs(5), "{took:?}");

    let received = tokio::task::spawn_blocking(move || {
        kafka::read_topic(&brokers, &topic, 1, Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert_eq!(received, [b"via the binary".to_vec()]);
    let received = amqp::read_queue(&url, &queue, 1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].data, b"via the binary");
}

#[test]
fn a_bad_config_exits_64_naming_the_field() {
    let dir = std::env::temp_dir().join(kafka::unique_topic("ferry-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ferry.toml");
    std::fs::write(&path, "[policy]\nmax_attempts = 0\n").unwrap();
    let output = Command::new(FERRY)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("policy.max_attempts"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_daemon_is_not_reachable_when_down_and_send_says_so() {
    let listen = free_address();
    let started = Instant::now();
    let output = Command::new(FERRY)
        .args(["send", "kafka", "--brokers", "127.0.0.1:9", "--topic", "t"])
        .args(["--data", "x", "--proxy", &listen])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
}
