//! `ferry send`: one message (or one per line) to a named route of the daemons' config,
//! a Kafka topic or a RabbitMQ exchange, with its metadata, through ferry daemons with
//! failover.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Args, Subcommand};

use super::{
    ConnectArgs, EXIT_NOT_DELIVERED, EXIT_USAGE, LimitArgs, block_on, exit, fail, options, report,
};
use crate::client::deliver::{Options, Outcome, Way, deliver};
use crate::client::lines::{describe_failures, split_lines};
use crate::client::{Destination, MessageMetadata};
use crate::contract::{DEFAULT_LISTEN, DEFAULT_MAX_MESSAGE_BYTES};
use crate::proto::ferry::v1;

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

/// Examples shown by `ferry send --help`.
const ROUTE_EXAMPLES: &str = "\
A route names a target in the daemons' config ([routes.NAME]), so the job carries no broker
address and no password; `ferry routes` lists them. `ferry send kafka|rabbitmq` names the
target itself.

Examples:
  ferry send --route nwp_events --data '{\"step\":24}' --key gfs/fcst --header source=gfs
  ferry send --route workflow --routing-key ecflow.task.complete --ttl 30s \\
      --content-type application/json --correlation-id job-4242 --file event.json
  ferry send --route nwp_events --lines --file events.jsonl --proxy login1:33383,login2:33383";

/// Flags of `ferry send`: a route, or a subcommand naming the target.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = ROUTE_EXAMPLES
)]
pub struct SendArgs {
    /// Name the target yourself instead of a route.
    #[command(subcommand)]
    pub target: Option<SendCommand>,
    /// A route of the daemons' config. Example: --route nwp_events
    #[arg(long, required = true, value_name = "NAME")]
    pub route: Option<String>,
    /// A Kafka topic instead of the route's own (where the route allows it).
    /// Example: --topic nwp.events.test
    #[arg(long, conflicts_with = "routing_key")]
    pub topic: Option<String>,
    /// An AMQP routing key instead of the route's own (where the route allows it).
    /// Example: --routing-key gfs.fcst.024
    #[arg(long)]
    pub routing_key: Option<String>,
    /// The payload.
    #[command(flatten)]
    pub payload: PayloadArgs,
    /// What the message carries besides its bytes.
    #[command(flatten)]
    pub metadata: MetadataArgs,
    /// The daemons and the time limits.
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// What to print when the message was taken.
    #[command(flatten)]
    pub print: PrintArgs,
}

/// What a message carries besides its bytes. Kafka takes --key, --partition and
/// --header; RabbitMQ takes --header and the AMQP properties.
#[derive(Debug, Args, Default)]
pub struct MetadataArgs {
    /// Kafka: the record's key (records with one key keep their order). Example: --key gfs/fcst
    #[arg(long, help_heading = "Metadata")]
    pub key: Option<String>,
    /// Kafka: the partition. Example: --partition 0
    #[arg(long, value_name = "N", help_heading = "Metadata")]
    pub partition: Option<i32>,
    /// A header NAME=VALUE (Kafka record header, AMQP text header); repeat for more.
    /// Example: --header source=gfs --header step=24
    #[arg(long = "header", value_name = "NAME=VALUE", help_heading = "Metadata")]
    pub headers: Vec<String>,
    /// RabbitMQ: the message's TTL (AMQP expiration): 500ms, 30s, 5m, 2h, or milliseconds.
    /// Example: --ttl 30s
    #[arg(long, value_parser = parse_ttl_ms, value_name = "DURATION", help_heading = "Metadata")]
    pub ttl: Option<u64>,
    /// RabbitMQ: content_type [default: text/plain]. Example: --content-type application/json
    #[arg(long, help_heading = "Metadata")]
    pub content_type: Option<String>,
    /// RabbitMQ: content_encoding. Example: --content-encoding gzip
    #[arg(long, help_heading = "Metadata")]
    pub content_encoding: Option<String>,
    /// RabbitMQ: correlation_id. Example: --correlation-id job-4242
    #[arg(long, help_heading = "Metadata")]
    pub correlation_id: Option<String>,
    /// RabbitMQ: message_id [default: the message's ferry id]. Example: --message-id 4242-24
    #[arg(long, help_heading = "Metadata")]
    pub message_id: Option<String>,
    /// RabbitMQ: type. Example: --type forecast.step
    #[arg(long = "type", help_heading = "Metadata")]
    pub kind: Option<String>,
    /// RabbitMQ: app_id. Example: --app-id gfs-post
    #[arg(long, help_heading = "Metadata")]
    pub app_id: Option<String>,
    /// RabbitMQ: priority, 0-255. Example: --priority 5
    #[arg(long, value_name = "N", help_heading = "Metadata")]
    pub priority: Option<u8>,
}

/// The broker kind a command's target is, when the client knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Kafka.
    Kafka,
    /// RabbitMQ.
    RabbitMq,
}

impl MetadataArgs {
    /// The metadata as `ferry.v1.Send` takes it, for a target of `kind` (`None`: a route,
    /// whose kind the daemon knows). Kafka flags for a RabbitMQ target, or the reverse,
    /// are an error.
    fn to_wire(&self, kind: Option<Kind>) -> Result<MessageMetadata, String> {
        let mut headers = Vec::with_capacity(self.headers.len());
        for header in &self.headers {
            let Some((name, value)) = header.split_once('=') else {
                return Err(format!("--header {header:?}: expected NAME=VALUE"));
            };
            headers.push(v1::KafkaHeader {
                name: name.to_owned(),
                value: Bytes::from(value.to_owned()),
            });
        }
        let kafka = (self.key.is_some() || self.partition.is_some()).then(|| v1::KafkaMetadata {
            key: self.key.clone().map(Bytes::from),
            headers: Vec::new(),
            partition: self.partition,
        });
        let amqp_given = self.ttl.is_some()
            || self.content_type.is_some()
            || self.content_encoding.is_some()
            || self.correlation_id.is_some()
            || self.message_id.is_some()
            || self.kind.is_some()
            || self.app_id.is_some()
            || self.priority.is_some();
        let amqp = amqp_given.then(|| v1::AmqpMetadata {
            headers: Default::default(),
            expiration_ms: self.ttl,
            content_type: self.content_type.clone(),
            content_encoding: self.content_encoding.clone(),
            correlation_id: self.correlation_id.clone(),
            message_id: self.message_id.clone(),
            r#type: self.kind.clone(),
            app_id: self.app_id.clone(),
            priority: self.priority.map(u32::from),
        });
        match (kind, &kafka, &amqp) {
            (Some(Kind::Kafka), _, Some(_)) => {
                return Err(
                    "AMQP properties (--ttl, --content-type, …) are for RabbitMQ, not Kafka".into(),
                );
            }
            (Some(Kind::RabbitMq), Some(_), _) => {
                return Err("--key and --partition are for Kafka, not RabbitMQ".into());
            }
            (None, Some(_), Some(_)) => {
                return Err(
                    "--key/--partition (Kafka) and AMQP properties (RabbitMQ) together: a route goes to one kind of broker"
                        .into(),
                );
            }
            _ => {}
        }
        Ok(MessageMetadata {
            kafka,
            amqp,
            headers,
        })
    }
}

/// Reads a TTL: `500ms`, `30s`, `5m`, `2h`, or a number of milliseconds.
fn parse_ttl_ms(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid TTL {text:?}: e.g. 500ms, 30s, 5m, 2h or 30000 (ms)");
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "ms"),
    };
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(scale)
        .filter(|ms| *ms > 0)
        .ok_or_else(invalid)
}

/// Hides a flag from one subcommand's `--help`: AMQP properties under `send kafka`, Kafka's
/// key and partition under `send rabbitmq`. Still parsed, so using one says why it does
/// not apply rather than "unexpected argument".
fn hide(arg: clap::Arg) -> clap::Arg {
    arg.hide(true)
}

/// Targets of `ferry send`.
#[derive(Debug, Subcommand)]
pub enum SendCommand {
    /// Send to a Kafka topic (acknowledged by all in-sync replicas).
    #[command(after_help = KAFKA_EXAMPLES, mut_arg("ttl", hide), mut_arg("content_type", hide), mut_arg("content_encoding", hide), mut_arg("correlation_id", hide), mut_arg("message_id", hide), mut_arg("kind", hide), mut_arg("app_id", hide), mut_arg("priority", hide))]
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
        /// What the message carries besides its bytes.
        #[command(flatten)]
        metadata: MetadataArgs,
        /// The daemons and the time limits.
        #[command(flatten)]
        delivery: DeliveryArgs,
        /// What to print when the message was taken.
        #[command(flatten)]
        print: PrintArgs,
    },
    /// Send to a RabbitMQ exchange (persistent, with a publisher confirm).
    #[command(after_help = RABBITMQ_EXAMPLES, mut_arg("key", hide), mut_arg("partition", hide))]
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
        /// What the message carries besides its bytes.
        #[command(flatten)]
        metadata: MetadataArgs,
        /// The daemons and the time limits.
        #[command(flatten)]
        delivery: DeliveryArgs,
        /// What to print when the message was taken.
        #[command(flatten)]
        print: PrintArgs,
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
    /// The most bytes one message may have: the daemons' server.max_message_bytes. A larger
    /// payload is refused here (exit 2) before it is read whole or sent.
    /// Example: --max-bytes 8388608
    #[arg(
        long,
        env = "FERRY_MAX_MESSAGE_BYTES",
        default_value_t = DEFAULT_MAX_MESSAGE_BYTES,
        value_name = "BYTES"
    )]
    pub max_bytes: u64,
    /// Send an empty payload; without it an empty --data, file or standard input is refused
    /// (an empty pipe is usually a job script's mistake). Example: --allow-empty
    #[arg(long)]
    pub allow_empty: bool,
}

impl PayloadArgs {
    /// The payload from `--data`, `--file` or standard input (which must not be a terminal):
    /// at most `--max-bytes` (with `--lines`, at most [`MAX_INPUT_BYTES`] in all), and not
    /// empty unless `--allow-empty`. A file is measured before it is read.
    fn read(self) -> Result<Bytes, String> {
        let limit = if self.lines {
            MAX_INPUT_BYTES
        } else {
            self.max_bytes.min(MAX_INPUT_BYTES)
        };
        let too_large = |name: &str, size: Option<u64>| {
            let size = size.map_or_else(String::new, |n| format!("{n} bytes, "));
            if self.lines {
                format!(
                    "{name} holds {size}more than the {MAX_INPUT_BYTES} bytes one --lines send takes"
                )
            } else {
                format!(
                    "{name} holds {size}more than the {limit} bytes a message may have \
                     (--max-bytes; the daemons' server.max_message_bytes)"
                )
            }
        };
        let payload = match self.data {
            Some(data) if data.len() as u64 > limit => {
                return Err(too_large("--data", Some(data.len() as u64)));
            }
            Some(data) => Bytes::from(data),
            None => read_bounded(self.file.as_deref(), limit, &too_large)?,
        };
        // With --lines, no input is no lines: nothing to send, and nothing wrong.
        if payload.is_empty() && !self.allow_empty && !self.lines {
            return Err(
                "empty payload: nothing to send (give --allow-empty to send an empty message)"
                    .into(),
            );
        }
        Ok(payload)
    }
}

/// The bytes of the file at `path` (standard input without one), at most `limit`: a file
/// larger than that is refused by its size, before any of it is read; standard input by
/// reading one byte past the limit.
fn read_bounded(
    path: Option<&std::path::Path>,
    limit: u64,
    too_large: &dyn Fn(&str, Option<u64>) -> String,
) -> Result<Bytes, String> {
    let (reader, name): (Box<dyn Read>, String) = match path {
        Some(path) => {
            let name = path.display().to_string();
            let file = std::fs::File::open(path).map_err(|e| format!("cannot read {name}: {e}"))?;
            let size = file.metadata().map(|m| m.is_file().then_some(m.len()));
            if let Ok(Some(size)) = size
                && size > limit
            {
                return Err(too_large(&name, Some(size)));
            }
            (Box::new(file), name)
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err("no payload: give --data, --file, or pipe it on standard input".into());
            }
            (Box::new(stdin), "standard input".to_owned())
        }
    };
    let mut buffer = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut buffer)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if buffer.len() as u64 > limit {
        return Err(too_large(&name, None));
    }
    Ok(Bytes::from(buffer))
}

/// What `ferry send` prints on standard output once the message was taken (nothing by
/// default: a job script's output stays its own).
#[derive(Debug, Args, Default)]
pub struct PrintArgs {
    /// Print the message's id, and for Kafka the partition and offset the broker gave it:
    /// `id=… partition=… offset=…` (`spooled` instead when a daemon spooled it).
    /// Example: --print-id
    #[arg(long, conflicts_with_all = ["json", "lines"])]
    pub print_id: bool,
    /// Print the outcome as one JSON object: outcome (delivered or spooled), id, daemon,
    /// attempts, partition and offset (null for RabbitMQ). Example: --json
    #[arg(long, conflicts_with = "lines")]
    pub json: bool,
}

impl PrintArgs {
    /// Prints what came of a message taken by a daemon, as asked.
    fn print(&self, outcome: &Outcome) {
        let (Outcome::Delivered(taken) | Outcome::Spooled(taken)) = outcome else {
            return;
        };
        let spooled = matches!(outcome, Outcome::Spooled(_));
        let answer = &taken.answer;
        if self.json {
            let line = serde_json::json!({
                "outcome": if spooled { "spooled" } else { "delivered" },
                "id": answer.id,
                "daemon": taken.daemon,
                "attempts": taken.attempts,
                "partition": answer.partition,
                "offset": answer.offset,
            });
            println!("{line}");
        } else if self.print_id {
            let mut line = format!("id={}", answer.id);
            if let Some(partition) = answer.partition {
                line.push_str(&format!(" partition={partition}"));
            }
            if let Some(offset) = answer.offset {
                line.push_str(&format!(" offset={offset}"));
            }
            if spooled {
                line.push_str(" spooled");
            }
            println!("{line}");
        }
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

/// What one `ferry send` names: where, the target's kind when the client knows it, the
/// payload, its metadata, the daemons and what to print.
type SendParts = (
    Destination,
    Option<Kind>,
    PayloadArgs,
    MetadataArgs,
    DeliveryArgs,
    PrintArgs,
);

impl SendArgs {
    /// The parts of a send, from a route or from the subcommand naming the target.
    fn into_parts(self) -> SendParts {
        match self.target {
            Some(SendCommand::Kafka {
                brokers,
                topic,
                payload,
                metadata,
                delivery,
                print,
            }) => (
                Destination::Kafka { brokers, topic },
                Some(Kind::Kafka),
                payload,
                metadata,
                delivery,
                print,
            ),
            Some(SendCommand::Rabbitmq {
                server,
                exchange,
                routing_key,
                payload,
                metadata,
                delivery,
                print,
            }) => (
                Destination::RabbitMq {
                    server,
                    exchange,
                    routing_key,
                },
                Some(Kind::RabbitMq),
                payload,
                metadata,
                delivery,
                print,
            ),
            None => (
                Destination::Route {
                    // clap requires --route when no subcommand is given.
                    name: self.route.unwrap_or_default(),
                    topic: self.topic,
                    routing_key: self.routing_key,
                },
                None,
                self.payload,
                self.metadata,
                self.delivery,
                self.print,
            ),
        }
    }
}

/// Sends one message; exit 0 when delivered, 1 with one line on stderr when not, 2 for a
/// usage error.
pub fn send(args: SendArgs) -> ExitCode {
    let (destination, kind, payload, metadata, delivery, print) = args.into_parts();
    let metadata = match metadata.to_wire(kind) {
        Ok(metadata) => metadata,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    let options = options(
        &delivery.proxy,
        delivery.attempts,
        &delivery.limits,
        &delivery.connect,
    );
    if let Err(error) = options.policy() {
        return exit(error);
    }
    let (lines, max_bytes) = (payload.lines, payload.max_bytes);
    let payload = match payload.read() {
        Ok(payload) => payload,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    if lines {
        if !metadata.is_empty() {
            return fail(
                EXIT_USAGE,
                "--lines sends bytes only: metadata flags are for single messages",
            );
        }
        return send_lines(&options, &destination, &payload, max_bytes);
    }
    let result = deliver(&options, &Way::Daemons(destination), payload, &metadata);
    if let Ok(outcome) = &result {
        print.print(outcome);
    }
    report(result)
}

/// How many line ranges `--lines` prints per reason on failure.
const MAX_RANGES_SHOWN: usize = 20;

/// `ferry send --lines`: every line of `input` as its own message over one stream; a line
/// over `max_bytes` refuses the whole send (exit 2) before any is sent.
fn send_lines(
    options: &Options,
    destination: &Destination,
    input: &Bytes,
    max_bytes: u64,
) -> ExitCode {
    let lines = split_lines(input);
    let too_large = lines.iter().position(|line| line.len() as u64 > max_bytes);
    if let Some(index) = too_large {
        return fail(
            EXIT_USAGE,
            format!(
                "line {} holds {} bytes, more than the {max_bytes} bytes a message may have \
                 (--max-bytes; the daemons' server.max_message_bytes): nothing was sent",
                index + 1,
                lines[index].len()
            ),
        );
    }
    let client = match options.client() {
        Ok(client) => client,
        Err(error) => return exit(error),
    };
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
