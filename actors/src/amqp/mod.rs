//! The RabbitMQ backend: a producer actor per server and exchange publishing on a
//! confirm-mode channel (`backend.rs`, [`AmqpBackend`]), lent by the connection actor of
//! its server (`server.rs`, [`AmqpServer`]), which owns the server's connections; the
//! broker's refusals put in words a user acts on (`explain.rs`).

mod backend;
mod explain;
mod server;

pub use backend::{AmqpBackend, AmqpLink, AmqpProducer, AmqpPublisher, ID_HEADER, Unconfirmed};
pub(crate) use server::Servers;
pub use server::{AmqpServer, ChannelSlot, Lease, OpenChannel};
