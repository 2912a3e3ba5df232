//! Bad input gets a clear error and the daemon keeps serving, end to end: requests that
//! are not valid protobuf, invalid fields answered `error_no` 1 naming the field, AMQP URLs
//! whose password never comes back in an error, whose `frame_max` is out of range (once a
//! 137 GB allocation) or whose host is an IPv6 literal, a unary body holding two messages,
//! and refused requests logged at a bounded rate. Real Kafka (tansu) and RabbitMQ; the
//! daemon in process (`common::start`), or as a `ferry serve` child whose log is read. A
//! raw HTTP/2 client (`common::http2`) sends the two-message body tonic's client will not.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::http2::{grpc_outcome, h2_client};
use common::process::{free_address, logged_within_budget, scratch_dir, serve_logged};
use common::{
    client, config, dead_port, rabbitmq, send_kafka, send_rabbitmq, settings, start, stats, unique,
};
use ferry_testkit::{kafka, shared_amqp_url, shared_kafka};

/// `error_no` 1, an invalid request (`proto/messagebroker.proto`), under the two names
/// the tests brought together here used for it.
const INVALID_REQUEST: i32 = 1;
const INVALID: i32 = INVALID_REQUEST;

#[tokio::test]
async fn malformed_requests_get_an_error_and_the_daemon_keeps_serving() {
    let daemon = start(settings());
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", daemon.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Field 1 of KafkaMessage is a message; send it as a varint.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Bogus {
        #[prost(uint64, tag = "1")]
        target: u64,
    }
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = "/messagebroker.MessageBroker/SendKafkaMessage"
        .parse()
        .unwrap();
    let codec = tonic_prost::ProstCodec::<Bogus, ferry::proto::Response>::default();
    let status = grpc
        .unary(tonic::Request::new(Bogus { target: 7 }), path, codec)
        .await
        .unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok);
    assert!(!status.message().is_empty(), "{status:?}");

    let mut good = ferry::proto::message_broker_client::MessageBrokerClient::new(channel);
    let (answer, _) = send_kafka(&mut good, common::kafka("", "t", "x")).await;
    assert_eq!(answer.error_no, 1, "still serving");
}

#[tokio::test]
async fn invalid_requests_get_error_no_1_naming_the_field_and_the_daemon_keeps_serving() {
    let brokers = shared_kafka();
    let topic = unique("invalid");
    kafka::create_topic(&brokers, &topic).await;
    let daemon = start(settings());
    let mut client = client(&daemon).await;

    let mut no_target = common::kafka(&brokers, &topic, "x");
    no_target.target = None;
    let cases = [
        (common::kafka("", &topic, "x"), "brokers"),
        (common::kafka("nohost", &topic, "x"), "brokers"),
        (common::kafka(&brokers, "", "x"), "topic"),
        (common::kafka(&brokers, "bad topic", "x"), "topic"),
        (no_target, "target"),
    ];
    for (request, field) in cases {
        let (response, took) = send_kafka(&mut client, request).await;
        assert_eq!(
            response.error_no, INVALID_REQUEST,
            "{}",
            response.error_message
        );
        assert!(
            response.error_message.contains(field),
            "{}",
            response.error_message
        );
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    let url = shared_amqp_url();
    let rabbit_cases = [
        (rabbitmq("not a url", "ex", "k", "x"), "server"),
        (rabbitmq("", "ex", "k", "x"), "server"),
        (rabbitmq(&url, "", "k", "x"), "exchange"),
    ];
    for (request, field) in rabbit_cases {
        let (response, _) = send_rabbitmq(&mut client, request).await;
        assert_eq!(
            response.error_no, INVALID_REQUEST,
            "{}",
            response.error_message
        );
        assert!(
            response.error_message.contains(field),
            "{}",
            response.error_message
        );
    }
    let too_big = vec![0u8; 4 * 1024 * 1024 + 1];
    let (response, _) = send_kafka(&mut client, common::kafka(&brokers, &topic, too_big)).await;
    assert_eq!(
        response.error_no, INVALID_REQUEST,
        "{}",
        response.error_message
    );
    assert!(response.error_message.contains("message.data"));

    assert!(
        stats(&daemon).is_empty(),
        "no producer was started for invalid requests"
    );
    let (response, _) = send_kafka(&mut client, common::kafka(&brokers, &topic, "ok")).await;
    assert_eq!(response.error_no, 0, "{}", response.error_message);
}

#[tokio::test]
async fn passwords_in_amqp_urls_do_not_come_back_in_errors() {
    let daemon = start(settings());
    let mut client = client(&daemon).await;
    let url = format!("amqp://user:hunter2@127.0.0.1:{}/%2f", dead_port());
    let (response, _) = send_rabbitmq(&mut client, rabbitmq(&url, "ex", "k", "x")).await;
    assert_ne!(response.error_no, 0);
    assert!(
        !response.error_message.contains("hunter2"),
        "{}",
        response.error_message
    );
    let shown = format!("{:?}", stats(&daemon));
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("user:***@"), "{shown}");
}

#[tokio::test]
async fn an_amqp_url_with_a_huge_frame_max_is_refused_and_the_daemon_keeps_serving() {
    // This request once made the AMQP client allocate 137 GB, and the daemon aborted.
    let daemon = start(config().validate().unwrap());
    let mut grpc = client(&daemon).await;
    let url = shared_amqp_url();
    for query in ["frame_max=4294967295", "frame_max=1048576", "cacertfile=/x"] {
        let hostile = format!("{url}?{query}");
        let (answer, _) =
            send_rabbitmq(&mut grpc, rabbitmq(&hostile, "ferry.hostile", "k", "x")).await;
        assert_eq!(answer.error_no, INVALID, "{query}: {answer:?}");
        assert!(answer.error_message.contains("server"), "{answer:?}");
    }
    assert!(
        daemon.forwarder().registry().is_empty(),
        "nothing was connected"
    );
    let exchange = unique("ferry.frames");
    let (answer, _) = send_rabbitmq(&mut grpc, rabbitmq(&url, &exchange, "k", "ok")).await;
    assert_eq!(answer.error_no, 0, "still serving: {answer:?}");
    let (answer, _) = send_rabbitmq(
        &mut grpc,
        rabbitmq(&format!("{url}?frame_max=16384"), &exchange, "k", "ok"),
    )
    .await;
    assert_eq!(answer.error_no, 0, "a frame_max in range works: {answer:?}");
}

#[tokio::test]
async fn an_ipv6_amqp_url_is_sent_to_that_address_and_never_to_localhost() {
    // The test RabbitMQ listens on 127.0.0.1 only: nothing answers on [::1].
    let daemon = start(config().validate().unwrap());
    let mut grpc = client(&daemon).await;
    let url = shared_amqp_url();
    let port = url.rsplit_once(':').unwrap().1.split('/').next().unwrap();
    let ipv6 = format!("amqp://guest:guest@[::1]:{port}/%2f");
    let exchange = unique("ferry.ipv6");
    let (answer, _) = send_rabbitmq(&mut grpc, rabbitmq(&ipv6, &exchange, "k", "x")).await;
    assert_eq!(answer.error_no, 4, "{answer:?}");
    // The same through IPv4 reaches the broker.
    let ipv4 = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let (answer, _) = send_rabbitmq(&mut grpc, rabbitmq(&ipv4, &exchange, "k", "x")).await;
    assert_eq!(answer.error_no, 0, "{answer:?}");
}

#[tokio::test]
async fn a_unary_body_with_two_messages_is_refused_and_neither_is_forwarded() {
    let brokers = shared_kafka();
    let topic = kafka::unique_topic("ferry.test.two-in-one");
    kafka::create_topic(&brokers, &topic).await;
    let daemon = start(config().validate().unwrap());
    let mut send = h2_client(daemon.local_addr()).await;
    let request = http::Request::post("/messagebroker.MessageBroker/SendKafkaMessage")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = send.send_request(request, false).unwrap();
    let mut frames = Vec::new();
    for data in ["first", "second"] {
        let message = prost::Message::encode_to_vec(&common::kafka(&brokers, &topic, data));
        frames.push(0u8);
        frames.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frames.extend_from_slice(&message);
    }
    body.reserve_capacity(frames.len());
    body.send_data(Bytes::from(frames), true).unwrap();
    let (status, message) = grpc_outcome(response).await;
    assert_eq!(status, "3", "INVALID_ARGUMENT: {message}");
    assert!(message.contains("more than one message"), "{message}");
    let arrived = kafka::drain_topic(
        &brokers,
        &topic,
        Duration::from_millis(500),
        Duration::from_secs(3),
    );
    assert!(arrived.is_empty(), "forwarded: {arrived:?}");
    assert_eq!(
        daemon
            .forwarder()
            .totals()
            .sent
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn refused_requests_are_logged_at_a_bounded_rate() {
    let dir = scratch_dir("log-rate");
    let log = dir.join("ferry.log");
    let daemon = serve_logged(&free_address(), &[], &log);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", daemon.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let mut calls = Vec::new();
    for worker in 0..16 {
        let mut grpc =
            ferry::proto::message_broker_client::MessageBrokerClient::new(channel.clone());
        calls.push(tokio::spawn(async move {
            for i in 0..5_000 / 16 + usize::from(worker < 5_000 % 16) {
                let _ = i;
                let (answer, _) = send_kafka(&mut grpc, common::kafka("", "t", "x")).await;
                assert_eq!(answer.error_no, INVALID);
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    let seconds = started.elapsed().as_secs() + 1;
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = logged_within_budget(&text, "Request refused", seconds);
    assert!(
        text.contains("suppressed_before="),
        "the left-out lines are counted"
    );
    println!("5,000 invalid requests in {seconds} s: {lines} log lines");
}
