//! End-to-end: access decided per caller (`[[access.clients]]`). Each client is known by
//! its own bearer token or by its TLS client certificate, may use only the routes it is
//! given, and is held to its own rate: one client over its rate gets 5, the others are
//! served as before. Real Kafka (tansu); real TLS with certificates made for the test.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::pki::Pki;
use common::process::scratch_dir;
use common::start;
use ferry::config::Config;
use ferry::proto::ferry::v1::send_client::SendClient;
use ferry::proto::ferry::v1::{SendReply, SendRequest, send_request};
use ferry_testkit::{kafka, shared_kafka};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A daemon config from `text`, on free loopback ports.
fn config(dir: &Path, text: &str) -> Config {
    let mut config = Config::from_text(&dir.join("ferry.toml"), text).unwrap();
    config.server.listen = "127.0.0.1:0".into();
    config.ops.listen = "127.0.0.1:0".into();
    config
}

/// Writes `token` to `dir/name.token`; the path.
fn token_file(dir: &Path, name: &str, token: &str) -> String {
    let path = dir.join(format!("{name}.token"));
    std::fs::write(&path, token).unwrap();
    path.to_string_lossy().into_owned()
}

/// One message through `route`, with `token` if any; the reply (or the gRPC status).
async fn send(
    client: &mut SendClient<Channel>,
    route: &str,
    token: Option<&str>,
    data: String,
) -> Result<SendReply, tonic::Status> {
    let mut request = tonic::Request::new(SendRequest {
        target: Some(send_request::Target::Route(route.into())),
        data: Bytes::from(data),
        ..Default::default()
    });
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    client.send(request).await.map(tonic::Response::into_inner)
}

/// `rate` messages a second for `seconds` from one client; each reply with its latency.
async fn load(
    client: SendClient<Channel>,
    token: &'static str,
    rate: u64,
    seconds: u64,
) -> Vec<(SendReply, Duration)> {
    let started = Instant::now();
    common::paced(
        rate,
        || started.elapsed() < Duration::from_secs(seconds),
        move |n| {
            let mut client = client.clone();
            async move {
                let at = Instant::now();
                let reply = send(&mut client, "events", Some(token), format!("{token}-{n}"))
                    .await
                    .unwrap();
                (reply, at.elapsed())
            }
        },
    )
    .await
    .join_all()
    .await
}

/// The 99th percentile of `latencies`.
fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort_unstable();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

/// The tests of this file run one at a time: the first measures latency, and on a
/// two-core machine the others' TLS key generation beside it was the noise it measured
/// (one failure in four runs of the file).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HEAVY: &str = "heavy-client-token-0001";
const LIGHT: &str = "light-client-token-0002";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_is_refused_alone_and_held_to_its_routes() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let brokers = shared_kafka();
    let topic = kafka::unique_topic("ferry.test.clients");
    kafka::create_topic(&brokers, &topic).await;
    let dir = scratch_dir("clients");
    let text = format!(
        "[routes.events]\nkind = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopic = \"{topic}\"\n\
         [routes.other]\nkind = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopic = \"{topic}\"\n\
         [[access.clients]]\nname = \"heavy\"\ntoken_file = {:?}\nroutes = [\"events\"]\n\
         max_rate = 20\n\
         [[access.clients]]\nname = \"light\"\ntoken_file = {:?}\nroutes = [\"*\"]\n",
        token_file(&dir, "heavy", HEAVY),
        token_file(&dir, "light", LIGHT),
    );
    let daemon = start(config(&dir, &text).validate().unwrap());
    let channel = Channel::from_shared(format!("http://{}", daemon.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = SendClient::new(channel);
    // Warm: the route's producer is connected before anything is measured.
    let warm = send(&mut client, "events", Some(LIGHT), "warm".into()).await;
    assert_eq!(warm.unwrap().error_no, 0);

    // Who calls: no credential, or a wrong one, is refused before anything is read.
    for token in [None, Some("not-a-client-token-0003")] {
        let status = send(&mut client, "events", token, "x".into())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    }
    // What it may use: heavy is not given route "other".
    let reply = send(&mut client, "other", Some(HEAVY), "x".into())
        .await
        .unwrap();
    assert_eq!(reply.error_no, 7, "{reply:?}");
    assert!(
        reply.error_message.contains("not given to client heavy"),
        "{reply:?}"
    );

    // Light alone, then light beside heavy sending at five times its rate.
    let alone = load(client.clone(), LIGHT, 100, 2).await;
    let (beside, heavy) = tokio::join!(
        load(client.clone(), LIGHT, 100, 2),
        load(client.clone(), HEAVY, 100, 2)
    );
    for (reply, _) in alone.iter().chain(&beside) {
        assert_eq!(reply.error_no, 0, "light refused: {reply:?}");
    }
    let refused: Vec<_> = heavy.iter().filter(|(r, _)| r.error_no == 5).collect();
    let delivered = heavy.iter().filter(|(r, _)| r.error_no == 0).count();
    assert_eq!(refused.len() + delivered, heavy.len(), "only 0 or 5");
    assert!(
        refused[0].0.error_message.contains("max_rate"),
        "{:?}",
        refused[0]
    );
    // 2 s at 20/s plus one second's burst: about 60 of 200.
    assert!(
        (40..=80).contains(&delivered),
        "heavy delivered {delivered}"
    );
    let (p99_alone, p99_beside) = (
        p99(alone.iter().map(|(_, t)| *t).collect()),
        p99(beside.iter().map(|(_, t)| *t).collect()),
    );
    assert!(
        p99_beside <= (p99_alone * 2).max(p99_alone + Duration::from_millis(25)),
        "light p99 {p99_beside:?} beside heavy, {p99_alone:?} alone"
    );

    // Counted per client by name; no token in the report.
    let ops = daemon.ops_addr().to_string();
    let report = common::report(&ops).await;
    let of = |name: &str| report.clients.iter().find(|c| c.name == name).unwrap();
    assert_eq!(of("heavy").rate_limited, refused.len() as u64);
    assert_eq!((of("light").rate_limited, of("light").not_allowed), (0, 0));
    assert_eq!(of("heavy").not_allowed, 1);
    let body = ferry::cli::ops::fetch(format!("http://{ops}/stats").parse().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains(HEAVY) && !text.contains(LIGHT),
        "a token in /stats"
    );
    println!(
        "heavy at 100/s with max_rate 20: {delivered} of {} delivered, {} answered 5; \
         light at 100/s: p99 {p99_alone:?} alone, {p99_beside:?} beside heavy, none refused",
        heavy.len(),
        refused.len()
    );
}

/// A TLS channel to `address` trusting `pki`'s CA, presenting `identity` (cert and key
/// files) if any.
async fn tls_channel(
    address: std::net::SocketAddr,
    pki: &Pki,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("127.0.0.1");
    if let Some((cert, key)) = identity {
        let cert = std::fs::read(pki.path(cert)).unwrap();
        let key = std::fs::read(pki.path(key)).unwrap();
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
}

#[tokio::test]
async fn a_client_certificate_identifies_its_client_and_a_strangers_is_refused() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let brokers = shared_kafka();
    let topic = kafka::unique_topic("ferry.test.mtls");
    kafka::create_topic(&brokers, &topic).await;
    let dir = scratch_dir("clients-mtls");
    let pki = Pki::generate(dir.join("pki"));
    let text = format!(
        "[server]\ntls_cert_file = {:?}\ntls_key_file = {:?}\ntls_client_ca_file = {:?}\n\
         [routes.events]\nkind = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopic = \"{topic}\"\n\
         [[access.clients]]\nname = \"certified\"\ncertificate_subject = \"CN=client\"\n\
         routes = [\"events\"]\n",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let daemon = start(config(&dir, &text).validate().unwrap());
    let address = daemon.local_addr();

    let channel = tls_channel(address, &pki, Some(("client.pem", "client.key")))
        .await
        .unwrap();
    let mut client = SendClient::new(channel);
    let reply = send(&mut client, "events", None, "certified".into())
        .await
        .unwrap();
    assert_eq!(reply.error_no, 0, "{reply:?}");

    // The same subject, signed by another CA: the handshake fails, nothing is read.
    let stranger = match tls_channel(address, &pki, Some(("stranger.pem", "stranger.key"))).await {
        Err(error) => format!("connect: {error}"),
        Ok(channel) => {
            let status = send(&mut SendClient::new(channel), "events", None, "x".into())
                .await
                .expect_err("a stranger's certificate is refused");
            assert_ne!(
                status.code(),
                tonic::Code::Unauthenticated,
                "refused by TLS"
            );
            format!("{status}")
        }
    };
    // No certificate at all: TLS is fine, but the call names no client.
    let channel = tls_channel(address, &pki, None).await.unwrap();
    let status = send(&mut SendClient::new(channel), "events", None, "x".into())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    let report = common::report(daemon.ops_addr()).await;
    assert_eq!(report.clients[0].requests, 1, "{:?}", report.clients);
    println!("a stranger's certificate: {stranger}");
}

#[tokio::test]
async fn a_stream_is_held_to_its_client_as_the_config_in_force_has_it() {
    let _alone = ONE_AT_A_TIME.lock().await;
    use ferry::proto::ferry::v1::IngestRequest;
    use ferry::proto::ferry::v1::ingest_client::IngestClient;
    use ferry::proto::ferry::v1::ingest_request::Message;
    let brokers = shared_kafka();
    let topic = kafka::unique_topic("ferry.test.clients-stream");
    kafka::create_topic(&brokers, &topic).await;
    let dir = scratch_dir("clients-stream");
    let routes = format!(
        "[routes.events]\nkind = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopic = \"{topic}\"\n"
    );
    let with_token = |token: &str| {
        format!(
            "{routes}[[access.clients]]\nname = \"jobs\"\ntoken_file = {:?}\nroutes = [\"*\"]\n",
            token_file(&dir, token, token)
        )
    };
    let first = config(&dir, &with_token(LIGHT)).validate().unwrap();
    let daemon = start(first);
    let channel = Channel::from_shared(format!("http://{}", daemon.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut opened = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let bearer = format!("Bearer {LIGHT}").parse().unwrap();
    opened.metadata_mut().insert("authorization", bearer);
    let mut acks = IngestClient::new(channel)
        .stream(opened)
        .await
        .unwrap()
        .into_inner();
    let message = |id: u64| IngestRequest {
        id,
        message: Some(Message::Send(SendRequest {
            target: Some(send_request::Target::Route("events".into())),
            data: Bytes::from(format!("stream-{id}")),
            ..Default::default()
        })),
    };
    tx.send(message(1)).await.unwrap();
    let ack = acks.message().await.unwrap().unwrap();
    assert_eq!(ack.reply.unwrap().error_no, 0);
    // The client's token is rotated by a reload: the open stream is the old credential's.
    let rotated = config(&dir, &with_token(HEAVY)).validate().unwrap();
    daemon.live().apply(
        daemon.started_with(),
        &rotated,
        "rotated".into(),
        Vec::new(),
    );
    tx.send(message(2)).await.unwrap();
    let reply = acks.message().await.unwrap().unwrap().reply.unwrap();
    assert_eq!(reply.error_no, 7, "{reply:?}");
    assert!(
        reply.error_message.contains("no longer configured"),
        "{reply:?}"
    );
}
