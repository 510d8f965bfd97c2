//! Secrets at rest: destination credentials are kept in the store only
//! sealed (decision 0017).
//!
//! Sealing is AES-256-GCM (ring) under a 32-byte key that lives outside the
//! store: `{data_dir}/secrets.key` by default (made at first need, mode 0600),
//! or the file `[secrets] key_file` names. A fresh random 96-bit nonce per
//! seal. The associated data binds a sealed secret to what it belongs to (a
//! destination's kind and name), so one copied onto another record does not
//! open.
//!
//! Sealed form (text, so it sits in JSON records): `v1.` then standard base64
//! of `nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "v1.";
const KEY_LEN: usize = 32;

/// The longest secret sealed: credentials, not files.
pub const MAX_SECRET_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secrets key {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("a secret is at most {MAX_SECRET_BYTES} bytes")]
    TooLong,
    #[error(
        "a sealed secret does not open with this server's key (another key file, or it was altered)"
    )]
    DoesNotOpen,
    #[error("no randomness for a nonce")]
    Random,
}

/// The key that seals and opens secrets.
pub struct SecretBox {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// The key in `path`, made (32 random bytes, 0600) when the file does not
    /// exist. A file of another size is an error, not replaced: secrets sealed
    /// under it would be lost.
    pub fn open_or_create(path: &Path) -> Result<SecretBox, SecretError> {
        let fail = |detail: String| SecretError::Key {
            path: path.to_owned(),
            detail,
        };
        let random = SystemRandom::new();
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                random.fill(&mut key).map_err(|_| SecretError::Random)?;
                write_private(path, &key).map_err(|e| fail(e.to_string()))?;
                tracing::info!(path = %path.display(), "made the key that seals destination secrets; back it up apart from the data");
                key.to_vec()
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        if bytes.len() != KEY_LEN {
            return Err(fail(format!(
                "is {} bytes, not {KEY_LEN}: not a secrets key",
                bytes.len()
            )));
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| fail("unusable".into()))?;
        Ok(SecretBox {
            key: LessSafeKey::new(key),
            random,
        })
    }

    /// Seal `secret`, bound to `context`.
    pub fn seal(&self, secret: &str, context: &str) -> Result<String, SecretError> {
        if secret.len() > MAX_SECRET_BYTES {
            return Err(SecretError::TooLong);
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut data = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SecretError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// Open what [`SecretBox::seal`] made for the same `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<String, SecretError> {
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .ok_or(SecretError::DoesNotOpen)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretError::DoesNotOpen);
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::DoesNotOpen)?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| SecretError::DoesNotOpen)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::DoesNotOpen)
    }
}

/// Write `bytes` to a new file only its owner may read, durably.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_secret_opens_only_with_its_key_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let secrets = SecretBox::open_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = secrets.seal("wJalrXUtnFEMI/K7MDENG", "s3:archive").unwrap();
        assert!(
            sealed.starts_with("v1.") && !sealed.contains("wJalr"),
            "{sealed}"
        );
        assert_ne!(
            sealed,
            secrets.seal("wJalrXUtnFEMI/K7MDENG", "s3:archive").unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(
            secrets.open(&sealed, "s3:archive").unwrap(),
            "wJalrXUtnFEMI/K7MDENG"
        );
        // The same key file again (a restart) opens it.
        let again = SecretBox::open_or_create(&path).unwrap();
        assert_eq!(
            again.open(&sealed, "s3:archive").unwrap(),
            "wJalrXUtnFEMI/K7MDENG"
        );
        // Not for another destination, not altered, not under another key.
        assert!(matches!(
            secrets.open(&sealed, "s3:other"),
            Err(SecretError::DoesNotOpen)
        ));
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert!(secrets.open(&altered, "s3:archive").is_err());
        let other = SecretBox::open_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.open(&sealed, "s3:archive").is_err());
        assert!(secrets.open("plain text", "s3:archive").is_err());
    }

    #[test]
    fn a_key_file_of_the_wrong_size_is_an_error_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        std::fs::write(&path, b"short").unwrap();
        let e = SecretBox::open_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("is 5 bytes, not 32"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
    }

    #[test]
    fn secrets_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = SecretBox::open_or_create(&dir.path().join("k")).unwrap();
        assert!(matches!(
            secrets.seal(&"x".repeat(MAX_SECRET_BYTES + 1), "c"),
            Err(SecretError::TooLong)
        ));
    }
}
