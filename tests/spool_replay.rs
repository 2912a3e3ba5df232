//! End-to-end: the spool keeps its promise whatever the broker answers on its way back.
//! A record answered 0 + `spooled` leaves the spool only when its broker confirmed it, or
//! by a configured rule that moves it to the dead letters, where `ferry spool requeue`
//! finds it. Real RabbitMQ nodes of the tests' own; real daemons.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::process::{ferry, free_address, scratch_dir, serve_logged, serve_with};
use common::{client, client_at, config, first_copies, report, start, unique};
use ferry::report::SpoolReport;
use ferry_testkit::{BrokerKind, PrivateBroker, amqp};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Records of one target in flight while replaying (the default): the order bound is one
/// less.
const REPLAY_IN_FLIGHT: usize = 64;

/// A RabbitMQ node with an exchange; the node is stopped (its data flushed) so messages
/// sent now are spooled.
struct Outage {
    broker: PrivateBroker,
    url: String,
    exchange: String,
    queue: String,
}

impl Outage {
    /// A node with `exchange` declared and, when `arguments` is given, a queue bound to it
    /// with those arguments; then stopped.
    async fn begin(arguments: Option<FieldTable>) -> Self {
        let broker = PrivateBroker::start(BrokerKind::RabbitMq);
        let url = broker.amqp_url();
        let exchange = unique("ferry.promise");
        let queue = unique("promise");
        if let Some(arguments) = arguments {
            amqp::bind_queue_with(&url, &exchange, &queue, "#", arguments).await;
        }
        broker.stop();
        Self {
            broker,
            url,
            exchange,
            queue,
        }
    }
}

/// Sends `body` to the outage's exchange; the daemon's answer.
async fn send(
    grpc: &mut ferry::proto::message_broker_client::MessageBrokerClient<tonic::transport::Channel>,
    outage: &Outage,
    body: &str,
) -> ferry::proto::Response {
    let request = common::rabbitmq(&outage.url, &outage.exchange, "k", body.to_owned());
    common::send_rabbitmq(grpc, request).await.0
}

/// Sends `bodies` one by one while the broker is down; each must be answered 0 and
/// spooled. Returns their ids.
async fn spool_all(
    grpc: &mut ferry::proto::message_broker_client::MessageBrokerClient<tonic::transport::Channel>,
    outage: &Outage,
    bodies: &[String],
) -> Vec<String> {
    let mut ids = Vec::new();
    for body in bodies {
        let answer = send(grpc, outage, body).await;
        assert!(answer.error_no == 0 && answer.spooled, "{answer:?}");
        ids.push(answer.id);
    }
    ids
}

/// `count` bodies in order.
fn bodies(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i:03}")).collect()
}

/// The daemon's spool report.
async fn spool_of(ops: impl std::fmt::Display) -> SpoolReport {
    report(ops).await.spool.expect("a spool")
}

/// Waits until `done` holds for the daemon's spool report, or fails with it.
async fn wait_for(
    ops: impl std::fmt::Display,
    within: Duration,
    what: &str,
    done: impl Fn(&SpoolReport) -> bool,
) -> SpoolReport {
    common::wait_for_spool(ops, within, what, done).await
}

/// How many records overtook the one most overtaken: for each body, the bodies sent after
/// it that arrived before it.
fn most_overtaken(sent: &[String], arrived: &[String]) -> usize {
    let position = |body: &String| sent.iter().position(|b| b == body).unwrap();
    let order: Vec<usize> = arrived.iter().map(position).collect();
    (0..order.len())
        .map(|i| {
            order[..i]
                .iter()
                .filter(|&&earlier| earlier > order[i])
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_full_queue_nacking_the_replay_delays_delivery_and_loses_nothing() {
    let mut arguments = FieldTable::default();
    arguments.insert(ShortString::from("x-max-length"), AMQPValue::LongInt(10));
    arguments.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    let outage = Outage::begin(Some(arguments)).await;
    let dir = scratch_dir("promise-full-queue");
    let mut config = config();
    config.spool.dir = dir.to_str().unwrap().to_owned();
    let daemon = start(config.validate().unwrap());
    let mut grpc = client(&daemon).await;
    let sent = bodies("q", 100);
    spool_all(&mut grpc, &outage, &sent).await;
    outage.broker.restart();
    // The queue takes ten; the broker nacks the rest, again and again, for a while.
    wait_for(
        daemon.ops_addr(),
        Duration::from_secs(60),
        "replay met the full queue",
        |s| s.replayed_total >= 10 && s.targets.iter().any(|t| t.last_error.contains("nack")),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spool = spool_of(daemon.ops_addr()).await;
    assert_eq!(
        spool.lost_total + spool.dead_lettered_total,
        0,
        "{spool:#?}"
    );
    assert_eq!(
        spool.targets[0].spooled, 90,
        "the nacked ones stay: {spool:#?}"
    );
    // A consumer drains the queue: every one arrives.
    let received =
        amqp::read_queue(&outage.url, &outage.queue, 100, Duration::from_secs(120)).await;
    let arrived = first_copies(received);
    assert_eq!(
        arrived.iter().cloned().collect::<BTreeSet<_>>(),
        sent.iter().cloned().collect::<BTreeSet<_>>(),
        "every message answered 0 arrives"
    );
    let overtaken = most_overtaken(&sent, &arrived);
    assert!(overtaken < REPLAY_IN_FLIGHT, "order bound: {overtaken}");
    let spool = wait_for(
        daemon.ops_addr(),
        Duration::from_secs(30),
        "the spool empties",
        |s| s.targets.is_empty() && s.bytes == 0,
    )
    .await;
    assert_eq!(spool.replayed_total, 100);
    println!(
        "full queue (x-max-length 10, reject-publish): 100 spooled, 100 delivered while a consumer drained; most overtaken record: {overtaken}"
    );
}

#[tokio::test]
async fn unroutable_on_return_is_retried_until_a_queue_is_bound() {
    let outage = Outage::begin(None).await;
    let dir = scratch_dir("promise-unroutable");
    let mut config = config();
    config.spool.dir = dir.to_str().unwrap().to_owned();
    config.rabbitmq.mandatory = true;
    let daemon = start(config.validate().unwrap());
    let mut grpc = client(&daemon).await;
    let sent = bodies("u", 20);
    spool_all(&mut grpc, &outage, &sent).await;
    outage.broker.restart();
    wait_for(
        daemon.ops_addr(),
        Duration::from_secs(60),
        "replay met no queue",
        |s| {
            s.targets
                .iter()
                .any(|t| t.last_error.contains("unroutable"))
        },
    )
    .await;
    // Someone binds the queue ten seconds later.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let spool = spool_of(daemon.ops_addr()).await;
    assert_eq!(spool.targets[0].spooled, 20, "all kept: {spool:#?}");
    amqp::bind_queue(&outage.url, &outage.exchange, &outage.queue, "#").await;
    let received = amqp::read_queue(&outage.url, &outage.queue, 20, Duration::from_secs(60)).await;
    assert_eq!(first_copies(received), sent, "all delivered, in order");
}

/// A config file for a `ferry serve` child with its spool in `dir/spool`.
fn spool_config_file(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("ferry.toml");
    let spool = dir.join("spool");
    std::fs::write(&path, format!("[spool]\ndir = {spool:?}\n{extra}")).unwrap();
    path
}

/// Runs `ferry spool ARGS`; its exit code and stdout.
fn spool_command(args: &[&str]) -> (i32, String, String) {
    let output = ferry(&[&["spool"], args].concat()).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn refused_for_too_long_moves_to_the_dead_letters_and_requeue_delivers() {
    let outage = Outage::begin(None).await;
    let dir = scratch_dir("promise-dead");
    let config = spool_config_file(
        &dir,
        "dead_letter_after_s = 2\n[rabbitmq]\nmandatory = true\n",
    );
    let log = dir.join("ferry.log");
    let address = free_address();
    let daemon = serve_logged(&address, &["--config", config.to_str().unwrap()], &log);
    let mut grpc = client_at(&address).await;
    let sent = bodies("d", 4);
    let ids = spool_all(&mut grpc, &outage, &sent).await;
    outage.broker.restart();
    // Each record in turn, as the head of the line, is refused for 2 s and moved.
    let spool = wait_for(
        &daemon.ops_address,
        Duration::from_secs(90),
        "moved to the dead letters",
        // Once its line is empty, the target's state is dropped.
        |s| s.dead_letters == 4 && s.targets.is_empty(),
    )
    .await;
    assert_eq!((spool.dead_lettered_total, spool.lost_total), (4, 0));
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        ids.iter().all(|id| text.contains(id.as_str())),
        "every id logged"
    );
    let spool_dir = dir.join("spool");
    let spool_dir = spool_dir.to_str().unwrap();
    let (code, listing, _) = spool_command(&["--dir", spool_dir]);
    assert_eq!(code, 0);
    assert!(
        listing.contains("4 dead letters") && listing.contains("unroutable"),
        "{listing}"
    );
    let (code, exported, _) = spool_command(&["export", "--dir", spool_dir]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["id"], ids[0].as_str());
    assert!(
        !exported.contains("guest:guest"),
        "no password in the export"
    );
    // A queue now exists; the operator requeues and starts the daemon again.
    amqp::bind_queue(&outage.url, &outage.exchange, &outage.queue, "#").await;
    let (code, said, _) = spool_command(&["requeue", "--dir", spool_dir, "--all"]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("4 dead letters requeued"), "{said}");
    let address = free_address();
    let daemon = serve_with(&address, &["--config", config.to_str().unwrap()]);
    let received = amqp::read_queue(&outage.url, &outage.queue, 4, Duration::from_secs(60)).await;
    assert_eq!(first_copies(received), sent, "requeued in order, delivered");
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn requeue_refuses_while_a_daemon_holds_the_spool() {
    let dir = scratch_dir("promise-requeue-locked");
    let config = spool_config_file(&dir, "");
    let address = free_address();
    let daemon = serve_with(&address, &["--config", config.to_str().unwrap()]);
    let spool_dir = dir.join("spool");
    let (code, _, said) =
        spool_command(&["requeue", "--dir", spool_dir.to_str().unwrap(), "--all"]);
    assert_eq!(code, 75, "{said}");
    assert!(said.contains("stop the daemon first"), "{said}");
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn a_removal_that_fails_stops_the_replay_instead_of_sending_again() {
    let outage = Outage::begin(Some(FieldTable::default())).await;
    let dir = scratch_dir("promise-remove-fails");
    let mut config = config();
    config.spool.dir = dir.to_str().unwrap().to_owned();
    let daemon = start(config.validate().unwrap());
    let mut grpc = client(&daemon).await;
    let sent = bodies("r", 50);
    spool_all(&mut grpc, &outage, &sent).await;
    // The disk refuses deletions (as one remounted read-only would).
    let fault = dir.join("FAIL_REMOVE");
    std::fs::write(&fault, b"").unwrap();
    outage.broker.restart();
    wait_for(
        daemon.ops_addr(),
        Duration::from_secs(60),
        "the removal failed",
        |s| {
            s.targets
                .iter()
                .any(|t| t.last_error.contains("spool remove failed"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let spool = spool_of(daemon.ops_addr()).await;
    assert_eq!(spool.targets[0].spooled, 50, "nothing removed: {spool:#?}");
    std::fs::remove_file(&fault).unwrap();
    wait_for(
        daemon.ops_addr(),
        Duration::from_secs(30),
        "the spool empties",
        |s| s.targets.is_empty() && s.bytes == 0,
    )
    .await;
    let received = amqp::drain_queue(
        &outage.url,
        &outage.queue,
        Duration::from_secs(3),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        received.len(),
        50,
        "each sent once while its removal kept failing, not again and again"
    );
    assert_eq!(first_copies(received), sent);
}

/// A spool in `dir` holding `n` records for a Kafka target, written by the store itself.
fn spool_with_records(dir: &Path, n: usize) {
    let (mut store, _) = ferry_spool::Store::open(dir).unwrap();
    let batch: Vec<ferry_spool::NewRecord> = (0..n)
        .map(|i| ferry_spool::NewRecord {
            id: format!("kept-{i}"),
            destination: ferry_spool::Destination {
                kind: ferry_spool::Kind::Kafka,
                address: "127.0.0.1:1".into(),
                exchange: String::new(),
            },
            route: "t".into(),
            payload: bytes::Bytes::from_static(b"kept"),
            meta: None,
        })
        .collect();
    store.append(&batch, 1).unwrap();
}

/// How many records the spool in `dir` holds, read straight from the file.
fn records_in(dir: &Path) -> i64 {
    let db = rusqlite::Connection::open(dir.join("spool.db")).unwrap();
    db.query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
        .unwrap()
}

/// Runs `ferry serve` on `config` until it exits (it must, within 30 s); its exit code and
/// stderr.
fn serve_until_exit(config: &Path) -> (Option<i32>, String) {
    let mut child = ferry(&["serve", "--config", config.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry serve did not exit");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A config for a daemon on free ports with its spool in `spool`.
fn serve_config(dir: &Path, spool: &Path) -> PathBuf {
    let path = dir.join("ferry.toml");
    let text = format!(
        "[server]\nlisten = {:?}\n[ops]\nlisten = {:?}\n[spool]\ndir = {spool:?}\nmin_free_bytes = 0\n",
        free_address(),
        free_address()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_spool_that_cannot_be_used_stops_the_start_with_74_and_keeps_its_records() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch_dir("promise-refused");
    let spool = dir.join("spool");
    spool_with_records(&spool, 3);
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, stderr) = serve_until_exit(&serve_config(&dir, &spool));
    assert_eq!(code, Some(74), "{stderr}");
    assert!(stderr.contains("chmod 700"), "{stderr}");
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(records_in(&spool), 3, "nothing moved or deleted");
    // Locked by another process for longer than the busy timeout.
    let holder = rusqlite::Connection::open(spool.join("spool.db")).unwrap();
    holder
        .execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; UPDATE records SET route = route;",
        )
        .unwrap();
    let (code, stderr) = serve_until_exit(&serve_config(&dir, &spool));
    assert_eq!(code, Some(74), "{stderr}");
    assert!(stderr.contains("locked"), "{stderr}");
    holder.execute_batch("COMMIT").unwrap();
    drop(holder);
    assert_eq!(records_in(&spool), 3, "nothing moved or deleted");
    assert!(
        !std::fs::read_dir(&spool).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("corrupt-")),
        "nothing moved aside"
    );
}

#[test]
fn a_spool_on_a_full_disk_stops_the_start_with_74_and_keeps_its_records() {
    let dir = scratch_dir("promise-full-disk");
    let mount = dir.join("disk");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs (not root?): skipped");
        return;
    }
    let spool = mount.join("spool");
    spool_with_records(&spool, 3);
    let filler = mount.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 4 << 20]);
    let (code, stderr) = serve_until_exit(&serve_config(&dir, &spool));
    std::fs::remove_file(&filler).unwrap();
    let kept = records_in(&spool);
    let _ = std::process::Command::new("umount").arg(&mount).status();
    assert_eq!(code, Some(74), "{stderr}");
    assert!(stderr.contains("disk"), "{stderr}");
    assert_eq!(kept, 3, "nothing moved or deleted");
}

#[tokio::test]
async fn undeliverable_targets_beyond_max_targets_are_refused_not_spooled() {
    let dir = scratch_dir("promise-max-targets");
    let mut config = config();
    config.spool.dir = dir.to_str().unwrap().to_owned();
    config.spool.max_targets = 50;
    let daemon = start(config.validate().unwrap());
    let mut grpc = client(&daemon).await;
    // Nothing listens there: every exchange's broker is unavailable.
    let url = format!("amqp://guest:guest@{}/%2f", free_address());
    let mut spooled = 0;
    let mut refused = Vec::new();
    for i in 0..200 {
        let request = common::rabbitmq(&url, &format!("ex{i}"), "k", format!("m{i}"));
        let answer = common::send_rabbitmq(&mut grpc, request).await.0;
        match answer.error_no {
            0 if answer.spooled => spooled += 1,
            5 => refused.push(answer.error_message),
            _ => panic!("{answer:?}"),
        }
    }
    assert_eq!((spooled, refused.len()), (50, 150));
    assert!(
        refused.iter().all(|m| m.contains("max_targets")),
        "{refused:?}"
    );
    let spool = spool_of(daemon.ops_addr()).await;
    assert_eq!(
        spool.targets.len(),
        50,
        "state only for targets with records"
    );
    let stats = report(daemon.ops_addr()).await;
    assert_eq!(stats.spool.unwrap().spooled_total, 50);
}
