//! Operator accounts: password hashing, one-time passwords, the first owner.
//!
//! Invariants:
//! - Only argon2id hashes are stored (PHC strings with their own salt and
//!   parameters; a hash made with older parameters still verifies).
//! - A password chosen by anyone but the account's user (first start,
//!   `user add`, a reset) is a one-time password: the account must change it
//!   at its next login ([`UserRecord::must_change_password`]).
//! - The first start of a server with no account creates exactly one owner,
//!   [`FIRST_OWNER`], and prints its one-time password once; the store creates
//!   it only while there is no account at all, so it can never appear twice.
//!
//! Hashing costs about 60 ms of CPU in a release build (argon2's default
//! parameters, 19 MiB of memory): call it on a blocking thread.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use rakkr_protocol::access::Role;
use rakkr_store::{Store, StoreError, UserChange, UserRecord};

/// The account created at first start.
pub const FIRST_OWNER: &str = "owner";

/// Where a first start without a terminal leaves the owner's one-time
/// password (in the data directory, mode 0600).
pub const FIRST_OWNER_PASSWORD_FILE: &str = "initial-owner-password";

/// Characters of generated passwords: no look-alikes (0/o, 1/l/i).
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
/// Groups × characters of a generated password: 20 characters of a
/// 31-letter alphabet, about 99 bits.
const GROUPS: usize = 4;
const GROUP_LEN: usize = 5;

/// Passwords an operator chooses: at least this long (NIST SP 800-63B's
/// floor is 8; a console that runs a fleet asks for more), at most this long
/// (argon2 takes any length, the bound keeps requests small).
pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("unknown role {0:?} (roles: {roles})", roles = role_names())]
    UnknownRole(String),
}

/// Every role name, for messages.
pub fn role_names() -> String {
    Role::ALL
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn parse_role(name: &str) -> Result<Role, AccountError> {
    Role::parse(name).ok_or_else(|| AccountError::UnknownRole(name.to_owned()))
}

/// An argon2id PHC string for `password`, with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// Whether `password` matches `phc`. A malformed stored hash matches nothing.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A random password to hand to someone once, e.g. `k7mqz-2vbtx-9dwpa-hr4ne`.
pub fn one_time_password() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let groups: Vec<String> = (0..GROUPS)
        .map(|_| {
            (0..GROUP_LEN)
                .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
                .collect()
        })
        .collect();
    groups.join("-")
}

/// A new account with a one-time password: the record and the password to
/// hand over (once).
pub fn new_account(
    name: &str,
    role: Role,
    now_ms: u64,
) -> Result<(UserRecord, String), AccountError> {
    let password = one_time_password();
    let record = UserRecord {
        name: name.to_owned(),
        role,
        password_phc: hash_password(&password)?,
        must_change_password: true,
        disabled: false,
        created_ms: now_ms,
        password_changed_ms: now_ms,
        sessions_valid_after_ms: now_ms,
    };
    Ok((record, password))
}

/// At first start (no account at all), create [`FIRST_OWNER`]; its one-time
/// password is returned to be printed once. `None` when accounts exist.
pub fn ensure_first_owner(store: &dyn Store, now_ms: u64) -> Result<Option<String>, AccountError> {
    if !store.users()?.is_empty() {
        return Ok(None);
    }
    let (record, password) = new_account(FIRST_OWNER, Role::Owner, now_ms)?;
    Ok(store.create_first_user(record)?.then_some(password))
}

/// Add an account; returns its one-time password.
pub fn add_user(
    store: &dyn Store,
    name: &str,
    role: Role,
    now_ms: u64,
) -> Result<String, AccountError> {
    let (record, password) = new_account(name, role, now_ms)?;
    store.create_user(record)?;
    Ok(password)
}

/// Give an account a new one-time password (its sessions end).
pub fn reset_password(store: &dyn Store, name: &str, now_ms: u64) -> Result<String, AccountError> {
    let password = one_time_password();
    let phc = hash_password(&password)?;
    store.change_user(
        name,
        UserChange::Password {
            phc,
            must_change: true,
        },
        now_ms,
    )?;
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_to_argon2id_and_verify_only_themselves() {
        let phc = hash_password("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        assert!(verify_password("correct horse battery", &phc));
        assert!(!verify_password("correct horse batterY", &phc));
        assert!(!verify_password("", &phc));
        assert!(!verify_password(
            "correct horse battery",
            "not a phc string"
        ));
        let again = hash_password("correct horse battery").unwrap();
        assert_ne!(phc, again, "each hash has its own salt");
    }

    #[test]
    fn one_time_passwords_are_long_unambiguous_and_different() {
        let a = one_time_password();
        assert_eq!(a.len(), GROUPS * GROUP_LEN + GROUPS - 1);
        assert!(
            a.chars().all(|c| c == '-' || ALPHABET.contains(&(c as u8))),
            "{a}"
        );
        assert!(a.len() - (GROUPS - 1) >= MIN_PASSWORD_CHARS);
        let many: std::collections::HashSet<String> =
            (0..1000).map(|_| one_time_password()).collect();
        assert_eq!(many.len(), 1000);
    }

    #[test]
    fn the_first_owner_is_created_once_with_a_one_time_password() {
        let dir = tempfile::tempdir().unwrap();
        let store = rakkr_store::RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let password = ensure_first_owner(&store, 5).unwrap().expect("created");
        let owner = store.user(FIRST_OWNER).unwrap().unwrap();
        assert_eq!(owner.role, Role::Owner);
        assert!(owner.must_change_password);
        assert!(verify_password(&password, &owner.password_phc));
        assert_eq!(ensure_first_owner(&store, 6).unwrap(), None);

        let bob = add_user(&store, "bob", Role::Viewer, 7).unwrap();
        assert!(verify_password(
            &bob,
            &store.user("bob").unwrap().unwrap().password_phc
        ));
        let e = add_user(&store, "bob", Role::Admin, 8).unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");
        let reset = reset_password(&store, "bob", 9).unwrap();
        let bob_now = store.user("bob").unwrap().unwrap();
        assert!(verify_password(&reset, &bob_now.password_phc));
        assert!(!verify_password(&bob, &bob_now.password_phc));
        assert_eq!(bob_now.sessions_valid_after_ms, 9);
        let e = parse_role("superuser").unwrap_err();
        assert!(e.to_string().contains("owner, admin, operator"), "{e}");
    }
}
