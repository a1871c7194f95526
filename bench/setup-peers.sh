#!/usr/bin/env bash
# Installs the benchmark peers (sentence-transformers with PyTorch CPU, numpy, faster-whisper)
# into a venv outside the checkout: ~/.cache/mnema-pyref (override with MNEMA_PEER_VENV).
set -euo pipefail
venv=${MNEMA_PEER_VENV:-$HOME/.cache/mnema-pyref}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q sentence-transformers==6.2.0 numpy faster-whisper==1.2.1
echo "peers installed in $venv (MNEMA_PEER_PYTHON=$venv/bin/python)"
