#!/usr/bin/env bash
# Coverage-guided fuzzing of the protocol decoders (fuzz/fuzz_targets/*), on the
# pinned stable toolchain, then a merge of what it found into the kept corpus.
#
# Why this works on stable: cargo-fuzz instruments the code with LLVM's
# SanitizerCoverage through `-Cpasses=sancov-module` and
# `-Cllvm-args=-sanitizer-coverage-*`, which are stable codegen options, and
# links libFuzzer, which the libfuzzer-sys crate builds from C++ source (needs
# a C++ compiler, g++ here). The only nightly-only flag it adds is
# `-Zsanitizer=address` for its default `--sanitizer address`, so this script
# passes `--sanitizer none`: no nightly, no RUSTC_BOOTSTRAP. The protocol crate
# denies unsafe code, so AddressSanitizer adds little and costs speed; to use
# it anyway, FUZZ_SANITIZER=address sets RUSTC_BOOTSTRAP=1 so that the stable
# compiler accepts -Zsanitizer (the ASan runtime ships with rust-std).
#
#   hil-tests/scripts/fuzz.sh [SECONDS=60] [TARGET...]     (default: every target)
#
# Each target runs SECONDS on its kept corpus fuzz/corpus/TARGET, writing new
# inputs to a scratch directory; then the kept corpus and the new inputs are
# merged (libFuzzer -merge=1 -use_counters=0) into a small set that reaches
# every edge the two reached (ignoring hit counts keeps it about a third of the
# size), which replaces fuzz/corpus/TARGET. Commit the changed corpus:
# protocol/tests/fuzz_corpus.rs replays it through the same checks
# (fuzz/checks.rs) on every `cargo test`.
# A failing input stops the script and is kept in fuzz/artifacts/TARGET/;
# reproduce it with `cargo fuzz run --sanitizer none TARGET FILE` and shrink it
# with `cargo fuzz tmin --sanitizer none TARGET FILE` (run in fuzz/).
# Builds go to fuzz/target (git-ignored), never the workspace's target/.
set -euo pipefail

seconds=${1:-60}
shift || true
fuzz=$(cd "$(dirname "$0")/../../fuzz" && pwd)
sanitizer=${FUZZ_SANITIZER:-none}
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi
command -v cargo-fuzz > /dev/null || cargo install --locked cargo-fuzz

cd "$fuzz"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build --sanitizer "$sanitizer"

# Payloads may be up to 64 KiB (MAX_PAYLOAD_BYTES), so the envelope target
# needs longer inputs than libFuzzer's default 4096 bytes to reach the limits
# inside a payload (channels, ids, files). Not longer: checks.rs pads every
# accepted input past the limit itself, and inputs that are only oversized
# would fill the kept corpus with 64 KiB files.
max_len() {
    case $1 in
        envelope) echo 65536 ;;
        *) echo 4096 ;;
    esac
}

for t in "${targets[@]}"; do
    kept=$fuzz/corpus/$t
    new=$fuzz/target/new-corpus/$t
    merged=$fuzz/target/merged-corpus/$t
    log=$fuzz/target/fuzz-$t.log
    rm -rf "$new" "$merged"
    mkdir -p "$kept" "$new" "$merged"
    echo "fuzz.sh: $t for ${seconds}s (log: $log)"
    if ! cargo fuzz run --sanitizer "$sanitizer" "$t" "$new" "$kept" -- \
        -max_total_time="$seconds" -max_len="$(max_len "$t")" -print_final_stats=1 \
        > "$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz.sh: $t failed; the input is in $fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E '^(Done|stat::(number_of_executed_units|average_exec_per_sec|new_units_added))' "$log"
    cargo fuzz run --sanitizer "$sanitizer" "$t" "$merged" "$kept" "$new" -- \
        -merge=1 -use_counters=0 -max_len="$(max_len "$t")" > "$log.merge" 2>&1 ||
        { tail -n 20 "$log.merge"; exit 1; }
    rm -rf "$kept"
    mv "$merged" "$kept"
    echo "fuzz.sh: $t corpus: $(find "$kept" -type f | wc -l) files, $(du -sh --apparent-size "$kept" | cut -f1)"
done
