#!/usr/bin/env bash
# Runs every test of mnema on a fresh Debian machine: installs what is missing (packages,
# verified model files), builds, runs the whole test suite against the real models, checks
# that the benchmarks still compile, checks the CLI's JSON contract and tests the web UI in
# a real browser.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mnema-target}
export CARGO_TERM_COLOR=never
scripts/setup.sh --no-build
# Formatting and lints first: they fail in seconds, before the long build.
cargo fmt --all --check
cargo clippy --release --locked --workspace --all-targets -q -- -D warnings
cargo test --release --locked --workspace
cargo bench --locked --workspace --no-run -q
scripts/fuzz.sh --quick # a short fuzz pass: 20,000 inputs or 30 s per target
if [ -f ../shared/check-contract.py ]; then
  MNEMA_BIN="$CARGO_TARGET_DIR/release/mnema" python3 ../shared/check-contract.py
fi
# The web UI in headless Chromium against a real server (screenshots: $CARGO_TARGET_DIR/ui-artifacts).
MNEMA_BIN="$CARGO_TARGET_DIR/release/mnema" node tests/ui/ui.test.mjs
# The reliability suite, short form: kill -9 of ingest and serve at random points, concurrent
# writers under search load, a one-minute soak (the full run: tests/reliability/suite.py all).
MNEMA_BIN="$CARGO_TARGET_DIR/release/mnema" python3 tests/reliability/suite.py all --quick --report "$CARGO_TARGET_DIR/reliability-quick.json"
