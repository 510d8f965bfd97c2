//! Hashing of secrets and certificates, shared by agent, server and store:
//! secrets are stored as their SHA-256, certificates pinned by it.

/// SHA-256 of `bytes`, lower-case hex: how secrets are stored and how
/// certificates are pinned everywhere in Rakkr.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// `digest` as lower-case hex, the form every SHA-256 takes in Rakkr.
pub fn hex(digest: &[u8]) -> String {
    use std::fmt::Write as _;
    digest
        .iter()
        .fold(String::with_capacity(2 * digest.len()), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Compare two hashes without an early exit that would time them.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_lower_case_hex_and_compare_exactly() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(constant_time_eq("ab", "ab"));
        assert!(!constant_time_eq("ab", "ac"));
        assert!(!constant_time_eq("ab", "abc"));
    }
}
