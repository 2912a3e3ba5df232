//! Where log lines go and in which form: env_logger's text lines (the default), or one JSON
//! object per line for a site's log pipeline (`--log-format json`, `ops.log_format`).
//!
//! Call sites log with `log`'s key-value pairs for what a pipeline filters on (`target`,
//! `id`, `route`, `error_no`, `suppressed_before`, …): the text form writes them after the
//! sentence as ` key=value`, the JSON form as fields of their own. Targets are logged as
//! their redacted display (passwords as `***`), in both forms.
//!
//! The form can change once the config is read (`ops.log_format`), unless the command line
//! fixed it: both loggers are built at start and a flag says which one writes.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use log::kv::{Key, Value, VisitSource};
use serde::Deserialize;

/// The form of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// env_logger's `[time LEVEL module] sentence key=value …`.
    #[default]
    Text,
    /// One JSON object per line: `ts`, `level`, `msg`, `module`, `target`, `id`, `route`,
    /// `error_no` (null where they do not apply) and the line's other key-value pairs.
    Json,
}

/// Whether lines are written as JSON now.
static JSON: AtomicBool = AtomicBool::new(false);
/// Whether the command line chose the form (the config's choice is then ignored).
static FIXED: AtomicBool = AtomicBool::new(false);

/// The fields every JSON line carries, null when the line has no such pair.
const STABLE_FIELDS: [&str; 4] = ["target", "id", "route", "error_no"];

/// Installs the logger: `RUST_LOG`, or `default_level`, filters; `format` from the command
/// line, if given, fixes the form.
pub fn init(default_level: &str, format: Option<LogFormat>) {
    let env = env_logger::Env::default().default_filter_or(default_level);
    let text = env_logger::Builder::from_env(env).build();
    let env = env_logger::Env::default().default_filter_or(default_level);
    let json = env_logger::Builder::from_env(env)
        .format(write_json)
        .build();
    let max_level = text.filter();
    if let Some(format) = format {
        JSON.store(format == LogFormat::Json, Ordering::Relaxed);
        FIXED.store(true, Ordering::Relaxed);
    }
    if log::set_boxed_logger(Box::new(Switch { text, json })).is_ok() {
        log::set_max_level(max_level);
    }
}

/// Uses `format` from now on, unless the command line fixed the form.
pub fn configure(format: LogFormat) {
    if !FIXED.load(Ordering::Relaxed) {
        JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    }
}

/// The text logger and the JSON logger, one of which writes each line.
struct Switch {
    text: env_logger::Logger,
    json: env_logger::Logger,
}

impl Switch {
    fn current(&self) -> &env_logger::Logger {
        if JSON.load(Ordering::Relaxed) {
            &self.json
        } else {
            &self.text
        }
    }
}

impl log::Log for Switch {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.current().enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        self.current().log(record);
    }

    fn flush(&self) {
        self.current().flush();
    }
}

/// Writes `record` as one JSON object and a newline.
fn write_json(
    out: &mut env_logger::fmt::Formatter,
    record: &log::Record<'_>,
) -> std::io::Result<()> {
    let line = json_line(record, chrono::Utc::now());
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// The JSON object of `record`, logged at `now`.
fn json_line(record: &log::Record<'_>, now: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
    let mut fields = serde_json::Map::new();
    fields.insert(
        "ts".into(),
        now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            .into(),
    );
    fields.insert("level".into(), record.level().as_str().into());
    fields.insert("module".into(), record.target().into());
    fields.insert("msg".into(), record.args().to_string().into());
    for name in STABLE_FIELDS {
        fields.insert(name.into(), serde_json::Value::Null);
    }
    // A pair whose value cannot be visited is left out rather than losing the line.
    let _ = record.key_values().visit(&mut Fields(&mut fields));
    for name in STABLE_FIELDS {
        if fields.get(name).is_some_and(|value| value == "") {
            fields.insert(name.into(), serde_json::Value::Null);
        }
    }
    serde_json::Value::Object(fields)
}

/// Collects key-value pairs as JSON fields: numbers and booleans as such, the rest as
/// strings. A pair may not replace `ts`, `level`, `module` or `msg`.
struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let key = key.as_str();
        if matches!(key, "ts" | "level" | "module" | "msg") {
            return Ok(());
        }
        let value = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else if let Some(x) = value.to_f64() {
            x.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key.to_owned(), value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_one_object_with_the_stable_fields() {
        let pairs: [(&str, Value<'_>); 5] = [
            ("target", Value::from_display(&"amqp://u:***@mq1/%2f x")),
            ("error_no", Value::from(4u64)),
            ("msg", Value::from("not this")),
            ("route", Value::from("")),
            ("suppressed_before", Value::from(2u64)),
        ];
        let args = format_args!("Message not delivered");
        let record = log::Record::builder()
            .args(args)
            .level(log::Level::Warn)
            .target("ferry::daemon::ingress")
            .key_values(&pairs)
            .build();
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-05T03:00:00Z")
            .unwrap()
            .to_utc();
        let line = json_line(&record, now);
        assert_eq!(
            line,
            serde_json::json!({
                "ts": "2026-12-05T03:00:00.000Z", "level": "WARN",
                "module": "ferry::daemon::ingress", "msg": "Message not delivered",
                "target": "amqp://u:***@mq1/%2f x", "id": null, "route": null,
                "error_no": 4, "suppressed_before": 2,
            })
        );
    }
}
