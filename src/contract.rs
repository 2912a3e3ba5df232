//! What the client and the daemon agree on beyond the protobuf messages: the `error_no`
//! codes of a `Response`, the default addresses, and the service names the daemon's
//! grpc.health.v1 reports. Both builds of `ferry` have it, the daemon's and the static
//! client's (built without the `daemon` feature).

use ferry_actors::ProduceError;

/// Where the daemon listens for gRPC, and where clients look for it, by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:33383";
/// Where the daemon's operations endpoint (`/stats`, `/metrics`, `/healthz`) listens by
/// default.
pub const DEFAULT_OPS_LISTEN: &str = "127.0.0.1:33384";

/// The largest message a daemon takes by default (`server.max_message_bytes`: 4 MiB,
/// tonic's own bound of a decoded request); the client refuses a larger payload unless told
/// the daemons take more (`--max-bytes`).
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 4 * 1024 * 1024;

/// The service name grpc.health.v1 reports for the ingress.
pub const HEALTH_SERVICE: &str = "messagebroker.MessageBroker";
/// The service name grpc.health.v1 reports for the streaming ingress.
pub const INGEST_HEALTH_SERVICE: &str = "ferry.v1.Ingest";

/// The `error_no` values of `Response`, as documented in `proto/messagebroker.proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ErrorNo {
    /// Delivered: the broker confirmed the message.
    Delivered = 0,
    /// A field is missing or malformed.
    InvalidRequest = 1,
    /// No confirmation within the retry policy's budget.
    Timeout = 2,
    /// The broker refused the message.
    Rejected = 3,
    /// The broker could not be reached or the connection was lost.
    Unavailable = 4,
    /// A bound of the daemon was reached.
    Overloaded = 5,
    /// The daemon is stopping.
    ShuttingDown = 6,
    /// The target is not in the daemon's allowlist.
    NotAllowed = 7,
}

impl ErrorNo {
    /// The code with wire value `value`, if it is one of the documented codes.
    pub fn from_wire(value: i32) -> Option<Self> {
        [
            Self::Delivered,
            Self::InvalidRequest,
            Self::Timeout,
            Self::Rejected,
            Self::Unavailable,
            Self::Overloaded,
            Self::ShuttingDown,
            Self::NotAllowed,
        ]
        .into_iter()
        .find(|code| *code as i32 == value)
    }

    /// The code for a message that was not delivered.
    pub fn of(error: &ProduceError) -> Self {
        match error {
            ProduceError::Timeout(_) => Self::Timeout,
            ProduceError::Rejected(_) => Self::Rejected,
            ProduceError::Unavailable(_) => Self::Unavailable,
            ProduceError::Overloaded(_) => Self::Overloaded,
            ProduceError::ShuttingDown => Self::ShuttingDown,
            ProduceError::Invalid(_) => Self::InvalidRequest,
        }
    }
}
