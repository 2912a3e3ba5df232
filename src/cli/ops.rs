//! `ferry check` (the command an ecFlow task calls), `ferry stats` (the per-actor table
//! for a human) and `ferry routes`: the commands that only read a daemon, in both builds.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::locate::ConfigArg;
use super::{EXIT_DEGRADED, EXIT_NOT_DELIVERED, EXIT_USAGE, block_on, fail};
use crate::contract::{DEFAULT_LISTEN, HEALTH_SERVICE};
use crate::report::{ProducerReport, Report, State};

/// Flags of `ferry check`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example (an ecFlow task): ferry check --address 127.0.0.1:33383 || restart_ferry"
)]
pub struct CheckArgs {
    /// The daemon's gRPC address, or several, comma-separated (FERRY_PROXY's list): each is
    /// checked [default: the config's server.listen, else 127.0.0.1:33383].
    /// Example: --address 127.0.0.1:33383
    #[arg(
        long,
        env = "FERRY_PROXY",
        value_delimiter = ',',
        value_name = "HOST:PORT,..."
    )]
    pub address: Vec<String>,
    /// Give up after this long. Example: --timeout-ms 2000
    #[arg(long, default_value_t = 2_000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Speak TLS, trusting the CA certificate(s) in this PEM file.
    /// Example: --tls-ca /etc/ferry/ca.pem
    #[arg(long, env = "FERRY_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// The daemon's operations endpoint ([ops] listen): with it, a serving daemon that is
    /// degraded exits 3 and the reasons are printed [default with --config: the config's
    /// ops.listen]. Example: --http 127.0.0.1:33384
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// Where the daemon is, from its config file.
    #[command(flatten)]
    pub config: ConfigArg,
}

/// Flags of `ferry stats`.
#[derive(Debug, Args)]
#[command(after_help = "Example: ferry stats --http 127.0.0.1:33384")]
pub struct StatsArgs {
    /// The daemon's operations endpoint ([ops] listen) [default: the config's ops.listen,
    /// else 127.0.0.1:33384]. Example: --http 127.0.0.1:33384
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// Where the daemon is, from its config file.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print the JSON document as served by /stats instead of the table. Example: --json
    #[arg(long)]
    pub json: bool,
    /// Give up after this long. Example: --timeout-ms 2000
    #[arg(long, default_value_t = 2_000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// Flags of `ferry routes`.
#[derive(Debug, Args)]
#[command(after_help = "Example: ferry routes --http 127.0.0.1:33384")]
pub struct RoutesArgs {
    /// The daemon's operations endpoint ([ops] listen) [default: the config's ops.listen,
    /// else 127.0.0.1:33384]. Example: --http 127.0.0.1:33384
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// Where the daemon is, from its config file.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Give up after this long. Example: --timeout-ms 2000
    #[arg(long, default_value_t = 2_000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// The `/stats` URI of the operations endpoint `http`, else the config's, else the
/// default; the exit code (the reason printed) when it cannot be used.
fn ops_uri(http: Option<&str>, config: &ConfigArg) -> Result<Uri, ExitCode> {
    let located = config
        .locate_unless(http.is_some())
        .map_err(|error| fail(EXIT_USAGE, error))?;
    stats_uri(&located.ops_address(http))
}

/// Reads the routes from `/stats` and prints one line per route: name and kind.
pub fn routes(args: RoutesArgs) -> ExitCode {
    let uri = match ops_uri(args.http.as_deref(), &args.config) {
        Ok(uri) => uri,
        Err(code) => return code,
    };
    let report = match read_report(&uri, args.timeout_ms) {
        Ok(report) => report,
        Err(error) => return fail(EXIT_NOT_DELIVERED, error),
    };
    if report.routes.is_empty() {
        println!("no routes (the daemon's config has no [routes.NAME])");
        return ExitCode::SUCCESS;
    }
    let width = report
        .routes
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0)
        .max("ROUTE".len());
    println!("{:width$}  KIND", "ROUTE");
    for route in &report.routes {
        println!("{:width$}  {}", route.name, route.kind);
    }
    ExitCode::SUCCESS
}

/// The `/stats` URI of the ops endpoint at `http` (`HOST:PORT` or `http://HOST:PORT/`), or
/// a usage error.
pub(crate) fn stats_uri(http: &str) -> Result<Uri, ExitCode> {
    let address = ops_address(http).map_err(|reason| fail(EXIT_USAGE, reason))?;
    format!("http://{address}/stats")
        .parse::<Uri>()
        .map_err(|_| {
            fail(
                EXIT_USAGE,
                format!("invalid address {http:?}: give HOST:PORT"),
            )
        })
}

/// The `HOST:PORT` of an operations endpoint written as `HOST:PORT` or as a URL
/// `http://HOST:PORT` (with or without a final `/`), as operators copy it from a browser.
fn ops_address(http: &str) -> Result<&str, String> {
    if http.starts_with("https://") {
        return Err(format!(
            "invalid address {http:?}: the operations endpoint speaks plain HTTP; give HOST:PORT"
        ));
    }
    let address = http.strip_prefix("http://").unwrap_or(http);
    let address = address.strip_suffix('/').unwrap_or(address);
    if address.is_empty() || address.contains('/') {
        return Err(format!(
            "invalid address {http:?}: give HOST:PORT or http://HOST:PORT"
        ));
    }
    Ok(address)
}

/// What went wrong with a request to `uri`, down to its root cause: a refused connection
/// names the address and the operating system's error, not just "client error (Connect)".
fn describe(error: &hyper_util::client::legacy::Error, uri: &Uri) -> String {
    let mut root: Option<&dyn std::error::Error> = None;
    let mut cause = std::error::Error::source(error);
    while let Some(next) = cause {
        root = Some(next);
        cause = next.source();
    }
    let address = uri.authority().map_or("?", |a| a.as_str());
    match root {
        Some(root) if error.is_connect() => format!("cannot connect to {address}: {root}"),
        Some(root) => format!("{error}: {root}"),
        None => error.to_string(),
    }
}

/// GETs `uri` within `timeout_ms`; an error says why, and nothing is printed.
fn fetch_within(uri: &Uri, timeout_ms: u64) -> Result<Bytes, String> {
    within(timeout_ms, fetch(uri.clone()))
}

/// Runs `request` on a runtime of its own, giving up after `timeout_ms`.
fn within<T>(
    timeout_ms: u64,
    request: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let limit = Duration::from_millis(timeout_ms);
    block_on(async move {
        tokio::time::timeout(limit, request)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", limit.as_millis())))
    })
    .map_err(|_| "cannot start a runtime".to_owned())?
}

/// The most of an answer's body read: a `/stats` report of the daemon's 1,000 producers
/// (its `max_targets`) is well under a megabyte, and a peer that is not a ferry daemon must
/// not make the command read without end.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Sends `method` with an empty body to `uri`; the status and body of any answer.
async fn request(method: http::Method, uri: &Uri) -> Result<(http::StatusCode, Bytes), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = http::Request::builder()
        .method(method)
        .uri(uri.clone())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| describe(&e, uri))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    Ok((status, body.to_bytes()))
}

/// Fetches and parses the `/stats` report at `uri`; an error says why, and nothing is
/// printed (a caller that polls decides what to say).
pub(crate) fn read_report(uri: &Uri, timeout_ms: u64) -> Result<Report, String> {
    let body = fetch_within(uri, timeout_ms).map_err(|e| format!("cannot read {uri}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("unexpected /stats document: {e}"))
}

/// Asks each daemon's grpc.health.v1 service and prints one line per daemon. One daemon:
/// exit 0 when it serves, 3 when it serves degraded (with `--http`), 1 when it does not. A
/// list (`FERRY_PROXY=a,b`): 0 when every one serves, 1 when none does, 3 when some do.
pub fn check(mut args: CheckArgs) -> ExitCode {
    let flags_suffice = !args.address.is_empty() && (args.http.is_some() || args.address.len() > 1);
    let located = match args.config.locate_unless(flags_suffice) {
        Ok(located) => located,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    if args.address.is_empty() {
        let listen = located.listen.clone();
        args.address = vec![listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned())];
    }
    // Given the config, one daemon is checked whole: its health too.
    if args.http.is_none() && args.config.config.is_some() && args.address.len() == 1 {
        args.http = Some(located.ops_address(None));
    }
    if args.http.is_some() && args.address.len() > 1 {
        return fail(
            EXIT_USAGE,
            "--http is one daemon's operations endpoint: give one --address with it",
        );
    }
    let codes: Vec<ExitCode> = args
        .address
        .iter()
        .map(|address| check_one(address, &args))
        .collect();
    if let [code] = codes[..] {
        return code;
    }
    let serving = codes.iter().filter(|c| **c == ExitCode::SUCCESS).count();
    if codes.contains(&ExitCode::from(EXIT_USAGE)) {
        return ExitCode::from(EXIT_USAGE);
    }
    match serving {
        0 => ExitCode::from(EXIT_NOT_DELIVERED),
        n if n == codes.len() => ExitCode::SUCCESS,
        n => {
            println!("{n} of {} daemons serve", codes.len());
            ExitCode::from(EXIT_DEGRADED)
        }
    }
}

/// Asks the daemon at `address`; exit 0 and "serving" when it serves, else 1 (3 when
/// degraded, with `--http`).
fn check_one(address: &str, args: &CheckArgs) -> ExitCode {
    let scheme = if args.tls_ca.is_some() {
        "https"
    } else {
        "http"
    };
    let Ok(mut endpoint) = Endpoint::from_shared(format!("{scheme}://{address}")) else {
        return fail(EXIT_USAGE, format!("invalid address {:?}", address));
    };
    if let Some(path) = &args.tls_ca {
        let ca = match std::fs::read(path) {
            Ok(ca) => ca,
            Err(e) => return fail(EXIT_USAGE, format!("cannot read {}: {e}", path.display())),
        };
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        endpoint = match endpoint.tls_config(tls) {
            Ok(endpoint) => endpoint,
            Err(e) => return fail(EXIT_USAGE, format!("cannot set up TLS: {e}")),
        };
    }
    let limit = Duration::from_millis(args.timeout_ms);
    let started = Instant::now();
    let asked = block_on(async move {
        tokio::time::timeout(limit, async {
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| crate::client::failover::chain(&e))?;
            let request = HealthCheckRequest {
                service: HEALTH_SERVICE.to_owned(),
            };
            HealthClient::new(channel)
                .check(request)
                .await
                .map(|response| response.into_inner().status())
                .map_err(|status| status.message().to_owned())
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", limit.as_millis())))
    });
    let answer = match asked {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    let ms = started.elapsed().as_millis();
    match answer {
        Ok(ServingStatus::Serving) => match &args.http {
            Some(http) => check_health(address, http, args.timeout_ms),
            None => {
                println!("ferry at {}: serving ({ms} ms)", address);
                ExitCode::SUCCESS
            }
        },
        Ok(status) => {
            println!("ferry at {}: {} ({ms} ms)", address, status.as_str_name());
            ExitCode::from(EXIT_NOT_DELIVERED)
        }
        Err(error) => {
            println!("ferry at {}: down: {error}", address);
            ExitCode::from(EXIT_NOT_DELIVERED)
        }
    }
}

/// The health of a daemon whose gRPC health says serving, from its operations endpoint at
/// `http`: exit 0 serving, 3 degraded (also when the endpoint does not answer: the daemon
/// serves, so a restart would not help), 1 not serving.
fn check_health(address: &str, http: &str, timeout_ms: u64) -> ExitCode {
    let uri = match stats_uri(http) {
        Ok(uri) => uri,
        Err(code) => return code,
    };
    match read_report(&uri, timeout_ms) {
        Ok(report) => {
            println!("ferry at {address}: {}", report.health().line());
            match report.health().state {
                State::Serving => ExitCode::SUCCESS,
                State::Degraded => ExitCode::from(EXIT_DEGRADED),
                State::NotServing => ExitCode::from(EXIT_NOT_DELIVERED),
            }
        }
        Err(error) => {
            println!("ferry at {address}: degraded: serving, but {http} does not answer: {error}");
            ExitCode::from(EXIT_DEGRADED)
        }
    }
}

/// Reads `/stats` and prints it as an aligned table (or the JSON with `--json`).
pub fn stats(args: StatsArgs) -> ExitCode {
    let uri = match ops_uri(args.http.as_deref(), &args.config) {
        Ok(uri) => uri,
        Err(code) => return code,
    };
    if args.json {
        return match fetch_within(&uri, args.timeout_ms) {
            Ok(body) => {
                println!("{}", String::from_utf8_lossy(&body));
                ExitCode::SUCCESS
            }
            Err(error) => fail(EXIT_NOT_DELIVERED, format!("cannot read {uri}: {error}")),
        };
    }
    match read_report(&uri, args.timeout_ms) {
        Ok(report) => {
            print!("{}", render(&report));
            ExitCode::SUCCESS
        }
        Err(error) => fail(EXIT_NOT_DELIVERED, error),
    }
}

/// GETs `uri` and returns the body of a 200 answer.
pub async fn fetch(uri: Uri) -> Result<Bytes, String> {
    let (status, body) = request(http::Method::GET, &uri).await?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// POSTs an empty body to `uri` within `timeout_ms`; the status and body of any answer.
#[cfg(feature = "daemon")]
pub(crate) fn post_within(uri: &Uri, timeout_ms: u64) -> Result<(u16, Bytes), String> {
    within(timeout_ms, async {
        let (status, body) = request(http::Method::POST, uri).await?;
        Ok((status.as_u16(), body))
    })
}

/// The report as a summary line and a table with aligned columns.
pub fn render(report: &Report) -> String {
    let mut out = summary(report);
    let header = [
        "KIND",
        "TARGET",
        "STATE",
        "SENT",
        "FAILED",
        "RETRIED",
        "RESTARTS",
        "IN_FLIGHT",
        "P50_MS",
        "P99_MS",
        "LAST_USED",
        "LAST_ERROR",
    ];
    let rows: Vec<Vec<String>> = report.producers.iter().map(|p| row(p).to_vec()).collect();
    out.push_str(&table(&header, &rows, 3..10));
    for c in &report.clients {
        out.push_str(&format!(
            "client {}: {} messages, {} over its limits (5), {} not allowed (7), {} in flight\n",
            c.name, c.requests, c.rate_limited, c.not_allowed, c.in_flight
        ));
    }
    if let Some(spool) = &report.spool {
        out.push_str(&spool_lines(spool));
    }
    out
}

/// The first line of `ferry stats`: the daemon's state and totals; then, when the config
/// needs attention, a line on it (a refused reload, fields that wait for a restart).
fn summary(report: &Report) -> String {
    let t = &report.totals;
    let config = &report.config;
    let mut attention = String::new();
    if config.last_reload_failed {
        attention.push_str(&format!(
            "config: the last reload was refused, the config loaded at {} serves: {}\n",
            config.loaded_at, config.last_error
        ));
    }
    if !config.needs_restart.is_empty() {
        attention.push_str(&format!(
            "config: changed, applied only after a restart: {}\n",
            config.needs_restart.join(", ")
        ));
    }
    let line = format!(
        "ferry {} up {}s, {}; in flight {}; sent {} failed {} invalid {} not allowed {} retried {}; \
         producers {} evictions {}\n",
        report.version,
        report.uptime_s.round(),
        report.health().line(),
        report.in_flight,
        t.sent,
        t.failed,
        t.invalid,
        t.not_allowed,
        t.retried,
        t.producers,
        t.evictions
    );
    line + &attention
}

/// Rows under `header` in aligned columns: the columns `numeric` right-aligned, the others
/// left-aligned, the last one unpadded.
pub(crate) fn table(
    header: &[&str],
    rows: &[Vec<String>],
    numeric: std::ops::Range<usize>,
) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
    for cells in std::iter::once(&header).chain(rows) {
        let last = cells.len() - 1;
        let mut text = String::new();
        for (i, (cell, &width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                text.push_str(cell);
            } else if numeric.contains(&i) {
                text.push_str(&format!("{cell:>width$}  "));
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// The spool's totals, then one line per spooled target.
fn spool_lines(spool: &crate::report::SpoolReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "spool: {} bytes, {} spooled since start, {} replayed, {} dead letters held ({} moved since start), {} lost\n",
        spool.bytes,
        spool.spooled_total,
        spool.replayed_total,
        spool.dead_letters,
        spool.dead_lettered_total,
        spool.lost_total
    ));
    for t in &spool.targets {
        out.push_str(&format!(
            "  {:<8}  {}  spooled {} ({} bytes, oldest {:.1}s)  spooled_total {} replayed {} expired {} dead_lettered {}{}{}\n",
            t.kind,
            t.target,
            t.spooled,
            t.bytes,
            t.oldest_age_s,
            t.spooled_total,
            t.replayed_total,
            t.expired_total,
            t.dead_lettered_total,
            if t.last_error.is_empty() {
                String::new()
            } else {
                format!("  last error: {}", t.last_error)
            },
            if t.held.is_empty() {
                String::new()
            } else {
                format!("  HELD: {}", t.held)
            }
        ));
    }
    out
}

/// One producer's cells.
fn row(p: &ProducerReport) -> [String; 12] {
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    [
        p.kind.clone(),
        p.target.clone(),
        p.state.clone(),
        p.sent.to_string(),
        p.failed.to_string(),
        p.retried.to_string(),
        p.restarts.to_string(),
        p.in_flight.to_string(),
        ms(p.latency_p50_ms),
        ms(p.latency_p99_ms),
        p.last_used_at.clone(),
        match (&p.last_error, &p.last_error_at) {
            (Some(error), Some(at)) => format!("{at} {error}"),
            _ => "-".to_owned(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ops_address_is_taken_as_host_port_or_as_an_http_url() {
        for given in [
            "127.0.0.1:33384",
            "http://127.0.0.1:33384",
            "http://127.0.0.1:33384/",
        ] {
            assert_eq!(ops_address(given), Ok("127.0.0.1:33384"), "{given}");
        }
        for refused in ["https://h:1", "http://h:1/stats", "", "http://"] {
            assert!(ops_address(refused).is_err(), "{refused}");
        }
    }

    /// A peer that answers with a body without end (not a ferry daemon, or a broken one)
    /// costs the command at most `MAX_ANSWER_BYTES`, and is named as the error.
    #[test]
    fn an_endless_answer_is_cut_at_the_limit() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            stream.write_all(head.as_bytes()).unwrap();
            let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
            let mut sent = 0;
            while stream.write_all(chunk.as_bytes()).is_ok() {
                sent += 0x10000;
            }
            sent
        });
        let uri: Uri = format!("http://{address}/stats").parse().unwrap();
        let error = fetch_within(&uri, 20_000).unwrap_err();
        assert!(error.contains("length limit exceeded"), "{error}");
        let sent = peer.join().unwrap();
        assert!(sent < 4 * MAX_ANSWER_BYTES, "the peer wrote {sent} bytes");
    }
}
