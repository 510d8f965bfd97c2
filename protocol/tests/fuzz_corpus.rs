//! Replays the kept fuzz corpus (`fuzz/corpus/<target>/`) through the same
//! invariants the cargo-fuzz targets check (`fuzz/checks.rs`), so every input
//! the fuzzer ever found interesting stays a regression test on stable Rust.
//! Grow the corpus with `hil-tests/scripts/fuzz.sh`.

use std::collections::BTreeSet;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[path = "../../fuzz/checks.rs"]
mod checks;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// Runs every file of one target's corpus through its check; returns what
/// the accepted inputs were accepted as. Fails on a missing or empty corpus.
fn replay(target: &str) -> BTreeSet<&'static str> {
    let (_, check) = checks::TARGETS
        .into_iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let dir = corpus_root().join(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the kept corpus {} is missing: {e}", dir.display()));
    let mut replayed = 0;
    let mut accepted = BTreeSet::new();
    let mut failures = Vec::new();
    for entry in entries {
        let path = entry.expect("a readable corpus directory").path();
        if !path.is_file() {
            continue;
        }
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match catch_unwind(AssertUnwindSafe(|| check(&bytes))) {
            Ok(Some(kind)) => {
                accepted.insert(kind);
            }
            Ok(None) => {}
            Err(_) => failures.push(path.display().to_string()),
        }
        replayed += 1;
    }
    assert!(
        replayed > 0,
        "the kept corpus {} is empty: nothing was replayed",
        dir.display()
    );
    assert!(
        failures.is_empty(),
        "{} of {replayed} {target} corpus inputs break an invariant (panic messages above): {failures:#?}",
        failures.len()
    );
    accepted
}

#[test]
fn every_payload_decoder_holds_its_invariants_on_the_corpus() {
    let accepted = replay("envelope");
    let missing: Vec<_> = checks::PAYLOADS
        .into_iter()
        .filter(|kind| !accepted.contains(kind))
        .collect();
    assert!(
        missing.is_empty(),
        "the envelope corpus has no valid message of {missing:?}: the round-trip checks never run for them"
    );
}

#[test]
fn topic_parsing_holds_its_invariants_on_the_corpus() {
    assert!(
        replay("topic").contains("topic"),
        "no topic in the corpus parses"
    );
}

#[test]
fn channel_map_parsing_holds_its_invariants_on_the_corpus() {
    assert!(
        replay("channel_map").contains("channel_map"),
        "no channel map in the corpus parses"
    );
}

#[test]
fn every_corpus_directory_belongs_to_a_target() {
    let known: BTreeSet<&str> = checks::TARGETS.iter().map(|(name, _)| *name).collect();
    let root = corpus_root();
    for entry in fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let name = entry.unwrap().file_name();
        let name = name.to_string_lossy();
        assert!(
            known.contains(name.as_ref()),
            "fuzz/corpus/{name} is replayed by no test; add its check to fuzz/checks.rs"
        );
    }
}
