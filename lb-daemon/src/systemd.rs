//! systemd's notify protocol (Type=notify, NOTIFY_SOCKET), behind one seam: lbd says when
//! it is ready, reloading (and how a reload ended, as its status line) and stopping, and
//! pings the watchdog. Without NOTIFY_SOCKET every call does nothing.

use std::time::Duration;

pub use sd_notify::NotifyState;
use tracing::warn;

/// The watchdog's period (`WatchdogSec=`, given as WATCHDOG_USEC for this process), if on.
pub fn watchdog() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends `states` in one message; a failure is logged, never fatal.
pub fn tell(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "telling systemd (NOTIFY_SOCKET)");
    }
}

/// RELOADING=1 with MONOTONIC_USEC, as Type=notify-reload wants them together.
pub fn reloading() {
    let now = NotifyState::monotonic_usec_now().ok();
    tell(&[NotifyState::Reloading].into_iter().chain(now).collect::<Vec<_>>());
}

/// READY=1 with `status` as the line `systemctl status` shows (one line, at most 500
/// characters: a refused reload's problems joined after its headline).
pub fn ready(status: &str) {
    let line: String = status.lines().collect::<Vec<_>>().join(" ").chars().take(500).collect();
    tell(&[NotifyState::Ready, NotifyState::Status(&line)]);
}
