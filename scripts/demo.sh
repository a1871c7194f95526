#!/usr/bin/env bash
# Runs mnema's main job on the bundled sample: index samples/ (notes, screenshots, a voice
# memo) into a fresh data directory, then search it in Russian and in English. Run
# scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mnema-target}
mnema="$CARGO_TARGET_DIR/release/mnema"
home=${MNEMA_DEMO_HOME:-$(mktemp -d -t mnema-demo-XXXX)}
run() { printf '\n\033[1m$ mnema %s\033[0m\n' "$*"; "$mnema" --home "$home" "$@"; }
run doctor || true
run ingest samples
run search "как приготовить борщ" --limit 3
run search "beet soup recipe" --limit 3
run search "подписки" --mode keyword --limit 3
run search "memory limits on small laptops" --limit 3
run search "сколько стоит подписка" --kind image --limit 2
run search "идеи по векторизации" --limit 4
run transcribe samples/voice/vectorization-ideas.mp3
printf '\ndata directory of this demo: %s\n' "$home"
