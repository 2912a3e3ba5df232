//! `ferry reload`: SIGHUP to the daemon of a pid file, then its `/stats` until the outcome
//! shows; without a pid file, `POST /reload` to its operations endpoint, which answers the
//! outcome (the daemon's build only: it reloads a daemon on the login node).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use http::Uri;

use super::locate::ConfigArg;
use super::ops::{post_within, read_report, stats_uri};
use super::{EXIT_NOT_DELIVERED, EXIT_USAGE, fail};
use crate::report::{ConfigStatus, Report};

/// Flags of `ferry reload`.
#[derive(Debug, Args)]
#[command(after_help = "\
The daemon re-reads its config file: routes, the allowlist and the token change at once;
messages in flight are untouched. An invalid file is refused whole and the old config keeps
serving. Fields that cannot change live (listeners, workers, bounds) are reported as
needing a restart. SIGHUP does the same. With a pid file (--pid-file, or ops.pid_file in
--config) the daemon is signalled; without one it is asked over its operations endpoint
(POST /reload over loopback, answered only to root and the daemon's user).

Examples:
  ferry reload --config /etc/ferry/ferry.toml      # pid file and ops endpoint from the config
  ferry reload --http 127.0.0.1:33384              # no pid file: over the ops endpoint
  ferry reload --pid-file /var/run/ferry/ferry.pid --http 127.0.0.1:33384")]
pub struct ReloadArgs {
    /// The daemon's config file, for its ops.pid_file and ops.listen.
    #[command(flatten)]
    pub config: ConfigArg,
    /// The daemon's pid file (instead of the config's ops.pid_file).
    /// Example: --pid-file /var/run/ferry/ferry.pid
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<std::path::PathBuf>,
    /// The daemon's operations endpoint, to confirm the reload (instead of the config's
    /// ops.listen). Example: --http 127.0.0.1:33384
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// Wait this long for the daemon to confirm. Example: --timeout-ms 5000
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// Sends SIGHUP to the daemon of the pid file and waits for `/stats` to show the outcome:
/// exit 0 when the new config serves, 1 when it was refused (with the reason) or no
/// answer came, 2 for a usage error.
pub fn reload(args: ReloadArgs) -> ExitCode {
    // Only [ops] is read here, leniently: the daemon judges the rest, and an invalid
    // file must reach it to be refused (and counted) there.
    let ops = match args
        .config
        .locate_unless(args.pid_file.is_some() && args.http.is_some())
    {
        Ok(located) => located,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    let pid_file = args.pid_file.clone().or_else(|| ops.pid_file.clone());
    let Some(pid_file) = pid_file else {
        return reload_over_http(&ops.ops_address(args.http.as_deref()), args.timeout_ms);
    };
    let pid = match held_pid(&pid_file) {
        Ok(pid) => pid,
        Err(code) => return code,
    };
    let http = ops.ops_address(args.http.as_deref());
    let uri = match stats_uri(&http) {
        Ok(uri) => uri,
        Err(code) => return code,
    };
    let before = read_report(&uri, args.timeout_ms).ok().map(|r| r.config);
    if let Err(error) = rustix::process::kill_process(pid, rustix::process::Signal::HUP) {
        return fail(
            EXIT_NOT_DELIVERED,
            format!("cannot signal process {pid:?}: {error}"),
        );
    }
    let Some(before) = before else {
        // The reload may have been refused, or have widened access: not knowing is a failure.
        return fail(
            EXIT_NOT_DELIVERED,
            format!(
                "sent SIGHUP to {pid:?}, but {http} does not answer, so the outcome is unknown: \
                 give --http with the daemon's ops address (ops.listen when it started) and \
                 look at config in ferry stats"
            ),
        );
    };
    match await_reload(&uri, &before, args.timeout_ms) {
        Some(Ok(report)) => {
            print_reloaded(&report);
            ExitCode::SUCCESS
        }
        Some(Err(last_error)) => fail(
            EXIT_NOT_DELIVERED,
            format!("reload refused, the old config keeps serving: {last_error}"),
        ),
        None => fail(
            EXIT_NOT_DELIVERED,
            format!(
                "sent SIGHUP to {pid:?}, and {http} showed no reload within {} ms",
                args.timeout_ms
            ),
        ),
    }
}

/// Asks the daemon at ops address `http` to reload (`POST /reload`) and reports the
/// outcome it answers: exit 0 applied, 1 refused or unknown, 2 for a bad address.
fn reload_over_http(http: &str, timeout_ms: u64) -> ExitCode {
    let stats = match stats_uri(http) {
        Ok(uri) => uri,
        Err(code) => return code,
    };
    let Ok(uri) = format!(
        "http://{}/reload",
        stats.authority().map_or("", |a| a.as_str())
    )
    .parse::<Uri>() else {
        return fail(EXIT_USAGE, format!("invalid ops address {http:?}"));
    };
    let (status, body) = match post_until_taken(&uri, timeout_ms) {
        Ok(answer) => answer,
        Err(error) => {
            return fail(
                EXIT_NOT_DELIVERED,
                format!(
                    "cannot ask {http} to reload ({error}): give --http with the daemon's ops \
                     address, or --pid-file with its pid file"
                ),
            );
        }
    };
    let config: Option<ConfigStatus> = serde_json::from_slice(&body).ok();
    match (status, config) {
        (200, Some(_)) => match read_report(&stats, timeout_ms) {
            Ok(report) => {
                print_reloaded(&report);
                ExitCode::SUCCESS
            }
            Err(_) => {
                println!("reloaded");
                ExitCode::SUCCESS
            }
        },
        (409, Some(config)) => fail(
            EXIT_NOT_DELIVERED,
            format!(
                "reload refused, the old config keeps serving: {}",
                config.last_error
            ),
        ),
        (status, _) => fail(
            EXIT_NOT_DELIVERED,
            format!(
                "{http} answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ),
        ),
    }
}

/// POSTs to `uri` until the answer is not 429 (another reload waiting, or one within the
/// last second), for at most `timeout_ms` in all; the last answer.
fn post_until_taken(uri: &Uri, timeout_ms: u64) -> Result<(u16, bytes::Bytes), String> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        let answer = post_within(uri, left.max(1))?;
        if answer.0 != 429 || Instant::now() + Duration::from_millis(250) >= deadline {
            return Ok(answer);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The process that holds `pid_file` locked, as the kernel says (not the number in the
/// file: a stale file may name any process, and a daemon that is starting has locked its
/// file before writing its pid); else the exit code, the reason printed.
fn held_pid(pid_file: &std::path::Path) -> Result<rustix::process::Pid, ExitCode> {
    let holder = crate::daemon::pid_file::holder(pid_file).map_err(|error| {
        fail(
            EXIT_USAGE,
            format!("cannot read {}: {error}", pid_file.display()),
        )
    })?;
    let Some(pid) = holder else {
        return Err(fail(
            EXIT_NOT_DELIVERED,
            format!(
                "no running ferry holds {} (the file is stale): is the daemon running, with \
                 this pid file?",
                pid_file.display()
            ),
        ));
    };
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    pid.ok_or_else(|| {
        fail(
            EXIT_USAGE,
            format!("{} is held by no valid pid", pid_file.display()),
        )
    })
}

/// Polls `/stats` at `uri` for `timeout_ms` until the daemon counts a reload beyond
/// `before`: the report once one is applied, the reason once one is refused, `None` if
/// neither happened in time.
fn await_reload(
    uri: &Uri,
    before: &ConfigStatus,
    timeout_ms: u64,
) -> Option<Result<Report, String>> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let Ok(report) = read_report(uri, timeout_ms) else {
            continue;
        };
        if report.config.reload_failures > before.reload_failures {
            return Some(Err(report.config.last_error));
        }
        if report.config.reloads > before.reloads {
            return Some(Ok(report));
        }
    }
    None
}

/// What `ferry reload` prints of an applied reload: the config's hash, its routes, the
/// fields that need a restart and what it widens.
fn print_reloaded(report: &Report) {
    let config = &report.config;
    let restart = if config.needs_restart.is_empty() {
        String::new()
    } else {
        format!(
            "; needs a restart to apply: {}",
            config.needs_restart.join(", ")
        )
    };
    println!(
        "reloaded: config {} with {} routes{restart}",
        config.hash,
        report.routes.len()
    );
    for widened in &config.widened {
        println!("widens access: {widened}");
    }
}
