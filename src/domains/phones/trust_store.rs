//! The trusted pairs' state file, the IO shell of `trust`: read once at
//! start-up, written whole — a temporary file beside it, synced, then
//! renamed over it, so a crash leaves the old file or the new one, never
//! half of one — every `phones.trusted_pairs_save_secs` when the pairs
//! changed, and once more when the daemon stops (after the phones listener
//! has drained). Losing the file is safe: a missing, unreadable or corrupt
//! file is logged and the table starts empty, so every phone is treated as
//! new until it is served again.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::service::{PhonesService, unix_seconds};
use super::trust;

/// Fills the service's table from `path`; returns how many pairs it took.
pub fn load(service: &PhonesService, path: &Path) -> usize {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no trusted pairs state file yet; starting empty");
            return 0;
        }
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot read the trusted pairs state file; starting empty");
            return 0;
        }
    };
    match trust::decode(&text) {
        Ok(pairs) => {
            let limits = service.settings().trust;
            let restored = service.trust().restore(&pairs, &limits, unix_seconds());
            tracing::info!(path = %path.display(), restored, expired = pairs.len() - restored, "trusted pairs restored");
            restored
        }
        Err(reason) => {
            tracing::warn!(path = %path.display(), reason, "the trusted pairs state file is corrupt; starting empty");
            0
        }
    }
}

/// Writes `text` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    // Owner only: the file names addresses and MACs.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)
}

/// Saves the table now (on a blocking thread: it may be megabytes).
async fn save(service: &PhonesService, path: &Path) {
    let limits = service.settings().trust;
    let pairs = service.trust().snapshot(&limits, unix_seconds());
    let count = pairs.len();
    let path = path.to_path_buf();
    let written = tokio::task::spawn_blocking(move || {
        write_atomically(&path, &trust::encode(&pairs)).map_err(|err| (path, err))
    })
    .await;
    match written {
        Ok(Ok(())) => tracing::debug!(count, "trusted pairs saved"),
        Ok(Err((path, err))) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot save the trusted pairs")
        }
        Err(err) => tracing::warn!(error = %err, "saving the trusted pairs failed"),
    }
}

/// Saves the pairs every `every` when they changed, and once more when
/// `token` is cancelled.
pub async fn run(
    service: Arc<PhonesService>,
    path: PathBuf,
    every: Duration,
    token: CancellationToken,
) {
    let mut saved = service.trust().changes();
    loop {
        let stopping = tokio::select! {
            biased;
            () = token.cancelled() => true,
            () = tokio::time::sleep(every) => false,
        };
        let changes = service.trust().changes();
        if changes != saved || stopping {
            save(&service, &path).await;
            saved = changes;
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs");
        write_atomically(&path, "one").unwrap();
        write_atomically(&path, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let missing = dir.path().join("no-such-dir/pairs");
        assert!(write_atomically(&missing, "x").is_err());
    }
}
