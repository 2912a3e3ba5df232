//! The `ferry` command line: flag definitions and the command implementations the binary
//! dispatches to. Each command parses its flags, calls the library and maps the outcome
//! to an exit code.
//!
//! - [`serve`]: the daemon.
//! - [`send`]: one message (or `--lines`, many) of any payload to a Kafka topic, a
//!   RabbitMQ exchange or a named route, through daemons with failover
//!   ([`crate::client::deliver`]).
//! - [`event`]: the predecessor's `ecflow-client`, `production` and `log` commands, drop-in.
//! - [`ops`]: `check` (for ecFlow), `stats` (for a human) and `routes` (a daemon's named
//!   routes); `reload`: SIGHUP, then the outcome; `top`: the live
//!   view.
//! - [`spool`]: `ferry spool`: list what a spool holds; export, requeue or purge dead
//!   letters; salvage a damaged database (the writing ones with the daemon stopped).

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::deliver::{self, DeliverError, Options, Outcome};

pub mod event;
pub mod locate;
pub mod ops;
#[cfg(feature = "daemon")]
pub mod reload;
pub mod send;
#[cfg(feature = "daemon")]
pub mod serve;
#[cfg(feature = "daemon")]
pub mod spool;
#[cfg(feature = "daemon")]
pub mod top;

/// Exit code when a message was not delivered.
pub const EXIT_NOT_DELIVERED: u8 = 1;
/// Exit code for flags or input that cannot be used (clap's own code for usage errors).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a daemon configuration that cannot be used (EX_CONFIG).
pub const EXIT_BAD_CONFIG: u8 = 64;
/// Exit code of `ferry check` for a daemon that serves but is degraded.
pub const EXIT_DEGRADED: u8 = 3;

/// Exit codes, shown at the end of `ferry --help`: the client commands' and `check`'s,
/// then (in the daemon's build) `serve`'s and `spool`'s.
const EXIT_CODES: &str = concat!(
    "\
Exit codes of the client commands (send, ecflow-client, production, log):
  0  delivered: the broker confirmed the message (or --disable-send)
  1  not delivered: one line on stderr says why, for each daemon tried
  2  usage error: a flag or the payload cannot be used
`ferry check` exits 0 when the daemon serves, 1 when it does not (restart it) and, with
--http, 3 when it serves but is degraded (look at the reasons it prints; do not restart);
given several daemons, 0 when all serve, 1 when none does, 3 when some do.",
    daemon_exit_codes!()
);

/// The exit codes of the daemon's own commands, in the daemon's build.
#[cfg(feature = "daemon")]
macro_rules! daemon_exit_codes {
    () => {
        "
`ferry serve` exits 0 after a clean stop, 64 when its configuration is invalid and 74 when
its spool cannot be used (the message says what to fix; nothing in it was moved).
`ferry spool` exits 74 when the spool cannot be read or written and 75 when a running
daemon holds it."
    };
}
/// The static client has no daemon commands.
#[cfg(not(feature = "daemon"))]
macro_rules! daemon_exit_codes {
    () => {
        ""
    };
}
use daemon_exit_codes;

/// ferry forwards messages from compute nodes to Kafka and RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text (the default) or one JSON object per line; overrides
    /// `ops.log_format`.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<crate::logging::LogFormat>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: accept messages over gRPC and forward them.
    ///
    /// Example: ferry serve --config /etc/ferry/ferry.toml
    #[cfg(feature = "daemon")]
    Serve(serve::ServeArgs),
    /// Send one message through ferry daemons to a route or a target, failing over from one
    /// daemon to the next.
    Send(Box<send::SendArgs>),
    /// Send an ecflow_client event (drop-in for the predecessor's command).
    EcflowClient(event::EcflowClientArgs),
    /// Send a product event (drop-in for the predecessor's command).
    Production(event::ProductionArgs),
    /// Send a log event (drop-in for the predecessor's command).
    Log(event::LogArgs),
    /// Check that a daemon serves (grpc.health.v1): exit 0 if it does, 1 if not.
    Check(ops::CheckArgs),
    /// Print a daemon's per-producer stats as a table.
    Stats(ops::StatsArgs),
    /// List the routes a daemon serves (names and kinds, never addresses or credentials).
    Routes(ops::RoutesArgs),
    /// Make a daemon re-read its config (SIGHUP) and report the outcome.
    #[cfg(feature = "daemon")]
    Reload(reload::ReloadArgs),
    /// List what a spool directory holds, per target, without a daemon; export, requeue
    /// and salvage its dead letters and damaged databases.
    ///
    /// Example: ferry spool --dir /var/spool/ferry
    #[cfg(feature = "daemon")]
    Spool(spool::SpoolArgs),
    /// Watch one daemon or several live: per target rate, failures, p99, state and spool,
    /// trouble first (`--once` prints one table for scripts).
    ///
    /// Example: ferry top --http 127.0.0.1:33384
    #[cfg(feature = "daemon")]
    Top(top::TopArgs),
}

impl Command {
    /// The log level when `RUST_LOG` is not set: the daemon reports its life at info,
    /// the client commands stay quiet unless something is wrong.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            #[cfg(feature = "daemon")]
            Self::Serve(_) => "info",
            _ => "warn",
        }
    }
}

/// Runs `command` to completion.
pub fn run(command: Command) -> ExitCode {
    match command {
        #[cfg(feature = "daemon")]
        Command::Serve(args) => serve::serve(args),
        Command::Send(args) => send::send(*args),
        Command::EcflowClient(args) => event::ecflow_client(args),
        Command::Production(args) => event::production(args),
        Command::Log(args) => event::log(args),
        Command::Check(args) => ops::check(args),
        Command::Stats(args) => ops::stats(args),
        Command::Routes(args) => ops::routes(args),
        #[cfg(feature = "daemon")]
        Command::Reload(args) => reload::reload(args),
        #[cfg(feature = "daemon")]
        Command::Spool(args) => spool::run(args),
        #[cfg(feature = "daemon")]
        Command::Top(args) => top::top(args),
    }
}

/// The time limits of every client command.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Time step of the attempts: attempt n may take n × this. Example: --attempt-timeout-ms 1000
    #[arg(long, default_value_t = 2_000, value_name = "MS")]
    pub attempt_timeout_ms: u64,
    /// Give up after this long in all, even with daemons left to try. Without it the bound
    /// is (1 + … + attempts) × attempt timeout per daemon: 6 s per daemon by default.
    /// Example: --timeout-ms 5000
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
}

/// How to reach daemons that require a bearer token or TLS.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// File holding the bearer token the daemons require ([access] token_file).
    /// Example: --token-file ~/.ferry/token
    #[arg(long, env = "FERRY_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<std::path::PathBuf>,
    /// Speak TLS to the daemons, trusting the CA certificate(s) in this PEM file.
    /// Example: --tls-ca /etc/ferry/ca.pem
    #[arg(long, env = "FERRY_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<std::path::PathBuf>,
}

/// The client options of a sending command: its daemons, `attempts` per daemon, its time
/// limits and how it connects.
fn options(
    daemons: &[String],
    attempts: u32,
    limits: &LimitArgs,
    connect: &ConnectArgs,
) -> Options {
    Options {
        daemons: daemons.to_vec(),
        attempts,
        attempt_timeout: Duration::from_millis(limits.attempt_timeout_ms),
        deadline: limits.timeout_ms.map(Duration::from_millis),
        token_file: connect.token_file.clone(),
        tls_ca_file: connect.tls_ca.clone(),
    }
}

/// Prints what came of a message (a spooled one on stderr, a delivered one in the log)
/// and returns the command's exit code.
fn report(result: Result<Outcome, DeliverError>) -> ExitCode {
    match result {
        Ok(Outcome::Spooled(spooled)) => {
            // Accepted, durable on the daemon's disk: delivered when the broker is back.
            eprintln!(
                "ferry: spooled via {} (id {}): {}",
                spooled.daemon, spooled.answer.id, spooled.answer.message
            );
            ExitCode::SUCCESS
        }
        Ok(Outcome::Delivered(delivered)) => {
            log::info!(
                "Delivered via {} (attempt {}) id={} partition={:?} offset={:?}",
                delivered.daemon,
                delivered.attempts,
                delivered.answer.id,
                delivered.answer.partition,
                delivered.answer.offset
            );
            ExitCode::SUCCESS
        }
        Ok(Outcome::Published { to, attempts }) => {
            log::info!("Published to {to} (attempt {attempts})");
            ExitCode::SUCCESS
        }
        Err(error) => exit(error),
    }
}

/// The exit code of a message not sent, with its one line on stderr.
fn exit(error: DeliverError) -> ExitCode {
    match error {
        DeliverError::Usage(reason) => fail(EXIT_USAGE, reason),
        DeliverError::NotDelivered(reason) => fail(EXIT_NOT_DELIVERED, reason),
    }
}

/// Prints `message` as the one line a client command writes on failure and returns `code`.
pub(crate) fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    let line = message.to_string().replace(['\n', '\r'], " ");
    eprintln!("ferry: {line}");
    ExitCode::from(code)
}

/// Runs `future` on a runtime on the calling thread (see [`deliver::block_on`]).
fn block_on<F: Future>(future: F) -> Result<F::Output, ExitCode> {
    deliver::block_on(future).map_err(exit)
}
