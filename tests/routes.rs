//! Named routes and message metadata end to end: a real daemon with `[routes.NAME]` in its
//! config, real clients (`ferry.v1.Send` over gRPC, and the `ferry` binary), real Kafka and
//! RabbitMQ read back with real consumers.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::process::{Served, ferry, free_address, scratch_dir, serve_logged, serve_with};
use ferry::proto::ferry::v1::amqp_header_value::Value;
use ferry::proto::ferry::v1::send_client::SendClient;
use ferry::proto::ferry::v1::{
    AmqpHeaderValue, AmqpMetadata, KafkaHeader, KafkaMetadata, SendReply, SendRequest, send_request,
};
use ferry_testkit::brokers::{BrokerKind, PrivateBroker, rabbitmqctl, shared_amqp_dir};
use ferry_testkit::{amqp, kafka, shared_amqp_url, shared_kafka};
use lapin::types::AMQPValue;

/// Starts a daemon whose config is `config` (written into `dir`).
fn serve_config(dir: &Path, config: &str) -> Served {
    let path = dir.join("ferry.toml");
    std::fs::write(&path, config).unwrap();
    serve_with(&free_address(), &["--config", &path.to_string_lossy()])
}

/// The shared RabbitMQ's URL without its password, and the password.
fn amqp_url_and_password() -> (String, String) {
    let url = url::Url::parse(&shared_amqp_url()).unwrap();
    let password = url.password().unwrap().to_owned();
    let mut bare = url.clone();
    bare.set_password(None).unwrap();
    (bare.to_string(), password)
}

/// Sends `request` over `ferry.v1.Send` to the daemon at `address`.
async fn send(address: &str, request: SendRequest) -> SendReply {
    let mut client = SendClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    client.send(request).await.unwrap().into_inner()
}

/// A request for route `route` carrying `data`.
fn to_route(route: &str, data: &'static [u8]) -> SendRequest {
    SendRequest {
        target: Some(send_request::Target::Route(route.into())),
        data: Bytes::from_static(data),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_kafka_route_carries_key_headers_and_partition_and_the_reply_gives_the_offset() {
    let brokers = shared_kafka();
    let topic = kafka::unique_topic("ferry.test.route");
    kafka::create_topic_with_partitions(&brokers, &topic, 3).await;
    let dir = scratch_dir("route-kafka");
    let daemon = serve_config(
        &dir,
        &format!(
            "[routes.events]\nkind = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopic = \"{topic}\"\n\
             key = \"route-default\"\n"
        ),
    );
    let headers = vec![
        KafkaHeader {
            name: "h".into(),
            value: Bytes::from_static(b"1"),
        },
        KafkaHeader {
            name: "h".into(),
            value: Bytes::from_static(b"2"),
        },
        KafkaHeader {
            name: "bin".into(),
            value: Bytes::from_static(b"\x00\xff"),
        },
    ];
    let with_all = SendRequest {
        kafka_metadata: Some(KafkaMetadata {
            key: Some(Bytes::from_static(b"task/1")),
            headers,
            partition: Some(2),
        }),
        headers: vec![KafkaHeader {
            name: "source".into(),
            value: Bytes::from_static(b"gfs"),
        }],
        ..to_route("events", b"one")
    };
    let first = send(&daemon.address, with_all).await;
    assert_eq!(first.error_no, 0, "{}", first.error_message);
    assert_eq!(first.partition, Some(2));
    let plain = send(&daemon.address, to_route("events", b"two")).await;
    assert_eq!(plain.error_no, 0, "{}", plain.error_message);
    let out_of_range = SendRequest {
        kafka_metadata: Some(KafkaMetadata {
            partition: Some(7),
            ..Default::default()
        }),
        ..to_route("events", b"three")
    };
    let refused = send(&daemon.address, out_of_range).await;
    assert_eq!(refused.error_no, 1, "{refused:?}");
    assert!(refused.error_message.contains("partition"), "{refused:?}");

    let read = |partition: i32, count| {
        kafka::read_records(&brokers, &topic, partition, count, Duration::from_secs(20))
    };
    let records = read(2, 1);
    let one = records
        .iter()
        .find(|r| r.payload == b"one")
        .expect("record one");
    assert_eq!(one.key.as_deref(), Some(&b"task/1"[..]));
    assert_eq!(
        Some(one.offset),
        first.offset,
        "the reply's offset is the record's"
    );
    let names: Vec<(&str, &[u8])> = one
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_slice()))
        .collect();
    assert_eq!(
        names[..4],
        [
            ("h", &b"1"[..]),
            ("h", b"2"),
            ("bin", b"\x00\xff"),
            ("source", b"gfs")
        ],
        "the sender's headers, in order, repeated names kept"
    );
    assert_eq!(one.ferry_id(), Some(first.id.clone()));
    let partition = plain.partition.expect("the reply names the partition");
    // Records in each partition so far: "one" in 2, "two" in `partition`.
    let in_partition =
        |p: i32, extra: usize| usize::from(p == 2) + usize::from(p == partition) + extra;
    let records = read(partition, in_partition(partition, 0));
    let two = records
        .iter()
        .find(|r| r.payload == b"two")
        .expect("record two");
    assert_eq!(
        two.key.as_deref(),
        Some(&b"route-default"[..]),
        "the route's key"
    );
    assert_eq!(Some(two.offset), plain.offset);

    // The binary: --route with --key, --header and --partition.
    let output = ferry(&[
        "send",
        "--route",
        "events",
        "--data",
        "four",
        "--key",
        "k4",
        "--header",
        "a=b",
        "--partition",
        "1",
        "--proxy",
        &daemon.address,
    ])
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let four = read(1, in_partition(1, 1));
    let four = four
        .iter()
        .find(|r| r.payload == b"four")
        .expect("record four");
    assert_eq!(four.key.as_deref(), Some(&b"k4"[..]));
    assert_eq!(four.headers[0], ("a".to_owned(), b"b".to_vec()));
    daemon.terminate();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn an_amqp_route_carries_headers_ttl_content_type_and_correlation_id() {
    let (server, password) = amqp_url_and_password();
    let dir = scratch_dir("route-amqp");
    std::fs::write(dir.join("password"), format!("{password}\n")).unwrap();
    let exchange = kafka::unique_topic("ferry.test.route");
    let queue = kafka::unique_topic("route");
    amqp::bind_queue(&shared_amqp_url(), &exchange, &queue, "jobs.#").await;
    let daemon = serve_config(
        &dir,
        &format!(
            "[routes.jobs]\nkind = \"rabbitmq\"\nserver = \"{server}\"\npassword_file = \"{}\"\n\
             exchange = \"{exchange}\"\nrouting_key = \"jobs.fcst\"\nallow_routing_key = [\"jobs.*\"]\n",
            dir.join("password").display()
        ),
    );
    let table: std::collections::HashMap<String, AmqpHeaderValue> = [
        ("step", Value::Int(24)),
        ("model", Value::Text("gfs".into())),
        ("final", Value::Bool(true)),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), AmqpHeaderValue { value: Some(value) }))
    .collect();
    let with_all = SendRequest {
        routing_key: Some("jobs.post".into()),
        amqp_metadata: Some(AmqpMetadata {
            headers: table,
            expiration_ms: Some(600_000),
            content_type: Some("application/json".into()),
            content_encoding: Some("identity".into()),
            correlation_id: Some("job-4242".into()),
            message_id: None,
            r#type: Some("forecast.step".into()),
            app_id: Some("gfs-post".into()),
            priority: Some(5),
        }),
        headers: vec![KafkaHeader {
            name: "source".into(),
            value: Bytes::from_static(b"gfs"),
        }],
        ..to_route("jobs", b"one")
    };
    let first = send(&daemon.address, with_all).await;
    assert_eq!(first.error_no, 0, "{}", first.error_message);
    let own_id = SendRequest {
        amqp_metadata: Some(AmqpMetadata {
            message_id: Some("mine-1".into()),
            ..Default::default()
        }),
        ..to_route("jobs", b"two")
    };
    let second = send(&daemon.address, own_id).await;
    assert_eq!(second.error_no, 0, "{}", second.error_message);
    let not_allowed = SendRequest {
        routing_key: Some("other.key".into()),
        ..to_route("jobs", b"three")
    };
    let refused = send(&daemon.address, not_allowed).await;
    assert_eq!(refused.error_no, 1);
    assert!(refused.error_message.contains("routing_key"), "{refused:?}");

    let received = amqp::read_queue(&shared_amqp_url(), &queue, 2, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 2);
    let one = &received[0];
    assert_eq!(
        (one.data.as_slice(), one.routing_key.as_str()),
        (&b"one"[..], "jobs.post")
    );
    let p = &one.properties;
    assert_eq!(p.expiration().as_ref().map(|s| s.as_str()), Some("600000"));
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        p.content_encoding().as_ref().map(|s| s.as_str()),
        Some("identity")
    );
    assert_eq!(
        p.correlation_id().as_ref().map(|s| s.as_str()),
        Some("job-4242")
    );
    assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("forecast.step"));
    assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("gfs-post"));
    assert_eq!(*p.priority(), Some(5));
    assert_eq!(*p.delivery_mode(), Some(2), "persistent, as always");
    assert_eq!(
        p.message_id().as_ref().map(|s| s.to_string()),
        Some(first.id.clone())
    );
    let headers: BTreeMap<String, AMQPValue> = p
        .headers()
        .as_ref()
        .expect("headers")
        .inner()
        .iter()
        .map(|(name, value)| (name.to_string(), value.clone()))
        .collect();
    assert_eq!(headers["step"], AMQPValue::LongLongInt(24));
    assert_eq!(headers["model"], AMQPValue::LongString("gfs".into()));
    assert_eq!(headers["final"], AMQPValue::Boolean(true));
    assert_eq!(headers["source"], AMQPValue::LongString("gfs".into()));
    let two = &received[1];
    assert_eq!(two.routing_key, "jobs.fcst", "the route's own routing key");
    assert_eq!(
        two.properties.message_id().as_ref().map(|s| s.to_string()),
        Some("mine-1".to_owned())
    );
    let ferry_id = two.properties.headers().as_ref().unwrap().inner()["ferry-id"].clone();
    assert_eq!(ferry_id, AMQPValue::LongString(second.id.as_str().into()));
    daemon.terminate();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_message_sent_with_a_ttl_expires_in_its_queue() {
    let (server, password) = amqp_url_and_password();
    let dir = scratch_dir("route-ttl");
    std::fs::write(dir.join("password"), &password).unwrap();
    let exchange = kafka::unique_topic("ferry.test.ttl");
    let queue = kafka::unique_topic("ttl");
    amqp::bind_queue(&shared_amqp_url(), &exchange, &queue, "#").await;
    let daemon = serve_config(
        &dir,
        &format!(
            "[routes.ttl]\nkind = \"rabbitmq\"\nserver = \"{server}\"\npassword_file = \"{}\"\n\
             exchange = \"{exchange}\"\nrouting_key = \"t\"\n",
            dir.join("password").display()
        ),
    );
    let send = |data: &str, extra: &[&str]| {
        let mut args = vec![
            "send",
            "--route",
            "ttl",
            "--data",
            data,
            "--proxy",
            &daemon.address,
        ];
        args.extend_from_slice(extra);
        let output = ferry(&args).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    send("short-lived", &["--ttl", "300ms"]);
    send("kept", &[]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let left = amqp::drain_queue(
        &shared_amqp_url(),
        &queue,
        Duration::from_millis(500),
        Duration::from_secs(5),
    )
    .await;
    let bodies: Vec<&[u8]> = left.iter().map(|m| m.data.as_slice()).collect();
    assert_eq!(
        bodies,
        [&b"kept"[..]],
        "the TTL'd message is gone, the other kept"
    );
    daemon.terminate();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_routes_password_never_leaves_its_file() {
    // A user of its own, with a password found nowhere else.
    let unique = kafka::unique_topic("x").replace(['.', '-'], "");
    let user = format!("ferry_route_{unique}");
    let user = user.as_str();
    let password = format!("Pw{unique}Secret");
    let amqp_dir = shared_amqp_dir();
    rabbitmqctl(&amqp_dir, &["add_user", user, &password]);
    rabbitmqctl(
        &amqp_dir,
        &["set_permissions", "-p", "/", user, ".*", ".*", ".*"],
    );
    let (server, _) = amqp_url_and_password();
    let mut url = url::Url::parse(&server).unwrap();
    url.set_username(user).unwrap();
    let dir = scratch_dir("route-secret");
    std::fs::write(dir.join("password"), format!("{password}\n")).unwrap();
    std::fs::write(dir.join("wrong"), format!("{password}-wrong\n")).unwrap();
    let exchange = kafka::unique_topic("ferry.test.secret");
    let queue = kafka::unique_topic("secret");
    amqp::bind_queue(&shared_amqp_url(), &exchange, &queue, "#").await;
    let route = |name: &str, file: &str| {
        format!(
            "[routes.{name}]\nkind = \"rabbitmq\"\nserver = \"{url}\"\npassword_file = \"{}\"\n\
             exchange = \"{exchange}\"\nrouting_key = \"ecflow.command.ecflow_client\"\n",
            dir.join(file).display()
        )
    };
    let config = dir.join("ferry.toml");
    std::fs::write(
        &config,
        route("secure", "password") + &route("wrong", "wrong"),
    )
    .unwrap();
    let log = dir.join("daemon.log");
    let daemon = serve_logged(
        &free_address(),
        &["--config", &config.to_string_lossy()],
        &log,
    );

    let mut seen = String::new();
    let mut run = |args: &[&str], ok: bool| {
        assert!(
            !args.iter().any(|a| a.contains(&password)),
            "the command line"
        );
        let output = ferry(args).env("ECF_NAME", "/s/t").output().unwrap();
        seen.push_str(&String::from_utf8_lossy(&output.stdout));
        seen.push_str(&String::from_utf8_lossy(&output.stderr));
        assert_eq!(output.status.success(), ok, "{args:?}: {seen}");
    };
    let proxy = daemon.address.clone();
    run(
        &[
            "send", "--route", "secure", "--data", "x", "--proxy", &proxy,
        ],
        true,
    );
    run(
        &[
            "ecflow-client",
            "--route=secure",
            "--command-options=--complete",
            &format!("--broker-address={proxy}"),
        ],
        true,
    );
    run(
        &[
            "send",
            "--route",
            "secure",
            "--routing-key",
            "no.such",
            "--data",
            "x",
            "--proxy",
            &proxy,
        ],
        false,
    );
    run(
        &[
            "send",
            "--route",
            "wrong",
            "--data",
            "x",
            "--proxy",
            &proxy,
            "--attempts",
            "1",
        ],
        false,
    );
    run(&["routes", "--http", &daemon.ops_address], true);
    assert!(
        seen.contains("secure")
            && seen.contains("rabbitmq")
            && seen
                .lines()
                .any(|l| l.starts_with("ROUTE ") && l.ends_with(" KIND")),
        "{seen}"
    );
    let stats = common::report(&daemon.ops_address).await;
    let stats = serde_json::to_string(&stats).unwrap();
    let metrics_uri = format!("http://{}/metrics", daemon.ops_address)
        .parse()
        .unwrap();
    let metrics = ferry::cli::ops::fetch(metrics_uri).await.unwrap();
    let received = amqp::read_queue(&shared_amqp_url(), &queue, 2, Duration::from_secs(10)).await;
    assert_eq!(
        received.len(),
        2,
        "both messages of the secure route arrived"
    );
    let event: serde_json::Value = serde_json::from_slice(&received[1].data).unwrap();
    assert_eq!(event["data"]["ecf_name"], "/s/t");
    daemon.terminate();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("ACCESS_REFUSED") || log.contains("refused"),
        "{log}"
    );
    for (what, text) in [
        ("client output", seen.as_str()),
        ("daemon log", log.as_str()),
        ("stats", stats.as_str()),
        ("metrics", &String::from_utf8_lossy(&metrics)),
    ] {
        assert!(!text.contains(&password), "the password is in the {what}");
    }
    rabbitmqctl(&amqp_dir, &["delete_user", user]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_spooled_message_keeps_its_key_and_headers_through_the_outage() {
    let broker = PrivateBroker::start(BrokerKind::Kafka);
    let brokers = broker.address();
    let topic = kafka::unique_topic("ferry.test.spooled");
    kafka::create_topic(&brokers, &topic).await;
    let dir = scratch_dir("route-spool");
    let daemon = serve_config(
        &dir,
        &format!(
            "[spool]\ndir = \"{}\"\n\n[routes.events]\nkind = \"kafka\"\nbrokers = [\"{brokers}\"]\n\
             topic = \"{topic}\"\n",
            dir.join("spool").display()
        ),
    );
    // The producer's connection first, so that the outage is one of a known broker.
    let warm = send(&daemon.address, to_route("events", b"before")).await;
    assert_eq!((warm.error_no, warm.spooled), (0, false), "{warm:?}");
    // Blocking calls are fine here: the daemon is another process.
    broker.stop();
    let during = SendRequest {
        kafka_metadata: Some(KafkaMetadata {
            key: Some(Bytes::from_static(b"task/9")),
            headers: vec![KafkaHeader {
                name: "step".into(),
                value: Bytes::from_static(b"24"),
            }],
            partition: None,
        }),
        ..to_route("events", b"during")
    };
    let spooled = send(&daemon.address, during).await;
    assert_eq!(
        (spooled.error_no, spooled.spooled),
        (0, true),
        "{spooled:?}"
    );
    broker.restart();
    let records = kafka::read_records(&brokers, &topic, 0, 2, Duration::from_secs(60));
    let during = records
        .iter()
        .find(|r| r.payload == b"during")
        .expect("the spooled message arrives after the outage");
    assert_eq!(during.key.as_deref(), Some(&b"task/9"[..]));
    assert_eq!(during.headers[0], ("step".to_owned(), b"24".to_vec()));
    assert_eq!(during.ferry_id(), Some(spooled.id));
    daemon.terminate();
    std::fs::remove_dir_all(dir).unwrap();
}
