//! `ferry spool`: what a spool directory holds, per target, and the operator's tools for
//! its dead letters and damaged databases:
//!
//! Every one of them finds the spool from `--dir DIR`, or from the `spool.dir` of the
//! daemon's config (`--config FILE`). The reading ones (the listing and `export`) also take
//! the config from `FERRY_CONFIG`, as the other operator commands find their daemon; those
//! that change the spool do not: a variable left in a shell must not choose the spool
//! whose dead letters are deleted.
//!
//! - `ferry spool --dir DIR`: records waiting per target, dead letters per target with
//!   the last error of the newest, and the quarantine. Read-only: also while a daemon runs.
//!   With the daemon's config, each line is also checked against it: a route it no longer
//!   has, or a target its allowlist no longer names, is shown as held, with what to change.
//! - `ferry spool export --dir DIR`: the dead letters as JSON lines (payload base64), for
//!   a person to read. Read-only.
//! - `ferry spool requeue --dir DIR (--id ID… | --target T | --all)`: dead letters back
//!   into line, each at its old place. Needs the daemon stopped (it takes the spool's
//!   lock); the daemon replays them when it starts.
//! - `ferry spool purge --dir DIR (--id ID… | --target T | --all)`: dead letters deleted
//!   for good, after an export. Needs the daemon stopped.
//! - `ferry spool salvage --dir DIR --from DIR/corrupt-…`: every intact record of a
//!   damaged database that `ferry serve` moved aside, copied back. Needs the daemon
//!   stopped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use clap::{Args, Subcommand};
use ferry_spool::{DeadLetter, Destination, Kind, Selection, SpoolError, Store};

use crate::config::{Config, Settings};

/// Exit code when the spool is held by a running daemon (EX_TEMPFAIL).
const EXIT_IN_USE: u8 = 75;
/// Exit code when the spool cannot be read or written (EX_IOERR).
pub const EXIT_SPOOL_IO: u8 = 74;

/// Flags of `ferry spool`.
#[derive(Debug, Args)]
pub struct SpoolArgs {
    /// The spool directory [default: the config's spool.dir]. Example: --dir /var/spool/ferry
    #[arg(long, value_name = "DIR", global = true)]
    pub dir: Option<PathBuf>,
    /// The daemon's config: its spool.dir is the spool, and the listing shows the lines it
    /// would hold (a route it lacks, a target its allowlist does not name) [default for the
    /// listing and export: FERRY_CONFIG]. Example: --config /etc/ferry/ferry.toml
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// What to do; without one, list what the spool holds.
    #[command(subcommand)]
    pub action: Option<SpoolAction>,
}

/// What `ferry spool` does besides listing.
#[derive(Debug, Subcommand)]
pub enum SpoolAction {
    /// Write dead letters as JSON lines (payload base64) to stdout. Read-only.
    ///
    /// Example: ferry spool export --dir /var/spool/ferry > dead.jsonl
    Export(SelectArgs),
    /// Put dead letters back in line for replay, each at its old place. Stop the daemon
    /// first; it replays them when it starts.
    ///
    /// Example: ferry spool requeue --dir /var/spool/ferry --all
    Requeue(SelectArgs),
    /// Delete dead letters for good (export them first). Stop the daemon first.
    ///
    /// Example: ferry spool purge --dir /var/spool/ferry --id 0193a4c2-…
    Purge(SelectArgs),
    /// Copy every intact record of a damaged database that ferry serve moved aside back
    /// into the spool. Stop the daemon first.
    ///
    /// Example: ferry spool salvage --dir /var/spool/ferry --from /var/spool/ferry/corrupt-1733300000000
    Salvage(SalvageArgs),
}

/// Which dead letters (`--all` when none is given for export).
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Dead letters with this message id (repeatable).
    #[arg(long = "id", value_name = "ID", conflicts_with_all = ["target", "all"])]
    pub ids: Vec<String>,
    /// Dead letters of this target: a Kafka bootstrap list as `ferry spool` prints it, an
    /// AMQP exchange, or route:NAME for a route's.
    #[arg(long, value_name = "TARGET", conflicts_with = "all")]
    pub target: Option<String>,
    /// Every dead letter.
    #[arg(long)]
    pub all: bool,
}

/// Flags of `ferry spool salvage`.
#[derive(Debug, Args)]
pub struct SalvageArgs {
    /// The damaged database's folder. Example: --from /var/spool/ferry/corrupt-1733300000000
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
}

impl SelectArgs {
    /// The selection, or `None` when the flags name none.
    fn selection(&self) -> Option<Selection> {
        if self.all {
            Some(Selection::All)
        } else if let Some(target) = &self.target {
            Some(Selection::Target(target.clone()))
        } else if !self.ids.is_empty() {
            Some(Selection::Ids(self.ids.clone()))
        } else {
            None
        }
    }
}

/// Runs `ferry spool`.
pub fn run(args: SpoolArgs) -> ExitCode {
    let reads_only = matches!(args.action, None | Some(SpoolAction::Export(_)));
    let from_environment = args.config.is_none() && reads_only;
    let config = match from_environment {
        true => std::env::var_os("FERRY_CONFIG").map(PathBuf::from),
        false => args.config,
    };
    let (dir, settings) = match locate(args.dir, config.as_deref(), from_environment) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let result = match args.action {
        Some(SpoolAction::Export(select)) => export(&dir, &select),
        Some(SpoolAction::Requeue(select)) => requeue(&dir, &select),
        Some(SpoolAction::Purge(select)) => purge(&dir, &select),
        Some(SpoolAction::Salvage(salvage)) => salvage_into(&dir, &salvage),
        None => list(&dir, settings.as_ref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ SpoolError::Locked(_)) => {
            eprintln!(
                "ferry: {error}: stop the daemon first (it replays what you change when it starts)"
            );
            ExitCode::from(EXIT_IN_USE)
        }
        Err(error) => {
            eprintln!("ferry: {error}");
            ExitCode::from(EXIT_SPOOL_IO)
        }
    }
}

/// How `ferry spool` names a destination (password redacted).
fn display(d: &Destination) -> String {
    match d.kind {
        Kind::Kafka => d.address.clone(),
        Kind::Amqp => format!(
            "{} exchange {}",
            ferry_actors::target::redact_url(&d.address),
            d.exchange
        ),
        Kind::Route => format!("route:{}", d.address),
    }
}

/// The spool directory and the config to check its lines against, from the flags (the
/// config `from_environment` when `FERRY_CONFIG` named it); or the exit code after saying
/// what is missing. A config that cannot be used stops the command only when the directory
/// was to come from it; with `--dir`, it is reported and the command goes on without it.
/// A config from the environment whose spool is not `--dir` is not used to check lines:
/// it is another daemon's.
fn locate(
    dir: Option<PathBuf>,
    config: Option<&Path>,
    from_environment: bool,
) -> Result<(PathBuf, Option<Settings>), ExitCode> {
    let settings = match config.map(|path| Config::from_file(path).and_then(Config::validate)) {
        None => None,
        Some(Ok(settings)) => Some(settings),
        Some(Err(error)) if dir.is_some() => {
            eprintln!("ferry: {error}; going on without it");
            None
        }
        Some(Err(error)) => {
            eprintln!("ferry: {error}");
            return Err(ExitCode::from(super::EXIT_BAD_CONFIG));
        }
    };
    let configured = settings
        .as_ref()
        .and_then(|s| s.spool.as_ref())
        .map(|spool| spool.dir.clone());
    let settings = match (&dir, &configured) {
        (Some(given), Some(configured)) if from_environment && given != configured => None,
        (Some(_), None) if from_environment => None,
        _ => settings,
    };
    match dir.or(configured) {
        Some(dir) => Ok((dir, settings)),
        None => {
            eprintln!(
                "ferry: give --dir DIR, the daemon's spool.dir, or --config FILE naming a \
                 config with a [spool] section (the listing and export also read FERRY_CONFIG)"
            );
            Err(ExitCode::from(super::EXIT_USAGE))
        }
    }
}

/// Why `settings` would hold the records of `destination` ("" when it sends them), or
/// "" without a config to ask.
fn held(settings: Option<&Settings>, destination: &Destination) -> String {
    let Some(settings) = settings else {
        return String::new();
    };
    match ferry_actors::Line::of(destination) {
        None => "does not validate as stored; this ferry cannot send it".to_owned(),
        Some(line) => crate::daemon::live::resolve(&settings.routes, &settings.access, &line)
            .err()
            .unwrap_or_default(),
    }
}

/// Prints one line per target with its spooled messages, then its dead letters; with
/// `settings`, marks the lines that config holds.
fn list(dir: &Path, settings: Option<&Settings>) -> Result<(), SpoolError> {
    let store = Store::open_read_only(dir)?;
    let inventory = store.inventory()?;
    let now = ferry_spool::spool::now_ms();
    let age = |ms: i64| (now - ms).max(0) as f64 / 1e3;
    let messages: u64 = inventory.records.iter().map(|s| s.count).sum();
    let bytes: u64 = inventory.records.iter().map(|s| s.bytes).sum();
    let dead: u64 = inventory.dead_letters.iter().map(|s| s.count).sum();
    println!(
        "spool {}: {messages} messages, {bytes} bytes, {} targets, {dead} dead letters, {} in quarantine",
        dir.display(),
        inventory.records.len(),
        inventory.quarantined
    );
    for s in &inventory.records {
        let held = held(settings, &s.destination);
        println!(
            "{:<8}  {}  messages {}  bytes {}  oldest {:.1}s{}",
            s.destination.kind.as_str(),
            display(&s.destination),
            s.count,
            s.bytes,
            age(s.oldest_ms),
            if held.is_empty() {
                String::new()
            } else {
                format!("  HELD: {held}")
            }
        );
    }
    if inventory.dead_letters.is_empty() {
        return Ok(());
    }
    println!("dead letters (ferry spool export to read them, ferry spool requeue to retry):");
    for s in &inventory.dead_letters {
        let last = store.last_dead_error(&s.destination)?;
        println!(
            "{:<8}  {}  dead {}  bytes {}  oldest {:.1}s  last error: {}",
            s.destination.kind.as_str(),
            display(&s.destination),
            s.count,
            s.bytes,
            age(s.oldest_ms),
            last.unwrap_or_default()
        );
    }
    Ok(())
}

/// Writes the selected dead letters (all by default) as JSON lines to stdout, one row in
/// memory at a time.
fn export(dir: &Path, select: &SelectArgs) -> Result<(), SpoolError> {
    let store = Store::open_read_only(dir)?;
    let selection = select.selection().unwrap_or(Selection::All);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let count = store.each_dead_letter(&selection, |letter| {
        let line =
            serde_json::to_string(&exported(letter)).map_err(|e| SpoolError::Io(e.to_string()))?;
        writeln!(out, "{line}")?;
        Ok(())
    })?;
    out.flush()?;
    eprintln!("ferry: {count} dead letters exported");
    Ok(())
}

/// One dead letter as a JSON object.
fn exported(letter: &DeadLetter) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let record = &letter.record;
    let meta = record.meta.as_ref().map(|meta| {
        serde_json::from_slice::<serde_json::Value>(meta)
            .unwrap_or_else(|_| serde_json::Value::String(b64.encode(meta)))
    });
    serde_json::json!({
        "id": record.id,
        "seq": record.seq,
        "kind": record.destination.kind.as_str(),
        "target": display(&record.destination),
        "route": record.route,
        "spooled": rfc3339(record.created_ms),
        "dead_lettered": rfc3339(letter.dead_ms),
        "attempts": letter.attempts,
        "last_error": letter.last_error,
        "intact": letter.intact,
        "metadata": meta,
        "payload_base64": b64.encode(&record.payload),
    })
}

/// A time in ms since the Unix epoch as RFC 3339 UTC.
fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// Puts the selected dead letters back in line.
fn requeue(dir: &Path, select: &SelectArgs) -> Result<(), SpoolError> {
    let Some(selection) = select.selection() else {
        return Err(SpoolError::Unusable(
            "say which dead letters: --id ID (repeatable), --target TARGET or --all".into(),
        ));
    };
    let (mut store, _lock) = exclusive(dir)?;
    let moved = store.requeue(&selection, ferry_spool::spool::now_ms())?;
    println!(
        "{moved} dead letters requeued in {}; the daemon replays them when it starts",
        dir.display()
    );
    Ok(())
}

/// Deletes the selected dead letters.
fn purge(dir: &Path, select: &SelectArgs) -> Result<(), SpoolError> {
    let Some(selection) = select.selection() else {
        return Err(SpoolError::Unusable(
            "say which dead letters: --id ID (repeatable), --target TARGET or --all".into(),
        ));
    };
    let (mut store, _lock) = exclusive(dir)?;
    let deleted = store.purge(&selection)?;
    println!("{deleted} dead letters deleted from {}", dir.display());
    Ok(())
}

/// Copies what still reads from a damaged database into the live spool.
fn salvage_into(dir: &Path, args: &SalvageArgs) -> Result<(), SpoolError> {
    let (mut store, _lock) = exclusive(dir)?;
    let salvaged = ferry_spool::salvage::salvage(&args.from, &mut store)?;
    println!(
        "salvaged from {}: {} records, {} dead letters; {} failed their checksum, {} were already in the spool{}",
        args.from.display(),
        salvaged.records,
        salvaged.dead_letters,
        salvaged.bad_checksum,
        salvaged.already_there,
        if salvaged.probed {
            " (the damaged table was read record by record)"
        } else {
            ""
        }
    );
    Ok(())
}

/// The spool of `dir`, opened with its lock held (no daemon may run on it).
fn exclusive(dir: &Path) -> Result<(Store, std::fs::File), SpoolError> {
    if !dir.join(ferry_spool::store::DB_FILE).exists() {
        return Err(SpoolError::Unusable(format!(
            "no spool in {}: {} is missing",
            dir.display(),
            ferry_spool::store::DB_FILE
        )));
    }
    let lock = ferry_spool::open::lock(dir)?;
    let (store, _) = Store::open(dir)?;
    Ok((store, lock))
}
