"""modgap._kernels (compiled float16 kernels) against NumPy and float64 oracles, and modgap's NumPy code kept
as the fallback: the same results with the kernels off (``arrays.KERNELS = None``, what ``MODGAP_KERNELS=0``
does) for every path that uses them."""

from pathlib import Path

import numpy as np
import pytest

from conftest import gapped_pair, make_store
from modgap import arrays
from modgap.align import apply_to_store, make_aligner
from modgap.align.methods import _CentroidCorrected
from modgap.align.stats import SOURCE
from test_align import reference


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def test_the_kernels_are_built_and_used_where_the_cpu_has_them():
    if not {"avx2", "f16c", "fma"} <= _cpu_flags():
        pytest.skip("not an x86-64 CPU with AVX2/F16C/FMA: modgap runs its NumPy code here")
    assert arrays.KERNELS is not None, "modgap._kernels is not built: `pip install -e .` needs a C compiler"


@pytest.fixture(params=["compiled", "numpy"])
def kernels(request, monkeypatch):
    """Runs a test with the kernels and again with modgap's NumPy code alone."""
    if request.param == "compiled" and arrays.KERNELS is None:
        pytest.skip("the kernels are not available on this CPU")
    if request.param == "numpy":
        monkeypatch.setattr(arrays, "KERNELS", None)
        monkeypatch.setattr("modgap.align.methods.KERNELS", None)
    return request.param


def test_float16_conversions_give_numpys_bits_on_both_paths(kernels, rng):
    h = np.arange(2**16, dtype=np.uint16).view(np.float16)  # every float16, NaN payloads included
    out = arrays.half_to_float(h, np.empty(h.shape, np.float32))
    np.testing.assert_array_equal(out.view(np.uint32), h.astype(np.float32).view(np.uint32))
    finite = h[np.isfinite(h)]
    back = arrays.float_to_half(finite.astype(np.float32), np.empty(finite.shape, np.float16))
    np.testing.assert_array_equal(back.view(np.uint16), finite.view(np.uint16))
    x = np.concatenate([rng.standard_normal(100_003).astype(np.float32) * s for s in (1e-6, 1.0, 3e4)])
    x[[5, 77_777]] = np.nan, -np.inf  # a NaN sends the whole array down the exact NumPy path
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(np.float16)
    got = arrays.float_to_half(x, np.empty(x.shape, np.float16))
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("dim", [1, 7, 16, 33, 768])
def test_rows_and_norms_are_the_cast_and_the_float64_norms(kernels, rng, dim):
    x = (rng.standard_normal((50, dim)) * rng.uniform(0.01, 100, (50, 1))).astype(np.float16)
    x[3] = 0
    x[4, dim // 2] = np.nan
    x[5, 0] = -np.inf
    out = np.full(x.shape, 7.0, np.float32)
    norms = arrays.rows_and_norms(x, out)
    good = np.ones(50, bool)
    good[[3, 4, 5]] = False
    np.testing.assert_array_equal(out[good], x[good].astype(np.float32))
    exact = np.linalg.norm(x[good].astype(np.float64), axis=1)
    np.testing.assert_allclose(norms[good], exact, rtol=3e-7)
    assert norms[3] == 0 and not np.isfinite(norms[4]) and not np.isfinite(norms[5])  # the bad-row rule's inputs


def test_non_contiguous_rows_take_the_numpy_path(rng):
    x = rng.standard_normal((40, 24)).astype(np.float16)[:, ::2]
    out = np.empty(x.shape, np.float32)
    norms = arrays.rows_and_norms(x, out)
    np.testing.assert_array_equal(out, x.astype(np.float32))
    np.testing.assert_allclose(norms, np.linalg.norm(x.astype(np.float64), axis=1), rtol=3e-7)


@pytest.mark.parametrize("dim", [5, 16, 300])
def test_realign_float16_output_against_the_float64_oracle(kernels, rng, dim):
    t, i = gapped_pair(rng, 900, 700, dim)
    a = make_aligner("realign").fit(t, i)
    x = t.copy()
    norms = arrays.row_norms(x)
    got = a.transform_rows_as(x, norms, "float16")
    assert got.dtype == np.float16 and got.shape == t.shape
    np.testing.assert_allclose(got.astype(np.float64), reference("realign", t, i), atol=2 ** -11 + 2e-6)
    direct = _CentroidCorrected.transform_rows(a, t.copy(), norms)  # the formula without any fusion
    ulp = np.spacing(np.abs(direct).astype(np.float16)).astype(np.float64)
    assert (np.abs(got.astype(np.float64) - direct) <= ulp).all()  # at most one float16 step apart


def test_realign_degenerate_rows_take_the_direct_formula(kernels, rng):
    t, i = gapped_pair(rng, 300, 300, 8)
    a = make_aligner("realign").fit(t, i)
    offset = a.state["offset"]
    x = t[:10].copy()
    x[4] = -offset / np.linalg.norm(offset)  # s x̂ + c = 0 when s = |c|: forced below, the cancellation case
    a.state["scale"] = np.float64(np.linalg.norm(offset))
    a._cache.clear()
    norms = arrays.row_norms(x)
    got = a.transform_rows_as(x.copy(), norms, "float16")
    expected = arrays.store_values(_CentroidCorrected.transform_rows(a, x.copy(), norms), "float16")
    np.testing.assert_array_equal(got[np.arange(10) != 4], expected[np.arange(10) != 4])


def test_realign_output_into_a_given_buffer(kernels, rng):
    t, i = gapped_pair(rng, 200, 150, 16)
    a = make_aligner("realign").fit(t, i)
    x = t.astype(np.float32)
    norms = arrays.row_norms(x)
    expected = a.transform_rows_as(x.copy(), norms, "float16")
    out = np.empty_like(expected)
    assert a.transform_rows_as(x.copy(), norms, "float16", out=out) is out
    np.testing.assert_array_equal(out, expected)
    strided = np.zeros((200, 32), np.float16)[:, ::2]  # not contiguous: the NumPy formula, then a copy into it
    assert a.transform_rows_as(x.copy(), norms, "float16", out=strided) is strided
    direct = _CentroidCorrected.transform_rows(a, x.copy(), norms)
    ulp = np.spacing(np.abs(direct).astype(np.float16)).astype(np.float64)
    assert (np.abs(strided.astype(np.float64) - direct) <= ulp).all()


@pytest.mark.parametrize("dim", [5, 16, 300])
def test_realign_second_pass_sums_against_float64(kernels, rng, dim):
    t, i = gapped_pair(rng, 900, 700, dim)
    a = make_aligner("realign").fit(t, i)
    x = t.astype(np.float32)
    stats = a.new_stats(1, dim, (SOURCE,))
    a.accumulate(1, SOURCE, x, arrays.row_norms(x), stats)
    st = a.state
    x64 = x.astype(np.float64)
    x_hat = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    y = st["scale"] * x_hat + st["offset"]
    expected = (y / np.linalg.norm(y, axis=1, keepdims=True)).sum(0)  # the sum of ŷ, as the pass defines it
    assert stats[SOURCE].n == 900
    np.testing.assert_allclose(stats[SOURCE].sum, expected, rtol=2e-6, atol=2e-6 * np.abs(expected).max())


def test_realign_second_pass_with_a_degenerate_row_takes_numpy(kernels, rng):
    t, i = gapped_pair(rng, 300, 300, 8)
    a = make_aligner("realign").fit(t, i)
    offset = a.state["offset"]
    x = t[:10].astype(np.float32)
    x[4] = -offset / np.linalg.norm(offset)
    a.state["scale"] = np.float64(np.linalg.norm(offset))
    a._cache.clear()
    norms = arrays.row_norms(x)
    stats = a.new_stats(1, 8, (SOURCE,))
    a.accumulate(1, SOURCE, x.copy(), norms, stats)
    direct = a.new_stats(1, 8, (SOURCE,))
    _CentroidCorrected.accumulate(a, 1, SOURCE, x.copy(), norms, direct)  # the formula without any fusion
    assert stats[SOURCE].n == 10
    np.testing.assert_array_equal(stats[SOURCE].sum, direct[SOURCE].sum)  # the chunk went the direct way, whole


def test_apply_to_store_is_the_same_with_and_without_kernels(tmp_path, rng, monkeypatch):
    t, i = gapped_pair(rng, 2000, 1500, 48)
    ts = make_store(tmp_path / "t", t, dtype="float16", shard_rows=700)
    its = make_store(tmp_path / "i", i, dtype="float16", prefix="i")
    outputs = []
    for on in (True, False):
        if not on:
            monkeypatch.setattr(arrays, "KERNELS", None)
            monkeypatch.setattr("modgap.align.methods.KERNELS", None)
        a = make_aligner("realign").fit(ts, its, chunk_rows=128)
        outputs.append((a.state, apply_to_store(a, ts, tmp_path / f"out-{on}", chunk_rows=128).to_numpy(np.float32)))
    (s1, y1), (s0, y0) = outputs
    for k in s1:
        np.testing.assert_allclose(s1[k], s0[k], rtol=1e-5, atol=1e-7, err_msg=k)  # float32 norms, summed in float64
    assert np.abs(y1 - y0).max() <= 2**-11 and (y1 != y0).mean() < 0.01  # a float16 step, on a few values


def test_kernel_arguments_are_checked():
    if arrays.KERNELS is None:
        pytest.skip("the kernels are not available on this CPU")
    k = arrays.KERNELS
    with pytest.raises(ValueError, match="half_to_float out: buffer of 4 bytes, 8 needed"):
        k.half_to_float(np.zeros(2, np.float16), np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="not whole rows"):
        k.half_rows(np.zeros(5, np.float16), np.zeros(5, np.float32), np.zeros(1, np.float32), 2)
    with pytest.raises(ValueError, match="realign_rows: x must be"):
        z = np.zeros(4, np.float32)
        k.realign_rows(np.zeros(6, np.float32), np.zeros(2, np.float32), z, z, 1.0, 0, 0, 0, 1e-4,
                       np.zeros(8, np.float16))  # fmt: skip
    with pytest.raises(ValueError, match="realign_sums: x must be"):
        k.realign_sums(np.zeros(6, np.float32), np.zeros(2, np.float32), np.zeros(4, np.float32), 1.0, 0, 1e-4,
                       np.zeros(4))  # fmt: skip
    with pytest.raises(ValueError, match="realign_sums acc: buffer of 16 bytes, 32 needed"):
        k.realign_sums(np.zeros(8, np.float32), np.zeros(2, np.float32), np.zeros(4, np.float32), 1.0, 0, 1e-4,
                       np.zeros(2))  # fmt: skip
    with pytest.raises(ValueError, match="not C-contiguous"):
        k.half_to_float(np.zeros((4, 4), np.float16)[:, ::2], np.zeros(8, np.float32))
