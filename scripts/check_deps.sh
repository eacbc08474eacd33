#!/usr/bin/env bash
# Manual check of the dependency tracer: builds the test project in DIR with scripts/make_project.py, runs
# src/host/deps.py on its main .blend exactly as the host does, and prints the JSON it wrote.
#
#   scripts/check_deps.sh DIR [KIND]     KIND: all (default), textures, library, caches, font, ies, missing,
#                                        sequencer, volume
#
# Timings and Blender's own chatter go to stderr; stdout is the JSON alone. BLENDER overrides the binary.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 DIR [KIND]" >&2
    exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
blender="${BLENDER:-blender}"
dir="$1"
kind="${2:-all}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

t0=$(date +%s.%N)
gen_log="$(mktemp)"
out="$(mktemp -d)"
trap 'rm -rf "$gen_log" "$out"' EXIT
if ! "$blender" -b --factory-startup --python-exit-code 1 --python "$root/scripts/make_project.py" \
        -- "$dir" --kind "$kind" >"$gen_log" 2>&1; then
    cat "$gen_log" >&2
    echo "check_deps: make_project.py failed" >&2
    exit 1
fi
main="$(sed -n 's/^MAIN: //p' "$gen_log" | tail -n 1)"
grep -E '^make_project' "$gen_log" >&2 || true
t1=$(date +%s.%N)

if ! "$blender" -b --factory-startup --disable-autoexec "$main" --python-exit-code 1 \
        --python "$root/src/host/deps.py" -- --out "$out/deps.json" >"$out/trace.log" 2>&1; then
    cat "$out/trace.log" >&2
    echo "check_deps: deps.py failed" >&2
    exit 1
fi
grep -E '^deps.py' "$out/trace.log" >&2 || true
t2=$(date +%s.%N)
awk -v m="$main" -v a="$t0" -v b="$t1" -v c="$t2" \
    'BEGIN { printf "check_deps: main %s; generation %.2f s, tracer %.2f s\n", m, b - a, c - b }' >&2
cat "$out/deps.json"
