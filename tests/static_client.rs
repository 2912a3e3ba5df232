//! The static client (`ferry` built without the `daemon` feature for
//! x86_64-unknown-linux-musl, as scripts/release ships it to compute nodes): it links
//! nothing, and copied alone into an empty directory and run there under `chroot` — no
//! libc, no `/etc`, no environment — it sends through a daemon on loopback to the real
//! brokers, makes the ecflow_client wrapper's call, and publishes straight to RabbitMQ.
//!
//! scripts/test builds the client and names it in `FERRY_TEST_STATIC_CLIENT`.

#![allow(clippy::expect_used, clippy::unwrap_used)]
// The end-to-end tests start daemons: they need the daemon's build.
#![cfg(feature = "daemon")]

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::process::{free_address, scratch_dir, serve};
use ferry_testkit::{amqp, kafka, shared_amqp_url, shared_kafka};

/// The static client scripts/test built.
fn static_client() -> PathBuf {
    std::env::var_os("FERRY_TEST_STATIC_CLIENT")
        .expect(
            "FERRY_TEST_STATIC_CLIENT names the static client (scripts/test builds it with \
             scripts/static-client)",
        )
        .into()
}

/// What `program args` printed, asserting it ran.
fn stdout_of(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().expect(program);
    assert!(output.status.success(), "{program} {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A directory of its own holding only the client, as `/ferry`; removed when dropped (the
/// client is 10 MB).
struct Jail(PathBuf);

impl Drop for Jail {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An empty directory named after `name` with only the client in it.
fn jail(name: &str) -> Jail {
    let root = scratch_dir(name);
    std::fs::copy(static_client(), root.join("ferry")).expect("copy the client");
    Jail(root)
}

/// Runs `/ferry args` chrooted into `root`, with an empty environment but `env`.
fn in_jail(root: &Jail, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new("/usr/sbin/chroot")
        .arg(&root.0)
        .arg("/ferry")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("chroot runs (root)")
}

/// Asserts exit 0, showing stderr otherwise.
fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_static_client_needs_no_shared_library() {
    let client = static_client();
    let client = client.to_str().unwrap();
    let ldd = Command::new("ldd").arg(client).output().unwrap();
    let said =
        String::from_utf8_lossy(&ldd.stdout).into_owned() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd {client}: {said}"
    );
    // No program interpreter and no shared library needed: the ELF headers say so.
    let headers = stdout_of("readelf", &["--program-headers", "--dynamic", client]);
    assert!(!headers.contains("INTERP"), "{headers}");
    assert!(!headers.contains("(NEEDED)"), "{headers}");
    // And the daemon's C libraries are not inside it.
    let bytes = std::fs::read(client).unwrap();
    for absent in [
        &b"rd_kafka_new"[..],
        b"OPENSSL_init_ssl",
        b"sasl_client_new",
    ] {
        let found = bytes.windows(absent.len()).any(|w| w == absent);
        assert!(!found, "{} is linked in", String::from_utf8_lossy(absent));
    }
}

#[tokio::test]
async fn the_static_client_sends_from_an_empty_root_through_a_daemon_to_both_brokers() {
    let brokers = shared_kafka();
    let topic = kafka::unique_topic("static");
    kafka::create_topic(&brokers, &topic).await;
    let url = shared_amqp_url();
    let exchange = kafka::unique_topic("ferry.test.static");
    let queue = kafka::unique_topic("static");
    amqp::bind_queue(&url, &exchange, &queue, "#").await;
    let listen = free_address();
    let daemon = serve(&listen);
    let root = jail("static-send");

    let check = in_jail(&root, &["check", "--address", &listen], &[]);
    assert_success(&check);
    let to_kafka = in_jail(
        &root,
        &[
            "send",
            "kafka",
            "--brokers",
            &brokers,
            "--topic",
            &topic,
            "--data",
            "static kafka",
        ],
        &[("FERRY_PROXY", &listen)],
    );
    assert_success(&to_kafka);
    let to_rabbit = in_jail(
        &root,
        &[
            "send",
            "rabbitmq",
            "--server",
            &url,
            "--exchange",
            &exchange,
            "--routing-key",
            "a.b",
            "--data",
            "static rabbitmq",
            "--proxy",
            &listen,
        ],
        &[],
    );
    assert_success(&to_rabbit);

    let records = kafka::read_topic(&brokers, &topic, 1, Duration::from_secs(10));
    assert_eq!(records, vec![b"static kafka".to_vec()]);
    let received = amqp::read_queue(&url, &queue, 1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].data, b"static rabbitmq");
    daemon.terminate();
}

/// The environment of an ecFlow task, as the wrapper sees it.
const TASK_ENV: &[(&str, &str)] = &[
    ("ECF_HOST", "login_b01"),
    ("ECF_PORT", "31067"),
    ("ECF_NAME", "/suite/00/task"),
    ("ECF_RID", "4242"),
    ("ECF_TRYNO", "1"),
    ("ECF_DATE", "20261205"),
];

#[tokio::test]
async fn the_wrappers_call_and_the_direct_mode_work_from_an_empty_root() {
    let url = shared_amqp_url();
    let exchange = kafka::unique_topic("ferry.test.static");
    let queue = kafka::unique_topic("static-event");
    amqp::bind_queue(&url, &exchange, &queue, "ecflow.command.ecflow_client").await;
    let listen = free_address();
    let daemon = serve(&listen);
    let root = jail("static-event");

    // The call config/ecflow/bin/ecflow_client makes, over the daemon.
    let over_daemon = in_jail(
        &root,
        &[
            "ecflow-client",
            "--command-options=--complete",
            &format!("--rabbitmq-server={url}"),
            &format!("--exchange-name={exchange}"),
            "--with-broker",
            &format!("--broker-address={listen}"),
            "--timeout-ms=5000",
        ],
        TASK_ENV,
    );
    assert_success(&over_daemon);
    // The predecessor's default: straight to RabbitMQ, no daemon (lapin over rustls'
    // build, plain AMQP here).
    let direct = in_jail(
        &root,
        &[
            "ecflow-client",
            "--command-options=--abort=oops",
            &format!("--rabbitmq-server={url}"),
            &format!("--exchange-name={exchange}"),
        ],
        TASK_ENV,
    );
    assert_success(&direct);

    let received = amqp::read_queue(&url, &queue, 2, Duration::from_secs(10)).await;
    let commands: Vec<String> = received
        .iter()
        .map(|m| {
            let envelope: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
            assert_eq!(envelope["data"]["ecf_name"], "/suite/00/task");
            envelope["data"]["command"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(commands, ["complete", "abort"]);
    daemon.terminate();
}
