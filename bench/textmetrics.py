"""Edit distance for the benchmarks' error rates (CER over characters, WER over words)."""


def lev(a, b):
    """Levenshtein distance between two sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a):
        cur = [i + 1] + [0] * len(b)
        for j, y in enumerate(b):
            cur[j + 1] = min(prev[j] + (x != y), prev[j + 1] + 1, cur[j] + 1)
        prev = cur
    return prev[len(b)]
