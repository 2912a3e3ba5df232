//! `ferry spool`: what a spool directory holds, per target, read without a daemon (and
//! without disturbing one that runs on it).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Flags of `ferry spool`.
#[derive(Debug, Args)]
pub struct SpoolArgs {
    /// The spool directory (the daemon's `spool.dir`). Example: --dir /var/spool/ferry
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// Prints one line per target with its spooled messages, bytes and oldest age.
pub fn list(args: SpoolArgs) -> ExitCode {
    let (summary, quarantined) = match ferry_spool::inspect(&args.dir) {
        Ok(found) => found,
        Err(error) => {
            eprintln!("ferry: {error}");
            return ExitCode::FAILURE;
        }
    };
    let now = ferry_spool::spool::now_ms();
    let messages: u64 = summary.iter().map(|s| s.count).sum();
    let bytes: u64 = summary.iter().map(|s| s.bytes).sum();
    println!(
        "spool {}: {messages} messages, {bytes} bytes, {} targets, {quarantined} in quarantine",
        args.dir.display(),
        summary.len()
    );
    for s in &summary {
        let d = &s.destination;
        let target = match d.kind {
            ferry_spool::Kind::Kafka => d.address.clone(),
            ferry_spool::Kind::Amqp => format!(
                "{} exchange {}",
                ferry_actors::target::redact_url(&d.address),
                d.exchange
            ),
        };
        println!(
            "{:<8}  {target}  messages {}  bytes {}  oldest {:.1}s",
            d.kind.as_str(),
            s.count,
            s.bytes,
            (now - s.oldest_ms).max(0) as f64 / 1e3
        );
    }
    ExitCode::SUCCESS
}
