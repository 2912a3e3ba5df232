//! A real Prometheus (Debian's `prometheus`, installed by `scripts/brokers install`) on
//! loopback, scraping one daemon's operations endpoint every second and evaluating a rule
//! file every second; queried through its HTTP API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The server binary.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus server in a scratch directory; killed and reaped when dropped.
pub struct Prometheus {
    child: Child,
    /// `127.0.0.1:PORT` of its web API.
    pub address: String,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts a server in `dir` that scrapes `ops` (job `ferry`) and evaluates `rules`
    /// (the text of a rule file), and waits until it is ready.
    pub async fn start(dir: &Path, ops: &str, rules: &str) -> Self {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: run scripts/brokers install (it installs prometheus)"
        );
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("rules.yml"), rules).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: ferry\n    static_configs:\n      - targets: ['{ops}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let address = super::process::free_address();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut server = Self {
            child,
            address,
            dir: dir.to_owned(),
        };
        server.await_ready().await;
        server
    }

    /// Polls `/-/ready` for at most 30 s; panics with the server's log if it exits or
    /// never gets ready.
    async fn await_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.get("/-/ready").await.is_ok() {
                return;
            }
            let exited = self.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "prometheus did not get ready ({exited:?}):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GETs `path_and_query` from the web API.
    async fn get(&self, path_and_query: &str) -> Result<Value, String> {
        let uri = format!("http://{}{path_and_query}", self.address)
            .parse()
            .map_err(|e| format!("{e}"))?;
        let body = ferry::cli::ops::fetch(uri).await?;
        Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// The result of the instant query `expr` (`data.result`), or the error Prometheus
    /// answered.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let answer = self
            .get(&format!("/api/v1/query?query={}", encode(expr)))
            .await?;
        if answer["status"] != "success" {
            return Err(answer.to_string());
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The alerts now pending or firing: (name, state, labels).
    pub async fn alerts(&self) -> Vec<(String, String, Value)> {
        let answer = self
            .get("/api/v1/alerts")
            .await
            .expect("GET /api/v1/alerts");
        answer["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|alert| {
                let name = alert["labels"]["alertname"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let state = alert["state"].as_str().unwrap_or("").to_owned();
                (name, state, alert["labels"].clone())
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` percent-encoded for a query string (RFC 3986 unreserved characters kept).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
