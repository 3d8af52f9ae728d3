//! OS signals → `Control`. A second SIGTERM/SIGINT during a graceful stop
//! ends the process at once.

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGXFSZ};
use signal_hook_tokio::Signals;
use tokio::sync::mpsc;

use super::Control;

/// Starts listening for signals; controls arrive on the returned channel.
///
/// # Errors
/// The signal handlers cannot be installed.
pub fn listen() -> std::io::Result<mpsc::UnboundedReceiver<Control>> {
    // A file-size limit (RLIMIT_FSIZE) reached by the store must be a
    // failed write (EFBIG, handled like a full disk), not the end of the
    // process: with a handler installed the signal no longer kills it.
    signal_hook::flag::register(SIGXFSZ, std::sync::Arc::default())?;
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stopping = false;
        while let Some(signal) = signals.next().await {
            let control = match signal {
                SIGHUP => Control::Reload,
                _ if stopping => {
                    tracing::warn!(signal, "second stop signal during shutdown, exiting now");
                    std::process::exit(1);
                }
                _ => {
                    stopping = true;
                    Control::Shutdown
                }
            };
            if tx.send(control).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
