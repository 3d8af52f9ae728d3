//! Process lifecycle: what the outside world asks of the daemon (`Control`),
//! how it learns it (signals), how it answers (readiness, systemd).

pub mod readiness;
pub mod signals;
pub mod systemd;

/// A request from outside the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM or SIGINT: stop accepting, finish in-flight writes, checkpoint, exit 0.
    Shutdown,
    /// SIGHUP: re-read the configuration; keep the old one if the new one is invalid.
    Reload,
}
