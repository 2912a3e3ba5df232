//! End-to-end: the durable spool turns a broker outage into a delay. Real brokers are
//! SIGKILLed and restarted under load, the daemon itself is SIGKILLed during an outage, and
//! spools are truncated and corrupted; every message answered 0 must reach its broker.
//!
//! CI runs the load test short (1,000 msg/s for 6 s, broker down 3 s); the full
//! length (down 5 s) is
//! `FERRY_SPOOL_SECONDS=15 FERRY_SPOOL_DOWN_SECONDS=5 scripts/test --test spool -- --nocapture`.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{ferry, free_address, scratch_dir, serve_logged, serve_with};
use common::{client, client_at, config, report, start, unique};
use ferry::proto::Response;
use ferry::proto::message_broker_client::MessageBrokerClient;
use ferry_testkit::{BrokerKind, PrivateBroker, amqp, kafka};
use tonic::transport::Channel;

/// Messages per second of the load test.
const RATE: u64 = 1_000;
/// Connections the load is spread over.
const CONNECTIONS: usize = 8;

/// A number of seconds from the environment, or `default`.
fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().expect("a number of seconds"))
}

/// Where messages go, with what reads them back.
#[derive(Clone)]
enum Sink {
    Kafka {
        brokers: String,
        topic: String,
    },
    Rabbit {
        url: String,
        exchange: String,
        queue: String,
    },
}

impl Sink {
    /// A fresh topic or exchange (with a bound queue) on `broker`.
    async fn on(broker: &PrivateBroker, kind: BrokerKind) -> Self {
        match kind {
            BrokerKind::Kafka => {
                let topic = unique("spool");
                kafka::create_topic(&broker.address(), &topic).await;
                Self::Kafka {
                    brokers: broker.address(),
                    topic,
                }
            }
            BrokerKind::RabbitMq => {
                let exchange = unique("ferry.spool");
                let queue = unique("spool");
                amqp::bind_queue(&broker.amqp_url(), &exchange, &queue, "#").await;
                Self::Rabbit {
                    url: broker.amqp_url(),
                    exchange,
                    queue,
                }
            }
        }
    }

    /// Sends `body`; the daemon's answer, or `None` for a gRPC failure.
    async fn send(&self, grpc: &mut MessageBrokerClient<Channel>, body: &str) -> Option<Response> {
        let answer = match self {
            Self::Kafka { brokers, topic } => {
                grpc.send_kafka_message(common::kafka(brokers, topic, body.to_owned()))
                    .await
            }
            Self::Rabbit { url, exchange, .. } => {
                grpc.send_rabbit_mq_message(common::rabbitmq(url, exchange, "k", body.to_owned()))
                    .await
            }
        };
        answer.ok().map(tonic::Response::into_inner)
    }

    /// Everything the broker holds, in order, with each message's ferry id.
    async fn drain(&self) -> Vec<(String, Option<String>)> {
        let quiet = Duration::from_secs(3);
        match self {
            Self::Kafka { brokers, topic } => {
                let (brokers, topic) = (brokers.clone(), topic.clone());
                tokio::task::spawn_blocking(move || {
                    kafka::drain_topic_with_ids(&brokers, &topic, quiet, Duration::from_secs(120))
                })
                .await
                .unwrap()
                .into_iter()
                .map(|(payload, id)| (String::from_utf8(payload).unwrap(), id))
                .collect()
            }
            Self::Rabbit { url, queue, .. } => {
                amqp::drain_queue(url, queue, quiet, Duration::from_secs(120))
                    .await
                    .into_iter()
                    .map(|m| (String::from_utf8(m.data).unwrap(), m.message_id))
                    .collect()
            }
        }
    }
}

/// A daemon config with a spool in `dir`.
fn spool_config(dir: &Path) -> ferry::config::Config {
    let mut config = config();
    config.spool.dir = dir.to_str().unwrap().to_owned();
    config
}

/// Waits until the daemon whose operations endpoint is `ops` has an empty spool.
async fn wait_for_empty_spool(ops: impl std::fmt::Display + Clone, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let spool = report(ops.clone()).await.spool.expect("a spool");
        if spool.targets.iter().all(|t| t.spooled == 0) && spool.bytes == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the spool did not empty: {spool:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The two load tests each load the machine fully: run them one after the other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn outage_under_load(kind: BrokerKind) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let seconds = env_secs("FERRY_SPOOL_SECONDS", 6);
    let down = Duration::from_secs(env_secs("FERRY_SPOOL_DOWN_SECONDS", 3));
    // Late enough for the fresh queue's metadata to be on the broker's disk.
    let kill_at = Duration::from_secs(2);
    let broker = Arc::new(PrivateBroker::start(kind));
    let sink = Sink::on(&broker, kind).await;
    let dir = scratch_dir(&format!("spool-load-{kind:?}"));
    let daemon = start(spool_config(&dir).validate().unwrap());
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(client(&daemon).await);
    }
    let started = Instant::now();
    let crash = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            tokio::time::sleep(kill_at).await;
            let b = Arc::clone(&broker);
            tokio::task::spawn_blocking(move || b.kill()).await.unwrap();
            tokio::time::sleep(down).await;
            tokio::task::spawn_blocking(move || broker.restart())
                .await
                .unwrap();
            started.elapsed()
        })
    };
    // One sequential sender beside the load: its messages must arrive in its order.
    let sequential = {
        let (sink, mut grpc) = (sink.clone(), client(&daemon).await);
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut i = 0;
            while started.elapsed() < Duration::from_secs(seconds) + down {
                let body = format!("s{i:06}");
                answers.push((body.clone(), sink.send(&mut grpc, &body).await));
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        })
    };
    let load_for = Duration::from_secs(seconds) + down;
    let mut calls = common::paced(
        RATE,
        || started.elapsed() < load_for,
        |n| {
            let mut grpc = clients[n as usize % CONNECTIONS].clone();
            let sink = sink.clone();
            async move {
                let body = format!("m{n}");
                let answer = sink.send(&mut grpc, &body).await;
                (body, answer)
            }
        },
    )
    .await;
    let mut answers = Vec::new();
    while let Some(answer) = calls.join_next().await {
        answers.push(answer.unwrap());
    }
    let sequential = sequential.await.unwrap();
    let back_at = crash.await.unwrap();
    answers.extend(sequential.iter().cloned());

    let mut codes: BTreeMap<Option<i32>, usize> = BTreeMap::new();
    for (_, answer) in &answers {
        *codes
            .entry(answer.as_ref().map(|a| a.error_no))
            .or_default() += 1;
    }
    let spooled = answers
        .iter()
        .filter(|(_, a)| a.as_ref().is_some_and(|a| a.spooled))
        .count();
    let drained_at = Instant::now();
    wait_for_empty_spool(daemon.ops_addr(), Duration::from_secs(120)).await;
    let replay_took = drained_at.elapsed();
    let held = sink.drain().await;
    let in_broker: BTreeMap<&str, &Option<String>> =
        held.iter().map(|(body, id)| (body.as_str(), id)).collect();
    let missing: Vec<_> = answers
        .iter()
        .filter(|(body, a)| {
            a.as_ref().is_some_and(|a| a.error_no == 0) && !in_broker.contains_key(body.as_str())
        })
        .map(|(body, _)| body.as_str())
        .collect();
    // Ids: the broker's copy carries the id the caller was given.
    let wrong_ids = answers
        .iter()
        .filter_map(|(body, a)| Some((body, a.as_ref()?)))
        .filter(|(body, a)| {
            in_broker
                .get(body.as_str())
                .is_some_and(|id| id.as_deref() != Some(a.id.as_str()))
        })
        .count();
    // Order of the sequential sender: first copies in send order.
    let mut seen = BTreeSet::new();
    let firsts: Vec<&str> = held
        .iter()
        .map(|(body, _)| body.as_str())
        .filter(|body| body.starts_with('s') && seen.insert(*body))
        .collect();
    let in_order = firsts.windows(2).all(|w| w[0] < w[1]);
    let duplicates = held.len() - in_broker.len();
    let snapshot = report(daemon.ops_addr()).await;
    println!(
        "{kind:?} with spool: {} calls over {:.1?}, broker back at {back_at:.1?}; answers {codes:?}; \
         {spooled} spooled; spool drained {replay_took:.1?} after the load; {} in the broker \
         ({duplicates} duplicates), {} missing; sequential sender: {} messages, in order: {in_order}; \
         spool {:?}",
        answers.len(),
        started.elapsed(),
        held.len(),
        missing.len(),
        firsts.len(),
        snapshot.spool.as_ref().map(|s| (s.spooled_total, s.bytes)),
    );
    assert_eq!(
        codes.keys().collect::<Vec<_>>(),
        [&Some(0)],
        "every call answered 0: {codes:?}"
    );
    assert!(spooled > 0, "the outage was felt: nothing was spooled");
    assert!(
        missing.is_empty(),
        "answered 0, not in the broker: {:?}",
        &missing[..missing.len().min(5)]
    );
    assert_eq!(wrong_ids, 0, "a message reached the broker without its id");
    assert!(
        in_order,
        "the sequential sender's messages arrived out of order"
    );
    daemon.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_under_load_becomes_a_delay_and_loses_nothing() {
    outage_under_load(BrokerKind::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_outage_under_load_becomes_a_delay_and_loses_nothing() {
    outage_under_load(BrokerKind::RabbitMq).await;
}

/// A spool config file for a `ferry serve` child.
fn spool_config_file(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("ferry.toml");
    std::fs::write(
        &path,
        format!(
            "[spool]\ndir = {:?}\n{extra}",
            dir.join("spool").to_str().unwrap()
        ),
    )
    .unwrap();
    path
}

/// Sends `bodies` one by one through the daemon at `address`; returns each answer.
async fn send_all(address: &str, sink: &Sink, bodies: &[String]) -> Vec<Response> {
    let mut grpc = client_at(address).await;
    let mut answers = Vec::new();
    for body in bodies {
        answers.push(sink.send(&mut grpc, body).await.expect("an answer"));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_during_an_outage_delivers_its_spool_after_a_restart() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let broker = PrivateBroker::start(BrokerKind::RabbitMq);
    let sink = Sink::on(&broker, BrokerKind::RabbitMq).await;
    let dir = scratch_dir("spool-kill-daemon");
    let config = spool_config_file(&dir, "");
    let config = config.to_str().unwrap();
    let address = free_address();
    let daemon = serve_with(&address, &["--config", config]);
    let bodies = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i:04}")).collect()
    };
    let before = send_all(&address, &sink, &bodies("a", 50)).await;
    assert!(before.iter().all(|a| a.error_no == 0 && !a.spooled));
    broker.stop();
    let during = send_all(&address, &sink, &bodies("b", 200)).await;
    assert!(during.iter().all(|a| a.error_no == 0), "{:?}", &during[..3]);
    assert!(during.iter().all(|a| a.spooled));
    daemon.kill();
    // Restarted before the broker returns: it resumes its spool, and new messages queue
    // behind it.
    let daemon = serve_with(&address, &["--config", config]);
    let after = send_all(&address, &sink, &bodies("c", 50)).await;
    assert!(
        after.iter().all(|a| a.error_no == 0 && a.spooled),
        "{:?}",
        &after[..3]
    );
    broker.restart();
    wait_for_empty_spool(&daemon.ops_address, Duration::from_secs(60)).await;
    let held = sink.drain().await;
    let in_broker: BTreeSet<&str> = held.iter().map(|(b, _)| b.as_str()).collect();
    let expected: Vec<String> = [bodies("a", 50), bodies("b", 200), bodies("c", 50)].concat();
    let missing: Vec<_> = expected
        .iter()
        .filter(|b| !in_broker.contains(b.as_str()))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let order: Vec<&str> = held.iter().map(|(b, _)| b.as_str()).collect();
    let mut firsts = BTreeSet::new();
    let firsts: Vec<&str> = order.into_iter().filter(|b| firsts.insert(*b)).collect();
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "out of order");
    println!(
        "daemon SIGKILLed during the outage: 300 answered 0 while the broker was down, all {} delivered after the restart ({} copies in the broker)",
        expected.len(),
        held.len()
    );
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn a_full_spool_answers_5_and_keeps_what_it_holds() {
    let broker = PrivateBroker::start(BrokerKind::RabbitMq);
    let sink = Sink::on(&broker, BrokerKind::RabbitMq).await;
    // Down, with the queue just declared flushed to disk (a SIGKILL this early can lose it).
    broker.stop();
    let dir = scratch_dir("spool-full");
    let mut config = spool_config(&dir);
    config.spool.max_bytes = 40_000;
    let daemon = start(config.validate().unwrap());
    let mut grpc = client(&daemon).await;
    let payload = "x".repeat(1_000);
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..100 {
        let body = format!("{i:03}{payload}");
        let answer = sink.send(&mut grpc, &body).await.unwrap();
        match answer.error_no {
            0 => accepted.push(body),
            5 => {
                refused = Some(answer);
                break;
            }
            other => panic!("answered {other}: {answer:?}"),
        }
    }
    let refused = refused.expect("the spool filled up");
    assert!(refused.error_message.contains("spool full"), "{refused:?}");
    assert!(accepted.len() >= 30, "{}", accepted.len());
    broker.restart();
    wait_for_empty_spool(daemon.ops_addr(), Duration::from_secs(60)).await;
    let held: BTreeSet<String> = sink.drain().await.into_iter().map(|(b, _)| b).collect();
    assert!(
        accepted.iter().all(|b| held.contains(b)),
        "something spooled was lost"
    );
    println!(
        "spool full at {} messages of 1 KB (max_bytes 40000): answered 5, {}",
        accepted.len(),
        refused.error_message
    );
}

#[tokio::test]
async fn expired_spooled_messages_move_to_the_dead_letters_and_requeue_delivers_them() {
    let broker = PrivateBroker::start(BrokerKind::RabbitMq);
    let sink = Sink::on(&broker, BrokerKind::RabbitMq).await;
    // Down, with the queue just declared flushed to disk (a SIGKILL this early can lose it).
    broker.stop();
    let dir = scratch_dir("spool-expiry");
    let config = spool_config_file(&dir, "max_age_s = 1\n");
    let log = dir.join("ferry.log");
    let address = free_address();
    let daemon = serve_logged(&address, &["--config", config.to_str().unwrap()], &log);
    let bodies: Vec<String> = (0..5).map(|i| format!("old{i}")).collect();
    let answers = send_all(&address, &sink, &bodies).await;
    assert!(answers.iter().all(|a| a.error_no == 0 && a.spooled));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spool = report(&daemon.ops_address).await.spool.unwrap();
        if spool.dead_lettered_total == 5 && spool.dead_letters == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "not expired: {spool:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    broker.restart();
    let fresh = send_all(&address, &sink, &["new".to_owned()]).await;
    assert_eq!(fresh[0].error_no, 0);
    let held: Vec<String> = sink.drain().await.into_iter().map(|(b, _)| b).collect();
    assert_eq!(held, ["new"], "expired messages must not be delivered");
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("expired"), "{text}");
    assert!(
        answers.iter().all(|a| text.contains(&a.id)),
        "every expired id is logged"
    );
    // Kept as dead letters: requeued, a daemon without max_age_s delivers them.
    let spool_dir = dir.join("spool");
    let requeue = ferry(&[
        "spool",
        "requeue",
        "--dir",
        spool_dir.to_str().unwrap(),
        "--all",
    ])
    .output()
    .unwrap();
    assert!(requeue.status.success(), "{requeue:?}");
    let config = spool_config_file(&dir, "");
    let daemon = serve_with(&free_address(), &["--config", config.to_str().unwrap()]);
    wait_for_empty_spool(&daemon.ops_address, Duration::from_secs(60)).await;
    assert_eq!(first_copies(sink.drain().await), bodies);
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

/// The bodies a broker holds, each at its first copy (at-least-once may repeat one).
fn first_copies(held: Vec<(String, Option<String>)>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    held.into_iter()
        .map(|(body, _)| body)
        .filter(|body| seen.insert(body.clone()))
        .collect()
}

/// Spools `n` messages (broker down) through a `ferry serve` child, then SIGKILLs it.
async fn spool_and_crash(dir: &Path, sink: &Sink, n: usize) -> Vec<String> {
    let config = spool_config_file(dir, "");
    let address = free_address();
    let daemon = serve_with(&address, &["--config", config.to_str().unwrap()]);
    let bodies: Vec<String> = (0..n).map(|i| format!("r{i:03}")).collect();
    let answers = send_all(&address, sink, &bodies).await;
    assert!(answers.iter().all(|a| a.error_no == 0 && a.spooled));
    daemon.kill();
    bodies
}

#[tokio::test]
async fn a_torn_spool_tail_is_truncated_counted_and_the_rest_delivered() {
    let broker = PrivateBroker::start(BrokerKind::RabbitMq);
    let sink = Sink::on(&broker, BrokerKind::RabbitMq).await;
    // Down, with the queue just declared flushed to disk (a SIGKILL this early can lose it).
    broker.stop();
    let dir = scratch_dir("spool-torn");
    let bodies = spool_and_crash(&dir, &sink, 20).await;
    let wal = dir.join("spool").join("spool.db-wal");
    let len = std::fs::metadata(&wal)
        .expect("the WAL holds the records")
        .len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    broker.restart();
    let config = spool_config_file(&dir, "");
    let daemon = serve_with(&free_address(), &["--config", config.to_str().unwrap()]);
    wait_for_empty_spool(&daemon.ops_address, Duration::from_secs(60)).await;
    let spool = report(&daemon.ops_address).await.spool.unwrap();
    assert_eq!(spool.torn_tails_truncated, 1);
    let held = first_copies(sink.drain().await);
    // Each message was its own commit: only the last, torn one is gone.
    assert_eq!(
        held,
        bodies[..19],
        "every intact record delivered, in order"
    );
}

#[tokio::test]
async fn a_corrupted_spool_record_is_set_aside_counted_and_the_rest_delivered() {
    let broker = PrivateBroker::start(BrokerKind::RabbitMq);
    let sink = Sink::on(&broker, BrokerKind::RabbitMq).await;
    // Down, with the queue just declared flushed to disk (a SIGKILL this early can lose it).
    broker.stop();
    let dir = scratch_dir("spool-corrupt");
    let bodies = spool_and_crash(&dir, &sink, 20).await;
    // Bit rot in one record's payload, after the crash.
    let db = rusqlite::Connection::open(dir.join("spool").join("spool.db")).unwrap();
    db.execute(
        "UPDATE records SET payload = X'72303035FF' WHERE payload = CAST('r005' AS BLOB)",
        [],
    )
    .unwrap();
    drop(db);
    broker.restart();
    let config = spool_config_file(&dir, "");
    let daemon = serve_with(&free_address(), &["--config", config.to_str().unwrap()]);
    wait_for_empty_spool(&daemon.ops_address, Duration::from_secs(60)).await;
    let spool = report(&daemon.ops_address).await.spool.unwrap();
    assert_eq!(spool.lost_total, 1, "{spool:?}");
    let held = first_copies(sink.drain().await);
    let expected: Vec<String> = bodies.iter().filter(|b| *b != "r005").cloned().collect();
    assert_eq!(held, expected);
    let listing = ferry(&["spool", "--dir", dir.join("spool").to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("0 messages") && text.contains("1 in quarantine"),
        "{text}"
    );
}

#[tokio::test]
async fn a_second_daemon_on_the_same_spool_refuses_to_start() {
    let dir = scratch_dir("spool-two");
    let config = spool_config_file(&dir, "");
    let config = config.to_str().unwrap();
    let first = serve_with(&free_address(), &["--config", config]);
    let second = ferry(&[
        "serve",
        "--config",
        config,
        "--listen",
        &free_address(),
        "--ops-listen",
        &free_address(),
    ])
    .output()
    .unwrap();
    assert!(!second.status.success());
    let text = String::from_utf8_lossy(&second.stderr);
    assert!(text.contains("in use by another ferry"), "{text}");
    let (code, _) = first.terminate();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn without_a_spool_answers_are_as_before_and_carry_the_id() {
    let daemon = start(config().validate().unwrap());
    let broker = ferry_testkit::shared_kafka();
    let topic = unique("no-spool");
    kafka::create_topic(&broker, &topic).await;
    let mut grpc = client(&daemon).await;
    let answer = grpc
        .send_kafka_message(common::kafka(&broker, &topic, "x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.error_no, answer.spooled), (0, false));
    assert_eq!(answer.id.len(), 36, "a UUID: {answer:?}");
    let id = answer.id;
    let dead = format!("127.0.0.1:{}", common::process::free_port());
    let answer = grpc
        .send_kafka_message(common::kafka(&dead, &topic, "x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.error_no, answer.spooled), (4, false), "{answer:?}");
    assert!(report(daemon.ops_addr()).await.spool.is_none());
    let sink = Sink::Kafka {
        brokers: broker,
        topic,
    };
    let held = sink.drain().await;
    assert_eq!(
        held,
        [("x".to_owned(), Some(id))],
        "the ferry-id header is the answered id"
    );
}
