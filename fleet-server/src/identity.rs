//! Node identity: enrollment tokens, node credentials, and the in-memory
//! credential table the MQTT gate ([`crate::gate`]) checks on every connect.
//!
//! Formats:
//! - enrollment token: `rkr1.{id}.{secret}[.{ca}]` — `id` 16 hex digits
//!   (public, names the token), `secret` 32 random bytes, base64url without
//!   padding, and when MQTT over TLS is on `ca`, the SHA-256 of the fleet CA
//!   (hex), so the appliance can check the CA it is handed before trusting it;
//! - node credential: 32 random bytes, base64url without padding; the node
//!   uses its node id as MQTT client id and user name, the credential as password.
//!
//! Only SHA-256 hashes of secrets are stored. A slow password hash would buy
//! nothing here: the secrets are 256 random bits, not something a person chose,
//! and a fast hash keeps ten thousand reconnecting nodes cheap to check.
//! Comparisons of hashes are constant-time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine;
use rakkr_protocol::NodeId;
use rakkr_store::{EnrollTokenRecord, NodeCredentialRecord, Store, StoreError};
use rand::RngCore;
use tokio_util::sync::CancellationToken;

/// Prefix (and format version) of enrollment tokens.
pub const TOKEN_PREFIX: &str = "rkr1";

/// Longest an enrollment token may live: a week.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A fresh secret: 32 bytes from the operating system's generator, base64url.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn sha256_hex(secret: &str) -> String {
    rakkr_mqtt::sha256_hex(secret.as_bytes())
}

pub use rakkr_mqtt::constant_time_eq;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("not an enrollment token (expected {TOKEN_PREFIX}.ID.SECRET[.CA])")]
    MalformedToken,
    #[error("{0}")]
    Refused(String),
    #[error("token lifetime must be 1 s to {} s", MAX_TOKEN_TTL.as_secs())]
    BadTtl,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for IdentityError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Refused(why) => IdentityError::Refused(why),
            e => IdentityError::Store(e),
        }
    }
}

/// A token as created: the whole string is shown once.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct NewToken {
    pub token: String,
    pub id: String,
    pub node: Option<NodeId>,
    pub expires_ms: u64,
}

impl NewToken {
    /// The audit record's view of a new token: never its secret.
    pub fn audit_change(&self) -> crate::audit::AuditChange {
        crate::audit::AuditChange {
            target: Some(format!("enroll-token:{}", self.id)),
            before: None,
            after: Some(serde_json::json!({
                "id": self.id,
                "node": self.node,
                "expires_ms": self.expires_ms,
            })),
        }
    }
}

/// Create an enrollment token valid for `ttl`.
pub fn create_token(
    store: &dyn Store,
    node: Option<NodeId>,
    ttl: Duration,
    ca_sha256: Option<&str>,
    now_ms: u64,
) -> Result<NewToken, IdentityError> {
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(IdentityError::BadTtl);
    }
    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = new_secret();
    let expires_ms = now_ms + ttl.as_millis() as u64;
    store.create_enroll_token(EnrollTokenRecord {
        id: id.clone(),
        secret_sha256: sha256_hex(&secret),
        node: node.clone(),
        created_ms: now_ms,
        expires_ms,
        used: None,
    })?;
    let pin = ca_sha256.map_or(String::new(), |ca| format!(".{ca}"));
    Ok(NewToken {
        token: format!("{TOKEN_PREFIX}.{id}.{secret}{pin}"),
        id,
        node,
        expires_ms,
    })
}

/// Split a token into its id and secret.
fn parse_token(token: &str) -> Result<(&str, &str), IdentityError> {
    let mut parts = token.trim().split('.');
    // The optional fourth part pins the fleet CA (checked by the appliance).
    let pin_ok = |pin: Option<&str>| {
        pin.is_none_or(|p| p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some(TOKEN_PREFIX), Some(id), Some(secret), pin, None)
            if id.len() == 16
                && id.bytes().all(|b| b.is_ascii_hexdigit())
                && !secret.is_empty()
                && pin_ok(pin) =>
        {
            Ok((id, secret))
        }
        _ => Err(IdentityError::MalformedToken),
    }
}

/// Which of a node's secrets a client presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    Current,
    /// The rotated secret, used for the first time: it becomes the current one.
    Next,
}

/// The node credentials the gate checks, in memory, kept in step with the store,
/// and the live connection of each node (so a revocation can end it).
#[derive(Default)]
pub struct Identities {
    credentials: RwLock<HashMap<NodeId, NodeCredentialRecord>>,
    live: Mutex<HashMap<NodeId, (u64, CancellationToken)>>,
    next_connection: std::sync::atomic::AtomicU64,
}

impl Identities {
    pub fn load(store: &dyn Store) -> Result<Identities, StoreError> {
        let ids = Identities::default();
        for c in store.node_credentials()? {
            ids.remember(c);
        }
        Ok(ids)
    }

    fn remember(&self, c: NodeCredentialRecord) {
        self.credentials
            .write()
            .expect("credentials lock poisoned")
            .insert(c.node.clone(), c);
    }

    /// Check a node's secret.
    pub fn verify(&self, node: &NodeId, secret: &str) -> Result<Verified, String> {
        let table = self.credentials.read().expect("credentials lock poisoned");
        let Some(c) = table.get(node) else {
            return Err(format!("node {node} is not enrolled"));
        };
        if c.revoked_ms.is_some() {
            return Err(format!("node {node}'s credential is revoked"));
        }
        let presented = sha256_hex(secret);
        if constant_time_eq(&presented, &c.secret_sha256) {
            Ok(Verified::Current)
        } else if c
            .next_sha256
            .as_deref()
            .is_some_and(|n| constant_time_eq(&presented, n))
        {
            Ok(Verified::Next)
        } else {
            Err(format!("wrong credential for node {node}"))
        }
    }

    /// Exchange an enrollment token for `node`'s credential (shown once).
    pub fn enroll(
        &self,
        store: &dyn Store,
        token: &str,
        node: &NodeId,
        now_ms: u64,
    ) -> Result<String, IdentityError> {
        let (id, secret) = parse_token(token)?;
        let credential = new_secret();
        let record = store.enroll_node(
            id,
            &sha256_hex(secret),
            node,
            &sha256_hex(&credential),
            now_ms,
        )?;
        // A node enrolled again ends the connection made with its old credential.
        self.disconnect(node);
        self.remember(record);
        Ok(credential)
    }

    /// A node asks for a new secret, authenticated by its current one. The
    /// current secret keeps working until the node connects with the new one.
    pub fn rotate(
        &self,
        store: &dyn Store,
        node: &NodeId,
        current: &str,
        now_ms: u64,
    ) -> Result<String, IdentityError> {
        self.verify(node, current).map_err(IdentityError::Refused)?;
        let next = new_secret();
        let record = store.set_next_node_credential(node, &sha256_hex(&next), now_ms)?;
        self.remember(record);
        Ok(next)
    }

    /// The node connected with its next secret: make it the only one.
    pub fn promote(
        &self,
        store: &dyn Store,
        node: &NodeId,
        now_ms: u64,
    ) -> Result<(), IdentityError> {
        let record = store.promote_node_credential(node, now_ms)?;
        self.remember(record);
        Ok(())
    }

    /// Revoke a node's credential and end its live connection.
    pub fn revoke(
        &self,
        store: &dyn Store,
        node: &NodeId,
        now_ms: u64,
    ) -> Result<NodeCredentialRecord, IdentityError> {
        let record = store.revoke_node_credential(node, now_ms)?;
        self.remember(record.clone());
        self.disconnect(node);
        Ok(record)
    }

    /// Register a node's new connection; a previous one of the same node is ended.
    /// Returns the connection's number and the token that ends it.
    pub fn connected(&self, node: &NodeId) -> (u64, CancellationToken) {
        let n = self
            .next_connection
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        let old = self
            .live
            .lock()
            .expect("live connections lock poisoned")
            .insert(node.clone(), (n, token.clone()));
        if let Some((_, old)) = old {
            old.cancel();
        }
        (n, token)
    }

    /// Forget connection `n` of `node` (if it is still the registered one).
    pub fn disconnected(&self, node: &NodeId, n: u64) {
        let mut live = self.live.lock().expect("live connections lock poisoned");
        if live.get(node).is_some_and(|(m, _)| *m == n) {
            live.remove(node);
        }
    }

    fn disconnect(&self, node: &NodeId) {
        if let Some((_, token)) = self
            .live
            .lock()
            .expect("live connections lock poisoned")
            .remove(node)
        {
            token.cancel();
        }
    }
}

/// Shared handle.
pub type SharedIdentities = Arc<Identities>;

#[cfg(test)]
mod tests {
    use super::*;
    use rakkr_store::RedbStore;

    #[test]
    fn a_token_enrolls_once_and_its_credential_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let ids = Identities::default();
        let node = NodeId::new("studio-a").unwrap();
        let t = create_token(&store, None, Duration::from_secs(60), None, 1_000).unwrap();
        assert!(t.token.starts_with("rkr1.") && t.token.len() > 60);
        assert!(matches!(
            ids.enroll(&store, "garbage", &node, 2_000),
            Err(IdentityError::MalformedToken)
        ));
        let cred = ids.enroll(&store, &t.token, &node, 2_000).unwrap();
        assert_eq!(ids.verify(&node, &cred), Ok(Verified::Current));
        assert!(ids.verify(&node, "guess").is_err());
        assert!(ids.verify(&NodeId::new("other").unwrap(), &cred).is_err());
        let again = ids.enroll(&store, &t.token, &node, 2_001).unwrap_err();
        assert!(again.to_string().contains("already used"), "{again}");

        // Rotation: both work until the next is used; then only the next.
        let next = ids.rotate(&store, &node, &cred, 3_000).unwrap();
        assert_eq!(ids.verify(&node, &cred), Ok(Verified::Current));
        assert_eq!(ids.verify(&node, &next), Ok(Verified::Next));
        ids.promote(&store, &node, 3_001).unwrap();
        assert!(ids.verify(&node, &cred).is_err());
        assert_eq!(ids.verify(&node, &next), Ok(Verified::Current));

        // Revocation ends the live connection and refuses the credential.
        let (_, live) = ids.connected(&node);
        ids.revoke(&store, &node, 4_000).unwrap();
        assert!(live.is_cancelled());
        assert!(ids.verify(&node, &next).unwrap_err().contains("revoked"));
        // What the store kept survives a reload.
        let reloaded = Identities::load(&store).unwrap();
        assert!(reloaded.verify(&node, &next).is_err());
        assert!(create_token(&store, None, Duration::ZERO, None, 0).is_err());
        let pinned = create_token(
            &store,
            None,
            Duration::from_secs(60),
            Some(&"ab".repeat(32)),
            0,
        )
        .unwrap();
        assert!(pinned.token.ends_with(&"ab".repeat(32)));
        assert!(parse_token(&pinned.token).is_ok());
        assert!(
            parse_token(&format!("{}.x", t.token)).is_err(),
            "a pin is 64 hex digits"
        );
    }

    #[test]
    fn a_second_connection_of_a_node_ends_the_first() {
        let ids = Identities::default();
        let node = NodeId::new("n").unwrap();
        let (a, first) = ids.connected(&node);
        let (b, second) = ids.connected(&node);
        assert!(first.is_cancelled() && !second.is_cancelled());
        ids.disconnected(&node, a);
        assert!(
            ids.live.lock().unwrap().contains_key(&node),
            "the newer stays registered"
        );
        ids.disconnected(&node, b);
        assert!(ids.live.lock().unwrap().is_empty());
    }
}
