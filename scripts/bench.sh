#!/usr/bin/env bash
# Runs blenderdist's benchmarks and prints a table (benchmark, measured, baseline, ratio, goal, met?); writes the same
# table, the exact command, the date and the machine into docs/BENCHMARKS.md (between the bench:results markers).
#
#   scripts/bench.sh [--quick] [--volunteers N] [--frames N] [--frame-ms N] [--peers N] [--verify F] [--limit SECONDS]
#                    [overhead] [scaling] [dispatch] [blob] [memory] [project] [stalls] [pnet] [distribution]
#
# No name runs all nine. --quick uses smaller sizes while developing (its figures are not the ones to record).
# The size options go to the benchmarks that take them (scaling: volunteers, frames, frame-ms; memory: peers,
# frames; stalls: volunteers, frame-ms; distribution: volunteers); --verify F gives the scaling job `verify = F` (spot checks; off otherwise),
# to measure what checks cost; --limit replaces each benchmark's hang guard (for larger sizes).
# Builds once (`cargo build --release`: the binary and the benchmark binary benches/farm.rs) and reuses both.
# Each benchmark has a time limit and stops by itself; temp files go to /var/tmp/blenderdist-bench (BENCH_TMP; the scaling benchmark
# also uses /dev/shm) and are removed.
# Needs Blender on PATH for `overhead` and `project`, root (network namespaces, tc) for `distribution`. See docs/BENCHMARKS.md for what each benchmark measures.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(overhead scaling dispatch blob memory project stalls pnet distribution)
# Hang guards, in seconds; a normal full run of all nine takes about 8 minutes on 2 cores.
declare -A limit=([overhead]=420 [scaling]=240 [dispatch]=90 [blob]=150 [memory]=90 [project]=600 [stalls]=150 [pnet]=150 [distribution]=300)
quick=()
sizes=()
limit_all=""
names=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  arg="${args[i]}"
  case "$arg" in
    --quick) quick=(--quick) ;;
    --volunteers|--frames|--frame-ms|--peers|--limit)
      value="${args[i + 1]:-}"
      [[ "$value" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: $arg needs a positive whole number" >&2; exit 2; }
      if [[ "$arg" == --limit ]]; then limit_all="$value"; else sizes+=("$arg" "$value"); fi
      i=$((i + 1)) ;;
    --verify)
      value="${args[i + 1]:-}"
      [[ "$value" =~ ^(0(\.[0-9]+)?|1(\.0+)?)$ ]] || { echo "bench.sh: --verify needs a fraction from 0 to 1" >&2; exit 2; }
      sizes+=("$arg" "$value")
      i=$((i + 1)) ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "bench.sh: unknown option $arg" >&2; exit 2 ;;
    *)
      [[ -n "${limit[$arg]:-}" ]] || { echo "bench.sh: unknown benchmark $arg (known: ${all[*]})" >&2; exit 2; }
      names+=("$arg") ;;
  esac
done
[[ ${#names[@]} -gt 0 ]] || names=("${all[@]}")
command_line="scripts/bench.sh${*:+ $*}"

# Not under target/, where cargo creates and removes thousands of files (see benches/farm/scaling.rs, RunFolders).
tmp="${BENCH_TMP:-/var/tmp/blenderdist-bench}"
mkdir -p "$tmp"
run_dir="$(mktemp -d "$tmp/run.XXXXXX")"
trap 'rm -rf "$run_dir"' EXIT

echo "== building (cargo build --release --locked --bin blenderdist --bench farm)" >&2
cargo build --release --locked --bin blenderdist --bench farm --message-format=json-render-diagnostics \
  >"$run_dir/build.json"
bin="$PWD/target/release/blenderdist"
bench="$(grep '"kind":\["bench"\]' "$run_dir/build.json" | grep '"name":"farm"' |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)"
[[ -x "$bench" ]] || { echo "bench.sh: could not find the built benchmark binary" >&2; exit 1; }

# Busy CPU time of the whole machine in clock ticks (user, nice, system, irq, softirq, steal; guest time is inside
# user), and the total with idle and iowait.
jiffies() { awk 'NR == 1 { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6 }' /proc/stat; }
# Share of the CPUs busy over one second while this script only sleeps: other work disturbs the figures.
cpu_busy() {
  local b0 t0 b1 t1
  read -r b0 t0 < <(jiffies); sleep 1; read -r b1 t1 < <(jiffies)
  awk -v b="$((b1 - b0))" -v t="$((t1 - t0))" 'BEGIN { printf "%.0f%%", (t > 0 ? 100 * b / t : 0) }'
}
# Sets $children_cpu to the CPU seconds this shell's finished children (the benchmark binary, with the Blenders and
# hosts it waited for) have used. `times` must run in this shell: a $(...) subshell has no finished children.
children_cpu() {
  times >"$run_dir/times"
  children_cpu="$(awk 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); s += p[1] * 60 + p[2] }
    print s }' "$run_dir/times")"
}
busy_start="$(cpu_busy)"
if [[ "${busy_start%\%}" -gt 10 ]]; then
  echo "bench.sh: warning: the CPUs are $busy_start busy with other work; the figures will be disturbed" >&2
fi
date_utc="$(date -u '+%Y-%m-%d %H:%M UTC')"
rows="$run_dir/rows.tsv"
: >"$rows"
status=0
for name in "${names[@]}"; do
  before="$(grep -c '^ROW' "$rows" || true)"
  children_cpu; ours_before="$children_cpu"; read -r busy_before _ < <(jiffies); wall_before="$(date +%s.%N)"
  if ! timeout --kill-after=15 "${limit_all:-${limit[$name]}}" "$bench" "$name" "${quick[@]}" "${sizes[@]}" \
      --bin "$bin" --tmp "$tmp" >>"$run_dir/out.tsv"; then
    status=1
  fi
  children_cpu; read -r busy_after _ < <(jiffies)
  unwaited="$(awk -F'\t' '$1 == "CPU" { s += $2 } END { print s + 0 }' "$run_dir/out.tsv")"
  other="$(awk -v b0="$busy_before" -v b1="$busy_after" -v o0="$ours_before" -v o1="$children_cpu" -v u="$unwaited" \
    -v w0="$wall_before" -v w1="$(date +%s.%N)" -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" \
    'BEGIN { x = ((b1 - b0) / hz - (o1 - o0 + u)) / ((w1 - w0) * n) * 100; printf "%.0f%%", (x < 0 ? 0 : x) }')"
  printf 'NOTE\tOther load during %s: %s of the CPUs (CPU time not charged to the benchmark: other programs, kernel write-back).\n' \
    "$name" "$other" >>"$run_dir/out.tsv"
  grep -E '^(ROW|NOTE)' "$run_dir/out.tsv" >>"$rows" || true
  : >"$run_dir/out.tsv"
  if [[ "$(grep -c '^ROW' "$rows" || true)" == "$before" ]]; then
    printf 'ROW\t%s\tFAILED (no result within %s s)\t-\t-\t-\tno\n' "$name" "${limit_all:-${limit[$name]}}" >>"$rows"
  fi
done
busy_end="$(cpu_busy)"

# The table, aligned for the terminal (widths count UTF-8 characters, not bytes).
echo
LC_ALL=C awk -F'\t' '
  function width(s) { gsub(/[\200-\277]/, "", s); return length(s) }
  function cell(s, w) { printf "%s", s; for (k = width(s); k < w + 2; k++) printf " " }
  BEGIN { split("benchmark|measured|baseline|ratio|goal|met?", h, "|"); for (i = 1; i <= 6; i++) w[i] = width(h[i]) }
  $1 == "ROW" { n++; for (i = 1; i <= 6; i++) { c[n, i] = $(i + 1); if (width($(i + 1)) > w[i]) w[i] = width($(i + 1)) } }
  END {
    for (i = 1; i <= 6; i++) cell(h[i], w[i]); printf "\n"
    for (i = 1; i <= 6; i++) { s = ""; for (j = 0; j < w[i]; j++) s = s "-"; cell(s, w[i]) }; printf "\n"
    for (r = 1; r <= n; r++) { for (i = 1; i <= 6; i++) cell(c[r, i], w[i]); printf "\n" }
  }' "$rows"
echo
grep '^NOTE' "$rows" | cut -f2- | sed 's/^/- /'

# The same table in docs/BENCHMARKS.md.
mem_gib="$(awk '/^MemTotal/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
blender_version="$(blender --version 2>/dev/null | head -1 || true)"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock build.rs 2>/dev/null)" ]]; then
  commit="$commit, with uncommitted changes in src/ or Cargo files"
fi
region="$run_dir/region.md"
{
  echo "<!-- bench:results:begin: written by scripts/bench.sh; edits between these markers are replaced -->"
  echo "## Latest results"
  echo
  echo "- Command: \`$command_line\`${quick:+ (quick sizes: not the figures to compare)}"
  echo "- Date: $date_utc; commit $commit"
  echo "- Machine: $(nproc) cores (nproc), ${cpu:-unknown CPU}, $mem_gib GiB memory, ${blender_version:-no Blender}," \
    "$(rustc --version), Linux $(uname -r); temp folders on $(stat -f -c %T "$tmp")"
  echo "- CPUs busy with other work, sampled for 1 s before the first benchmark: $busy_start; after the last: $busy_end"
  echo
  echo "| benchmark | measured | baseline | ratio | goal | met? |"
  echo "|---|---|---|---|---|---|"
  awk -F'\t' '$1 == "ROW" { printf "| %s | %s | %s | %s | %s | %s |\n", $2, $3, $4, $5, $6, $7 }' "$rows"
  echo
  echo "Notes from the same run:"
  echo
  grep '^NOTE' "$rows" | cut -f2- | sed 's/^/- /'
  echo "<!-- bench:results:end -->"
} >"$region"
doc=docs/BENCHMARKS.md
[[ -f "$doc" ]] || printf '# Benchmarks\n\n' >"$doc"
if grep -q '^<!-- bench:results:begin' "$doc"; then
  awk -v region="$region" '
    /^<!-- bench:results:begin/ { while ((getline line < region) > 0) print line; skip = 1; next }
    /^<!-- bench:results:end/ { skip = 0; next }
    !skip { print }' "$doc" >"$run_dir/doc.md"
  cat "$run_dir/doc.md" >"$doc"
else
  { echo; cat "$region"; } >>"$doc"
fi
echo
echo "Wrote the table to $doc."
exit "$status"
