#!/usr/bin/env bash
# Memory-budget benchmark: ingests a corpus under budgets of 512 MiB, 1 GiB and 2 GiB and
# prints, per budget, the OS-measured peak RSS (GNU time), wall time, swap change, model
# loads and the RSS left once models are unloaded. Corpus: samples/notes plus 24 generated
# notes, 12 generated screenshots (ImageMagick, light and dark, ru/en) and 4 voice memos
# (espeak-ng; one of 5.5 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mnema-target}
mnema="$CARGO_TARGET_DIR/release/mnema"
corpus=$(mktemp -d); trap 'rm -rf "$corpus"' EXIT
cp samples/notes/* "$corpus/"
for i in $(seq 1 24); do
  { echo "# Заметка $i"; for j in $(seq 1 30); do echo "Строка $j заметки $i: память, модели и поиск по смыслу. Line $j of note $i about budgets."; done; } > "$corpus/gen-$i.md"
done
for i in $(seq 1 12); do
  if [ $((i % 2)) -eq 0 ]; then bg="#1e1e1e"; fg="#e0e0e0"; else bg=white; fg=black; fi
  convert -size 1280x400 "xc:$bg" -font DejaVu-Sans -pointsize 28 -fill "$fg" \
    -annotate +30+60 "Скриншот $i: настройки подписки и памяти" \
    -annotate +30+130 "Screenshot $i: memory budget is 1 GiB, model cache" \
    -annotate +30+200 "Идеи по векторизации, заметка номер $i" "$corpus/shot-$i.png"
done
for i in 1 2 3; do
  espeak-ng -v en -w "$corpus/raw$i.wav" "Voice memo $i. My ideas about vectorization: store every note as an embedding, and search by meaning." 
  sox "$corpus/raw$i.wav" -r 16000 -c 1 "$corpus/memo-$i.wav" pad 1 1; rm "$corpus/raw$i.wav"
done
parts=()
for k in $(seq 1 40); do
  espeak-ng -v en -w "$corpus/p$k.wav" "Part $k of a long recording about memory budgets, model loading and unloading, and how search finds things again."
  sox "$corpus/p$k.wav" -r 16000 -c 1 "$corpus/q$k.wav" pad 0 1.5; rm "$corpus/p$k.wav"; parts+=("$corpus/q$k.wav")
done
sox "${parts[@]}" "$corpus/long-memo.wav"; rm "${parts[@]}"
echo "corpus: $(ls "$corpus" | wc -l) files, long memo $(soxi -D "$corpus/long-memo.wav" | cut -d. -f1) s" >&2
swap_used() { awk '/SwapTotal/{t=$2} /SwapFree/{f=$2} END{print (t-f)/1024}' /proc/meminfo; }
printf '%-9s %12s %9s %11s %7s %14s %s\n' budget "peak RSS MiB" "wall s" "swap Δ MiB" loads "idle RSS MiB" files
for b in ${MNEMA_BENCH_BUDGETS:-512MiB 1GiB 2GiB}; do
  home=$(mktemp -d)
  s0=$(swap_used)
  /usr/bin/time -f '%M %e' -o "$home/time" "$mnema" --home "$home" --memory-budget "$b" --json profile -- ingest "$corpus" > "$home/out"
  s1=$(swap_used)
  read -r kb secs < "$home/time"
  python3 - "$b" "$kb" "$secs" "$s0" "$s1" "$home/out" <<'PY'
import json, sys
b, kb, secs, s0, s1, out = sys.argv[1:]
lines = open(out).read().splitlines()
rep = json.loads(lines[-1])
import re
m = next((re.search(r"indexed (\d+), unchanged \d+, failed (\d+)", l) for l in lines if l.startswith("indexed ")), None)
files = f"{m.group(1)} indexed, {m.group(2)} failed" if m else "?"
loads = sum(1 for e in rep["model_events"] if e["event"] == "load")
print(f"{b:<9} {int(kb)/1024:12.1f} {float(secs):9.1f} {float(s1)-float(s0):11.1f} {loads:7d} {rep['rss_idle_bytes']/2**20:14.1f} {files}", flush=True)
PY
  rm -rf "$home"
done
