#!/usr/bin/env bash
# Speech benchmark (a harness, not a test): mnema transcribe against faster-whisper int8 and
# float32 on the same Whisper base weights and recordings, in one run. Needs the release
# binary (scripts/setup.sh) and the peers (bench/setup-peers.sh). Recordings are cached in
# $MNEMA_BENCH_DIR when set.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mnema-target}
venv=${MNEMA_PEER_VENV:-$HOME/.cache/mnema-pyref}
exec python3 bench/speech.py "$CARGO_TARGET_DIR/release/mnema" "${MNEMA_MODELS:-$PWD/models}" "$venv/bin/python"
