//! `ferry serve`: the daemon.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::EXIT_BAD_CONFIG;
use crate::config::Config;
use crate::daemon::server::Daemon;
use crate::daemon::signal::{Signal, Signals};

/// Flags of `ferry serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (see config/ferry.toml); without it, built-in defaults.
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address, overriding the config's server.listen.
    /// Example: --listen 0.0.0.0:33383
    #[arg(long)]
    pub listen: Option<String>,
    /// Operations endpoint (HTTP) address, overriding the config's ops.listen.
    /// Example: --ops-listen 127.0.0.1:33384
    #[arg(long)]
    pub ops_listen: Option<String>,
}

/// Runs the daemon until SIGTERM or SIGINT (a second one ends the shutdown grace period;
/// SIGHUP is ignored).
pub fn serve(args: ServeArgs) -> ExitCode {
    // Signal handlers first: from here on, SIGHUP is ignored rather than fatal.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            log::error!("Cannot start the signal runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut signals = match runtime.block_on(async { Signals::install() }) {
        Ok(signals) => signals,
        Err(error) => {
            log::error!("Cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let config = match &args.config {
        Some(path) => Config::from_file(path),
        None => Ok(Config::default()),
    };
    let settings = config.and_then(|mut config| {
        if let Some(listen) = args.listen {
            config.server.listen = listen;
        }
        if let Some(listen) = args.ops_listen {
            config.ops.listen = listen;
        }
        config.validate()
    });
    let settings = match settings {
        Ok(settings) => settings,
        Err(error) => {
            log::error!("{error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let _pid_file = match &settings.pid_file {
        Some(path) => match PidFile::create(path) {
            Ok(pid_file) => Some(pid_file),
            Err(error) => {
                log::error!("{error}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let mut daemon = match Daemon::start(settings) {
        Ok(daemon) => daemon,
        Err(error) => {
            log::error!("Cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        tokio::select! {
            () = signals.stop() => {}
            () = daemon.ended() => {
                log::error!("The daemon stopped on its own");
                return;
            }
        }
        // Shutting down: a second SIGTERM or SIGINT ends the grace period at once.
        daemon.begin_stop();
        loop {
            tokio::select! {
                signal = signals.next() => if signal == Signal::Stop {
                    daemon.end_grace();
                },
                () = daemon.ended() => return,
            }
        }
    });
    match daemon.stop() {
        Ok(()) => {
            log::info!("Stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            log::error!("Stopped with an error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The pid file: written at start, removed at exit; refuses to start while it names a
/// running process.
struct PidFile(PathBuf);

impl PidFile {
    /// Writes this process's id to `path`, unless the file names another live process.
    fn create(path: &Path) -> Result<Self, String> {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse::<u32>()
            && pid != std::process::id()
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            return Err(format!(
                "pid file {} names running process {pid}: is another ferry serving?",
                path.display()
            ));
        }
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| format!("cannot write pid file {}: {e}", path.display()))?;
        Ok(Self(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
