#!/usr/bin/env bash
# A real demo render on this machine: a host and two volunteers (each with its own cache, no shared folder),
# a scene generated with Blender's Python, frames written to disk. Prints where they are.
#   scripts/demo.sh [FRAMES]    (default 12)
set -euo pipefail
cd "$(dirname "$0")/.."
frames="${1:-12}"
scripts/install-deps.sh
cargo build --release --locked
bin="$PWD/target/release/blenderdist"

demo="$(mktemp -d "${TMPDIR:-/tmp}/blenderdist-demo.XXXXXX")"
mkdir -p "$demo/jobs" "$demo/renders"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== generating a $frames-frame Cycles scene"
blender -b --factory-startup --python-exit-code 1 --python scripts/make_scene.py -- \
  "$demo/jobs/demo.blend" --frames "$frames" --res 320x240 --samples 16 >"$demo/make_scene.log" 2>&1

echo "== starting the host"
"$bin" host "$demo/jobs" "$demo/renders" --listen 127.0.0.1:0 --no-mdns --http 127.0.0.1:0 \
  >"$demo/host.out" 2>"$demo/host.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^ *blenderdist join ' "$demo/host.out" 2>/dev/null && break; sleep 0.1; done
addr="$(sed -n 's/^ *blenderdist join //p' "$demo/host.out" | head -1)"
[ -n "$addr" ] || { echo "the host did not start; see $demo/host.log"; exit 1; }
echo "   host at $addr"
for _ in $(seq 50); do grep -q '^Dashboard: ' "$demo/host.out" 2>/dev/null && break; sleep 0.1; done
echo "   dashboard: $(sed -n 's/^Dashboard: //p' "$demo/host.out" | head -1)"

echo "== starting two volunteers"
for v in 1 2; do
  "$bin" join "$addr" --no-mdns --threads 1 --name "volunteer-$v" --cache-dir "$demo/volunteer$v" \
    2>"$demo/volunteer$v.log" &
  pids+=($!)
done

printf 'demo.blend\n1\n%s\n' "$frames" >"$demo/jobs/.demo.tmp" && mv "$demo/jobs/.demo.tmp" "$demo/jobs/demo.job"
echo "== job written: $demo/jobs/demo.job; rendering"
start=$(date +%s)
while [ "$(find "$demo/renders/demo" -name '*.png' 2>/dev/null | wc -l)" -lt "$frames" ]; do
  if [ $(( $(date +%s) - start )) -gt 900 ]; then echo "gave up after 15 minutes; see $demo/*.log"; exit 1; fi
  sleep 1
done
echo "== done in $(( $(date +%s) - start )) s. The host's status (blenderdist status $addr):"
"$bin" status "$addr" || true
echo "== frames:"
ls -1 "$demo/renders/demo/"* 
echo "Job log: $demo/jobs/demo.log"
echo "Host and volunteer logs: $demo/*.log"
