//! API tokens: bearer credentials for automation (the JSON API, `/metrics`).
//!
//! Format: `rkt1.{id}.{secret}` — `id` 16 hex characters (public: lists, logs,
//! revocation), `secret` 32 random bytes in base64url. Only the secret's
//! SHA-256 is stored (like node credentials, decision 0011: a 256-bit random
//! secret needs no slow hash, and checking one per API request must be cheap);
//! it is compared in constant time. A token acts with exactly one role, may
//! expire, and is revocable; it is shown once, at creation.

use base64::Engine;
use rakkr_protocol::access::Role;
use rakkr_protocol::digest::{constant_time_eq, sha256_hex};
use rakkr_store::{ApiTokenRecord, Store, StoreError};

pub const PREFIX: &str = "rkt1";
/// Longest lifetime a token may be given.
pub const MAX_TTL_DAYS: u64 = 3650;

/// Create a token acting as `role`; the returned string is shown once.
pub fn create(
    store: &dyn Store,
    name: &str,
    role: Role,
    ttl_days: Option<u64>,
    now_ms: u64,
) -> Result<(String, ApiTokenRecord), StoreError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(StoreError::Refused(
            "a token's name must be 1-64 printable characters".into(),
        ));
    }
    if ttl_days.is_some_and(|d| d == 0 || d > MAX_TTL_DAYS) {
        return Err(StoreError::Refused(format!(
            "a token lives 1-{MAX_TTL_DAYS} days (or without --ttl-days, until revoked)"
        )));
    }
    let id = format!("{:016x}", rand::random::<u64>());
    let secret =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let record = ApiTokenRecord {
        id: id.clone(),
        secret_sha256: sha256_hex(secret.as_bytes()),
        name: name.to_owned(),
        role,
        created_ms: now_ms,
        expires_ms: ttl_days.map(|d| now_ms + d * 86_400_000),
        revoked_ms: None,
    };
    store.create_api_token(record.clone())?;
    Ok((format!("{PREFIX}.{id}.{secret}"), record))
}

/// The valid token `presented` names, if any (unknown ids, wrong secrets,
/// revoked and expired tokens are all `None`).
pub fn verify(
    store: &dyn Store,
    presented: &str,
    now_ms: u64,
) -> Result<Option<ApiTokenRecord>, StoreError> {
    let mut parts = presented.splitn(3, '.');
    let (Some(PREFIX), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(None);
    };
    if id.len() != 16 || secret.len() > 64 {
        return Ok(None);
    }
    let Some(token) = store.api_token(id)? else {
        return Ok(None);
    };
    let matches = constant_time_eq(&sha256_hex(secret.as_bytes()), &token.secret_sha256);
    Ok((matches && token.is_valid(now_ms)).then_some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_revoked_or_expired_and_only_with_their_secret() {
        let dir = tempfile::tempdir().unwrap();
        let store = rakkr_store::RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let (token, record) = create(&store, "ci", Role::Operator, Some(2), 1_000).unwrap();
        assert!(token.starts_with("rkt1."));
        assert_eq!(
            verify(&store, &token, 2_000).unwrap().unwrap().role,
            Role::Operator
        );
        let stored = store.api_token(&record.id).unwrap().unwrap();
        assert!(
            !format!("{stored:?}").contains(token.rsplit('.').next().unwrap()),
            "no secret kept"
        );

        let forged = format!("{}x", &token[..token.len() - 1]);
        assert!(verify(&store, &forged, 2_000).unwrap().is_none());
        for junk in [
            "",
            "rkt1",
            "rkt1..",
            "Bearer x",
            "rkt1.0123456789abcdef",
            "rkt2.0123456789abcdef.x",
        ] {
            assert!(verify(&store, junk, 2_000).unwrap().is_none(), "{junk}");
        }
        assert!(
            verify(&store, &token, 1_000 + 2 * 86_400_000)
                .unwrap()
                .is_none(),
            "expired"
        );

        let (forever, r2) = create(&store, "prometheus", Role::Viewer, None, 1_000).unwrap();
        assert!(verify(&store, &forever, u64::MAX / 2).unwrap().is_some());
        store.revoke_api_token(&r2.id, 5_000).unwrap();
        assert!(
            verify(&store, &forever, 5_001).unwrap().is_none(),
            "revoked"
        );
        assert_eq!(
            store.revoke_api_token(&r2.id, 9_000).unwrap().revoked_ms,
            Some(5_000)
        );
        assert!(store.revoke_api_token("nope", 1).is_err());
        assert_eq!(store.api_tokens().unwrap().len(), 2);

        assert!(create(&store, "", Role::Viewer, None, 1).is_err());
        assert!(create(&store, "x", Role::Viewer, Some(0), 1).is_err());
    }
}
