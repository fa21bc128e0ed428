"""Per-shard sums of a store's unit vectors, kept in its manifest.

The writer adds up, for each shard it commits, the L2-normalised rows exactly as a fit's first pass reads
them back (the stored values, float32 norms, the same bad-row rule), so a fit whose first pass needs only
the means of the unit vectors (mean-shift, C3, ReAlign) takes them from the manifest instead of reading the
shards again: ReAlign reads the text once for its centroid pass and once to write, not three times, and
never reads the images. The sums are a few kilobytes per 256 MiB shard and are tied to the shard entry that
carries its checksum; a shard without them, or with any unusable row (the fit must then report or refuse
those rows by id), makes the fit read the store as before.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from modgap.arrays import row_sum64, rows_and_norms

_CHUNK_BYTES = 2**20  # float32 scratch per step, as the fit's chunks: stays in a core's cache


def step_rows(dim: int) -> int:
    """Rows per step of :meth:`UnitSums.add_rows` (a multiple of row_sum64's blocks of 256)."""
    return max(256, _CHUNK_BYTES // (4 * dim) // 256 * 256)


def new_scratch(dim: int) -> np.ndarray:
    """A float32 buffer for :meth:`UnitSums.add_rows` to convert each step into."""
    return np.empty((step_rows(dim), dim), dtype=np.float32)


@dataclass
class UnitSums:
    """Usable rows, unusable rows, and the float64 sum of the usable rows divided by their norms."""

    rows: int
    bad: int
    total: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> UnitSums:
        return cls(0, 0, np.zeros(dim, dtype=np.float64))

    def add_rows(self, values: np.ndarray, scratch: np.ndarray) -> None:
        """Add rows of a store's dtype (n, D), in steps converted into ``scratch`` (:func:`new_scratch`)."""
        step = len(scratch)
        for s in range(0, len(values), step):
            part = values[s : s + step]
            x = scratch[: len(part)]
            norms = rows_and_norms(part, x)
            usable = np.isfinite(norms) & (norms != 0)  # the rule of store.checks.bad_row_mask
            if not usable.all():
                self.bad += int((~usable).sum())
                x, norms = x[usable], norms[usable]
            self.rows += len(x)
            if len(x):
                self.total += row_sum64(x, 1.0 / norms)

    def add(self, other: UnitSums) -> None:
        self.rows += other.rows
        self.bad += other.bad
        self.total += other.total

    def to_json(self) -> dict[str, Any]:
        # float64 bytes, not decimal text: exact, and a third the size of 1280 printed floats
        raw = np.ascontiguousarray(self.total, dtype="<f8").tobytes()
        return {"rows": self.rows, "bad": self.bad, "sum_f64": base64.b64encode(raw).decode("ascii")}

    @classmethod
    def from_json(cls, d: dict[str, Any], dim: int) -> UnitSums:
        total = np.frombuffer(base64.b64decode(d["sum_f64"]), dtype="<f8").astype(np.float64)
        if total.shape != (dim,):
            raise ValueError(f"unit sums hold {total.size} values, the store has dim={dim}")
        return cls(int(d["rows"]), int(d["bad"]), total)


def stored_unit_sums(manifest: Any) -> UnitSums | None:
    """The sums over a store's shards (a :class:`~modgap.store.manifest.Manifest`), or None when a shard has none
    (written before the sums existed, or by a writer told not to keep them) or they do not parse."""
    out = UnitSums.empty(manifest.dim)
    for shard in manifest.shards:
        if shard.unit_sums is None:
            return None
        try:
            part = UnitSums.from_json(shard.unit_sums, manifest.dim)
        except (KeyError, TypeError, ValueError):
            return None
        if part.rows + part.bad != shard.rows:
            return None
        out.add(part)
    return out if manifest.shards else None
