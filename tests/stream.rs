//! End-to-end: the `ferry.v1.Ingest` stream delivers to real brokers, answers every
//! message once by its id, reports bad messages without ending the stream, and keeps no
//! more than its window in flight.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use ferry::daemon::server::Daemon;
use ferry::proto::ferry::v1::ingest_client::IngestClient;
use ferry::proto::ferry::v1::ingest_request::Message;
use ferry::proto::ferry::v1::{IngestAck, IngestRequest};
use ferry_testkit::{amqp, kafka, shared_amqp_url, shared_kafka};
use futures_util::StreamExt;
use tonic::transport::Channel;

/// An `Ingest` client on a new connection to `daemon`.
async fn ingest(daemon: &Daemon) -> IngestClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", daemon.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    IngestClient::new(channel)
}

/// A listener that accepts TCP (the kernel completes the handshake) and never answers,
/// with its address.
fn black_hole() -> (std::net::TcpListener, String) {
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = hole.local_addr().unwrap().to_string();
    (hole, address)
}

/// Sends `requests` on one stream, closes it, and returns every ack by id.
async fn stream(daemon: &Daemon, requests: Vec<IngestRequest>) -> BTreeMap<u64, (i32, String)> {
    let mut acks = ingest(daemon)
        .await
        .stream(tokio_stream::iter(requests))
        .await
        .expect("stream opens")
        .into_inner();
    let mut answered = BTreeMap::new();
    while let Some(IngestAck { id, response, .. }) = acks.message().await.expect("acks") {
        let response = response.expect("every ack has a response");
        let previous = answered.insert(id, (response.error_no, response.error_message));
        assert!(previous.is_none(), "message {id} answered twice");
    }
    answered
}

/// A streamed request.
fn request(id: u64, message: Message) -> IngestRequest {
    IngestRequest {
        id,
        message: Some(message),
    }
}

#[tokio::test]
async fn a_stream_delivers_to_both_brokers_and_acks_each_id_once() {
    let (url, brokers) = (shared_amqp_url(), shared_kafka());
    let (exchange, queue, topic) = (
        unique("ferry.test.stream"),
        unique("stream"),
        unique("stream"),
    );
    amqp::bind_queue(&url, &exchange, &queue, "#").await;
    kafka::create_topic(&brokers, &topic).await;
    let daemon = start(settings());

    let mut requests = Vec::new();
    for i in 0..200_u64 {
        let k = common::kafka(&brokers, &topic, format!("k{i}"));
        requests.push(request(2 * i, Message::Kafka(k)));
        let r = rabbitmq(&url, &exchange, "stream.event", format!("r{i}"));
        requests.push(request(2 * i + 1, Message::Rabbitmq(r)));
    }
    let acks = stream(&daemon, requests).await;

    assert_eq!(
        acks.keys().copied().collect::<Vec<_>>(),
        (0..400).collect::<Vec<_>>()
    );
    assert!(
        acks.values().all(|(error_no, _)| *error_no == 0),
        "{acks:?}"
    );
    let expected = |prefix: &str| -> BTreeSet<Vec<u8>> {
        (0..200)
            .map(|i| format!("{prefix}{i}").into_bytes())
            .collect()
    };
    let (b, t) = (brokers.clone(), topic.clone());
    let in_topic =
        tokio::task::spawn_blocking(move || kafka::read_topic(&b, &t, 201, Duration::from_secs(5)))
            .await
            .unwrap();
    assert_eq!(in_topic.into_iter().collect::<BTreeSet<_>>(), expected("k"));
    let in_queue = amqp::drain_queue(
        &url,
        &queue,
        Duration::from_millis(500),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(in_queue.len(), 200);
    let bodies: BTreeSet<Vec<u8>> = in_queue.into_iter().map(|m| m.data).collect();
    assert_eq!(bodies, expected("r"));
    assert_eq!(totals(&daemon).0, 400);
}

#[tokio::test]
async fn bad_messages_in_a_stream_are_answered_1_and_the_stream_goes_on() {
    let brokers = shared_kafka();
    let topic = unique("stream-bad");
    kafka::create_topic(&brokers, &topic).await;
    let daemon = start(settings());
    let good = || Message::Kafka(common::kafka(&brokers, &topic, "ok"));
    let acks = stream(
        &daemon,
        vec![
            request(1, good()),
            request(2, Message::Kafka(common::kafka(&brokers, "", "no topic"))),
            IngestRequest {
                id: 3,
                message: None,
            },
            request(4, good()),
        ],
    )
    .await;
    let codes: Vec<(u64, i32)> = acks.iter().map(|(id, (code, _))| (*id, *code)).collect();
    assert_eq!(codes, [(1, 0), (2, 1), (3, 1), (4, 0)], "{acks:?}");
    assert!(acks[&2].1.contains("topic"), "{acks:?}");
    assert!(acks[&3].1.contains("message"), "{acks:?}");
}

#[tokio::test]
async fn a_message_too_large_to_decode_is_answered_1_and_the_stream_goes_on() {
    let brokers = shared_kafka();
    let topic = unique("stream-large");
    kafka::create_topic(&brokers, &topic).await;
    let mut settings = settings();
    settings.server.max_message_bytes = 64 * 1024;
    let daemon = start(settings);
    let message = |data: Vec<u8>| Message::Kafka(common::kafka(&brokers, &topic, data));
    // Beyond the gRPC decoder's limit (the payload's plus the request's fields): before,
    // tonic ended the stream with OUT_OF_RANGE at its header, and nothing after it was read.
    let acks = stream(
        &daemon,
        vec![
            request(1, message(b"first".to_vec())),
            request(2, message(vec![b'x'; 5 * 1024 * 1024])),
            request(3, message(b"third".to_vec())),
        ],
    )
    .await;
    let codes: Vec<(u64, i32)> = acks.iter().map(|(id, (code, _))| (*id, *code)).collect();
    assert_eq!(codes, [(1, 0), (2, 1), (3, 0)], "{acks:?}");
    assert!(
        acks[&2].1.contains("bytes is more than the") && acks[&2].1.contains("send less"),
        "{acks:?}"
    );
    let delivered = drain_topic(&brokers, &topic).await;
    assert_eq!(delivered, [b"first".to_vec(), b"third".to_vec()]);
    let report = report(daemon.ops_addr()).await;
    assert_eq!(report.totals.invalid, 1, "counted as invalid");
}

#[tokio::test]
async fn a_stream_never_has_more_than_its_window_in_flight() {
    // A broker that accepts TCP and never answers keeps each message in flight for the
    // whole policy budget (200 + 400 ms), so the window fills.
    let (hole, hole_address) = black_hole();
    let mut config = config();
    config.server.max_in_flight_per_stream = 3;
    config.policy.timeout_step_ms = 200;
    let daemon = start(config.validate().unwrap());
    let requests: Vec<_> = (0..9)
        .map(|id| request(id, Message::Kafka(common::kafka(&hole_address, "t", "x"))))
        .collect();
    let forwarder = daemon.forwarder().clone();
    let sampler = tokio::spawn(async move {
        let mut most = 0;
        for _ in 0..300 {
            most = most.max(forwarder.in_flight());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        most
    });
    let acks = stream(&daemon, requests).await;
    assert_eq!(acks.len(), 9);
    assert!(
        acks.values().all(|(code, _)| matches!(code, 2 | 4)),
        "{acks:?}"
    );
    assert_eq!(sampler.await.unwrap(), 3, "in flight peaked at the window");
    assert_eq!(daemon.forwarder().in_flight(), 0);
    drop(hole);
}

#[tokio::test]
async fn at_the_end_of_the_shutdown_grace_a_stream_is_answered_6_and_ends() {
    // A black-hole broker keeps the messages in flight past the grace period (300 ms).
    let (_hole, hole_address) = black_hole();
    let mut config = config();
    config.server.shutdown_grace_ms = 300;
    let daemon = start(config.validate().unwrap());
    let mut client = ingest(&daemon).await;
    // The sender keeps its side open: only the daemon can end this stream.
    let (requests, outgoing) = tokio::sync::mpsc::channel(16);
    for id in 0..5 {
        let message = Message::Kafka(common::kafka(&hole_address, "t", "x"));
        requests.send(request(id, message)).await.unwrap();
    }
    let mut acks = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let stopped = tokio::task::spawn_blocking(move || daemon.stop());
    let mut codes = Vec::new();
    let end = loop {
        match acks.message().await {
            Ok(Some(ack)) => codes.push(ack.response.unwrap().error_no),
            other => break other,
        }
    };
    assert_eq!(
        codes, [6; 5],
        "every message in flight is answered shutting down"
    );
    // Ended by the daemon with status OK, not cut off when its runtime stopped.
    assert!(matches!(end, Ok(None)), "{end:?}");
    stopped.await.unwrap().expect("the daemon stops cleanly");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(requests);
}

#[tokio::test]
async fn messages_of_a_sender_that_went_away_are_still_forwarded_and_counted() {
    let brokers = shared_kafka();
    let topic = unique("stream-gone");
    kafka::create_topic(&brokers, &topic).await;
    let daemon = start(settings());
    let mut client = ingest(&daemon).await;
    let (requests, outgoing) = tokio::sync::mpsc::channel(300);
    for id in 0..300 {
        let message = Message::Kafka(common::kafka(&brokers, &topic, format!("m{id}")));
        requests.send(request(id, message)).await.unwrap();
    }
    let mut acks = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    // Read one ack, then vanish without closing the stream properly.
    acks.message().await.unwrap().unwrap();
    drop(acks);
    drop(requests);

    wait_until_idle(&daemon).await;
    let (sent, failed) = totals(&daemon);
    assert_eq!(failed, 0);
    assert!(sent >= 1, "{sent}");
    let in_topic = drain_topic(&brokers, &topic).await;
    assert_eq!(
        in_topic.len() as u64,
        sent,
        "every message counted as sent is in the topic"
    );
}

#[tokio::test]
async fn a_stream_needs_the_bearer_token_too() {
    let dir = std::env::temp_dir().join(unique("ferry-stream-token"));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "correct-horse-battery-staple\n").unwrap();
    let mut config = config();
    config.access.token_file = token_file.to_str().unwrap().to_owned();
    // The client's connection outlives the test body; do not wait 7 s for it at the stop.
    config.server.shutdown_grace_ms = 200;
    let daemon = start(config.validate().unwrap());
    let mut client = ingest(&daemon).await;
    let message = Message::Kafka(common::kafka("127.0.0.1:9", "t", "x"));
    let refused = client
        .stream(tokio_stream::iter([request(1, message)]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(totals(&daemon).1, 0, "nothing was forwarded");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A stream frame as the sender encodes it: a good request, or (`bad`) field 3 holding
/// bytes that are not a `RabbitMQMessage`, so the daemon cannot decode the frame.
#[derive(Clone, PartialEq, prost::Message)]
struct Frame {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(message, optional, tag = "2")]
    kafka: Option<ferry::proto::KafkaMessage>,
    #[prost(bytes = "vec", optional, tag = "3")]
    bad: Option<Vec<u8>>,
}

#[tokio::test]
async fn a_stream_that_cannot_be_read_further_ends_with_an_error_saying_where() {
    let daemon = start(settings());
    let brokers = shared_kafka();
    let topic = unique("unreadable");
    kafka::create_topic(&brokers, &topic).await;
    let good = |id: u64| Frame {
        id,
        kafka: Some(common::kafka(&brokers, &topic, format!("m{id}"))),
        bad: None,
    };
    let broken = Frame {
        id: 4,
        kafka: None,
        bad: Some(vec![0xff, 0xff]),
    };
    let frames = vec![good(1), good(2), good(3), broken, good(5), good(6), good(7)];
    let channel = Channel::from_shared(format!("http://{}", daemon.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Frame, IngestAck>::default();
    let path = "/ferry.v1.Ingest/Stream".parse().unwrap();
    let mut acks = grpc
        .streaming(tonic::Request::new(tokio_stream::iter(frames)), path, codec)
        .await
        .expect("stream opens")
        .into_inner();
    let mut acked = BTreeSet::new();
    let end = loop {
        match acks.message().await {
            Ok(Some(IngestAck { id, response, .. })) => {
                assert_eq!(response.unwrap().error_no, 0, "message {id}");
                acked.insert(id);
            }
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    assert_eq!(acked, BTreeSet::from([1, 2, 3]));
    let status = end.expect("the stream must end with an error status, not OK");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("after 3 requests (the last with id 3)"),
        "{status:?}"
    );
    let delivered = drain_topic(&brokers, &topic).await;
    assert_eq!(
        delivered.len(),
        3,
        "nothing after the bad frame is forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_that_never_read_their_acks_cannot_take_the_daemons_places() {
    const STREAMS: usize = 50;
    let brokers = shared_kafka();
    let topic = kafka::unique_topic("ferry.test.unread-acks");
    kafka::create_topic(&brokers, &topic).await;
    let mut config = config();
    // 50 streams × 16 is twice the daemon's bound: pinned windows would take it all.
    config.server.max_in_flight = 400;
    config.server.max_in_flight_per_stream = 16;
    config.server.max_connections = 256;
    let daemon = start(config.validate().unwrap());
    let mut unread = Vec::new();
    for n in 0..STREAMS {
        // A small HTTP/2 window: the acks this sender never reads soon fill it, and then
        // the daemon cannot write more of them.
        let channel = Channel::from_shared(format!("http://{}", daemon.local_addr()))
            .unwrap()
            .initial_stream_window_size(Some(1024))
            .connect()
            .await
            .unwrap();
        let (brokers, topic) = (brokers.clone(), topic.clone());
        let requests = tokio_stream::iter(0..10_000u64).map(move |id| {
            let message = common::kafka(&brokers, &topic, format!("unread-{n}-{id}"));
            request(id, Message::Kafka(message))
        });
        let acks = IngestClient::new(channel).stream(requests).await.unwrap();
        unread.push(acks); // held open, never read
    }
    // Let every unread stream fill its window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pinned = daemon.forwarder().in_flight();
    // A normal client at full rate: 16 in flight, 800 messages, none refused.
    let client = client(&daemon).await;
    let calls = (0..800).map(|i| {
        let mut client = client.clone();
        let request = common::kafka(&brokers, &topic, format!("normal-{i}"));
        async move { send_kafka(&mut client, request).await.0 }
    });
    let answers: Vec<_> = futures_util::stream::iter(calls)
        .buffer_unordered(16)
        .collect()
        .await;
    let refused: Vec<_> = answers.iter().filter(|a| a.error_no != 0).collect();
    assert!(
        refused.is_empty(),
        "{} of 800 not delivered while {STREAMS} streams left their acks unread \
         ({pinned} in flight before), first: {:?}",
        refused.len(),
        refused.first()
    );
    println!(
        "{STREAMS} streams with unread acks held {pinned} of 400 places; 800 normal calls all delivered"
    );
    drop(unread);
}
