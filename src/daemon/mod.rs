//! The daemon: everything `ferry serve` runs, from the listening socket to the
//! `ferry-actors` forwarder, and the operations endpoint beside it.
//!
//! Start-up: [`server`] binds the sockets ([`listeners`]), builds the forwarding core
//! ([`forwarding`]), starts one gRPC server per worker ([`grpc`]) and the operations
//! endpoint ([`http`]); [`drain`] stops them in order; [`error`] says why a start failed.
//!
//! Data flow: each gRPC server accepts connections (bounded by [`connections`]), identifies
//! each call ([`access`]) and serves [`ingress`] (unary `messagebroker.MessageBroker`),
//! [`stream`] (the `ferry.v1.Ingest` stream, each message under the read deadline of
//! [`framing`], which also holds a unary call to one message; [`oversize`] answers a unary
//! call too large to decode with error 1) and `ferry.v1.Send`
//! ([`send`]). Each resolves routes and checks access against the config in force, which
//! [`live`] holds and a reload replaces, and hands each message to the forwarder.
//! [`crate::report`] is what [`http`] serves as `/stats` and [`metrics`] renders for
//! Prometheus, built by [`source`]; [`health`] says from it whether the daemon is serving,
//! degraded or not serving (`/healthz`, `ferry check`).
//! [`signal`] turns SIGTERM, SIGINT and SIGHUP into the drain and the reload, and
//! [`reloads`] queues the reloads `POST /reload` asks for; [`pid_file`]
//! is `ops.pid_file`, locked while the daemon runs; [`notify`] tells systemd (a
//! `Type=notify` unit) when the daemon serves, reloads, stops; [`log_budget`] bounds the
//! log lines a client can cause.

pub mod access;
pub mod connections;
pub mod drain;
pub mod error;
pub mod forwarding;
pub mod framing;
pub mod grpc;
pub mod health;
pub mod http;
pub mod ingress;
pub mod listeners;
pub mod live;
pub mod log_budget;
pub mod metrics;
pub mod notify;
pub mod oversize;
pub mod oversize_stream;
pub mod peer;
pub mod pid_file;
pub mod reloads;
pub mod send;
pub mod server;
pub mod signal;
pub mod source;
pub mod stream;
