#!/usr/bin/env bash
# Fuzzes mnema's parsers and decoders with cargo-fuzz (libFuzzer + AddressSanitizer, nightly).
#
#   scripts/fuzz.sh                    every target, 1,000,000 executions each
#   scripts/fuzz.sh --quick            every target, 20,000 executions or 30 s each (the test suite)
#   scripts/fuzz.sh image_decode ...   only these targets
#   scripts/fuzz.sh --runs N ...       N executions each
#   scripts/fuzz.sh --jobs 2 ...       two targets at a time (one core each)
#   scripts/fuzz.sh --sanitizer none   without AddressSanitizer: 2-4x the executions a second, for
#                                      long campaigns of the safe-Rust decoders; panics, timeouts
#                                      and the RSS limit still count (the per-allocation limit
#                                      needs the sanitizer's allocator). Its own build directory.
#
# Targets: image_decode audio_decode note_reader query_parse ct2_reader e5_reader (fuzz/fuzz_targets).
# Each run starts from the seeds in fuzz/corpus/<target> (kept in the repository) plus what
# earlier runs found, kept outside the checkout in $MNEMA_FUZZ_TARGET_DIR/work/<target>/corpus.
# Inputs that crash, time out (> 10 s) or exceed the memory limit (2 GiB RSS, or one allocation
# over 2 GiB) are saved under .../work/<target>/artifacts; reproduce one with
#   $MNEMA_FUZZ_TARGET_DIR/x86_64-unknown-linux-gnu/release/<target> <file>
# (the build without the sanitizer is under $MNEMA_FUZZ_TARGET_DIR/no-sanitizer/).
# Prints one line per target: executions, exec/s, peak RSS, new corpus entries, crashes,
# timeouts, out-of-memory. Exits non-zero if any target crashed, timed out or ran out of memory.
#
# MNEMA_FUZZ_TARGET_DIR  build directory (default ~/.cache/mnema-fuzz-target: the sanitizer
#                        build cannot share the release build's directory)
# MNEMA_MODELS           model directory (the note target loads the e5 tokenizer from it)
set -euo pipefail
cd "$(dirname "$0")/.."
all=(image_decode audio_decode note_reader query_parse ct2_reader e5_reader)
runs=1000000
max_time=0
jobs=1
sanitizer=address
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) runs=20000; max_time=30 ;;
    --runs) runs=$2; shift ;;
    --jobs) jobs=$2; shift
       [[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: --jobs takes a positive number" >&2; exit 2; } ;;
    --sanitizer) sanitizer=$2; shift
       case "$sanitizer" in address|none) ;; *) echo "fuzz: --sanitizer is address or none" >&2; exit 2 ;; esac ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    -*) echo "fuzz: unknown option $1" >&2; exit 2 ;;
    *) printf '%s\n' "${all[@]}" | grep -qx "$1" || { echo "fuzz: unknown target $1 (targets: ${all[*]})" >&2; exit 2; }
       targets+=("$1") ;;
  esac
  shift
done
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

rustup toolchain list | grep -q '^nightly' || { echo "fuzz: the nightly toolchain is missing: run scripts/setup.sh" >&2; exit 1; }
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz is missing: run scripts/setup.sh" >&2; exit 1; }

export CARGO_TARGET_DIR=${MNEMA_FUZZ_TARGET_DIR:-$HOME/.cache/mnema-fuzz-target}
# Corpora and artifacts are shared by both builds.
workroot=$CARGO_TARGET_DIR/work
[ "$sanitizer" = none ] && CARGO_TARGET_DIR=$CARGO_TARGET_DIR/no-sanitizer
# 16 codegen units: a shorter first build for slightly slower targets.
t0=$(date +%s)
one=(); [ ${#targets[@]} -eq 1 ] && one=("${targets[0]}")
blog=$CARGO_TARGET_DIR/fuzz-build.log
mkdir -p "$CARGO_TARGET_DIR"
if ! nice -n 19 cargo +nightly fuzz build -O --codegen-units 16 --sanitizer "$sanitizer" "${one[@]}" >"$blog" 2>&1; then
  grep -v '^\s*Compiling' "$blog" | tail -n 30 >&2
  echo "fuzz: build failed (log: $blog)" >&2
  exit 1
fi
bin=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release
echo "fuzz: build took $(( $(date +%s) - t0 )) s" >&2

# Runs one target; its summary line goes to $work/summary, its verdict to $work/verdict.
run_one() {
  local t=$1 work=$workroot/$1
  mkdir -p "$work/corpus" "$work/artifacts"
  local log=$work/last.log
  local args=(-runs="$runs" -rss_limit_mb=2048 -timeout=10
        -print_final_stats=1 -artifact_prefix="$work/artifacts/")
  [ "$sanitizer" = address ] && args+=(-malloc_limit_mb=2048)
  [ -f "fuzz/dict/$t.dict" ] && args+=(-dict="fuzz/dict/$t.dict")
  [ "$max_time" -gt 0 ] && args+=(-max_total_time="$max_time")
  rm -f "$work/summary" "$work/verdict"
  local before; before=$(ls "$work/artifacts" | wc -l)
  local rc=0 t0; t0=$(date +%s)
  nice -n 19 "$bin/$t" "${args[@]}" "$work/corpus" "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n1; }
  local execs eps rss new crashes timeouts ooms leaks
  execs=$(stat number_of_executed_units); eps=$(stat average_exec_per_sec)
  rss=$(stat peak_rss_mb); new=$(stat new_units_added)
  crashes=$(grep -cE '^==[0-9]+== ?ERROR: (libFuzzer: deadly signal|AddressSanitizer)|panicked at|^SUMMARY: libFuzzer: (deadly|fuzz target exited)' "$log" || true)
  timeouts=$(grep -c 'ERROR: libFuzzer: timeout' "$log" || true)
  ooms=$(grep -cE 'ERROR: libFuzzer: (out-of-memory|malloc limit)' "$log" || true)
  leaks=$(grep -c 'ERROR: LeakSanitizer' "$log" || true)
  crashes=$(( crashes > 0 || (rc != 0 && timeouts + ooms == 0) ? 1 : 0 ))
  printf '%-14s %10s %8s %7sMB %5s %7s %8s %4s %7ss\n' "$t" "${execs:-?}" "${eps:-?}" "${rss:-?}" "${new:-?}" "$crashes" "$timeouts" "$ooms" "$(( $(date +%s) - t0 ))" >"$work/summary"
  echo "fuzz: $t: ${execs:-?} executions in $(( $(date +%s) - t0 )) s" >&2
  if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ] || [ "$timeouts" -gt 0 ] || [ "$ooms" -gt 0 ] || [ "$leaks" -gt 0 ]; then
    { echo "fuzz: $t failed (exit $rc); input saved in $work/artifacts (new: $(( $(ls "$work/artifacts" | wc -l) - before ))), log $log:"
      grep -E 'panicked at|ERROR:|SUMMARY|Test unit written' "$log" | head -n 8; } >"$work/verdict"
  else
    : >"$work/verdict"
  fi
}

echo "fuzz: sanitizer $sanitizer, $jobs target(s) at a time" >&2
printf '%-14s %10s %8s %9s %5s %7s %8s %4s %8s\n' target execs exec/s peak_rss new crashes timeouts oom time
# A stopped script stops its fuzzers.
trap 'kill $(jobs -p) 2>/dev/null; exit 130' INT TERM
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then wait -n || true; running=$((running - 1)); fi
  run_one "$t" &
  running=$((running + 1))
done
wait
failed=0
for t in "${targets[@]}"; do
  work=$workroot/$t
  if [ ! -f "$work/verdict" ]; then
    failed=1; echo "fuzz: $t did not finish (no verdict)" >&2; continue
  fi
  cat "$work/summary"
  if [ -s "$work/verdict" ]; then failed=1; cat "$work/verdict" >&2; fi
done
exit $failed
