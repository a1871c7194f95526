#!/usr/bin/env bash
# HTTP API benchmark (a harness, not a test): search latency and throughput of `mnema serve`
# under 16 concurrent clients on a 10k-item store, measured by wrk from a second process on
# loopback, 20 s per mode, queries rotating over 24 Russian and English phrases.
# Needs the release binary (scripts/setup.sh) and wrk (installed here from Debian if missing).
# MNEMA_BENCH_DIR keeps the generated store between runs; MNEMA_BENCH_ITEMS sets its size.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mnema-target}
mnema="$CARGO_TARGET_DIR/release/mnema"
items=${MNEMA_BENCH_ITEMS:-10000}
work=${MNEMA_BENCH_DIR:-$(mktemp -d)}
command -v wrk >/dev/null || { sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_=sudo; $sudo_ apt-get install -y -qq wrk >/dev/null; }
home="$work/home"
if [ ! -f "$home/mnema.db" ] || [ "$(cat "$work/items" 2>/dev/null)" != "$items v2" ]; then
  rm -rf "$home" "$work/notes"; mkdir -p "$work/notes"
  python3 - "$work/notes" "$items" <<'PY'
import os, random, sys
out, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(1)
# Topic words people search for, over a Zipf-distributed vocabulary of 6000 made-up
# Russian-like and English-like words (a small fixed vocabulary would make every query match
# every note).
ru = "память модель поиск заметка смысл подписка настройки встреча поезд погода рецепт борщ свекла идея вектор индекс файл голос запись скриншот бюджет ноутбук работа отчёт проект письмо книга сад дача билет врач".split()
en = "memory model search note meaning subscription settings meeting train weather recipe soup beet idea vector index file voice memo screenshot budget laptop work report project letter book garden ticket doctor".split()
syl_ru = "ка ло ми на ре то су ви да ко ле ба ру ни ст пр ол ем".split()
syl_en = "ta lo mi na re to su vi da ko le ba ru ni st pr ol em".split()
vocab = ["".join(rnd.choice(syl_ru if i % 2 else syl_en) for _ in range(rnd.randint(2, 4))) + ("" if i % 3 else "ть") for i in range(6000)]
weights = [1 / (r + 1) for r in range(len(vocab))]
for i in range(n):
    k = rnd.randint(12, 40)
    words = rnd.choices(vocab, weights, k=k)
    for j in rnd.sample(range(k), 3):
        words[j] = rnd.choice(ru if rnd.random() < 0.5 else en)
    with open(os.path.join(out, f"n{i:05d}.md"), "w") as f:
        f.write(f"# {' '.join(words[:4])}\n{' '.join(words)}.\n")
PY
  echo "ingesting $items notes (one-time)…" >&2
  "$mnema" --home "$home" ingest "$work/notes" >&2
  echo "$items v2" > "$work/items"
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$mnema" --home "$home" serve --addr "127.0.0.1:$port" 2>/dev/null & pid=$!
trap 'kill $pid 2>/dev/null' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/api/health" >/dev/null && break; sleep 0.2; done
cat > "$work/queries.lua" <<'LUA'
local qs = {"память модели", "memory budget", "рецепт борща", "beet soup recipe", "идеи по векторизации", "vector index",
  "поезд в четверг", "train ticket", "погода на завтра", "weather tomorrow", "голосовая запись", "voice memo",
  "настройки подписки", "subscription settings", "отчёт по проекту", "project report", "книга в саду", "garden book",
  "врач и билет", "doctor ticket", "скриншот ноутбука", "laptop screenshot", "письмо на работу", "work letter"}
local function enc(s) return (s:gsub("[^%w]", function(c) return string.format("%%%02X", string.byte(c)) end)) end
local i = 0
local n = 0
setup = function(thread) n = n + 1; thread:set("tid", n) end
init = function() math.randomseed(os.time() * 100 + (tid or 0)) end
request = function()
  i = i + 1
  local q = qs[(i % #qs) + 1]
  -- "cold": every query text is new (no cached query vector); "warm": 24 texts repeat.
  if wrk.cold then q = q .. " " .. math.random(1, 1000000000) end
  return wrk.format("GET", "/api/search?limit=10&mode=" .. wrk.mode .. "&q=" .. enc(q))
end
LUA
printf '%-14s %10s %10s %10s %10s %9s\n' mode req/s p50_ms p90_ms p99_ms errors
for run in hybrid:warm hybrid:cold keyword:warm semantic:cold; do
  mode=${run%:*}; cold=false; [ "${run#*:}" = cold ] && cold=true
  curl -sf "http://127.0.0.1:$port/api/search?q=warm&mode=$mode" >/dev/null
  sed "s/wrk.mode/\"$mode\"/; s/wrk.cold/$cold/" "$work/queries.lua" > "$work/q-$mode.lua"
  wrk -t2 -c16 -d20s --latency -s "$work/q-$mode.lua" "http://127.0.0.1:$port" > "$work/wrk-$mode.txt"
  python3 - "$run" "$work/wrk-$mode.txt" <<'PY'
import re, sys
mode, f = sys.argv[1], open(sys.argv[2]).read()
def ms(tag):
    m = re.search(r"\s%s%%\s+([\d.]+)(us|ms|s)" % tag, f)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", f).group(1))
err = re.search(r"Non-2xx or 3xx responses: (\d+)", f)
print(f"{mode:<14} {rps:10.1f} {ms('50'):10.2f} {ms('90'):10.2f} {ms('99'):10.2f} {int(err.group(1)) if err else 0:9d}")
PY
done
