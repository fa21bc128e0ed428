"""Detection and reporting of vectors that cannot be used: NaN, Inf, or all zeros.

The one rule, in NumPy (:func:`bad_row_mask`) and torch (:func:`unusable_rows`) form: a row is unusable when
its norm is not finite (a NaN or Inf component, or overflow) or zero. Everything that streams vectors
(import, align, gap, training) applies it, so bad rows are never silently turned into zeros.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from modgap import arrays
from modgap.errors import BadVectorsError, ModgapError
from modgap.files import write_jsonl
from modgap.lazy import lazy_module

torch = lazy_module("torch")

if TYPE_CHECKING:
    from modgap.store.store import EmbeddingStore

OnBad = Literal["error", "skip"]
ON_BAD_CHOICES = ("error", "skip")


def bad_row_mask(norms: np.ndarray) -> np.ndarray:
    """Rows whose norm is non-finite (a NaN or Inf component, or overflow) or zero."""
    return ~np.isfinite(norms) | (norms == 0)


def unusable_rows(norms: torch.Tensor) -> torch.Tensor:
    """The torch form of :func:`bad_row_mask`."""
    return ~torch.isfinite(norms) | (norms == 0)


def row_norms(x: np.ndarray) -> np.ndarray:
    """Float32 row norms of rows of any dtype; NaN/Inf components give non-finite norms."""
    return arrays.row_norms(np.asarray(x, dtype=np.float32))


def bad_reason(row: np.ndarray) -> str:
    row = np.asarray(row, dtype=np.float64)
    if np.isnan(row).any():
        return "nan"
    if np.isinf(row).any():
        return "inf"
    if not row.any():
        return "zero"
    return "overflow"


class BadRows:
    """Collects bad rows under ``--on-bad skip``; raises under ``--on-bad error``."""

    def __init__(self, on_bad: OnBad = "error"):
        if on_bad not in ON_BAD_CHOICES:
            raise ModgapError(f"--on-bad must be one of {ON_BAD_CHOICES}, got {on_bad!r}")
        self.on_bad = on_bad
        self.rows: list[dict[str, str]] = []
        self._seen: set[tuple[str, str]] = set()

    def handle(self, where: str, ids: Sequence[str], vectors: np.ndarray, mask: np.ndarray) -> None:
        """Record (or raise for) the rows of ``vectors`` flagged in ``mask``; ``where`` names the source."""
        idx = np.flatnonzero(mask)
        if not len(idx):
            return
        bad_ids = [str(ids[i]) for i in idx]
        reasons = [bad_reason(vectors[i]) for i in idx]
        if self.on_bad == "error":
            shown = ", ".join(f"{k!r} ({r})" for k, r in list(zip(bad_ids, reasons, strict=True))[:10])
            more = f" and {len(bad_ids) - 10} more" if len(bad_ids) > 10 else ""
            raise BadVectorsError(
                f"{where}: {len(bad_ids)} unusable vector(s) (NaN, Inf or zero): {shown}{more}; "
                "rerun with --on-bad skip to leave them out and list them in a report",
                bad_ids,
            )
        self.add([{"where": where, "id": k, "reason": r} for k, r in zip(bad_ids, reasons, strict=True)])

    def add(self, rows: Iterable[dict[str, str]]) -> None:
        """Record report rows, once per (where, id): later passes and other ranks see the same rows."""
        for r in rows:
            if (r["where"], r["id"]) not in self._seen:
                self._seen.add((r["where"], r["id"]))
                self.rows.append(r)

    def write(self, path: str | Path) -> None:
        write_jsonl(path, self.rows)


def usable_store_rows(
    store: EmbeddingStore, rows: Sequence[int] | np.ndarray, bad: BadRows, *, chunk: int = 65536
) -> np.ndarray:
    """The one check for vectors read by id or row (training, tuning, generation, evaluation): a mask of the
    ``rows`` of ``store`` that may be used. A NaN/Inf/zero vector raises under ``--on-bad error`` (naming the
    store and ids) or is recorded in ``bad`` and masked out under ``--on-bad skip``."""
    rows = np.asarray(rows, dtype=np.int64)
    keep = np.ones(len(rows), dtype=bool)
    ids = None
    for s in range(0, len(rows), chunk):
        part = rows[s : s + chunk]
        vectors = store.take(part)
        mask = bad_row_mask(row_norms(vectors))
        if mask.any():
            ids = ids if ids is not None else store.ids()
            bad.handle(str(store.path), [ids[r] for r in part], vectors, mask)
            keep[s : s + len(part)] = ~mask
    return keep
