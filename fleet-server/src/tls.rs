//! The server's own certificate authority and its TLS server certificate.
//!
//! On-disk format (`{data_dir}/tls/`):
//!
//! | file         | what                                           |
//! |--------------|------------------------------------------------|
//! | `ca.pem`     | the CA certificate (appliances trust this one) |
//! | `ca.key.pem` | the CA's private key (mode 0600)               |
//!
//! The CA is created on the first start and kept; its SHA-256 fingerprint (of
//! the DER certificate) goes into every enrollment token, so an appliance can
//! check the CA it receives at enrollment before it trusts it. The server
//! certificate is issued afresh by the CA at every start, for the configured
//! names plus `localhost` and `127.0.0.1`, valid for a year: nothing to renew,
//! and a change of names takes effect at the next start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Common name of every Rakkr CA (the key is what makes each one unique).
const CA_NAME: &str = "Rakkr fleet CA";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The CA and a fresh server certificate, ready to serve.
pub struct ServerTls {
    pub ca_pem: String,
    /// SHA-256 of the CA certificate (DER), lower-case hex.
    pub ca_sha256: String,
    pub config: Arc<rustls::ServerConfig>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    Ok(params)
}

/// SHA-256 of a DER certificate, lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    rakkr_mqtt::sha256_hex(der)
}

impl ServerTls {
    /// Load the CA from `dir` (creating it on the first start) and issue a
    /// server certificate for `names`.
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<ServerTls, TlsError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (ca_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key.pem"));
        let params = ca_params()?;
        let ca_key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => KeyPair::from_pem(&pem)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate()?;
                let cert = params.self_signed(&key)?;
                write_private(&key_path, key.serialize_pem().as_bytes())?;
                std::fs::write(&ca_path, cert.pem()).map_err(io(&ca_path))?;
                tracing::info!(dir = %dir.display(), "created the fleet's certificate authority");
                key
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(io(&ca_path))?;
        let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes())
            .map(|c: CertificateDer<'static>| c.to_vec())
            .map_err(|e| TlsError::Io {
                path: ca_path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;

        let mut server_names: Vec<String> = names.to_vec();
        for n in ["localhost", "127.0.0.1"] {
            if !server_names.iter().any(|s| s == n) {
                server_names.push(n.to_owned());
            }
        }
        let mut server = CertificateParams::new(server_names)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "rakkr-server");
        server.distinguished_name = dn;
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = std::time::SystemTime::now();
        server.not_before = (now - std::time::Duration::from_secs(3600)).into();
        server.not_after = (now + std::time::Duration::from_secs(365 * 24 * 3600)).into();
        let server_key = KeyPair::generate()?;
        let issuer = Issuer::new(params, &ca_key);
        let server_cert = server.signed_by(&server_key, &issuer)?;

        let chain = vec![
            server_cert.der().clone(),
            CertificateDer::from(ca_der.clone()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        Ok(ServerTls {
            ca_sha256: fingerprint(&ca_der),
            ca_pem,
            config: Arc::new(config),
        })
    }
}

/// Connections whose TLS handshake is still under way, at most.
const HANDSHAKES_QUEUED: usize = 64;

/// A TCP listener whose connections come out TLS-wrapped, for `axum::serve`.
/// Handshakes run concurrently, each within `handshake`; a failed or slow one
/// is logged and dropped, never holding up the others.
pub struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    pub fn new(
        listener: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        handshake: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, accepted) = tokio::sync::mpsc::channel(HANDSHAKES_QUEUED);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "HTTPS accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    _ = shutdown.cancelled() => return,
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTPS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "HTTPS handshake too slow"),
                    }
                });
            }
        });
        Ok(TlsListener { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(c) => c,
            // The accept loop ended (shutdown): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A client's address, for handlers on both the plain and the TLS listener
/// (`ConnectInfo<PeerAddr>`; axum provides `SocketAddr` for its own
/// listener only).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Write a private key readable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServerTls::load_or_create(dir.path(), &["rakkr.example".into()]).unwrap();
        let again = ServerTls::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(first.ca_sha256, again.ca_sha256, "the CA survives restarts");
        assert_eq!(first.ca_sha256.len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
