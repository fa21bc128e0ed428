"""Mergeable sufficient statistics.

Every aligner is fitted from sums (count, sum of vectors, optionally sum of outer products). Sums
from disjoint parts of the data add up to the sums of the whole, so shards can be fitted in separate
processes and merged exactly (up to float64 rounding) with one all-reduce. The sums are float64 NumPy
arrays whatever the rows are (NumPy, or tensors on a device): they are small, and the fit that follows
them is float64 linear algebra.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modgap.arrays import outer_sum64, row_sum64

SOURCE, TARGET = "source", "target"  # the two roles of a fit: the rows to move and the distribution to reach


class Moments:
    """count, sum of x, and (if ``second_order``) sum of x x^T, all float64."""

    def __init__(self, dim: int, second_order: bool = False):
        self.dim = dim
        self.count = np.zeros(1, dtype=np.float64)
        self.sum = np.zeros(dim, dtype=np.float64)
        self.outer = np.zeros((dim, dim), dtype=np.float64) if second_order else None

    def update(self, x: Any, w: Any | None = None) -> None:
        """Add rows ``x`` (NumPy or torch; scaled row-wise by ``w`` if given) to the sums."""
        self.count += x.shape[0]
        self.sum += row_sum64(x, w)
        if self.outer is not None:
            self.outer += outer_sum64(x, w)

    def arrays(self) -> list[np.ndarray]:
        """The sums, in a fixed order (what an all-reduce adds up in place)."""
        return [a for a in (self.count, self.sum, self.outer) if a is not None]

    def add(self, other: Moments) -> None:
        """Add the sums of ``other`` (disjoint rows) to these."""
        for a, b in zip(self.arrays(), other.arrays(), strict=True):
            a += b

    @property
    def n(self) -> int:
        return int(self.count[0])

    def mean(self) -> np.ndarray:
        return self.sum / self.count[0]

    def covariance(self) -> np.ndarray:
        """Population covariance (divides by n)."""
        assert self.outer is not None
        mu = self.mean()
        return self.outer / self.count[0] - np.outer(mu, mu)
