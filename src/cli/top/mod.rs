//! `ferry top`: a live view of one daemon or several, refreshed every second: per target
//! the delivery rate, failures, p99 latency, state, and spool depth and age, trouble first.
//! `--once` (or an output that is not a terminal) prints one table and exits, for scripts.

mod rows;
mod screen;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use http::Uri;

use crate::cli::ops::{read_report, stats_uri, table};
use crate::cli::{EXIT_USAGE, fail};
use crate::report::Report;

pub use rows::{Row, cells, daemon_line, rows, sort};

/// Flags of `ferry top`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  ferry top --http 127.0.0.1:33384\n  \
    ferry top --http login1:33384,login2:33384 --once\nKeys: q or Esc quits.")]
pub struct TopArgs {
    /// The daemons' operations endpoints ([ops] listen), comma-separated [default: the
    /// config's ops.listen, else 127.0.0.1:33384].
    #[arg(long, value_name = "HOST:PORT,...", value_delimiter = ',')]
    pub http: Vec<String>,
    /// Where the daemon is, from its config file.
    #[command(flatten)]
    pub config: crate::cli::locate::ConfigArg,
    /// Print one table (rates over one interval) and exit: for scripts.
    #[arg(long)]
    pub once: bool,
    /// Time between refreshes, 100 to 60000 ms.
    #[arg(long, default_value_t = 1_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub interval_ms: u64,
    /// Give up on a daemon's answer after this long.
    #[arg(long, default_value_t = 2_000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// The most daemons one view watches (each is read once per interval).
const MAX_DAEMONS: usize = 64;

/// The reports of every daemon, read at one moment.
pub struct Sample {
    /// Per daemon, in the order given: its report, or why it could not be read.
    reports: Vec<Result<Report, String>>,
    /// When the reading began.
    at: Instant,
}

/// The daemons to watch, their `/stats` addresses.
struct Daemons {
    names: Vec<String>,
    uris: Vec<Uri>,
    timeout_ms: u64,
}

impl Daemons {
    /// Reads every daemon's report now, all at once (one thread each, at most
    /// [`MAX_DAEMONS`]), so one that does not answer delays a refresh by its timeout only.
    fn sample(&self) -> Sample {
        let at = Instant::now();
        let reports = std::thread::scope(|scope| {
            let readings: Vec<_> = self
                .uris
                .iter()
                .map(|uri| scope.spawn(|| read_report(uri, self.timeout_ms)))
                .collect();
            readings
                .into_iter()
                .map(|reading| {
                    reading
                        .join()
                        .unwrap_or_else(|_| Err("reading failed".into()))
                })
                .collect()
        });
        Sample { reports, at }
    }

    /// What to show of `now`: a line per daemon and the rows of every target, sorted,
    /// with rates against `before`.
    fn view(&self, before: Option<&Sample>, now: &Sample) -> (Vec<String>, Vec<Row>) {
        let mut lines = Vec::new();
        let mut all = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            lines.push(daemon_line(name, now.reports[i].as_ref()));
            if let Ok(report) = &now.reports[i] {
                let earlier = before.and_then(|b| b.reports[i].as_ref().ok());
                let elapsed = before.map_or(Duration::ZERO, |b| now.at.duration_since(b.at));
                all.extend(rows(name, earlier, report, elapsed));
            }
        }
        sort(&mut all);
        (lines, all)
    }
}

/// Runs `ferry top`.
pub fn top(mut args: TopArgs) -> ExitCode {
    if args.http.is_empty() {
        match args.config.locate() {
            Ok(located) => args.http = vec![located.ops_address(None)],
            Err(error) => return fail(EXIT_USAGE, error),
        }
    }
    if args.http.len() > MAX_DAEMONS {
        return fail(
            EXIT_USAGE,
            format!("--http takes 1 to {MAX_DAEMONS} addresses"),
        );
    }
    let mut uris = Vec::with_capacity(args.http.len());
    for http in &args.http {
        match stats_uri(http) {
            Ok(uri) => uris.push(uri),
            Err(code) => return code,
        }
    }
    let daemons = Daemons {
        names: args.http.clone(),
        uris,
        timeout_ms: args.timeout_ms,
    };
    let interval = Duration::from_millis(args.interval_ms);
    if args.once || !std::io::stdout().is_terminal() {
        return once(&daemons, interval);
    }
    match screen::run(
        |before, now| daemons.view(before, now),
        || daemons.sample(),
        interval,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(1, format!("ferry top: terminal: {error}")),
    }
}

/// Two readings `interval` apart, printed as text; exit 1 if a daemon could not be read.
fn once(daemons: &Daemons, interval: Duration) -> ExitCode {
    let before = daemons.sample();
    std::thread::sleep(interval);
    let now = daemons.sample();
    let (lines, rows) = daemons.view(Some(&before), &now);
    let cells: Vec<Vec<String>> = rows.iter().map(cells).collect();
    println!("{}", lines.join("\n"));
    print!("{}", table(&rows::HEADER, &cells, 4..11));
    if now.reports.iter().all(Result::is_ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
