//! SMB 2/3 destinations (decision 0018): the one module that speaks SMB, through
//! the `smb2` crate, so another client library can replace it here alone.
//!
//! A file is delivered to `{folder}/{name}` on the share as:
//! 1. make each missing folder of the path;
//! 2. write `{folder}/{name}.rakkr-partial`, streamed in pieces of at most
//!    [`crate::delivery::CHUNK_BYTES`]; the server flushes it to its disk
//!    before the handle closes;
//! 3. rename it over `{name}` (replacing a file an earlier attempt left);
//! 4. stat `{name}` and compare its size with the source's.
//!
//! So the final name only ever holds a whole file: a cut, a killed server or a
//! refused write leaves at most a `.rakkr-partial`, which the next attempt
//! overwrites from its first byte.
//!
//! Invariants:
//! - The password lives in memory for one session only; sessions are not
//!   kept between deliveries, and the client never reconnects by itself (a
//!   write that died in flight is never replayed behind our back).
//! - A destination that requires encryption gets none of its data over a
//!   session the server does not encrypt: the check runs after the share is
//!   connected and before anything is written.
//! - A guest session given in place of the account is refused (the library
//!   does this), so a wrong password never writes as `nobody`.

use std::path::Path;
use std::time::Duration;

use smb2::{ClientConfig, ErrorKind, RenameOptions, SmbClient, Tree};
use tokio::io::AsyncReadExt as _;

/// How long a connect may take before it is a failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may go unanswered before the session is given up.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// What an unfinished file is called beside its final name.
pub const PARTIAL_SUFFIX: &str = ".rakkr-partial";

/// Where and as whom to connect.
pub struct SmbTarget {
    /// `host` or `host:port`.
    pub server: String,
    pub share: String,
    pub user: String,
    pub domain: String,
    pub password: String,
    pub require_encryption: bool,
}

/// `server` with the SMB port when it names none.
fn with_port(server: &str) -> String {
    let has_port = match server.rsplit_once(':') {
        // `[v6]:port` or `host:port`; a bare v6 address has several colons.
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (host.ends_with(']') || !host.contains(':'))
        }
        None => false,
    };
    if has_port {
        server.to_owned()
    } else if server.contains(':') && !server.starts_with('[') {
        format!("[{server}]:445")
    } else {
        format!("{server}:445")
    }
}

/// A connected share.
pub struct SmbShare {
    client: SmbClient,
    tree: Tree,
}

impl SmbTarget {
    /// Sign in and connect the share, refusing a session weaker than the
    /// destination asks for.
    pub async fn connect(&self) -> Result<SmbShare, String> {
        let addr = with_port(&self.server);
        let config = ClientConfig {
            addr: addr.clone(),
            timeout: CONNECT_TIMEOUT,
            username: self.user.clone(),
            password: self.password.clone(),
            domain: self.domain.clone(),
            auto_reconnect: false,
            response_timeout: Some(RESPONSE_TIMEOUT),
            ..ClientConfig::default()
        };
        let mut client = SmbClient::connect(config).await.map_err(|e| {
            if e.kind() == ErrorKind::AuthRequired || e.kind() == ErrorKind::GuestSessionRefused
            {
                format!(
                    "signing in to {addr} as {:?} failed (check the user, domain and password): {e}",
                    self.user
                )
            } else {
                format!("cannot reach the SMB server {addr}: {e}")
            }
        })?;
        let tree = client
            .connect_share(&self.share)
            .await
            .map_err(|e| format!("cannot connect the share {:?} on {addr}: {e}", self.share))?;
        let encrypted = client.connection_mut().should_encrypt();
        if self.require_encryption && !encrypted {
            let dialect = client
                .connection_mut()
                .params()
                .map(|p| format!("{:?}", p.dialect))
                .unwrap_or_else(|| "unknown".into());
            let _ = client.disconnect_share(&tree).await;
            return Err(format!(
                "{addr} does not encrypt the share {:?} (dialect {dialect}) and this destination requires encryption: turn on `smb encrypt = required` for the share, or clear require_encryption",
                self.share
            ));
        }
        Ok(SmbShare { client, tree })
    }
}

impl SmbShare {
    /// Make the folders above `path` that are missing.
    async fn make_parent(&mut self, path: &str) -> Result<(), String> {
        match path.rsplit_once('/') {
            Some((folder, _)) => self.make_folders(folder).await,
            None => Ok(()),
        }
    }

    /// Make `folder` and each folder above it that is missing.
    async fn make_folders(&mut self, folder: &str) -> Result<(), String> {
        let mut upto = String::new();
        for part in folder.split('/').filter(|p| !p.is_empty()) {
            if !upto.is_empty() {
                upto.push('/');
            }
            upto.push_str(part);
            match self.client.create_directory(&self.tree, &upto).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot make the folder {upto:?}: {e}")),
            }
        }
        Ok(())
    }

    /// Deliver `file` (`bytes` long) to `path` (relative to the share, `/`
    /// separated, already checked) as the module docs say.
    pub async fn put_file(&mut self, path: &str, file: &Path, bytes: u64) -> Result<(), String> {
        self.make_parent(path).await?;
        let partial = format!("{path}{PARTIAL_SUFFIX}");
        let mut source = tokio::fs::File::open(file)
            .await
            .map_err(|e| format!("the server's copy {}: {e}", file.display()))?;
        let mut writer = self
            .client
            .create_file_writer(&self.tree, &partial)
            .await
            .map_err(|e| format!("cannot create {partial:?}: {e}"))?;
        let mut buf = vec![0u8; crate::delivery::CHUNK_BYTES.min(bytes.max(1) as usize)];
        let sent: Result<(), String> = async {
            loop {
                let n = source
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("reading the server's copy: {e}"))?;
                if n == 0 {
                    return Ok(());
                }
                writer
                    .write_chunk(&buf[..n])
                    .await
                    .map_err(|e| format!("writing {partial:?}: {e}"))?;
            }
        }
        .await;
        if let Err(e) = sent {
            let _ = writer.abort().await;
            let _ = self.client.delete_file(&self.tree, &partial).await;
            return Err(e);
        }
        writer
            .finish()
            .await
            .map_err(|e| format!("finishing {partial:?}: {e}"))?;
        self.client
            .rename_with(
                &self.tree,
                &partial,
                path,
                RenameOptions::new().replace_if_exists(true),
            )
            .await
            .map_err(|e| format!("cannot rename {partial:?} to {path:?}: {e}"))?;
        let held = self.size(path).await?;
        if held != bytes {
            return Err(format!(
                "the share holds {held} bytes at {path:?}, not {bytes}"
            ));
        }
        Ok(())
    }

    /// The size of the file at `path`.
    pub async fn size(&mut self, path: &str) -> Result<u64, String> {
        self.client
            .stat(&mut self.tree, path)
            .await
            .map(|info| info.size)
            .map_err(|e| format!("cannot stat {path:?}: {e}"))
    }

    /// Write `data` to `path` in one go (a small file, as the probe).
    pub async fn write(&mut self, path: &str, data: &[u8]) -> Result<(), String> {
        self.make_parent(path).await?;
        self.client
            .write_file(&self.tree, path, data)
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot write {path:?}: {e}"))
    }

    /// The whole of the (small) file at `path`.
    pub async fn read(&mut self, path: &str) -> Result<Vec<u8>, String> {
        self.client
            .read_file(&mut self.tree, path)
            .await
            .map_err(|e| format!("cannot read {path:?}: {e}"))
    }

    pub async fn delete(&mut self, path: &str) -> Result<(), String> {
        self.client
            .delete_file(&self.tree, path)
            .await
            .map_err(|e| format!("cannot delete {path:?}: {e}"))
    }

    /// Leave the share (errors are the server's to log: nothing is pending).
    pub async fn close(mut self) {
        let _ = self.client.disconnect_share(&self.tree).await;
    }
}

#[cfg(test)]
mod tests {
    use super::with_port;

    #[test]
    fn a_server_without_a_port_gets_the_smb_port() {
        assert_eq!(with_port("nas.local"), "nas.local:445");
        assert_eq!(with_port("nas.local:1445"), "nas.local:1445");
        assert_eq!(with_port("10.0.0.5"), "10.0.0.5:445");
        assert_eq!(with_port("fd00::5"), "[fd00::5]:445");
        assert_eq!(with_port("[fd00::5]:1445"), "[fd00::5]:1445");
    }
}
