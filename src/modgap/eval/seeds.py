"""Comparing two models over seeds: the mean of their per-seed differences and its 95 % t-interval (each seed
trains both on the same data and scores them on the same test set, so the differences are paired)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_interval(differences: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)`` of per-seed differences, the interval from scipy's one-sample t-test; the bounds
    are NaN with fewer than two seeds."""
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    mean = float(d.mean())
    if len(d) < 2:
        return mean, float("nan"), float("nan")
    low, high = stats.ttest_1samp(d, 0.0).confidence_interval(confidence)
    return mean, float(low), float(high)


def format_interval(differences: Sequence[float]) -> str:
    """``+m [+lo, +hi]`` with ``*`` where the interval excludes 0 (the tables' reading: shown)."""
    mean, low, high = paired_interval(differences)
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]{'*' if low > 0 or high < 0 else ''}"
