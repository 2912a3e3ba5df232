//! The one place where wire requests become domain values and outcomes become
//! `Response.error_no`.

use std::sync::Arc;

use bytes::Bytes;
use ferry_actors::metadata::{AmqpMetadata, HeaderValue, KafkaMetadata};
use ferry_actors::target::{validate_routing_key, validate_topic};
use ferry_actors::{
    Accepted, AmqpTarget, ForwardError, InvalidRequest, KafkaTarget, Metadata, Target,
};

use crate::config::routes::Routes;
pub use crate::contract::ErrorNo;
use crate::proto;
use crate::proto::ferry::v1;

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
    /// Key, headers and properties, checked and of the target's kind.
    pub metadata: Option<Arc<Metadata>>,
    /// The route of the daemon's config that named the target (allowed by definition),
    /// if one did: a spooled message is filed under its name.
    pub via: Option<Arc<str>>,
}

/// Why a request was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Refused before forwarding.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// The target is not in the allowlist; nothing was connected.
    #[error(transparent)]
    NotAllowed(#[from] crate::config::allowlist::NotAllowed),
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
        metadata: None,
        via: None,
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
        metadata: None,
        via: None,
    })
}

/// Validates a `ferry.v1.SendRequest`: its route (looked up in `routes`) or explicit target,
/// the topic or routing key it asks for, and its metadata.
pub fn send_request(
    mut request: v1::SendRequest,
    limits: RequestLimits,
    routes: &Routes,
) -> Result<SendRequest, InvalidRequest> {
    use v1::send_request::Target as Wire;
    if request.data.len() > limits.max_message_bytes {
        return Err(InvalidRequest::new(
            "data",
            format!(
                "{} bytes is more than the {} allowed",
                request.data.len(),
                limits.max_message_bytes
            ),
        ));
    }
    let (target, route, via, default_key) = match request.target.take() {
        Some(Wire::Route(name)) => {
            let (target, subject, name, default_key) = through_route(&request, &name, routes)?;
            (target, subject, Some(name), default_key)
        }
        Some(Wire::Kafka(target)) => {
            let kafka = KafkaTarget::try_new(&target.brokers, limits.max_brokers_per_target)?;
            validate_topic(&target.topic)?;
            (Target::Kafka(kafka), target.topic, None, None)
        }
        Some(Wire::Rabbitmq(target)) => {
            let amqp = AmqpTarget::try_new(&target.server, &target.exchange)?;
            validate_routing_key(&target.route_key)?;
            (Target::Amqp(amqp), target.route_key, None, None)
        }
        None => {
            return Err(InvalidRequest::new(
                "target",
                "missing: name a route or a target",
            ));
        }
    };
    if via.is_none() && (request.topic.is_some() || request.routing_key.is_some()) {
        return Err(InvalidRequest::new(
            if request.topic.is_some() {
                "topic"
            } else {
                "routing_key"
            },
            "only with a route: an explicit target names its own topic or routing key",
        ));
    }
    let metadata = metadata(
        &target,
        request.kafka_metadata,
        request.amqp_metadata,
        request.headers,
        default_key,
    )?;
    Ok(SendRequest {
        target,
        route,
        payload: request.data,
        metadata: metadata.map(Arc::new),
        via,
    })
}

/// What a request through the route `name` resolves to: the route's target, the topic or
/// routing key (the request's, within what the route allows, or the route's own), the
/// route's name and its default Kafka key.
fn through_route(
    request: &v1::SendRequest,
    name: &str,
    routes: &Routes,
) -> Result<(Target, String, Arc<str>, Option<Bytes>), InvalidRequest> {
    let route = routes.get(name).ok_or_else(|| {
        InvalidRequest::new(
            "route",
            format!("{name:?} is not a route of this daemon (ferry routes lists them)"),
        )
    })?;
    let subject = match &route.target {
        Target::Kafka(_) => {
            if request.routing_key.is_some() {
                return Err(InvalidRequest::new(
                    "routing_key",
                    "this is a Kafka route: name a topic, not a routing key",
                ));
            }
            let topic = route.subject(request.topic.as_deref(), "topic")?;
            validate_topic(&topic)?;
            topic
        }
        Target::Amqp(_) => {
            if request.topic.is_some() {
                return Err(InvalidRequest::new(
                    "topic",
                    "this is a RabbitMQ route: name a routing key, not a topic",
                ));
            }
            let key = route.subject(request.routing_key.as_deref(), "routing_key")?;
            validate_routing_key(&key)?;
            key
        }
    };
    Ok((
        route.target.clone(),
        subject,
        Arc::clone(&route.name),
        route.default_key.clone(),
    ))
}

/// The metadata of a request, for `target`'s kind: metadata for the other kind is an
/// error, and a Kafka message without a key gets the route's `default_key`.
fn metadata(
    target: &Target,
    kafka: Option<v1::KafkaMetadata>,
    amqp: Option<v1::AmqpMetadata>,
    headers: Vec<v1::KafkaHeader>,
    default_key: Option<Bytes>,
) -> Result<Option<Metadata>, InvalidRequest> {
    let metadata = match target {
        Target::Kafka(_) => {
            if amqp.is_some() {
                return Err(InvalidRequest::new(
                    "amqp_metadata",
                    "AMQP properties (--ttl, --content-type, --priority, …) for a Kafka \
                     target, whose records carry a key, a partition and headers only: \
                     drop them, or send to a RabbitMQ route",
                ));
            }
            let kafka = kafka.unwrap_or_default();
            let key = kafka.key.or(default_key);
            let headers: Vec<(String, Bytes)> = kafka
                .headers
                .into_iter()
                .chain(headers)
                .map(|header| (header.name, header.value))
                .collect();
            if key.is_none() && headers.is_empty() && kafka.partition.is_none() {
                return Ok(None);
            }
            Metadata::Kafka(KafkaMetadata {
                key,
                headers,
                partition: kafka.partition,
            })
        }
        Target::Amqp(_) => {
            if kafka.is_some() {
                return Err(InvalidRequest::new(
                    "kafka_metadata",
                    "a Kafka key or partition (--key, --partition) for a RabbitMQ target: \
                     drop them (--header works for both), or send to a Kafka route",
                ));
            }
            if amqp.is_none() && headers.is_empty() {
                return Ok(None);
            }
            amqp_metadata(amqp.unwrap_or_default(), headers)?
        }
    };
    metadata.check()?;
    Ok(Some(metadata))
}

/// AMQP metadata from the request's `amqp` fields and its generic `headers` (text, so
/// UTF-8 only).
fn amqp_metadata(
    amqp: v1::AmqpMetadata,
    headers: Vec<v1::KafkaHeader>,
) -> Result<Metadata, InvalidRequest> {
    let priority = amqp
        .priority
        .map(|p| {
            u8::try_from(p).map_err(|_| {
                InvalidRequest::new("priority", format!("{p}: a priority is 0 to 255"))
            })
        })
        .transpose()?;
    let mut table = std::collections::BTreeMap::new();
    for (name, value) in amqp.headers {
        use v1::amqp_header_value::Value;
        let value = match value.value {
            Some(Value::Text(text)) => HeaderValue::Text(text),
            Some(Value::Int(n)) => HeaderValue::Int(n),
            Some(Value::Bool(b)) => HeaderValue::Bool(b),
            None => {
                return Err(InvalidRequest::new(
                    "headers",
                    format!("header {name:?} has no value"),
                ));
            }
        };
        table.insert(name, value);
    }
    for header in headers {
        let text = String::from_utf8(header.value.to_vec()).map_err(|_| {
            InvalidRequest::new(
                "headers",
                format!(
                    "header {:?}: an AMQP text header must be UTF-8",
                    header.name
                ),
            )
        })?;
        table.insert(header.name, HeaderValue::Text(text));
    }
    Ok(Metadata::Amqp(AmqpMetadata {
        headers: table,
        expiration_ms: amqp.expiration_ms,
        content_type: amqp.content_type,
        content_encoding: amqp.content_encoding,
        correlation_id: amqp.correlation_id,
        message_id: amqp.message_id,
        kind: amqp.r#type,
        app_id: amqp.app_id,
        priority,
    }))
}

/// The `ferry.v1.SendReply` for an outcome: the same answer as [`response`], plus where a
/// Kafka broker put the record.
pub fn reply(outcome: &Result<Accepted, Failure>, target: Option<&Target>) -> v1::SendReply {
    let response = response(outcome, target);
    let delivery = outcome
        .as_ref()
        .map(|accepted| accepted.delivery)
        .unwrap_or_default();
    v1::SendReply {
        error_no: response.error_no,
        error_message: response.error_message,
        id: response.id,
        spooled: response.spooled,
        partition: delivery.partition,
        offset: delivery.offset,
    }
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
        Ok(Accepted {
            id, spooled: None, ..
        }) => proto::Response {
            error_no: ErrorNo::Delivered as i32,
            error_message: String::new(),
            spooled: false,
            id: id.to_string(),
        },
        Ok(Accepted {
            id,
            spooled: Some(why),
            ..
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
    use ferry_actors::ProduceError;

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

    const LIMITS: RequestLimits = RequestLimits {
        max_message_bytes: 1024,
        max_brokers_per_target: 8,
    };

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
            delivery: ferry_actors::Delivery {
                partition: Some(2),
                offset: Some(41),
            },
        };
        let answer = reply(&Ok(delivered.clone()), None);
        assert_eq!((answer.partition, answer.offset), (Some(2), Some(41)));
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
        let not_allowed = crate::config::allowlist::NotAllowed("x".into());
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

    fn routes() -> Routes {
        let config: std::collections::BTreeMap<String, crate::config::routes::RouteConfig> =
            toml::from_str(
                "[events]\nkind = \"kafka\"\nbrokers = [\"k1:9092\"]\ntopic = \"nwp.events\"\n\
                 key = \"default\"\nallow_topic = [\"nwp.*\"]\n\
                 [workflow]\nkind = \"rabbitmq\"\nserver = \"amqp://mq1/%2f\"\n\
                 exchange = \"x\"\nrouting_key = \"a.b\"\n",
            )
            .unwrap();
        Routes::from_config(&config, 8).unwrap()
    }

    fn to_route(route: &str) -> v1::SendRequest {
        v1::SendRequest {
            target: Some(v1::send_request::Target::Route(route.into())),
            data: Bytes::from_static(b"x"),
            ..Default::default()
        }
    }

    #[test]
    fn a_route_supplies_the_target_subject_and_default_key() {
        let request = send_request(to_route("events"), LIMITS, &routes()).unwrap();
        assert_eq!(request.via.as_deref(), Some("events"));
        assert_eq!(request.route, "nwp.events");
        let Some(Metadata::Kafka(kafka)) = request.metadata.as_deref() else {
            panic!("the route's default key");
        };
        assert_eq!(kafka.key.as_deref(), Some(&b"default"[..]));
        let allowed = v1::SendRequest {
            topic: Some("nwp.other".into()),
            kafka_metadata: Some(v1::KafkaMetadata {
                key: Some(Bytes::from_static(b"task/1")),
                ..Default::default()
            }),
            ..to_route("events")
        };
        let request = send_request(allowed, LIMITS, &routes()).unwrap();
        assert_eq!(request.route, "nwp.other");
        let Some(Metadata::Kafka(kafka)) = request.metadata.as_deref() else {
            panic!("metadata");
        };
        assert_eq!(
            kafka.key.as_deref(),
            Some(&b"task/1"[..]),
            "the sender's key wins"
        );
        let plain = send_request(to_route("workflow"), LIMITS, &routes()).unwrap();
        assert_eq!(
            (plain.route.as_str(), plain.metadata.is_none()),
            ("a.b", true)
        );
    }

    #[test]
    fn invalid_routes_and_metadata_are_answered_1_naming_the_field() {
        let field =
            |request: v1::SendRequest| send_request(request, LIMITS, &routes()).unwrap_err().field;
        assert_eq!(field(to_route("nope")), "route");
        let other_topic = v1::SendRequest {
            topic: Some("other".into()),
            ..to_route("events")
        };
        assert_eq!(field(other_topic), "topic");
        let key_on_kafka = v1::SendRequest {
            routing_key: Some("a.c".into()),
            ..to_route("events")
        };
        assert_eq!(field(key_on_kafka), "routing_key");
        let not_allowed_key = v1::SendRequest {
            routing_key: Some("a.c".into()),
            ..to_route("workflow")
        };
        assert_eq!(field(not_allowed_key), "routing_key");
        let wrong_kind = v1::SendRequest {
            amqp_metadata: Some(v1::AmqpMetadata::default()),
            ..to_route("events")
        };
        assert_eq!(field(wrong_kind), "amqp_metadata");
        let long_header = v1::SendRequest {
            kafka_metadata: Some(v1::KafkaMetadata {
                headers: vec![v1::KafkaHeader {
                    name: "h".repeat(256),
                    value: Bytes::new(),
                }],
                ..Default::default()
            }),
            ..to_route("events")
        };
        assert_eq!(field(long_header), "headers");
        let negative_partition = v1::SendRequest {
            kafka_metadata: Some(v1::KafkaMetadata {
                partition: Some(-1),
                ..Default::default()
            }),
            ..to_route("events")
        };
        assert_eq!(field(negative_partition), "partition");
        for ttl in [0, u64::from(u32::MAX) + 1] {
            let bad_ttl = v1::SendRequest {
                amqp_metadata: Some(v1::AmqpMetadata {
                    expiration_ms: Some(ttl),
                    ..Default::default()
                }),
                ..to_route("workflow")
            };
            assert_eq!(field(bad_ttl), "expiration");
        }
        let bad_priority = v1::SendRequest {
            amqp_metadata: Some(v1::AmqpMetadata {
                priority: Some(256),
                ..Default::default()
            }),
            ..to_route("workflow")
        };
        assert_eq!(field(bad_priority), "priority");
        let too_big = v1::SendRequest {
            data: Bytes::from(vec![0; LIMITS.max_message_bytes + 1]),
            ..to_route("events")
        };
        assert_eq!(field(too_big), "data");
        let explicit_with_topic = v1::SendRequest {
            target: Some(v1::send_request::Target::Kafka(proto::KafkaTarget {
                brokers: vec!["k:9092".into()],
                topic: "t".into(),
            })),
            topic: Some("u".into()),
            ..Default::default()
        };
        assert_eq!(field(explicit_with_topic), "topic");
        assert_eq!(field(v1::SendRequest::default()), "target");
    }
}
