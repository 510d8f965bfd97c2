//! One MQTT session driver for every Rakkr process that talks to a broker.
//!
//! rumqttc reconnects by itself on the next `poll()` after an error, which turns
//! a dead broker into a busy loop and makes a fleet reconnect in lockstep. This
//! driver owns the event loop and adds what Rakkr needs around it:
//! - reconnect delays with exponential backoff and full jitter
//!   ([`rakkr_protocol::backoff`]), reset after each successful CONNACK;
//! - a fresh Last Will before every reconnect, so each connection's will carries
//!   its own message id;
//! - TCP_NODELAY on (rumqttc's default leaves Nagle on, which caps QoS 1
//!   throughput at a few thousand messages per second);
//! - an orderly end: [`finish`] flushes what was queued, then disconnects.
//!
//! The event loop is only polled here, from one task; publishers use cloned
//! [`AsyncClient`]s and never wait on the network.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rakkr_protocol::backoff::Backoff;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet,
    Publish,
};
use tokio_util::sync::CancellationToken;

pub use rumqttc;
/// For [`Endpoint::tls`]: the TLS library the link uses.
pub use rustls;

pub use rakkr_protocol::digest::{constant_time_eq, sha256_hex};

/// Make ring the process's TLS crypto provider. Every Rakkr binary calls this
/// first: the HTTP client (reqwest, built without a provider of its own so
/// that only ring is compiled in) finds no provider otherwise. Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Largest MQTT packet either side of a Rakkr link sends or accepts: the largest
/// payload plus room for the topic and headers.
pub const MAX_PACKET_BYTES: usize = rakkr_protocol::MAX_PAYLOAD_BYTES + 1024;

/// Requests queued between publishers and the event loop.
pub const REQUEST_QUEUE: usize = 256;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub client_id: String,
    pub host: String,
    pub port: u16,
    pub keep_alive: Duration,
    pub credentials: Option<(String, String)>,
    /// MQTT over TLS, trusting what this configuration trusts.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("no certificate in the CA file")]
    NoCertificate,
    #[error("the CA file is not PEM: {0}")]
    Pem(String),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A TLS client configuration that trusts exactly the CA certificates in
/// `ca_pem` (the fleet's own CA, not the system's roots).
pub fn tls_trusting(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| TlsSetupError::Pem(e.to_string()))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoCertificate);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Counters every link keeps; cheap to read from anywhere.
#[derive(Debug, Default)]
pub struct LinkState {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub connection_errors: AtomicU64,
}

impl LinkState {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// What the driver reports to its owner.
#[derive(Debug)]
pub enum SessionEvent<'a> {
    /// CONNACK received: (re)publish retained state and (re)subscribe now.
    Connected,
    /// An incoming PUBLISH.
    Message(&'a Publish),
    /// The connection failed or dropped; the next attempt comes after `retry_in`.
    Disconnected {
        error: &'a ConnectionError,
        retry_in: Duration,
    },
}

/// Whether a connection ended because the broker sent a packet we refused to
/// read (over [`MAX_PACKET_BYTES`], or malformed): bad input to count, not a
/// network fault.
pub fn is_refused_packet(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(_))
    )
}

/// A TLS client configuration that trusts the server only if its chain carries
/// the CA whose certificate (DER) has SHA-256 `ca_sha256` (hex), and the server
/// certificate verifies against that CA for the name asked for: how an
/// appliance that holds only an enrollment token reaches the server.
pub fn tls_pinned(ca_sha256: &str) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCa {
        pin: ca_sha256.to_ascii_lowercase(),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| sha256_hex(c) == self.pin) else {
            return Err(rustls::Error::General(
                "the server's CA is not the one the enrollment token names".into(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Build the client and event loop for `endpoint`. `will` makes the Last Will
/// for each connection attempt (called before the first and every reconnect).
pub fn connect(
    endpoint: &Endpoint,
    will: Option<&(dyn Fn() -> LastWill + Send + Sync)>,
) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(&endpoint.client_id, &endpoint.host, endpoint.port);
    opts.set_keep_alive(endpoint.keep_alive);
    opts.set_clean_session(true);
    opts.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if let Some((user, pass)) = &endpoint.credentials {
        opts.set_credentials(user, pass);
    }
    if let Some(will) = will {
        opts.set_last_will(will());
    }
    if let Some(tls) = &endpoint.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_QUEUE);
    eventloop.network_options.set_tcp_nodelay(true);
    eventloop.network_options.set_connection_timeout(5);
    (client, eventloop)
}

/// Poll `eventloop` until `shutdown` fires, reconnecting with backoff. Returns the
/// event loop so the caller can [`finish`] it after queuing final messages.
pub async fn drive(
    mut eventloop: EventLoop,
    state: Arc<LinkState>,
    will: Option<&(dyn Fn() -> LastWill + Send + Sync)>,
    mut on_event: impl FnMut(SessionEvent<'_>),
    shutdown: CancellationToken,
) -> EventLoop {
    let mut backoff = Backoff::for_reconnect();
    loop {
        let event = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return eventloop,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                state.connected.store(true, Ordering::Release);
                state.connects.fetch_add(1, Ordering::Relaxed);
                on_event(SessionEvent::Connected);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                on_event(SessionEvent::Message(&publish))
            }
            Ok(_) => {}
            Err(error) => {
                state.connected.store(false, Ordering::Release);
                state.connection_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(will) = will {
                    eventloop.mqtt_options.set_last_will(will());
                }
                let retry_in = backoff.next_delay(rand::random());
                on_event(SessionEvent::Disconnected {
                    error: &error,
                    retry_in,
                });
                tokio::select! {
                    _ = shutdown.cancelled() => return eventloop,
                    _ = tokio::time::sleep(retry_in) => {}
                }
            }
        }
    }
}

/// Send what is queued (e.g. a final retained status), then DISCONNECT, waiting
/// at most `limit`. An orderly DISCONNECT means the broker discards the Last Will.
pub async fn finish(
    client: &AsyncClient,
    mut eventloop: EventLoop,
    state: &LinkState,
    limit: Duration,
) {
    if !state.is_connected() {
        return;
    }
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(limit, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    state.connected.store(false, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-connection broker that accepts the CONNECT and then sends `then`.
    async fn broker_sending(then: Vec<u8>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut connect = [0u8; 256];
            let _ = socket.read(&mut connect).await.unwrap();
            socket.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
            socket.write_all(&then).await.unwrap();
            // Hold the connection open: only the client may end it.
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        port
    }

    /// How the first connection driven against `port` ended.
    async fn first_disconnect(port: u16) -> bool {
        let endpoint = Endpoint {
            client_id: "t".into(),
            host: "127.0.0.1".into(),
            port,
            keep_alive: Duration::from_secs(30),
            credentials: None,
            tls: None,
        };
        let (_client, eventloop) = connect(&endpoint, None);
        let shutdown = CancellationToken::new();
        let mut refused = None;
        let stop = shutdown.clone();
        let drive = drive(
            eventloop,
            Arc::new(LinkState::default()),
            None,
            |event| {
                if let SessionEvent::Disconnected { error, .. } = event {
                    refused.get_or_insert(is_refused_packet(error));
                    stop.cancel();
                }
            },
            shutdown.clone(),
        );
        tokio::time::timeout(Duration::from_secs(5), drive)
            .await
            .expect("the connection ends");
        refused.expect("a disconnect was reported")
    }

    #[tokio::test]
    async fn an_oversized_packet_from_the_broker_is_a_refused_packet() {
        // PUBLISH whose remaining length (varint) is one byte over the bound.
        let mut len = MAX_PACKET_BYTES + 1;
        let mut packet = vec![0x30];
        loop {
            let byte = (len % 128) as u8;
            len /= 128;
            packet.push(if len > 0 { byte | 0x80 } else { byte });
            if len == 0 {
                break;
            }
        }
        packet.extend_from_slice(&[0, 1, b't']);
        assert!(first_disconnect(broker_sending(packet).await).await);
    }

    #[tokio::test]
    async fn a_malformed_packet_is_refused_and_a_closed_socket_is_not() {
        // A reserved packet type (0).
        assert!(first_disconnect(broker_sending(vec![0x00, 0x00]).await).await);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut connect = [0u8; 256];
            let _ = socket.read(&mut connect).await.unwrap();
            socket.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
            // Then the network goes away.
        });
        assert!(!first_disconnect(port).await);
    }
}
