//! Signals, end to end, on the real `ferry` binary as a child process: SIGHUP never ends
//! the daemon, a second SIGTERM ends the shutdown grace at once, SIGTERM under load loses
//! nothing that was answered delivered, and messages still waiting when the grace ends are
//! answered 6 (shutting down). Real Kafka (tansu) and RabbitMQ, and a black-hole listener
//! for messages that must still be waiting.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::process::{
    config_file, ferry, free_address, scratch_dir, serve, serve_configured, serve_logged,
    serve_with,
};
use common::{BlackHole, client_at, rabbitmq, send_kafka, unique};
use ferry_testkit::{amqp, kafka, shared_amqp_url, shared_kafka};

/// `error_no` values.
const SHUTTING_DOWN: i32 = 6;

#[tokio::test]
async fn sighup_never_kills_the_daemon_and_it_keeps_serving() {
    let dir = scratch_dir("sighup");
    let pid_file = dir.join("ferry.pid");
    let config = config_file(
        &dir,
        &format!("[ops]\npid_file = {:?}\n", pid_file.to_str().unwrap()),
    );
    let log = dir.join("ferry.log");
    let mut daemon = serve_logged(&free_address(), &["--config", &config], &log);
    let brokers = shared_kafka();
    let topic = unique("sighup");
    kafka::create_topic(&brokers, &topic).await;
    // One at a time: a signal sent while the same one is still pending is merged with it.
    let logged = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("Received SIGHUP")
            .count()
    };
    for n in 1..=3 {
        daemon.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(5);
        while logged() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(daemon.running(), "SIGHUP killed the daemon");
        assert_eq!(logged(), n, "SIGHUP {n} was not logged");
    }
    let sent = ferry(&[
        "send",
        "kafka",
        "--proxy",
        &daemon.address,
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--data",
        "after hup",
    ])
    .output()
    .unwrap();
    assert!(sent.status.success(), "{sent:?}");
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    assert!(!pid_file.exists(), "the pid file is removed at exit");
    assert_eq!(logged(), 3);
}

#[tokio::test]
async fn a_second_sigterm_ends_the_shutdown_grace_at_once() {
    let hole = BlackHole::new();
    let mut daemon = serve_configured(
        "second-term",
        "[server]\nshutdown_grace_ms = 30000\n[policy]\ntimeout_step_ms = 20000\nmax_attempts = 1\n",
    );
    let mut grpc = client_at(&daemon.address).await;
    let brokers = hole.address();
    let call =
        tokio::spawn(async move { send_kafka(&mut grpc, common::kafka(&brokers, "t", "x")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        daemon.running(),
        "the first SIGTERM waits for the grace period"
    );
    daemon.signal("TERM");
    let (code, took) = tokio::task::spawn_blocking(move || daemon.wait())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(
        took < Duration::from_secs(3),
        "exit took {took:?} after the second SIGTERM"
    );
    let (answer, _) = call.await.unwrap();
    assert_eq!(answer.error_no, SHUTTING_DOWN, "{answer:?}");
    println!("second SIGTERM: exited {took:?} later; the message in flight was answered 6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_that_was_answered_delivered() {
    const SENDERS: usize = 32;
    let daemon = serve(&free_address());
    let url = shared_amqp_url();
    let exchange = unique("ferry.test.drain");
    let queue = unique("drain");
    amqp::bind_queue(&url, &exchange, &queue, "#").await;
    let endpoint = format!("http://{}", daemon.address);

    // Senders on 4 connections, each sending one message after another until the
    // daemon stops answering; every answer is recorded.
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let endpoint = endpoint.clone();
        let (url, exchange) = (url.clone(), exchange.clone());
        tasks.push(tokio::spawn(async move {
            let channel = tonic::transport::Channel::from_shared(endpoint)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut grpc = ferry::proto::message_broker_client::MessageBrokerClient::new(channel);
            let mut answers = Vec::new();
            for i in 0.. {
                let body = format!("{sender}-{i}");
                let request = rabbitmq(&url, &exchange, "drain", body.clone());
                match grpc.send_rabbit_mq_message(request).await {
                    Ok(answer) => answers.push((body, Some(answer.into_inner().error_no))),
                    Err(_) => {
                        answers.push((body, None));
                        break;
                    }
                }
                if answers.last().is_some_and(|(_, code)| *code == Some(6)) {
                    break;
                }
            }
            answers
        }));
        if sender % (SENDERS / 4) == SENDERS / 4 - 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let signalled = Instant::now();
    let exit = tokio::task::spawn_blocking(move || daemon.terminate());
    let mut answered = Vec::new();
    for task in tasks {
        answered.extend(task.await.unwrap());
    }
    let (code, took) = exit.await.unwrap();
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert!(
        took < Duration::from_secs(7),
        "exit took {took:?} (grace 7 s)"
    );

    let delivered: BTreeSet<Vec<u8>> = answered
        .iter()
        .filter(|(_, code)| *code == Some(0))
        .map(|(body, _)| body.clone().into_bytes())
        .collect();
    let refused = answered.iter().filter(|(_, code)| *code == Some(6)).count();
    let cut = answered.iter().filter(|(_, code)| code.is_none()).count();
    let other: Vec<_> = answered
        .iter()
        .filter(|(_, code)| !matches!(code, None | Some(0) | Some(6)))
        .collect();
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert!(
        delivered.len() > 100,
        "load was sustained: {}",
        delivered.len()
    );
    let received = amqp::read_queue(&url, &queue, delivered.len(), Duration::from_secs(10)).await;
    let received: BTreeSet<Vec<u8>> = received.into_iter().map(|m| m.data).collect();
    let missing: Vec<_> = delivered.difference(&received).collect();
    assert!(
        missing.is_empty(),
        "answered 0 but not in the broker: {missing:?}"
    );
    println!(
        "drain: {} answered 0 (all in the broker), {refused} answered 6, {cut} calls refused \
         at the transport after the stop; exit 0 after {took:?} ({:?} since SIGTERM)",
        delivered.len(),
        signalled.elapsed()
    );
}

#[test]
fn messages_still_waiting_when_the_grace_ends_are_answered_shutting_down() {
    // A Kafka "broker" that accepts TCP and never answers: a message to it waits for
    // its whole policy budget (6 s), longer than this daemon's 500 ms grace.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = black_hole.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(unique("ferry-grace"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ferry.toml");
    std::fs::write(&config, "[server]\nshutdown_grace_ms = 500\n").unwrap();
    let daemon = serve_with(&free_address(), &["--config", config.to_str().unwrap()]);
    let sending = ferry(&[
        "send",
        "kafka",
        "--brokers",
        &hole,
        "--topic",
        "t",
        "--data",
        "x",
    ])
    .args([
        "--proxy",
        &daemon.address,
        "--attempts",
        "1",
        "--attempt-timeout-ms",
        "10000",
    ])
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (code, took) = daemon.terminate();
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_millis(2500), "{took:?}");
    let output = sending.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("error_no 6"), "{stderr}");
    drop(black_hole);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The next datagram on systemd's notify socket, as text.
fn notified(socket: &std::os::unix::net::UnixDatagram) -> String {
    let mut buffer = [0u8; 4096];
    let n = socket
        .recv(&mut buffer)
        .expect("a notification within 10 s");
    String::from_utf8_lossy(&buffer[..n]).trim_end().to_owned()
}

/// A child process, killed and reaped if still running when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn systemd_hears_ready_once_serving_then_reloading_and_stopping() {
    let dir = scratch_dir("notify");
    let path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let config = config_file(&dir, &format!("[spool]\ndir = {:?}\n", dir.join("spool")));
    let (listen, ops) = (free_address(), free_address());
    let mut daemon = Reaped(
        ferry(&["serve", "--listen", &listen, "--ops-listen", &ops])
            .args(["--config", &config])
            .env("NOTIFY_SOCKET", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let kill = |signal: &str| {
        let pid = daemon.0.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    };

    // READY=1 means serving: both listeners accept at once.
    assert_eq!(notified(&socket), "READY=1");
    for address in [&listen, &ops] {
        std::net::TcpStream::connect(address).expect("serving when READY=1 was sent");
    }
    kill("-HUP");
    assert_eq!(notified(&socket), "RELOADING=1");
    assert_eq!(notified(&socket), "READY=1");
    kill("-TERM");
    assert_eq!(notified(&socket), "STOPPING=1");
    assert_eq!(daemon.0.wait().unwrap().code(), Some(0));
}
