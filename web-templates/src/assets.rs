//! Embedded static assets.
//!
//! URL scheme: `/static/{stem}.{hash}.{ext}`, where `hash` is the first 16 hex
//! digits of the SHA-256 of the bytes. A URL therefore names exactly one content
//! and may be cached forever (`immutable`); a new build with changed bytes gets
//! a new URL, so browsers never see a stale mix.

use std::sync::LazyLock;

use sha2::{Digest, Sha256};

/// The htmx release embedded in this build (npm package `htmx.org`).
pub const HTMX_VERSION: &str = "2.0.11";
/// SHA-256 of `dist/htmx.min.js` from that release, as pinned in `assets/vendor/htmx.toml`.
pub const HTMX_SHA256: &str = "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717";

/// `Cache-Control` for hashed asset URLs.
pub const IMMUTABLE_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// Prefix under which assets are served.
pub const STATIC_PREFIX: &str = "/static/";

#[derive(Debug)]
pub struct Asset {
    /// Name without the hash, e.g. `htmx.min.js`.
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
    /// Full hex SHA-256 of `bytes`.
    pub sha256: String,
    /// `/static/{stem}.{hash16}.{ext}`
    pub url: String,
}

impl Asset {
    fn new(name: &'static str, content_type: &'static str, bytes: &'static [u8]) -> Asset {
        let sha256 = hex(&Sha256::digest(bytes));
        let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
        let url = format!("{STATIC_PREFIX}{stem}.{}.{ext}", &sha256[..16]);
        Asset {
            name,
            content_type,
            bytes,
            sha256,
            url,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub static HTMX: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "htmx.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/htmx-2.0.11.min.js"),
    )
});

pub static STYLESHEET: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "rakkr.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/rakkr.css"),
    )
});

/// Every embedded asset.
pub fn all() -> [&'static Asset; 2] {
    [&HTMX, &STYLESHEET]
}

/// The asset served at `path` (the full request path, e.g. `/static/rakkr.0123….css`).
pub fn lookup(path: &str) -> Option<&'static Asset> {
    all().into_iter().find(|a| a.url == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_htmx_matches_the_pinned_hash() {
        assert_eq!(
            HTMX.sha256, HTMX_SHA256,
            "embedded htmx differs from the pin"
        );
        let pin = include_str!("../assets/vendor/htmx.toml");
        assert!(pin.contains(&format!("version = \"{HTMX_VERSION}\"")));
        assert!(pin.contains(&format!("sha256 = \"{HTMX_SHA256}\"")));
        assert!(pin.contains(&format!("file = \"htmx-{HTMX_VERSION}.min.js\"")));
        assert!(HTMX.bytes.starts_with(b"var htmx=function()"));
    }

    #[test]
    fn urls_carry_the_content_hash_and_resolve() {
        for a in all() {
            assert!(a.url.contains(&a.sha256[..16]), "{}", a.url);
            assert!(std::ptr::eq(lookup(&a.url).unwrap(), a));
        }
        assert_eq!(
            HTMX.url,
            format!("/static/htmx.min.{}.js", &HTMX_SHA256[..16])
        );
        assert!(lookup("/static/htmx.min.js").is_none());
        assert!(lookup("/static/../Cargo.toml").is_none());
    }
}
