//! Shared helpers of the end-to-end tests: an in-process daemon on an ephemeral port and
//! gRPC clients for it.

#![allow(dead_code, missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry::config::{Config, Settings};
use ferry::daemon::server::Daemon;
use ferry::proto::message_broker_client::MessageBrokerClient;
use ferry::proto::{self, KafkaMessage, RabbitMqMessage};
use ferry_actors::StatsSnapshot;
use tonic::transport::Channel;

pub mod ecflow;
pub mod http2;
pub mod pki;
pub mod process;
pub mod prometheus;

/// The config of a test daemon: defaults (the production policy), on free ports.
pub fn config() -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.ops.listen = "127.0.0.1:0".into();
    config.server.workers = 2;
    config
}

/// [`config`], validated.
pub fn settings() -> Settings {
    config().validate().expect("test settings")
}

/// Starts a daemon with `settings`.
pub fn start(settings: Settings) -> Daemon {
    let _ = env_logger::builder().is_test(true).try_init();
    Daemon::start(settings).expect("daemon starts")
}

/// A gRPC client on a new connection to `daemon`.
pub async fn client(daemon: &Daemon) -> MessageBrokerClient<Channel> {
    client_at(&daemon.local_addr().to_string()).await
}

/// A gRPC client on a new connection to the daemon at `address` (`host:port`).
pub async fn client_at(address: &str) -> MessageBrokerClient<Channel> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect to daemon");
    MessageBrokerClient::new(channel).max_encoding_message_size(64 * 1024 * 1024)
}

/// The `/stats` report of the daemon whose operations endpoint is `ops_address`.
pub async fn report(ops_address: impl std::fmt::Display) -> ferry::report::Report {
    let uri = format!("http://{ops_address}/stats").parse().expect("uri");
    let body = ferry::cli::ops::fetch(uri).await.expect("GET /stats");
    serde_json::from_slice(&body).expect("a stats report")
}

/// A `SendKafkaMessage` request.
pub fn kafka(brokers: &str, topic: &str, data: impl Into<Bytes>) -> KafkaMessage {
    KafkaMessage {
        target: Some(proto::KafkaTarget {
            brokers: brokers.split(',').map(str::to_owned).collect(),
            topic: topic.into(),
        }),
        message: Some(proto::Message { data: data.into() }),
    }
}

/// A `SendRabbitMQMessage` request.
pub fn rabbitmq(
    server: &str,
    exchange: &str,
    key: &str,
    data: impl Into<Bytes>,
) -> RabbitMqMessage {
    RabbitMqMessage {
        target: Some(proto::RabbitMqTarget {
            server: server.into(),
            exchange: exchange.into(),
            route_key: key.into(),
        }),
        message: Some(proto::Message { data: data.into() }),
    }
}

/// Sends to Kafka; returns the response and how long the call took.
pub async fn send_kafka(
    client: &mut MessageBrokerClient<Channel>,
    request: KafkaMessage,
) -> (proto::Response, Duration) {
    let started = Instant::now();
    let response = client
        .send_kafka_message(request)
        .await
        .expect("gRPC call succeeds")
        .into_inner();
    (response, started.elapsed())
}

/// Sends to RabbitMQ; returns the response and how long the call took.
pub async fn send_rabbitmq(
    client: &mut MessageBrokerClient<Channel>,
    request: RabbitMqMessage,
) -> (proto::Response, Duration) {
    let started = Instant::now();
    let response = client
        .send_rabbit_mq_message(request)
        .await
        .expect("gRPC call succeeds")
        .into_inner();
    (response, started.elapsed())
}

/// The stats of every producer of `daemon`.
pub fn stats(daemon: &Daemon) -> Vec<StatsSnapshot> {
    daemon.forwarder().registry().snapshot()
}

/// The stats of the one producer of `kind`.
pub fn stats_of(daemon: &Daemon, kind: &str) -> StatsSnapshot {
    let mut matching: Vec<_> = stats(daemon)
        .into_iter()
        .filter(|s| s.kind == kind)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one {kind} producer expected: {matching:?}"
    );
    matching.remove(0)
}

/// A port on which nothing listens.
pub fn dead_port() -> String {
    process::free_port().to_string()
}

/// A unique name for queues and topics of one test.
pub fn unique(prefix: &str) -> String {
    ferry_testkit::kafka::unique_topic(prefix)
}

/// The upper bound of a call's duration under the default policy (2 s + 4 s), with slack
/// for a loaded machine.
pub const POLICY_BOUND: Duration = Duration::from_millis(6_000 + 1_500);

/// Waits, within [`POLICY_BOUND`], until `daemon` has nothing in flight, and checks it.
pub async fn wait_until_idle(daemon: &Daemon) {
    let deadline = Instant::now() + POLICY_BOUND;
    while daemon.forwarder().in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(daemon.forwarder().in_flight(), 0, "still in flight");
}

/// Messages `daemon` delivered and failed since it started.
pub fn totals(daemon: &Daemon) -> (u64, u64) {
    let totals = daemon.forwarder().totals();
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    (load(&totals.sent), load(&totals.failed))
}

/// Every message of `topic`, read until none came for 500 ms (10 s at most).
pub async fn drain_topic(brokers: &str, topic: &str) -> Vec<Vec<u8>> {
    let (b, t) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        ferry_testkit::kafka::drain_topic(
            &b,
            &t,
            Duration::from_millis(500),
            Duration::from_secs(10),
        )
    })
    .await
    .expect("reading the topic")
}

/// A listener that accepts TCP connections (the kernel completes the handshake) and never
/// reads or answers; `connections()` says how many arrived.
pub struct BlackHole(std::net::TcpListener);

impl BlackHole {
    pub fn new() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Self(listener)
    }

    pub fn address(&self) -> String {
        self.0.local_addr().unwrap().to_string()
    }

    /// Connections that arrived (accepted now, and kept open).
    pub fn connections(&self, kept: &mut Vec<std::net::TcpStream>) -> usize {
        while let Ok((stream, _)) = self.0.accept() {
            kept.push(stream);
        }
        kept.len()
    }
}

/// Starts `call(n)` for n = 0, 1, … at `rate` calls per second (a burst every 10 ms) as
/// long as `go_on()` says so, and returns the calls started.
pub async fn paced<T, Fut>(
    rate: u64,
    mut go_on: impl FnMut() -> bool,
    mut call: impl FnMut(u64) -> Fut,
) -> tokio::task::JoinSet<T>
where
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut calls = tokio::task::JoinSet::new();
    let mut n = 0;
    while go_on() {
        tick.tick().await;
        for _ in 0..rate / 100 {
            calls.spawn(call(n));
            n += 1;
        }
    }
    calls
}

/// Waits until `done` holds for the spool report of the daemon whose ops endpoint is
/// `ops`, or fails naming `what` with the last report.
pub async fn wait_for_spool(
    ops: impl std::fmt::Display,
    within: Duration,
    what: &str,
    done: impl Fn(&ferry::report::SpoolReport) -> bool,
) -> ferry::report::SpoolReport {
    let deadline = Instant::now() + within;
    loop {
        let spool = report(&ops).await.spool.expect("a spool");
        if done(&spool) {
            return spool;
        }
        assert!(Instant::now() < deadline, "{what}: {spool:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The distinct bodies of `received` (UTF-8), in arrival order: first copies only.
pub fn first_copies(received: Vec<ferry_testkit::amqp::Received>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    received
        .into_iter()
        .map(|m| String::from_utf8(m.data).expect("UTF-8 bodies"))
        .filter(|b| seen.insert(b.clone()))
        .collect()
}
