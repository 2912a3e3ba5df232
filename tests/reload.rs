//! Reloading the config without a restart (SIGHUP, `ferry reload`): a real daemon under
//! 1,000 msg/s to real Kafka has a route added, one changed and one removed, and then an
//! invalid edit; no call fails because of it.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{ferry, free_address, scratch_dir, serve_config_only, serve_logged};
use ferry::proto::ferry::v1::send_client::SendClient;
use ferry::proto::ferry::v1::{SendReply, SendRequest, send_request};
use ferry_testkit::{kafka, shared_kafka};
use tonic::transport::Channel;

/// A Kafka route's table.
fn route(name: &str, brokers: &str, topic: &str) -> String {
    format!("[routes.{name}]\nkind = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopic = \"{topic}\"\n\n")
}

/// One message to `route` over `client`.
async fn send(mut client: SendClient<Channel>, route: &str, data: String) -> (SendReply, Duration) {
    let started = Instant::now();
    let request = SendRequest {
        target: Some(send_request::Target::Route(route.into())),
        data: Bytes::from(data),
        ..Default::default()
    };
    let reply = client.send(request).await.unwrap().into_inner();
    (reply, started.elapsed())
}

/// Writes `config` to `path` through a rename, as an editor or a deployment tool does.
fn write(path: &Path, config: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, config).unwrap();
    std::fs::rename(next, path).unwrap();
}

/// Waits until the daemon's `/stats` shows `reloads` reloads and `failures` refusals;
/// returns how long that took.
async fn until_reloaded(ops: &str, reloads: u64, failures: u64) -> Duration {
    let started = Instant::now();
    loop {
        let config = common::report(ops).await.config;
        if (config.reloads, config.reload_failures) == (reloads, failures) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no reload shown: {config:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_under_load_adds_changes_and_removes_routes_without_failing_a_call() {
    const RATE: u64 = 1_000;
    let brokers = shared_kafka();
    let topic = |name: &str| kafka::unique_topic(&format!("ferry.test.reload.{name}"));
    let (kept, old, new, added) = (topic("kept"), topic("old"), topic("new"), topic("added"));
    for t in [&kept, &old, &new, &added] {
        kafka::create_topic(&brokers, t).await;
    }
    let dir = scratch_dir("reload");
    let path = dir.join("ferry.toml");
    let pid_file = dir.join("ferry.pid");
    let head = format!("[ops]\npid_file = \"{}\"\n\n", pid_file.display());
    let first = head.clone()
        + &route("kept", &brokers, &kept)
        + &route("changed", &brokers, &old)
        + &route("removed", &brokers, &old);
    write(&path, &first);
    let log = dir.join("daemon.log");
    let daemon = serve_logged(
        &free_address(),
        &["--config", &path.to_string_lossy()],
        &log,
    );
    let ops = daemon.ops_address.clone();
    let channel = Channel::from_shared(format!("http://{}", daemon.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = SendClient::new(channel);

    // A warm producer, so that the figures below are the reloads' cost, not a connection's.
    let (reply, _) = send(client.clone(), "kept", "warm-up".into()).await;
    assert_eq!(reply.error_no, 0, "{reply:?}");

    // The load: route `kept`, which every config keeps, at RATE for 3 s.
    let started = Instant::now();
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            common::paced(
                RATE,
                || started.elapsed() < Duration::from_secs(3),
                |n| {
                    let call = send(client.clone(), "kept", format!("load-{n}"));
                    let at = started.elapsed();
                    async move { (call.await, at) }
                },
            )
            .await
            .join_all()
            .await
        })
    };

    // 1. After 1 s: `changed` now goes to the new topic, `added` appears, `removed` goes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = head.clone()
        + &route("kept", &brokers, &kept)
        + &route("changed", &brokers, &new)
        + &route("added", &brokers, &added);
    write(&path, &second);
    let hup_at = started.elapsed();
    daemon.signal("HUP");
    let applied_in = until_reloaded(&ops, 1, 0).await;
    let (reply, _) = send(client.clone(), "added", "to-added".into()).await;
    assert_eq!(reply.error_no, 0, "{reply:?}");
    let (reply, _) = send(client.clone(), "changed", "to-new".into()).await;
    assert_eq!(reply.error_no, 0, "{reply:?}");
    let (reply, _) = send(client.clone(), "removed", "to-nowhere".into()).await;
    assert_eq!(reply.error_no, 1, "{reply:?}");
    assert!(reply.error_message.contains("route"), "{reply:?}");

    // 2. After 2 s: an invalid edit, through `ferry reload`: refused whole, the old one
    // keeps serving.
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(applied_in)).await;
    write(
        &path,
        &(second.clone() + &route("broken", &brokers, "not a topic")),
    );
    let output = ferry(&[
        "reload",
        "--config",
        &path.to_string_lossy(),
        "--http",
        &ops,
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("reload refused") && said.contains("routes.broken.topic"),
        "{said}"
    );
    let stats = common::report(&ops).await;
    assert_eq!((stats.config.reloads, stats.config.reload_failures), (1, 1));
    assert!(stats.config.last_error.contains("routes.broken.topic"));
    assert!(stats.config.last_reload_failed, "FerryReloadFailed's gauge");
    // `ferry stats` says so under its first line.
    let table = ferry(&["stats", "--http", &ops]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let second_line = table.lines().nth(1).unwrap_or_default();
    assert!(
        second_line.starts_with("config: the last reload was refused")
            && second_line.contains("routes.broken.topic"),
        "{table}"
    );
    let names: Vec<&str> = stats.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["added", "changed", "kept"],
        "the second config still serves"
    );
    let (reply, _) = send(client.clone(), "added", "still-added".into()).await;
    assert_eq!(reply.error_no, 0, "{reply:?}");
    // The file fixed and reloaded: the refusal no longer stands.
    write(&path, &second);
    daemon.signal("HUP");
    until_reloaded(&ops, 2, 1).await;
    assert!(!common::report(&ops).await.config.last_reload_failed);

    // No call of the load failed, and each arrived once.
    let results = load.await.unwrap();
    let failed: Vec<&SendReply> = results
        .iter()
        .map(|((reply, _), _)| reply)
        .filter(|reply| reply.error_no != 0)
        .collect();
    assert!(
        failed.is_empty(),
        "{} calls failed, e.g. {:?}",
        failed.len(),
        failed[0]
    );
    // Latency of the calls started within 250 ms after the SIGHUP, against all the others.
    let window = hup_at..hup_at + Duration::from_millis(250);
    let quantiles = |mut took: Vec<Duration>| {
        took.sort();
        let q = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
        format!(
            "{} calls: p50 {:?} p99 {:?} max {:?}",
            took.len(),
            q(0.5),
            q(0.99),
            q(1.0)
        )
    };
    let (near, rest): (Vec<_>, Vec<_>) = results
        .iter()
        .map(|((_, took), at)| (*took, window.contains(at)))
        .partition(|(_, near)| *near);
    println!(
        "load at {RATE}/s: in the 250 ms after SIGHUP {}; otherwise {}; the reload showed in /stats {applied_in:?} after SIGHUP",
        quantiles(near.into_iter().map(|(took, _)| took).collect()),
        quantiles(rest.into_iter().map(|(took, _)| took).collect()),
    );
    let delivered = kafka::drain_topic(
        &brokers,
        &kept,
        Duration::from_secs(1),
        Duration::from_secs(20),
    );
    assert_eq!(
        delivered.len(),
        results.len() + 1,
        "the load and the warm-up, once each"
    );
    let to = |topic: &str| {
        kafka::drain_topic(
            &brokers,
            topic,
            Duration::from_millis(500),
            Duration::from_secs(10),
        )
    };
    assert_eq!(to(&added), [b"to-added".to_vec(), b"still-added".to_vec()]);
    assert_eq!(to(&new), [b"to-new".to_vec()]);
    let none = kafka::drain_topic(
        &brokers,
        &old,
        Duration::from_millis(500),
        Duration::from_secs(3),
    );
    assert!(
        none.is_empty(),
        "nothing went to the changed route's old topic"
    );
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    let log = std::fs::read_to_string(&log).unwrap();
    let applied = log
        .lines()
        .find(|line| line.contains("Config reloaded"))
        .expect("the reload is logged");
    println!("{applied}");
    assert_eq!(
        log.matches("Config reload refused").count(),
        1,
        "logged once"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn ferry_reload_refuses_a_pid_file_that_names_no_single_process() {
    let dir = scratch_dir("reload-pid");
    let pid_file = dir.join("ferry.pid");
    // "-1" would signal every process this user may signal, "0" the caller's group. No
    // process holds the file's lock, so none of them is signalled, whatever it says.
    for text in ["-1", "0", "1", "not a pid", ""] {
        std::fs::write(&pid_file, text).unwrap();
        let output = ferry(&[
            "reload",
            "--pid-file",
            &pid_file.to_string_lossy(),
            "--http",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
        assert_eq!(output.status.code(), Some(1), "{text:?}: {output:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("no running ferry holds"), "{said}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A raw Kafka request naming `brokers`; its `error_no`.
async fn raw_kafka(address: &str, brokers: &str) -> i32 {
    let mut client = common::client_at(address).await;
    let request = common::kafka(brokers, "t", "probe");
    common::send_kafka(&mut client, request).await.0.error_no
}

/// Runs `ferry reload` for `config` against the daemon at `ops`; its exit code and stdout.
fn ferry_reload(config: &Path, ops: &str) -> (Option<i32>, String) {
    let output = ferry(&[
        "reload",
        "--config",
        &config.to_string_lossy(),
        "--http",
        ops,
    ])
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), said)
}

#[tokio::test]
async fn a_reload_that_moves_listen_to_loopback_cannot_open_a_daemon_listening_everywhere() {
    const TEST: &str =
        "a_reload_that_moves_listen_to_loopback_cannot_open_a_daemon_listening_everywhere";
    // The daemon listens on every interface: only inside a private network namespace.
    if !common::process::in_private_network(TEST) {
        return;
    }
    let dir = scratch_dir("reload-access");
    let path = dir.join("ferry.toml");
    let port = free_address().rsplit_once(':').unwrap().1.to_owned();
    let (everywhere, loopback) = (format!("0.0.0.0:{port}"), format!("127.0.0.1:{port}"));
    let ops_address = free_address();
    let ops = format!(
        "[ops]\nlisten = \"{ops_address}\"\npid_file = \"{}\"\n",
        dir.join("ferry.pid").display()
    );
    let allowed = "[access]\nkafka_brokers = [\"127.0.0.1:19092\"]\n";
    write(
        &path,
        &format!("[server]\nlisten = \"{everywhere}\"\n{ops}{allowed}"),
    );
    // No --listen: the file's address is the one in force.
    let daemon = serve_config_only(&path, &loopback, &ops_address, &dir.join("log"));
    let elsewhere = "127.0.0.1:1";
    assert_eq!(raw_kafka(&loopback, elsewhere).await, 7);

    // The file now says loopback and has no [access]: on loopback that would allow any
    // target, but the daemon still listens everywhere. Refused whole; still 7.
    write(&path, &format!("[server]\nlisten = \"{loopback}\"\n{ops}"));
    let (code, said) = ferry_reload(&path, &daemon.ops_address);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("reload refused") && said.contains("beyond loopback"),
        "{said}"
    );
    assert_eq!(raw_kafka(&loopback, elsewhere).await, 7, "access widened");

    // With an allowlist of its own the rest applies; the listen address waits for a
    // restart, and what the new list opens up is said.
    let wider = "[access]\nkafka_brokers = [\"127.0.0.1:19092\", \"127.0.0.1:1\"]\n";
    write(
        &path,
        &format!("[server]\nlisten = \"{loopback}\"\n{ops}{wider}"),
    );
    let (code, said) = ferry_reload(&path, &daemon.ops_address);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("needs a restart to apply: server.listen (still 0.0.0.0"),
        "{said}"
    );
    assert!(
        said.contains("widens access: [access]: Kafka broker 127.0.0.1:1 is now allowed"),
        "{said}"
    );
    assert_ne!(
        raw_kafka(&loopback, elsewhere).await,
        7,
        "the new list applies"
    );
    assert_eq!(raw_kafka(&loopback, "127.0.0.1:2").await, 7);
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}
