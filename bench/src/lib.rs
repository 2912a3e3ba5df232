//! ferry's load generator. It sends one workload (N messages of S bytes to one Kafka topic
//! or RabbitMQ exchange, C in flight) three ways in the same run, so the figures share the
//! machine's state:
//!
//! - `direct`: straight to the broker from this process, with rdkafka or lapin set up as
//!   ferry sets up its producers: the ceiling;
//! - `unary`: through a ferry daemon, one `messagebroker.MessageBroker` call per message,
//!   spread over several HTTP/2 connections as many client processes would;
//! - `stream`: through the daemon's `ferry.v1.Ingest` stream, one stream per connection.
//!
//! After each run it counts what the broker holds, so a message reported delivered is one
//! the broker has. [`targets`] measures the daemon's memory per cached target.
//!
//! - [`args`]: the command line, validated into a [`plan::Plan`].
//! - [`sink`]: one way to deliver one message, [`drive`]: closed- and open-loop drivers
//!   over a sink; [`unary`], [`direct`]: the sinks; [`stream`]: the streaming driver.
//! - [`broker`]: topic/queue set-up and counting; [`record`]: latencies and errors;
//!   [`report`]: the tables; [`progress`]: the ticker on stderr; [`cpu`]: the daemon's CPU
//!   time per message (`--daemon-pid`).

pub mod args;
pub mod broker;
pub mod cpu;
pub mod direct;
pub mod drive;
pub mod plan;
pub mod progress;
pub mod record;
pub mod report;
pub mod run;
pub mod sink;
pub mod stream;
pub mod targets;
pub mod unary;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag combination that cannot work.
    #[error("{0}")]
    Usage(String),
    /// The daemon could not be reached.
    #[error("cannot connect to the ferry daemon at {address}: {source}")]
    Connect {
        /// The daemon's address.
        address: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A gRPC call failed before any message was measured (e.g. opening a stream).
    #[error("gRPC call failed: {0}")]
    Rpc(#[from] tonic::Status),
    /// The Kafka cluster refused set-up or counting.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The RabbitMQ server refused set-up or counting.
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    /// Reading the daemon's memory failed.
    #[error("cannot read /proc/{pid}/status: {source}")]
    Proc {
        /// The daemon's pid.
        pid: u32,
        /// Why.
        source: std::io::Error,
    },
    /// The warm-up did not get a message through: nothing to measure.
    #[error("warm-up failed ({mode}): {reason}")]
    WarmUp {
        /// Which path.
        mode: &'static str,
        /// The first error seen.
        reason: String,
    },
}
