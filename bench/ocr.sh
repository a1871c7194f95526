#!/usr/bin/env bash
# OCR benchmark (a harness, not a test): mnema's OCR engines against the tesseract CLI on
# generated screenshot-like images, in one run. Needs the release binary (scripts/setup.sh).
# MNEMA_BENCH_IMAGES sets how many images (default 24); MNEMA_BENCH_DIR caches them.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mnema-target}
exec python3 bench/ocr.py "$CARGO_TARGET_DIR/release/mnema" "${MNEMA_MODELS:-$PWD/models}"
