"""modgap.arrays: the float16 conversions give NumPy's own bits (every float16; float32s of every kind, ties
and the edges of the range included), and the threaded chunk map gives the sequential result exactly."""

import json

import numpy as np
import pytest

from conftest import gapped_pair, make_store
from modgap.align import apply_to_store, make_aligner
from modgap.arrays import float_to_half, half_to_float, store_values
from modgap.store import stream


def test_half_to_float_is_numpys_cast_for_every_float16():
    h = np.arange(2**16, dtype=np.uint16).view(np.float16)
    out = half_to_float(h, np.empty(h.shape, np.float32))
    np.testing.assert_array_equal(out.view(np.uint32), h.astype(np.float32).view(np.uint32))  # NaN payloads too


def test_half_to_float_finds_inf_and_nan_in_an_otherwise_normal_chunk():
    h = np.full((3, 4), 0.25, np.float16)
    h[1, 2], h[2, 0] = np.inf, np.nan
    out = half_to_float(h, np.empty(h.shape, np.float32))
    assert np.isinf(out[1, 2]) and np.isnan(out[2, 0]) and out[0, 0] == 0.25


def _float32_cases(rng):
    scales = (1e-9, 1e-6, 6e-5, 1e-4, 0.05, 1.0, 300.0, 3e4, 1e6)
    random = [(rng.standard_normal(200_000) * s).astype(np.float32) for s in scales]
    # Exact halfway points between neighbouring float16s (ties go to even) and their neighbours.
    ties = (np.arange(0x38800000, 0x47800000, 8192, dtype=np.uint32) + 4096).view(np.float32)
    near = np.concatenate([ties, np.nextafter(ties, np.float32(0)), np.nextafter(ties, np.float32(np.inf))])
    f32 = np.finfo(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.99, 65520, -65520, 2**-14, 2**-24,
                        2**-25, 3 * 2**-26, f32.tiny, f32.max], np.float32)  # fmt: skip
    return np.concatenate([*random, near, -near, special])


def test_float_to_half_is_numpys_cast_rounding_to_nearest_even(rng):
    x = _float32_cases(rng)
    out = float_to_half(x, np.empty(x.shape, np.float16))
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16)
    np.testing.assert_array_equal(out.view(np.uint16), expected.view(np.uint16))


def test_store_values_converts_numpy_rows_and_keeps_their_shape(rng):
    x = rng.standard_normal((5, 7)).astype(np.float32)
    y = store_values(x, "float16")
    assert y.dtype == np.float16 and y.shape == (5, 7)
    np.testing.assert_array_equal(y, x.astype(np.float16))
    same = store_values(x, "float32")
    assert same is not x and np.array_equal(same, x)  # a copy: x may be a buffer the next chunk reuses


@pytest.mark.parametrize("method,dtype", [("realign", "float16"), ("gaussian-ot", "float32")])
def test_threads_give_the_single_thread_result_bit_for_bit(tmp_path, rng, monkeypatch, method, dtype):
    t, i = gapped_pair(rng, 3000, 2000, 16)
    t[[2500, 5, 700]] = np.nan  # bad rows in three chunks: reported in row order whichever thread finds them
    ts = make_store(tmp_path / "t", t, prefix="t", dtype=dtype, shard_rows=700)
    its = make_store(tmp_path / "i", i, prefix="i", dtype=dtype)
    results = []
    for workers in (1, 4):
        monkeypatch.setattr(stream, "MAX_WORKERS", workers)
        monkeypatch.setattr(stream.os, "cpu_count", lambda: 4)
        a = make_aligner(method).fit(ts, its, chunk_rows=64, on_bad="skip")
        out = apply_to_store(a, ts, tmp_path / f"out{workers}", chunk_rows=64, on_bad="skip")
        bad = (out.path / "bad_rows.jsonl").read_text()
        results.append((a.state, out.to_numpy(np.float32), out.ids(), bad))
    (s1, y1, ids1, bad1), (s4, y4, ids4, bad4) = results
    assert bad1 == bad4 and [json.loads(line)["id"] for line in bad1.splitlines()] == ["t5", "t700", "t2500"]
    assert s1.keys() == s4.keys() and all(np.array_equal(s1[k], s4[k]) for k in s1)
    np.testing.assert_array_equal(y1, y4)
    keep = np.ones(len(t), bool)
    keep[[5, 700, 2500]] = False
    np.testing.assert_allclose(y1, a.transform(ts.to_numpy(np.float32)[keep]), atol=1e-3)  # no chunk overwritten
    assert ids1 == ids4 == [k for k in ts.ids() if k not in ("t5", "t700", "t2500")]
