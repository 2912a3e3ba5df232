//! `ferry ecflow-client`, `ferry production` and `ferry log`: the predecessor's event
//! commands, with its flags and defaults, so an existing wrapper works by changing only the
//! program name.
//!
//! Without `--with-broker` they publish straight to RabbitMQ, as the predecessor did; with
//! it they send through the ferry daemons of `--broker-address`, with failover.

use std::process::ExitCode;

use bytes::Bytes;
use clap::Args;
use serde::Serialize;

use super::{ConnectArgs, EXIT_USAGE, LimitArgs, exit, fail, options, report};
use crate::client::deliver::{deliver, event_way};
use crate::client::envelope::{
    DEFAULT_APP, ECFLOW_CLIENT_EXCHANGE, ECFLOW_CLIENT_ROUTING_KEY, ECFLOW_CLIENT_TYPE,
    EcflowClientData, Envelope, EventStatus, LOG_EXCHANGE, LogData, PRODUCTION_EXCHANGE,
    PRODUCTION_TYPE, ProductionData, ProductionStream, parse_log_time, parse_start_time,
};
use crate::contract::DEFAULT_LISTEN;

/// Examples shown by `ferry ecflow-client --help`.
const ECFLOW_CLIENT_EXAMPLES: &str = "\
The message is {\"app\", \"type\": \"ecflow-client\", \"time\", \"data\": {\"command\", \"args\",
\"envs\", \"ecf_host\", \"ecf_port\", \"ecf_name\", \"ecf_rid\", \"ecf_tryno\", \"ecf_date\"}}, the
ecf_* fields from ECF_HOST, ECF_PORT, ECF_NAME, ECF_RID, ECF_TRYNO and ECF_DATE (--host and
--port inside --command-options override the first two).

Examples:
  # in a wrapper around ecflow_client, through two ferry daemons:
  ferry ecflow-client --command-options=\"$*\" \\
      --rabbitmq-server=amqp://user:pass@mq1:5672/%2f \\
      --with-broker --broker-address=login1:33383,login2:33383
  # straight to RabbitMQ, as the predecessor did without --with-broker:
  ferry ecflow-client --command-options='--complete' --rabbitmq-server=amqp://mq1:5672/%2f
  # print the message and send nothing:
  ferry ecflow-client --command-options='--init=12345' --rabbitmq-server=amqp://mq1 --disable-send";

/// Examples shown by `ferry production --help`.
const PRODUCTION_EXAMPLES: &str = "\
The message is {\"app\", \"type\": \"production\", \"time\", \"data\": {\"system\", \"stream\",
\"type\", \"name\", \"start_time\", \"forecast_time\", \"event\", \"status\"}} (eps adds \"number\"),
start_time in RFC 3339 (UTC), sent to exchange nwpc.operation.production with routing key
{system}.production.{type}.

Examples:
  ferry production --system=grapes_gfs_gmf --production-type=grib2 --production-stream=oper \\
      --production-name=orig --event=storage --status=complete \\
      --start-time=2026112200 --forecast-time=024h \\
      --rabbitmq-server=amqp://user:pass@mq1:5672/%2f --with-broker --broker-address=login1:33383
  # an ensemble member:
  ferry production --system=grapes_gefs --production-type=grib2 --production-stream=eps \\
      --number=3 --production-name=orig --event=storage --start-time=2026112200 \\
      --forecast-time=024h --rabbitmq-server=amqp://mq1 --disable-send";

/// Examples shown by `ferry log --help`.
const LOG_EXAMPLES: &str = "\
The message is {\"app\", \"type\": \"production\", \"time\", \"data\": {\"system\", \"start_time\",
\"time\", \"level\", \"type\", \"content\"}} (\"type\": \"production\" as the predecessor sends it;
data.type is the log type), times in RFC 3339, content from the --name=value options after --
(null without --), sent to exchange nwpc.operation.log with routing key {system}.log.{log-type}.

Example:
  ferry log --system=grapes_gfs_gmf --start-time=2026112200 --level=info --log-type=prepare \\
      --rabbitmq-server=amqp://user:pass@mq1:5672/%2f --with-broker --broker-address=login1:33383 \\
      -- --forecast-time=0h --source=ncep";

/// Where an event goes and how: the predecessor's target flags plus ferry's failover and
/// time limits.
#[derive(Debug, Args)]
pub struct EventTargetArgs {
    /// AMQP URL of the RabbitMQ server. Example: --rabbitmq-server=amqp://user:pass@mq1:5672/%2f
    /// Needed unless --route (or its environment variable) is given, or --disable-send.
    #[arg(long, value_name = "URL")]
    pub rabbitmq_server: Option<String>,
    /// A route of the daemons' config instead of --rabbitmq-server (implies --with-broker):
    /// the daemons know the server, the exchange and the password; the event's routing key
    /// is sent where the route allows it. Without this flag and --rabbitmq-server, the
    /// route is read from FERRY_ROUTE_WORKFLOW (ecflow-client), FERRY_ROUTE_PRODUCTION
    /// (production) or FERRY_ROUTE_LOG (log), so job scripts carry no password.
    /// Example: --route=workflow
    #[arg(long, value_name = "NAME", conflicts_with = "rabbitmq_server")]
    pub route: Option<String>,
    /// Send through ferry daemons (--broker-address) instead of straight to RabbitMQ.
    /// Example: --with-broker
    #[arg(long)]
    pub with_broker: bool,
    /// ferry daemons for --with-broker, host:port, comma-separated, tried in order.
    /// Example: --broker-address=login1:33383,login2:33383
    #[arg(
        long,
        env = "FERRY_PROXY",
        value_delimiter = ',',
        default_value = DEFAULT_LISTEN,
        value_name = "ADDR,..."
    )]
    pub broker_address: Vec<String>,
    /// Attempts per daemon (straight to RabbitMQ: attempts in all), 1-10; 0 counts as 1.
    /// Attempt n may take n × --attempt-timeout-ms. Example: --broker-tries=2
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub broker_tries: u32,
    /// Time limits.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Bearer token and TLS (with --with-broker).
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print the message (indented JSON) on standard output and send nothing.
    /// Example: --disable-send
    #[arg(long)]
    pub disable_send: bool,
    /// The envelope's "app" field. Example: --app=my-wrapper
    #[arg(long, default_value = DEFAULT_APP)]
    pub app: String,
}

/// Flags of `ferry ecflow-client`.
#[derive(Debug, Args)]
#[command(after_help = ECFLOW_CLIENT_EXAMPLES)]
pub struct EcflowClientArgs {
    /// The arguments ecflow_client was called with. Example: --command-options="--complete"
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub command_options: String,
    /// The exchange. Example: --exchange-name=nwpc.operation.workflow
    #[arg(long, default_value = ECFLOW_CLIENT_EXCHANGE)]
    pub exchange_name: String,
    /// The routing key. Example: --route-key-name=ecflow.command.ecflow_client
    #[arg(long, default_value = ECFLOW_CLIENT_ROUTING_KEY)]
    pub route_key_name: String,
    /// Where and how to send.
    #[command(flatten)]
    pub target: EventTargetArgs,
}

/// Flags of `ferry production`.
#[derive(Debug, Args)]
#[command(after_help = PRODUCTION_EXAMPLES)]
pub struct ProductionArgs {
    /// The system. Example: --system=grapes_gfs_gmf
    #[arg(long)]
    pub system: String,
    /// The production type. Example: --production-type=grib2
    #[arg(long)]
    pub production_type: String,
    /// The production stream: oper or eps. Example: --production-stream=oper
    #[arg(long)]
    pub production_stream: ProductionStream,
    /// The ensemble member: required with --production-stream=eps, refused with oper.
    /// Example: --number=3
    #[arg(long, value_name = "N")]
    pub number: Option<u32>,
    /// The production name. Example: --production-name=orig
    #[arg(long)]
    pub production_name: String,
    /// The event. Example: --event=storage
    #[arg(long)]
    pub event: String,
    /// The event's status: unknown, complete, queued, aborted, submitted, active,
    /// suspended, or its number 0-6. Example: --status=complete
    #[arg(long, default_value = "complete")]
    pub status: EventStatus,
    /// Start time, YYYYMMDDHH in UTC (sent as RFC 3339). Example: --start-time=2026112200
    #[arg(long, value_parser = parse_start_time)]
    pub start_time: chrono::DateTime<chrono::Utc>,
    /// Forecast time. Example: --forecast-time=024h
    #[arg(long)]
    pub forecast_time: String,
    /// The exchange. Example: --exchange-name=nwpc.operation.production
    #[arg(long, default_value = PRODUCTION_EXCHANGE)]
    pub exchange_name: String,
    /// The routing key [default: {system}.production.{type}].
    /// Example: --route-key-name=grapes_gfs_gmf.production.grib2
    #[arg(long)]
    pub route_key_name: Option<String>,
    /// Where and how to send.
    #[command(flatten)]
    pub target: EventTargetArgs,
}

/// Flags of `ferry log`.
#[derive(Debug, Args)]
#[command(after_help = LOG_EXAMPLES)]
pub struct LogArgs {
    /// The system. Example: --system=grapes_gfs_gmf
    #[arg(long)]
    pub system: String,
    /// Start time, YYYYMMDDHH in UTC (sent as RFC 3339). Example: --start-time=2026112200
    #[arg(long, value_parser = parse_start_time)]
    pub start_time: chrono::DateTime<chrono::Utc>,
    /// When it happened: YYYYMMDDHH (UTC) or RFC 3339 [default: now].
    /// Example: --time=2026112206 or --time=2026-11-22T06:10:00+08:00
    #[arg(long, value_parser = parse_log_time)]
    pub time: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// The level. Example: --level=info
    #[arg(long)]
    pub level: String,
    /// The log type. Example: --log-type=prepare
    #[arg(long)]
    pub log_type: String,
    /// The exchange. Example: --exchange-name=nwpc.operation.log
    #[arg(long, default_value = LOG_EXCHANGE)]
    pub exchange_name: String,
    /// The routing key [default: {system}.log.{log-type}].
    /// Example: --route-key-name=grapes_gfs_gmf.log.prepare
    #[arg(long)]
    pub route_key_name: Option<String>,
    /// Where and how to send.
    #[command(flatten)]
    pub target: EventTargetArgs,
    /// Content options after --, each --name=value. Example: -- --forecast-time=0h --source=ncep
    #[arg(last = true, value_name = "CONTENT")]
    pub content: Option<Vec<String>>,
}

/// Builds and sends an ecflow_client event.
pub fn ecflow_client(args: EcflowClientArgs) -> ExitCode {
    let data = EcflowClientData::from_command_options(&args.command_options, |name| {
        std::env::var(name).ok()
    });
    let envelope = Envelope::now(&args.target.app, ECFLOW_CLIENT_TYPE, data);
    let address = EventAddress {
        exchange: args.exchange_name,
        routing_key: args.route_key_name,
        route_env: ROUTE_ENV_WORKFLOW,
    };
    send_event(&args.target, &envelope, address)
}

/// Builds and sends a product event.
pub fn production(args: ProductionArgs) -> ExitCode {
    let data = ProductionData {
        system: args.system,
        stream: args.production_stream,
        production_type: args.production_type,
        name: args.production_name,
        start_time: args.start_time,
        forecast_time: args.forecast_time,
        number: args.number,
        event: args.event,
        status: args.status,
    };
    if let Err(error) = data.check() {
        return fail(EXIT_USAGE, error);
    }
    let routing_key = args.route_key_name.unwrap_or_else(|| data.routing_key());
    let envelope = Envelope::now(&args.target.app, PRODUCTION_TYPE, data);
    let address = EventAddress {
        exchange: args.exchange_name,
        routing_key,
        route_env: ROUTE_ENV_PRODUCTION,
    };
    send_event(&args.target, &envelope, address)
}

/// Builds and sends a log event.
pub fn log(args: LogArgs) -> ExitCode {
    let content = match args
        .content
        .as_deref()
        .map(LogData::parse_content)
        .transpose()
    {
        Ok(content) => content,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    let data = LogData {
        system: args.system,
        start_time: args.start_time,
        time: args
            .time
            .unwrap_or_else(|| chrono::Local::now().fixed_offset()),
        level: args.level,
        log_type: args.log_type,
        content,
    };
    let routing_key = args.route_key_name.unwrap_or_else(|| data.routing_key());
    let envelope = Envelope::now(&args.target.app, PRODUCTION_TYPE, data);
    let address = EventAddress {
        exchange: args.exchange_name,
        routing_key,
        route_env: ROUTE_ENV_LOG,
    };
    send_event(&args.target, &envelope, address)
}

/// The route of `ferry ecflow-client` when neither --route nor --rabbitmq-server is given.
pub const ROUTE_ENV_WORKFLOW: &str = "FERRY_ROUTE_WORKFLOW";
/// The route of `ferry production` when neither --route nor --rabbitmq-server is given.
pub const ROUTE_ENV_PRODUCTION: &str = "FERRY_ROUTE_PRODUCTION";
/// The route of `ferry log` when neither --route nor --rabbitmq-server is given.
pub const ROUTE_ENV_LOG: &str = "FERRY_ROUTE_LOG";

/// Where one kind of event goes: its exchange and routing key, and the environment
/// variable that may name a route for it instead.
struct EventAddress {
    /// The exchange (`--exchange-name`, or the kind's default).
    exchange: String,
    /// The routing key (`--route-key-name`, or the one the event's fields make).
    routing_key: String,
    /// The environment variable that may name a route instead of a server.
    route_env: &'static str,
}

impl EventAddress {
    /// The route to use: `--route`, else (when no `--rabbitmq-server` names a server) the
    /// kind's environment variable, if set and not empty. An explicit flag always wins.
    fn route(&self, target: &EventTargetArgs) -> Option<String> {
        if target.route.is_some() || target.rabbitmq_server.is_some() {
            return target.route.clone();
        }
        std::env::var(self.route_env)
            .ok()
            .filter(|route| !route.is_empty())
    }
}

/// Prints (`--disable-send`) or sends `envelope` to the event's exchange and routing key.
fn send_event<T: Serialize>(
    target: &EventTargetArgs,
    envelope: &Envelope<T>,
    address: EventAddress,
) -> ExitCode {
    if target.disable_send {
        return match envelope.to_pretty_json() {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(EXIT_USAGE, format!("cannot build the message: {error}")),
        };
    }
    let payload = match envelope.to_json() {
        Ok(json) => Bytes::from(json),
        Err(error) => return fail(EXIT_USAGE, format!("cannot build the message: {error}")),
    };
    // As the predecessor's `--broker-tries 0`: one try.
    let options = options(
        &target.broker_address,
        target.broker_tries.max(1),
        &target.limits,
        &target.connect,
    );
    if let Err(error) = options.policy() {
        return exit(error);
    }
    let route = address.route(target);
    if route.is_none() && target.rabbitmq_server.is_none() {
        let reason = format!(
            "give --rabbitmq-server=URL, --route=NAME or {}=NAME (a route of the daemons' config)",
            address.route_env
        );
        return fail(EXIT_USAGE, reason);
    }
    let way = event_way(
        route.as_deref(),
        target.rabbitmq_server.as_deref(),
        target.with_broker,
        address.exchange,
        address.routing_key,
    );
    report(way.and_then(|way| deliver(&options, &way, payload, &Default::default())))
}
