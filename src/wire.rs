//! The one place where wire requests become domain values and outcomes become
//! `Response.error_no`.

use bytes::Bytes;
use ferry_actors::target::{validate_routing_key, validate_topic};
use ferry_actors::{
    Accepted, AmqpTarget, ForwardError, InvalidRequest, KafkaTarget, ProduceError, Target,
};

use crate::proto;

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
        }
    }
}

/// The bounds a request is validated against.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Largest payload accepted.
    pub max_message_bytes: usize,
    /// Most bootstrap addresses one Kafka target may name.
    pub max_brokers_per_target: usize,
}

/// A validated send request.
#[derive(Debug)]
pub struct SendRequest {
    /// Where the message goes.
    pub target: Target,
    /// Kafka topic or AMQP routing key.
    pub route: String,
    /// The bytes to deliver.
    pub payload: Bytes,
}

/// Why a request was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Refused before forwarding.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// The target is not in the allowlist; nothing was connected.
    #[error(transparent)]
    NotAllowed(#[from] crate::daemon::access::NotAllowed),
    /// Forwarded and not delivered.
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

impl Failure {
    /// The wire code of this failure.
    pub fn error_no(&self) -> ErrorNo {
        match self {
            Self::Invalid(_) => ErrorNo::InvalidRequest,
            Self::NotAllowed(_) => ErrorNo::NotAllowed,
            Self::Forward(e) => ErrorNo::of(&e.last),
        }
    }
}

/// Validates a `SendKafkaMessage` request.
pub fn kafka_request(
    request: proto::KafkaMessage,
    limits: RequestLimits,
) -> Result<SendRequest, InvalidRequest> {
    let target = request
        .target
        .ok_or_else(|| InvalidRequest::new("target", "missing"))?;
    let payload = payload(request.message, limits.max_message_bytes)?;
    let kafka = KafkaTarget::try_new(&target.brokers, limits.max_brokers_per_target)?;
    validate_topic(&target.topic)?;
    Ok(SendRequest {
        target: Target::Kafka(kafka),
        route: target.topic,
        payload,
    })
}

/// Validates a `SendRabbitMQMessage` request.
pub fn rabbitmq_request(
    request: proto::RabbitMqMessage,
    limits: RequestLimits,
) -> Result<SendRequest, InvalidRequest> {
    let target = request
        .target
        .ok_or_else(|| InvalidRequest::new("target", "missing"))?;
    let payload = payload(request.message, limits.max_message_bytes)?;
    let amqp = AmqpTarget::try_new(&target.server, &target.exchange)?;
    validate_routing_key(&target.route_key)?;
    Ok(SendRequest {
        target: Target::Amqp(amqp),
        route: target.route_key,
        payload,
    })
}

/// The payload of a request, bounded in size. An empty payload is a valid message.
fn payload(message: Option<proto::Message>, max: usize) -> Result<Bytes, InvalidRequest> {
    let data = message
        .ok_or_else(|| InvalidRequest::new("message", "missing"))?
        .data;
    if data.len() > max {
        return Err(InvalidRequest::new(
            "message.data",
            format!("{} bytes is more than the {max} allowed", data.len()),
        ));
    }
    Ok(data)
}

/// The wire answer for an outcome (`target` names where a spooled message goes).
pub fn response(outcome: &Result<Accepted, Failure>, target: Option<&Target>) -> proto::Response {
    match outcome {
        Ok(Accepted { id, spooled: None }) => proto::Response {
            error_no: ErrorNo::Delivered as i32,
            error_message: String::new(),
            spooled: false,
            id: id.to_string(),
        },
        Ok(Accepted {
            id,
            spooled: Some(why),
        }) => proto::Response {
            error_no: ErrorNo::Delivered as i32,
            error_message: format!(
                "spooled for {}: {why}; it will be delivered when the broker takes messages again",
                target.map_or_else(|| "its target".to_owned(), ToString::to_string)
            ),
            spooled: true,
            id: id.to_string(),
        },
        Err(failure) => proto::Response {
            error_no: failure.error_no() as i32,
            error_message: failure.to_string(),
            spooled: false,
            id: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(brokers: &[&str], topic: &str, data: &[u8]) -> proto::KafkaMessage {
        proto::KafkaMessage {
            target: Some(proto::KafkaTarget {
                brokers: brokers.iter().map(|b| b.to_string()).collect(),
                topic: topic.into(),
            }),
            message: Some(proto::Message {
                data: Bytes::copy_from_slice(data),
            }),
        }
    }

    fn rabbit(server: &str, exchange: &str, key: &str) -> proto::RabbitMqMessage {
        proto::RabbitMqMessage {
            target: Some(proto::RabbitMqTarget {
                server: server.into(),
                exchange: exchange.into(),
                route_key: key.into(),
            }),
            message: Some(proto::Message { data: Bytes::new() }),
        }
    }

    fn limits(max_message_bytes: usize) -> RequestLimits {
        RequestLimits {
            max_message_bytes,
            max_brokers_per_target: 8,
        }
    }

    fn field_of(result: Result<SendRequest, InvalidRequest>) -> &'static str {
        result.unwrap_err().field
    }

    #[test]
    fn valid_requests_become_targets() {
        let r = kafka_request(kafka(&["h:1"], "t", b"\xff\x00"), limits(10)).unwrap();
        assert_eq!(r.route, "t");
        assert_eq!(&r.payload[..], b"\xff\x00");
        let r = rabbitmq_request(rabbit("amqp://h", "ex", "a.b"), limits(10)).unwrap();
        assert_eq!(r.target.kind(), "rabbitmq");
    }

    #[test]
    fn each_invalid_field_is_named() {
        assert_eq!(
            field_of(kafka_request(kafka(&[], "t", b""), limits(10))),
            "brokers"
        );
        assert_eq!(
            field_of(kafka_request(kafka(&["h:1"], "", b""), limits(10))),
            "topic"
        );
        assert_eq!(
            field_of(kafka_request(kafka(&["h:1"], "t", b"12345"), limits(4))),
            "message.data"
        );
        let mut no_target = kafka(&["h:1"], "t", b"");
        no_target.target = None;
        assert_eq!(field_of(kafka_request(no_target, limits(10))), "target");
        let mut no_message = kafka(&["h:1"], "t", b"");
        no_message.message = None;
        assert_eq!(field_of(kafka_request(no_message, limits(10))), "message");
        assert_eq!(
            field_of(rabbitmq_request(rabbit("::", "ex", ""), limits(10))),
            "server"
        );
        assert_eq!(
            field_of(rabbitmq_request(rabbit("amqp://h", "", ""), limits(10))),
            "exchange"
        );
        let long_key = "k".repeat(256);
        assert_eq!(
            field_of(rabbitmq_request(
                rabbit("amqp://h", "ex", &long_key),
                limits(10)
            )),
            "route_key"
        );
    }

    #[test]
    fn outcomes_map_to_documented_codes() {
        let forward = |last| Err(Failure::Forward(ForwardError { attempts: 2, last }));
        let code = |outcome: Result<Accepted, Failure>| response(&outcome, None).error_no;
        let delivered = Accepted {
            id: "0190".into(),
            spooled: None,
        };
        assert_eq!(code(Ok(delivered.clone())), 0);
        let spooled = response(
            &Ok(Accepted {
                spooled: Some("broker unavailable".into()),
                ..delivered
            }),
            None,
        );
        assert_eq!((spooled.error_no, spooled.spooled), (0, true));
        assert!(
            spooled.error_message.starts_with("spooled for"),
            "{spooled:?}"
        );
        assert_eq!(spooled.id, "0190");
        assert_eq!(code(Err(InvalidRequest::new("topic", "x").into())), 1);
        assert_eq!(code(forward(ProduceError::Timeout(Default::default()))), 2);
        assert_eq!(code(forward(ProduceError::Rejected("x".into()))), 3);
        assert_eq!(code(forward(ProduceError::Unavailable("x".into()))), 4);
        assert_eq!(code(forward(ProduceError::Overloaded("x".into()))), 5);
        assert_eq!(code(forward(ProduceError::ShuttingDown)), 6);
        let not_allowed = crate::daemon::access::NotAllowed("x".into());
        assert_eq!(code(Err(not_allowed.into())), 7);
        for value in 0..=7 {
            assert_eq!(ErrorNo::from_wire(value).map(|c| c as i32), Some(value));
        }
        assert_eq!(ErrorNo::from_wire(8), None);
        assert_eq!(ErrorNo::from_wire(-1), None);
        let answer = response(&forward(ProduceError::Unavailable("refused".into())), None);
        assert_eq!(
            answer.error_message,
            "broker unavailable: refused (after 2 attempts)"
        );
    }
}
