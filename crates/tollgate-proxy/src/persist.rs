//! Persistence of local limit counters under `state.dir`, so a restart does not reset a day's
//! or a month's quota.
//!
//! Only counters of windows of an hour or longer are kept (shorter ones would be stale by the
//! time the gateway is back). The file is `<state.dir>/limits.json`; it is loaded when the
//! gateway starts, saved every [`SAVE_EVERY`] off the request path (on a blocking thread), and
//! saved once more at shutdown. Writes are atomic (a temporary file in the same directory,
//! synced, then renamed over the old one), so a crash mid-save leaves the previous file.
//!
//! Failure modes: an unreadable or corrupt file is logged and renamed aside to
//! `limits.json.corrupt-<unix seconds>` (never deleted), and the gateway starts with empty
//! counters; an unwritable directory is logged (once, then once more when saving works
//! again) and the gateway keeps serving from memory. `state.dir` is read at start only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tollgate_state::{LocalStore, StoreError};

use crate::state::Gateway;

/// How often the counters are saved.
pub const SAVE_EVERY: Duration = Duration::from_secs(10);

/// The counters file inside a state directory.
pub fn file_in(dir: &Path) -> PathBuf {
    dir.join("limits.json")
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Loads `path` into `store`. A file that cannot be loaded is renamed aside and logged; the
/// store then starts empty. Returns how many counters were loaded.
pub fn load(store: &LocalStore, path: &Path) -> usize {
    match store.load(path) {
        Ok(n) => {
            if n > 0 {
                tracing::info!(state.file = %path.display(), state.counters = n, "loaded persisted limit counters");
            }
            n
        }
        Err(e) => {
            let aside = PathBuf::from(format!("{}.corrupt-{}", path.display(), unix_secs()));
            let moved = std::fs::rename(path, &aside);
            tracing::warn!(
                error = %e,
                state.file = %path.display(),
                state.moved_to = %aside.display(),
                state.moved = moved.is_ok(),
                "cannot load persisted limit counters; starting with empty counters"
            );
            0
        }
    }
}

/// Saves the counters now (blocking). Used at shutdown and by the periodic task.
pub fn save(gw: &Gateway) -> Result<usize, StoreError> {
    let Some(dir) = state_dir(gw) else {
        return Ok(0);
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| StoreError::Persist(format!("{}: {e}", dir.display())))?;
    gw.limits.save(&file_in(&dir))
}

fn state_dir(gw: &Gateway) -> Option<PathBuf> {
    // As configured at start: a reload does not move the counters file.
    gw.state_dir.clone()
}

/// With `state.dir` set: loads the saved counters and starts the periodic save (when inside a
/// tokio runtime).
pub fn start(gw: &Arc<Gateway>) {
    let Some(dir) = state_dir(gw) else {
        return;
    };
    load(&gw.limits, &file_in(&dir));
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let weak = Arc::downgrade(gw);
    tokio::spawn(async move {
        let failing = Arc::new(AtomicBool::new(false));
        loop {
            tokio::time::sleep(SAVE_EVERY).await;
            let Some(gw) = weak.upgrade() else { return };
            if gw.shutdown.is_triggered() {
                // The final save happens at shutdown, after requests have drained.
                return;
            }
            let failing = Arc::clone(&failing);
            let _ = tokio::task::spawn_blocking(move || log_save(&gw, &failing)).await;
        }
    });
}

/// Saves and logs only changes between working and failing.
fn log_save(gw: &Gateway, failing: &AtomicBool) {
    match save(gw) {
        Ok(_) => {
            if failing.swap(false, Ordering::Relaxed) {
                tracing::info!("saving limit counters works again");
            }
        }
        Err(e) => {
            if !failing.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot save limit counters; they live in memory only until this is fixed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tollgate_state::{LimitRequest, LimitSpec, Window};

    use super::*;

    #[test]
    fn corrupt_file_is_renamed_aside_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_in(dir.path());
        std::fs::write(&path, b"{not json").unwrap();
        let store = LocalStore::new();
        assert_eq!(load(&store, &path), 0);
        assert!(!path.exists());
        let moved: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(moved.len(), 1);
        assert!(moved[0].starts_with("limits.json.corrupt-"), "{moved:?}");
        assert_eq!(
            std::fs::read(dir.path().join(&moved[0])).unwrap(),
            b"{not json"
        );

        // A saved day counter comes back.
        let day = LimitRequest::new(
            "api:daily:-",
            LimitSpec::FixedWindow {
                limit: 5,
                window: Window::Day,
            },
            2,
        );
        store.check_all(std::slice::from_ref(&day));
        store.save(&path).unwrap();
        let again = LocalStore::new();
        assert_eq!(load(&again, &path), 1);
        // Peeking the same 2-unit request: 2 used + 2 more leaves 1 of 5.
        assert_eq!(again.peek_all(&[day])[0].remaining, 1);
    }
}
