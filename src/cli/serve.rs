//! `ferry serve`: the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::EXIT_BAD_CONFIG;
use crate::config::Config;
use crate::server::Daemon;

/// Flags of `ferry serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (see config/ferry.toml); without it, built-in defaults.
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address, overriding the config's server.listen.
    #[arg(long)]
    pub listen: Option<String>,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn serve(args: ServeArgs) -> ExitCode {
    let config = match &args.config {
        Some(path) => Config::from_file(path),
        None => Ok(Config::default()),
    };
    let settings = config.and_then(|mut config| {
        if let Some(listen) = args.listen {
            config.server.listen = listen;
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
    let daemon = match Daemon::start(settings) {
        Ok(daemon) => daemon,
        Err(error) => {
            log::error!("Cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|runtime| runtime.block_on(crate::signal::terminated()));
    if let Err(error) = signals {
        log::error!("Cannot wait for signals: {error}");
    }
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
