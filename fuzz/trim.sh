#!/usr/bin/env bash
# Shrinks each target's committed corpus (fuzz/corpus/<target>/) after fuzzing: a set-cover
# merge keeps the fewest inputs that still reach all the coverage found, then, if those are
# over the byte budget (default 40000 per target), the smallest of them that fit. `seed-*`
# (written from real encoders) and `crash-*` (inputs that once crashed) files are always kept.
#
#   fuzz/trim.sh [max-bytes-per-target] [target...]      (after fuzz/run.sh has built them)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
budget="${1:-40000}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(zds_message xds_resources hbone_connect local_yaml cni_config plugin_event dns_query)
triple="$(rustc -vV | sed -n 's/^host: //p')"
for t in "${targets[@]}"; do
    dir="corpus/$t"
    tmp="$(mktemp -d)"
    mkdir "$tmp/found" "$tmp/min"
    find "$dir" -type f ! -name 'seed-*' ! -name 'crash-*' -exec mv {} "$tmp/found/" \;
    # Coverage the seeds and crashes already reach is not kept twice.
    "target/$triple/release/$t" -set_cover_merge=1 "$tmp/min" "$dir" "$tmp/found" >"$tmp/log" 2>&1 || {
        cat "$tmp/log" >&2; exit 1; }
    used=$(find "$dir" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
    # Smallest first, while the budget lasts (the list is written out first: a pipe into a
    # loop that stops early would fail the script with SIGPIPE).
    find "$tmp/min" -type f -printf '%s %p\n' | sort -n >"$tmp/by-size"
    while read -r size path; do
        [ $((used + size)) -le "$budget" ] || break
        used=$((used + size))
        mv "$path" "$dir/"
    done <"$tmp/by-size"
    rm -rf "$tmp"
    printf '%-14s %4s files %7s bytes\n' "$t" "$(find "$dir" -type f | wc -l)" \
        "$(find "$dir" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')"
done
