//! ferry where it runs: a real ecFlow server (Debian's ecflow-server 5.9) runs real job
//! scripts that call the repository's `ecflow_client` wrapper, and the repository's own
//! watchdog suite (`config/ecflow/ferry.def`) checks and restarts a real daemon.
//!
//! ecflow_server binds every interface, so each test re-runs itself inside a private
//! network namespace (`common::ecflow::in_private_network`) where the server, its jobs,
//! the daemon and the broker share a loopback nothing else can reach.

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::ecflow::{ECFLOW_CLIENT, EcflowServer, config_dir, in_private_network};
use common::process::{FERRY, free_address, scratch_dir, serve, serve_config_only};
use ferry_testkit::amqp;
use ferry_testkit::brokers::{BrokerKind, PrivateBroker};
use serde_json::{Value, json};

/// The tasks of the job-events suite, in the order they run (model is triggered by
/// prepare's completion).
const TASKS: [&str; 2] = ["/ferry_jobs/forecast/prepare", "/ferry_jobs/forecast/model"];

/// Writes the job-events suite: two tasks whose scripts use the repository's head.h and
/// tail.h (`ecflow_client --init` and `--complete`) and set an event in between. Returns
/// the definition file.
fn job_suite(dir: &Path) -> std::path::PathBuf {
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let script = "%include <head.h>\necho \"working on %ECF_NAME%\"\necflow_client --event=written\n%include <tail.h>\n";
    for task in ["prepare", "model"] {
        std::fs::write(files.join(format!("{task}.ecf")), script).unwrap();
    }
    let def = format!(
        "suite ferry_jobs\n  edit ECF_HOME '{home}'\n  edit ECF_FILES '{files}'\n  \
         edit ECF_INCLUDE '{include}'\n  family forecast\n    task prepare\n      \
         event written\n    task model\n      trigger prepare == complete\n      \
         event written\n  endfamily\nendsuite\n",
        home = dir.join("home").display(),
        files = files.display(),
        include = config_dir().join("include").display(),
    );
    let path = dir.join("jobs.def");
    std::fs::write(&path, def).unwrap();
    path
}

/// What the jobs' environment holds so that `ecflow_client` is the repository's wrapper,
/// reporting through the daemon at `proxy` to RabbitMQ at `amqp_url`.
fn wrapper_env(proxy: &str, amqp_url: &str) -> Vec<(&'static str, String)> {
    let path = format!(
        "{}:{}",
        config_dir().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    vec![
        ("PATH", path),
        ("ECFLOW_CLIENT_REAL", ECFLOW_CLIENT.to_owned()),
        ("FERRY", FERRY.to_owned()),
        ("FERRY_PROXY", proxy.to_owned()),
        ("FERRY_RABBITMQ_SERVER", amqp_url.to_owned()),
    ]
}

/// Loads and begins the job-events suite and waits until it completes; returns how long
/// it took.
fn run_job_suite(server: &EcflowServer, def: &Path) -> Duration {
    server.ok(&["--load", &def.to_string_lossy()]);
    server.ok(&["--begin=ferry_jobs"]);
    let took = server.wait_for("/ferry_jobs", "complete", Duration::from_secs(60));
    for task in TASKS {
        assert_eq!(server.state(task), "complete", "{task}");
    }
    took
}

#[test]
fn every_ecflow_client_call_of_a_job_reaches_rabbitmq_with_the_tasks_own_variables() {
    if !in_private_network(
        "every_ecflow_client_call_of_a_job_reaches_rabbitmq_with_the_tasks_own_variables",
    ) {
        return;
    }
    let _epmd = NamespaceEpmd;
    let rabbitmq = PrivateBroker::start(BrokerKind::RabbitMq);
    let url = rabbitmq.amqp_url();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The predecessor's exchange and routing key, which the wrapper leaves at their defaults.
    runtime.block_on(amqp::bind_queue(
        &url,
        "nwpc.operation.workflow",
        "jobs",
        "ecflow.command.ecflow_client",
    ));
    let daemon = serve(&free_address());
    let dir = scratch_dir("ecflow-jobs");
    let def = job_suite(&dir);
    let server = EcflowServer::start(&dir.join("home"), &wrapper_env(&daemon.address, &url));

    let took = run_job_suite(&server, &def);
    println!("job suite complete in {} ms", took.as_millis());

    let received = runtime.block_on(amqp::read_queue(&url, "jobs", 6, Duration::from_secs(10)));
    let mut sent = Vec::new();
    for message in &received {
        assert_eq!(message.routing_key, "ecflow.command.ecflow_client");
        let mut envelope: Value = serde_json::from_slice(&message.data).unwrap();
        let time = envelope.as_object_mut().unwrap().remove("time").unwrap();
        chrono::DateTime::parse_from_rfc3339(time.as_str().unwrap()).unwrap();
        sent.push(envelope);
    }
    let mut expected = Vec::new();
    for task in TASKS {
        let rid = server.variable(task, "ECF_RID");
        assert!(rid.parse::<u32>().is_ok(), "ECF_RID {rid:?}");
        let data = |command: &str, args: Value| {
            json!({"app": "nwpc-message-client", "type": "ecflow-client", "data": {
                "command": command, "args": args, "envs": null,
                "ecf_host": server.variable(task, "ECF_HOST"),
                "ecf_port": server.port.to_string(),
                "ecf_name": task, "ecf_rid": rid,
                "ecf_tryno": server.variable(task, "ECF_TRYNO"),
                "ecf_date": server.variable("/ferry_jobs", "ECF_DATE"),
            }})
        };
        expected.push(data("init", json!([rid])));
        expected.push(data("event", json!(["written"])));
        expected.push(data("complete", Value::Null));
    }
    assert_eq!(
        sent, expected,
        "one envelope per call, in the order of the calls"
    );
    for envelope in &sent {
        let data = &envelope["data"];
        assert_eq!(data["ecf_host"], "localhost");
        assert_eq!(data["ecf_tryno"], "1");
        assert_eq!(data["ecf_date"].as_str().unwrap().len(), 8, "YYYYMMDD");
    }
    let nothing_more = runtime.block_on(amqp::read_queue(
        &url,
        "jobs",
        1,
        Duration::from_millis(300),
    ));
    assert!(nothing_more.is_empty(), "exactly one envelope per call");

    drop(server);
    daemon.terminate();
}

/// Stops the namespace's Erlang port mapper when dropped (after the broker): RabbitMQ
/// starts it and leaves it running after the node stops, and nothing else would end it.
struct NamespaceEpmd;

impl Drop for NamespaceEpmd {
    fn drop(&mut self) {
        let _ = Command::new("epmd").arg("-kill").output();
    }
}

#[test]
fn with_the_daemon_stopped_the_jobs_complete_and_their_output_says_why_nothing_was_sent() {
    if !in_private_network(
        "with_the_daemon_stopped_the_jobs_complete_and_their_output_says_why_nothing_was_sent",
    ) {
        return;
    }
    // Nothing listens at the daemon's address: the daemon is down.
    let proxy = free_address();
    let dir = scratch_dir("ecflow-no-daemon");
    let def = job_suite(&dir);
    let env = wrapper_env(&proxy, "amqp://guest:guest@127.0.0.1:5672/%2f");
    let server = EcflowServer::start(&dir.join("home"), &env);

    let took = run_job_suite(&server, &def);
    println!(
        "job suite complete without a daemon in {} ms",
        took.as_millis()
    );
    for task in TASKS {
        let output = server.job_output(task, 1);
        for call in ["--init=", "--event=written", "--complete"] {
            let said = output.lines().any(|line| {
                line.starts_with("ecflow_client: ferry did not report")
                    && line.contains(call)
                    && line.ends_with("(the job goes on)")
            });
            assert!(
                said,
                "{task}: no word about {call} in its output:\n{output}"
            );
        }
        assert_eq!(
            output.matches("ferry: not delivered").count(),
            3,
            "{task}: one reason per call:\n{output}"
        );
        assert!(
            output.contains(&proxy),
            "{task}: the reason names the daemon:\n{output}"
        );
        assert!(output.contains("Connection refused"), "{output}");
    }
}

/// Kills the daemon named by a pid file when dropped: the watchdog task starts daemons
/// that outlive its job, and a failing test must not leave them running.
struct PidFileGuard<'a>(&'a Path);

impl PidFileGuard<'_> {
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.0).ok()?.trim().parse().ok()
    }

    fn kill(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for PidFileGuard<'_> {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether process `pid` runs (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

/// `ecflow_client --query KIND PATH:NAME`: an attribute's value.
fn query(server: &EcflowServer, kind: &str, path: &str, name: &str) -> String {
    server
        .ok(&["--query", kind, &format!("{path}:{name}")])
        .trim()
        .to_owned()
}

/// `ferry check` against `address`.
fn check(address: &str) -> bool {
    Command::new(FERRY)
        .args(["check", "--address", address, "--timeout-ms", "2000"])
        .status()
        .unwrap()
        .success()
}

#[test]
fn the_watchdog_suite_restarts_a_killed_daemon_and_aborts_when_it_cannot_start_one() {
    if !in_private_network(
        "the_watchdog_suite_restarts_a_killed_daemon_and_aborts_when_it_cannot_start_one",
    ) {
        return;
    }
    let dir = scratch_dir("ecflow-watchdog");
    let listen = free_address();
    let ops = free_address();
    let pid_file = dir.join("ferry.pid");
    let config = dir.join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{listen}\"\n\n[ops]\nlisten = \"{ops}\"\npid_file = \"{}\"\n\
             degraded_after_s = 1\n\n[spool]\ndir = \"{}\"\n",
            pid_file.display(),
            dir.join("spool").display()
        ),
    )
    .unwrap();
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "[server]\nlisten = \"nowhere\"\n").unwrap();
    let guard = PidFileGuard(&pid_file);

    let server = EcflowServer::start(&dir.join("home"), &[]);
    // The repository's suite as it is, adjusted only where a site adjusts it: paths, the
    // job command (local instead of ssh) and the cron (the test requeues the task instead).
    server.ok(&["--load", &config_dir().join("ferry.def").to_string_lossy()]);
    let suite = "/ferry_watch";
    let task = "/ferry_watch/login_a01/ferry_check";
    let paths = [
        ("ECF_HOME", dir.join("home").display().to_string()),
        ("ECF_FILES", config_dir().display().to_string()),
        (
            "ECF_INCLUDE",
            config_dir().join("include").display().to_string(),
        ),
        ("FERRY", FERRY.to_owned()),
        ("FERRY_CONFIG", config.display().to_string()),
        ("FERRY_PID", pid_file.display().to_string()),
        ("FERRY_LOG", dir.join("ferry.log").display().to_string()),
        ("FERRY_ADDRESS", listen.clone()),
        ("FERRY_OPS", ops.clone()),
    ];
    for (name, value) in &paths {
        server.ok(&["--alter", "change", "variable", name, value, suite]);
    }
    server.ok(&[
        "--alter",
        "change",
        "variable",
        "ECF_JOB_CMD",
        "%ECF_JOB% > %ECF_JOBOUT% 2>&1",
        "/ferry_watch/login_a01",
    ]);
    server.ok(&["--alter", "delete", "cron", task]);
    // The second login node's family stays as loaded, suspended: there is one node here.
    server.ok(&["--suspend", "/ferry_watch/login_a02"]);

    // 1. A serving daemon: the check task completes and leaves it alone.
    // As the task restarts it: the config's own addresses.
    let daemon = serve_config_only(&config, &listen, &ops, &dir.join("first.log"));
    let first_pid = daemon.pid();
    server.ok(&["--begin=ferry_watch"]);
    let took = server.wait_for(task, "complete", Duration::from_secs(30));
    println!(
        "check of a serving daemon: complete in {} ms",
        took.as_millis()
    );
    assert!(server.job_output(task, 1).contains("ferry serves on"));
    assert_eq!(
        guard.pid(),
        Some(first_pid),
        "the task left the daemon alone"
    );
    assert_eq!(query(&server, "label", task, "health"), "serving");
    assert_eq!(query(&server, "event", task, "degraded"), "clear");

    // 1b. Degraded: a message spooled for a broker that is not there, waiting past
    // ops.degraded_after_s. The label says why, the event is set, and the daemon, which
    // still serves, is left alone.
    let dead = format!("amqp://guest:guest@{}/%2f", free_address());
    let sent = Command::new(FERRY)
        .args(["send", "rabbitmq", "--proxy", &listen, "--server", &dead])
        .args(["--exchange", "x", "--routing-key", "k", "--data", "held"])
        .output()
        .unwrap();
    assert!(sent.status.success(), "spooled: {sent:?}");
    std::thread::sleep(Duration::from_millis(1500));
    server.ok(&["--force=queued", task]);
    server.wait_for(task, "complete", Duration::from_secs(30));
    let label = query(&server, "label", task, "health");
    assert!(
        label.starts_with("degraded: ") && label.contains("have waited"),
        "{label}"
    );
    assert!(
        !label.contains("guest:guest"),
        "no password in the label: {label}"
    );
    assert_eq!(query(&server, "event", task, "degraded"), "set");
    assert_eq!(
        guard.pid(),
        Some(first_pid),
        "a degraded daemon is not restarted"
    );

    // 2. The daemon SIGKILLed: the next run restarts it, and it serves.
    daemon.kill();
    assert!(!check(&listen));
    server.ok(&["--force=queued", task]);
    let took = server.wait_for(task, "complete", Duration::from_secs(30));
    println!(
        "check of a killed daemon: restarted, complete in {} ms",
        took.as_millis()
    );
    let tryno: u32 = server.variable(task, "ECF_TRYNO").parse().unwrap();
    assert!(
        server
            .job_output(task, tryno)
            .contains("ferry does not serve on"),
        "the task says it restarts the daemon"
    );
    assert!(check(&listen), "the restarted daemon serves");
    let restarted = guard
        .pid()
        .expect("the restarted daemon wrote its pid file");
    assert_ne!(restarted, first_pid);
    assert!(alive(restarted));

    // 3. A config the daemon cannot start with: the task aborts, and ecFlow shows it.
    guard.kill();
    server.ok(&[
        "--alter",
        "change",
        "variable",
        "FERRY_CONFIG",
        &broken.to_string_lossy(),
        suite,
    ]);
    server.ok(&["--force=queued", task]);
    let took = server.wait_for(task, "aborted", Duration::from_secs(60));
    println!(
        "check with a broken config: aborted in {} ms",
        took.as_millis()
    );
    assert!(!check(&listen));
    let log = std::fs::read_to_string(dir.join("ferry.log")).unwrap();
    assert!(
        log.contains("server.listen"),
        "the daemon's log names the bad field:\n{log}"
    );
}

#[test]
fn the_readme_shows_the_wrapper_the_tests_run() {
    let wrapper = std::fs::read_to_string(config_dir().join("bin/ecflow_client")).unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains(&wrapper),
        "README.md must show config/ecflow/bin/ecflow_client exactly as it is"
    );
}
