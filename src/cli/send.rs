//! `ferry send`: one message to a Kafka topic or a RabbitMQ exchange, through ferry
//! daemons with failover.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Args, Subcommand};

use super::{ConnectArgs, EXIT_USAGE, LimitArgs, fail, policy, through_daemons};
use crate::client::Destination;
use crate::config::DEFAULT_LISTEN;

/// Examples shown by `ferry send kafka --help`.
const KAFKA_EXAMPLES: &str = "\
Examples:
  ferry send kafka --brokers kafka1:9092,kafka2:9092 --topic nwp.events --data '{\"step\":24}'
  ferry send kafka --brokers kafka1:9092 --topic nwp.events --file event.json \\
      --proxy login1:33383,login2:33383
  echo '{\"step\":24}' | ferry send kafka --brokers kafka1:9092 --topic nwp.events || true";

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

/// Where the payload comes from; standard input when neither flag is given.
#[derive(Debug, Args)]
pub struct PayloadArgs {
    /// The payload as a string. Example: --data '{"step":24}'
    #[arg(long, conflicts_with = "file")]
    pub data: Option<String>,
    /// Read the payload from this file, byte for byte. Example: --file event.json
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

impl PayloadArgs {
    /// The payload from `--data`, `--file` or standard input (which must not be a terminal).
    fn read(self) -> Result<Bytes, String> {
        if let Some(data) = self.data {
            return Ok(Bytes::from(data));
        }
        if let Some(path) = self.file {
            return std::fs::read(&path)
                .map(Bytes::from)
                .map_err(|e| format!("cannot read {}: {e}", path.display()));
        }
        let mut stdin = std::io::stdin();
        if stdin.is_terminal() {
            return Err("no payload: give --data, --file, or pipe it on standard input".into());
        }
        let mut buffer = Vec::new();
        stdin
            .read_to_end(&mut buffer)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
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
    let payload = match payload.read() {
        Ok(payload) => payload,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    through_daemons(
        &delivery.proxy,
        policy,
        &delivery.limits,
        &delivery.connect,
        &destination,
        payload,
    )
}
