#!/usr/bin/env bash
# Soak: CHANNELS at RATE Hz / 24-bit (synthetic white noise, paced in real time)
# into takes of 8 channels, FLAC level 5, segmented every SEGMENT seconds, for
# SECONDS. Every finished segment is checked (length, no gap) and deleted, so
# the disk holds only a few segments at a time. Prints one line per take-segment
# problem and a summary; exits non-zero if any segment is short or has a gap.
#
#   cargo build --release -p rakkr-agent
#   hil-tests/scripts/soak.sh [SECONDS=600] [CHANNELS=256] [RATE=96000] [SEGMENT=30]
set -euo pipefail
seconds=${1:-600}; channels=${2:-256}; rate=${3:-96000}; segment=${4:-30}
agent=${RAKKR_BIN_DIR:-target/release}/rakkr-agent
dir=$(mktemp -d /var/tmp/rakkr-soak.XXXXXX)
trap 'rm -rf "$dir"' EXIT
also=()
for g in $(seq 1 $((channels / 8 - 1))); do
    s=$((g * 8 + 1)); also+=(--also "$dir/g$g.flac=$(seq -s, $s $((s + 7)))")
done
/usr/bin/time -f "agent: %M KiB max RSS, %U+%S CPU-s, %e s wall" -o "$dir/time.txt" \
    "$agent" record --device synthetic:noise --channels "$channels" --rate "$rate" \
    --duration "$seconds" --segment "$segment" --out "$dir/g0.flac" --map "$(seq -s, 1 8)" \
    "${also[@]}" > /dev/null 2> "$dir/agent.err" &
pid=$!
checked=0; bad=0; frames_total=0
check() {
    for f in "$dir"/*.flac; do
        [ -e "$f" ] || continue
        frames=$(metaflac --show-tag=RAKKR_FRAMES "$f" | cut -d= -f2)
        gaps=$(metaflac --show-tag=RAKKR_GAPS "$f" | cut -d= -f2)
        if [ -n "$gaps" ] || { [ "$frames" -ne $((segment * rate)) ] && [ "$1" = running ]; }; then
            echo "problem: $(basename "$f") frames=$frames gaps=$gaps"; bad=$((bad + 1))
        fi
        frames_total=$((frames_total + frames)); checked=$((checked + 1)); rm -f "$f"
    done
}
while kill -0 $pid 2> /dev/null; do check running; sleep 5; done
wait $pid || { echo "agent failed:"; cat "$dir/agent.err"; exit 1; }
check finished
echo "segments checked: $checked; problems: $bad; frames per take: $((frames_total / (channels / 8))) (expected $((seconds * rate)))"
cat "$dir/time.txt"
[ "$bad" -eq 0 ] && [ $((frames_total / (channels / 8))) -eq $((seconds * rate)) ]
