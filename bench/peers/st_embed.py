"""Peer for the embedding benchmark: sentence-transformers on CPU with 2 threads.
argv: model_dir short.txt long.txt out_vectors.f32 — prints one JSON line of figures and
writes the short sentences' vectors, then the long texts' (little-endian f32), for the
cosine check."""
import json, resource, sys, time
import torch
from sentence_transformers import SentenceTransformer

torch.set_num_threads(2)
model_dir, short_f, long_f, out_f = sys.argv[1:5]
short = open(short_f, encoding="utf-8").read().split("\n")
long = open(long_f, encoding="utf-8").read().split("\n")
m = SentenceTransformer(model_dir, device="cpu")
m.max_seq_length = 256
m.encode(short[:32], batch_size=32)  # warm-up
t = time.perf_counter()
for _ in range(2):
    vecs = m.encode(short, batch_size=32, normalize_embeddings=True)
short_rate = 2 * len(short) / (time.perf_counter() - t)
t = time.perf_counter()
lvecs = m.encode(long, batch_size=32, normalize_embeddings=True)
long_rate = len(long) / (time.perf_counter() - t)
import numpy
numpy.concatenate([vecs, lvecs]).astype("<f4").tofile(out_f)
print(json.dumps({"short_per_s": short_rate, "long_per_s": long_rate,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch": torch.__version__}))
