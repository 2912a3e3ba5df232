//! The JSON envelope job wrappers send, built exactly as the predecessor's client built it
//! (`../shared/design/mission.md`, "The client's message envelope"):
//!
//! ```json
//! {"app": "nwpc-message-client", "type": "ecflow-client", "time": "<RFC 3339>",
//!  "data": {"command": "complete", "args": [], "envs": [], "ecf_host": "…", "ecf_port": "…",
//!           "ecf_name": "…", "ecf_rid": "…", "ecf_tryno": "…", "ecf_date": "…"}}
//! ```
//!
//! One deliberate difference: where the predecessor wrote `null` for an empty `args` or
//! `envs`, ferry writes `[]`, the list the field is documented to be.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{Local, SecondsFormat};
use serde::Serialize;

/// The `app` the predecessor wrote; kept so downstream consumers see no change.
pub const DEFAULT_APP: &str = "nwpc-message-client";
/// The `type` of an ecflow_client event.
pub const ECFLOW_CLIENT_TYPE: &str = "ecflow-client";
/// The `type` of a product event.
pub const PRODUCTION_TYPE: &str = "production";
/// The predecessor's exchange for ecflow_client events.
pub const ECFLOW_CLIENT_EXCHANGE: &str = "nwpc.operation.workflow";
/// The predecessor's routing key for ecflow_client events.
pub const ECFLOW_CLIENT_ROUTING_KEY: &str = "ecflow.command.ecflow_client";
/// The predecessor's exchange for product events.
pub const PRODUCTION_EXCHANGE: &str = "nwpc.operation.production";

/// One event as sent on the wire.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope<T> {
    /// Which program sent it.
    pub app: String,
    /// What kind of event it is: [`ECFLOW_CLIENT_TYPE`] or [`PRODUCTION_TYPE`].
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When it was built, RFC 3339 in local time with the offset.
    pub time: String,
    /// The event itself.
    pub data: T,
}

impl<T: Serialize> Envelope<T> {
    /// An envelope stamped with the current local time.
    pub fn now(app: &str, kind: &'static str, data: T) -> Self {
        Self {
            app: app.to_owned(),
            kind,
            time: Local::now().to_rfc3339_opts(SecondsFormat::AutoSi, true),
            data,
        }
    }

    /// The compact JSON bytes that are sent.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }

    /// Indented JSON for a human (`--disable-send`).
    pub fn to_pretty_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
}

/// The `data` of an ecflow_client event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EcflowClientData {
    /// The ecflow_client command: the last `--option` of the command options, without
    /// dashes (`complete`, `init`, `event`, …).
    pub command: String,
    /// The command's values: each option's `=value`, then the positional arguments.
    pub args: Vec<String>,
    /// Environment entries; the predecessor never filled them, and neither does ferry.
    pub envs: Vec<BTreeMap<String, String>>,
    /// `ECF_HOST`, or `--host` from the command options.
    pub ecf_host: String,
    /// `ECF_PORT`, or `--port` from the command options.
    pub ecf_port: String,
    /// `ECF_NAME`: the task's path in the suite.
    pub ecf_name: String,
    /// `ECF_RID`: the job's id in the batch system.
    pub ecf_rid: String,
    /// `ECF_TRYNO`: the task's try number.
    pub ecf_tryno: String,
    /// `ECF_DATE`: the suite's date.
    pub ecf_date: String,
}

impl EcflowClientData {
    /// Builds the data from the ecflow_client arguments (`--command-options`, split on
    /// whitespace as the predecessor did) and the task's `ECF_*` variables read through
    /// `env`.
    ///
    /// The parsing follows the predecessor's (go-flags with an unknown-option handler):
    /// `--host` and `--port` take a value (`--host=h` or `--host h`) and override the
    /// environment; any other option becomes the command, its `=value` (if any) is an
    /// argument; other words are arguments, after the option values; `--` ends options.
    pub fn from_command_options(options: &str, env: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| env(name).unwrap_or_default();
        let mut data = Self {
            command: String::new(),
            args: Vec::new(),
            envs: Vec::new(),
            ecf_host: var("ECF_HOST"),
            ecf_port: var("ECF_PORT"),
            ecf_name: var("ECF_NAME"),
            ecf_rid: var("ECF_RID"),
            ecf_tryno: var("ECF_TRYNO"),
            ecf_date: var("ECF_DATE"),
        };
        let mut positional = Vec::new();
        let mut tokens = options.split_whitespace();
        while let Some(token) = tokens.next() {
            if token == "--" {
                positional.extend(tokens.by_ref().map(str::to_owned));
                break;
            }
            let Some(option) = token
                .strip_prefix("--")
                .or_else(|| token.strip_prefix('-'))
                .filter(|option| !option.is_empty())
            else {
                positional.push(token.to_owned());
                continue;
            };
            let (name, value) = match option.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (option, None),
            };
            match name {
                "host" | "port" => {
                    let value = value
                        .map(str::to_owned)
                        .or_else(|| tokens.next().map(str::to_owned));
                    if let Some(value) = value.filter(|v| !v.is_empty()) {
                        if name == "host" {
                            data.ecf_host = value;
                        } else {
                            data.ecf_port = value;
                        }
                    }
                }
                _ => {
                    data.command = name.to_owned();
                    if let Some(value) = value.filter(|v| !v.is_empty()) {
                        data.args.push(value.to_owned());
                    }
                }
            }
        }
        data.args.extend(positional);
        data
    }
}

/// The status of a product event, sent as its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// 0
    Unknown = 0,
    /// 1
    Complete = 1,
    /// 2
    Queued = 2,
    /// 3
    Aborted = 3,
    /// 4
    Submitted = 4,
    /// 5
    Active = 5,
    /// 6
    Suspended = 6,
}

impl EventStatus {
    /// Every status, in numeric order.
    const ALL: [Self; 7] = [
        Self::Unknown,
        Self::Complete,
        Self::Queued,
        Self::Aborted,
        Self::Submitted,
        Self::Active,
        Self::Suspended,
    ];

    /// The status's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Complete => "complete",
            Self::Queued => "queued",
            Self::Aborted => "aborted",
            Self::Submitted => "submitted",
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }
}

impl fmt::Display for EventStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EventStatus {
    type Err = String;

    /// A name (`complete`) or a number (`1`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == text || (*s as u8).to_string() == text)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.name()).collect();
                format!(
                    "unknown status {text:?}: expected 0-6 or one of {}",
                    names.join(", ")
                )
            })
    }
}

impl Serialize for EventStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(*self as u8)
    }
}

/// The `data` of a product event of the operational stream, with the predecessor's field
/// names and order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductionData {
    /// The system, e.g. `grapes_gfs_gmf`.
    pub system: String,
    /// The production type, e.g. `grib2`.
    #[serde(rename = "type")]
    pub production_type: String,
    /// The stream, e.g. `oper`.
    pub stream: String,
    /// The production name, e.g. `orig` (the predecessor's JSON calls it `product`).
    pub product: String,
    /// Start time, `YYYYMMDDHH`.
    pub start_time: String,
    /// Forecast time, e.g. `24h`.
    pub forecast_time: String,
    /// The event, e.g. `storage`.
    pub event: String,
    /// The event's status.
    pub status: EventStatus,
}

impl ProductionData {
    /// The predecessor's routing key for this event: `{system}.production.{type}`.
    pub fn routing_key(&self) -> String {
        format!("{}.production.{}", self.system, self.production_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        let value = match name {
            "ECF_HOST" => "login_b01",
            "ECF_PORT" => "31067",
            "ECF_NAME" => "/grapes_gfs_gmf/00/model/fcst",
            "ECF_RID" => "123456",
            "ECF_TRYNO" => "2",
            "ECF_DATE" => "20261121",
            _ => return None,
        };
        Some(value.to_owned())
    }

    fn parse(options: &str) -> EcflowClientData {
        EcflowClientData::from_command_options(options, env)
    }

    #[test]
    fn a_plain_command_takes_the_environment() {
        let data = parse("--complete");
        assert_eq!(data.command, "complete");
        assert!(data.args.is_empty());
        assert_eq!(data.ecf_host, "login_b01");
        assert_eq!(data.ecf_port, "31067");
        assert_eq!(data.ecf_name, "/grapes_gfs_gmf/00/model/fcst");
        assert_eq!(data.ecf_rid, "123456");
        assert_eq!(data.ecf_tryno, "2");
        assert_eq!(data.ecf_date, "20261121");
    }

    #[test]
    fn option_values_then_positionals_become_args() {
        let data = parse("--init=31234");
        assert_eq!(
            (data.command.as_str(), data.args.clone()),
            ("init", vec!["31234".into()])
        );
        let data = parse("--event=done");
        assert_eq!(data.args, ["done"]);
        let data = parse("--meter=progress 10");
        assert_eq!(data.command, "meter");
        assert_eq!(data.args, ["progress", "10"]);
        let data = parse("--alter change variable X Y /suite/task");
        assert_eq!(data.command, "alter");
        assert_eq!(data.args, ["change", "variable", "X", "Y", "/suite/task"]);
        // A later option is the command; option values come before positionals.
        let data = parse("--label=name first second --force=x");
        assert_eq!(data.command, "force");
        assert_eq!(data.args, ["name", "x", "first", "second"]);
        let data = parse("--abort -- --not-an-option");
        assert_eq!(data.command, "abort");
        assert_eq!(data.args, ["--not-an-option"]);
    }

    #[test]
    fn host_and_port_override_the_environment() {
        let data = parse("--port=1234 --host other --complete");
        assert_eq!(data.command, "complete");
        assert!(data.args.is_empty());
        assert_eq!(data.ecf_host, "other");
        assert_eq!(data.ecf_port, "1234");
        // Without a value, the environment stays.
        let data = parse("--complete --host");
        assert_eq!(data.ecf_host, "login_b01");
    }

    #[test]
    fn missing_variables_are_empty_strings() {
        let data = EcflowClientData::from_command_options("--complete", |_| None);
        assert_eq!(data.ecf_host, "");
        assert_eq!(data.ecf_date, "");
    }

    #[test]
    fn the_envelope_has_the_predecessors_fields() {
        let envelope = Envelope::now(DEFAULT_APP, ECFLOW_CLIENT_TYPE, parse("--complete"));
        let json: serde_json::Value = serde_json::from_slice(&envelope.to_json().unwrap()).unwrap();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 4);
        for key in ["app", "type", "time", "data"] {
            assert!(keys.contains(&key.to_owned()), "{key}");
        }
        assert_eq!(json["type"], "ecflow-client");
        assert_eq!(json["data"]["args"], serde_json::json!([]));
        assert_eq!(json["data"]["envs"], serde_json::json!([]));
        let time = json["time"].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(time).unwrap();
    }

    #[test]
    fn production_data_keeps_the_predecessors_names() {
        let data = ProductionData {
            system: "grapes_gfs_gmf".into(),
            production_type: "grib2".into(),
            stream: "oper".into(),
            product: "orig".into(),
            start_time: "2026112100".into(),
            forecast_time: "24h".into(),
            event: "storage".into(),
            status: "complete".parse().unwrap(),
        };
        assert_eq!(data.routing_key(), "grapes_gfs_gmf.production.grib2");
        let json = serde_json::to_string(&data).unwrap();
        assert_eq!(
            json,
            r#"{"system":"grapes_gfs_gmf","type":"grib2","stream":"oper","product":"orig","start_time":"2026112100","forecast_time":"24h","event":"storage","status":1}"#
        );
    }

    #[test]
    fn statuses_parse_by_name_or_number() {
        assert_eq!("aborted".parse(), Ok(EventStatus::Aborted));
        assert_eq!("3".parse(), Ok(EventStatus::Aborted));
        assert!("7".parse::<EventStatus>().is_err());
        assert!("done".parse::<EventStatus>().is_err());
    }
}
