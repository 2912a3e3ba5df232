//! End-to-end: messages sent to the daemon arrive unchanged in real brokers, producers are
//! cached per target, and one target carries many messages at once.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_testkit::{amqp, kafka, shared_amqp_url, shared_kafka};

/// Payloads every delivery test sends: text, non-UTF-8 bytes, empty, and 1 MB.
fn payloads() -> Vec<Vec<u8>> {
    let megabyte: Vec<u8> = (0..1_048_576u32).map(|i| (i * 7 % 251) as u8).collect();
    vec![
        br#"{"app":"ferry","type":"test"}"#.to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28],
        Vec::new(),
        megabyte,
    ]
}

#[tokio::test]
async fn rabbitmq_messages_arrive_unchanged_persistent_and_text_plain() {
    let url = shared_amqp_url();
    let exchange = unique("ferry.test.delivery");
    let queue = unique("delivery");
    amqp::bind_queue(&url, &exchange, &queue, "ecflow.#").await;
    let daemon = start(settings());
    let mut client = client(&daemon).await;

    for payload in payloads() {
        let request = rabbitmq(&url, &exchange, "ecflow.command.x", payload.clone());
        let (response, _) = send_rabbitmq(&mut client, request).await;
        assert_eq!(
            (response.error_no, response.error_message.as_str()),
            (0, "")
        );
    }

    let received = amqp::read_queue(&url, &queue, 4, Duration::from_secs(10)).await;
    let bodies: Vec<_> = received.iter().map(|m| m.data.clone()).collect();
    assert_eq!(bodies, payloads());
    for message in &received {
        assert_eq!(message.delivery_mode, Some(2), "persistent");
        assert_eq!(message.content_type.as_deref(), Some("text/plain"));
        assert_eq!(message.routing_key, "ecflow.command.x");
    }
}

#[tokio::test]
async fn kafka_messages_arrive_unchanged() {
    let brokers = shared_kafka();
    let topic = unique("delivery");
    kafka::create_topic(&brokers, &topic).await;
    let daemon = start(settings());
    let mut client = client(&daemon).await;

    for payload in payloads() {
        let (response, _) = send_kafka(&mut client, common::kafka(&brokers, &topic, payload)).await;
        assert_eq!(
            (response.error_no, response.error_message.as_str()),
            (0, "")
        );
    }

    let (b, t) = (brokers.clone(), topic.clone());
    let received =
        tokio::task::spawn_blocking(move || kafka::read_topic(&b, &t, 4, Duration::from_secs(15)))
            .await
            .unwrap();
    assert_eq!(received, payloads());
}

/// The names of this process's threads (the daemon under test runs in it).
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn kafka_confirmations_are_served_on_the_arbiter_without_a_polling_thread() {
    let brokers = shared_kafka();
    let topic = unique("events");
    kafka::create_topic(&brokers, &topic).await;
    let daemon = start(settings());
    let mut client = client(&daemon).await;

    // Sequential sends: each is answered only once its delivery report was served.
    for n in 0..20 {
        let message = common::kafka(&brokers, &topic, format!("event {n}"));
        let (response, _) = send_kafka(&mut client, message).await;
        assert_eq!(
            (response.error_no, response.error_message.as_str()),
            (0, "")
        );
    }
    let names = thread_names();
    assert!(
        names.iter().any(|name| name.starts_with("rdk:broker")),
        "the producer's librdkafka threads run: {names:?}"
    );
    // rdkafka's FutureProducer polled its events on a thread of its own per producer
    // ("producer polling thread"); ferry serves them on the actor's arbiter.
    assert!(
        !names.iter().any(|name| name.starts_with("producer poll")),
        "no event-polling thread per producer: {names:?}"
    );
}

#[tokio::test]
async fn the_second_message_to_a_target_reuses_its_producer_and_connection() {
    let url = shared_amqp_url();
    let brokers = shared_kafka();
    let topic = unique("reuse");
    kafka::create_topic(&brokers, &topic).await;
    let exchange = unique("ferry.test.reuse");
    let mut settings = settings();
    let connection_name = unique("ferry-reuse");
    settings.producer.amqp.connection_name = connection_name.clone();
    let daemon = start(settings);
    let mut client = client(&daemon).await;

    for _ in 0..3 {
        let (r, _) = send_rabbitmq(&mut client, rabbitmq(&url, &exchange, "k", "m")).await;
        assert_eq!(r.error_no, 0, "{}", r.error_message);
        // The same broker set written differently is the same target.
        let (r, _) = send_kafka(&mut client, common::kafka(&brokers, &topic, "m")).await;
        assert_eq!(r.error_no, 0, "{}", r.error_message);
    }
    let spelled_differently = format!("{},{}", brokers.to_uppercase(), brokers);
    let (r, _) = send_kafka(
        &mut client,
        common::kafka(&spelled_differently, &topic, "m"),
    )
    .await;
    assert_eq!(r.error_no, 0, "{}", r.error_message);

    assert_eq!(stats(&daemon).len(), 2, "{:?}", stats(&daemon));
    assert_eq!(stats_of(&daemon, "kafka").sent, 4);
    assert_eq!(stats_of(&daemon, "rabbitmq").sent, 3);
    // The broker sees one connection from this daemon.
    let connections = ferry_testkit::brokers::rabbitmqctl(
        &ferry_testkit::brokers::shared_amqp_dir(),
        &["list_connections", "client_properties"],
    );
    let ours = connections.matches(connection_name.as_str()).count();
    assert_eq!(ours, 1, "{connections}");
}

/// Sends `count` messages at once over `connections` HTTP/2 connections; returns the time.
async fn concurrent_sends(
    daemon: &ferry::daemon::server::Daemon,
    count: usize,
    connections: usize,
    request: impl Fn(usize) -> Request + Send + Sync + 'static,
) -> Duration {
    let request = std::sync::Arc::new(request);
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(client(daemon).await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let mut client = clients[i % connections].clone();
            let request = request.clone();
            tokio::spawn(async move { request(i).send(&mut client).await })
        })
        .collect();
    for task in tasks {
        let response = task.await.unwrap();
        assert_eq!(response.error_no, 0, "{}", response.error_message);
    }
    started.elapsed()
}

/// Sends `count` messages one after another; returns the time.
async fn sequential_sends(
    daemon: &ferry::daemon::server::Daemon,
    count: usize,
    request: impl Fn(usize) -> Request,
) -> Duration {
    let mut client = client(daemon).await;
    let started = Instant::now();
    for i in 0..count {
        let response = request(i).send(&mut client).await;
        assert_eq!(response.error_no, 0, "{}", response.error_message);
    }
    started.elapsed()
}

/// Either kind of request.
enum Request {
    Kafka(ferry::proto::KafkaMessage),
    Rabbit(ferry::proto::RabbitMqMessage),
}

impl Request {
    async fn send(
        self,
        client: &mut ferry::proto::message_broker_client::MessageBrokerClient<
            tonic::transport::Channel,
        >,
    ) -> ferry::proto::Response {
        match self {
            Self::Kafka(r) => send_kafka(client, r).await.0,
            Self::Rabbit(r) => send_rabbitmq(client, r).await.0,
        }
    }
}

/// 1,000 concurrent sends against a sequential baseline measured in the same run. The
/// sequential baseline is 200 sends scaled to 1,000 to keep the test short.
async fn thousand_concurrent(
    kind: &str,
    request: impl Fn(usize) -> Request + Send + Sync + Clone + 'static,
) {
    let daemon = start(settings());
    // Warm up: the producer connects once.
    assert_eq!(
        request(0).send(&mut client(&daemon).await).await.error_no,
        0
    );
    let sequential = sequential_sends(&daemon, 200, request.clone()).await * 5;
    let concurrent = concurrent_sends(&daemon, 1_000, 8, request).await;
    let rate = 1_000.0 / concurrent.as_secs_f64();
    println!(
        "{kind}: 1000 concurrent sends in {:.0} ms ({rate:.0} msg/s); 1000 sequential ≈ {:.0} ms; speed-up {:.1}x",
        concurrent.as_secs_f64() * 1e3,
        sequential.as_secs_f64() * 1e3,
        sequential.as_secs_f64() / concurrent.as_secs_f64()
    );
    assert!(
        concurrent * 3 < sequential,
        "1000 concurrent sends took {concurrent:?}, sequential would take {sequential:?}: the producer serialises"
    );
    let producer = stats_of(&daemon, kind);
    assert_eq!(producer.sent, 1_201);
    assert_eq!(producer.in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_kafka_sends_all_succeed_far_faster_than_sequential() {
    let brokers = shared_kafka();
    let topic = unique("concurrent");
    kafka::create_topic(&brokers, &topic).await;
    let (b, t) = (brokers.clone(), topic.clone());
    thousand_concurrent("kafka", move |i| {
        Request::Kafka(common::kafka(&b, &t, format!("m{i}")))
    })
    .await;
    let received = tokio::task::spawn_blocking(move || {
        kafka::read_topic(&brokers, &topic, 1_201, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(
        received.len(),
        1_201,
        "every confirmed message is in the topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_rabbitmq_sends_all_succeed_far_faster_than_sequential() {
    let url = shared_amqp_url();
    let exchange = unique("ferry.test.concurrent");
    let queue = unique("concurrent");
    amqp::bind_queue(&url, &exchange, &queue, "#").await;
    let (u, e) = (url.clone(), exchange.clone());
    thousand_concurrent("rabbitmq", move |i| {
        Request::Rabbit(rabbitmq(&u, &e, "k", format!("m{i}")))
    })
    .await;
    let received = amqp::read_queue(&url, &queue, 1_201, Duration::from_secs(30)).await;
    assert_eq!(
        received.len(),
        1_201,
        "every confirmed message is in the queue"
    );
}

#[tokio::test]
async fn idle_producers_are_stopped_and_the_target_cap_evicts_the_least_recently_used() {
    let url = shared_amqp_url();
    let brokers = shared_kafka();
    let topic = unique("cap");
    kafka::create_topic(&brokers, &topic).await;
    let exchange = unique("ferry.test.cap");
    let mut settings = settings();
    settings.registry.max_targets = 2;
    settings.registry.idle_timeout = Duration::from_secs(1);
    let connection_name = unique("ferry-idle");
    settings.producer.amqp.connection_name = connection_name.clone();
    let daemon = start(settings);
    let mut client = client(&daemon).await;
    let registry = daemon.forwarder().registry().clone();

    let (r, _) = send_kafka(&mut client, common::kafka(&brokers, &topic, "a")).await;
    assert_eq!(r.error_no, 0, "{}", r.error_message);
    let (r, _) = send_rabbitmq(&mut client, rabbitmq(&url, &exchange, "k", "b")).await;
    assert_eq!(r.error_no, 0, "{}", r.error_message);
    // The same broker named by host name is a third target: the cap evicts the Kafka one,
    // the least recently used.
    let by_name = brokers.replace("127.0.0.1", "localhost");
    let (r, _) = send_kafka(&mut client, common::kafka(&by_name, &topic, "c")).await;
    assert_eq!(r.error_no, 0, "{}", r.error_message);
    assert_eq!(registry.len(), 2);
    assert_eq!(registry.evictions(), 1);
    let targets: Vec<_> = stats(&daemon)
        .into_iter()
        .map(|s| (s.kind, s.target))
        .collect();
    assert!(
        targets
            .iter()
            .any(|(kind, t)| *kind == "kafka" && t.contains("localhost")),
        "{targets:?}"
    );
    assert!(
        targets.iter().any(|(kind, _)| *kind == "rabbitmq"),
        "{targets:?}"
    );

    // Unused for longer than idle_timeout: both are stopped and the AMQP connection closed.
    let idle_since = Instant::now();
    let deadline = idle_since + Duration::from_secs(20);
    while !registry.is_empty() {
        assert!(
            Instant::now() < deadline,
            "still cached: {:?}",
            stats(&daemon)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("idle producers stopped after {:?}", idle_since.elapsed());
    let amqp_dir = ferry_testkit::brokers::shared_amqp_dir();
    loop {
        let connections = ferry_testkit::brokers::rabbitmqctl(
            &amqp_dir,
            &["list_connections", "client_properties"],
        );
        if !connections.contains(connection_name.as_str()) {
            println!(
                "their AMQP connection was gone after {:?}",
                idle_since.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle producer's connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn callers_that_hang_up_do_not_cut_their_messages_off_uncounted() {
    let brokers = shared_kafka();
    let topic = unique("hang-up");
    kafka::create_topic(&brokers, &topic).await;
    let daemon = start(settings());
    let mut client = client(&daemon).await;
    // The producer connected and the topic known, a call takes a few milliseconds.
    let (warm, _) = send_kafka(&mut client, common::kafka(&brokers, &topic, "warm")).await;
    assert_eq!(warm.error_no, 0, "{warm:?}");
    // 300 calls whose callers give up after 1 to 30 ms, many before their answer.
    let calls: Vec<_> = (0..300)
        .map(|i| {
            let mut client = client.clone();
            let request = common::kafka(&brokers, &topic, format!("m{i}"));
            tokio::spawn(async move {
                let patience = Duration::from_millis(1 + i % 30);
                // None: the caller hung up; Some(delivered): it got its answer.
                // None: the caller hung up; Some(Ok(error_no)): it got its answer; Some(Err):
                // the call failed at the transport.
                tokio::time::timeout(patience, client.send_kafka_message(request))
                    .await
                    .ok()
                    .map(|answer| {
                        answer
                            .map(|reply| reply.into_inner().error_no)
                            .map_err(|status| format!("{status:?}"))
                    })
            })
        })
        .collect();
    let (mut hung_up, mut answered_delivered, mut broken) = (0, 0, Vec::new());
    for call in calls {
        match call.await.unwrap() {
            None => hung_up += 1,
            Some(Ok(error_no)) => answered_delivered += u64::from(error_no == 0),
            Some(Err(why)) => broken.push(why),
        }
    }
    assert!(hung_up > 0, "some callers hung up before their answer");
    // The callers that waited were all answered: the others' hang-ups (many RST_STREAMs
    // at once) did not make the daemon tear the connection down under them (before: h2's
    // GOAWAY after 20 such streams, and the rest of the calls failed).
    assert!(
        broken.is_empty(),
        "{hung_up} hung up, {answered_delivered} answered delivered, {} failed: {:?}",
        broken.len(),
        &broken[..broken.len().min(3)]
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    wait_until_idle(&daemon).await;
    let in_topic = drain_topic(&brokers, &topic).await;
    // A call the server took late may have been forwarded after the first look: the count
    // is read once the daemon is idle after the reading.
    wait_until_idle(&daemon).await;
    let (sent, failed) = totals(&daemon);
    assert_eq!(failed, 0);
    // Distinct messages: under load the test broker (tansu) can store a producer's retry
    // twice (it does not deduplicate idempotent producers), which is the broker's
    // at-least-once, not a message ferry failed to count.
    let distinct: std::collections::BTreeSet<&Vec<u8>> = in_topic.iter().collect();
    assert_eq!(
        distinct.len() as u64,
        sent,
        "every message in the topic was counted as sent ({hung_up} callers hung up; {} \
         records in the topic)",
        in_topic.len()
    );
    println!(
        "hang-up: {hung_up} of 300 callers hung up, {answered_delivered} were answered \
         delivered; {sent} messages sent (with the warm-up)"
    );
    assert!(
        sent > 1 + answered_delivered,
        "some messages of callers that hung up were sent"
    );
}
