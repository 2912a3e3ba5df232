//! What to send, where, and how hard: the validated form of the command line.

use std::time::Duration;

use bytes::Bytes;

/// The broker target of every message (a benchmark names its broker; it has no routes).
#[derive(Debug, Clone)]
pub enum Destination {
    /// A Kafka topic.
    Kafka {
        /// Bootstrap addresses of the cluster.
        brokers: Vec<String>,
        /// The topic.
        topic: String,
    },
    /// A RabbitMQ exchange.
    RabbitMq {
        /// AMQP URL of the server.
        server: String,
        /// The exchanges: message `seq` goes to `exchanges[seq % len]` (one, unless the
        /// load is spread over several).
        exchanges: Vec<String>,
        /// The routing key.
        routing_key: String,
    },
}

/// "kafka" or "rabbitmq".
pub fn kind(destination: &Destination) -> &'static str {
    match destination {
        Destination::Kafka { .. } => "kafka",
        Destination::RabbitMq { .. } => "rabbitmq",
    }
}

/// One of the three ways a workload is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Mode {
    /// Straight to the broker from the bench process (the ceiling).
    Direct,
    /// Through the daemon, one unary call per message.
    Unary,
    /// Through the daemon's `ferry.v1.Ingest` stream.
    Stream,
}

impl Mode {
    /// The mode's name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Unary => "unary",
            Self::Stream => "stream",
        }
    }
}

/// How messages are paced.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as `concurrency` messages in flight allow (throughput).
    ClosedLoop,
    /// One message every 1/rate s, whatever the answers (latency at a steady rate);
    /// latency counts from when the pacer released a message, so a wait for a free
    /// in-flight slot is not hidden.
    Rate(u32),
}

/// A validated benchmark.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The daemon's gRPC address (`host:port`).
    pub daemon: String,
    /// Where messages go.
    pub destination: Destination,
    /// The daemon's pid, when its CPU time per message is to be reported.
    pub daemon_pid: Option<u32>,
    /// Messages per run and mode.
    pub messages: u64,
    /// Messages in flight at once (the bound, in rate mode).
    pub concurrency: usize,
    /// HTTP/2 connections to the daemon.
    pub connections: usize,
    /// The payload of every message.
    pub payload: Bytes,
    /// Modes, run in this order in every round.
    pub modes: Vec<Mode>,
    /// Rounds; figures are reported per run and as medians.
    pub runs: usize,
    /// Pacing.
    pub pace: Pace,
    /// Messages sent through each path before its first run, not measured.
    pub warm_up: u64,
    /// librdkafka `linger.ms` of the direct Kafka producer (ferry's default is 1).
    pub linger_ms: u32,
    /// Longest one message may take before it counts as an error.
    pub message_timeout: Duration,
    /// Print a progress line every second.
    pub progress: bool,
    /// Whether the destination is prepared and counted after each run.
    pub count: bool,
}
