//! Any bytes as a `SendKafkaMessage` or `SendRabbitMQMessage` request: decoding,
//! validation, the allowlist check and the redacted display must never panic, and a
//! request that validates must name a target that displays without its password.

#![no_main]

use std::sync::LazyLock;

use ferry::access::{Access, Allowlist, Exchanges};
use ferry::proto::{KafkaMessage, RabbitMqMessage};
use ferry::wire;
use libfuzzer_sys::fuzz_target;
use prost::Message;

static ACCESS: LazyLock<Access> = LazyLock::new(|| {
    let mut list = Allowlist::default();
    list.kafka_brokers.insert("kafka1:9092".into());
    list.rabbitmq.insert("mq1:5672".into(), Exchanges::Any);
    Access::Only(list)
});

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = KafkaMessage::decode(data)
        && let Ok(request) = wire::kafka_request(request, 64 * 1024)
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
        if let Ok(request) = wire::rabbitmq_request(request, 64 * 1024) {
            let _ = ACCESS.check(&request.target);
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
