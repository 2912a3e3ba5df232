//! What a new user meets in the first hour, through the real binaries: a payload too large
//! or empty is refused before anything is sent (and a large one is never read whole), a
//! message too large for a daemon is not tried on the next one, and `ferry send` can print
//! the message's id and, for Kafka, where the broker put it.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::process::{ferry, free_address, scratch_dir, serve, serve_config_only};
use ferry_testkit::{amqp, kafka, shared_amqp_url, shared_kafka};

/// The peak memory, in KiB, GNU time reported for a command it ran (`-f %M` on the last
/// line of stderr).
fn peak_kib(output: &Output) -> u64 {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    last.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no peak memory in {stderr}"))
}

/// `ferry args` under GNU time, `stdin` on its standard input, with its output.
fn timed_ferry(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = std::process::Command::new("/usr/bin/time");
    command
        .args(["-f", "%M", env!("CARGO_BIN_EXE_ferry")])
        .args(args)
        .env_remove("FERRY_PROXY")
        .env_remove("FERRY_MAX_MESSAGE_BYTES")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("/usr/bin/time runs (Debian's time)");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        // The client stops reading past its limit: a broken pipe here is the point.
        let _ = pipe.write_all(bytes);
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_payload_over_the_limit_is_refused_before_it_is_read_or_sent() {
    // Two "daemons" that must not be contacted: the client refuses first.
    let first = TcpListener::bind("127.0.0.1:0").unwrap();
    let second = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = format!(
        "{},{}",
        first.local_addr().unwrap(),
        second.local_addr().unwrap()
    );
    let dir = scratch_dir("first-hour-size");
    let send = [
        "send",
        "kafka",
        "--brokers",
        "k:9092",
        "--topic",
        "t",
        "--proxy",
        &proxy,
    ];
    for (name, size) in [
        ("five.bin", 5_000_000u64),
        ("three-hundred.bin", 300_000_000),
    ] {
        let path = dir.join(name);
        // Sparse: the size is real, the disk is not used.
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        let path = path.to_str().unwrap();
        let output = timed_ferry(&[&send[..], &["--file", path]].concat(), None);
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains(&format!(
                "{path} holds {size} bytes, more than the 4194304 bytes"
            )),
            "{said}"
        );
        let peak = peak_kib(&output);
        println!("{name}: refused, client peak RSS {peak} KiB");
        assert!(peak < 64 * 1024, "the client's peak RSS was {peak} KiB");
    }
    // Standard input is read one byte past the limit, no further.
    let big = vec![b'x'; 300_000_000];
    let output = timed_ferry(&send, Some(&big));
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("standard input holds more than the 4194304 bytes"),
        "{said}"
    );
    let peak = peak_kib(&output);
    println!("300 MB on standard input: refused, client peak RSS {peak} KiB");
    assert!(peak < 64 * 1024, "the client's peak RSS was {peak} KiB");
    // --lines: a line over the limit refuses the whole send; no input is no lines, exit 0.
    let lines = [&send[..], &["--lines", "--max-bytes", "10"]].concat();
    let output = timed_ferry(&lines, Some(b"short\nthis line is longer than ten\n"));
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("line 2 holds 28 bytes") && said.contains("nothing was sent"),
        "{said}"
    );
    let nothing = timed_ferry(&[&send[..], &["--lines"]].concat(), Some(b""));
    assert_eq!(nothing.status.code(), Some(0), "{nothing:?}");
    // Nothing reached either listener: the client refused before connecting.
    for listener in [&first, &second] {
        listener.set_nonblocking(true).unwrap();
        let accepted = listener.accept().map(drop);
        let error = accepted.expect_err("no connection");
        assert_eq!(error.kind(), std::io::ErrorKind::WouldBlock);
    }
    // --max-bytes raises the limit for daemons configured to take more: this one is sent
    // (to listeners that never answer).
    let path = dir.join("five.bin");
    let raised = ferry(&send)
        .args(["--file", path.to_str().unwrap(), "--max-bytes", "8000000"])
        .args(["--attempt-timeout-ms", "200", "--timeout-ms", "500"])
        .output()
        .unwrap();
    assert_eq!(
        raised.status.code(),
        Some(1),
        "tried the daemons: {raised:?}"
    );
    let said = String::from_utf8_lossy(&raised.stderr);
    assert!(said.contains("not delivered"), "{said}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_empty_payload_is_refused_unless_allowed() {
    let listen = free_address();
    let daemon = serve(&listen);
    let url = shared_amqp_url();
    let exchange = kafka::unique_topic("ferry.test.first-hour");
    let queue = kafka::unique_topic("first-hour-empty");
    amqp::bind_queue(&url, &exchange, &queue, "#").await;
    let send = |extra: &[&str]| {
        let mut command = ferry(&[
            "send",
            "rabbitmq",
            "--server",
            &url,
            "--exchange",
            &exchange,
        ]);
        command
            .args(["--routing-key", "empty", "--proxy", &listen])
            .args(extra)
            .stdin(Stdio::null());
        command.output().unwrap()
    };
    let refused = send(&[]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("empty payload") && said.contains("--allow-empty"),
        "{said}"
    );
    let refused = send(&["--data", ""]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");

    let allowed = send(&["--allow-empty"]);
    assert!(allowed.status.success(), "{allowed:?}");
    let received = amqp::read_queue(&url, &queue, 2, Duration::from_secs(3)).await;
    assert_eq!(received.len(), 1, "only the allowed one was sent");
    assert!(received[0].data.is_empty());
    daemon.terminate();
}

#[tokio::test]
async fn a_message_too_large_for_a_daemon_is_not_tried_on_the_next() {
    let first = free_address();
    let second = free_address();
    let daemon_a = serve(&first);
    let daemon_b = serve(&second);
    let brokers = shared_kafka();
    let topic = kafka::unique_topic("first-hour-large");
    kafka::create_topic(&brokers, &topic).await;
    let dir = scratch_dir("first-hour-large");
    let payload = dir.join("five.bin");
    std::fs::write(&payload, vec![b'x'; 5_000_000]).unwrap();
    // The client is told the daemons take 8 MB; they take 4 MiB (the default).
    let started = std::time::Instant::now();
    let output = ferry(&["send", "kafka", "--brokers", &brokers, "--topic", &topic])
        .args([
            "--proxy",
            &format!("{first},{second}"),
            "--max-bytes",
            "8000000",
        ])
        .args(["--file", payload.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    println!("ferry send of 5 MB refused in {:?}", started.elapsed());
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    // The daemon answers error 1 (before: tonic's OUT_OF_RANGE transport status).
    assert!(
        said.contains("error_no 1: invalid request: ") && said.contains("this daemon takes"),
        "{said}"
    );
    assert!(said.contains(&first) && !said.contains(&second), "{said}");
    // So does the predecessor's API, to its own clients: an answer, not a status.
    let mut grpc = common::client_at(&first).await;
    let (answer, took) = common::send_kafka(
        &mut grpc,
        common::kafka(&brokers, &topic, vec![b'x'; 5_000_000]),
    )
    .await;
    println!("a 5 MB request answered error 1 in {took:?}");
    assert_eq!(answer.error_no, 1, "{answer:?}");
    assert!(answer.error_message.contains("5000"), "{answer:?}");
    // A message under the limit still goes through on the same connection.
    let (answer, _) = common::send_kafka(&mut grpc, common::kafka(&brokers, &topic, "small")).await;
    assert_eq!(answer.error_no, 0, "{answer:?}");
    // Both refusals are counted with the other invalid requests.
    let report = common::report(&daemon_a.ops_address).await;
    assert_eq!(report.totals.invalid, 2, "{:?}", report.totals);
    daemon_a.terminate();
    daemon_b.terminate();
}

#[tokio::test]
async fn send_prints_the_id_and_where_kafka_put_the_message() {
    let listen = free_address();
    let daemon = serve(&listen);
    let brokers = shared_kafka();
    let topic = kafka::unique_topic("first-hour-id");
    kafka::create_topic(&brokers, &topic).await;
    let send = |data: &str, flag: &str| {
        let output = ferry(&["send", "kafka", "--brokers", &brokers, "--topic", &topic])
            .args(["--partition", "0", "--proxy", &listen, "--data", data, flag])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let printed = send("first", "--print-id");
    let fields: Vec<&str> = printed.trim().split(' ').collect();
    assert_eq!(fields.len(), 3, "{printed}");
    let id = fields[0].strip_prefix("id=").unwrap().to_owned();
    assert_eq!(fields[1], "partition=0", "{printed}");
    let offset: i64 = fields[2].strip_prefix("offset=").unwrap().parse().unwrap();

    let printed = send("second", "--json");
    let json: serde_json::Value = serde_json::from_str(printed.trim()).unwrap();
    assert_eq!(json["outcome"], "delivered", "{json}");
    assert_eq!(json["daemon"], listen.as_str());
    assert_eq!(json["partition"], 0);
    assert_eq!(json["offset"], offset + 1);

    let records = kafka::read_records(&brokers, &topic, 0, 2, Duration::from_secs(10));
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].offset, offset);
    assert_eq!(records[0].ferry_id().as_deref(), Some(id.as_str()));
    assert_eq!(
        records[1].ferry_id().as_deref(),
        json["id"].as_str(),
        "{json}"
    );
    // Without a flag, success prints nothing: a job script's output stays its own.
    assert_eq!(send("third", "--attempts=2"), "");
    daemon.terminate();
}

#[tokio::test]
async fn the_wrapper_reports_through_a_route_with_no_password_on_the_node() {
    let url = shared_amqp_url();
    let exchange = kafka::unique_topic("ferry.test.first-hour-route");
    let queue = kafka::unique_topic("first-hour-route");
    amqp::bind_queue(&url, &exchange, &queue, "ecflow.command.ecflow_client").await;
    // The daemon's route holds the server, the exchange and the password (in a file).
    let dir = scratch_dir("first-hour-route");
    let password = dir.join("mq.password");
    std::fs::write(&password, "guest\n").unwrap();
    let server = url.replacen("guest:guest@", "guest@", 1);
    assert_ne!(server, url, "the test broker's URL carries guest:guest");
    let config = dir.join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[routes.workflow]\nkind = \"rabbitmq\"\nserver = \"{server}\"\n\
             password_file = \"{}\"\nexchange = \"{exchange}\"\n\
             routing_key = \"ecflow.command.ecflow_client\"\n",
            password.display()
        ),
    )
    .unwrap();
    let listen = free_address();
    let daemon = common::process::serve_with(&listen, &["--config", config.to_str().unwrap()]);

    let wrapper =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ecflow/bin/ecflow_client");
    let run = |route: &str| {
        std::process::Command::new(&wrapper)
            .arg("--complete")
            .env("ECFLOW_CLIENT_REAL", "/bin/true")
            .env("FERRY", common::process::FERRY)
            .env("FERRY_PROXY", &listen)
            .env("FERRY_ROUTE_WORKFLOW", route)
            // What a node without the route would use: no such server.
            .env(
                "FERRY_RABBITMQ_SERVER",
                "amqp://nobody:wrong@127.0.0.1:1/%2f",
            )
            .env("FERRY_TIMEOUT_MS", "3000")
            .envs([("ECF_HOST", "login_b01"), ("ECF_PORT", "31067")])
            .envs([
                ("ECF_NAME", "/suite/task"),
                ("ECF_RID", "7"),
                ("ECF_TRYNO", "1"),
            ])
            .env("ECF_DATE", "20261205")
            .output()
            .unwrap()
    };
    let routed = run("workflow");
    assert!(routed.status.success(), "{routed:?}");
    assert!(routed.stderr.is_empty(), "{routed:?}");
    let received = amqp::read_queue(&url, &queue, 1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1);
    let envelope: serde_json::Value = serde_json::from_slice(&received[0].data).unwrap();
    assert_eq!(envelope["data"]["command"], "complete");
    assert_eq!(envelope["data"]["ecf_name"], "/suite/task");
    // Without the route the wrapper uses the URL, which goes nowhere: the job is told so
    // and goes on (the real command's status).
    let unrouted = run("");
    assert!(unrouted.status.success(), "{unrouted:?}");
    let said = String::from_utf8_lossy(&unrouted.stderr);
    assert!(said.contains("ferry did not report '--complete'"), "{said}");
    daemon.terminate();
    let _ = std::fs::remove_dir_all(dir);
}

/// What `ferry send` says on stderr when it exits 1, sending `data` through `daemon` with
/// one attempt.
fn refusal(daemon: &str, target: &[&str]) -> String {
    let output = ferry(&["send"])
        .args(target)
        .args(["--data", "x", "--attempts", "1", "--proxy", daemon])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn broker_failures_say_what_happened_and_what_to_do() {
    let listen = free_address();
    let daemon = serve(&listen);
    let amqp_url = shared_amqp_url();
    let amqp_port = amqp_url
        .rsplit_once(':')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap();
    let (kafka, refused) = (shared_kafka(), free_address());
    let kafka_to = |brokers: &str, topic: &str| {
        refusal(&listen, &["kafka", "--brokers", brokers, "--topic", topic])
    };
    // Nothing listens: librdkafka's "PurgeQueue (Local: Purged in queue)" before.
    let said = kafka_to(&refused, "t");
    assert!(
        said.contains(&format!(
            "error_no 4: broker unavailable: cannot connect to {refused}: connection refused"
        )),
        "{said}"
    );
    // RabbitMQ's port given as Kafka's: "AllBrokersDown … 1/1 brokers are down" before.
    let amqp_address = format!("127.0.0.1:{amqp_port}");
    let said = kafka_to(&amqp_address, "t");
    assert!(
        said.contains(&format!("{amqp_address} does not speak Kafka")),
        "{said}"
    );
    let said = kafka_to("nosuchhost.invalid:9092", "t");
    assert!(
        said.contains("cannot resolve nosuchhost.invalid:9092"),
        "{said}"
    );
    let topic = kafka::unique_topic("first-hour-no-such-topic");
    let said = kafka_to(&kafka, &topic);
    assert!(said.contains(&format!("error_no 3: broker rejected the message: topic {topic} does not exist on {kafka}: create it")), "{said}");

    let rabbitmq_to = |server: &str| {
        refusal(
            &listen,
            &[
                "rabbitmq",
                "--server",
                server,
                "--exchange",
                "ferry.test.first-hour",
            ],
        )
    };
    let wrong_password = amqp_url.replacen("guest:guest@", "guest:wrong@", 1);
    let said = rabbitmq_to(&wrong_password);
    assert!(said.contains(&format!("error_no 3: broker rejected the message: RabbitMQ at 127.0.0.1:{amqp_port} refused the login of user \"guest\": check its password")), "{said}");
    let no_vhost = format!("{}/nosuchvhost", amqp_url.rsplit_once('/').unwrap().0);
    let said = rabbitmq_to(&no_vhost);
    assert!(said.contains("error_no 4: broker unavailable: NOT_ALLOWED - vhost nosuchvhost not found: create the vhost"), "{said}");
    daemon.terminate();
}

#[test]
fn a_target_never_reached_is_spooled_with_a_warning_and_logged_rarely() {
    let dir = scratch_dir("first-hour-unreached");
    let config = dir.join("ferry.toml");
    let spool = dir.join("spool");
    std::fs::write(&config, format!("[spool]\ndir = \"{}\"\n", spool.display())).unwrap();
    let (listen, log) = (free_address(), dir.join("daemon.log"));
    let daemon =
        common::process::serve_logged(&listen, &["--config", config.to_str().unwrap()], &log);
    // The wrapper's default server, never edited: a host that does not resolve.
    let output = ferry(&[
        "send",
        "rabbitmq",
        "--server",
        "amqp://user:pass@mq1.invalid/%2f",
    ])
    .args([
        "--exchange",
        "nwpc.operation.workflow",
        "--data",
        "x",
        "--proxy",
        &listen,
    ])
    .output()
    .unwrap();
    assert!(output.status.success(), "spooled: {output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("cannot resolve mq1.invalid:5672"), "{said}");
    assert!(
        said.contains("no message has reached this target since the daemon started using it: check its address"),
        "{said}"
    );
    // Replay keeps failing; each failure is a warning once, not once a second.
    std::thread::sleep(Duration::from_secs(12));
    daemon.terminate();
    let logged = std::fs::read_to_string(&log).unwrap();
    let warnings: Vec<&str> = logged.lines().filter(|l| l.contains(" WARN ")).collect();
    assert!(
        (1..=4).contains(&warnings.len()),
        "{} warnings in 12 s:\n{}",
        warnings.len(),
        warnings.join("\n")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn reload_without_a_pid_file_asks_the_ops_endpoint_and_reports_the_outcome() {
    let dir = scratch_dir("first-hour-reload-http");
    let config = dir.join("ferry.toml");
    let (listen, ops) = (free_address(), free_address());
    let route = |field: &str| {
        format!(
            "[server]\nlisten = \"{listen}\"\n[ops]\nlisten = \"{ops}\"\n\
             [routes.events]\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:9092\"]\n{field} = \"t\"\n"
        )
    };
    std::fs::write(&config, route("topic")).unwrap();
    let daemon = serve_config_only(&config, &listen, &ops, &dir.join("daemon.log"));
    let reload = || {
        ferry(&["reload", "--config", config.to_str().unwrap()])
            .output()
            .unwrap()
    };
    // No ops.pid_file: before, "no pid file: give --pid-file …" and exit 2.
    let applied = reload();
    assert_eq!(applied.status.code(), Some(0), "{applied:?}");
    let said = String::from_utf8_lossy(&applied.stdout);
    assert!(
        said.starts_with("reloaded: config ") && said.contains("with 1 routes"),
        "{said}"
    );
    // Every user of a login node reaches a loopback port, but only root and the daemon's
    // own user may reload it (before: any local user could).
    // (Switching to nobody needs root, as the suite's chroot and network namespaces do.)
    if let Some(other) = post_as_nobody(&ops, "/reload") {
        assert!(
            other.starts_with("HTTP/1.1 403") && other.contains("not by uid 65534"),
            "{other}"
        );
    }
    // An AMQP property on a Kafka route says which flags do not apply (before: "invalid
    // amqp_metadata: AMQP metadata for a Kafka target").
    let ttl = ferry(&["send", "--route", "events", "--ttl", "30s", "--data", "x"])
        .args(["--proxy", &listen])
        .output()
        .unwrap();
    assert_eq!(ttl.status.code(), Some(1), "{ttl:?}");
    let said = String::from_utf8_lossy(&ttl.stderr);
    assert!(
        said.contains("AMQP properties (--ttl, --content-type, --priority, …) for a Kafka target"),
        "{said}"
    );
    std::fs::write(&config, route("topc")).unwrap();
    let refused = reload();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("reload refused, the old config keeps serving: invalid config file")
            && said.contains("line 8, column 1: unknown field `topc`"),
        "{said}"
    );
    daemon.terminate();
    // A daemon on its built-in defaults has nothing to read again: it says so, exit 1.
    let defaults = serve(&free_address());
    let nothing = ferry(&["reload", "--http", &defaults.ops_address])
        .output()
        .unwrap();
    assert_eq!(nothing.status.code(), Some(1), "{nothing:?}");
    let said = String::from_utf8_lossy(&nothing.stderr);
    assert!(
        said.contains("answered 409: nothing to reload: the daemon started without --config"),
        "{said}"
    );
    defaults.terminate();
    let _ = std::fs::remove_dir_all(dir);
}

/// POSTs an empty body to `path` at `address` as the user nobody (uid 65534), through
/// bash's /dev/tcp: the whole answer (`None` when this test does not run as root).
fn post_as_nobody(address: &str, path: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        eprintln!("not root: the request as another user is skipped");
        return None;
    }
    let (host, port) = address.rsplit_once(':').unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\\r\\nHost: {address}\\r\\nContent-Length: 0\\r\\n\
         Connection: close\\r\\n\\r\\n"
    );
    let script = format!("exec 3<>/dev/tcp/{host}/{port} && printf '{request}' >&3 && cat <&3");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["bash", "-c", &script])
        .current_dir("/")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A daemon config with one RabbitMQ route per event kind, the password in a file: the
/// scratch directory holding it as `ferry.toml` (remove it after).
fn event_routes_config(url: &str, exchanges: &[(&str, &str, &str)]) -> std::path::PathBuf {
    let dir = scratch_dir("first-hour-routes");
    let password = dir.join("mq.password");
    std::fs::write(&password, "guest\n").unwrap();
    let server = url.replacen("guest:guest@", "guest@", 1);
    let mut text = String::new();
    for (name, exchange, allow) in exchanges {
        text.push_str(&format!(
            "[routes.{name}]\nkind = \"rabbitmq\"\nserver = \"{server}\"\n\
             password_file = \"{}\"\nexchange = \"{exchange}\"\n\
             routing_key = \"unset\"\nallow_routing_key = [\"{allow}\"]\n\n",
            password.display()
        ));
    }
    std::fs::write(dir.join("ferry.toml"), text).unwrap();
    dir
}

#[tokio::test]
async fn event_commands_take_their_route_from_the_environment() {
    let url = shared_amqp_url();
    let production = kafka::unique_topic("ferry.test.env-production");
    let log = kafka::unique_topic("ferry.test.env-log");
    let dir = event_routes_config(
        &url,
        &[
            ("production", &production, "*.production.*"),
            ("log", &log, "*.log.*"),
        ],
    );
    let (production_queue, log_queue) = (format!("{production}.q"), format!("{log}.q"));
    amqp::bind_queue(&url, &production, &production_queue, "#").await;
    amqp::bind_queue(&url, &log, &log_queue, "#").await;
    let listen = free_address();
    let config = dir.join("ferry.toml");
    let daemon = common::process::serve_with(&listen, &["--config", config.to_str().unwrap()]);
    let product = [
        "production",
        "--system=gfs",
        "--production-type=grib2",
        "--production-stream=oper",
        "--production-name=orig",
        "--event=storage",
        "--start-time=2026120500",
        "--forecast-time=24h",
    ];
    let sent = ferry(&product)
        .env("FERRY_PROXY", &listen)
        .env("FERRY_ROUTE_PRODUCTION", "production")
        .output()
        .unwrap();
    assert!(sent.status.success(), "{sent:?}");
    let log_event = [
        "log",
        "--system=gfs",
        "--start-time=2026120500",
        "--level=info",
    ];
    let sent = ferry(&[&log_event[..], &["--log-type=prepare"]].concat())
        .env("FERRY_PROXY", &listen)
        .env("FERRY_ROUTE_LOG", "log")
        .output()
        .unwrap();
    assert!(sent.status.success(), "{sent:?}");
    let wait = Duration::from_secs(10);
    let received = amqp::read_queue(&url, &production_queue, 1, wait).await;
    assert_eq!(received[0].routing_key, "gfs.production.grib2");
    let received = amqp::read_queue(&url, &log_queue, 1, wait).await;
    assert_eq!(received[0].routing_key, "gfs.log.prepare");

    // Without a route or a server, the user is told every way to give one.
    let refused = ferry(&product)
        .env("FERRY_PROXY", &listen)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("--rabbitmq-server=URL, --route=NAME or FERRY_ROUTE_PRODUCTION=NAME"),
        "{said}"
    );
    // --disable-send needs no server: it only prints.
    let printed = ferry(&[&product[..], &["--disable-send"]].concat())
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let envelope: serde_json::Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(envelope["data"]["system"], "gfs");
    daemon.terminate();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn operator_commands_find_the_daemon_from_its_config() {
    let dir = scratch_dir("first-hour-config");
    let (listen, ops) = (free_address(), free_address());
    let config = dir.join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{listen}\"\n\n[ops]\nlisten = \"{ops}\"\n\n\
             [spool]\ndir = {:?}\n",
            dir.join("spool")
        ),
    )
    .unwrap();
    let daemon = serve_config_only(&config, &listen, &ops, &dir.join("ferry.log"));
    let path = config.to_str().unwrap();

    // check reads server.listen, and with the config checks the health too (ops.listen).
    let check = ferry(&["check", "--config", path]).output().unwrap();
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        said.starts_with(&format!("ferry at {listen}: serving")),
        "{said}"
    );
    // FERRY_CONFIG, as `ferry serve` reads it, works for every operator command.
    // `ferry spool` and its subcommands find the spool as its spool.dir (before: "give
    // --dir DIR", and a subcommand without --dir was a usage error).
    let commands = [&["stats"][..], &["routes"], &["top", "--once"]];
    for command in commands
        .into_iter()
        .chain([&["spool"][..], &["spool", "export"]])
    {
        let output = ferry(command).env("FERRY_CONFIG", path).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{command:?}: {output:?}");
    }
    // A command that changes the spool takes it from --dir or --config only, never from a
    // variable left in the shell.
    let purge = ferry(&["spool", "purge", "--all"])
        .env("FERRY_CONFIG", path)
        .output()
        .unwrap();
    assert_eq!(purge.status.code(), Some(2), "{purge:?}");
    let stats = ferry(&["stats", "--config", path]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&stats.stdout).contains("KIND"),
        "{stats:?}"
    );
    // An explicit flag wins over the file.
    let elsewhere = free_address();
    let flagged = ferry(&["stats", "--config", path, "--http", &elsewhere])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&flagged.stderr);
    assert!(
        said.contains(&format!("cannot connect to {elsewhere}")),
        "{said}"
    );
    // A file that is not TOML is named.
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "[server\n").unwrap();
    let refused = ferry(&["check", "--config", broken.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not TOML"));
    // Flags that name the daemon need no file: a broken FERRY_CONFIG is not read.
    let flagged = ferry(&["stats", "--http", &ops])
        .env("FERRY_CONFIG", &broken)
        .output()
        .unwrap();
    assert_eq!(flagged.status.code(), Some(0), "{flagged:?}");
    let spool = dir.join("spool");
    let listed = ferry(&["spool", "--dir", spool.to_str().unwrap()])
        .env("FERRY_CONFIG", &broken)
        .output()
        .unwrap();
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    let said = String::from_utf8_lossy(&listed.stderr);
    assert!(
        said.contains("broken.toml: line 1") && said.contains("going on without it"),
        "{said}"
    );
    daemon.terminate();
    let _ = std::fs::remove_dir_all(dir);
}
