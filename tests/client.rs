//! The job-script client end to end: real `ferry` client processes, real `ferry serve`
//! daemons, real brokers. Exact bytes for `ferry send`, the exact envelope for
//! `ecflow-client` and `production` (over a daemon and straight to RabbitMQ), failover
//! across daemons that are dead or killed mid-run, and the bound when all are down.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::process::{ferry, free_address, scratch_dir, serve, serve_with};
use ferry_testkit::{amqp, kafka, shared_amqp_url, shared_kafka};
use serde_json::{Value, json};

/// Runs a ferry client and returns its output.
fn run(args: &[&str]) -> Output {
    ferry(args).output().expect("ferry runs")
}

/// Asserts exit 0, showing stderr otherwise.
fn assert_delivered(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A fresh exchange bound to a fresh queue with `binding_key`; returns both names.
async fn exchange_and_queue(binding_key: &str) -> (String, String) {
    let exchange = kafka::unique_topic("ferry.test.client");
    let queue = kafka::unique_topic("client");
    amqp::bind_queue(&shared_amqp_url(), &exchange, &queue, binding_key).await;
    (exchange, queue)
}

/// Everything in `queue`: `expected` messages waited for, then whatever else is there
/// (at-least-once delivery may add duplicates).
async fn drain(queue: &str, expected: usize) -> Vec<Vec<u8>> {
    let url = shared_amqp_url();
    let mut all: Vec<Vec<u8>> = amqp::read_queue(&url, queue, expected, Duration::from_secs(10))
        .await
        .into_iter()
        .map(|m| m.data)
        .collect();
    let rest = amqp::read_queue(&url, queue, usize::MAX, Duration::from_millis(300)).await;
    all.extend(rest.into_iter().map(|m| m.data));
    all
}

#[tokio::test]
async fn ferry_send_delivers_the_exact_bytes_of_a_file_and_of_stdin() {
    let listen = free_address();
    let daemon = serve(&listen);
    let payload: Vec<u8> = (0..=255u8).chain(b"\r\n\0end".iter().copied()).collect();
    let dir = std::env::temp_dir().join(kafka::unique_topic("ferry-client"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("payload.bin");
    std::fs::write(&file, &payload).unwrap();
    let file = file.to_str().unwrap();

    let brokers = shared_kafka();
    let topic = kafka::unique_topic("client");
    kafka::create_topic(&brokers, &topic).await;
    let output = run(&[
        "send",
        "kafka",
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--file",
        file,
        "--proxy",
        &listen,
    ]);
    assert_delivered(&output);

    let (exchange, queue) = exchange_and_queue("client.bytes").await;
    let url = shared_amqp_url();
    let mut child = ferry(&[
        "send",
        "rabbitmq",
        "--server",
        &url,
        "--exchange",
        &exchange,
        "--routing-key",
        "client.bytes",
        "--proxy",
        &listen,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child.stdin.take().unwrap().write_all(&payload).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_delivered(&output);
    assert!(output.stdout.is_empty(), "a delivered send prints nothing");

    let in_kafka = tokio::task::spawn_blocking(move || {
        kafka::read_topic(&brokers, &topic, 1, Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert_eq!(in_kafka, std::slice::from_ref(&payload));
    let in_rabbitmq = amqp::read_queue(&url, &queue, 1, Duration::from_secs(10)).await;
    assert_eq!(in_rabbitmq.len(), 1);
    assert_eq!(in_rabbitmq[0].data, payload);
    assert_eq!(in_rabbitmq[0].routing_key, "client.bytes");

    daemon.terminate();
    std::fs::remove_dir_all(dir).unwrap();
}

/// The `ECF_*` variables of a task, as ecFlow sets them in a job.
const TASK_ENV: [(&str, &str); 6] = [
    ("ECF_HOST", "login_b01"),
    ("ECF_PORT", "31067"),
    ("ECF_NAME", "/grapes_gfs_gmf/00/model/fcst"),
    ("ECF_RID", "4242"),
    ("ECF_TRYNO", "2"),
    ("ECF_DATE", "20261121"),
];

/// Runs `ferry ecflow-client` in a task's environment.
fn ecflow_client(command_options: &str, extra: &[&str]) -> Output {
    let options = format!("--command-options={command_options}");
    let mut command = ferry(&["ecflow-client", &options]);
    command.args(extra).envs(TASK_ENV);
    command.output().expect("ferry runs")
}

/// Checks an envelope against what was sent: the exact field set and values.
fn assert_envelope(received: &[u8], kind: &str, data: Value, sent_between: (i64, i64)) {
    let mut message: Value = serde_json::from_slice(received).expect("JSON");
    let time = message["time"]
        .as_str()
        .expect("time is a string")
        .to_owned();
    let time = chrono::DateTime::parse_from_rfc3339(&time).expect("RFC 3339 time");
    let (before, after) = sent_between;
    assert!(
        (before..=after).contains(&time.timestamp()),
        "time {time} outside the send"
    );
    message.as_object_mut().unwrap().remove("time");
    assert_eq!(
        message,
        json!({"app": "nwpc-message-client", "type": kind, "data": data})
    );
}

#[tokio::test]
async fn ecflow_client_sends_the_predecessors_envelope_over_a_daemon_and_directly() {
    let listen = free_address();
    let daemon = serve(&listen);
    let url = shared_amqp_url();
    let (exchange, queue) = exchange_and_queue("ecflow.command.ecflow_client").await;

    let before = chrono::Utc::now().timestamp();
    let over_daemon = ecflow_client(
        "--meter=progress 10 --port=4141",
        &[
            "--rabbitmq-server",
            &url,
            "--exchange-name",
            &exchange,
            "--with-broker",
            "--broker-address",
            &listen,
        ],
    );
    assert_delivered(&over_daemon);
    let direct = ecflow_client(
        "--complete",
        &["--rabbitmq-server", &url, "--exchange-name", &exchange],
    );
    assert_delivered(&direct);
    let after = chrono::Utc::now().timestamp();

    let received = amqp::read_queue(&url, &queue, 2, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 2);
    let task = |command: &str, args: Value, port: &str| {
        json!({
            "command": command, "args": args, "envs": null,
            "ecf_host": "login_b01", "ecf_port": port,
            "ecf_name": "/grapes_gfs_gmf/00/model/fcst", "ecf_rid": "4242",
            "ecf_tryno": "2", "ecf_date": "20261121",
        })
    };
    // Over the daemon: the meter command, --port overriding ECF_PORT.
    assert_envelope(
        &received[0].data,
        "ecflow-client",
        task("meter", json!(["progress", "10"]), "4141"),
        (before, after),
    );
    // Straight to RabbitMQ, as the predecessor did by default.
    assert_envelope(
        &received[1].data,
        "ecflow-client",
        task("complete", Value::Null, "31067"),
        (before, after),
    );
    for message in &received {
        assert_eq!(message.routing_key, "ecflow.command.ecflow_client");
        assert_eq!(message.delivery_mode, Some(2), "persistent");
        assert_eq!(message.content_type.as_deref(), Some("text/plain"));
    }

    // --disable-send prints the message and sends nothing.
    let printed = ecflow_client(
        "--abort=oops",
        &["--rabbitmq-server", &url, "--disable-send"],
    );
    assert_delivered(&printed);
    let printed: Value = serde_json::from_slice(&printed.stdout).expect("JSON on stdout");
    assert_eq!(printed["data"]["command"], "abort");
    assert_eq!(printed["data"]["args"], json!(["oops"]));
    let nothing = amqp::read_queue(&url, &queue, 1, Duration::from_millis(300)).await;
    assert!(nothing.is_empty());

    daemon.terminate();
}

#[tokio::test]
async fn production_uses_the_system_and_type_routing_key() {
    let listen = free_address();
    let daemon = serve(&listen);
    let url = shared_amqp_url();
    // Bound to the exact key: the message only arrives if the routing key is right.
    let (exchange, queue) = exchange_and_queue("grapes_gfs_gmf.production.grib2").await;
    let before = chrono::Utc::now().timestamp();
    let output = run(&[
        "production",
        "--system=grapes_gfs_gmf",
        "--production-type=grib2",
        "--production-stream=oper",
        "--production-name=orig",
        "--event=storage",
        "--status=aborted",
        "--start-time=2026112100",
        "--forecast-time=24h",
        &format!("--rabbitmq-server={url}"),
        &format!("--exchange-name={exchange}"),
        "--with-broker",
        &format!("--broker-address={listen}"),
    ]);
    assert_delivered(&output);
    let after = chrono::Utc::now().timestamp();
    let received = amqp::read_queue(&url, &queue, 1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].routing_key, "grapes_gfs_gmf.production.grib2");
    assert_envelope(
        &received[0].data,
        "production",
        json!({
            "system": "grapes_gfs_gmf", "type": "grib2", "stream": "oper", "name": "orig",
            "start_time": "2026-11-21T00:00:00Z", "forecast_time": "24h", "event": "storage",
            "status": 3,
        }),
        (before, after),
    );
    daemon.terminate();
}

#[tokio::test]
async fn an_eps_product_and_a_log_event_arrive_as_the_predecessor_sent_them() {
    let listen = free_address();
    let daemon = serve(&listen);
    let url = shared_amqp_url();
    let (products, product_queue) = exchange_and_queue("grapes_gefs.production.grib2").await;
    let (logs, log_queue) = exchange_and_queue("grapes_gfs_gmf.log.prepare").await;
    let through = [
        format!("--rabbitmq-server={url}"),
        "--with-broker".to_owned(),
        format!("--broker-address={listen}"),
    ];
    let before = chrono::Utc::now().timestamp();
    let mut eps: Vec<String> = [
        "production",
        "--system=grapes_gefs",
        "--production-type=grib2",
        "--production-stream=eps",
        "--number=3",
        "--production-name=orig",
        "--event=storage",
        "--start-time=2026112200",
        "--forecast-time=024h",
    ]
    .map(String::from)
    .into();
    eps.push(format!("--exchange-name={products}"));
    eps.extend(through.clone());
    assert_delivered(&run(&eps.iter().map(String::as_str).collect::<Vec<_>>()));
    let mut log: Vec<String> = [
        "log",
        "--system=grapes_gfs_gmf",
        "--start-time=2026112200",
        "--time=2026112206",
        "--level=info",
        "--log-type=prepare",
    ]
    .map(String::from)
    .into();
    log.push(format!("--exchange-name={logs}"));
    log.extend(through);
    log.extend(["--", "--forecast-time=0h", "--source=ncep"].map(String::from));
    assert_delivered(&run(&log.iter().map(String::as_str).collect::<Vec<_>>()));
    let after = chrono::Utc::now().timestamp();

    let product = amqp::read_queue(&url, &product_queue, 1, Duration::from_secs(10)).await;
    assert_eq!(product.len(), 1);
    assert_envelope(
        &product[0].data,
        "production",
        json!({
            "system": "grapes_gefs", "stream": "eps", "type": "grib2", "name": "orig",
            "start_time": "2026-11-22T00:00:00Z", "forecast_time": "024h", "number": 3,
            "event": "storage", "status": 1,
        }),
        (before, after),
    );
    let logged = amqp::read_queue(&url, &log_queue, 1, Duration::from_secs(10)).await;
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].routing_key, "grapes_gfs_gmf.log.prepare");
    assert_envelope(
        &logged[0].data,
        "production",
        json!({
            "system": "grapes_gfs_gmf", "start_time": "2026-11-22T00:00:00Z",
            "time": "2026-11-22T06:00:00Z", "level": "info", "type": "prepare",
            "content": {"forecast-time": "0h", "source": "ncep"},
        }),
        (before, after),
    );
    daemon.terminate();
}

#[tokio::test]
async fn failover_delivers_everything_via_the_second_daemon() {
    const BEFORE: usize = 10;
    const DURING: usize = 40;
    let url = shared_amqp_url();
    let (exchange, queue) = exchange_and_queue("failover").await;
    let first = free_address();
    let second = free_address();
    let second_daemon = serve(&second);
    let proxies = format!("{first},{second}");
    let send = |body: String| {
        run(&[
            "send",
            "rabbitmq",
            "--server",
            &url,
            "--exchange",
            &exchange,
            "--routing-key",
            "failover",
            "--data",
            &body,
            "--proxy",
            &proxies,
        ])
    };

    // The first daemon is dead (nothing listening): every message goes via the second.
    let started = Instant::now();
    for i in 0..BEFORE {
        assert_delivered(&send(format!("before-{i}")));
    }
    let per_send = started.elapsed() / BEFORE as u32;

    // Now it runs, and is killed mid-run.
    let first_daemon = serve(&first);
    let sent = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let killed_after = std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..DURING {
                let output = send(format!("during-{i}"));
                if !output.status.success() {
                    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
                    failures.lock().unwrap().push(stderr);
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        });
        while sent.load(Ordering::SeqCst) < DURING / 3 {
            std::thread::sleep(Duration::from_millis(5));
        }
        first_daemon.signal("KILL");
        sent.load(Ordering::SeqCst)
    });
    assert!(
        killed_after < DURING,
        "the kill happened mid-run (after {killed_after})"
    );
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "not delivered: {failures:?}");

    let expected: BTreeSet<Vec<u8>> = (0..BEFORE)
        .map(|i| format!("before-{i}"))
        .chain((0..DURING).map(|i| format!("during-{i}")))
        .map(String::into_bytes)
        .collect();
    let received: BTreeSet<Vec<u8>> = drain(&queue, expected.len()).await.into_iter().collect();
    let missing: Vec<_> = expected
        .difference(&received)
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    assert!(missing.is_empty(), "missing: {missing:?}");
    println!(
        "failover: {BEFORE} sends with the first daemon dead took {per_send:?} each; \
         killed the first daemon after {killed_after} of {DURING}"
    );
    drop(first_daemon);
    second_daemon.terminate();
}

#[test]
fn with_every_daemon_down_the_client_fails_within_its_bound() {
    // One address refuses connections; the other accepts TCP and never answers.
    let refused = free_address();
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let black_hole_address = black_hole.local_addr().unwrap().to_string();
    let proxies = format!("{black_hole_address},{refused}");
    // Attempts of 200 ms and 400 ms per daemon: the documented bound is 2 × 600 ms.
    let bound = Duration::from_millis(1200);
    let send = |limit: &[&str]| {
        let mut args = vec!["send", "kafka", "--brokers", "127.0.0.1:9", "--topic", "t"];
        args.extend(["--data", "x", "--proxy", &proxies]);
        args.extend(limit);
        let started = Instant::now();
        (run(&args), started.elapsed())
    };
    let (output, took) = send(&["--attempt-timeout-ms", "200"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{black_hole_address} (2 attempts): no answer within 400 ms"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{refused} (1 attempt): cannot connect")),
        "{stderr}"
    );
    // The black hole used its whole budget; the process adds its start-up and exit.
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(took < bound + Duration::from_millis(500), "{took:?}");
    drop(black_hole);

    // --timeout-ms caps the whole send below the policy's bound.
    let black_hole = std::net::TcpListener::bind(&black_hole_address).unwrap();
    let (output, took) = send(&["--timeout-ms", "300"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(took < Duration::from_millis(800), "{took:?}");
    drop(black_hole);
}

#[test]
fn usage_errors_exit_2_and_are_told_apart_from_failures() {
    let bad_flag = run(&["send", "kafka", "--topic", "t", "--data", "x"]);
    assert_eq!(bad_flag.status.code(), Some(2), "missing --brokers");
    let bad_file = run(&[
        "send",
        "kafka",
        "--brokers",
        "h:1",
        "--topic",
        "t",
        "--file",
        "/nonexistent/x",
    ]);
    assert_eq!(bad_file.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad_file.stderr);
    assert!(
        stderr.starts_with("ferry: cannot read /nonexistent/x"),
        "{stderr}"
    );
    let kafka_send = |extra: &[&str]| {
        let mut args = vec![
            "send",
            "kafka",
            "--brokers",
            "h:1",
            "--topic",
            "t",
            "--data",
            "x",
        ];
        args.extend(extra);
        run(&args)
    };
    let bad_attempts = kafka_send(&["--attempts", "11"]);
    assert_eq!(bad_attempts.status.code(), Some(2));
    let bad_proxy = kafka_send(&["--proxy", "nohost"]);
    assert_eq!(bad_proxy.status.code(), Some(2));
    let bad_url = run(&[
        "ecflow-client",
        "--command-options=--complete",
        "--rabbitmq-server=http://not-amqp",
    ]);
    assert_eq!(bad_url.status.code(), Some(2));
    let bad_status = run(&[
        "production",
        "--system=s",
        "--production-type=t",
        "--production-stream=oper",
        "--production-name=n",
        "--event=e",
        "--status=finished",
        "--start-time=2026112100",
        "--forecast-time=0h",
        "--rabbitmq-server=amqp://h",
        "--disable-send",
    ]);
    assert_eq!(bad_status.status.code(), Some(2));
}

/// Runs `ferry ARGS` with `input` on its standard input.
fn run_with_input(args: &[&str], input: &[u8]) -> Output {
    let mut child = ferry(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry runs");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn send_lines_delivers_each_line_once_over_one_stream_and_fails_over_to_the_next_daemon() {
    const LINES: usize = 1_000;
    let brokers = shared_kafka();
    let topic = kafka::unique_topic("ferry.test.lines");
    kafka::create_topic(&brokers, &topic).await;
    let daemon = serve(&free_address());
    // The first daemon is down: every line goes through the second.
    let proxies = format!("{},{}", free_address(), daemon.address);
    let input: String = (1..=LINES).map(|i| format!("{{\"line\":{i}}}\n")).collect();
    let started = Instant::now();
    let output = run_with_input(
        &[
            "send",
            "kafka",
            "--brokers",
            &brokers,
            "--topic",
            &topic,
            "--lines",
            "--proxy",
            &proxies,
        ],
        input.as_bytes(),
    );
    println!("{LINES} lines in {} ms", started.elapsed().as_millis());
    assert_delivered(&output);
    let received = kafka::drain_topic(
        &brokers,
        &topic,
        Duration::from_secs(1),
        Duration::from_secs(20),
    );
    assert_eq!(received.len(), LINES, "one message per line");
    let received: BTreeSet<Vec<u8>> = received.into_iter().collect();
    let sent: BTreeSet<Vec<u8>> = input.lines().map(|line| line.as_bytes().to_vec()).collect();
    assert_eq!(received, sent, "every line, once, without its newline");
    let report = common::report(&daemon.ops_address).await;
    assert_eq!(report.totals.sent, LINES as u64, "no line sent twice");
    daemon.terminate();
}

#[tokio::test]
async fn send_lines_exits_1_naming_the_lines_not_delivered_and_why() {
    let brokers = shared_kafka();
    let topic = kafka::unique_topic("ferry.test.lines");
    kafka::create_topic(&brokers, &topic).await;
    let dir = scratch_dir("lines-limit");
    let config = dir.join("ferry.toml");
    std::fs::write(&config, "[server]\nmax_message_bytes = 100\n").unwrap();
    let daemon = serve_with(&free_address(), &["--config", &config.to_string_lossy()]);
    let long = "x".repeat(101);
    let input = format!("one\ntwo\n{long}\nfour\n{long}\n{long}\nseven");
    let file = dir.join("events.txt");
    std::fs::write(&file, &input).unwrap();
    let output = run(&[
        "send",
        "kafka",
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--lines",
        "--file",
        &file.to_string_lossy(),
        "--proxy",
        &daemon.address,
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("3 of 7 lines not delivered"), "{stderr}");
    let why = stderr
        .lines()
        .find(|line| line.starts_with("ferry: lines 3, 5-6: "))
        .unwrap_or_else(|| panic!("the failed lines and their reason: {stderr}"));
    assert!(why.contains("error_no 1"), "{why}");
    assert!(why.contains("more than the 100 allowed"), "{why}");
    let received = kafka::drain_topic(
        &brokers,
        &topic,
        Duration::from_secs(1),
        Duration::from_secs(20),
    );
    let received: BTreeSet<&[u8]> = received.iter().map(Vec::as_slice).collect();
    let delivered: BTreeSet<&[u8]> = [&b"one"[..], b"two", b"four", b"seven"].into();
    assert_eq!(received, delivered);
    std::fs::remove_dir_all(dir).unwrap();
    daemon.terminate();
}
