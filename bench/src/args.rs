//! The `ferry-bench` command line.

use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};

use crate::BenchError;
use crate::plan::{Destination, Mode, Pace, Plan};

/// Benchmarks a running ferry daemon against the broker it forwards to.
#[derive(Debug, Parser)]
#[command(name = "ferry-bench", version)]
pub struct Cli {
    /// What to measure.
    #[command(subcommand)]
    pub command: Command,
}

/// The measurements.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Throughput and latency of one workload, direct and through the daemon.
    ///
    /// Example: ferry-bench load --daemon 127.0.0.1:33383 kafka --brokers 127.0.0.1:9092 --topic bench -n 100000 -c 64
    Load(LoadArgs),
    /// The daemon's memory: idle, and per cached target after one message to each of
    /// COUNT RabbitMQ exchanges (the daemon must run on this machine).
    ///
    /// Example: ferry-bench targets --daemon-pid 1234 --server amqp://guest:guest@127.0.0.1:5672/%2f --count 1000
    Targets(crate::targets::TargetsArgs),
}

/// `ferry-bench load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The daemon's gRPC address. Example: --daemon 127.0.0.1:33383
    #[arg(long, default_value = "127.0.0.1:33383")]
    pub daemon: String,
    /// The daemon's process id, to report its CPU time per message (user + system, all
    /// its threads) for each run through it; `direct` runs then report the bench
    /// process's own (the broker client's cost without a daemon). Example: --daemon-pid 4242
    #[arg(long, value_name = "PID")]
    pub daemon_pid: Option<u32>,
    /// Messages per run and mode. Example: -n 100000
    #[arg(short = 'n', long, default_value_t = 20_000)]
    pub messages: u64,
    /// Messages in flight at once (with --rate: the most allowed). Example: -c 64
    #[arg(short = 'c', long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections to the daemon (unary calls and streams are spread over them).
    /// Example: --connections 8
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Payload size in bytes. Example: --size 200
    #[arg(short = 's', long, default_value_t = 200)]
    pub size: usize,
    /// Modes to run, in this order each round. Example: --modes direct,unary
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,unary,stream"
    )]
    pub modes: Vec<Mode>,
    /// Rounds; each prints its figures and the summary gives medians. Example: --runs 3
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Send at this steady rate (msg/s) instead of as fast as possible; latency then
    /// counts from when the pacer released each message. Example: --rate 1000
    #[arg(long)]
    pub rate: Option<u32>,
    /// Messages sent each way before measuring (connections, producers, metadata).
    #[arg(long, default_value_t = 1_000)]
    pub warm_up: u64,
    /// librdkafka linger.ms of the direct producer; ferry's default is 1.
    #[arg(long, default_value_t = 1)]
    pub linger_ms: u32,
    /// Longest one message may take before it counts as an error, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub message_timeout_ms: u64,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Do not prepare or count the destination (for a broker that is down on purpose, so
    /// that the daemon's spool takes every message; only daemon modes make sense).
    #[arg(long)]
    pub no_broker_count: bool,
    /// Where the messages go.
    #[command(subcommand)]
    pub destination: DestinationArgs,
}

/// `kafka ...` or `rabbitmq ...`.
#[derive(Debug, Subcommand)]
pub enum DestinationArgs {
    /// A Kafka topic (created with one partition if missing).
    Kafka {
        /// Bootstrap addresses. Example: --brokers 127.0.0.1:9092
        #[arg(long, value_delimiter = ',', required = true)]
        brokers: Vec<String>,
        /// The topic. Example: --topic ferry-bench
        #[arg(long, default_value = "ferry-bench")]
        topic: String,
    },
    /// A RabbitMQ exchange; a durable queue bound to it holds what is sent (it is
    /// purged before each run and deleted at the end).
    Rabbitmq {
        /// AMQP URL. Example: --server amqp://guest:guest@127.0.0.1:5672/%2f
        #[arg(long)]
        server: String,
        /// The exchange. Example: --exchange ferry.bench
        #[arg(long, default_value = "ferry.bench")]
        exchange: String,
        /// The routing key. Example: --routing-key bench.event
        #[arg(long, default_value = "bench.event")]
        routing_key: String,
        /// Spread the messages over this many exchanges of the server, EXCHANGE.0 …
        /// EXCHANGE.N-1 in turn (1: EXCHANGE itself). Example: --spread 100
        #[arg(long, default_value_t = 1)]
        spread: u32,
    },
}

impl LoadArgs {
    /// Checks the flags and builds the plan.
    pub fn plan(self) -> Result<Plan, BenchError> {
        let usage = |s: &str| Err(BenchError::Usage(s.to_owned()));
        if self.messages == 0 || self.concurrency == 0 || self.connections == 0 {
            return usage("-n, -c and --connections must be at least 1");
        }
        if self.runs == 0 || self.modes.is_empty() {
            return usage("--runs and --modes must name at least one run");
        }
        if self.rate == Some(0) {
            return usage("--rate must be at least 1");
        }
        if self.rate.is_some() && self.modes.contains(&Mode::Stream) {
            return usage("--rate paces unary and direct sends; leave stream out of --modes");
        }
        let mut modes = self.modes;
        modes.dedup();
        let destination = match self.destination {
            DestinationArgs::Kafka { brokers, topic } => Destination::Kafka { brokers, topic },
            DestinationArgs::Rabbitmq {
                server,
                exchange,
                routing_key,
                spread,
            } => Destination::RabbitMq {
                server,
                exchanges: match spread {
                    0 => return usage("--spread must be at least 1"),
                    1 => vec![exchange],
                    n => (0..n).map(|i| format!("{exchange}.{i}")).collect(),
                },
                routing_key,
            },
        };
        // ASCII digits (a JSON number): printable, like the text events ferry carries.
        let payload = Bytes::from(
            (0..self.size)
                .map(|i| b"0123456789"[i % 10])
                .collect::<Vec<u8>>(),
        );
        Ok(Plan {
            daemon: self.daemon,
            daemon_pid: self.daemon_pid,
            destination,
            messages: self.messages,
            concurrency: self.concurrency,
            connections: self.connections.min(self.concurrency),
            payload,
            modes,
            runs: self.runs,
            pace: self.rate.map_or(Pace::ClosedLoop, Pace::Rate),
            warm_up: self.warm_up,
            linger_ms: self.linger_ms,
            message_timeout: Duration::from_millis(self.message_timeout_ms),
            progress: !self.quiet,
            count: !self.no_broker_count,
        })
    }
}
