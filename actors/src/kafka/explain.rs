//! librdkafka's failures in words a user can act on.
//!
//! librdkafka reports a broker it cannot reach in its error callback, with a reason such
//! as `127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused
//! (after 0ms in state CONNECT)`, and then fails the waiting messages with codes that
//! say nothing of it (`AllBrokersDown`, `PurgeQueue`). [`Causes`] keeps the last such
//! reason of each broker, translated (`cannot connect to 127.0.0.1:9: connection refused`),
//! so the message's answer carries them, every broker's that failed lately (one broker of
//! three being down is not the cause of the whole cluster being out of reach); the
//! original text goes to the debug log. A broker's
//! answer about one message (an unknown topic, say) is translated with the topic named.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;

use crate::error::ProduceError;

/// How long a reason is taken as the cause of the failures that follow it: a failure long
/// after it has a cause of its own.
const CAUSE_LIFETIME: Duration = Duration::from_secs(30);

/// Brokers of one cluster whose reasons are kept: a bootstrap list is a few brokers, and
/// librdkafka names each broker it learns of too.
const MAX_BROKERS: usize = 8;

/// The last reason librdkafka gave for not reaching each broker of one cluster,
/// translated.
#[derive(Debug, Default)]
pub struct Causes {
    /// When each was reported, the broker, and the translation; the newest last.
    last: Mutex<VecDeque<(Instant, String, String)>>,
}

impl Causes {
    /// Notes librdkafka's error-callback `reason` if it says why a broker is unreachable
    /// (in place of that broker's last one); returns the translation.
    pub fn note(&self, reason: &str) -> Option<String> {
        let explained = transport(reason)?;
        let broker = broker_of(reason).to_owned();
        if let Ok(mut last) = self.last.lock() {
            last.retain(|(_, noted, _)| *noted != broker);
            if last.len() == MAX_BROKERS {
                last.pop_front();
            }
            last.push_back((Instant::now(), broker, explained.clone()));
        }
        Some(explained)
    }

    /// The causes noted in the last [`CAUSE_LIFETIME`], one per broker, if any.
    pub fn recent(&self) -> Option<String> {
        let last = self.last.lock().ok()?;
        let recent: Vec<&str> = last
            .iter()
            .filter(|(at, _, _)| at.elapsed() < CAUSE_LIFETIME)
            .map(|(_, _, cause)| cause.as_str())
            .collect();
        (!recent.is_empty()).then(|| recent.join("; "))
    }

    /// `error` with its librdkafka text replaced by the recent cause, when it is a failure
    /// to reach the cluster and a cause is known; otherwise `error` unchanged.
    pub fn explain(&self, error: ProduceError) -> ProduceError {
        match error {
            ProduceError::Unavailable(text) => match self.recent() {
                Some(cause) => {
                    log::debug!(cause:% = cause; "librdkafka said: {text}");
                    ProduceError::Unavailable(cause)
                }
                None => ProduceError::Unavailable(text),
            },
            other => other,
        }
    }
}

/// Translates a reason of librdkafka's error callback about one broker: a refused or
/// failed connection, a name that does not resolve, a port that does not speak Kafka (or
/// speaks TLS to a plaintext client). `None` for anything else.
pub fn transport(reason: &str) -> Option<String> {
    let (_, detail) = reason.split_once(": ")?;
    let broker = broker_of(reason);
    let detail = detail.split(" (after ").next().unwrap_or(detail);
    if let Some(rest) = detail.strip_prefix("Connect to ") {
        let (_, failure) = rest.split_once(" failed: ")?;
        return Some(format!(
            "cannot connect to {broker}: {}",
            lowercase_first(failure)
        ));
    }
    if let Some(rest) = detail.strip_prefix("Failed to resolve '") {
        let (name, failure) = rest.split_once("': ")?;
        return Some(format!(
            "cannot resolve {name}: {}",
            lowercase_first(failure)
        ));
    }
    if detail.contains("SSL listener") || detail.contains("security.protocol") {
        return Some(format!(
            "{broker} closed the connection at the first request: it may expect TLS or SASL \
             (set the cluster's security.protocol in [kafka.clusters])"
        ));
    }
    if reason.contains("Invalid response size") || reason.contains("state APIVERSION_QUERY") {
        return Some(format!(
            "{broker} does not speak Kafka (is it a Kafka broker's port?)"
        ));
    }
    None
}

/// The broker a reason is about: "HOST:PORT/bootstrap: …", "HOST:PORT/1: …", or with
/// the protocol in front ("sasl_ssl://HOST:PORT/1: …").
fn broker_of(reason: &str) -> &str {
    let broker = reason.split_once(": ").map_or(reason, |(broker, _)| broker);
    let broker = broker
        .rsplit_once('/')
        .map_or(broker, |(address, _)| address);
    broker
        .rsplit_once("//")
        .map_or(broker, |(_, address)| address)
}

/// A broker's refusal of a message to `topic` of the cluster `brokers`, in words that
/// say what to do; `None` when the code has no better words than librdkafka's.
pub fn refusal(code: RDKafkaErrorCode, topic: &str, brokers: &str) -> Option<ProduceError> {
    use RDKafkaErrorCode as C;
    let text = match code {
        C::UnknownTopicOrPartition | C::UnknownTopic => format!(
            "topic {topic} does not exist on {brokers}: create it, or enable the cluster's \
             auto.create.topics.enable"
        ),
        C::TopicAuthorizationFailed => format!(
            "not authorised to write to topic {topic} on {brokers}: grant ferry's user WRITE \
             on it"
        ),
        C::MessageSizeTooLarge => format!(
            "the message is larger than {brokers} takes for topic {topic} (the topic's \
             max.message.bytes, the broker's message.max.bytes)"
        ),
        C::InvalidTopic => format!("{topic} is not a valid topic name on {brokers}"),
        _ => return None,
    };
    Some(ProduceError::Rejected(text))
}

/// `text` with its first letter in lower case (`Connection refused` → `connection
/// refused`), to read as the second half of a sentence.
fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The reasons below are librdkafka 2.x's own, as a daemon logged them.
    #[test]
    fn a_refused_connection_names_the_broker_and_the_os_error() {
        let reason = "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection \
                      refused (after 0ms in state CONNECT, 1 identical error(s) suppressed)";
        assert_eq!(
            transport(reason).as_deref(),
            Some("cannot connect to 127.0.0.1:9: connection refused")
        );
    }

    #[test]
    fn a_name_that_does_not_resolve_is_named() {
        let reason = "nosuchhost.invalid:9092/bootstrap: Failed to resolve \
                      'nosuchhost.invalid:9092': Name or service not known (after 0ms in \
                      state CONNECT)";
        assert_eq!(
            transport(reason).as_deref(),
            Some("cannot resolve nosuchhost.invalid:9092: name or service not known")
        );
    }

    #[test]
    fn a_port_of_another_protocol_does_not_speak_kafka() {
        let reason = "127.0.0.1:25672/bootstrap: Receive failed: Invalid response size \
                      1095586128 (0..100000000): increase receive.message.max.bytes (after \
                      0ms in state APIVERSION_QUERY)";
        assert_eq!(
            transport(reason).as_deref(),
            Some("127.0.0.1:25672 does not speak Kafka (is it a Kafka broker's port?)")
        );
    }

    #[test]
    fn other_reasons_are_left_alone() {
        assert_eq!(transport("1/1 brokers are down"), None);
        assert_eq!(transport("no separator"), None);
    }

    #[test]
    fn a_recent_cause_replaces_librdkafkas_words_only_for_unreachability() {
        let causes = Causes::default();
        let purged = ProduceError::Unavailable("PurgeQueue (Local: Purged in queue)".into());
        assert_eq!(causes.explain(purged.clone()), purged);
        causes
            .note("127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused");
        assert_eq!(
            causes.explain(purged),
            ProduceError::Unavailable("cannot connect to 127.0.0.1:9: connection refused".into())
        );
        let rejected = ProduceError::Rejected("x".into());
        assert_eq!(causes.explain(rejected.clone()), rejected);
    }

    #[test]
    fn every_broker_that_failed_lately_is_named_once() {
        let causes = Causes::default();
        let refused = |broker: &str| {
            format!("{broker}/bootstrap: Connect to ipv4#{broker} failed: Connection refused")
        };
        causes.note(&refused("10.0.0.1:9092"));
        causes.note(&refused("10.0.0.2:9092"));
        causes.note(&refused("10.0.0.1:9092"));
        assert_eq!(
            causes.recent().as_deref(),
            Some(
                "cannot connect to 10.0.0.2:9092: connection refused; \
                 cannot connect to 10.0.0.1:9092: connection refused"
            )
        );
        for n in 0..20 {
            causes.note(&refused(&format!("10.0.1.{n}:9092")));
        }
        let kept = causes.recent().unwrap();
        assert_eq!(
            kept.matches("cannot connect").count(),
            MAX_BROKERS,
            "{kept}"
        );
        assert!(
            kept.ends_with("10.0.1.19:9092: connection refused"),
            "{kept}"
        );
    }

    #[test]
    fn an_unknown_topic_says_to_create_it() {
        let refused = refusal(RDKafkaErrorCode::UnknownTopicOrPartition, "t1", "k1:9092");
        let Some(ProduceError::Rejected(text)) = refused else {
            panic!("{refused:?}");
        };
        assert!(
            text.starts_with("topic t1 does not exist on k1:9092: create it"),
            "{text}"
        );
        assert!(refusal(RDKafkaErrorCode::QueueFull, "t1", "k1:9092").is_none());
    }
}
