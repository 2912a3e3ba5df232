//! The real `ferry` binary as a child process: daemons to start and kill, clients to run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    ferry_testkit::brokers::run_script(&["free-port"])
        .trim()
        .parse()
        .expect("a port number")
}

/// `127.0.0.1:` a free port.
pub fn free_address() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A `ferry` command with `args`.
pub fn ferry(args: &[&str]) -> Command {
    let mut command = Command::new(FERRY);
    command.args(args).env_remove("FERRY_PROXY");
    command
}

/// A `ferry serve` child process, SIGKILLed if still running when dropped (a failing
/// test must not leave daemons behind).
pub struct Served {
    /// The process.
    child: Child,
    /// Where it listens for gRPC.
    pub address: String,
    /// Where its operations endpoint (HTTP) listens.
    pub ops_address: String,
}

impl Served {
    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the daemon.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.child.id());
    }

    /// Whether the daemon is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the daemon to exit; returns its exit code and how long the wait took.
    pub fn wait(mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        let status = self.child.wait().expect("wait for ferry serve");
        (status.code(), started.elapsed())
    }

    /// Sends SIGTERM and returns the exit code and how long the exit took.
    pub fn terminate(mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        self.signal("TERM");
        let status = self.child.wait().expect("wait for ferry serve");
        (status.code(), started.elapsed())
    }

    /// SIGKILLs the daemon (a crash) and reaps it.
    pub fn kill(mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `ferry serve` on `listen` (its operations endpoint on a free port) and waits
/// until it accepts connections.
pub fn serve(listen: &str) -> Served {
    serve_with(listen, &[])
}

/// [`serve`] with extra flags.
pub fn serve_with(listen: &str, extra: &[&str]) -> Served {
    spawn_served(listen, extra, Stdio::null())
}

/// [`serve_with`], its log (stderr, level info) written to `log`.
pub fn serve_logged(listen: &str, extra: &[&str], log: &std::path::Path) -> Served {
    let file = std::fs::File::create(log).expect("log file");
    spawn_served(listen, extra, Stdio::from(file))
}

/// Starts `ferry serve` and waits until it accepts connections.
fn spawn_served(listen: &str, extra: &[&str], stderr: Stdio) -> Served {
    let ops_address = free_address();
    let child = ferry(&["serve", "--listen", listen, "--ops-listen", &ops_address])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("ferry serve starts");
    // Both listeners: a test's first look at /stats must not race the ops endpoint, and a
    // daemon that could not bind it (another test took the port) must fail here, saying so.
    let deadline = Instant::now() + Duration::from_secs(10);
    for address in [listen, ops_address.as_str()] {
        while std::net::TcpStream::connect(address).is_err() {
            assert!(
                Instant::now() < deadline,
                "ferry serve is not listening on {address}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Served {
        child,
        address: listen.to_owned(),
        ops_address,
    }
}

/// A fresh directory for one test's files.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}
