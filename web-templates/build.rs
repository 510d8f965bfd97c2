//! Reads the htmx pin (`assets/vendor/htmx.toml`) so the pinned version, hash and
//! file name exist in exactly one place. Generates `htmx_pin.rs` with constants.

use std::path::Path;

fn main() {
    let pin_path = Path::new("assets/vendor/htmx.toml");
    println!("cargo::rerun-if-changed={}", pin_path.display());
    let text = std::fs::read_to_string(pin_path).expect("read assets/vendor/htmx.toml");
    let field = |key: &str| -> String {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("htmx.toml has no `{key}`"))
    };
    let (version, sha256, file) = (field("version"), field("sha256"), field("file"));
    assert!(
        sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()),
        "htmx.toml sha256 is not 64 hex digits"
    );
    let file_path = Path::new("assets/vendor").join(&file);
    assert!(
        file_path.exists(),
        "htmx.toml names {file}, which is missing"
    );
    let abs = std::fs::canonicalize(&file_path).expect("canonical htmx path");
    println!("cargo::rerun-if-changed={}", file_path.display());
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("htmx_pin.rs");
    std::fs::write(
        out,
        format!(
            "/// The htmx release embedded in this build (npm package `htmx.org`).\n\
             pub const HTMX_VERSION: &str = {version:?};\n\
             /// SHA-256 of the embedded `htmx.min.js`, as pinned in `assets/vendor/htmx.toml`.\n\
             pub const HTMX_SHA256: &str = {sha256:?};\n\
             const HTMX_BYTES: &[u8] = include_bytes!({abs:?});\n"
        ),
    )
    .expect("write htmx_pin.rs");
}
