//! Waits for the signals that stop the daemon (SIGTERM from ecFlow or init, SIGINT from a
//! terminal).

use tokio::signal::unix::{SignalKind, signal};

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn terminated() -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => log::info!("Received SIGTERM"),
        _ = int.recv() => log::info!("Received SIGINT"),
    }
    Ok(())
}
