//! End-to-end against a real RabbitMQ: exchanges of one server share one AMQP connection
//! (a channel each), a connection the broker closes restarts every exchange on it without
//! losing a confirmed message, a channel error stays with its exchange, and
//! `rabbitmq.mandatory` answers unroutable messages 3.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ferry_testkit::brokers::{rabbitmqctl, shared_amqp_dir};
use ferry_testkit::{amqp, shared_amqp_url};
use lapin::options::ExchangeDeleteOptions;
use lapin::{Connection, ConnectionProperties};

/// Error code of `proto/messagebroker.proto` for a message the broker refused.
const REJECTED: i32 = 3;

/// The broker's connections whose client-provided name is `name`, by connection pid.
fn connections_named(name: &str) -> Vec<String> {
    let listing = rabbitmqctl(
        &shared_amqp_dir(),
        &["list_connections", "-q", "pid", "client_properties"],
    );
    listing
        .lines()
        .filter(|line| line.contains(&format!("\"{name}\"")))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The OS threads of this process (the daemon runs in it).
fn threads() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Deletes `exchanges` from the shared broker (they are durable).
async fn delete_exchanges(exchanges: impl IntoIterator<Item = String>) {
    let connection = Connection::connect(&shared_amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    for exchange in exchanges {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
    }
    let _ = connection.close(200, "done".into()).await;
}

/// A daemon whose AMQP connections carry a name of their own.
fn daemon_named(name: &str, mandatory: bool) -> ferry::daemon::server::Daemon {
    let mut settings = settings();
    settings.producer.amqp.connection_name = name.to_owned();
    settings.producer.amqp.mandatory = mandatory;
    start(settings)
}

#[tokio::test]
async fn a_thousand_exchanges_of_one_server_share_one_connection_and_add_no_threads() {
    let url = shared_amqp_url();
    let name = unique("ferry-shared");
    let daemon = daemon_named(&name, false);
    let prefix = unique("ferry.test.many");
    let exchanges: Vec<String> = (0..1000).map(|i| format!("{prefix}.{i}")).collect();

    let mut client = client(&daemon).await;
    let (r, _) = send_rabbitmq(&mut client, rabbitmq(&url, &exchanges[0], "k", "m")).await;
    assert_eq!(r.error_no, 0, "{}", r.error_message);
    let threads_with_one = threads();

    let started = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(32));
    let mut sends = tokio::task::JoinSet::new();
    for exchange in &exchanges[1..] {
        let slot = Arc::clone(&slots).acquire_owned().await.unwrap();
        let mut client = client.clone();
        let request = rabbitmq(&url, exchange, "k", "m");
        sends.spawn(async move {
            let _slot = slot;
            send_rabbitmq(&mut client, request).await.0
        });
    }
    while let Some(response) = sends.join_next().await {
        let response = response.unwrap();
        assert_eq!(response.error_no, 0, "{}", response.error_message);
    }
    let threads_with_all = threads();
    let connections = connections_named(&name);
    println!(
        "1,000 exchanges in {:?}: {} connection(s), threads {threads_with_one} -> {threads_with_all}",
        started.elapsed(),
        connections.len()
    );
    assert_eq!(stats(&daemon).len(), 1000);
    assert_eq!(connections.len(), 1, "{connections:?}");
    assert!(
        threads_with_all <= threads_with_one + 2,
        "threads grew from {threads_with_one} to {threads_with_all}"
    );
    drop(client);
    drop(daemon);
    delete_exchanges(exchanges).await;
}

#[tokio::test]
async fn max_channels_per_connection_opens_a_second_connection_beyond_it() {
    let url = shared_amqp_url();
    let name = unique("ferry-bound");
    let mut settings = settings();
    settings.producer.amqp.connection_name = name.clone();
    settings.producer.amqp.max_channels_per_connection = 2;
    let daemon = start(settings);
    let prefix = unique("ferry.test.bound");
    let exchanges: Vec<String> = (0..5).map(|i| format!("{prefix}.{i}")).collect();
    let mut client = client(&daemon).await;
    for exchange in &exchanges {
        let (r, _) = send_rabbitmq(&mut client, rabbitmq(&url, exchange, "k", "m")).await;
        assert_eq!(r.error_no, 0, "{}", r.error_message);
    }
    // Five channels, at most two per connection.
    assert_eq!(connections_named(&name).len(), 3);
    drop(client);
    drop(daemon);
    delete_exchanges(exchanges).await;
}

#[tokio::test]
async fn a_connection_closed_by_the_broker_under_load_restarts_every_exchange_and_loses_nothing() {
    let url = shared_amqp_url();
    let name = unique("ferry-closed");
    let daemon = daemon_named(&name, false);
    let prefix = unique("ferry.test.closed");
    let exchanges: Vec<String> = (0..4).map(|i| format!("{prefix}.{i}")).collect();
    for exchange in &exchanges {
        amqp::bind_queue(&url, exchange, exchange, "#").await;
    }
    let client = client(&daemon).await;
    let stop = Arc::new(AtomicBool::new(false));
    // One sender per exchange, one message at a time, until told to stop; each returns the
    // messages answered 0.
    let senders: Vec<_> = exchanges
        .iter()
        .map(|exchange| {
            let (mut client, url, exchange, stop) = (
                client.clone(),
                url.clone(),
                exchange.clone(),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let (mut delivered, mut refused) = (Vec::new(), 0);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = format!("{exchange}/{n}");
                    n += 1;
                    let request = rabbitmq(&url, &exchange, "k", body.clone());
                    match send_rabbitmq(&mut client, request).await.0.error_no {
                        0 => delivered.push(body),
                        _ => refused += 1,
                    }
                }
                (exchange, delivered, refused)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(700)).await;
    let connections = connections_named(&name);
    assert_eq!(connections.len(), 1, "{connections:?}");
    let restarts_before: u64 = stats(&daemon).iter().map(|s| s.restarts).sum();
    rabbitmqctl(
        &shared_amqp_dir(),
        &["close_connection", &connections[0], "closed by the test"],
    );
    let closed_at = Instant::now();
    // Every exchange is restarted and delivering again, over one new connection.
    loop {
        let snapshot = stats(&daemon);
        if snapshot.iter().all(|s| s.restarts >= 1)
            && connections_named(&name).len() == 1
            && connections_named(&name) != connections
        {
            break;
        }
        assert!(
            closed_at.elapsed() < Duration::from_secs(15),
            "not every exchange restarted: {snapshot:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Deliveries resume over the new connection: waited for, not slept on (the shared
    // broker may be busy with this file's other tests, 1,000 exchanges among them).
    let sent_at_recovery: u64 = stats(&daemon).iter().map(|s| s.sent).sum();
    let recovered = Instant::now();
    while stats(&daemon).iter().map(|s| s.sent).sum::<u64>() <= sent_at_recovery {
        assert!(
            recovered.elapsed() < Duration::from_secs(15),
            "no delivery after the reconnection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);

    for sender in senders {
        let (exchange, delivered, refused) = sender.await.unwrap();
        let received: HashSet<String> = amqp::drain_queue(
            &url,
            &exchange,
            Duration::from_secs(1),
            Duration::from_secs(20),
        )
        .await
        .into_iter()
        .map(|m| String::from_utf8(m.data).unwrap())
        .collect();
        let lost: Vec<_> = delivered
            .iter()
            .filter(|b| !received.contains(*b))
            .collect();
        println!(
            "{exchange}: {} answered 0, {refused} refused, {} in the queue",
            delivered.len(),
            received.len()
        );
        assert!(lost.is_empty(), "answered 0 but not in the queue: {lost:?}");
    }
    let restarts_after: u64 = stats(&daemon).iter().map(|s| s.restarts).sum();
    assert!(restarts_after >= restarts_before + exchanges.len() as u64);
    drop(client);
    drop(daemon);
    delete_exchanges(exchanges).await;
}

#[tokio::test]
async fn a_channel_error_on_one_exchange_does_not_disturb_another_on_the_same_connection() {
    let url = shared_amqp_url();
    let name = unique("ferry-channel");
    let daemon = daemon_named(&name, false);
    let broken = unique("ferry.test.broken");
    let steady = unique("ferry.test.steady");
    amqp::bind_queue(&url, &steady, &steady, "#").await;
    let mut client = client(&daemon).await;
    for exchange in [&broken, &steady] {
        let (r, _) = send_rabbitmq(&mut client, rabbitmq(&url, exchange, "k", "warm")).await;
        assert_eq!(r.error_no, 0, "{}", r.error_message);
    }
    assert_eq!(connections_named(&name).len(), 1);

    // The steady exchange sends throughout; the broken one's exchange is deleted under it,
    // so its next publish closes its channel (404 NOT_FOUND).
    let stop = Arc::new(AtomicBool::new(false));
    let steady_sender = {
        let (mut client, url, steady, stop) = (
            client.clone(),
            url.clone(),
            steady.clone(),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            let mut answers = Vec::new();
            // Until told to stop, and at least 21 answers: on a loaded machine the
            // channel error can be over in fewer, and the count is not what is tested.
            while !stop.load(Ordering::Relaxed) || answers.len() <= 20 {
                let request = rabbitmq(&url, &steady, "k", "steady");
                let r = send_rabbitmq(&mut client, request).await.0;
                answers.push((r.error_no, r.error_message));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    delete_exchanges([broken.clone()]).await;
    let (first, _) = send_rabbitmq(&mut client, rabbitmq(&url, &broken, "k", "lost")).await;
    println!(
        "after the exchange was deleted: {} {}",
        first.error_no, first.error_message
    );
    assert_ne!(
        first.error_no, 0,
        "a deleted exchange cannot take a message"
    );
    // Its producer restarts on a new channel and declares the exchange again.
    let recovered = Instant::now();
    loop {
        let (r, _) = send_rabbitmq(&mut client, rabbitmq(&url, &broken, "k", "again")).await;
        if r.error_no == 0 {
            break;
        }
        assert!(recovered.elapsed() < Duration::from_secs(10), "{r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = steady_sender.await.unwrap();
    let errors: Vec<_> = answers.iter().filter(|(code, _)| *code != 0).collect();
    println!(
        "steady exchange: {} answers during the channel error",
        answers.len()
    );
    assert!(answers.len() > 20, "{}", answers.len());
    assert!(errors.is_empty(), "{errors:?}");
    let steady_stats = stats(&daemon)
        .into_iter()
        .find(|s| s.target.ends_with(&format!("exchange {steady}")))
        .unwrap();
    assert_eq!(steady_stats.restarts, 0, "{steady_stats:?}");
    assert_eq!(connections_named(&name).len(), 1);
    drop(client);
    drop(daemon);
    delete_exchanges([broken, steady]).await;
}

#[tokio::test]
async fn with_mandatory_an_unroutable_message_is_answered_3_and_counted() {
    let url = shared_amqp_url();
    let exchange = unique("ferry.test.mandatory");
    amqp::bind_queue(&url, &exchange, &exchange, "bound").await;

    // The predecessor's behaviour by default: the broker drops it and ferry says 0.
    let lax = daemon_named(&unique("ferry-lax"), false);
    let mut sender = client(&lax).await;
    let (r, _) = send_rabbitmq(&mut sender, rabbitmq(&url, &exchange, "nowhere", "m")).await;
    assert_eq!(r.error_no, 0, "{}", r.error_message);
    assert_eq!(stats_of(&lax, "rabbitmq").returned, 0);
    drop(sender);
    drop(lax);

    let daemon = daemon_named(&unique("ferry-mandatory"), true);
    let mut client = client(&daemon).await;
    let (r, _) = send_rabbitmq(&mut client, rabbitmq(&url, &exchange, "bound", "kept")).await;
    assert_eq!(r.error_no, 0, "{}", r.error_message);
    let (r, _) = send_rabbitmq(&mut client, rabbitmq(&url, &exchange, "nowhere", "m")).await;
    assert_eq!(r.error_no, REJECTED, "{}", r.error_message);
    assert!(
        r.error_message.contains(&format!(
            "unroutable: no queue bound for routing key nowhere on exchange {exchange}"
        )),
        "{}",
        r.error_message
    );
    let snapshot = stats_of(&daemon, "rabbitmq");
    assert_eq!((snapshot.sent, snapshot.returned), (1, 1), "{snapshot:?}");
    // The channel stays usable after a return.
    let (r, _) = send_rabbitmq(&mut client, rabbitmq(&url, &exchange, "bound", "kept")).await;
    assert_eq!(r.error_no, 0, "{}", r.error_message);
    assert_eq!(stats_of(&daemon, "rabbitmq").restarts, 0);
    let received = amqp::read_queue(&url, &exchange, 2, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 2);
    drop(client);
    drop(daemon);
    delete_exchanges([exchange]).await;
}

/// A daemon whose `[rabbitmq]` TLS files are `ca` and, if given, the client certificate.
fn tls_daemon(
    pki: &common::pki::Pki,
    ca: &str,
    client_certificate: bool,
) -> ferry::daemon::server::Daemon {
    let mut config = config();
    config.rabbitmq.tls_ca_file = pki.path(ca);
    if client_certificate {
        config.rabbitmq.tls_cert_file = pki.path("client.pem");
        config.rabbitmq.tls_key_file = pki.path("client.key");
    }
    start(config.validate().expect("TLS config"))
}

#[tokio::test]
async fn amqps_trusts_the_site_ca_logs_in_by_certificate_and_refuses_an_untrusted_server() {
    use ferry_testkit::{BrokerKind, PrivateBroker};
    let pki = common::pki::Pki::generate(common::process::scratch_dir("amqps-pki"));
    let tls_port = ferry_testkit::brokers::run_script(&["free-port"])
        .trim()
        .to_owned();
    // The listener wants a client certificate signed by the CA: a connection without one
    // is refused, so a delivery proves ferry presented it.
    let extra = format!(
        "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
         ssl_options.cacertfile = {}\n\
         ssl_options.certfile = {}\n\
         ssl_options.keyfile = {}\n\
         ssl_options.verify = verify_peer\n\
         ssl_options.fail_if_no_peer_cert = true\n\
         auth_mechanisms.1 = PLAIN\n\
         auth_mechanisms.2 = EXTERNAL\n\
         ssl_cert_login_from = common_name\n",
        pki.path("ca.pem"),
        pki.path("server.pem"),
        pki.path("server.key"),
    );
    let broker = PrivateBroker::start_with_plugins(
        BrokerKind::RabbitMq,
        &extra,
        &["rabbitmq_auth_mechanism_ssl"],
    );
    let plain = broker.amqp_url();
    let secure = format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f");
    let exchange = unique("ferry.test.tls");
    amqp::bind_queue(&plain, &exchange, &exchange, "#").await;

    let daemon = tls_daemon(&pki, "ca.pem", true);
    let mut sender = common::client(&daemon).await;
    let (r, _) = send_rabbitmq(&mut sender, rabbitmq(&secure, &exchange, "k", "over TLS")).await;
    assert_eq!(r.error_no, 0, "{}", r.error_message);
    let received = amqp::read_queue(&plain, &exchange, 1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].data, b"over TLS");

    // EXTERNAL: the client certificate is the credential (its common name, "client", is
    // a broker user with no password).
    let ctl = |args: &[&str]| rabbitmqctl(broker.dir(), args);
    ctl(&["add_user", "client", "unused-password"]);
    ctl(&["clear_password", "client"]);
    ctl(&["set_permissions", "-p", "/", "client", ".*", ".*", ".*"]);
    let external = format!("amqps://127.0.0.1:{tls_port}/%2f?auth_mechanism=external");
    let (r, _) = send_rabbitmq(&mut sender, rabbitmq(&external, &exchange, "k", "external")).await;
    assert_eq!(r.error_no, 0, "{}", r.error_message);
    let received = amqp::read_queue(&plain, &exchange, 1, Duration::from_secs(10)).await;
    assert_eq!(received[0].data, b"external");
    let connections = ctl(&["list_connections", "-q", "auth_mechanism", "user"]);
    assert!(
        connections
            .lines()
            .any(|l| l.contains("EXTERNAL") && l.contains("client")),
        "{connections}"
    );
    drop(sender);
    drop(daemon);

    // A CA that did not sign the server's certificate: answered 4, saying so.
    let daemon = tls_daemon(&pki, "other-ca.pem", true);
    let mut sender = common::client(&daemon).await;
    let started = Instant::now();
    let (r, _) = send_rabbitmq(&mut sender, rabbitmq(&secure, &exchange, "k", "m")).await;
    println!(
        "untrusted: {} {} in {:?}",
        r.error_no,
        r.error_message,
        started.elapsed()
    );
    assert_eq!(r.error_no, 4, "{}", r.error_message);
    assert!(
        r.error_message.contains("certificate was not trusted"),
        "{}",
        r.error_message
    );
    drop(sender);
    drop(daemon);

    // Without a client certificate the server refuses the handshake.
    let daemon = tls_daemon(&pki, "ca.pem", false);
    let mut sender = common::client(&daemon).await;
    let (r, _) = send_rabbitmq(&mut sender, rabbitmq(&secure, &exchange, "k", "m")).await;
    println!("no client certificate: {} {}", r.error_no, r.error_message);
    assert_ne!(r.error_no, 0);
}
