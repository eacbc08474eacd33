#!/usr/bin/env bash
# Fuzzes every decoder of untrusted input (see fuzz/ and docs/SECURITY.md, "Fuzzing") for a bounded time and prints
# one summary line per target: executions, coverage, result.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (default: 60 seconds for each target, all targets)
#
# Run by hand, not by CI (.ci/run and scripts/test.sh never call it): the default run takes about 10 minutes on two
# cores plus the first build. Exits non-zero when any target found a crash, a panic, a failed check, a leak, a
# timeout or an allocation over the limits below; the input that did it is saved under fuzz/artifacts/TARGET/, and
# `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --codegen-units 16 TARGET artifacts/TARGET/crash-...` replays it.
# Logs: fuzz/target/fuzz-logs/TARGET.log.
#
# cargo-fuzz needs nightly-only compiler flags (sanitizer coverage, AddressSanitizer); RUSTC_BOOTSTRAP=1 lets the
# machine's stable toolchain accept them. cargo-fuzz itself is installed from crates.io when missing.
# Each target starts from its seeds (fuzz/corpus/TARGET/seed-*, kept in git) plus whatever earlier runs grew there
# (ignored by git); delete the other files to start afresh.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds == 0)); then
  echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
  exit 2
fi

# Memory bounds: one allocation over malloc_limit_mb, or a process over rss_limit_mb (AddressSanitizer's own
# overhead included), is reported as a finding. No decoder should ever need more than a few MB here.
rss_limit_mb=1024
malloc_limit_mb=512
# A single input that takes longer than this is a finding (a hang, or work out of proportion to the input).
timeout_s=10
# Largest input: the biggest limit a real decoder applies (a work request and a job file are at most 64 KiB).
max_len=65536
# Fewer, larger codegen units build faster on two cores, at a small cost in executions per second.
build=(cargo fuzz build --codegen-units 16)

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz from crates.io"
  cargo install cargo-fuzz --locked
fi

mapfile -t all < <(cargo fuzz list)
targets=("${@:-${all[@]}}")
for t in "${targets[@]}"; do
  if ! printf '%s\n' "${all[@]}" | grep -qx -- "$t"; then
    echo "unknown target $t; the targets are: ${all[*]}" >&2
    exit 2
  fi
done

echo "building ${#targets[@]} fuzz targets"
"${build[@]}" >/dev/null
# The binaries are run directly, not through `cargo fuzz run`, so every target tests this one build (the crate may
# be edited meanwhile) and nothing is rebuilt between targets.
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"

logs="target/fuzz-logs"
mkdir -p "$logs" artifacts
failed=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="$logs/$t.log"
  echo "fuzzing $t for ${seconds}s (log: fuzz/$log)"
  set +e
  "$bin/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" \
    -max_total_time="$seconds" -rss_limit_mb="$rss_limit_mb" -malloc_limit_mb="$malloc_limit_mb" \
    -timeout="$timeout_s" -max_len="$max_len" -dict=utf8.dict -print_final_stats=1 >"$log" 2>&1
  status=$?
  set -e
  # blend_file's scratch folder (one per fuzzing process; it cannot remove it itself when libFuzzer exits).
  rm -rf /dev/shm/blenderdist-fuzz-* "${TMPDIR:-/tmp}"/blenderdist-fuzz-*
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -oE '(DONE|#[0-9]+).* cov: [0-9]+' "$log" | grep -oE 'cov: [0-9]+' | tail -1 | grep -o '[0-9]*')
  units=$(find "corpus/$t" -type f | wc -l)
  if ((status == 0)); then
    result="ok"
  else
    failed=1
    artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | sed 's/Test unit written to //')
    what=$(grep -oE 'ERROR: libFuzzer: [a-z-]+|ERROR: AddressSanitizer: [a-z-]+|panicked at [^ ]+' "$log" | head -1)
    result="FAILED (${what:-exit $status}) ${artifact:+input: fuzz/$artifact}"
  fi
  summary+=("$(printf '%-14s runs %-10s cov %-6s corpus %-5s %s' "$t" "${runs:-?}" "${cov:-?}" "$units" "$result")")
done

echo
echo "fuzz summary ($(date -u +%Y-%m-%d), ${seconds}s per target, rss ${rss_limit_mb} MB, malloc ${malloc_limit_mb} MB):"
printf '%s\n' "${summary[@]}"
exit "$failed"
