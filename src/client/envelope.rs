//! The JSON envelope job wrappers send, built exactly as the predecessor's client built it
//! (`../shared/design/mission.md`, "The client's message envelope"):
//!
//! ```json
//! {"app": "nwpc-message-client", "type": "ecflow-client", "time": "<RFC 3339>",
//!  "data": {"command": "complete", "args": null, "envs": null, "ecf_host": "…",
//!           "ecf_port": "…", "ecf_name": "…", "ecf_rid": "…", "ecf_tryno": "…",
//!           "ecf_date": "…"}}
//! ```
//!
//! Three kinds of `data`: [`EcflowClientData`], [`ProductionData`] (type `production`) and
//! [`LogData`] (also type `production`, as the predecessor sends it). Where the predecessor
//! wrote `null` (an empty `args`, every `envs`, a log without content) ferry writes `null`
//! too, since the fleet's consumers parse exactly that; the tests pin each envelope against
//! JSON taken from the predecessor's behaviour.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, Local, NaiveDate, SecondsFormat, TimeZone, Utc};
use serde::{Serialize, Serializer};

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
/// The predecessor's exchange for log events.
pub const LOG_EXCHANGE: &str = "nwpc.operation.log";

/// A time as the predecessor's JSON wrote it (Go's `time.Time`): RFC 3339, `Z` for UTC,
/// fractional seconds only when there are any.
pub fn rfc3339<Tz: TimeZone>(time: &DateTime<Tz>) -> String
where
    Tz::Offset: fmt::Display,
{
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Reads a start time, `YYYYMMDDHH` (UTC), as the predecessor did; e.g. `2026112200` is
/// 2026-11-22T00:00:00Z.
pub fn parse_start_time(text: &str) -> Result<DateTime<Utc>, String> {
    let invalid = || format!("invalid start time {text:?}: expected YYYYMMDDHH, e.g. 2026112200");
    if text.len() != 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    // Ten ASCII digits: every slice below is in bounds and parses.
    let number = |range: std::ops::Range<usize>| text[range].parse::<u32>().map_err(|_| invalid());
    let year = i32::try_from(number(0..4)?).map_err(|_| invalid())?;
    NaiveDate::from_ymd_opt(year, number(4..6)?, number(6..8)?)
        .and_then(|date| date.and_hms_opt(number(8..10).ok()?, 0, 0))
        .map(|time| time.and_utc())
        .ok_or_else(invalid)
}

/// Reads a log time: `YYYYMMDDHH` (UTC) or RFC 3339 with its offset, which is kept.
///
/// The predecessor guessed the format and read `2026112206` as a Unix timestamp (the year
/// 2034); ferry reads it as the hour it names.
pub fn parse_log_time(text: &str) -> Result<DateTime<FixedOffset>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time);
    }
    parse_start_time(text)
        .map(|time| time.fixed_offset())
        .map_err(|_| {
            format!(
                "invalid time {text:?}: expected YYYYMMDDHH (UTC) or RFC 3339, e.g. 2026112206 or \
             2026-11-22T06:00:00+08:00"
            )
        })
}

/// One event as sent on the wire.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope<T> {
    /// Which program sent it.
    pub app: String,
    /// What kind of event it is: [`ECFLOW_CLIENT_TYPE`] or [`PRODUCTION_TYPE`] (products
    /// and logs).
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
            time: rfc3339(&Local::now()),
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
    /// The command's values: each option's `=value`, then the positional arguments;
    /// `null` on the wire when there are none, as the predecessor sent it.
    #[serde(serialize_with = "empty_as_null")]
    pub args: Vec<String>,
    /// Environment entries: the predecessor never filled them and always sent `null`, and
    /// so does ferry.
    pub envs: Option<Vec<BTreeMap<String, String>>>,
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
            envs: None,
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

/// Writes an empty list as `null`, as Go's JSON writes a nil slice.
fn empty_as_null<S: Serializer>(items: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    if items.is_empty() {
        serializer.serialize_none()
    } else {
        serializer.collect_seq(items)
    }
}

/// Writes a time as [`rfc3339`].
fn as_rfc3339<S: Serializer, Tz: TimeZone>(
    time: &DateTime<Tz>,
    serializer: S,
) -> Result<S::Ok, S::Error>
where
    Tz::Offset: fmt::Display,
{
    serializer.serialize_str(&rfc3339(time))
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

/// The production streams the predecessor knew; their consumers parse nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductionStream {
    /// `oper`: the deterministic forecast.
    Oper,
    /// `eps`: the ensemble, whose events carry the member `number`.
    Eps,
}

impl ProductionStream {
    /// The stream's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Oper => "oper",
            Self::Eps => "eps",
        }
    }
}

impl FromStr for ProductionStream {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "oper" => Ok(Self::Oper),
            "eps" => Ok(Self::Eps),
            _ => Err(format!(
                "unsupported production stream {text:?}: expected oper or eps"
            )),
        }
    }
}

impl Serialize for ProductionStream {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// The `data` of a product event, with the predecessor's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductionData {
    /// The system, e.g. `grapes_gfs_gmf`.
    pub system: String,
    /// The stream, `oper` or `eps`.
    pub stream: ProductionStream,
    /// The production type, e.g. `grib2`.
    #[serde(rename = "type")]
    pub production_type: String,
    /// The production name, e.g. `orig`.
    pub name: String,
    /// The forecast's start time; RFC 3339 in UTC on the wire.
    #[serde(serialize_with = "as_rfc3339")]
    pub start_time: DateTime<Utc>,
    /// Forecast time, e.g. `024h`.
    pub forecast_time: String,
    /// The ensemble member (`eps` only; absent from `oper` events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// The event, e.g. `storage`.
    pub event: String,
    /// The event's status.
    pub status: EventStatus,
}

impl ProductionData {
    /// Checks what the predecessor required of a stream: `eps` events name their member,
    /// `oper` events have none.
    pub fn check(&self) -> Result<(), String> {
        match (self.stream, self.number) {
            (ProductionStream::Eps, None) => Err(
                "--number is required for --production-stream=eps (the member, e.g. --number=3)"
                    .into(),
            ),
            (ProductionStream::Oper, Some(_)) => Err(
                "--number is only for --production-stream=eps: an oper event has no member".into(),
            ),
            _ => Ok(()),
        }
    }

    /// The predecessor's routing key for this event: `{system}.production.{type}`.
    pub fn routing_key(&self) -> String {
        format!("{}.production.{}", self.system, self.production_type)
    }
}

/// The `data` of a log event (`ferry log`), with the predecessor's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogData {
    /// The system, e.g. `grapes_gfs_gmf`.
    pub system: String,
    /// The forecast's start time; RFC 3339 in UTC on the wire.
    #[serde(serialize_with = "as_rfc3339")]
    pub start_time: DateTime<Utc>,
    /// When the logged thing happened (now when not given); RFC 3339 on the wire.
    #[serde(serialize_with = "as_rfc3339")]
    pub time: DateTime<FixedOffset>,
    /// The level, e.g. `info`.
    pub level: String,
    /// The log type, e.g. `prepare`.
    #[serde(rename = "type")]
    pub log_type: String,
    /// The content options given after `--`, or `null` when there was no `--`.
    pub content: Option<BTreeMap<String, String>>,
}

impl LogData {
    /// Reads the content options given after `--`: each `--name=value` (or `-name=value`)
    /// becomes `"name": "value"`. An option with an empty value is left out, as the
    /// predecessor left it out; a word that is not `--name=value` is an error, where the
    /// predecessor dropped it without a word.
    pub fn parse_content(words: &[String]) -> Result<BTreeMap<String, String>, String> {
        let mut content = BTreeMap::new();
        for word in words {
            let option = word
                .strip_prefix("--")
                .or_else(|| word.strip_prefix('-'))
                .and_then(|option| option.split_once('='))
                .filter(|(name, _)| !name.is_empty());
            let Some((name, value)) = option else {
                return Err(format!(
                    "content {word:?} is not --name=value (after --, e.g. -- --forecast-time=0h --source=ncep)"
                ));
            };
            if !value.is_empty() {
                content.insert(name.to_owned(), value.to_owned());
            }
        }
        Ok(content)
    }

    /// The predecessor's routing key for this event: `{system}.log.{type}`.
    pub fn routing_key(&self) -> String {
        format!("{}.log.{}", self.system, self.log_type)
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
        let time = json["time"].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(time).unwrap();
    }

    /// Parses an envelope's JSON and drops `time` (the send time), which no literal can pin.
    fn sent<T: Serialize>(kind: &'static str, data: T) -> serde_json::Value {
        let envelope = Envelope::now(DEFAULT_APP, kind, data);
        let mut json: serde_json::Value =
            serde_json::from_slice(&envelope.to_json().unwrap()).unwrap();
        let time = json.as_object_mut().unwrap().remove("time").unwrap();
        chrono::DateTime::parse_from_rfc3339(time.as_str().unwrap()).unwrap();
        json
    }

    #[test]
    fn an_ecflow_client_event_without_values_is_the_predecessors_to_the_byte() {
        let expected = serde_json::json!({
            "app": "nwpc-message-client", "type": "ecflow-client",
            "data": {"command": "complete", "args": null, "envs": null,
                     "ecf_host": "login_b01", "ecf_port": "31067",
                     "ecf_name": "/grapes_gfs_gmf/00/model/fcst", "ecf_rid": "123456",
                     "ecf_tryno": "2", "ecf_date": "20261121"}});
        assert_eq!(sent(ECFLOW_CLIENT_TYPE, parse("--complete")), expected);
    }

    #[test]
    fn an_ecflow_client_event_with_values_is_the_predecessors() {
        let expected = serde_json::json!({
            "app": "nwpc-message-client", "type": "ecflow-client",
            "data": {"command": "meter", "args": ["progress", "10"], "envs": null,
                     "ecf_host": "login_b01", "ecf_port": "31067",
                     "ecf_name": "/grapes_gfs_gmf/00/model/fcst", "ecf_rid": "123456",
                     "ecf_tryno": "2", "ecf_date": "20261121"}});
        assert_eq!(
            sent(ECFLOW_CLIENT_TYPE, parse("--meter=progress 10")),
            expected
        );
    }

    fn production(stream: &str, number: Option<u32>) -> ProductionData {
        ProductionData {
            system: "grapes_gfs_gmf".into(),
            stream: stream.parse().unwrap(),
            production_type: "grib2".into(),
            name: "orig".into(),
            start_time: parse_start_time("2026112200").unwrap(),
            forecast_time: "024h".into(),
            number,
            event: "storage".into(),
            status: "complete".parse().unwrap(),
        }
    }

    #[test]
    fn an_oper_product_event_is_the_predecessors() {
        let expected = serde_json::json!({
            "app": "nwpc-message-client", "type": "production",
            "data": {"system": "grapes_gfs_gmf", "stream": "oper", "type": "grib2",
                     "name": "orig", "start_time": "2026-11-22T00:00:00Z",
                     "forecast_time": "024h", "event": "storage", "status": 1}});
        let data = production("oper", None);
        assert_eq!(data.check(), Ok(()));
        assert_eq!(data.routing_key(), "grapes_gfs_gmf.production.grib2");
        assert_eq!(sent(PRODUCTION_TYPE, data), expected);
    }

    #[test]
    fn an_eps_product_event_carries_its_member_number() {
        let expected = serde_json::json!({
            "app": "nwpc-message-client", "type": "production",
            "data": {"system": "grapes_gfs_gmf", "stream": "eps", "type": "grib2",
                     "name": "orig", "start_time": "2026-11-22T00:00:00Z",
                     "forecast_time": "024h", "number": 3, "event": "storage",
                     "status": 1}});
        let data = production("eps", Some(3));
        assert_eq!(data.check(), Ok(()));
        assert_eq!(sent(PRODUCTION_TYPE, data), expected);
    }

    #[test]
    fn the_member_number_is_required_for_eps_and_refused_for_oper() {
        assert!(
            production("eps", None)
                .check()
                .unwrap_err()
                .contains("required")
        );
        assert!(
            production("oper", Some(3))
                .check()
                .unwrap_err()
                .contains("only for")
        );
        let error = "test".parse::<ProductionStream>().unwrap_err();
        assert!(error.contains("oper or eps"), "{error}");
    }

    #[test]
    fn a_log_event_is_the_predecessors() {
        let words: Vec<String> = ["--forecast-time=0h", "--source=ncep", "--empty="]
            .map(String::from)
            .into();
        let data = LogData {
            system: "grapes_gfs_gmf".into(),
            start_time: parse_start_time("2026112200").unwrap(),
            time: parse_log_time("2026-11-22T06:10:00+08:00").unwrap(),
            level: "info".into(),
            log_type: "prepare".into(),
            content: Some(LogData::parse_content(&words).unwrap()),
        };
        assert_eq!(data.routing_key(), "grapes_gfs_gmf.log.prepare");
        let expected = serde_json::json!({
            "app": "nwpc-message-client", "type": "production",
            "data": {"system": "grapes_gfs_gmf", "start_time": "2026-11-22T00:00:00Z",
                     "time": "2026-11-22T06:10:00+08:00", "level": "info",
                     "type": "prepare",
                     "content": {"forecast-time": "0h", "source": "ncep"}}});
        assert_eq!(sent(PRODUCTION_TYPE, data.clone()), expected);
        let without = LogData {
            content: None,
            ..data
        };
        assert_eq!(
            sent(PRODUCTION_TYPE, without)["data"]["content"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn content_words_must_be_name_value_options() {
        let words = ["--source".to_owned(), "ncep".to_owned()];
        assert!(LogData::parse_content(&words).is_err());
        assert!(LogData::parse_content(&["--=x".to_owned()]).is_err());
    }

    #[test]
    fn times_are_read_as_the_hour_they_name_in_utc_or_rfc3339() {
        assert_eq!(
            rfc3339(&parse_log_time("2026112206").unwrap()),
            "2026-11-22T06:00:00Z",
            "the predecessor sent the year 2034 for this"
        );
        assert_eq!(
            rfc3339(&parse_log_time("2026-11-22T06:00:00.5+08:00").unwrap()),
            "2026-11-22T06:00:00.500+08:00"
        );
        for bad in [
            "",
            "202611220",
            "2026113100",
            "2026112224",
            "20261122ab",
            "+026112200",
        ] {
            assert!(parse_start_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn statuses_parse_by_name_or_number() {
        assert_eq!("aborted".parse(), Ok(EventStatus::Aborted));
        assert_eq!("3".parse(), Ok(EventStatus::Aborted));
        assert!("7".parse::<EventStatus>().is_err());
        assert!("done".parse::<EventStatus>().is_err());
    }
}
