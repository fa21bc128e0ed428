"""Mergeable sufficient statistics.

Every aligner is fitted from sums (count, sum of vectors, optionally sum of outer products). Sums
from disjoint parts of the data add up to the sums of the whole, so shards can be fitted in separate
processes and merged exactly (up to float64 rounding) with one all-reduce.
"""

from __future__ import annotations

from modgap.lazy import lazy_module

torch = lazy_module("torch")

SOURCE, TARGET = "source", "target"  # the two roles of a fit: the rows to move and the distribution to reach

# Rows per block for the float32 partial sums; blocks are then added in float64.
_BLOCK = 256


def weighted_row_sum(x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """float64 sum over rows of ``w[:, None] * x``.

    Computed as float32 dot products over blocks of 256 rows (fast BLAS, small rounding error) whose
    partial sums are added in float64, so the error does not grow with the number of rows.
    """
    n, d = x.shape
    if w is None:
        w = torch.ones(n, dtype=x.dtype, device=x.device)
    full = n - n % _BLOCK
    total = torch.zeros(d, dtype=torch.float64, device=x.device)
    if full:
        parts = torch.bmm(w[:full].view(-1, 1, _BLOCK), x[:full].view(-1, _BLOCK, d))
        total += parts.squeeze(1).sum(0, dtype=torch.float64)
    if full < n:
        total += (w[full:] @ x[full:]).double()
    return total


class Moments:
    """count, sum of x, and (if ``second_order``) sum of x x^T, all float64."""

    def __init__(self, dim: int, second_order: bool = False, device: torch.device | str = "cpu"):
        self.dim = dim
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device) if second_order else None

    def update(self, x: torch.Tensor, w: torch.Tensor | None = None) -> None:
        """Add rows ``x`` (scaled row-wise by ``w`` if given) to the sums."""
        self.count += x.shape[0]
        self.sum += weighted_row_sum(x, w)
        if self.outer is not None:
            xd = x.double() if w is None else x.double() * w.double()[:, None]
            self.outer += xd.T @ xd

    def add_count(self, n: int) -> None:
        self.count += n

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.count, self.sum, self.outer) if t is not None]

    def merge_(self, other: Moments) -> Moments:
        for a, b in zip(self.tensors(), other.tensors(), strict=True):
            a += b
        return self

    @property
    def n(self) -> int:
        return int(self.count.item())

    def mean(self) -> torch.Tensor:
        return self.sum / self.count

    def covariance(self) -> torch.Tensor:
        """Population covariance (divides by n)."""
        assert self.outer is not None
        mu = self.mean()
        return self.outer / self.count - torch.outer(mu, mu)
