//! Any bytes as a `SendKafkaMessage` or `SendRabbitMQMessage` request: decoding,
//! validation, the allowlist check and the redacted display must never panic, and a
//! request that validates must name a target that displays without its password, with
//! AMQP URL parameters in their safe ranges.

#![no_main]

use std::sync::LazyLock;

use ferry::daemon::access::{Access, Allowlist, Exchanges};
use ferry::proto::{KafkaMessage, RabbitMqMessage};
use ferry::wire;
use ferry_actors::Target;
use libfuzzer_sys::fuzz_target;
use prost::Message;

static ACCESS: LazyLock<Access> = LazyLock::new(|| {
    let mut list = Allowlist::default();
    list.kafka_brokers.insert("kafka1:9092".into());
    list.rabbitmq.insert("mq1:5672".into(), Exchanges::Any);
    Access::Only(list)
});

/// The daemon's default bounds, with a small payload bound.
const LIMITS: wire::RequestLimits = wire::RequestLimits {
    max_message_bytes: 64 * 1024,
    max_brokers_per_target: 8,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = KafkaMessage::decode(data)
        && let Ok(request) = wire::kafka_request(request, LIMITS)
    {
        let _ = ACCESS.check(&request.target);
        let _ = request.target.to_string();
    }
    if let Ok(request) = RabbitMqMessage::decode(data) {
        let password = request
            .target
            .as_ref()
            .and_then(|t| t.server.split_once("://"))
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, password)| password.to_owned());
        if let Ok(request) = wire::rabbitmq_request(request, LIMITS) {
            let _ = ACCESS.check(&request.target);
            if let Target::Amqp(amqp) = &request.target {
                // What the AMQP client sizes its buffers from stays in the safe range.
                let query = &amqp.uri().query;
                assert!(query.frame_max.is_none_or(|f| (4096..=131_072).contains(&f)));
                assert!(query.channel_max.is_none_or(|c| (1..=2047).contains(&c)));
                // Never an empty host, which the AMQP client would take for "localhost".
                assert!(!amqp.uri().authority.host.is_empty());
            }
            let shown = request.target.to_string();
            if let Some(password) = password.filter(|p| !p.is_empty() && p != "***") {
                // Past the redaction marker itself (whose "//***" a crafted URL can mimic as
                // its "password"), the display must not show ":password@".
                let leaked = format!(":{password}@");
                let after_marker = shown.split_once("://***@").map_or(shown.as_str(), |(_, r)| r);
                assert!(!after_marker.contains(&leaked), "password shown in {shown:?}");
            }
        }
    }
});
