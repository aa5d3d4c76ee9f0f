//! The managed gateway's state directory (`--state-dir`):
//! - `enrollment.json` (0600): gateway id, bearer credential, group, and the control plane's
//!   bundle-signing key pinned at enrollment. Written once; its presence means "enrolled", so
//!   a restart never spends the one-time enrollment token again.
//! - `bundle.json` (0600): the last applied signed bundle, verbatim, as the fail-static backup.
//!   It is verified again (signature) before a restarted gateway serves it.
//!
//! Both are written atomically (temporary file, fsync, rename, fsync of the directory), so a
//! crash leaves either the old file or the new one, never a torn mix.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::SignedBundle;
use crate::protocol::ControlPlaneKey;

pub const ENROLLMENT_FILE: &str = "enrollment.json";
pub const BUNDLE_FILE: &str = "bundle.json";

/// What enrollment gave this gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    /// The control plane URL it enrolled with.
    pub control_plane: String,
    pub gateway_id: String,
    pub credential: String,
    pub group: String,
    pub control_plane_key: ControlPlaneKey,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {path}: {message}")]
    Io { path: String, message: String },
    #[error("{path} is not valid: {message}")]
    Corrupt { path: String, message: String },
}

#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Creates the directory (0700) when missing.
    pub fn open(dir: &Path) -> Result<StateDir, StoreError> {
        use std::os::unix::fs::DirBuilderExt as _;
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_err(dir, &e))?;
        }
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn enrollment(&self) -> Result<Option<Enrollment>, StoreError> {
        self.read_json(ENROLLMENT_FILE)
    }

    pub fn save_enrollment(&self, e: &Enrollment) -> Result<(), StoreError> {
        self.write_json(ENROLLMENT_FILE, e)
    }

    /// The backup bundle, if any (unverified: the caller verifies it).
    pub fn backup(&self) -> Result<Option<SignedBundle>, StoreError> {
        self.read_json(BUNDLE_FILE)
    }

    pub fn save_backup(&self, b: &SignedBundle) -> Result<(), StoreError> {
        self.write_json(BUNDLE_FILE, b)
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        let path = self.dir.join(name);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, &e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
            })
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &bytes).map_err(|e| io_err(&path, &e))
    }
}

fn io_err(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes `bytes` to `path` via a 0600 temporary file in the same directory, fsyncs it,
/// renames it over `path`, then fsyncs the directory so the rename itself is durable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn enrollment_round_trips_with_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(&tmp.path().join("state")).unwrap();
        assert!(st.enrollment().unwrap().is_none());
        let e = Enrollment {
            control_plane: "https://cp".into(),
            gateway_id: "g1".into(),
            credential: "secret".into(),
            group: "acme".into(),
            control_plane_key: ControlPlaneKey {
                key_id: "k".into(),
                public_key_b64: "AAAA".into(),
            },
        };
        st.save_enrollment(&e).unwrap();
        assert_eq!(st.enrollment().unwrap(), Some(e));
        let mode = std::fs::metadata(st.path().join(ENROLLMENT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(st.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn corrupt_file_is_an_error_not_absent() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join(BUNDLE_FILE), b"{ not json").unwrap();
        assert!(matches!(st.backup(), Err(StoreError::Corrupt { .. })));
    }
}
