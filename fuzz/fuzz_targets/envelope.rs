//! `Envelope::<T>::decode` for every payload type: the first byte picks the
//! type (`b'0'` + index into `checks::PAYLOADS`), the rest is the payload.
//! The invariants live in `fuzz/checks.rs`, shared with the corpus replay
//! test `protocol/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    let _ = checks::envelope(data);
});
