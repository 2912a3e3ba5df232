//! Hardening, round two: requests and clients that once aborted the daemon, sent a
//! caller's message and credentials to another host, killed it with a signal, or held its
//! connection places and memory without limit in time. Each test names the behaviour it
//! pins, against the real daemon and brokers.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{ferry, free_address, scratch_dir, serve_logged, serve_with};
use common::{
    BlackHole, client, client_at, config, rabbitmq, report, send_kafka, send_rabbitmq, start,
    unique,
};
use ferry_testkit::{kafka, shared_amqp_url, shared_kafka};

/// `error_no` values.
const INVALID: i32 = 1;
const OVERLOADED: i32 = 5;
const SHUTTING_DOWN: i32 = 6;

/// Writes a daemon config file into `dir` and returns its path.
fn config_file(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A `ferry serve` child on a free address with the config `text`.
fn serve_configured(name: &str, text: &str) -> common::process::Served {
    let config = config_file(&scratch_dir(name), text);
    serve_with(&free_address(), &["--config", &config])
}

/// Threads and open file descriptors of process `pid`.
fn threads_and_fds(pid: &str) -> (usize, usize) {
    let count = |what| {
        std::fs::read_dir(format!("/proc/{pid}/{what}"))
            .unwrap()
            .count()
    };
    (count("task"), count("fd"))
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn an_amqp_url_with_a_huge_frame_max_is_refused_and_the_daemon_keeps_serving() {
    // This request once made the AMQP client allocate 137 GB, and the daemon aborted.
    let daemon = start(config().validate().unwrap());
    let mut grpc = client(&daemon).await;
    let url = shared_amqp_url();
    for query in ["frame_max=4294967295", "frame_max=1048576", "cacertfile=/x"] {
        let hostile = format!("{url}?{query}");
        let (answer, _) =
            send_rabbitmq(&mut grpc, rabbitmq(&hostile, "ferry.hostile", "k", "x")).await;
        assert_eq!(answer.error_no, INVALID, "{query}: {answer:?}");
        assert!(answer.error_message.contains("server"), "{answer:?}");
    }
    assert!(
        daemon.forwarder().registry().is_empty(),
        "nothing was connected"
    );
    let exchange = unique("ferry.frames");
    let (answer, _) = send_rabbitmq(&mut grpc, rabbitmq(&url, &exchange, "k", "ok")).await;
    assert_eq!(answer.error_no, 0, "still serving: {answer:?}");
    let (answer, _) = send_rabbitmq(
        &mut grpc,
        rabbitmq(&format!("{url}?frame_max=16384"), &exchange, "k", "ok"),
    )
    .await;
    assert_eq!(answer.error_no, 0, "a frame_max in range works: {answer:?}");
}

#[tokio::test]
async fn an_ipv6_amqp_url_is_sent_to_that_address_and_never_to_localhost() {
    // The test RabbitMQ listens on 127.0.0.1 only: nothing answers on [::1].
    let daemon = start(config().validate().unwrap());
    let mut grpc = client(&daemon).await;
    let url = shared_amqp_url();
    let port = url.rsplit_once(':').unwrap().1.split('/').next().unwrap();
    let ipv6 = format!("amqp://guest:guest@[::1]:{port}/%2f");
    let exchange = unique("ferry.ipv6");
    let (answer, _) = send_rabbitmq(&mut grpc, rabbitmq(&ipv6, &exchange, "k", "x")).await;
    assert_eq!(answer.error_no, 4, "{answer:?}");
    // The same through IPv4 reaches the broker.
    let ipv4 = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let (answer, _) = send_rabbitmq(&mut grpc, rabbitmq(&ipv4, &exchange, "k", "x")).await;
    assert_eq!(answer.error_no, 0, "{answer:?}");
}

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

#[tokio::test]
async fn idle_sockets_give_their_connection_places_back_after_the_handshake_timeout() {
    let mut config = config();
    config.server.max_connections = 20;
    config.server.handshake_timeout_ms = 1_000;
    let daemon = start(config.validate().unwrap());
    let idle: Vec<_> = (0..20)
        .map(|_| std::net::TcpStream::connect(daemon.local_addr()).unwrap())
        .collect();
    let opened = Instant::now();
    let brokers = shared_kafka();
    let topic = unique("idle-sockets");
    kafka::create_topic(&brokers, &topic).await;
    let mut refused = 0;
    let recovered = loop {
        let attempt = async {
            let mut grpc = client(&daemon).await;
            grpc.send_kafka_message(common::kafka(&brokers, &topic, "x"))
                .await
                .map(|r| r.into_inner())
        };
        match tokio::time::timeout(Duration::from_millis(500), attempt).await {
            Ok(Ok(answer)) if answer.error_no == 0 => break opened.elapsed(),
            _ => refused += 1,
        }
        assert!(
            opened.elapsed() < Duration::from_secs(5),
            "no place came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused >= 1, "the idle sockets did hold every place");
    let report = report(daemon.ops_addr()).await;
    assert!(
        report.totals.connections_timed_out >= 20,
        "{:?}",
        report.totals
    );
    assert!(recovered >= Duration::from_millis(900), "{recovered:?}");
    println!(
        "20 idle sockets at max_connections = 20: a call went through after {recovered:?} (handshake_timeout_ms = 1000)"
    );
    drop(idle);
}

/// Opens a raw HTTP/2 connection to `addr`.
async fn h2_client(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    send.ready().await.unwrap()
}

/// Starts a unary call whose gRPC frame announces `announced` bytes and sends only `sent`
/// of them, then stalls; returns the response future and the body sender (kept open).
async fn stalled_call(
    send: &mut h2::client::SendRequest<Bytes>,
    announced: u32,
    sent: usize,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    stalled_at(
        send,
        "/messagebroker.MessageBroker/SendKafkaMessage",
        announced,
        sent,
    )
    .await
}

/// [`stalled_call`] to the gRPC method at `path`.
async fn stalled_at(
    send: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    announced: u32,
    sent: usize,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let request = http::Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = send.send_request(request, false).unwrap();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&announced.to_be_bytes());
    frame.resize(5 + sent, b'x');
    body.reserve_capacity(frame.len());
    body.send_data(Bytes::from(frame), false).unwrap();
    (response, body)
}

/// The grpc-status of a finished response (headers-only or in the trailers).
async fn grpc_status(response: h2::client::ResponseFuture) -> String {
    grpc_outcome(response).await.0
}

/// `text` with its `%XX` escapes decoded (grpc-message is percent-encoded).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The grpc-status and grpc-message of a finished response (headers-only or in the
/// trailers).
async fn grpc_outcome(response: h2::client::ResponseFuture) -> (String, String) {
    let field = |map: &http::HeaderMap, name| {
        map.get(name)
            .map_or("none".to_owned(), |v| percent_decoded(v.to_str().unwrap()))
    };
    let response = response.await.unwrap();
    if response.headers().contains_key("grpc-status") {
        let headers = response.headers();
        return (
            field(headers, "grpc-status"),
            field(headers, "grpc-message"),
        );
    }
    let mut body = response.into_body();
    while body.data().await.is_some() {}
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    (
        field(&trailers, "grpc-status"),
        field(&trailers, "grpc-message"),
    )
}

#[tokio::test]
async fn streams_per_connection_are_bounded_and_a_stalled_request_is_cut_off() {
    let mut config = config();
    config.server.max_streams_per_connection = 32;
    config.server.request_body_timeout_ms = 1_000;
    config.policy.timeout_step_ms = 500;
    config.policy.max_attempts = 1;
    let daemon = start(config.validate().unwrap());
    let mut send = h2_client(daemon.local_addr()).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while send.current_max_send_streams() != 32 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        send.current_max_send_streams(),
        32,
        "SETTINGS_MAX_CONCURRENT_STREAMS"
    );

    let started = Instant::now();
    let (response, _body) = stalled_call(&mut send, 1024 * 1024, 64 * 1024).await;
    let status = tokio::time::timeout(Duration::from_secs(5), grpc_status(response))
        .await
        .expect("a stalled request is answered within the request timeout");
    assert_ne!(status, "0");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1_400), "{took:?}");
    println!(
        "stalled request cut off after {took:?} (policy 500 ms + body 1000 ms), grpc-status {status}"
    );
}

#[tokio::test]
async fn memory_pinned_by_stalled_4_mb_requests_is_released_in_time() {
    let daemon = serve_configured(
        "stalled",
        "[server]\nrequest_body_timeout_ms = 2000\n[policy]\ntimeout_step_ms = 1000\nmax_attempts = 1\n",
    );
    let pid = daemon.pid();
    let before = rss_kib(pid);
    let mut send = h2_client(daemon.address.parse().unwrap()).await;
    let started = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..64 {
        calls.push(stalled_call(&mut send, 4 * 1024 * 1024, 1024 * 1024 - 5).await);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let stalled = rss_kib(pid);
    let mut statuses = Vec::new();
    for (response, _body) in calls {
        let status = tokio::time::timeout(Duration::from_secs(10), grpc_status(response))
            .await
            .expect("every stalled request is answered");
        statuses.push(status);
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    assert!(statuses.iter().all(|s| s != "0"), "{statuses:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    println!(
        "64 stalled 4 MB requests (1 MiB sent each): RSS {before} KiB before, {stalled} KiB while stalled, \
         {after} KiB after all were cut off at {took:?}"
    );
}

#[tokio::test]
async fn a_stream_that_trickles_a_message_is_ended_and_its_memory_released() {
    const STREAMS: usize = 32;
    let daemon = serve_configured(
        "trickle",
        "[server]\nstream_message_timeout_ms = 2000\nidle_connection_timeout_ms = 60000\n\
         [policy]\ntimeout_step_ms = 500\nmax_attempts = 1\n",
    );
    let pid = daemon.pid();
    let before = rss_kib(pid);
    let mut send = h2_client(daemon.address.parse().unwrap()).await;
    let started = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let (response, mut body) = stalled_at(
            &mut send,
            "/ferry.v1.Ingest/Stream",
            3 * 1024 * 1024,
            1024 * 1024,
        )
        .await;
        // One byte every 500 ms: well within the connection's idle timeout, forever.
        let trickle = tokio::spawn(async move {
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                body.reserve_capacity(1);
                if body.send_data(Bytes::from_static(b"x"), false).is_err() {
                    return;
                }
            }
        });
        streams.push((response, trickle));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let trickling = rss_kib(pid);
    let mut outcomes = Vec::new();
    for (response, trickle) in streams {
        let outcome = tokio::time::timeout(Duration::from_secs(10), grpc_outcome(response))
            .await
            .expect("a trickling stream is ended");
        outcomes.push(outcome);
        trickle.abort();
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    for (status, message) in &outcomes {
        assert_eq!(status, "4", "DEADLINE_EXCEEDED: {message}");
        assert!(message.contains("stream_message_timeout_ms"), "{message}");
    }
    assert!(took < Duration::from_secs(6), "{took:?}");
    // The partial messages (32 MiB received) are freed with their streams.
    assert!(
        trickling > before + 16 * 1024 && after < trickling - 16 * 1024,
        "RSS {before} KiB before, {trickling} KiB trickling, {after} KiB after"
    );
    println!(
        "{STREAMS} streams trickling a 3 MiB message (1 MiB sent, then a byte every 500 ms): \
         all ended DEADLINE_EXCEEDED by {took:?}; RSS {before} KiB before, {trickling} KiB \
         while trickling, {after} KiB after"
    );
}

#[tokio::test]
async fn a_unary_body_with_two_messages_is_refused_and_neither_is_forwarded() {
    let brokers = shared_kafka();
    let topic = kafka::unique_topic("ferry.test.two-in-one");
    kafka::create_topic(&brokers, &topic).await;
    let daemon = start(config().validate().unwrap());
    let mut send = h2_client(daemon.local_addr()).await;
    let request = http::Request::post("/messagebroker.MessageBroker/SendKafkaMessage")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = send.send_request(request, false).unwrap();
    let mut frames = Vec::new();
    for data in ["first", "second"] {
        let message = prost::Message::encode_to_vec(&common::kafka(&brokers, &topic, data));
        frames.push(0u8);
        frames.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frames.extend_from_slice(&message);
    }
    body.reserve_capacity(frames.len());
    body.send_data(Bytes::from(frames), true).unwrap();
    let (status, message) = grpc_outcome(response).await;
    assert_eq!(status, "3", "INVALID_ARGUMENT: {message}");
    assert!(message.contains("more than one message"), "{message}");
    let arrived = kafka::drain_topic(
        &brokers,
        &topic,
        Duration::from_millis(500),
        Duration::from_secs(3),
    );
    assert!(arrived.is_empty(), "forwarded: {arrived:?}");
    assert_eq!(
        daemon
            .forwarder()
            .totals()
            .sent
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn payload_bytes_in_flight_are_bounded() {
    let hole = BlackHole::new();
    let mut config = config();
    config.server.max_message_bytes = 512 * 1024;
    config.server.max_in_flight_bytes = 1024 * 1024;
    config.policy.timeout_step_ms = 1_500;
    config.policy.max_attempts = 1;
    let daemon = start(config.validate().unwrap());
    let mut calls = Vec::new();
    for _ in 0..3 {
        let mut grpc = client(&daemon).await;
        let brokers = hole.address();
        calls.push(tokio::spawn(async move {
            let payload = vec![b'x'; 400 * 1024];
            send_kafka(&mut grpc, common::kafka(&brokers, "t", payload)).await
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().0);
    }
    let overloaded: Vec<_> = answers
        .iter()
        .filter(|a| a.error_no == OVERLOADED)
        .collect();
    assert_eq!(overloaded.len(), 1, "{answers:?}");
    assert!(
        overloaded[0].error_message.contains("max_in_flight_bytes"),
        "{answers:?}"
    );
    assert_eq!(daemon.forwarder().in_flight_bytes(), 0);
}

#[tokio::test]
async fn kafka_broker_lists_and_kafka_targets_are_bounded() {
    let daemon = serve_configured(
        "kafka-bounds",
        "[producers]\nmax_kafka_targets = 2\n[policy]\ntimeout_step_ms = 300\nmax_attempts = 1\n",
    );
    let pid = daemon.pid().to_string();
    let mut grpc = client_at(&daemon.address).await;
    // 63 brokers: refused before anything is created.
    let sixty_three: Vec<String> = (1..=63).map(|i| format!("127.0.0.{i}:9")).collect();
    let (answer, _) = send_kafka(&mut grpc, common::kafka(&sixty_three.join(","), "t", "x")).await;
    assert_eq!(answer.error_no, INVALID, "{answer:?}");
    assert!(
        answer.error_message.contains("max_brokers_per_target"),
        "{answer:?}"
    );

    let idle = threads_and_fds(&pid);
    let eight = sixty_three[..8].join(",");
    let (answer, _) = send_kafka(&mut grpc, common::kafka(&eight, "t", "x")).await;
    assert_ne!(answer.error_no, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let one = threads_and_fds(&pid);
    // Two more broker sets with max_kafka_targets = 2: the oldest idle one is evicted.
    for set in [&sixty_three[8..10], &sixty_three[10..12]] {
        let (answer, _) = send_kafka(&mut grpc, common::kafka(&set.join(","), "t", "x")).await;
        assert_ne!(answer.error_no, 0);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = report(&daemon.ops_address).await;
    let kafka_producers = report
        .producers
        .iter()
        .filter(|t| t.kind == "kafka")
        .count();
    assert_eq!(kafka_producers, 2, "{:?}", report.producers);
    let capped = threads_and_fds(&pid);
    println!(
        "threads/fds: idle daemon {idle:?}; one 8-broker Kafka target {one:?}; \
         three broker sets with max_kafka_targets = 2 {capped:?}"
    );
}

/// Asserts that `log` holds at least one line with `line` and no more than the log budget
/// allows over `seconds` (plus one window); returns how many.
fn logged_within_budget(log: &str, line: &str, seconds: u64) -> u64 {
    let lines = log.matches(line).count() as u64;
    let bound = ferry::daemon::log_budget::LOG_LINES_PER_SECOND * (seconds + 1);
    assert!(
        (1..=bound).contains(&lines),
        "{lines} \"{line}\" lines in {seconds} s (bound {bound})"
    );
    lines
}

#[tokio::test]
async fn refused_requests_are_logged_at_a_bounded_rate() {
    let dir = scratch_dir("log-rate");
    let log = dir.join("ferry.log");
    let daemon = serve_logged(&free_address(), &[], &log);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", daemon.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let mut calls = Vec::new();
    for worker in 0..16 {
        let mut grpc =
            ferry::proto::message_broker_client::MessageBrokerClient::new(channel.clone());
        calls.push(tokio::spawn(async move {
            for i in 0..5_000 / 16 + usize::from(worker < 5_000 % 16) {
                let _ = i;
                let (answer, _) = send_kafka(&mut grpc, common::kafka("", "t", "x")).await;
                assert_eq!(answer.error_no, INVALID);
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    let seconds = started.elapsed().as_secs() + 1;
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = logged_within_budget(&text, "Request refused", seconds);
    assert!(
        text.contains("suppressed_before="),
        "the left-out lines are counted"
    );
    println!("5,000 invalid requests in {seconds} s: {lines} log lines");
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
