//! The daemon: everything `ferry serve` runs, from the listening socket to the
//! `ferry-actors` forwarder, and the operations endpoint beside it.
//!
//! Data flow: [`server`] accepts connections (bounded by [`connections`]), serves
//! [`ingress`] (unary `messagebroker.MessageBroker`) and [`ingest`] (the `ferry.v1.Ingest`
//! stream, each message under the read deadline of [`framing`], which
//! also holds a unary call to one message) and `ferry.v1.Send` ([`send`]), which resolve [`routes`], check [`access`] and
//! hand each message to the forwarder. [`report`] is
//! what [`http`] serves as `/stats` and [`metrics`] renders for Prometheus. [`signal`] turns
//! SIGTERM, SIGINT and SIGHUP into the drain.

pub mod access;
pub mod clients;
pub mod connections;
pub mod framing;
pub mod http;
pub mod ingest;
pub mod ingress;
pub mod live;
pub mod metrics;
pub mod report;
pub mod routes;
pub mod send;
pub mod server;
pub mod signal;
