//! The operations surface end to end: `/stats` and `/metrics` after known traffic (and a
//! broker kill), `/healthz`, `ferry check`, the pid file, and reflection. The daemon in
//! process or as a `ferry serve` child, against real brokers. SIGTERM is `tests/signals.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::process::{ferry, free_address, serve, serve_with};
use common::{client, kafka, rabbitmq, send_kafka, send_rabbitmq, settings, start, unique};
use ferry::cli::ops::fetch;
use ferry::report::Report;
use ferry_testkit::{BrokerKind, PrivateBroker, shared_amqp_url, shared_kafka};

/// GETs `path` from the operations endpoint at `address`.
async fn get(address: &str, path: &str) -> Result<Vec<u8>, String> {
    let uri = format!("http://{address}{path}").parse().unwrap();
    fetch(uri).await.map(|body| body.to_vec())
}

/// `/stats`, parsed.
async fn report(address: &str) -> Report {
    serde_json::from_slice(&get(address, "/stats").await.unwrap()).expect("a /stats document")
}

/// Samples by name, each with its labels and value.
type Samples = HashMap<String, Vec<(HashMap<String, String>, f64)>>;

/// `/metrics`, parsed as Prometheus text.
async fn metrics(address: &str) -> Samples {
    let text = String::from_utf8(get(address, "/metrics").await.unwrap()).unwrap();
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let mut samples = Samples::new();
    for sample in scrape.samples {
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let labels: HashMap<String, String> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        samples
            .entry(sample.metric)
            .or_default()
            .push((labels, value));
    }
    samples
}

/// The value of `name` for the producer whose target is `target`.
fn per_target(samples: &Samples, name: &str, target: &str) -> f64 {
    samples[name]
        .iter()
        .find(|(labels, _)| labels.get("target").map(String::as_str) == Some(target))
        .unwrap_or_else(|| panic!("{name} for {target}"))
        .1
}

#[tokio::test]
async fn stats_and_metrics_count_known_traffic_per_actor() {
    let daemon = start(settings());
    let ops = daemon.ops_addr().to_string();
    assert_eq!(get(&ops, "/healthz").await.unwrap(), b"serving\n");
    let mut grpc = client(&daemon).await;
    let brokers = shared_kafka();
    let topic = unique("ops");
    ferry_testkit::kafka::create_topic(&brokers, &topic).await;
    let url = shared_amqp_url();
    let exchange = unique("ferry.test.ops");
    let nowhere = free_address();

    for i in 0..5 {
        let (answer, _) = send_kafka(&mut grpc, kafka(&brokers, &topic, format!("k{i}"))).await;
        assert_eq!(answer.error_no, 0, "{}", answer.error_message);
    }
    for i in 0..3 {
        let request = rabbitmq(&url, &exchange, "ops", format!("r{i}"));
        let (answer, _) = send_rabbitmq(&mut grpc, request).await;
        assert_eq!(answer.error_no, 0, "{}", answer.error_message);
    }
    for _ in 0..2 {
        let (answer, _) = send_kafka(&mut grpc, kafka(&nowhere, "t", "x")).await;
        assert_eq!(answer.error_no, 4, "{}", answer.error_message);
    }
    let (answer, _) = send_kafka(&mut grpc, kafka(&brokers, "", "no topic")).await;
    assert_eq!(answer.error_no, 1);

    let report = report(&ops).await;
    assert!(report.serving);
    assert_eq!(report.totals.sent, 8);
    assert_eq!(report.totals.failed, 2);
    assert_eq!(report.totals.invalid, 1);
    assert_eq!(report.totals.producers, 3);
    let producer = |kind: &str, target: &str| {
        report
            .producers
            .iter()
            .find(|p| p.kind == kind && p.target == target)
            .unwrap_or_else(|| panic!("{kind} {target} in {:?}", report.producers))
            .clone()
    };
    let to_kafka = producer("kafka", &brokers);
    assert_eq!(
        (to_kafka.sent, to_kafka.failed, to_kafka.state.as_str()),
        (5, 0, "ready")
    );
    assert!(to_kafka.latency_p50_ms.is_some() && to_kafka.latency_p99_ms.is_some());
    assert!(to_kafka.last_error.is_none());
    let amqp_target = format!(
        "{} exchange {exchange}",
        url.replace("guest:guest@", "guest:***@")
    );
    let to_rabbitmq = producer("rabbitmq", &amqp_target);
    assert_eq!((to_rabbitmq.sent, to_rabbitmq.failed), (3, 0));
    let to_nowhere = producer("kafka", &nowhere);
    assert_eq!((to_nowhere.sent, to_nowhere.failed), (0, 2));
    assert!(to_nowhere.restarts >= 1, "{to_nowhere:?}");
    assert!(to_nowhere.last_error.is_some() && to_nowhere.last_error_at.is_some());
    assert!(to_nowhere.latency_p50_ms.is_none());

    // /metrics parses as Prometheus text and says the same.
    let samples = metrics(&ops).await;
    assert_eq!(samples["ferry_messages_sent_total"][0].1, 8.0);
    assert_eq!(samples["ferry_messages_failed_total"][0].1, 2.0);
    assert_eq!(samples["ferry_requests_invalid_total"][0].1, 1.0);
    // The bounds the alert rules divide by.
    let limit = common::config().server.max_in_flight as f64;
    assert_eq!(samples["ferry_in_flight_limit"][0].1, limit);
    assert!(samples["ferry_in_flight_bytes_limit"][0].1 > 0.0);
    assert_eq!(samples["ferry_config_last_reload_failed"][0].1, 0.0);
    for p in [&to_kafka, &to_rabbitmq, &to_nowhere] {
        assert_eq!(
            per_target(&samples, "ferry_producer_sent_total", &p.target),
            p.sent as f64
        );
        assert_eq!(
            per_target(&samples, "ferry_producer_failed_total", &p.target),
            p.failed as f64
        );
    }
    let restarts = per_target(&samples, "ferry_producer_restarts_total", &nowhere);
    assert!(restarts >= 1.0);
    daemon.stop().unwrap();
}

#[tokio::test]
async fn a_restart_after_a_broker_kill_shows_up_in_stats_and_metrics() {
    let broker = PrivateBroker::start(BrokerKind::Kafka);
    let brokers = broker.address();
    let topic = unique("ops-kill");
    ferry_testkit::kafka::create_topic(&brokers, &topic).await;
    let daemon = start(settings());
    let ops = daemon.ops_addr().to_string();
    let mut grpc = client(&daemon).await;
    let (answer, _) = send_kafka(&mut grpc, kafka(&brokers, &topic, "before")).await;
    assert_eq!(answer.error_no, 0, "{}", answer.error_message);
    let before = report(&ops).await;
    assert_eq!(before.producers[0].restarts, 0);

    broker.kill();
    let (answer, _) = send_kafka(&mut grpc, kafka(&brokers, &topic, "during")).await;
    assert_ne!(answer.error_no, 0);
    broker.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (answer, _) = send_kafka(&mut grpc, kafka(&brokers, &topic, "after")).await;
        if answer.error_no == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", answer.error_message);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = report(&ops).await;
    let producer = &after.producers[0];
    assert!(producer.restarts >= 1, "{producer:?}");
    assert!(producer.sent >= 2 && producer.failed >= 1, "{producer:?}");
    assert!(producer.last_error.is_some());
    let samples = metrics(&ops).await;
    let restarts = per_target(&samples, "ferry_producer_restarts_total", &brokers);
    assert_eq!(restarts, producer.restarts as f64);
    // The connection had carried "before": its loss is a drop (FerryProducerRestartLoop).
    assert!(producer.drops >= 1, "{producer:?}");
    let drops = per_target(&samples, "ferry_producer_drops_total", &brokers);
    assert_eq!(drops, producer.drops as f64);
    daemon.stop().unwrap();
}

#[test]
fn ferry_check_says_serving_or_not_in_one_line() {
    let daemon = serve(&free_address());
    let live = ferry(&["check", "--address", &daemon.address])
        .output()
        .unwrap();
    assert_eq!(live.status.code(), Some(0));
    let line = String::from_utf8_lossy(&live.stdout);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("serving"), "{line}");

    let stats = ferry(&["stats", "--http", &daemon.ops_address])
        .output()
        .unwrap();
    assert_eq!(stats.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&stats.stdout).contains("KIND"));
    // The address as a URL, as copied from a browser, works too.
    let url = format!("http://{}/", daemon.ops_address);
    let stats = ferry(&["stats", "--http", &url]).output().unwrap();
    assert_eq!(stats.status.code(), Some(0), "{stats:?}");
    // Nothing there: the error names the address and the operating system's reason.
    let nowhere = free_address();
    let stats = ferry(&["stats", "--http", &nowhere]).output().unwrap();
    let said = String::from_utf8_lossy(&stats.stderr);
    assert_eq!(stats.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("cannot connect to {nowhere}: ")) && said.contains("refused"),
        "{said}"
    );

    let dead = free_address();
    let down = ferry(&["check", "--address", &dead]).output().unwrap();
    assert_eq!(down.status.code(), Some(1));
    let line = String::from_utf8_lossy(&down.stdout);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("down"), "{line}");

    // FERRY_PROXY's list, as the README's failover set-up has it: each daemon checked.
    let both = format!("{},{dead}", daemon.address);
    let listed = ferry(&["check"])
        .env("FERRY_PROXY", &both)
        .output()
        .unwrap();
    assert_eq!(listed.status.code(), Some(3), "{listed:?}");
    let lines = String::from_utf8_lossy(&listed.stdout);
    assert!(
        lines.contains(&format!("ferry at {}: serving", daemon.address)),
        "{lines}"
    );
    assert!(lines.contains(&format!("ferry at {dead}: down")), "{lines}");
    assert!(lines.contains("1 of 2 daemons serve"), "{lines}");
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

/// `ferry check --address ADDRESS --http OPS`: its exit code and its one line.
fn check_health(address: &str, ops: &str) -> (Option<i32>, String) {
    let output = ferry(&["check", "--address", address, "--http", ops])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(line.lines().count(), 1, "{line}");
    (output.status.code(), line)
}

/// Polls `/healthz` until its body starts with `state`, for at most `within`; the body.
async fn await_health(ops: &str, state: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let body = String::from_utf8(get(ops, "/healthz").await.unwrap()).unwrap();
        if body.starts_with(state) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never said {state}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_spool_that_does_not_drain_makes_the_daemon_degraded_until_it_drains() {
    let broker = PrivateBroker::start(BrokerKind::RabbitMq);
    let url = broker.amqp_url();
    let exchange = unique("ferry.health");
    let queue = unique("health");
    ferry_testkit::amqp::bind_queue(&url, &exchange, &queue, "#").await;
    broker.stop();
    let dir = common::process::scratch_dir("health-degraded");
    let mut config = common::config();
    config.spool.dir = dir.to_str().unwrap().to_owned();
    config.ops.degraded_after_s = 1;
    let daemon = start(config.validate().unwrap());
    let (address, ops) = (
        daemon.local_addr().to_string(),
        daemon.ops_addr().to_string(),
    );
    assert_eq!(check_health(&address, &ops).0, Some(0), "serving at first");
    let mut grpc = client(&daemon).await;
    let answer = send_rabbitmq(&mut grpc, rabbitmq(&url, &exchange, "k", "held"))
        .await
        .0;
    assert!(answer.error_no == 0 && answer.spooled, "{answer:?}");

    // Past ops.degraded_after_s with the broker down: degraded, with the reason, and
    // still serving (gRPC health and /healthz 200): a restart would not help.
    let body = await_health(&ops, "degraded", Duration::from_secs(15)).await;
    assert!(body.contains("spooled messages for rabbitmq"), "{body}");
    assert!(
        !body.contains(":guest@") && !body.contains("password"),
        "{body}"
    );
    let (code, line) = check_health(&address, &ops);
    assert_eq!(code, Some(3), "{line}");
    assert!(
        line.contains("degraded: ") && line.contains("have waited"),
        "{line}"
    );
    let samples = metrics(&ops).await;
    assert_eq!(samples["ferry_degraded"][0].1, 1.0);
    assert_eq!(samples["ferry_serving"][0].1, 1.0);
    let plain = ferry(&["check", "--address", &address]).output().unwrap();
    assert_eq!(plain.status.code(), Some(0), "without --http: serving");

    // The broker back and the spool drained: serving again.
    broker.restart();
    let body = await_health(&ops, "serving", Duration::from_secs(60)).await;
    assert_eq!(body, "serving\n");
    assert_eq!(check_health(&address, &ops).0, Some(0));
    assert_eq!(metrics(&ops).await["ferry_degraded"][0].1, 0.0);
    let delivered = ferry_testkit::amqp::read_queue(&url, &queue, 1, Duration::from_secs(10)).await;
    assert_eq!(delivered.len(), 1);
    drop(daemon);
    broker.stop();
}

/// A directory named after `name` with a config whose `ops.pid_file` is in it: the
/// directory, the pid file and the config's path.
fn pid_file_config(name: &str) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("ferry.pid");
    let config = dir.join("ferry.toml");
    std::fs::write(
        &config,
        format!("[ops]\npid_file = {:?}\n", pid_file.to_str().unwrap()),
    )
    .unwrap();
    (dir, pid_file, config.to_str().unwrap().to_owned())
}

#[test]
fn the_pid_file_is_written_guarded_and_removed() {
    let (dir, pid_file, config) = pid_file_config("ferry-pid");
    let config = config.as_str();
    let daemon = serve_with(&free_address(), &["--config", config]);
    let written: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, daemon.pid());
    // A second daemon with the same pid file refuses to start.
    let second = ferry(&["serve", "--listen", &free_address(), "--config", config])
        .args(["--ops-listen", &free_address()])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("is held by a running ferry"), "{said}");
    assert_eq!(daemon.terminate().0, Some(0));
    assert!(!pid_file.exists(), "removed at exit");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Waits (at most 5 s) until process `pid` is a zombie or gone, and none of its threads
/// holds `pid_file`'s lock any more (a process's threads exit after its main thread).
fn wait_dead(pid: u32, pid_file: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state is the field after the command name's closing parenthesis.
        let state = state
            .rsplit(") ")
            .next()
            .and_then(|rest| rest.chars().next());
        let dead = matches!(state, None | Some('Z' | 'X'));
        if dead && std::fs::File::open(pid_file).is_ok_and(|file| file.try_lock().is_ok()) {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_stale_pid_file_never_blocks_a_start_and_is_never_signalled() {
    let (dir, pid_file, config) = pid_file_config("ferry-pid-stale");
    let config = config.as_str();
    let pid_in_file = || -> u32 {
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };

    // Left by a crash, naming a live process that is no ferry (a PID reused after a reboot).
    let mut bystander = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::write(&pid_file, format!("{}\n", bystander.id())).unwrap();
    let first = serve_with(&free_address(), &["--config", config]);
    assert_eq!(pid_in_file(), first.pid());

    // SIGKILLed and not reaped (a zombie whose /proc entry remains): a restart at once.
    first.signal("KILL");
    wait_dead(first.pid(), &pid_file);
    assert!(std::path::Path::new(&format!("/proc/{}", first.pid())).exists());
    let second = serve_with(&free_address(), &["--config", config]);
    assert_eq!(pid_in_file(), second.pid());
    drop(first);

    // `ferry reload` signals only a daemon that holds its pid file.
    let ops = free_address();
    second.signal("KILL");
    wait_dead(second.pid(), &pid_file);
    std::fs::write(&pid_file, format!("{}\n", bystander.id())).unwrap();
    let pid_file_arg = pid_file.to_str().unwrap();
    let reload = ferry(&["reload", "--pid-file", pid_file_arg, "--http", &ops])
        .output()
        .unwrap();
    assert_eq!(reload.status.code(), Some(1), "{reload:?}");
    let said = String::from_utf8_lossy(&reload.stderr);
    assert!(said.contains("no running ferry holds"), "{said}");
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was signalled"
    );
    bystander.kill().unwrap();
    let _ = bystander.wait();
    drop(second);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn reflection_lists_the_services_for_grpcurl() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let daemon = start(settings());
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", daemon.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("a service list: {answer:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["messagebroker.MessageBroker", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    daemon.stop().unwrap();
}

/// The fields every JSON log line carries (null where they do not apply).
const JSON_LOG_FIELDS: [&str; 8] = [
    "ts", "level", "module", "msg", "target", "id", "route", "error_no",
];

/// Polls `log` until a line contains `text`, for at most 10 s.
async fn await_logged(log: &std::path::Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(Instant::now() < deadline, "never logged: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_stable_fields_and_no_password() {
    let dir = common::process::scratch_dir("json-logs");
    let password = "pw-json-logs-7Q";
    std::fs::write(dir.join("password"), format!("{password}\n")).unwrap();
    // A route to a RabbitMQ that is not there: its messages are spooled, replay fails.
    let route = |name: &str| {
        format!(
            "[routes.{name}]\nkind = \"rabbitmq\"\nserver = \"amqp://ferry@127.0.0.1:{}/%2f\"\n\
             password_file = {:?}\nexchange = \"x\"\nrouting_key = \"k\"\n\n",
            common::dead_port(),
            dir.join("password")
        )
    };
    let base = format!(
        "[ops]\nlog_format = \"json\"\n\n[spool]\ndir = {:?}\n\n",
        dir.join("spool")
    );
    let config = dir.join("ferry.toml");
    std::fs::write(&config, base.clone() + &route("events")).unwrap();
    let log = dir.join("daemon.log");
    let config_flag = config.to_string_lossy().into_owned();
    let daemon = common::process::serve_logged(&free_address(), &["--config", &config_flag], &log);
    let send = |route: &str| {
        ferry(&[
            "send",
            "--route",
            route,
            "--data",
            "x",
            "--proxy",
            &daemon.address,
        ])
        .output()
        .unwrap()
    };
    assert!(send("events").status.success(), "spooled");
    assert!(!send("nosuch").status.success(), "refused: no such route");
    // A reload applied, then one refused.
    std::fs::write(&config, base.clone() + &route("events") + &route("more")).unwrap();
    daemon.signal("HUP");
    await_logged(&log, "Config reloaded").await;
    std::fs::write(&config, base + "[routes.broken]\nkind = \"nothing\"\n").unwrap();
    daemon.signal("HUP");
    await_logged(&log, "Config reload refused").await;
    assert_eq!(daemon.terminate().0, Some(0));

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(password), "a password in the log:\n{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    for line in &lines {
        for field in JSON_LOG_FIELDS {
            assert!(line.get(field).is_some(), "no {field} in {line}");
        }
    }
    let find = |msg: &str| {
        lines
            .iter()
            .find(|line| line["msg"].as_str().unwrap().starts_with(msg))
            .unwrap_or_else(|| panic!("no {msg:?} line in\n{text}"))
    };
    let spooled = find("Message spooled");
    assert_eq!(spooled["route"], "events");
    assert!(spooled["id"].is_string() && spooled["suppressed_before"].is_u64());
    assert!(
        spooled["target"].as_str().unwrap().contains("ferry:***@"),
        "{spooled}"
    );
    assert_eq!(find("Request refused")["error_no"], 1);
    assert!(find("Config reload refused")["error"].is_string());
    assert_eq!(find("Config reloaded")["level"], "INFO");
}

#[test]
fn log_format_on_the_command_line_wins_over_the_config() {
    let dir = common::process::scratch_dir("json-flag");
    let config = dir.join("ferry.toml");
    std::fs::write(&config, "[ops]\nlog_format = \"text\"\n").unwrap();
    let log = dir.join("daemon.log");
    let config = config.to_string_lossy().into_owned();
    let flags = ["--config", config.as_str(), "--log-format", "json"];
    let daemon = common::process::serve_logged(&free_address(), &flags, &log);
    assert_eq!(daemon.terminate().0, Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    // Lines from after the config was read, which says "text": JSON still.
    assert!(
        lines
            .iter()
            .any(|l| l["msg"].as_str().unwrap().starts_with("Serving gRPC")),
        "{text}"
    );
    assert!(lines.iter().any(|l| l["msg"] == "Stopped"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_top_once_prints_every_target_with_its_rate_under_load() {
    let daemon = start(settings());
    let ops = daemon.ops_addr().to_string();
    let brokers = shared_kafka();
    let topic = unique("top");
    ferry_testkit::kafka::create_topic(&brokers, &topic).await;
    let url = shared_amqp_url();
    let exchange = unique("ferry.top");
    let nowhere = format!("127.0.0.1:{}", common::dead_port());
    let sending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = tokio::spawn({
        let mut grpc = client(&daemon).await;
        let sending = std::sync::Arc::clone(&sending);
        let (brokers, topic, url, exchange) = (
            brokers.clone(),
            topic.clone(),
            url.clone(),
            exchange.clone(),
        );
        async move {
            let mut rounds = 0u32;
            while sending.load(std::sync::atomic::Ordering::Relaxed) {
                let to_kafka = send_kafka(&mut grpc, kafka(&brokers, &topic, "t")).await.0;
                assert_eq!(to_kafka.error_no, 0, "{to_kafka:?}");
                let to_mq = send_rabbitmq(&mut grpc, rabbitmq(&url, &exchange, "k", "t"))
                    .await
                    .0;
                assert_eq!(to_mq.error_no, 0, "{to_mq:?}");
                rounds += 1;
            }
            rounds
        }
    });
    // A target that fails: its producer is failing, so it sorts first.
    let mut grpc = client(&daemon).await;
    let failed = send_kafka(&mut grpc, kafka(&nowhere, "t", "x")).await.0;
    assert_ne!(failed.error_no, 0);
    // Both live targets delivering before the first of top's two readings.
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::report(&ops)
        .await
        .producers
        .iter()
        .filter(|p| p.sent > 0)
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the load never reached both brokers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = tokio::task::spawn_blocking(move || {
        ferry(&["top", "--once", "--http", &ops, "--interval-ms", "1000"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    sending.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(load.await.unwrap() > 0);
    let text = String::from_utf8_lossy(&output.stdout);
    println!("{text}");
    assert!(output.status.success(), "{output:?}");
    assert!(text.contains(": serving;"), "{text}");
    let header = text.lines().find(|l| l.starts_with("DAEMON")).expect(&text);
    assert!(
        header.contains("MSG/S") && header.contains("P99_MS"),
        "{header}"
    );
    // The row whose TARGET column is, or ends with, `needle` (whole words only).
    let row = |needle: &str| {
        text.lines()
            .skip_while(|l| !l.starts_with("DAEMON"))
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells[2] == needle || cells.get(4) == Some(&needle))
            .unwrap_or_else(|| panic!("no row for {needle}:\n{text}"))
    };
    // The sick target sorts first; the two live ones have a rate above zero.
    let first = text
        .lines()
        .skip_while(|l| !l.starts_with("DAEMON"))
        .nth(1)
        .unwrap();
    assert_eq!(
        first.split_whitespace().nth(2),
        Some(nowhere.as_str()),
        "trouble first:\n{text}"
    );
    for needle in [brokers.as_str(), exchange.as_str()] {
        let cells = row(needle);
        let rate: f64 = cells[cells.len() - 7].parse().expect(&text);
        assert!(rate > 0.0, "{needle}: {cells:?}");
    }
    assert!(!text.contains(":guest@"), "{text}");
}
