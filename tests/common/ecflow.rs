//! A real ecFlow server (Debian's `ecflow-server`) for end-to-end tests, run inside a
//! private network namespace: ecflow_server binds every interface and has no option to
//! bind loopback only, so the test re-runs itself under `unshare -n -u` where the only
//! interface is its own `lo` and the host name is `localhost`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The server and client Debian installs (`scripts/brokers install`).
pub const ECFLOW_SERVER: &str = "/usr/sbin/ecflow_server";
/// The real ecflow_client.
pub const ECFLOW_CLIENT: &str = "/usr/bin/ecflow_client";
/// The repository's `config/ecflow`.
pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ecflow")
}

/// Whether this process is the re-run inside the private network namespace (see
/// [`super::process::in_private_network`]), once the ecFlow tools are known to be there.
pub fn in_private_network(test: &str) -> bool {
    if super::process::inside_private_network() {
        return true;
    }
    for tool in [ECFLOW_SERVER, ECFLOW_CLIENT] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: run scripts/brokers install (it installs ecflow-server and ecflow-client)"
        );
    }
    super::process::in_private_network(test)
}

/// An ecflow_server with its home in a scratch directory, running (not halted); halted,
/// terminated and reaped when dropped.
pub struct EcflowServer {
    child: Child,
    /// Its port, on every interface of the private namespace: only its loopback.
    pub port: u16,
    /// ECF_HOME: where job files and job output are written.
    pub home: PathBuf,
}

impl EcflowServer {
    /// Starts a server whose jobs inherit `env` (besides this process's environment) and
    /// waits until it answers and schedules.
    pub fn start(home: &Path, env: &[(&str, String)]) -> Self {
        assert!(
            super::process::inside_private_network(),
            "ecflow_server binds every interface: start it only inside in_private_network"
        );
        std::fs::create_dir_all(home).expect("ECF_HOME");
        // The namespace is private, so ecFlow's own default port is free (ecflow_server
        // refuses ports above 49151, where free ports are usually found).
        let port = 3141;
        let log = std::fs::File::create(home.join("server.out")).expect("server output");
        let child = Command::new(ECFLOW_SERVER)
            .arg(format!("--port={port}"))
            .current_dir(home)
            .env("ECF_HOME", home)
            .env("ECF_PORT", port.to_string())
            .env("LANG", "C.UTF-8")
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("ecflow_server starts");
        let server = Self {
            child,
            port,
            home: home.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !server.client(&["--ping"]).status.success() {
            assert!(Instant::now() < deadline, "ecflow_server does not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        // A new server starts halted: it schedules nothing until restarted.
        server.ok(&["--restart"]);
        server
    }

    /// Runs the real ecflow_client against this server.
    pub fn client(&self, args: &[&str]) -> Output {
        Command::new(ECFLOW_CLIENT)
            .args(args)
            .env("ECF_HOST", "localhost")
            .env("ECF_PORT", self.port.to_string())
            .output()
            .expect("ecflow_client runs")
    }

    /// Runs the real ecflow_client and asserts that it succeeded; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.client(args);
        assert!(
            output.status.success(),
            "ecflow_client {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// A node's state as the server shows it (`queued`, `active`, `complete`, `aborted`…).
    pub fn state(&self, path: &str) -> String {
        self.ok(&["--query", "state", path])
    }

    /// A variable as a task sees it (its own, inherited, or the server's).
    pub fn variable(&self, path: &str, name: &str) -> String {
        self.ok(&["--query", "variable", &format!("{path}:{name}")])
    }

    /// Waits until `path` is in `state`, for at most `limit`; returns how long it took.
    pub fn wait_for(&self, path: &str, state: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let now = self.state(path);
            if now == state {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "{path} is {now}, not {state}, after {limit:?}; server log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log (every state change and child command).
    pub fn log(&self) -> String {
        std::fs::read_dir(&self.home)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".ecf.log"))
            .map(|entry| std::fs::read_to_string(entry.path()).unwrap_or_default())
            .collect()
    }

    /// A task's job output for try `tryno` (ECF_JOBOUT), e.g. `/suite/family/task`, 1.
    pub fn job_output(&self, path: &str, tryno: u32) -> String {
        let file = self
            .home
            .join(format!("{}.{tryno}", path.trim_start_matches('/')));
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("job output {}: {e}", file.display()))
    }
}

impl Drop for EcflowServer {
    fn drop(&mut self) {
        let _ = self.client(&["--halt=yes"]);
        let _ = self.client(&["--terminate=yes"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
