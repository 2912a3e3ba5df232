//! `ferry serve`: the daemon.

use std::path::{Path, PathBuf};
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
    /// gRPC listen address, overriding the config's server.listen.
    /// Example: --listen 0.0.0.0:33383
    #[arg(long)]
    pub listen: Option<String>,
    /// Operations endpoint (HTTP) address, overriding the config's ops.listen.
    /// Example: --ops-listen 127.0.0.1:33384
    #[arg(long)]
    pub ops_listen: Option<String>,
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
    let waited = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|runtime| {
            runtime.block_on(async {
                tokio::select! {
                    signal = crate::signal::terminated() => signal,
                    () = daemon.ended() => {
                        log::error!("The daemon stopped on its own");
                        Ok(())
                    }
                }
            })
        });
    if let Err(error) = waited {
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
