#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each (default 600), one after
# another, one libFuzzer process each, under `nice -n 10`; then prints executions, speed,
# coverage, corpus size and crashes per target.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
#        fuzz/run.sh --merge [TARGET...]   fold the working corpus into fuzz/corpus (cmin)
#
# Needs the `nightly` toolchain (rustup); installs cargo-fuzz from crates.io when missing.
# The committed corpus (fuzz/corpus/TARGET) is read, never written; new inputs go to the
# working corpus build/fuzz/corpus/TARGET, crashes to fuzz/artifacts/TARGET/ and each
# run's log to build/fuzz/TARGET.log.
set -euo pipefail

FUZZ="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$FUZZ")"
WORK="$ROOT/build/fuzz"
TARGETS_ALL=(fuse_request virtio_mmio vhost_user share_spec)
MAX_LEN=4096
# A single allocation above this is a finding: a guest-chosen size reached an allocator.
MALLOC_LIMIT_MB=256

MERGE=0
SECONDS_EACH=600
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
if [[ "${1:-}" == "--merge" ]]; then
    MERGE=1
    shift
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    SECONDS_EACH="$1"
    shift
fi
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${TARGETS_ALL[@]}")

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    nice -n 10 cargo install cargo-fuzz
fi

cd "$ROOT"
mkdir -p "$WORK"
fuzz() {
    local sub="$1"
    shift
    nice -n 10 cargo +nightly fuzz "$sub" --fuzz-dir "$FUZZ" "$@"
}

if [[ $MERGE -eq 1 ]]; then
    for t in "${TARGETS[@]}"; do
        mkdir -p "$FUZZ/corpus/$t"
        cp -n "$WORK/corpus/$t"/* "$FUZZ/corpus/$t"/ 2>/dev/null || true
        # A greedy set cover of the edges (not of hit counts): a few hundred small files.
        fuzz cmin "$t" "$FUZZ/corpus/$t" -- -max_len="$MAX_LEN" -set_cover_merge=1 \
            -use_counters=0 -malloc_limit_mb="$MALLOC_LIMIT_MB" 2>&1 | tail -2
        echo "$t: $(ls "$FUZZ/corpus/$t" | wc -l) files in fuzz/corpus/$t"
    done
    exit 0
fi

touch "$WORK/started"
# Seeds: small well-formed sessions, so the fuzzers start deep.
nice -n 10 cargo run -q -p fuzz-targets --example write_seeds -- "$WORK/seeds"
for t in "${TARGETS[@]}"; do fuzz build "$t"; done

for t in "${TARGETS[@]}"; do
    mkdir -p "$WORK/corpus/$t" "$FUZZ/corpus/$t" "$FUZZ/artifacts/$t"
    echo "=== $t: ${SECONDS_EACH}s"
    # A crash ends the run early; the summary below still reports it.
    fuzz run "$t" "$WORK/corpus/$t" "$FUZZ/corpus/$t" "$WORK/seeds/$t" -- \
        -max_total_time="$SECONDS_EACH" -max_len="$MAX_LEN" -timeout=20 \
        -rss_limit_mb=4096 -malloc_limit_mb="$MALLOC_LIMIT_MB" -print_final_stats=1 >"$WORK/$t.log" 2>&1 || true
    grep -E "DONE|ERROR|panicked at" "$WORK/$t.log" | tail -2 || true
done

echo
echo "=== summary (${SECONDS_EACH}s per target)"
printf '%-14s %12s %8s %8s %8s %8s %8s\n' target executions exec/s cov ft corpus crashes
for t in "${TARGETS[@]}"; do
    log="$WORK/$t.log"
    [[ -f "$log" ]] || continue
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
    speed=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log" | tail -1)
    last=$(grep -E "^#[0-9]+" "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corpus=$(ls "$WORK/corpus/$t" | wc -l)
    crashes=$(find "$FUZZ/artifacts/$t" -type f -newer "$WORK/started" 2>/dev/null | wc -l)
    printf '%-14s %12s %8s %8s %8s %8s %8s\n' "$t" "${execs:-?}" "${speed:-?}" \
        "${cov:-?}" "${ft:-?}" "$corpus" "$crashes"
done
