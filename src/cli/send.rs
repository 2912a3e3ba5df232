//! `ferry send`: one message to a Kafka topic or a RabbitMQ exchange, through ferry
//! daemons with failover.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Args, Subcommand};

use super::{
    ConnectArgs, EXIT_NOT_DELIVERED, EXIT_USAGE, LimitArgs, block_on, fail, policy, through_daemons,
};
use crate::client::lines::{describe_failures, split_lines};
use crate::client::{Client, Destination};
use crate::config::DEFAULT_LISTEN;

/// Examples shown by `ferry send kafka --help`.
const KAFKA_EXAMPLES: &str = "\
Examples:
  ferry send kafka --brokers kafka1:9092,kafka2:9092 --topic nwp.events --data '{\"step\":24}'
  ferry send kafka --brokers kafka1:9092 --topic nwp.events --file event.json \\
      --proxy login1:33383,login2:33383
  echo '{\"step\":24}' | ferry send kafka --brokers kafka1:9092 --topic nwp.events || true
  # one message per line of a file, over one stream, each acknowledged:
  ferry send kafka --brokers kafka1:9092 --topic nwp.events --lines --file events.jsonl";

/// Examples shown by `ferry send rabbitmq --help`.
const RABBITMQ_EXAMPLES: &str = "\
Examples:
  ferry send rabbitmq --server amqp://user:pass@mq1:5672/%2f --exchange nwp.events \\
      --routing-key gfs.fcst.024 --data '{\"step\":24}'
  ferry send rabbitmq --server amqp://mq1:5672/%2f --exchange nwp.events --file event.json \\
      --proxy login1:33383,login2:33383 --attempts 3 --timeout-ms 10000";

/// Targets of `ferry send`.
#[derive(Debug, Subcommand)]
pub enum SendCommand {
    /// Send to a Kafka topic (acknowledged by all in-sync replicas).
    #[command(after_help = KAFKA_EXAMPLES)]
    Kafka {
        /// Bootstrap brokers of the cluster, host:port, comma-separated.
        /// Example: --brokers kafka1:9092,kafka2:9092
        #[arg(
            long,
            value_delimiter = ',',
            required = true,
            value_name = "HOST:PORT,..."
        )]
        brokers: Vec<String>,
        /// The topic. Example: --topic nwp.events
        #[arg(long)]
        topic: String,
        /// The payload.
        #[command(flatten)]
        payload: PayloadArgs,
        /// The daemons and the time limits.
        #[command(flatten)]
        delivery: DeliveryArgs,
    },
    /// Send to a RabbitMQ exchange (persistent, with a publisher confirm).
    #[command(after_help = RABBITMQ_EXAMPLES)]
    Rabbitmq {
        /// AMQP URL of the server. Example: --server amqp://user:pass@mq1:5672/%2f
        #[arg(long, value_name = "URL")]
        server: String,
        /// The exchange; declared durable, type topic, if missing. Example: --exchange nwp.events
        #[arg(long)]
        exchange: String,
        /// The routing key. Example: --routing-key gfs.fcst.024
        #[arg(long, default_value = "")]
        routing_key: String,
        /// The payload.
        #[command(flatten)]
        payload: PayloadArgs,
        /// The daemons and the time limits.
        #[command(flatten)]
        delivery: DeliveryArgs,
    },
}

/// The most `--file` or standard input may hold: the payload (or, with `--lines`, every
/// line) is held in memory until the daemons have answered.
pub const MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;

/// Where the payload comes from; standard input when neither flag is given.
#[derive(Debug, Args)]
pub struct PayloadArgs {
    /// The payload as a string. Example: --data '{"step":24}'
    #[arg(long, conflicts_with_all = ["file", "lines"])]
    pub data: Option<String>,
    /// Read the payload from this file, byte for byte. Example: --file event.json
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Send each line of --file or standard input as its own message (without its newline),
    /// all over one stream, each acknowledged. Exit 0 only if every line was delivered;
    /// otherwise 1, with the failed line numbers and why on stderr. Example: --lines
    #[arg(long)]
    pub lines: bool,
}

impl PayloadArgs {
    /// The payload from `--data`, `--file` or standard input (which must not be a terminal),
    /// at most [`MAX_INPUT_BYTES`].
    fn read(self) -> Result<Bytes, String> {
        if let Some(data) = self.data {
            return Ok(Bytes::from(data));
        }
        let (reader, name): (Box<dyn Read>, String) = match self.file {
            Some(path) => {
                let file = std::fs::File::open(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                (Box::new(file), path.display().to_string())
            }
            None => {
                let stdin = std::io::stdin();
                if stdin.is_terminal() {
                    return Err(
                        "no payload: give --data, --file, or pipe it on standard input".into(),
                    );
                }
                (Box::new(stdin), "standard input".to_owned())
            }
        };
        let mut buffer = Vec::new();
        reader
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut buffer)
            .map_err(|e| format!("cannot read {name}: {e}"))?;
        if buffer.len() as u64 > MAX_INPUT_BYTES {
            return Err(format!(
                "{name} holds more than {MAX_INPUT_BYTES} bytes, the most one send takes"
            ));
        }
        Ok(Bytes::from(buffer))
    }
}

/// Which daemons to send through and how long to try.
#[derive(Debug, Args)]
pub struct DeliveryArgs {
    /// ferry daemons, host:port, comma-separated, tried in this order: a daemon that is
    /// unreachable or cannot deliver moves the message to the next.
    /// Example: --proxy login1:33383,login2:33383
    #[arg(
        long,
        env = "FERRY_PROXY",
        value_delimiter = ',',
        default_value = DEFAULT_LISTEN,
        value_name = "ADDR,..."
    )]
    pub proxy: Vec<String>,
    /// Attempts per daemon (1-10); attempt n may take n × --attempt-timeout-ms.
    /// Example: --attempts 3
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub attempts: u32,
    /// Time limits.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Bearer token and TLS.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Sends one message; exit 0 when delivered, 1 with one line on stderr when not, 2 for a
/// usage error.
pub fn send(command: SendCommand) -> ExitCode {
    let (destination, payload, delivery) = match command {
        SendCommand::Kafka {
            brokers,
            topic,
            payload,
            delivery,
        } => (Destination::Kafka { brokers, topic }, payload, delivery),
        SendCommand::Rabbitmq {
            server,
            exchange,
            routing_key,
            payload,
            delivery,
        } => (
            Destination::RabbitMq {
                server,
                exchange,
                routing_key,
            },
            payload,
            delivery,
        ),
    };
    let policy = match policy(delivery.attempts, delivery.limits.attempt_timeout_ms) {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    let lines = payload.lines;
    let payload = match payload.read() {
        Ok(payload) => payload,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    if lines {
        return send_lines(&delivery, policy, &destination, &payload);
    }
    through_daemons(
        &delivery.proxy,
        policy,
        &delivery.limits,
        &delivery.connect,
        &destination,
        payload,
    )
}

/// How many line ranges `--lines` prints per reason on failure.
const MAX_RANGES_SHOWN: usize = 20;

/// `ferry send --lines`: every line of `input` as its own message over one stream.
fn send_lines(
    delivery: &DeliveryArgs,
    policy: ferry_actors::RetryPolicy,
    destination: &Destination,
    input: &Bytes,
) -> ExitCode {
    let deadline = delivery
        .limits
        .timeout_ms
        .map(std::time::Duration::from_millis);
    let client = match Client::new(&delivery.proxy, policy, deadline) {
        Ok(client) => client,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    let client = match delivery.connect.apply(client) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let lines = split_lines(input);
    let outcome = match block_on(client.send_many(destination, &lines)) {
        Ok(outcome) => outcome,
        Err(code) => return code,
    };
    log::info!(
        "{} of {} lines delivered, {} spooled, in {} ms",
        outcome.delivered,
        lines.len(),
        outcome.spooled,
        outcome.elapsed.as_millis()
    );
    if outcome.spooled > 0 {
        eprintln!(
            "ferry: {} of {} lines spooled by the daemon (delivered when the broker is back)",
            outcome.spooled,
            lines.len()
        );
    }
    if outcome.failed.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "ferry: {} of {} lines not delivered ({} ms):",
        outcome.failed.len(),
        lines.len(),
        outcome.elapsed.as_millis()
    );
    for line in describe_failures(&outcome.failed, MAX_RANGES_SHOWN) {
        eprintln!("ferry: {}", line.replace(['\n', '\r'], " "));
    }
    ExitCode::from(EXIT_NOT_DELIVERED)
}
