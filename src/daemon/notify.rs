//! systemd's readiness protocol, for `Type=notify` units (`config/systemd/ferry.service`):
//! READY=1 once the daemon serves, RELOADING=1 then READY=1 around a reload, STOPPING=1
//! when shutdown begins. Each is one datagram to `$NOTIFY_SOCKET`; without that variable
//! (not started by systemd) nothing is sent.

use sd_notify::NotifyState;

/// The daemon serves: both listeners are bound and the spool is open.
pub fn ready() {
    send(&[NotifyState::Ready], "READY=1");
}

/// A reload begins (SIGHUP); [`ready`] follows when it is applied or refused.
pub fn reloading() {
    send(&[NotifyState::Reloading], "RELOADING=1");
}

/// Shutdown begins.
pub fn stopping() {
    send(&[NotifyState::Stopping], "STOPPING=1");
}

/// Sends `states`; a failure is logged (systemd then sees no readiness and says so).
fn send(states: &[NotifyState<'_>], what: &str) {
    if let Err(error) = sd_notify::notify(false, states) {
        log::warn!("error":% = error; "Cannot tell systemd {what}");
    }
}
