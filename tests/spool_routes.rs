//! End-to-end: spooled messages follow the config in force. A message sent through a named
//! route is spooled under the route's name (no address, no password), and replay resolves
//! the route again, so a password rotated with a reload during an outage is the one used.
//! A line the config no longer allows is held — neither sent nor deleted — and sent once
//! the config allows it again. Real RabbitMQ nodes of the tests' own; real daemons.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{Served, ferry, free_address, scratch_dir, serve_logged};
use common::{client_at, first_copies, unique, wait_for_spool};
use ferry::proto::ferry::v1::send_client::SendClient;
use ferry::proto::ferry::v1::{SendRequest, send_request};
use ferry_testkit::brokers::rabbitmqctl;
use ferry_testkit::{BrokerKind, PrivateBroker, amqp};
use tonic::transport::Channel;

/// Writes `text` to `path` through a rename, as a deployment tool does.
fn write(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(next, path).unwrap();
}

/// A RabbitMQ route's table: user `user` on `broker`, its password in `password_file`.
fn route(
    name: &str,
    broker: &PrivateBroker,
    user: &str,
    password_file: &Path,
    exchange: &str,
) -> String {
    format!(
        "[routes.{name}]\nkind = \"rabbitmq\"\nserver = \"amqp://{user}@{}/%2f\"\n\
         password_file = {password_file:?}\nexchange = \"{exchange}\"\nrouting_key = \"k\"\n\n",
        broker.address()
    )
}

/// A `ferry serve` child with `config`, logging into `dir`; and its gRPC address.
fn serve(dir: &Path, config: &Path) -> (Served, String) {
    let address = free_address();
    let daemon = serve_logged(
        &address,
        &["--config", config.to_str().unwrap()],
        &dir.join("ferry.log"),
    );
    (daemon, address)
}

/// A `ferry.v1` client of the daemon at `address`.
async fn send_client(address: &str) -> SendClient<Channel> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    SendClient::new(channel)
}

/// The daemon's `/metrics` text.
async fn metrics(ops: &str) -> String {
    let uri = format!("http://{ops}/metrics").parse().unwrap();
    let body = ferry::cli::ops::fetch(uri).await.unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

/// Sends `body` through `route`; must be answered 0 and spooled.
async fn spool_through(client: &mut SendClient<Channel>, route: &str, body: &str) {
    let request = SendRequest {
        target: Some(send_request::Target::Route(route.into())),
        data: Bytes::from(body.to_owned()),
        ..Default::default()
    };
    let reply = client.send(request).await.unwrap().into_inner();
    assert!(reply.error_no == 0 && reply.spooled, "{reply:?}");
}

/// Waits until `/stats` shows `reloads` reloads applied.
async fn until_reloaded(ops: &str, reloads: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::report(ops).await.config.reloads < reloads {
        assert!(Instant::now() < deadline, "reload {reloads} not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_password_rotated_during_the_outage_is_the_one_replay_uses() {
    let broker = PrivateBroker::start(BrokerKind::RabbitMq);
    let (user, old, new) = ("ferry-rotated", "old-password-1", "new-password-2");
    rabbitmqctl(broker.dir(), &["add_user", user, old]);
    rabbitmqctl(
        broker.dir(),
        &["set_permissions", "-p", "/", user, ".*", ".*", ".*"],
    );
    let (exchange, queue) = (unique("ferry.rotate"), unique("rotate"));
    amqp::bind_queue(&broker.amqp_url(), &exchange, &queue, "#").await;
    let dir = scratch_dir("spool-route-rotate");
    let password_file = dir.join("mq.password");
    std::fs::write(&password_file, old).unwrap();
    let config = dir.join("ferry.toml");
    let spool_dir = dir.join("spool");
    write(
        &config,
        &(format!("[spool]\ndir = {spool_dir:?}\n\n")
            + &route("events", &broker, user, &password_file, &exchange)),
    );
    let (daemon, address) = serve(&dir, &config);
    let mut client = send_client(&address).await;
    // The password is rotated on the broker, then the broker goes down; the daemon has
    // not connected yet, and its route's file still holds the old password. (Rotated
    // after the restart instead, replay could deliver everything with the old password
    // before rabbitmqctl is done.)
    rabbitmqctl(broker.dir(), &["change_password", user, new]);
    broker.stop();
    let sent: Vec<String> = (0..20).map(|i| format!("r{i:02}")).collect();
    for body in &sent {
        spool_through(&mut client, "events", body).await;
    }
    // The spool holds the route's name, not the server or its password.
    let mut stored = String::new();
    for file in std::fs::read_dir(&spool_dir).unwrap() {
        let path = file.unwrap().path();
        if path.is_file() {
            stored += &String::from_utf8_lossy(&std::fs::read(path).unwrap());
        }
    }
    assert!(stored.contains("events"), "the route's name is stored");
    assert!(!stored.contains(old), "a password in the spool");
    assert!(
        !stored.contains(&broker.address()),
        "an address in the spool"
    );
    // The broker comes back refusing the old password.
    broker.restart();
    let spool = wait_for_spool(
        &daemon.ops_address,
        Duration::from_secs(60),
        "replay met the old password",
        |s| {
            s.targets
                .iter()
                .any(|t| t.last_error.contains("refused the login"))
        },
    )
    .await;
    assert_eq!(spool.targets[0].kind, "route", "{spool:#?}");
    assert_eq!(spool.targets[0].spooled, 20, "refused, kept: {spool:#?}");
    // The operator writes the new password and reloads: replay uses it.
    write(&password_file, new);
    daemon.signal("HUP");
    until_reloaded(&daemon.ops_address, 1).await;
    let received = amqp::read_queue(&broker.amqp_url(), &queue, 20, Duration::from_secs(60)).await;
    assert_eq!(
        first_copies(received),
        sent,
        "every one, in order, with the new password"
    );
    let spool = wait_for_spool(
        &daemon.ops_address,
        Duration::from_secs(30),
        "the spool empties",
        |s| s.targets.is_empty(),
    )
    .await;
    assert_eq!((spool.replayed_total, spool.dead_lettered_total), (20, 0));
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn a_line_the_config_no_longer_allows_is_held_until_it_does() {
    let broker = PrivateBroker::start(BrokerKind::RabbitMq);
    let url = broker.amqp_url();
    let (exchange, queue) = (unique("ferry.held"), unique("held"));
    amqp::bind_queue(&url, &exchange, &queue, "#").await;
    let dir = scratch_dir("spool-held");
    let password_file = dir.join("mq.password");
    std::fs::write(&password_file, "guest").unwrap();
    let config = dir.join("ferry.toml");
    let spool_dir = dir.join("spool");
    let head = format!("[spool]\ndir = {spool_dir:?}\n\n");
    let with_route = head.clone() + &route("events", &broker, "guest", &password_file, &exchange);
    write(&config, &with_route);
    let (daemon, address) = serve(&dir, &config);
    let mut grpc = client_at(&address).await;
    let mut client = send_client(&address).await;
    broker.stop();
    // Three through the route, three to the same exchange named outright.
    for i in 0..3 {
        spool_through(&mut client, "events", &format!("route{i}")).await;
        let request = common::rabbitmq(&url, &exchange, "k", format!("raw{i}"));
        let (answer, _) = common::send_rabbitmq(&mut grpc, request).await;
        assert!(answer.error_no == 0 && answer.spooled, "{answer:?}");
    }
    // The route is removed and the allowlist no longer names the server.
    let elsewhere = "[access]\nrabbitmq = [{ server = \"127.0.0.1:1\", exchanges = [\"*\"] }]\n";
    write(&config, &(head.clone() + elsewhere));
    daemon.signal("HUP");
    until_reloaded(&daemon.ops_address, 1).await;
    broker.restart();
    let spool = wait_for_spool(
        &daemon.ops_address,
        Duration::from_secs(30),
        "both lines held",
        |s| s.targets.len() == 2 && s.targets.iter().all(|t| !t.held.is_empty()),
    )
    .await;
    // Held: nothing sent, nothing deleted, for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spool_now = common::report(&daemon.ops_address).await.spool.unwrap();
    let held: Vec<u64> = spool_now.targets.iter().map(|t| t.spooled).collect();
    assert_eq!(held, [3, 3], "{spool:#?}");
    assert_eq!(spool_now.replayed_total + spool_now.dead_lettered_total, 0);
    let metrics = metrics(&daemon.ops_address).await;
    assert!(
        metrics.contains("ferry_spool_target_held{kind=\"route\",target=\"events\"} 1"),
        "{metrics}"
    );
    let output = ferry(&["spool", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{listing}");
    assert_eq!(listing.matches("HELD").count(), 2, "{listing}");
    assert!(
        listing.contains("route events is not in the config in force"),
        "{listing}"
    );
    // Both allowed again: every held message is sent, in order per line.
    write(&config, &with_route);
    daemon.signal("HUP");
    until_reloaded(&daemon.ops_address, 2).await;
    let arrived = first_copies(amqp::read_queue(&url, &queue, 6, Duration::from_secs(60)).await);
    let line = |prefix: &str| -> Vec<String> {
        arrived
            .iter()
            .filter(|b| b.starts_with(prefix))
            .cloned()
            .collect()
    };
    assert_eq!(line("route"), ["route0", "route1", "route2"]);
    assert_eq!(line("raw"), ["raw0", "raw1", "raw2"]);
    let spool = wait_for_spool(
        &daemon.ops_address,
        Duration::from_secs(30),
        "the spool empties",
        |s| s.targets.is_empty(),
    )
    .await;
    assert_eq!(spool.replayed_total, 6);
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}
