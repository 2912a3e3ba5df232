//! `ferry serve`: the daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::EXIT_BAD_CONFIG;
use crate::config::{Config, ConfigError, Settings};
use crate::daemon::live::{self, Live};
use crate::daemon::reloads::Outcome;
use crate::daemon::server::{Daemon, ServeError};
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

/// Runs the daemon until SIGTERM or SIGINT (a second one ends the shutdown grace period);
/// SIGHUP reloads the config.
pub fn serve(args: ServeArgs) -> ExitCode {
    // Signal handlers first: from here on, SIGHUP is handled rather than fatal.
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
    let loaded = load(&args);
    let (settings, hash) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            log::error!("{error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let _pid_file = match &settings.ops.pid_file {
        Some(path) => match crate::daemon::pid_file::PidFile::create(path) {
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
            return ExitCode::from(match error {
                // The spool is there but cannot be used: nothing was moved or deleted, and
                // the message says what to fix (EX_IOERR).
                ServeError::Spool(
                    ferry_spool::SpoolError::Unusable(_) | ferry_spool::SpoolError::Io(_),
                ) => super::spool::EXIT_SPOOL_IO,
                _ => 1,
            });
        }
    };
    daemon.live().set_hash(hash);
    runtime.block_on(run_until_stopped(&mut daemon, &mut signals, &args));
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

/// Serves until SIGTERM or SIGINT, reloading at each SIGHUP and `POST /reload` (on this
/// thread, one at a time); then begins the shutdown, and ends its grace period at a second
/// SIGTERM or SIGINT. Returns when the daemon has ended (or ended on its own).
async fn run_until_stopped(daemon: &mut Daemon, signals: &mut Signals, args: &ServeArgs) {
    let live = Arc::clone(daemon.live());
    let started_with = daemon.started_with().clone();
    let mut reload_queue = daemon.take_reload_queue();
    loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop => break,
                Signal::Hangup => {
                    reload(&live, &started_with, args);
                }
            },
            Some(done) = next_request(&mut reload_queue) => {
                log::info!("Reload asked for over the ops endpoint");
                let _ = done.send(reload(&live, &started_with, args));
            }
            () = daemon.ended() => {
                log::error!("The daemon stopped on its own");
                return;
            }
        }
    }
    // No more reloads: a request now waiting is told the daemon is stopping.
    drop(reload_queue.take());
    daemon.begin_stop();
    loop {
        tokio::select! {
            signal = signals.next() => if signal == Signal::Stop {
                daemon.end_grace();
            },
            () = daemon.ended() => return,
        }
    }
}

/// Reads and validates the config (the file of `--config`, or the defaults) with the
/// command line's overrides, and applies its log format; returns it with the file's hash.
fn load(args: &ServeArgs) -> Result<(Settings, String), ConfigError> {
    let (config, hash) = read(args)?;
    let settings = config.validate()?;
    // From here on, lines take the config's form (unless --log-format chose one).
    crate::logging::configure(settings.ops.log_format);
    warn_of(&settings);
    Ok((settings, hash))
}

/// Logs what the config accepts but should fix, in the config's log format.
fn warn_of(settings: &Settings) {
    for warning in settings.routes.warnings() {
        log::warn!("{warning}");
    }
}

/// Reads the config (the file of `--config`, or the defaults) with the command line's
/// overrides, not yet validated; returns it with the file's hash.
fn read(args: &ServeArgs) -> Result<(Config, String), ConfigError> {
    let (mut config, hash) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            (Config::from_text(path, &text)?, live::hash(text.as_bytes()))
        }
        None => (Config::default(), String::new()),
    };
    if let Some(listen) = &args.listen {
        config.server.listen.clone_from(listen);
    }
    if let Some(listen) = &args.ops_listen {
        config.ops.listen.clone_from(listen);
    }
    Ok((config, hash))
}

/// Reads the config again for a reload and validates it **for the addresses the daemon
/// listens on**, not those the file names: access is decided for the sockets in use (a
/// file that moves `server.listen` to loopback cannot open a daemon that still listens on
/// every interface). Returns the settings, the file's hash and the listen fields the file
/// changes, which apply only after a restart.
fn load_for_reload(
    args: &ServeArgs,
    started_with: &Settings,
) -> Result<(Settings, String, Vec<String>), ConfigError> {
    let (mut config, hash) = read(args)?;
    let mut moved = Vec::new();
    let in_force = [
        (
            &mut config.server.listen,
            started_with.server.listen,
            "server.listen",
        ),
        (
            &mut config.ops.listen,
            started_with.ops.listen,
            "ops.listen",
        ),
    ];
    for (wanted, in_force, field) in in_force {
        if crate::config::listen_address(wanted) != Some(in_force) {
            moved.push(format!(
                "{field} (still {in_force} until a restart; access is decided for it)"
            ));
        }
        *wanted = in_force.to_string();
    }
    Ok((config.validate()?, hash, moved))
}

/// The next reload `POST /reload` asks for (never, without a queue or once the endpoint
/// has gone).
async fn next_request(
    queue: &mut Option<crate::daemon::reloads::ReloadQueue>,
) -> Option<crate::daemon::reloads::Done> {
    if let Some(open) = queue {
        match open.recv().await {
            Some(done) => return Some(done),
            None => *queue = None,
        }
    }
    std::future::pending().await
}

/// Reloads the config at SIGHUP or `POST /reload`: applied whole, or refused whole (the old
/// config keeps serving, the error logged and counted); what it came to.
fn reload(live: &Live, started_with: &Settings, args: &ServeArgs) -> Outcome {
    if args.config.is_none() {
        log::warn!("Nothing to reload: the daemon runs on its built-in defaults (no --config)");
        return Outcome::NoConfig;
    }
    crate::daemon::notify::reloading();
    let applied = apply_reload(live, started_with, args);
    crate::daemon::notify::ready();
    if applied {
        Outcome::Applied(live.status())
    } else {
        Outcome::Refused(live.status())
    }
}

/// Reads the config again and applies it, or refuses it (see [`reload`]); whether it
/// applied it.
fn apply_reload(live: &Live, started_with: &Settings, args: &ServeArgs) -> bool {
    let started = std::time::Instant::now();
    match load_for_reload(args, started_with) {
        Ok((settings, hash, moved)) => {
            crate::logging::configure(settings.ops.log_format);
            warn_of(&settings);
            let applied = live.apply(started_with, &settings, hash.clone(), moved);
            log::info!(
                hash:% = hash,
                routes = settings.routes.len() as u64,
                needs_restart:? = applied.needs_restart,
                us = started.elapsed().as_micros() as u64;
                "Config reloaded"
            );
            for widened in &applied.widened {
                log::warn!("Config reload widens access: {widened}");
            }
            true
        }
        Err(error) => {
            log::error!(error:% = error; "Config reload refused, the old config keeps serving");
            live.refused(error.to_string());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::allowlist::Access;
    use ferry_actors::{KafkaTarget, Target};

    /// `ServeArgs` for the config `text`, written to a file of its own.
    fn args(name: &str, text: &str) -> ServeArgs {
        let dir = std::env::temp_dir().join(format!("ferry-reload-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ferry.toml");
        std::fs::write(&path, text).unwrap();
        ServeArgs {
            config: Some(path),
            listen: None,
            ops_listen: None,
        }
    }

    #[test]
    fn a_reload_decides_access_for_the_address_in_use_not_the_files() {
        let everywhere = "[server]\nlisten = \"0.0.0.0:33383\"\n[access]\nkafka_brokers = [\"127.0.0.1:19092\"]\n";
        let (started_with, _) = load(&args("started", everywhere)).unwrap();
        let probe = Target::Kafka(KafkaTarget::try_new(["127.0.0.1:1"], 8).unwrap());
        assert!(started_with.access.check(&probe).is_err());
        // The file moves to loopback and drops [access]: on loopback that would allow any
        // target, but the daemon still listens everywhere, so the file is refused whole.
        let loopback = args("loopback", "[server]\nlisten = \"127.0.0.1:33383\"\n");
        let refused = load_for_reload(&loopback, &started_with).unwrap_err();
        assert!(refused.to_string().contains("beyond loopback"), "{refused}");
        // With an allowlist of its own it applies, for the address in use, and says the
        // listen address waits for a restart.
        let listed = args(
            "listed",
            "[server]\nlisten = \"127.0.0.1:33383\"\n[access]\nkafka_brokers = [\"127.0.0.1:19093\"]\n",
        );
        let (settings, _, moved) = load_for_reload(&listed, &started_with).unwrap();
        assert!(settings.access.check(&probe).is_err());
        assert!(matches!(settings.access, Access::Only(_)));
        assert_eq!(settings.server.listen, started_with.server.listen);
        assert_eq!(moved.len(), 1, "{moved:?}");
        assert!(
            moved[0].starts_with("server.listen (still 0.0.0.0:33383"),
            "{moved:?}"
        );
    }
}
