//! The test brokers: the shared pair started by `scripts/test`, and private ones a fault
//! test can kill and restart, all driven through `scripts/brokers`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Which broker to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// tansu, speaking the Kafka protocol.
    Kafka,
    /// A RabbitMQ node.
    RabbitMq,
}

impl BrokerKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::RabbitMq => "rabbitmq",
        }
    }
}

/// Reads a variable that `scripts/test` exports, or fails the test saying how to run it.
fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: end-to-end tests need the test brokers; run them with scripts/test"
        )
    })
}

/// Bootstrap address of the shared Kafka test broker.
pub fn shared_kafka() -> String {
    required_env("FERRY_TEST_KAFKA")
}

/// AMQP URL of the shared RabbitMQ test broker.
pub fn shared_amqp_url() -> String {
    required_env("FERRY_TEST_AMQP")
}

/// The state directory of the shared RabbitMQ broker (for `rabbitmqctl`).
pub fn shared_amqp_dir() -> PathBuf {
    required_env("FERRY_TEST_AMQP_DIR").into()
}

/// `scripts/brokers` of this checkout.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/brokers")
}

/// Runs `scripts/brokers ARGS` and returns its standard output.
pub fn run_script(args: &[&str]) -> String {
    let output = Command::new(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/brokers: {e}"));
    assert!(
        output.status.success(),
        "scripts/brokers {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `rabbitmqctl ARGS` against the RabbitMQ node whose state is in `dir`.
pub fn rabbitmqctl(dir: &Path, args: &[&str]) -> String {
    let dir = dir.to_string_lossy();
    let mut all = vec!["ctl", &dir];
    all.extend_from_slice(args);
    run_script(&all)
}

/// A broker of the test's own, on a free port; stopped when dropped.
pub struct PrivateBroker {
    kind: BrokerKind,
    dir: PathBuf,
    port: u16,
}

impl PrivateBroker {
    /// Starts a broker of `kind` and waits until it accepts connections.
    pub fn start(kind: BrokerKind) -> Self {
        Self::start_with(kind, "")
    }

    /// Starts a broker of `kind` with `extra` added to its config file (RabbitMQ's
    /// `rabbitmq.conf` syntax: a TLS listener, say), and waits until it accepts connections.
    pub fn start_with(kind: BrokerKind, extra: &str) -> Self {
        Self::start_with_plugins(kind, extra, &[])
    }

    /// [`Self::start_with`], RabbitMQ with `plugins` enabled as well (for instance
    /// `rabbitmq_auth_mechanism_ssl`, for EXTERNAL authentication).
    pub fn start_with_plugins(kind: BrokerKind, extra: &str, plugins: &[&str]) -> Self {
        let port: u16 = run_script(&["free-port"])
            .trim()
            .parse()
            .expect("free-port prints a port");
        let base = std::env::var("FERRY_TEST_RUN_DIR")
            .unwrap_or_else(|_| std::env::temp_dir().to_string_lossy().into_owned());
        let dir = PathBuf::from(base).join(format!("{}-{port}", kind.as_str()));
        std::fs::create_dir_all(&dir).expect("broker directory");
        if !extra.is_empty() {
            std::fs::write(dir.join("extra.conf"), extra).expect("extra.conf");
        }
        if !plugins.is_empty() {
            let list = format!("[{}].", plugins.join(","));
            std::fs::write(dir.join("plugins"), list).expect("plugins");
        }
        run_script(&[
            "start",
            kind.as_str(),
            &dir.to_string_lossy(),
            &port.to_string(),
        ]);
        Self { kind, dir, port }
    }

    /// Its `host:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// For RabbitMQ, its AMQP URL.
    pub fn amqp_url(&self) -> String {
        assert_eq!(self.kind, BrokerKind::RabbitMq);
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Its state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills it with SIGKILL (a crash) and waits until the process is gone.
    pub fn kill(&self) {
        run_script(&["kill", &self.dir.to_string_lossy()]);
    }

    /// Stops it cleanly (its data flushed), for tests where the broker only needs to be
    /// down; [`Self::restart`] brings it back.
    pub fn stop(&self) {
        run_script(&["stop", &self.dir.to_string_lossy()]);
    }

    /// Starts it again on the same port with the same data, and waits until it is ready.
    pub fn restart(&self) {
        run_script(&["restart", &self.dir.to_string_lossy()]);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["stop", &self.dir.to_string_lossy()])
            .status();
    }
}
