//! Console logins: sessions, CSRF tokens and login rate limits.
//!
//! - **Session cookie** [`COOKIE`]: 32 random bytes (base64url), `HttpOnly`,
//!   `SameSite=Strict`, `Path=/`, and `Secure` when the server serves HTTPS.
//!   The store keeps only the id's SHA-256 ([`rakkr_store::SessionRecord`]);
//!   a new id is issued at every login and password change (no fixation).
//! - **Validity**: the account exists and is enabled, the session started
//!   after the account's `sessions_valid_after_ms` (password change, reset,
//!   disabling: "log out everywhere"), it was used within [`SESSION_IDLE`] and
//!   is younger than [`SESSION_MAX_AGE`]. A session found invalid is deleted.
//! - **CSRF**: every session has a synchronizer token; a state-changing
//!   request made with the cookie must carry it (form field `csrf` or header
//!   `X-CSRF-Token`), compared in constant time. With `SameSite=Strict` this
//!   is defence in depth.
//! - **Login limits** ([`LoginLimiter`]): per account ([`FREE_FAILURES`]) and
//!   per client address ([`ADDRESS_FREE_FAILURES`]) some failures are free,
//!   then each failure locks the key for
//!   twice as long as the last, from [`FIRST_LOCK`] up to [`MAX_LOCK`]. A wrong
//!   password, an unknown name and a disabled account get the same answer,
//!   after the same argon2 work (an unknown name is checked against a dummy
//!   hash).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use rakkr_protocol::access::Permission;
use rakkr_protocol::digest::{constant_time_eq, sha256_hex};
use rakkr_store::{SessionRecord, Store, StoreError, UserChange, UserRecord};

use crate::accounts;

pub const COOKIE: &str = "rakkr_session";
pub const SESSION_IDLE: Duration = Duration::from_secs(60 * 60);
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(12 * 60 * 60);
/// `last_seen` is written at most this often per session.
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);
pub const MAX_SESSIONS_PER_USER: usize = 16;

/// Failures free per account before the lockouts begin.
pub const FREE_FAILURES: u32 = 5;
/// Failures free per client address: higher, since one address (an office
/// behind NAT) may be many operators.
pub const ADDRESS_FREE_FAILURES: u32 = 20;
pub const FIRST_LOCK: Duration = Duration::from_secs(30);
pub const MAX_LOCK: Duration = Duration::from_secs(60 * 60);
/// Keys (accounts, addresses) the limiter remembers at most.
pub const MAX_TRACKED: usize = 10_000;

/// A signed-in operator: the account and its session.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user: UserRecord,
    pub session: SessionRecord,
}

/// Who a request acts as, as the audit log names it: the signed-in operator
/// (`user:NAME`) or the API token (`token:ID`) the access check let through.
/// A handler behind [`crate::login::enforce`] always finds one.
pub struct Actor(pub String);

impl Actor {
    pub fn of_token(token: &rakkr_store::ApiTokenRecord) -> String {
        format!("token:{}", token.id)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Actor {
    type Rejection = crate::http::Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Actor, Self::Rejection> {
        if let Some(s) = parts.extensions.get::<SignedIn>() {
            return Ok(Actor(s.actor()));
        }
        match parts.extensions.get::<rakkr_store::ApiTokenRecord>() {
            Some(t) => Ok(Actor(Actor::of_token(t))),
            None => Err(crate::http::problem(
                axum::http::StatusCode::UNAUTHORIZED,
                "not signed in",
            )),
        }
    }
}

impl SignedIn {
    /// How the audit log names this operator.
    pub fn actor(&self) -> String {
        format!("user:{}", self.user.name)
    }

    pub fn may(&self, permission: Permission) -> bool {
        self.user.role.permissions().contains(&permission)
    }

    /// Whether `presented` is this session's CSRF token.
    pub fn csrf_ok(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|t| constant_time_eq(t, &self.session.csrf_token))
    }
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The session id in a `Cookie` header, if any.
pub fn session_cookie(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// `Set-Cookie` for a new session id.
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_MAX_AGE.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Start a session for `user`: the cookie's id and the signed-in state.
pub fn start_session(
    store: &dyn Store,
    user: UserRecord,
    now_ms: u64,
) -> Result<(String, SignedIn), StoreError> {
    let id = random_token();
    let session = SessionRecord {
        id_sha256: sha256_hex(id.as_bytes()),
        user: user.name.clone(),
        created_ms: now_ms,
        last_seen_ms: now_ms,
        csrf_token: random_token(),
    };
    store.create_session(session.clone(), MAX_SESSIONS_PER_USER)?;
    Ok((id, SignedIn { user, session }))
}

/// The signed-in operator for session id `id`, if the session is valid.
pub fn current(store: &dyn Store, id: &str, now_ms: u64) -> Result<Option<SignedIn>, StoreError> {
    let key = sha256_hex(id.as_bytes());
    let Some(session) = store.session(&key)? else {
        return Ok(None);
    };
    let user = store.user(&session.user)?;
    let valid = user.as_ref().is_some_and(|u| {
        !u.disabled
            && session.created_ms >= u.sessions_valid_after_ms
            && now_ms.saturating_sub(session.last_seen_ms) < SESSION_IDLE.as_millis() as u64
            && now_ms.saturating_sub(session.created_ms) < SESSION_MAX_AGE.as_millis() as u64
    });
    let Some(user) = user.filter(|_| valid) else {
        store.delete_session(&key)?;
        return Ok(None);
    };
    if now_ms.saturating_sub(session.last_seen_ms) >= TOUCH_EVERY.as_millis() as u64 {
        store.touch_session(&key, now_ms)?;
    }
    Ok(Some(SignedIn { user, session }))
}

/// End the session with id `id`.
pub fn end_session(store: &dyn Store, id: &str) -> Result<(), StoreError> {
    store.delete_session(&sha256_hex(id.as_bytes()))
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("wrong name or password")]
    Wrong,
    #[error("too many failed logins; try again in {} s", retry_after.as_secs().max(1))]
    Locked { retry_after: Duration },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A hash to check unknown names against, so they cost what a known one does.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        accounts::hash_password(&random_token()).unwrap_or_else(|_| "$argon2id$".into())
    })
}

/// Check a login (on a blocking thread: argon2 is slow by design) and start a
/// session. `address` is the client's, for the limiter.
pub fn login(
    store: &dyn Store,
    limiter: &LoginLimiter,
    name: &str,
    password: &str,
    address: &str,
    now_ms: u64,
) -> Result<(String, SignedIn), LoginError> {
    let keys = [format!("user:{name}"), format!("addr:{address}")];
    if let Some(retry_after) = limiter.locked(&keys, now_ms) {
        return Err(LoginError::Locked { retry_after });
    }
    let user = store.user(name)?;
    let phc = user
        .as_ref()
        .map_or(dummy_hash(), |u| u.password_phc.as_str());
    let matches = accounts::verify_password(password, phc);
    match user {
        Some(user) if matches && !user.disabled => {
            limiter.succeeded(&keys[0]);
            Ok(start_session(store, user, now_ms)?)
        }
        _ => {
            limiter.failed(&keys, now_ms);
            Err(LoginError::Wrong)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordChangeError {
    #[error("the current password is wrong")]
    WrongCurrent,
    #[error(
        "the new password must be at least {} characters",
        accounts::MIN_PASSWORD_CHARS
    )]
    TooShort,
    #[error(
        "the new password must be at most {} bytes",
        accounts::MAX_PASSWORD_BYTES
    )]
    TooLong,
    #[error("the two new passwords differ")]
    Mismatch,
    #[error("the new password must differ from the current one")]
    Unchanged,
    #[error(transparent)]
    Account(#[from] accounts::AccountError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The signed-in user chooses a new password. Every session of the account
/// ends; the caller gets a fresh one (a new id) to continue with.
pub fn change_password(
    store: &dyn Store,
    signed_in: &SignedIn,
    current: &str,
    new: &str,
    repeated: &str,
    now_ms: u64,
) -> Result<(String, SignedIn), PasswordChangeError> {
    if !accounts::verify_password(current, &signed_in.user.password_phc) {
        return Err(PasswordChangeError::WrongCurrent);
    }
    if new != repeated {
        return Err(PasswordChangeError::Mismatch);
    }
    if new.chars().count() < accounts::MIN_PASSWORD_CHARS {
        return Err(PasswordChangeError::TooShort);
    }
    if new.len() > accounts::MAX_PASSWORD_BYTES {
        return Err(PasswordChangeError::TooLong);
    }
    if new == current {
        return Err(PasswordChangeError::Unchanged);
    }
    let phc = accounts::hash_password(new)?;
    let user = store.change_user(
        &signed_in.user.name,
        UserChange::Password {
            phc,
            must_change: false,
        },
        now_ms,
    )?;
    store.delete_session(&signed_in.session.id_sha256)?;
    Ok(start_session(store, user, now_ms)?)
}

#[derive(Debug, Clone, Copy)]
struct Attempts {
    failures: u32,
    locked_until_ms: u64,
    last_ms: u64,
}

/// Failed logins per account and per address, bounded to [`MAX_TRACKED`] keys.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    keys: Mutex<HashMap<String, Attempts>>,
}

impl LoginLimiter {
    /// How long until a login may be tried for any of `keys`, if locked.
    pub fn locked(&self, keys: &[String], now_ms: u64) -> Option<Duration> {
        let map = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .filter_map(|k| map.get(k))
            .map(|a| a.locked_until_ms.saturating_sub(now_ms))
            .max()
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis)
    }

    pub fn failed(&self, keys: &[String], now_ms: u64) {
        let mut map = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() + keys.len() > MAX_TRACKED {
            // Forget keys that are neither locked nor recent, oldest first.
            map.retain(|_, a| {
                a.locked_until_ms > now_ms || now_ms - a.last_ms < MAX_LOCK.as_millis() as u64
            });
            while map.len() + keys.len() > MAX_TRACKED {
                let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, a)| a.last_ms)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                map.remove(&oldest);
            }
        }
        for key in keys {
            let a = map.entry(key.clone()).or_insert(Attempts {
                failures: 0,
                locked_until_ms: 0,
                last_ms: now_ms,
            });
            a.failures += 1;
            a.last_ms = now_ms;
            let free = if key.starts_with("addr:") {
                ADDRESS_FREE_FAILURES
            } else {
                FREE_FAILURES
            };
            if a.failures >= free {
                let doublings = (a.failures - free).min(16);
                let lock = (FIRST_LOCK * 2u32.pow(doublings)).min(MAX_LOCK);
                a.locked_until_ms = now_ms + lock.as_millis() as u64;
            }
        }
    }

    pub fn succeeded(&self, key: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rakkr_protocol::access::Role;

    fn store_with(name: &str, role: Role) -> (tempfile::TempDir, rakkr_store::RedbStore, String) {
        let dir = tempfile::tempdir().unwrap();
        let store = rakkr_store::RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let password = accounts::add_user(&store, name, role, 1_000).unwrap();
        (dir, store, password)
    }

    #[test]
    fn sessions_live_until_idle_age_logout_or_a_password_change() {
        let (_d, store, password) = store_with("ann", Role::Viewer);
        let limiter = LoginLimiter::default();
        let t0 = 10_000;
        let (id, signed_in) = login(&store, &limiter, "ann", &password, "a", t0).unwrap();
        assert!(signed_in.may(Permission::NodesRead));
        assert!(!signed_in.may(Permission::JobsManage));
        assert!(signed_in.user.must_change_password);
        assert!(current(&store, &id, t0 + 1).unwrap().is_some());
        assert!(current(&store, "forged", t0 + 1).unwrap().is_none());
        assert!(signed_in.csrf_ok(Some(&signed_in.session.csrf_token)));
        assert!(!signed_in.csrf_ok(Some("guess")));
        assert!(!signed_in.csrf_ok(None));

        // Idle: used within the hour keeps it; an hour of silence ends it.
        let hour = SESSION_IDLE.as_millis() as u64;
        assert!(current(&store, &id, t0 + hour - 1).unwrap().is_some());
        assert!(
            current(&store, &id, t0 + 2 * hour - 2).unwrap().is_some(),
            "touched above"
        );
        assert!(current(&store, &id, t0 + 3 * hour).unwrap().is_none());
        assert!(
            current(&store, &id, t0 + 3 * hour - 10).unwrap().is_none(),
            "deleted when found invalid"
        );

        // Absolute age, however busy.
        let (id, _) = login(&store, &limiter, "ann", &password, "a", t0).unwrap();
        let mut t = t0;
        while t < t0 + SESSION_MAX_AGE.as_millis() as u64 - 1 {
            assert!(current(&store, &id, t).unwrap().is_some());
            t += 30 * 60 * 1000;
        }
        assert!(
            current(&store, &id, t0 + SESSION_MAX_AGE.as_millis() as u64)
                .unwrap()
                .is_none()
        );

        // A password change ends every session and hands over a new one.
        let (old, signed_in) = login(&store, &limiter, "ann", &password, "a", t0).unwrap();
        let (other, _) = login(&store, &limiter, "ann", &password, "b", t0).unwrap();
        let e = change_password(
            &store,
            &signed_in,
            "wrong",
            "a new long password",
            "a new long password",
            t0 + 5,
        )
        .unwrap_err();
        assert!(matches!(e, PasswordChangeError::WrongCurrent));
        let e =
            change_password(&store, &signed_in, &password, "short", "short", t0 + 5).unwrap_err();
        assert!(matches!(e, PasswordChangeError::TooShort));
        let e = change_password(
            &store,
            &signed_in,
            &password,
            "a new long password",
            "a new long passwort",
            t0 + 5,
        )
        .unwrap_err();
        assert!(matches!(e, PasswordChangeError::Mismatch));
        let (fresh, now) = change_password(
            &store,
            &signed_in,
            &password,
            "a new long password",
            "a new long password",
            t0 + 5,
        )
        .unwrap();
        assert!(!now.user.must_change_password);
        assert!(current(&store, &old, t0 + 6).unwrap().is_none());
        assert!(
            current(&store, &other, t0 + 6).unwrap().is_none(),
            "logged out everywhere"
        );
        assert!(current(&store, &fresh, t0 + 6).unwrap().is_some());
        assert!(matches!(
            login(&store, &limiter, "ann", &password, "a", t0 + 7),
            Err(LoginError::Wrong)
        ));
        end_session(&store, &fresh).unwrap();
        assert!(current(&store, &fresh, t0 + 8).unwrap().is_none());

        // Disabling ends sessions too.
        let (id, _) = login(&store, &limiter, "ann", "a new long password", "a", t0 + 10).unwrap();
        store
            .change_user("ann", UserChange::Disabled(true), t0 + 11)
            .unwrap();
        assert!(current(&store, &id, t0 + 12).unwrap().is_none());
        assert!(
            matches!(
                login(&store, &limiter, "ann", "a new long password", "a", t0 + 13),
                Err(LoginError::Wrong)
            ),
            "a disabled account looks like a wrong password"
        );
    }

    #[test]
    fn failed_logins_lock_the_account_and_the_address_with_growing_waits() {
        let (_d, store, password) = store_with("bob", Role::Viewer);
        let limiter = LoginLimiter::default();
        let t0 = 1_000_000;
        for i in 0..FREE_FAILURES {
            let e = login(
                &store,
                &limiter,
                "bob",
                "wrong",
                "10.0.0.1",
                t0 + u64::from(i),
            )
            .unwrap_err();
            assert!(matches!(e, LoginError::Wrong), "{e}");
        }
        // Locked now, also for the right password, from any address.
        let e = login(&store, &limiter, "bob", &password, "10.0.0.2", t0 + 10).unwrap_err();
        let LoginError::Locked { retry_after } = e else {
            panic!("{e}")
        };
        assert!(
            retry_after <= FIRST_LOCK && retry_after > FIRST_LOCK / 2,
            "{retry_after:?}"
        );
        // An address is locked after more failures, across accounts.
        for i in 0..(ADDRESS_FREE_FAILURES - FREE_FAILURES) {
            let name = format!("n{i}");
            let e = login(&store, &limiter, &name, "x", "10.0.0.1", t0 + 20).unwrap_err();
            assert!(matches!(e, LoginError::Wrong), "{e}");
        }
        assert!(matches!(
            login(&store, &limiter, "nobody", "x", "10.0.0.1", t0 + 21),
            Err(LoginError::Locked { .. })
        ));
        assert!(
            matches!(
                login(&store, &limiter, "nobody", "x", "10.0.0.9", t0 + 21),
                Err(LoginError::Wrong)
            ),
            "another address is not"
        );
        // After the wait one more failure locks twice as long.
        let t1 = t0 + FIRST_LOCK.as_millis() as u64 + 10;
        assert!(matches!(
            login(&store, &limiter, "bob", "wrong", "10.0.0.3", t1),
            Err(LoginError::Wrong)
        ));
        let Some(wait) = limiter.locked(&["user:bob".to_owned()], t1) else {
            panic!("locked")
        };
        assert!(wait > FIRST_LOCK && wait <= FIRST_LOCK * 2, "{wait:?}");
        // Success clears the account's count.
        let t2 = t1 + 2 * FIRST_LOCK.as_millis() as u64 + 1;
        login(&store, &limiter, "bob", &password, "10.0.0.4", t2).unwrap();
        assert!(limiter.locked(&["user:bob".to_owned()], t2).is_none());
    }

    #[test]
    fn the_limiter_stays_bounded() {
        let limiter = LoginLimiter::default();
        for i in 0..(MAX_TRACKED + 500) {
            limiter.failed(&[format!("user:u{i}")], i as u64);
        }
        assert!(limiter.keys.lock().unwrap().len() <= MAX_TRACKED);
    }

    #[test]
    fn the_cookie_is_found_and_set_with_its_flags() {
        assert_eq!(session_cookie("a=1; rakkr_session=abc; b=2"), Some("abc"));
        assert_eq!(session_cookie("rakkr_sessionx=abc"), None);
        assert_eq!(session_cookie("rakkr_session="), None);
        let c = set_cookie("abc", true);
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
            assert!(c.contains(flag), "{c}");
        }
        assert!(!set_cookie("abc", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }
}
