//! The real `ferry` binary as a child process: daemons to start and kill, clients to run.

use std::path::Path;
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
    command
        .args(args)
        .env_remove("FERRY_PROXY")
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_MAX_MESSAGE_BYTES")
        .env_remove("FERRY_ROUTE_WORKFLOW")
        .env_remove("FERRY_ROUTE_PRODUCTION")
        .env_remove("FERRY_ROUTE_LOG");
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
    let flags = [&["--listen", listen, "--ops-listen", &ops_address], extra].concat();
    spawn(&flags, listen, &ops_address, stderr)
}

/// Starts `ferry serve --config CONFIG` with no address flags: the file's `server.listen`
/// (`listen`) and `ops.listen` (`ops`) are the ones in force. Its log goes to `log`.
pub fn serve_config_only(config: &Path, listen: &str, ops: &str, log: &Path) -> Served {
    let file = std::fs::File::create(log).expect("log file");
    let flags = ["--config", &config.to_string_lossy()];
    spawn(&flags, listen, ops, Stdio::from(file))
}

/// Starts `ferry serve FLAGS` and waits until it accepts connections on `listen` and
/// `ops_address`.
fn spawn(flags: &[&str], listen: &str, ops_address: &str, stderr: Stdio) -> Served {
    let child = ferry(&["serve"])
        .args(flags)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("ferry serve starts");
    // Both listeners: a test's first look at /stats must not race the ops endpoint, and a
    // daemon that could not bind it (another test took the port) must fail here, saying so.
    let deadline = Instant::now() + Duration::from_secs(10);
    for address in [listen, ops_address] {
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
        ops_address: ops_address.to_owned(),
    }
}

/// A fresh directory for one test's files.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Writes a daemon config file into `dir` and returns its path.
pub fn config_file(dir: &Path, text: &str) -> String {
    let path = dir.join("ferry.toml");
    std::fs::write(&path, text).expect("config file");
    path.to_str().expect("a UTF-8 path").to_owned()
}

/// A `ferry serve` child on a free address with the config `text` (in a scratch directory
/// named after `name`).
pub fn serve_configured(name: &str, text: &str) -> Served {
    let config = config_file(&scratch_dir(name), text);
    serve_with(&free_address(), &["--config", &config])
}

/// Asserts that `log` holds at least one line with `line` and no more than the log budget
/// allows over `seconds` (plus one window); returns how many.
pub fn logged_within_budget(log: &str, line: &str, seconds: u64) -> u64 {
    let lines = log.matches(line).count() as u64;
    let bound = ferry::daemon::log_budget::LOG_LINES_PER_SECOND * (seconds + 1);
    assert!(
        (1..=bound).contains(&lines),
        "{lines} \"{line}\" lines in {seconds} s (bound {bound})"
    );
    lines
}

/// Set in the re-run test's environment: it is inside the private namespace.
const INSIDE: &str = "FERRY_TEST_PRIVATE_NETWORK";

/// Whether this process runs inside the private network namespace of
/// [`in_private_network`].
pub fn inside_private_network() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// Whether this process is the re-run inside a private network namespace, for a test that
/// must listen on every interface (the guide: test servers listen on loopback only, so
/// anything that binds `0.0.0.0` runs where the only interface is its own `lo`). Outside,
/// it runs the test `test` of this binary again inside one (`unshare -n -u`, `lo` up, host
/// name `localhost`), passes its output through, asserts that it passed, and returns
/// false: the caller then returns, its work done by the re-run.
pub fn in_private_network(test: &str) -> bool {
    if inside_private_network() {
        return true;
    }
    let run_dir = scratch_dir(&format!("netns-{test}"));
    let exe = std::env::current_exe().expect("the test binary");
    let started = Instant::now();
    let output = Command::new("unshare")
        .args(["--net", "--uts", "--kill-child", "--", "sh", "-c"])
        .arg("ip link set lo up && hostname localhost && exec \"$@\"")
        .arg("sh")
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .env("FERRY_TEST_RUN_DIR", &run_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("unshare runs (root, util-linux)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    println!(
        "{test}: {:.1} s in a private network namespace",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{test} failed inside its private network namespace (exit {:?})",
        output.status.code()
    );
    let _ = std::fs::remove_dir_all(run_dir);
    false
}
