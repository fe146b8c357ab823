#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on the stable toolchain and
# runs each for a given time, one after the other, printing executions and crashes per target.
#
#   fuzz/run.sh [seconds-per-target] [target...]     (default: 60 s, every target)
#
# The flags are the ones cargo-fuzz passes with `--sanitizer none`: SanitizerCoverage's inline
# 8-bit counters, PC table and comparison tracing (all stable `-C` options), `--cfg fuzzing`,
# and debug assertions with overflow checks. `--target` keeps them off build scripts and proc
# macros. No AddressSanitizer: that needs nightly (-Zsanitizer), and the code under test is
# safe Rust, where a bug shows as a panic, which libFuzzer reports as a crash.
#
# Each run starts from fuzz/corpus/<target>/ (the corpus the tests replay) and collects new
# inputs in fuzz/work/<target>/; afterwards only those that add coverage are merged into
# fuzz/corpus/<target>/ (`-merge=1`), which keeps the committed corpus small. A crashing
# input is written to fuzz/artifacts/<target>/. Logs: fuzz/logs/<target>.log.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
seconds="${1:-60}"
shift || true
all=(zds_message xds_resources hbone_connect local_yaml cni_config plugin_event dns_query)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

triple="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="${RUSTFLAGS:-} -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
cargo build --release --target "$triple" "${bins[@]}"

mkdir -p logs
status=0
printf '%-14s %12s %8s %8s %s\n' target executions crashes seconds corpus
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" "work/$t"
    log="logs/$t.log"
    started=$(date +%s)
    # -max_total_time ends the run; -timeout makes a hang (one input > 10 s) a crash too.
    # libFuzzer writes new inputs to the first directory and only reads the others.
    set +e
    "target/$triple/release/$t" "work/$t" "corpus/$t" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    took=$(( $(date +%s) - started ))
    "target/$triple/release/$t" -merge=1 "corpus/$t" "work/$t" >"logs/$t.merge.log" 2>&1 || true
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    # Without final stats (the run died), take the last status line's count.
    [ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
    crashes=$(find "artifacts/$t" -type f | wc -l)
    files=$(find "corpus/$t" -type f | wc -l)
    printf '%-14s %12s %8s %8s %s files\n' "$t" "${execs:-?}" "$crashes" "$took" "$files"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        status=1
        grep -m1 -A3 -E "panicked|ERROR: libFuzzer|deadly signal" "$log" || true
    fi
done
exit $status
