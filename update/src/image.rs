//! Image signatures: the minisign signature of an image and the manifest its trusted
//! comment carries.

use base64::Engine as _;

use crate::UpdateError;

/// Longest version string accepted (`1.4.0`, `2026.11.3-rc1+g1a2b3c`).
const MAX_VERSION: usize = 64;
/// Longest target name accepted (`x86_64`, `aarch64-pi4`).
const MAX_TARGET: usize = 32;
/// A signature file is four short lines; anything much larger is not one.
pub const MAX_SIGNATURE_BYTES: usize = 4096;

/// The key an appliance trusts for images: the minisign public key, as the
/// base64 line of a `minisign.pub` file (`RW…`) or the whole file.
#[derive(Clone, Debug)]
pub struct PublicKey {
    key: minisign_verify::PublicKey,
    id: String,
}

impl PublicKey {
    /// Reads the base64 key line, or a whole `minisign.pub` file (comment line first).
    pub fn parse(text: &str) -> Result<Self, UpdateError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| UpdateError::PublicKey("no key line".into()))?;
        let key = minisign_verify::PublicKey::from_base64(line)
            .map_err(|e| UpdateError::PublicKey(e.to_string()))?;
        let (_, id) = algorithm_and_key_id(line)
            .ok_or_else(|| UpdateError::PublicKey("not base64".into()))?;
        Ok(PublicKey { key, id })
    }

    /// The key id as the minisign CLI prints it (16 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Whether `target` is a valid appliance type name: letters, digits, `-` and `_`, 1-32.
pub fn is_valid_target(target: &str) -> bool {
    is_name(target, MAX_TARGET, "-_")
}

fn is_name(s: &str, max: usize, extra: &str) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

/// What the signed trusted comment says about an image:
/// `rakkr-image version=V target=T size=N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageManifest {
    /// Release version of the image (letters, digits, `.`, `-`, `+`, `_`).
    pub version: String,
    /// The appliance type the image is built for; an appliance refuses any other.
    pub target: String,
    /// Exact length of the image in bytes.
    pub size: u64,
}

impl ImageManifest {
    const PREFIX: &'static str = "rakkr-image";

    /// Parses a trusted comment. Every key is required and no other is accepted: a key
    /// this build does not know may be a constraint it cannot honour.
    pub fn parse(comment: &str) -> Result<Self, UpdateError> {
        let bad = |why: String| UpdateError::Manifest(why);
        let mut words = comment.split_ascii_whitespace();
        if words.next() != Some(Self::PREFIX) {
            return Err(bad(format!(
                "does not start with `{}`: {comment:?}",
                Self::PREFIX
            )));
        }
        let (mut version, mut target, mut size) = (None, None, None);
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| bad(format!("`{word}` is not key=value")))?;
            let slot = match key {
                "version" => &mut version,
                "target" => &mut target,
                "size" => &mut size,
                _ => return Err(bad(format!("unknown key `{key}`"))),
            };
            if slot.replace(value).is_some() {
                return Err(bad(format!("`{key}` given twice")));
            }
        }
        let version = version.ok_or_else(|| bad("no version".into()))?;
        let target = target.ok_or_else(|| bad("no target".into()))?;
        let size = size.ok_or_else(|| bad("no size".into()))?;
        if !is_name(version, MAX_VERSION, ".-+_") {
            return Err(bad(format!("bad version {version:?}")));
        }
        if !is_valid_target(target) {
            return Err(bad(format!("bad target {target:?}")));
        }
        let size: u64 = size
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| bad(format!("bad size {size:?}")))?;
        Ok(ImageManifest {
            version: version.to_owned(),
            target: target.to_owned(),
            size,
        })
    }

    /// The trusted comment to sign an image with (`minisign -t`).
    pub fn trusted_comment(&self) -> String {
        format!(
            "{} version={} target={} size={}",
            Self::PREFIX,
            self.version,
            self.target,
            self.size
        )
    }
}

/// A parsed image signature. The manifest is only as good as the signature: it is
/// authenticated when the image's bytes are verified, not before.
#[derive(Clone)]
pub struct ImageSignature {
    signature: minisign_verify::Signature,
    key_id: String,
    manifest: ImageManifest,
}

impl std::fmt::Debug for ImageSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSignature")
            .field("key_id", &self.key_id)
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

impl ImageSignature {
    /// Parses the text of a `.minisig` file.
    pub fn parse(text: &str) -> Result<Self, UpdateError> {
        if text.len() > MAX_SIGNATURE_BYTES {
            return Err(UpdateError::Signature(format!(
                "{} bytes: a signature file is at most {MAX_SIGNATURE_BYTES}",
                text.len()
            )));
        }
        let signature = minisign_verify::Signature::decode(text)
            .map_err(|e| UpdateError::Signature(e.to_string()))?;
        let (algorithm, key_id) = text
            .lines()
            .nth(1)
            .and_then(|l| algorithm_and_key_id(l.trim()))
            .ok_or_else(|| UpdateError::Signature("no signature line".into()))?;
        if &algorithm != b"ED" {
            // Legacy "Ed" signatures sign the whole message, not its hash: they cannot
            // be checked while streaming a multi-gigabyte image.
            return Err(UpdateError::Signature(
                "legacy (not prehashed) signature: sign with minisign 0.8 or later without -l"
                    .into(),
            ));
        }
        let manifest = ImageManifest::parse(signature.trusted_comment())?;
        Ok(ImageSignature {
            signature,
            key_id,
            manifest,
        })
    }

    /// What the trusted comment claims (checked only once the image is verified).
    pub fn manifest(&self) -> &ImageManifest {
        &self.manifest
    }

    /// Id of the key that made the signature.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Starts a verification of the image's bytes against this signature and `key`.
    pub(crate) fn verifier<'a>(
        &'a self,
        key: &'a PublicKey,
    ) -> Result<minisign_verify::StreamVerifier<'a>, UpdateError> {
        if key.id != self.key_id {
            return Err(UpdateError::WrongKey {
                trusted: key.id.clone(),
                found: self.key_id.clone(),
            });
        }
        key.key
            .verify_stream(&self.signature)
            .map_err(|e| UpdateError::Signature(e.to_string()))
    }
}

/// The algorithm (2 bytes) and key id (the next 8, printed as the CLI does: a
/// little-endian u64 in upper-case hex) at the start of a minisign key or signature line.
fn algorithm_and_key_id(line: &str) -> Option<([u8; 2], String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line)
        .ok()?;
    let algorithm: [u8; 2] = bytes.get(..2)?.try_into().ok()?;
    let id: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
    Some((algorithm, format!("{:016X}", u64::from_le_bytes(id))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_refuses_what_it_does_not_know() {
        let m = ImageManifest {
            version: "1.4.0-rc1+g1a2b".into(),
            target: "x86_64".into(),
            size: 123_456,
        };
        assert_eq!(ImageManifest::parse(&m.trusted_comment()).unwrap(), m);
        for bad in [
            "",
            "timestamp:1555779966\tfile:test",
            "rakkr-image version=1 target=x86_64",
            "rakkr-image version=1 target=x86_64 size=0",
            "rakkr-image version=1 target=x86_64 size=-3",
            "rakkr-image version=1 target=x86_64 size=10 size=10",
            "rakkr-image version=1 target=x86_64 size=10 min_from=1.0",
            "rakkr-image version=1/../2 target=x86_64 size=10",
            "rakkr-image version=1 target=x86 64 size=10",
            "rakkr-image version= target=x86_64 size=10",
        ] {
            assert!(
                matches!(ImageManifest::parse(bad), Err(UpdateError::Manifest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn key_ids_read_as_the_cli_prints_them() {
        let key = PublicKey::parse(
            "untrusted comment: minisign public key 1CA0D563FABEE67A\n\
             RWR65r76Y9WgHPHfaA7SfiQXZVyv60hVaUEAJI8+HI/+SOxBnqZed9+W\n",
        )
        .unwrap();
        assert_eq!(key.id(), "1CA0D563FABEE67A");
        assert!(PublicKey::parse("RWRnot-a-key").is_err());
        assert!(PublicKey::parse("").is_err());
    }

    #[test]
    fn signatures_too_large_or_legacy_are_refused() {
        let big = "x".repeat(MAX_SIGNATURE_BYTES + 1);
        assert!(matches!(
            ImageSignature::parse(&big),
            Err(UpdateError::Signature(_))
        ));
        // The minisign crate's own legacy test vector.
        let legacy = "untrusted comment: signature from minisign secret key\n\
            RWQf6LRCGA9i59SLOFxz6NxvASXDJeRtuZykwQepbDEGt87ig1BNpWaVWuNrm73YiIiJbq71Wi+dP9eKL8OC351vwIasSSbXxwA=\n\
            trusted comment: timestamp:1555779966\tfile:test\n\
            QtKMXWyYcwdpZAlPF7tE2ENJkRd1ujvKjlj1m9RtHTBnZPa5WKU5uWRs5GoP5M/VqE81QFuMKI5k/SfNQUaOAA==\n";
        let err = ImageSignature::parse(legacy).unwrap_err();
        assert!(err.to_string().contains("legacy"), "{err}");
    }
}
