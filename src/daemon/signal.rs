//! The signals the daemon handles: SIGTERM (ecFlow, init) and SIGINT (a terminal) stop it,
//! and a second one ends the shutdown grace period at once; SIGHUP reloads the config (and
//! so never kills the daemon with its default action).

use tokio::signal::unix::{Signal as Stream, SignalKind, signal};

/// A signal the daemon acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: stop (or, during shutdown, stop waiting).
    Stop,
    /// SIGHUP: reload the config.
    Hangup,
}

/// The daemon's signal handlers, installed from creation on (their default actions, which
/// would end the process, no longer apply).
pub struct Signals {
    /// SIGTERM.
    term: Stream,
    /// SIGINT.
    int: Stream,
    /// SIGHUP.
    hup: Stream,
}

impl Signals {
    /// Installs the handlers; needs a Tokio runtime with the signal driver.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Resolves with the next signal, after logging it.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => {
                log::info!("Received SIGTERM");
                Signal::Stop
            }
            _ = self.int.recv() => {
                log::info!("Received SIGINT");
                Signal::Stop
            }
            _ = self.hup.recv() => {
                log::info!("Received SIGHUP: reloading the config");
                Signal::Hangup
            }
        }
    }

    /// Resolves at the next SIGTERM or SIGINT (SIGHUP is logged and waited past).
    pub async fn stop(&mut self) {
        while self.next().await != Signal::Stop {}
    }
}
