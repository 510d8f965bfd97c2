//! The node's identity on the data partition: `{state_dir}/identity.json`,
//! written by `rakkr-agent enroll` (and `rotate-credential`), read by `run`.
//!
//! Format: `{"node": "studio-a", "credential": "…"}`, mode 0600. Written to a
//! temporary file, fsynced, renamed over the old one and the directory
//! fsynced: a power cut leaves either the old identity or the new one.
//! The node uses its id as MQTT client id and user name, the credential as password.

use std::io::Write;
use std::path::{Path, PathBuf};

use rakkr_protocol::NodeId;
use serde::{Deserialize, Serialize};

pub const IDENTITY_FILE: &str = "identity.json";

/// The fleet CA handed over at enrollment (PEM), trusted for MQTT over TLS.
pub const CA_FILE: &str = "ca.pem";

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node: NodeId,
    pub credential: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credential: this ends up in logs.
        f.debug_struct("Identity")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a node identity: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(IDENTITY_FILE)
}

/// The identity in `state_dir`, if the node has enrolled.
pub fn load(state_dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let path = path(state_dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IdentityError::Io { path, source }),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| IdentityError::Corrupt {
            path,
            detail: e.to_string(),
        })
}

/// Write `identity` durably (see the module docs).
pub fn store(state_dir: &Path, identity: &Identity) -> Result<(), IdentityError> {
    write_private(
        state_dir,
        IDENTITY_FILE,
        &serde_json::to_vec(identity).expect("identities serialise"),
    )
}

/// SHA-256 (hex) of the first certificate in `pem`, as enrollment tokens pin it.
pub fn ca_fingerprint(pem: &str) -> Result<String, IdentityError> {
    use rakkr_mqtt::rustls::pki_types::CertificateDer;
    use rakkr_mqtt::rustls::pki_types::pem::PemObject;
    let der =
        CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| IdentityError::Corrupt {
            path: PathBuf::from("(the server's CA)"),
            detail: e.to_string(),
        })?;
    Ok(rakkr_mqtt::sha256_hex(&der))
}

/// Keep the fleet CA (PEM) beside the identity.
pub fn store_ca(state_dir: &Path, pem: &str) -> Result<(), IdentityError> {
    write_private(state_dir, CA_FILE, pem.as_bytes())
}

/// Write `name` in `state_dir` atomically and durably, mode 0600.
fn write_private(state_dir: &Path, name: &str, bytes: &[u8]) -> Result<(), IdentityError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| IdentityError::Io { path, source }
    };
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let target = state_dir.join(name);
    let tmp = state_dir.join(format!("{name}.tmp"));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode_0600()
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &target).map_err(io(&target))?;
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(state_dir))
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identities_round_trip_privately_and_never_print_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let id = Identity {
            node: NodeId::new("studio-a").unwrap(),
            credential: "s3cret".into(),
        };
        store(dir.path(), &id).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(id.clone()));
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{id:?}").contains("s3cret"));
        std::fs::write(path(dir.path()), b"{}").unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}
