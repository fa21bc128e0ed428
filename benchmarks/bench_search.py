"""Exact top-k search (`modgap.store.search`) against its floor and against faiss (issue 22).

A store of N float16 vectors (D dims, unit rows) and Q float32 queries; top-k by cosine. Timed in this
process, best of --rounds alternating rounds:
  * `modgap.store.search` on the store (reads the shards, converts, scores in blocks, keeps the running top-k);
  * the floor: the bare float32 GEMM of the queries against the corpus already in memory as float32 (no read,
    no top-k);
  * faiss-cpu's exact `IndexFlatIP` on the same float32 values (index built outside the timing), and, where
    asked (--hnsw), an approximate `IndexHNSWFlat` with its recall@k against the exact result.
Prints seconds and ratios, and whether the result rows agree (ties aside).

Usage: python benchmarks/bench_search.py [--rows 200000] [--dim 256] [--queries 4096] [--k 10] [--hnsw]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from modgap.store import StoreWriter, search


def best_of(fn, rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=4096)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hnsw", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    import faiss

    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(dir=args.workdir))
    corpus = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    corpus16 = corpus.astype(np.float16)
    with StoreWriter(work / "store", dim=args.dim, dtype="float16", normalized=True) as w:
        for s in range(0, args.rows, 65536):
            w.write([f"r{i}" for i in range(s, min(s + 65536, args.rows))], corpus16[s : s + 65536])
    values = corpus16.astype(np.float32)  # what the store holds, for the floor and faiss
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(args.dim)
    index.add(values)
    threads = faiss.omp_get_max_threads()
    print(f"top-{args.k} of {args.queries} queries over {args.rows:,} x {args.dim} float16 (cosine, unit rows); "
          f"faiss {faiss.__version__}, {threads} threads; best of {args.rounds} rounds\n")  # fmt: skip

    timings: dict[str, list[float]] = {"modgap": [], "gemm": [], "faiss": []}
    results = {}
    for _ in range(args.rounds):  # alternating, so a noisy moment hits every contender alike
        for name, fn in (("modgap", lambda: search(queries, work / "store", args.k)),
                         ("gemm", lambda: queries @ values.T),
                         ("faiss", lambda: index.search(queries, args.k))):  # fmt: skip
            started = time.perf_counter()
            results[name] = fn()
            timings[name].append(time.perf_counter() - started)
    best = {name: min(t) for name, t in timings.items()}
    ours = results["modgap"].rows
    _, theirs = results["faiss"]
    agree = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ours, theirs, strict=True)]))
    print("| method | seconds | vs the GEMM floor |")
    print("|---|---|---|")
    print(f"| bare float32 GEMM (corpus in memory, no top-k) | {best['gemm']:.2f} | 1.00 |")
    print(f"| `modgap.store.search` (from the store) | {best['modgap']:.2f} | {best['modgap'] / best['gemm']:.2f} |")
    print(f"| faiss `IndexFlatIP` (exact, in memory) | {best['faiss']:.2f} | {best['faiss'] / best['gemm']:.2f} |")
    print(f"\nfaiss / modgap: {best['faiss'] / best['modgap']:.2f}x; same top-{args.k} rows: {agree:.4f}")
    if args.hnsw:
        hnsw = faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
        build, _ = best_of(lambda: hnsw.add(values), 1)
        hnsw.hnsw.efSearch = 64
        seconds, (_, approx) = best_of(lambda: hnsw.search(queries, args.k), args.rounds)
        recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(approx, ours, strict=True)]))
        print(f"faiss HNSW (M 32, efSearch 64): build {build:.1f} s, search {seconds:.2f} s, "
              f"recall@{args.k} {recall:.3f} against the exact search")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
