//! Every bound the daemon holds, end to end: `max_connections`, idle sockets giving their
//! places back after the handshake timeout, 10,000 distinct targets with the producer cap
//! and memory bounded, streams per connection and a stalled request cut off, memory
//! pinned by stalled requests and trickling streams released in time, payload bytes in
//! flight, Kafka broker lists and Kafka targets, and a broker that never answers answered
//! within the policy's bound. Real Kafka (tansu) and a black-hole listener; the daemon in
//! process (`common::start`; the 10,000-target test measures this process's RSS), or as
//! a `ferry serve` child where its RSS, threads and descriptors are measured. Raw HTTP/2
//! clients (`common::http2`) send what tonic's client will not (stalled bodies).

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::http2::{grpc_outcome, h2_client};
use common::process::{free_address, serve_configured};
use common::{
    BlackHole, client, client_at, config, rabbitmq, report, send_kafka, send_rabbitmq, start,
    unique,
};
use ferry_testkit::{kafka, shared_kafka};

/// `error_no` values.
const INVALID: i32 = 1;
const OVERLOADED: i32 = 5;

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
            rss_after_first_thousand = rss_kib(std::process::id());
        }
        if std::env::var_os("FERRY_TEST_TRACE_RSS").is_some() {
            println!(
                "after {} targets: RSS {} KiB, cached {}",
                (chunk + 1) * 1_000,
                rss_kib(std::process::id()),
                registry.len()
            );
        }
    }
    let rss = rss_kib(std::process::id());
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
