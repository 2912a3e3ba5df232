//! End-to-end against tansu: a Kafka cluster that requires SASL/SCRAM or TLS is reached
//! with the librdkafka properties of its `[[kafka.clusters]]` entry (the password read from
//! a file), and a wrong password is answered 3 at once rather than retried.
//!
//! tansu 0.6 takes `--cert` and `--key` but never uses them (its broker builds the TLS
//! acceptor and drops it), so the TLS test puts stunnel, a TLS terminator from Debian, in
//! front of it and has tansu advertise stunnel's port: every request ferry makes goes
//! over TLS.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ferry::config::KafkaClusterConfig;
use ferry_testkit::brokers::run_script;
use ferry_testkit::{BrokerKind, PrivateBroker, kafka};

/// Error code of `proto/messagebroker.proto` for a message the broker refused.
const REJECTED: i32 = 3;

/// A daemon whose only `[[kafka.clusters]]` entry is `cluster`.
fn daemon_with(cluster: KafkaClusterConfig) -> ferry::daemon::server::Daemon {
    let mut config = config();
    config.kafka.clusters = vec![cluster];
    start(config.validate().expect("kafka cluster config"))
}

/// Writes `secret` to a file of its own in `dir`; returns its path.
fn secret_file(dir: &Path, name: &str, secret: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path.to_string_lossy().into_owned()
}

/// The properties map of a cluster entry.
fn properties(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Reads `count` messages of `topic` (plaintext, from the broker's own port).
async fn read(address: &str, topic: &str, count: usize) -> Vec<Vec<u8>> {
    let (address, topic) = (address.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        kafka::read_topic(&address, &topic, count, Duration::from_secs(20))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_cluster_requiring_sasl_scram_is_reached_with_its_password_file_and_a_wrong_one_is_rejected()
 {
    let broker = PrivateBroker::start(BrokerKind::Kafka);
    let address = broker.address();
    let topic = kafka::unique_topic("ferry-scram");
    kafka::create_topic(&address, &topic).await;
    // The user is created over the Kafka protocol while the broker is open, then the
    // broker restarts requiring authentication.
    run_script(&[
        "tansu",
        "user",
        "create",
        "--broker",
        &format!("tcp://{address}"),
        "--mechanism",
        "scram512",
        "ferry",
        "right horse battery",
    ]);
    std::fs::write(broker.dir().join("extra.args"), "--authentication").unwrap();
    broker.stop();
    broker.restart();
    let dir = common::process::scratch_dir("kafka-scram");
    let cluster = |password: &str| KafkaClusterConfig {
        brokers: vec![address.clone()],
        properties: properties(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "ferry"),
        ]),
        secret_files: [(
            "sasl.password".to_owned(),
            secret_file(&dir, password, password),
        )]
        .into(),
    };

    // Without the cluster's properties the broker refuses to serve.
    let open = start(settings());
    let mut sender = client(&open).await;
    let (r, _) = send_kafka(&mut sender, common::kafka(&address, &topic, "plain")).await;
    println!("without SASL: {} {}", r.error_no, r.error_message);
    assert_ne!(r.error_no, 0);
    drop(sender);
    drop(open);

    let daemon = daemon_with(cluster("right horse battery"));
    let mut sender = client(&daemon).await;
    let (r, _) = send_kafka(&mut sender, common::kafka(&address, &topic, "scram")).await;
    assert_eq!(r.error_no, 0, "{}", r.error_message);
    drop(sender);
    drop(daemon);

    let daemon = daemon_with(cluster("wrong horse"));
    let mut sender = client(&daemon).await;
    let started = Instant::now();
    let (r, _) = send_kafka(&mut sender, common::kafka(&address, &topic, "refused")).await;
    let took = started.elapsed();
    println!(
        "wrong password: {} {} in {took:?}",
        r.error_no, r.error_message
    );
    assert_eq!(r.error_no, REJECTED, "{}", r.error_message);
    assert!(
        r.error_message.contains("authentication"),
        "{}",
        r.error_message
    );
    assert!(
        !r.error_message.contains("wrong horse"),
        "{}",
        r.error_message
    );
    assert!(
        took < Duration::from_secs(5),
        "{took:?}: retried as an outage"
    );
    drop(sender);
    drop(daemon);

    // Only the authenticated message was written.
    std::fs::remove_file(broker.dir().join("extra.args")).unwrap();
    broker.stop();
    broker.restart();
    assert_eq!(read(&address, &topic, 2).await, vec![b"scram".to_vec()]);
}

/// stunnel, terminating TLS on a port of its own and passing the bytes to `backend`.
struct Stunnel(Child);

impl Stunnel {
    fn start(dir: &Path, port: &str, backend: &str, pki: &common::pki::Pki) -> Self {
        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{port}\n\
                 connect = {backend}\ncert = {}\nkey = {}\n",
                pki.path("server.pem"),
                pki.path("server.key")
            ),
        )
        .unwrap();
        let child = Command::new("stunnel4")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stunnel.log")).unwrap())
            .spawn()
            .expect("stunnel4 (scripts/brokers install)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
            assert!(Instant::now() < deadline, "stunnel did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_cluster_behind_tls_is_reached_with_its_ca_and_refused_with_another() {
    let broker = PrivateBroker::start(BrokerKind::Kafka);
    let address = broker.address();
    let topic = kafka::unique_topic("ferry-kafka-tls");
    kafka::create_topic(&address, &topic).await;
    let dir = common::process::scratch_dir("kafka-tls");
    let pki = common::pki::Pki::generate(dir.join("pki"));
    let tls_port = run_script(&["free-port"]).trim().to_owned();
    let _stunnel = Stunnel::start(&dir, &tls_port, &address, &pki);
    // tansu now tells clients to reach it through stunnel.
    std::fs::write(
        broker.dir().join("advertised"),
        format!("tcp://127.0.0.1:{tls_port}"),
    )
    .unwrap();
    broker.stop();
    broker.restart();
    let tls_address = format!("127.0.0.1:{tls_port}");
    let cluster = |ca: &str| KafkaClusterConfig {
        brokers: vec![tls_address.clone()],
        properties: properties(&[
            ("security.protocol", "SSL"),
            ("ssl.ca.location", &pki.path(ca)),
        ]),
        secret_files: Default::default(),
    };

    let daemon = daemon_with(cluster("ca.pem"));
    let mut sender = client(&daemon).await;
    let (r, _) = send_kafka(&mut sender, common::kafka(&tls_address, &topic, "over TLS")).await;
    assert_eq!(r.error_no, 0, "{}", r.error_message);
    drop(sender);
    drop(daemon);

    let daemon = daemon_with(cluster("other-ca.pem"));
    let mut sender = client(&daemon).await;
    let (r, _) = send_kafka(
        &mut sender,
        common::kafka(&tls_address, &topic, "untrusted"),
    )
    .await;
    println!("untrusted CA: {} {}", r.error_no, r.error_message);
    assert_eq!(r.error_no, 4, "{}", r.error_message);
    assert!(
        r.error_message.contains("TLS failed") && r.error_message.contains("certificate"),
        "{}",
        r.error_message
    );
    drop(sender);
    drop(daemon);

    std::fs::remove_file(broker.dir().join("advertised")).unwrap();
    broker.stop();
    broker.restart();
    assert_eq!(read(&address, &topic, 2).await, vec![b"over TLS".to_vec()]);
}
