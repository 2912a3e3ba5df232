//! The `ferry` command line: flag definitions and the command implementations the binary
//! dispatches to.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};

use crate::client::{self, Destination};
use crate::config::{Config, DEFAULT_LISTEN};
use crate::server::Daemon;

/// Exit code for a configuration that cannot be used (EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;
/// Exit code when a message was not delivered.
const EXIT_NOT_DELIVERED: u8 = 1;

/// ferry forwards messages from compute nodes to Kafka and RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "ferry", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: accept messages over gRPC and forward them.
    ///
    /// Example: ferry serve --config /etc/ferry/ferry.toml
    Serve(ServeArgs),
    /// Send one message through a ferry daemon.
    ///
    /// Example: ferry send kafka --brokers kafka1:9092 --topic events --data '{"a":1}'
    #[command(subcommand)]
    Send(SendCommand),
}

/// Flags of `ferry serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (see config/ferry.toml); without it, built-in defaults.
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address, overriding the config's server.listen.
    #[arg(long)]
    pub listen: Option<String>,
}

/// Targets of `ferry send`.
#[derive(Debug, Subcommand)]
pub enum SendCommand {
    /// Send to a Kafka topic.
    Kafka {
        /// Bootstrap brokers of the cluster, host:port, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        brokers: Vec<String>,
        /// The topic.
        #[arg(long)]
        topic: String,
        /// Payload and daemon.
        #[command(flatten)]
        common: SendArgs,
    },
    /// Send to a RabbitMQ exchange.
    Rabbitmq {
        /// AMQP URL of the server, e.g. amqp://user:pass@host:5672/%2f.
        #[arg(long)]
        server: String,
        /// The exchange (declared durable, type topic).
        #[arg(long)]
        exchange: String,
        /// The routing key.
        #[arg(long, default_value = "")]
        routing_key: String,
        /// Payload and daemon.
        #[command(flatten)]
        common: SendArgs,
    },
}

/// Flags shared by every `ferry send` target.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The ferry daemon, host:port.
    #[arg(long, env = "FERRY_PROXY", default_value = DEFAULT_LISTEN)]
    pub proxy: String,
    /// The payload as a string.
    #[arg(long, conflicts_with = "file")]
    pub data: Option<String>,
    /// Read the payload from this file (default: standard input).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Give up after this many milliseconds in all.
    #[arg(long, default_value_t = 7_000)]
    pub timeout_ms: u64,
}

/// `ferry serve`: runs the daemon until SIGTERM or SIGINT.
pub fn serve(args: ServeArgs) -> ExitCode {
    let config = match &args.config {
        Some(path) => Config::from_file(path),
        None => Ok(Config::default()),
    };
    let settings = config.and_then(|mut config| {
        if let Some(listen) = args.listen {
            config.server.listen = listen;
        }
        config.validate()
    });
    let settings = match settings {
        Ok(settings) => settings,
        Err(error) => {
            log::error!("{error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let daemon = match Daemon::start(settings) {
        Ok(daemon) => daemon,
        Err(error) => {
            log::error!("Cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|runtime| runtime.block_on(crate::signal::terminated()));
    if let Err(error) = signals {
        log::error!("Cannot wait for signals: {error}");
    }
    match daemon.stop() {
        Ok(()) => {
            log::info!("Stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            log::error!("Stopped with an error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `ferry send`: sends one message; exit 0 when delivered, 1 with one line on stderr when not.
pub fn send(command: SendCommand) -> ExitCode {
    let (destination, common) = match command {
        SendCommand::Kafka {
            brokers,
            topic,
            common,
        } => (Destination::Kafka { brokers, topic }, common),
        SendCommand::Rabbitmq {
            server,
            exchange,
            routing_key,
            common,
        } => (
            Destination::RabbitMq {
                server,
                exchange,
                routing_key,
            },
            common,
        ),
    };
    let data = match read_payload(&common) {
        Ok(data) => data,
        Err(error) => {
            eprintln!("ferry: cannot read the payload: {error}");
            return ExitCode::from(EXIT_NOT_DELIVERED);
        }
    };
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| {
            let timeout = Duration::from_millis(common.timeout_ms);
            runtime
                .block_on(client::send(&common.proxy, destination, data, timeout))
                .map_err(|e| e.to_string())
        });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ferry: {error}");
            ExitCode::from(EXIT_NOT_DELIVERED)
        }
    }
}

/// The payload from `--data`, `--file` or standard input.
fn read_payload(args: &SendArgs) -> std::io::Result<Bytes> {
    if let Some(data) = &args.data {
        return Ok(Bytes::from(data.clone().into_bytes()));
    }
    if let Some(path) = &args.file {
        return std::fs::read(path).map(Bytes::from);
    }
    let mut buffer = Vec::new();
    std::io::stdin().read_to_end(&mut buffer)?;
    Ok(Bytes::from(buffer))
}
