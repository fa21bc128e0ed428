"""Approximate top-k search with a faiss index (``pip install modgap[faiss]``), for corpora where the exact
search (:mod:`modgap.store.topk`, the default everywhere) costs too much: hard-negative mining over tens of
millions of captions.

An index is built from a store once (streamed in chunks, bad rows checked as everywhere), saved in faiss's
own serialised format (no pickle) beside a small JSON record of the store it was built from (its shard
checksums) and of the index file's checksum, and reused while the store is unchanged; a changed store is
refused by name. Results come back as the exact search's :class:`~modgap.store.topk.SearchResult` (rows are the store's
global row numbers; ids filled in), so callers switch with one argument.

Factories are faiss's own strings (``"IVF1024,Flat"``, ``"HNSW32"``, ``"IVF4096,PQ64"``); ``"auto"`` picks
``IVF{n},Flat`` with n ≈ 4√N lists (memory as the float32 corpus; use a PQ factory beyond what fits).
Cosine search normalises rows and queries and uses inner product; ``dot`` and ``l2`` map to faiss's own.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modgap.errors import ModgapError
from modgap.files import write_bytes, write_json
from modgap.store.checks import BadRows, OnBad, bad_row_mask, row_norms
from modgap.store.store import EmbeddingStore
from modgap.store.stream import VectorSource
from modgap.store.topk import METRICS, SearchResult

INDEX_FORMAT = "modgap-faiss-index"
TRAIN_ROWS_PER_LIST = 64  # faiss warns below 39 training points per list; k-means quality needs a few dozen


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise ModgapError("approximate search needs faiss: pip install 'modgap[faiss]' (faiss-cpu)") from e
    return faiss


def store_fingerprint(store: EmbeddingStore) -> str:
    """What identifies a store's vectors: its dim, dtype and shard checksums (any rewrite changes them)."""
    m = store.manifest
    parts = [str(m.dim), m.dtype, *(f"{s.file}:{s.rows}:{s.checksum}" for s in m.shards)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def auto_factory(rows: int) -> str:
    lists = max(1, min(65536, int(4 * math.sqrt(rows)), rows // TRAIN_ROWS_PER_LIST))
    return f"IVF{lists},Flat"


@dataclass
class FaissIndex:
    """A faiss index over a corpus's usable rows; the index's ids are the corpus's global row numbers."""

    index: Any
    metric: str
    factory: str
    fingerprint: str | None = None  # of the store it was built from (None for an array)

    @property
    def vectors(self) -> int:
        return int(self.index.ntotal)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (faiss's format) and its record ``path.json`` (what it was built from, the index's
        checksum), each under a temporary name first; the record last, so a half-saved pair never loads."""
        faiss = _faiss()
        path = Path(path)
        data = faiss.serialize_index(self.index).tobytes()
        write_bytes(path, data)
        write_json(_record_path(path), {
            "format": INDEX_FORMAT, "version": 1, "metric": self.metric, "factory": self.factory,
            "fingerprint": self.fingerprint, "vectors": self.vectors, "sha256": hashlib.sha256(data).hexdigest(),
        })  # fmt: skip
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, store: EmbeddingStore | None = None) -> FaissIndex:
        """Read an index saved by :meth:`save`; with ``store``, refuse it unless built from that store."""
        faiss = _faiss()
        path = Path(path)
        record_path = _record_path(path)
        try:
            record = json.loads(record_path.read_text())
            data = path.read_bytes()
        except (OSError, ValueError) as e:
            raise ModgapError(f"{path}: not a saved index with its record {record_path.name} ({e})") from e
        if not isinstance(record, dict) or record.get("format") != INDEX_FORMAT:
            raise ModgapError(f"{record_path}: not a modgap faiss index record")
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            raise ModgapError(f"{path}: the index file is not the one its record describes (rebuild it)")
        if store is not None and record["fingerprint"] != store_fingerprint(store):
            raise ModgapError(
                f"{path}: built from other vectors than the store {store.path} holds now (the store changed); "
                "rebuild it (delete the index or name another index path)"
            )
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(index, record["metric"], record["factory"], record["fingerprint"])


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def build_index(
    corpus: EmbeddingStore | str | os.PathLike | np.ndarray,
    *,
    metric: str = "cosine",
    factory: str = "auto",
    train_rows: int | None = None,
    on_bad: OnBad = "error",
    seed: int = 0,
) -> FaissIndex:
    """Build a faiss index over ``corpus`` (a store or an array), streamed in chunks. Indexes that need
    training (IVF, PQ) are trained on ``train_rows`` rows drawn with ``seed`` (default: 64 per list)."""
    faiss = _faiss()
    if metric not in METRICS:
        raise ModgapError(f"unknown metric {metric!r}; choose one of {METRICS}")
    src = VectorSource(corpus, "corpus", BadRows(on_bad), numpy=True)
    factory = auto_factory(src.rows) if factory == "auto" else factory
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    try:
        index = faiss.index_factory(src.dim, factory, faiss_metric)
    except RuntimeError as e:
        raise ModgapError(f"faiss cannot build the index {factory!r}: {str(e).strip().splitlines()[-1]}") from e
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        index = faiss.IndexIDMap(index)  # IVF indexes keep ids themselves; the others need the map
    if not index.is_trained:
        # IVF's k-means wants ~64 points per list; a PQ's 256-centroid codebooks want ~40 x 256
        wanted = train_rows or max(TRAIN_ROWS_PER_LIST * (ivf.nlist if ivf is not None else 1), 10_240)
        picked = np.sort(np.random.default_rng(seed).permutation(src.rows)[: min(wanted, src.rows)])
        sample = np.concatenate([_prepare(x, metric, norms) for x, norms, _ in _chunks(src, picked)])
        if len(sample) == 0:
            raise ModgapError(f"{src.label}: no usable rows to train the index on")
        index.train(sample)
    for x, norms, rows in _chunks(src):
        index.add_with_ids(_prepare(x, metric, norms), rows)
    if index.ntotal == 0:
        raise ModgapError(f"{src.label}: no usable rows to index")
    store = src.store
    return FaissIndex(index, metric, factory, store_fingerprint(store) if store is not None else None)


def _chunks(src: VectorSource, only: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Usable rows chunk by chunk with their norms (the source's own) and global row numbers (only those in
    the sorted ``only``)."""
    for rows in src.chunks():
        local = np.arange(len(rows.x)) if rows.keep is None else np.flatnonzero(rows.keep)
        numbers = (rows.start + local).astype(np.int64)
        if only is not None:
            take = np.isin(numbers, only)
            yield rows.x[take], rows.norms[take], numbers[take]
        else:
            yield rows.x, rows.norms, numbers


def _prepare(x: np.ndarray, metric: str, norms: np.ndarray) -> np.ndarray:
    """float32, contiguous (what faiss takes; a new array, never the source's reused buffer), unit rows for
    cosine."""
    if metric == "cosine":
        return np.ascontiguousarray(x / norms[:, None], dtype=np.float32)
    return np.array(x, dtype=np.float32, order="C")


def approximate_search(
    queries: Any,
    index: FaissIndex,
    k: int,
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
    store: EmbeddingStore | None = None,
) -> SearchResult:
    """The approximately ``k`` best rows for each query, as :func:`~modgap.store.topk.search` returns them.

    ``nprobe`` (IVF: lists visited, default 16) and ``ef_search`` (HNSW: candidates kept, default 64) trade
    speed for recall. ``store``: fill in the rows' ids."""
    faiss = _faiss()
    if k < 1:
        raise ModgapError(f"k must be at least 1, got {k}")
    if k > index.vectors:
        raise ModgapError(f"the index holds {index.vectors} vectors, fewer than k={k}")
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != index.index.d:
        raise ModgapError(f"queries have shape {q.shape}; the index holds D={index.index.d} vectors")
    norms = row_norms(q)
    bad = np.flatnonzero(bad_row_mask(norms))
    if index.metric == "cosine" and len(bad):
        raise ModgapError(f"queries {bad[:10].tolist()} are NaN, Inf or zero vectors")
    ivf = faiss.try_extract_index_ivf(index.index)
    if ivf is not None:
        ivf.nprobe = min(nprobe or 16, ivf.nlist)
    inner = faiss.downcast_index(index.index.index) if isinstance(index.index, faiss.IndexIDMap) else None
    if inner is not None and hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = ef_search or 64
    scores, found = index.index.search(_prepare(q, index.metric, norms), k)
    if (found < 0).any():
        short = int(np.flatnonzero((found < 0).any(1))[0])
        raise ModgapError(
            f"query {short}: the index returned fewer than k={k} candidates (visit more lists: raise nprobe)"
        )
    if index.metric == "l2":
        scores = -scores  # faiss returns squared distances, smallest first; modgap's l2 score is their negation
    return SearchResult(scores.astype(np.float32), found.astype(np.int64)).named(store)


def index_for(
    store: EmbeddingStore,
    path: str | os.PathLike | None,
    *,
    metric: str = "cosine",
    factory: str = "auto",
    on_bad: OnBad = "error",
) -> FaissIndex:
    """The index saved at ``path`` if it was built from ``store`` (else an error naming why), or a new one
    built now and, with a ``path``, saved there for the next run."""
    if path is not None and Path(path).exists():
        found = FaissIndex.load(path, store)
        if found.metric != metric or factory not in ("auto", found.factory):
            raise ModgapError(
                f"{path}: a {found.factory} index for {found.metric} search, not the {factory} {metric} index "
                "asked for; name another index path"
            )
        return found
    built = build_index(store, metric=metric, factory=factory, on_bad=on_bad)
    if path is not None:
        built.save(path)
    return built
