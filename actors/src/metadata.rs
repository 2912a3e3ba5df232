//! What a message may carry besides its bytes, per broker: for Kafka a key, headers and a
//! partition; for RabbitMQ the AMQP basic properties a sender sets (headers, TTL, content
//! type, …). Validated here, applied by the backends, stored with a spooled message.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::InvalidRequest;

/// Most headers one message may carry.
pub const MAX_HEADERS: usize = 64;
/// Longest header name, in bytes (AMQP's short-string limit).
pub const MAX_HEADER_NAME_BYTES: usize = 255;
/// Most bytes of all header names and values of one message together.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Longest Kafka key, in bytes.
pub const MAX_KEY_BYTES: usize = 16 * 1024;
/// Longest AMQP property string (short strings on the wire), in bytes.
pub const MAX_PROPERTY_BYTES: usize = 255;
/// Longest AMQP TTL: RabbitMQ takes at most 2^32 - 1 ms (about 49 days).
pub const MAX_EXPIRATION_MS: u64 = u32::MAX as u64;

/// The metadata of one message, for the kind of broker its target is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metadata {
    /// For a Kafka target.
    Kafka(KafkaMetadata),
    /// For a RabbitMQ target.
    Amqp(AmqpMetadata),
}

/// What a Kafka record carries besides its value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaMetadata {
    /// The record's key (records with one key go to one partition, in order).
    pub key: Option<Bytes>,
    /// Record headers, in order; a name may repeat.
    pub headers: Vec<(String, Bytes)>,
    /// The partition, instead of the one the key (or the partitioner) picks.
    pub partition: Option<i32>,
}

/// An AMQP header value: the field-table types a sender may set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderValue {
    /// A long string.
    Text(String),
    /// A signed 64-bit integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

/// AMQP basic properties a sender may set. ferry always publishes persistent
/// (`delivery_mode` 2); `content_type` defaults to `text/plain`, as before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmqpMetadata {
    /// The `headers` field table.
    pub headers: BTreeMap<String, HeaderValue>,
    /// Per-message TTL in milliseconds (`expiration`): a queue drops the message after it.
    pub expiration_ms: Option<u64>,
    /// `content_type`, e.g. `application/json`.
    pub content_type: Option<String>,
    /// `content_encoding`, e.g. `gzip`.
    pub content_encoding: Option<String>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `message_id`; without it, the message's ferry id is sent here.
    pub message_id: Option<String>,
    /// `type`.
    pub kind: Option<String>,
    /// `app_id`.
    pub app_id: Option<String>,
    /// `priority`, 0-255 (queues honour up to their `x-max-priority`).
    pub priority: Option<u8>,
}

impl Metadata {
    /// Checks the bounds above; an error names the field.
    pub fn check(&self) -> Result<(), InvalidRequest> {
        match self {
            Self::Kafka(kafka) => kafka.check(),
            Self::Amqp(amqp) => amqp.check(),
        }
    }

    /// Bytes it takes (counted with the payload against in-flight and spool bounds).
    pub fn bytes(&self) -> usize {
        match self {
            Self::Kafka(kafka) => {
                kafka.key.as_ref().map_or(0, Bytes::len)
                    + kafka
                        .headers
                        .iter()
                        .map(|(name, value)| name.len() + value.len())
                        .sum::<usize>()
            }
            Self::Amqp(amqp) => {
                let strings = [
                    &amqp.content_type,
                    &amqp.content_encoding,
                    &amqp.correlation_id,
                    &amqp.message_id,
                    &amqp.kind,
                    &amqp.app_id,
                ];
                strings
                    .iter()
                    .flat_map(|s| s.as_ref())
                    .map(String::len)
                    .sum::<usize>()
                    + amqp
                        .headers
                        .iter()
                        .map(|(name, value)| name.len() + value.bytes())
                        .sum::<usize>()
            }
        }
    }
}

impl HeaderValue {
    /// Bytes it takes on the wire, roughly.
    fn bytes(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Int(_) => 8,
            Self::Bool(_) => 1,
        }
    }
}

/// Checks a header name: 1 to [`MAX_HEADER_NAME_BYTES`] bytes.
fn check_header_name(name: &str) -> Result<(), InvalidRequest> {
    if name.is_empty() || name.len() > MAX_HEADER_NAME_BYTES {
        return Err(InvalidRequest::new(
            "headers",
            format!(
                "a header name must be 1 to {MAX_HEADER_NAME_BYTES} bytes, not {}",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// Checks the number and total size of headers.
fn check_headers(count: usize, bytes: usize) -> Result<(), InvalidRequest> {
    if count > MAX_HEADERS {
        return Err(InvalidRequest::new(
            "headers",
            format!("{count} headers is more than the {MAX_HEADERS} allowed"),
        ));
    }
    if bytes > MAX_HEADER_BYTES {
        return Err(InvalidRequest::new(
            "headers",
            format!("{bytes} bytes of headers is more than the {MAX_HEADER_BYTES} allowed"),
        ));
    }
    Ok(())
}

impl KafkaMetadata {
    /// Checks the key, the headers and the partition.
    fn check(&self) -> Result<(), InvalidRequest> {
        if let Some(key) = &self.key
            && key.len() > MAX_KEY_BYTES
        {
            return Err(InvalidRequest::new(
                "key",
                format!(
                    "{} bytes is more than the {MAX_KEY_BYTES} allowed",
                    key.len()
                ),
            ));
        }
        for (name, _) in &self.headers {
            check_header_name(name)?;
        }
        let bytes = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        check_headers(self.headers.len(), bytes)?;
        if let Some(partition) = self.partition
            && partition < 0
        {
            return Err(InvalidRequest::new(
                "partition",
                format!("{partition} is not a partition (0 or more)"),
            ));
        }
        Ok(())
    }
}

impl AmqpMetadata {
    /// Checks the headers, the TTL and the property strings.
    fn check(&self) -> Result<(), InvalidRequest> {
        for name in self.headers.keys() {
            check_header_name(name)?;
        }
        let bytes = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.bytes())
            .sum();
        check_headers(self.headers.len(), bytes)?;
        if let Some(ttl) = self.expiration_ms
            && !(1..=MAX_EXPIRATION_MS).contains(&ttl)
        {
            return Err(InvalidRequest::new(
                "expiration",
                format!("{ttl} ms: a TTL must be 1 to {MAX_EXPIRATION_MS} ms"),
            ));
        }
        let strings = [
            ("content_type", &self.content_type),
            ("content_encoding", &self.content_encoding),
            ("correlation_id", &self.correlation_id),
            ("message_id", &self.message_id),
            ("type", &self.kind),
            ("app_id", &self.app_id),
        ];
        for (field, value) in strings {
            if let Some(value) = value
                && value.len() > MAX_PROPERTY_BYTES
            {
                return Err(InvalidRequest::new(
                    field,
                    format!(
                        "{} bytes is more than the {MAX_PROPERTY_BYTES} allowed",
                        value.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_and_the_error_names_the_field() {
        let long_name = "h".repeat(MAX_HEADER_NAME_BYTES + 1);
        let kafka = |m: KafkaMetadata| Metadata::Kafka(m).check().map_err(|e| e.to_string());
        let error = kafka(KafkaMetadata {
            headers: vec![(long_name.clone(), Bytes::new())],
            ..Default::default()
        })
        .unwrap_err();
        assert!(error.contains("headers"), "{error}");
        let error = kafka(KafkaMetadata {
            partition: Some(-1),
            ..Default::default()
        })
        .unwrap_err();
        assert!(error.contains("partition"), "{error}");
        let amqp = |m: AmqpMetadata| Metadata::Amqp(m).check().map_err(|e| e.to_string());
        for ttl in [0, MAX_EXPIRATION_MS + 1] {
            let error = amqp(AmqpMetadata {
                expiration_ms: Some(ttl),
                ..Default::default()
            })
            .unwrap_err();
            assert!(error.contains("expiration"), "{error}");
        }
        let error = amqp(AmqpMetadata {
            correlation_id: Some("c".repeat(256)),
            ..Default::default()
        })
        .unwrap_err();
        assert!(error.contains("correlation_id"), "{error}");
        let many: BTreeMap<_, _> = (0..=MAX_HEADERS)
            .map(|i| (format!("h{i}"), HeaderValue::Bool(true)))
            .collect();
        let error = amqp(AmqpMetadata {
            headers: many,
            ..Default::default()
        })
        .unwrap_err();
        assert!(error.contains("headers"), "{error}");
        assert!(
            amqp(AmqpMetadata {
                expiration_ms: Some(30_000),
                priority: Some(9),
                ..Default::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn metadata_survives_the_spools_encoding() {
        let metadata = Metadata::Kafka(KafkaMetadata {
            key: Some(Bytes::from_static(b"task/1")),
            headers: vec![
                ("a".into(), Bytes::from_static(b"1")),
                ("a".into(), Bytes::from_static(b"\xff")),
            ],
            partition: Some(2),
        });
        let encoded = serde_json::to_vec(&metadata).unwrap();
        assert_eq!(
            serde_json::from_slice::<Metadata>(&encoded).unwrap(),
            metadata
        );
    }
}
