//! `ferry-bench targets`: the daemon's resident memory idle and per cached target, from
//! `/proc/PID/status` (so the daemon must run on this machine).
//!
//! It sends one message to each of COUNT exchanges `PREFIX.0 … PREFIX.COUNT-1` on one
//! RabbitMQ server, each of which becomes a producer actor with its own connection. The
//! per-target figure is the growth from the first target to the last, divided by the
//! targets added, so one-off costs (the first connection, thread stacks) are not spread
//! over them. Beside memory it reports the daemon's OS threads and its TCP connections to
//! the RabbitMQ server at each point (from `/proc/PID/status`, `/proc/PID/fd` and
//! `/proc/PID/net/tcp*`).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use ferry::proto::message_broker_client::MessageBrokerClient;
use ferry::proto::{Message, RabbitMqMessage, RabbitMqTarget};
use lapin::options::ExchangeDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::BenchError;

/// `ferry-bench targets`.
#[derive(Debug, Args)]
pub struct TargetsArgs {
    /// The daemon's gRPC address.
    #[arg(long, default_value = "127.0.0.1:33383")]
    pub daemon: String,
    /// The daemon's process id (its memory is read from /proc). Example: --daemon-pid 1234
    #[arg(long)]
    pub daemon_pid: u32,
    /// AMQP URL of the RabbitMQ server. Example: --server amqp://guest:guest@127.0.0.1:5672/%2f
    #[arg(long)]
    pub server: String,
    /// Targets to create; the daemon's producers.max_targets must allow them.
    #[arg(long, default_value_t = 1_000)]
    pub count: u32,
    /// Exchange names are PREFIX.0, PREFIX.1, …; they are deleted at the end.
    #[arg(long, default_value = "ferry.bench.target")]
    pub prefix: String,
    /// Sends in flight while creating targets.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

/// The daemon's footprint at one point of the measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Footprint {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// OS threads.
    pub threads: u64,
    /// Established TCP connections to the RabbitMQ server's port.
    pub connections: u64,
}

impl Footprint {
    /// Reads process `pid`'s footprint; connections are those to `server_port`.
    pub fn read(pid: u32, server_port: u16) -> Result<Self, BenchError> {
        Ok(Self {
            rss_kib: rss_kib(pid)?,
            threads: status_field(pid, "Threads:")?,
            connections: tcp_connections_to(pid, server_port)?,
        })
    }
}

/// What `targets` measured.
#[derive(Debug, Clone, Copy)]
pub struct MemoryReport {
    /// RSS before any message, KiB.
    pub idle_kib: u64,
    /// RSS with one target, KiB.
    pub one_target_kib: u64,
    /// RSS with every target, KiB.
    pub all_targets_kib: u64,
    /// Threads and connections with one target.
    pub one_target: Footprint,
    /// Threads and connections with every target.
    pub all_targets: Footprint,
    /// Targets created (and delivered to).
    pub targets: u32,
    /// Messages not delivered.
    pub failed: u32,
}

impl MemoryReport {
    /// Growth per target after the first, KiB.
    pub fn per_target_kib(&self) -> f64 {
        let added = f64::from(self.targets.saturating_sub(1).max(1));
        self.all_targets_kib.saturating_sub(self.one_target_kib) as f64 / added
    }
}

/// Resident set size of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    status_field(pid, "VmRSS:")
}

/// The number in the line of `/proc/PID/status` that starts with `field` (a unit such as
/// `kB` is dropped).
fn status_field(pid: u32, field: &str) -> Result<u64, BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| BenchError::Proc { pid, source })?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| BenchError::Proc {
            pid,
            source: std::io::Error::other(format!("no {field} line")),
        })
}

/// How many of process `pid`'s sockets are established TCP connections to remote port
/// `port`: its socket inodes (from `/proc/PID/fd`) matched against `/proc/PID/net/tcp`
/// and `tcp6`.
pub fn tcp_connections_to(pid: u32, port: u16) -> Result<u64, BenchError> {
    let proc_error = |source| BenchError::Proc { pid, source };
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(proc_error)? {
        let Ok(link) = entry.and_then(|e| std::fs::read_link(e.path())) else {
            continue; // closed while listing
        };
        let link = link.to_string_lossy();
        if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let mut count = 0;
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state), Some(inode)) =
                (fields.get(2), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let remote_port = remote
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "01" && remote_port == Some(port) && inodes.contains(*inode) {
                count += 1;
            }
        }
    }
    Ok(count)
}

/// Measures the daemon's memory as the module describes.
pub async fn measure(args: &TargetsArgs) -> Result<MemoryReport, BenchError> {
    if args.count == 0 {
        return Err(BenchError::Usage("--count must be at least 1".into()));
    }
    let server_port = args
        .server
        .parse::<lapin::uri::AMQPUri>()
        .map_err(|e| BenchError::Usage(format!("--server: {e}")))?
        .authority
        .port;
    let channel = crate::unary::connect(&args.daemon, 1)
        .await?
        .pop()
        .ok_or_else(|| BenchError::Usage("no connection".into()))?;
    let settle = || tokio::time::sleep(Duration::from_millis(500));
    settle().await;
    let idle_kib = rss_kib(args.daemon_pid)?;
    let first = format!("{}.0", args.prefix);
    let mut failed = u32::from(!send_to(&channel, &args.server, &first).await);
    settle().await;
    let one_target = Footprint::read(args.daemon_pid, server_port)?;
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut sends = tokio::task::JoinSet::new();
    for i in 1..args.count {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let (channel, server) = (channel.clone(), args.server.clone());
        let exchange = format!("{}.{i}", args.prefix);
        sends.spawn(async move {
            let _slot = slot;
            send_to(&channel, &server, &exchange).await
        });
    }
    while let Some(sent) = sends.join_next().await {
        failed += u32::from(!sent.unwrap_or(false));
    }
    settle().await;
    let all_targets = Footprint::read(args.daemon_pid, server_port)?;
    delete_exchanges(args).await;
    Ok(MemoryReport {
        idle_kib,
        one_target_kib: one_target.rss_kib,
        all_targets_kib: all_targets.rss_kib,
        one_target,
        all_targets,
        targets: args.count,
        failed,
    })
}

/// Sends one small message to `exchange` on `server`; true if delivered.
async fn send_to(channel: &Channel, server: &str, exchange: &str) -> bool {
    let request = RabbitMqMessage {
        target: Some(RabbitMqTarget {
            server: server.to_owned(),
            exchange: exchange.to_owned(),
            route_key: "bench".to_owned(),
        }),
        message: Some(Message {
            data: bytes::Bytes::from_static(b"{}"),
        }),
    };
    MessageBrokerClient::new(channel.clone())
        .send_rabbit_mq_message(request)
        .await
        .is_ok_and(|r| r.into_inner().error_no == 0)
}

/// Deletes the exchanges the measurement made (best effort).
async fn delete_exchanges(args: &TargetsArgs) {
    let Ok(connection) = Connection::connect(&args.server, ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        for i in 0..args.count {
            let name = format!("{}.{i}", args.prefix);
            let _ = channel
                .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = connection.close(200, "ferry-bench done".into()).await;
}

/// Prints the report.
pub fn print(report: &MemoryReport) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "daemon RSS: idle {:.1} MiB; 1 target {:.1} MiB; {} targets {:.1} MiB; {:.1} KiB per target after the first; {} not delivered",
        mib(report.idle_kib),
        mib(report.one_target_kib),
        report.targets,
        mib(report.all_targets_kib),
        report.per_target_kib(),
        report.failed
    );
    println!(
        "daemon threads: 1 target {}, {} targets {}; AMQP connections: 1 target {}, {} targets {}",
        report.one_target.threads,
        report.targets,
        report.all_targets.threads,
        report.one_target.connections,
        report.targets,
        report.all_targets.connections
    );
}
