//! `Topic::parse` on the input as text (lossy UTF-8).
//! The invariants live in `fuzz/checks.rs`, shared with the corpus replay
//! test `protocol/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    let _ = checks::topic(data);
});
