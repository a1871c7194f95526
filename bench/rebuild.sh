#!/usr/bin/env bash
# Measures incremental release rebuilds of the binary after a one-line edit of one file per
# crate (a private constant appended, then removed): the wall and CPU seconds of
# `cargo build --release`, as a developer editing that crate waits for them.
#
#   bench/rebuild.sh [FILE ...]   (default: one file of search, server, store, extract, core)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mnema-target}
files=("$@")
[ ${#files[@]} -eq 0 ] && files=(crates/search/src/lib.rs crates/server/src/api.rs crates/store/src/lib.rs crates/extract/src/embed.rs crates/core/src/text.rs)
cargo build --release --locked -q
printf '%-34s %8s %8s\n' file wall_s cpu_s
for f in "${files[@]}"; do
  cp "$f" "$f.rebuild-time"
  trap 'mv "$f.rebuild-time" "$f"' EXIT
  printf '\n#[allow(dead_code)]\nconst REBUILD_PROBE: u64 = %s;\n' "$(date +%s%N)" >>"$f"
  out=$( { /usr/bin/time -f '%e %U %S' cargo build --release --locked -q; } 2>&1 | tail -n1)
  mv "$f.rebuild-time" "$f"; trap - EXIT
  touch "$f"
  read -r wall user sys <<<"$out"
  printf '%-34s %8s %8.1f\n' "$f" "$wall" "$(echo "$user + $sys" | bc)"
done
# Back to the unedited build.
cargo build --release --locked -q
