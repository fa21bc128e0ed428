"""Exact top-k search of query vectors over a store, streamed: blocked matmuls, memory bounded by the blocks.

The store is read once, chunk by chunk; each chunk is scored against the queries in blocks and merged into
a running (queries x k) best list. Memory is O(queries x k + query_block x chunk_rows) whatever the store's
size. Used for hard-negative mining and retrieval evaluation.

Metrics (higher score = closer):

* ``cosine``: both sides L2-normalised;
* ``dot``: raw inner products (what an aligner with un-normalised output, such as mean shift, gives);
* ``l2``: the negated squared Euclidean distance.

Rows that break the bad-row rule (NaN, Inf, zero) stop the search under ``on_bad="error"`` or are never
returned under ``"skip"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from modgap.errors import ModgapError
from modgap.lazy import lazy_module
from modgap.store.checks import BadRows, OnBad, unusable_rows
from modgap.store.store import EmbeddingStore
from modgap.store.stream import VectorSource

torch = lazy_module("torch")

METRICS = ("cosine", "dot", "l2")


@dataclass
class SearchResult:
    scores: np.ndarray  # (queries, k) float32, best first
    rows: np.ndarray  # (queries, k) int64 global row numbers of the store (or array)
    ids: list[list[str]] | None = None  # the rows' ids, for stores

    def __len__(self) -> int:
        return len(self.rows)

    def named(self, store: EmbeddingStore | None) -> SearchResult:
        """With ``store``, the rows' ids filled in (this result, returned)."""
        if store is not None:
            ids = store.ids()
            self.ids = [[ids[r] for r in row] for row in self.rows.tolist()]
        return self


def _score(q: Any, q_sq: Any, x: Any, norms: Any, metric: str) -> Any:
    """Scores of query rows against corpus rows (NumPy arrays or tensors alike)."""
    s = q @ x.T
    if metric == "cosine":
        return s / norms[None, :]
    if metric == "l2":
        return 2 * s - q_sq[:, None] - (norms * norms)[None, :]
    return s


def search(
    queries: Any,
    corpus: EmbeddingStore | str | os.PathLike | np.ndarray | torch.Tensor,
    k: int,
    *,
    metric: str = "cosine",
    chunk_rows: int | None = None,
    query_block: int = 1024,
    on_bad: OnBad = "error",
    device: torch.device | str = "cpu",
) -> SearchResult:
    """The ``k`` best rows of ``corpus`` for every row of ``queries`` (an array or tensor (Q, D))."""
    if metric not in METRICS:
        raise ModgapError(f"unknown metric {metric!r}; choose one of {METRICS}")
    if k < 1:
        raise ModgapError(f"k must be at least 1, got {k}")
    src = VectorSource(corpus, "corpus", BadRows(on_bad), chunk_rows, device)
    q = torch.as_tensor(np.asarray(queries) if not isinstance(queries, torch.Tensor) else queries)
    q = q.to(device=device, dtype=torch.float32)
    if q.ndim != 2 or q.shape[1] != src.dim:
        raise ModgapError(f"queries have shape {tuple(q.shape)}; {src.label} holds D={src.dim} vectors")
    q_norms = torch.linalg.vector_norm(q, dim=1)
    if metric == "cosine":
        unusable = unusable_rows(q_norms)
        if bool(unusable.any()):
            bad = torch.nonzero(unusable).flatten().tolist()
            raise ModgapError(f"queries {bad[:10]} are NaN, Inf or zero vectors")
        q = q / q_norms[:, None]
    q_sq = q_norms * q_norms
    n_q = q.shape[0]
    best = torch.full((n_q, 0), float("-inf"), device=device)
    best_rows = torch.zeros((n_q, 0), dtype=torch.long, device=device)
    for rows in src.chunks(rows=(0, src.rows)):
        kept = torch.arange(rows.start, rows.start + len(rows.keep if rows.keep is not None else rows.x))
        if rows.keep is not None:
            kept = kept[torch.from_numpy(rows.keep)]
        kept = kept.to(device)
        new_best, new_rows = [], []
        for b in range(0, n_q, query_block):
            s = _score(q[b : b + query_block], q_sq[b : b + query_block], rows.x, rows.norms, metric)
            idx = _chunk_top(s, min(k, s.shape[1]))
            top = torch.gather(s, 1, idx)
            # Earlier rows come first in the candidate list, so a stable sort keeps them first among ties.
            cand = torch.cat([best[b : b + query_block], top], dim=1)
            cand_rows = torch.cat([best_rows[b : b + query_block], kept[idx]], dim=1)
            order = torch.sort(cand, dim=1, descending=True, stable=True).indices[:, :k]
            new_best.append(torch.gather(cand, 1, order))
            new_rows.append(torch.gather(cand_rows, 1, order))
        best, best_rows = torch.cat(new_best), torch.cat(new_rows)
    if best.shape[1] < k:
        raise ModgapError(f"{src.label}: only {best.shape[1]} usable rows, fewer than k={k}")
    return SearchResult(best.cpu().numpy().astype(np.float32), best_rows.cpu().numpy()).named(src.store)


def _chunk_top(s: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of each row's ``k`` best scores, best first and ties by column (the earlier row):
    ``torch.topk`` orders tied scores arbitrarily, and where the k-th score ties with an unchosen column it
    chooses among them arbitrarily too; those (rare) rows are redone with a stable sort."""
    top, idx = torch.topk(s, k, dim=1)
    kth = top[:, -1]
    unsure = torch.nonzero((s == kth[:, None]).sum(1) != (top == kth[:, None]).sum(1)).flatten().tolist()
    idx, by_column = torch.sort(idx, dim=1)  # ties by column: sort the chosen by column, then stably by score
    order = torch.sort(torch.gather(top, 1, by_column), dim=1, descending=True, stable=True).indices
    idx = torch.gather(idx, 1, order)
    for r in unsure:
        idx[r] = torch.sort(s[r], descending=True, stable=True).indices[:k]
    return idx
