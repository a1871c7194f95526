"""Peer for the search benchmark: exact top-10 by brute force in numpy (matrix-vector
product + argpartition). argv: vectors.f32 queries.f32 (384-d, little-endian)."""
import json, sys, time
import numpy as np

V = np.fromfile(sys.argv[1], dtype="<f4").reshape(-1, 384)
Q = np.fromfile(sys.argv[2], dtype="<f4").reshape(-1, 384)
times = []
for q in Q:
    t = time.perf_counter()
    s = V @ q
    top = np.argpartition(-s, 10)[:10]
    top = top[np.argsort(-s[top])]
    times.append((time.perf_counter() - t) * 1e3)
times.sort()
print(json.dumps({"p50_ms": times[len(times) // 2], "p99_ms": times[int(len(times) * 0.99) - 1], "n": len(V)}))
