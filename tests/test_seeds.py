"""Per-seed paired differences: the interval every claim table reads."""

from __future__ import annotations

import math

import pytest

from modgap.eval.seeds import format_interval, paired_interval


def test_the_interval_is_students_t_over_the_per_seed_differences():
    # 1..5: mean 3, sd sqrt(2.5), t(0.975, 4) = 2.7764451 (tables) -> half-width 2.7764451 * sqrt(2.5) / sqrt(5).
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert paired_interval([1, 2, 3, 4, 5]) == pytest.approx((3.0, 3.0 - half, 3.0 + half), rel=1e-7)
    assert format_interval([1, 2, 3, 4, 5]) == "+3.000 [+1.037, +4.963]*"
    assert format_interval([-0.01, 0.02, 0.0]) == "+0.003 [-0.035, +0.041]"  # spans 0: no star
    assert format_interval([-0.3, -0.2, -0.25]).endswith("*")  # clear of 0 below: shown too
    mean, low, high = paired_interval([0.4])
    assert mean == 0.4 and math.isnan(low) and math.isnan(high)
