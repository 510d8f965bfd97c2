//! The data directory and its single-owner lock.
//!
//! Layout:
//! ```text
//! {data_dir}/LOCK        advisory lock (flock) held for the server's lifetime; holds its pid
//! {data_dir}/rakkr.redb  the store (see rakkr-store)
//! {data_dir}/admin.sock  the local admin socket while the server runs (see crate::admin)
//! {data_dir}/tls/        the fleet CA and server certificate, when TLS is on (see crate::tls)
//! ```
//! A data directory the server creates is mode 0700 (it holds password and
//! credential hashes and the fleet CA's key); an existing one readable by
//! others is used, with a warning.
//!
//! The lock makes a second server on the same directory fail at once with a
//! message naming the holder, instead of two processes sharing one database.
//! flock locks die with their process, so a crashed server never leaves a stale lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create data directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write to data directory {path}: {source}")]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {path} is in use by another rakkr-server{}; stop it or choose another --data-dir", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    InUse { path: PathBuf, holder: Option<u32> },
}

/// An open, locked data directory. The lock is released on drop.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        // Owner-only when we create it: it holds password and credential
        // hashes and the fleet CA's key.
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|source| DataDirError::Create {
                path: path.to_owned(),
                source,
            })?;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the data directory is readable by other users; `chmod 700` it"
            );
        }
        let lock_path = path.join("LOCK");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|source| DataDirError::Unwritable {
                path: path.to_owned(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = lock.read_to_string(&mut text);
                return Err(DataDirError::InUse {
                    path: path.to_owned(),
                    holder: text.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(DataDirError::Unwritable {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let write_pid = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            writeln!(f, "{}", std::process::id())?;
            f.sync_all()
        };
        write_pid(&mut lock).map_err(|source| DataDirError::Unwritable {
            path: path.to_owned(),
            source,
        })?;
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn store_path(&self) -> PathBuf {
        self.path.join("rakkr.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let e = DataDir::open(dir.path()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("in use") && msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
        drop(first);
        DataDir::open(dir.path()).expect("lock is released on drop");
    }

    #[test]
    fn a_new_data_directory_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/data");
        let _d = DataDir::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_path_under_a_file_is_a_clear_error() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let e = DataDir::open(&file.path().join("sub")).unwrap_err();
        assert!(matches!(e, DataDirError::Create { .. }), "{e}");
    }
}
