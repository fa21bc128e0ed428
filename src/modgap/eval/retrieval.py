"""Image↔text retrieval Recall@k over two stores, exact and streamed (the Flickr30K/COCO protocol).

The pairs name the queries and the galleries: every image that appears in a pair is an image query and a
gallery item for the caption queries; every caption is a caption query (its one image is the answer) and a
gallery item for the image queries. An image query is correct at k when *any* of its captions is among its
k best texts; rows of the stores that no pair names take no part.

Exactness. Ranks are counted, not top-k lists kept: a query's rank is the number of gallery items that
beat its (best) positive. Scores are computed in float64 from the stored float32 vectors, so they are the
exact scores up to ~1e-15; two scores within ``TIE_TOLERANCE`` are a tie, and ties go to the item that comes
first in its store (the same rule as :func:`modgap.store.topk`). Memory is bounded by the blocks:
``block_rows`` images x one text chunk of scores at a time, plus one integer per query, so a million by a
million streams.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modgap.errors import ModgapError
from modgap.lazy import is_tensor, lazy_module
from modgap.progress import ProgressFactory, silent
from modgap.store.checks import BadRows
from modgap.store.store import EmbeddingStore
from modgap.store.stream import VectorSource
from modgap.store.topk import METRICS

torch = lazy_module("torch")

TIE_TOLERANCE = 1e-9
DEFAULT_KS = (1, 5, 10)


@dataclass
class RetrievalResult:
    metrics: dict[str, float]  # i2t_R@k / t2i_R@k as fractions in [0, 1], plus counts
    i2t_rank: np.ndarray  # per image query (in image-store row order): 0 = a caption came first
    t2i_rank: np.ndarray  # per caption query (in text-store row order)
    image_rows: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    text_rows: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))


def open_store(store: EmbeddingStore | str | os.PathLike) -> EmbeddingStore:
    return store if isinstance(store, EmbeddingStore) else EmbeddingStore.open(store)


class _Ops:
    """The few array operations retrieval needs: NumPy on the CPU (no torch loaded), torch on a device."""

    def __init__(self, device: str = "cpu"):
        self.numpy = str(device) == "cpu"
        self.device = device if self.numpy else torch.device(device)

    def put(self, x: np.ndarray) -> Any:
        return x if self.numpy else torch.from_numpy(x).to(self.device)

    def f64(self, x: Any) -> Any:
        if self.numpy:
            return np.asarray(x.detach().cpu().numpy() if is_tensor(x) else x, dtype=np.float64)
        return torch.as_tensor(x).to(self.device, torch.float64)

    def f32(self, x: Any) -> Any:
        return x.astype(np.float32) if self.numpy else x.float()

    def norms(self, x: Any) -> Any:
        return np.linalg.norm(x, axis=1) if self.numpy else torch.linalg.vector_norm(x, dim=1)

    def count(self, mask: Any) -> Any:  # per column; int32 sums: twice as fast as int64 here
        return mask.sum(0, dtype=np.int32) if self.numpy else mask.sum(0, dtype=torch.int32)

    def nonzero2(self, mask: Any) -> tuple[Any, Any]:
        """(rows, columns) of the true entries, in any order (2-D ``np.nonzero`` is ~4x slower than this)."""
        if not self.numpy:
            return torch.nonzero(mask, as_tuple=True)
        if mask.flags.f_contiguous and not mask.flags.c_contiguous:  # a mask of a transposed block
            columns, rows = np.divmod(np.flatnonzero(mask.T), mask.shape[0])
            return rows, columns
        return np.divmod(np.flatnonzero(mask), mask.shape[1])

    def add_at(self, out: Any, index: Any, values: Any) -> None:
        if self.numpy:
            np.add.at(out, index, values.astype(out.dtype))
        else:
            out.index_add_(0, index, values.to(out.dtype))

    def zeros(self, n: int, dtype: str) -> Any:
        if self.numpy:
            return np.zeros(n, dtype=dtype)
        return torch.zeros(n, dtype=getattr(torch, dtype), device=self.device)

    def host(self, x: Any) -> np.ndarray:
        return x if self.numpy else x.cpu().numpy()


def prepare_vectors(x: Any, metric: str, ops: _Ops | None = None) -> Any:
    """float64 rows (unit rows for cosine): NumPy, or torch on ``ops``' device."""
    ops = ops or _Ops()
    x = ops.f64(x)
    if metric == "cosine":
        x = x / ops.norms(x)[:, None]
    return x


def _scores(a: Any, b: Any, metric: str) -> Any:
    """(len(a), len(b)) scores, higher = closer; ``a``/``b`` already through :func:`prepare_vectors`."""
    s = a @ b.T
    if metric == "l2":
        s = 2 * s - (a * a).sum(1)[:, None] - (b * b).sum(1)[None, :]
    return s


def pair_scores(t: Any, v: Any, metric: str) -> Any:
    s = (t * v).sum(1)
    if metric == "l2":
        s = 2 * s - (t * t).sum(1) - (v * v).sum(1)
    return s


def _error_bound(a: Any, b: Any, metric: str, ops: _Ops) -> float:
    """A bound on |float32 block score - float64 score| for rows of ``a`` against rows of ``b``.

    Rounding the inputs to float32 and a length-D float32 dot product err by at most about
    (D + 2) * 2**-24 * |a| * |b|; doubled for safety, plus the tie tolerance.
    """
    na, nb = float(ops.norms(a).max()), float(ops.norms(b).max())
    scale = 2.0 * (a.shape[1] + 2) * 2.0**-24
    bound = scale * na * nb
    if metric == "l2":  # 2 a.b - |a|^2 - |b|^2, each term rounded
        bound = 2 * bound + scale * (na * na + nb * nb)
    return bound + TIE_TOLERANCE


def _count_beaten(
    s32: Any,
    threshold: Any,
    err: float,
    *,
    ops: _Ops,
    items: Any,
    queries: Any,
    metric: str,
    item_rows: Any,
    pos_rows: Any,
    own: Any,
    owner: Any = None,
) -> Any:
    """Per query (a column of ``s32``: items x queries), how many items beat its positive.

    Items clearly above the threshold count. Items in the uncertain band around it are rescored in float64
    (from ``items`` and ``queries``) and count when they beat the positive exactly: higher, or tied and
    earlier. ``owner`` (item -> query row) marks an item as the query's own positive, which never counts;
    without it, the item whose row is ``own`` is the positive.
    """
    margin = err + 2.0**-22 * abs(threshold)  # also covers rounding the threshold to float32
    above, below = ops.f32(threshold + margin), ops.f32(threshold - margin)
    n_above = ops.count(s32 > above)
    # The band entries, found in one pass over the block (every query's own positive is among them).
    item, query = ops.nonzero2((s32 >= below) & (s32 <= above))
    if len(item):
        exact = pair_scores(items[item], queries[query], metric)  # float64
        beats = _beats(exact, threshold[query], item_rows[item], pos_rows[query])
        mine = owner[item] == own[query] if owner is not None else item_rows[item] == own[query]
        extra = ops.zeros(len(n_above), "int32")
        ops.add_at(extra, query, beats & ~mine)
        n_above = n_above + extra
    return n_above


def _beats(scores: Any, threshold: Any, item_rows: Any, pos_rows: Any) -> Any:
    """Which items beat a query's positive: a higher score, or a tie and an earlier row."""
    above = scores > threshold + TIE_TOLERANCE
    tie = abs(scores - threshold) <= TIE_TOLERANCE
    return above | (tie & (item_rows < pos_rows))


def retrieval_recall(
    image: EmbeddingStore | str | os.PathLike,
    text: EmbeddingStore | str | os.PathLike,
    pairs: Sequence[tuple[str, str]],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    metric: str = "cosine",
    block_rows: int = 4096,
    chunk_rows: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFactory = silent,
) -> RetrievalResult:
    """Recall@k both ways for ``pairs`` of (text_id, image_id); see the module docstring for the protocol."""
    if metric not in METRICS:
        raise ModgapError(f"unknown metric {metric!r}; choose one of {METRICS}")
    if not ks or min(ks) < 1:
        raise ModgapError(f"--k must be at least 1, got {list(ks)}")
    if not pairs:
        raise ModgapError("no pairs to evaluate")
    image_store, text_store = open_store(image), open_store(text)
    if image_store.dim != text_store.dim:
        raise ModgapError(f"{image_store.path} holds {image_store.dim}-d vectors, {text_store.path} {text_store.dim}-d")
    image_of: dict[str, str] = {}
    for t_id, i_id in pairs:
        if image_of.setdefault(t_id, i_id) != i_id:
            raise ModgapError(f"caption {t_id!r} is paired with two images ({image_of[t_id]!r}, {i_id!r})")
    t_ids = list(image_of)
    t_rows = text_store.row_of(t_ids)
    t_pos = image_store.row_of([image_of[t] for t in t_ids])  # each caption's image, as an image-store row
    order = np.argsort(t_rows, kind="stable")
    t_rows, t_pos = t_rows[order], t_pos[order]
    i_rows = np.unique(t_pos)
    ops = _Ops(device)  # NumPy on the CPU: `eval retrieval` loads no torch there

    # Positives. Per caption: the score of its image. Per image: its best caption's score, and that
    # caption's row (the earliest among ties), which decides ties against other texts.
    t_pos_score = np.empty(len(t_rows), dtype=np.float64)
    for s in range(0, len(t_rows), 65536):
        tv = prepare_vectors(text_store.take(t_rows[s : s + 65536]), metric, ops)
        iv = prepare_vectors(image_store.take(t_pos[s : s + 65536]), metric, ops)
        t_pos_score[s : s + 65536] = ops.host(pair_scores(tv, iv, metric))
    _check_finite(t_pos_score, t_rows, text_store, t_pos, image_store)
    slot = np.searchsorted(i_rows, t_pos)  # image query index of each caption
    best = np.full(len(i_rows), -np.inf)
    np.maximum.at(best, slot, t_pos_score)
    is_best = np.abs(t_pos_score - best[slot]) <= TIE_TOLERANCE
    best_row = np.full(len(i_rows), np.iinfo(np.int64).max)
    np.minimum.at(best_row, slot[is_best], t_rows[is_best])  # t_rows ascending: the earliest best caption

    # One pass over (image block x text chunk) score blocks, counting what beats each positive. Blocks are
    # scored in float32; only entries within float32's error bound of a threshold are rescored in float64.
    i2t_beaten, t2i_beaten = ops.zeros(len(i_rows), "int64"), ops.zeros(len(t_rows), "int64")
    t_rows_d, t_img = ops.put(t_rows), ops.put(t_pos)
    t_thr, i_thr, i_best_row = ops.put(t_pos_score), ops.put(best), ops.put(best_row)
    texts = VectorSource(text_store, "text store", BadRows("error"), chunk_rows, device, numpy=ops.numpy)
    with progress("retrieval", len(i_rows)) as advance:
        for b in range(0, len(i_rows), block_rows):
            i_sl = slice(b, b + block_rows)
            q_rows = ops.put(i_rows[i_sl])
            q64 = prepare_vectors(image_store.take(i_rows[i_sl]), metric, ops)
            q32 = ops.f32(q64)
            for chunk in texts.chunks(rows=(0, texts.rows)):
                lo, hi = np.searchsorted(t_rows, [chunk.start, chunk.start + len(chunk.x)])  # no rows skipped
                if lo == hi:
                    continue
                # The paired captions inside this chunk (t_rows is sorted, so they are a contiguous slice).
                cols = slice(int(lo), int(hi))
                c64 = prepare_vectors(chunk.x[ops.put(t_rows[cols] - chunk.start)], metric, ops)
                c32 = ops.f32(c64)
                s32 = _scores(q32, c32, metric)
                err = _error_bound(q64, c64, metric, ops)

                # text -> image: per caption column, images beating the caption's image.
                t2i_beaten[cols] += _count_beaten(
                    s32, t_thr[cols], err, ops=ops, items=q64, queries=c64, metric=metric,
                    item_rows=q_rows, pos_rows=t_img[cols], own=t_img[cols],
                )  # fmt: skip
                # image -> text: per image row, captions (not its own) beating its best caption.
                i2t_beaten[i_sl] += _count_beaten(
                    s32.T, i_thr[i_sl], err, ops=ops, items=c64, queries=q64, metric=metric,
                    item_rows=t_rows_d[cols], pos_rows=i_best_row[i_sl], own=q_rows, owner=t_img[cols],
                )  # fmt: skip
            advance(len(q_rows))
    i2t_rank, t2i_rank = ops.host(i2t_beaten), ops.host(t2i_beaten)
    metrics: dict[str, float] = {"images": len(i_rows), "texts": len(t_rows)}
    for k in ks:
        metrics[f"i2t_R@{k}"] = float(np.mean(i2t_rank < k))
    for k in ks:
        metrics[f"t2i_R@{k}"] = float(np.mean(t2i_rank < k))
    return RetrievalResult(metrics, i2t_rank, t2i_rank, i_rows, t_rows)


def _check_finite(
    scores: np.ndarray, t_rows: np.ndarray, text: EmbeddingStore, i_rows: np.ndarray, image: EmbeddingStore
) -> None:
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        j = int(bad[0])
        t_id, i_id = text.ids()[t_rows[j]], image.ids()[i_rows[j]]
        raise ModgapError(
            f"{len(bad)} pair(s) have no usable score (NaN, Inf or zero vector), e.g. caption {t_id!r} "
            f"in {text.path} with image {i_id!r} in {image.path}"
        )
