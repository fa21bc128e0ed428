"""Each aligner against an independent float64 NumPy computation, plus artifacts, stores and bad input."""

import json

import numpy as np
import pytest
import torch

from conftest import gapped_pair, make_store
from modgap.align import METHODS, apply_to_store, load_aligner, make_aligner, parse_params
from modgap.align.methods import gaussian_noise_rows
from modgap.errors import BadVectorsError, ModgapError
from modgap.store import EmbeddingStore

ATOL = 2e-6  # float32 arithmetic on float64-accumulated statistics


def unit(a):
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def sqrtm_psd(c):
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def reference(method, t, i, **p):
    """Independent float64 implementations of the formulas in the method descriptions."""
    tu, iu = unit(t), unit(i)
    mt, mi = tu.mean(0), iu.mean(0)
    if method == "none":
        return tu
    if method == "mean-shift":
        return tu - mt + (mi if p.get("add_target_mean") else 0)
    if method == "c3":
        return unit(tu - mt)
    if method == "realign":
        tr_t = ((tu - mt) ** 2).sum(1).mean()
        tr_i = ((iu - mi) ** 2).sum(1).mean()
        x1 = unit(np.sqrt(tr_i / tr_t) * (tu - mt) + mi)
        return unit(x1 - x1.mean(0) + mi)
    if method == "gaussian-ot":
        a = p.get("shrinkage", 1e-3)
        d = t.shape[1]

        def cov(x, m):
            c = (x - m).T @ (x - m) / len(x)
            return (1 - a) * c + a * np.trace(c) / d * np.eye(d)

        ct, ci = cov(tu, mt), cov(iu, mi)
        rt = sqrtm_psd(ct)
        irt = np.linalg.inv(rt)
        A = irt @ sqrtm_psd(rt @ ci @ rt) @ irt
        x1 = unit(mi + (tu - mt) @ A.T)
        return unit(x1 - x1.mean(0) + mi)
    raise AssertionError(method)


@pytest.mark.parametrize(
    "method,params",
    [
        ("none", {}),
        ("mean-shift", {}),
        ("mean-shift", {"add_target_mean": True}),
        ("c3", {}),
        ("realign", {}),
        ("gaussian-ot", {}),
        ("gaussian-ot", {"shrinkage": 0.1}),
    ],
)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_aligner_matches_float64_reference(rng, method, params, backend):
    """The same formulas on both backends (NumPy: the CPU default; torch: tensors and --device cuda)."""
    t, i = gapped_pair(rng, 1500, 1100, 24)
    if backend == "torch":
        t, i = torch.from_numpy(t), torch.from_numpy(i)
    aligner = make_aligner(method, **params).fit(t, i, chunk_rows=333, backend=backend)  # chunks do not divide
    out = aligner.transform(t)
    assert isinstance(out, torch.Tensor if backend == "torch" else np.ndarray)
    expected = reference(method, np.asarray(t), np.asarray(i), **params)
    np.testing.assert_allclose(np.asarray(out), expected, atol=ATOL)


def test_realign_properties(rng):
    t, i = gapped_pair(rng, 2000, 1500, 16)
    a = make_aligner("realign").fit(t, i)
    out = a.transform(t).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)
    mu_i = unit(i).mean(0)
    before = np.linalg.norm(unit(t).mean(0) - mu_i)
    after = np.linalg.norm(out.mean(0) - mu_i)
    assert after < before / 20
    np.testing.assert_allclose(a.transform_target(i), unit(i), atol=1e-6)  # images untouched
    assert a.counts == {"source": 2000, "target": 1500}


def test_c3_centres_targets_with_their_own_mean(rng):
    t, i = gapped_pair(rng, 500, 400, 8)
    a = make_aligner("c3").fit(t, i)
    iu = unit(i)
    np.testing.assert_allclose(a.transform_target(i), unit(iu - iu.mean(0)), atol=ATOL)


def test_noise_is_deterministic_per_row_whatever_the_chunking(rng):
    x = rng.normal(size=(3000, 6)).astype(np.float32)
    a = make_aligner("noise", std=0.5, seed=7)
    whole = a.transform(x)
    parts = np.concatenate([a.transform(x[s : s + 700], row_start=s) for s in range(0, 3000, 700)])
    np.testing.assert_array_equal(whole, parts)
    noise = gaussian_noise_rows(7, 0, 3000, 6)
    np.testing.assert_allclose(whole, unit(x) + 0.5 * noise, atol=1e-6)
    assert abs(noise.std() - 1) < 0.05


def test_train_transforms_add_fresh_noise(rng):
    t, i = gapped_pair(rng, 300, 300, 8)
    c3 = make_aligner("c3", noise_std=0.1).fit(t, i)
    g = torch.Generator().manual_seed(0)
    a, b = c3.train_transform(torch.from_numpy(t), g), c3.train_transform(torch.from_numpy(t), g)
    clean = c3.transform(torch.from_numpy(t))
    assert not torch.equal(a, b)
    assert abs(float((a - clean).std()) - 0.1) < 0.01


def test_fit_is_independent_of_chunk_size(rng):
    t, i = gapped_pair(rng, 1000, 1000, 12)
    a = make_aligner("realign").fit(t, i, chunk_rows=1000)
    b = make_aligner("realign").fit(t, i, chunk_rows=77)
    for k in a.state:
        np.testing.assert_allclose(a.state[k], b.state[k], rtol=0, atol=1e-7)  # float32 blocks of 256 rows


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(tmp_path, rng, method):
    t, i = gapped_pair(rng, 400, 300, 8)
    a = make_aligner(method).fit(t, i)
    a.save(tmp_path / "al")
    b = load_aligner(tmp_path / "al")
    assert type(b) is type(a) and b.params() == a.params()
    np.testing.assert_array_equal(b.transform(t), a.transform(t))
    cfg = json.loads((tmp_path / "al" / "aligner.json").read_text())
    assert cfg["method"] == method and cfg["provenance"]["source"]["rows"] == 400


def test_apply_to_store_keeps_ids_order_and_metadata(tmp_path, rng):
    t, i = gapped_pair(rng, 700, 500, 16)
    ts = make_store(
        tmp_path / "t",
        t,
        prefix="t",
        dtype="float16",
        shard_rows=256,
        metadata={"text": [f"caption {k}" for k in range(700)]},
        modality="text",
    )
    its = make_store(tmp_path / "i", i, prefix="i", dtype="float16", modality="image")
    a = make_aligner("realign").fit(ts, its, chunk_rows=100)
    out = apply_to_store(a, ts, tmp_path / "out", chunk_rows=100)
    assert out.ids() == ts.ids() and out.dtype == np.float16 and out.normalized
    assert out.read_table().column("text").to_pylist() == [f"caption {k}" for k in range(700)]
    assert out.manifest.extra["aligner"]["method"] == "realign"
    expected = reference("realign", ts.to_numpy(np.float32), its.to_numpy(np.float32))
    np.testing.assert_allclose(out.to_numpy(np.float32), expected, atol=1e-3)  # float16 storage


def test_dimension_mismatch(tmp_path, rng):
    ts = make_store(tmp_path / "t", rng.normal(size=(10, 4)))
    its = make_store(tmp_path / "i", rng.normal(size=(10, 5)))
    with pytest.raises(ModgapError, match=r"dimension mismatch: source .*/t has D=4, target .*/i has D=5"):
        make_aligner("realign").fit(ts, its)
    a = make_aligner("realign").fit(ts, ts)
    with pytest.raises(ModgapError, match="aligner .realign. was fitted on D=4"):
        apply_to_store(a, its, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_store_is_an_error(tmp_path, rng):
    from modgap.store import StoreWriter

    StoreWriter(tmp_path / "e", dim=4, dtype="float32").close()
    its = make_store(tmp_path / "i", rng.normal(size=(10, 4)))
    with pytest.raises(ModgapError, match="the source is empty"):
        make_aligner("realign").fit(EmbeddingStore.open(tmp_path / "e"), its)


def test_bad_vectors_in_fit_name_store_shard_and_ids(tmp_path, rng):
    t, i = gapped_pair(rng, 100, 100, 4)
    t[42, 2] = np.nan
    t[57] = 0
    ts = make_store(tmp_path / "t", t, prefix="t", shard_rows=40)
    its = make_store(tmp_path / "i", i)
    with pytest.raises(
        BadVectorsError, match=r"t/shard-00001.arrow: 2 unusable vector\(s\) .*'t42' \(nan\), 't57' \(zero\)"
    ):
        make_aligner("realign").fit(ts, its)
    a = make_aligner("realign").fit(ts, its, on_bad="skip")
    keep = np.ones(100, bool)
    keep[[42, 57]] = False
    np.testing.assert_allclose(a.transform(t[keep]), reference("realign", t[keep], i), atol=ATOL)
    out = apply_to_store(a, ts, tmp_path / "out", on_bad="skip")
    assert len(out) == 98 and "t42" not in out.ids()
    rows = [json.loads(line) for line in (tmp_path / "out" / "bad_rows.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rows] == [("t42", "nan"), ("t57", "zero")]


def test_parse_params_types_and_errors():
    assert parse_params("gaussian-ot", ["shrinkage=0.5"]) == {"shrinkage": 0.5}
    assert parse_params("mean-shift", ["add-target-mean=true"]) == {"add_target_mean": True}
    with pytest.raises(ModgapError, match="KEY one of"):
        parse_params("realign", ["bogus=1"])
    with pytest.raises(ModgapError, match="not a valid float"):
        parse_params("noise", ["std=abc"])
    with pytest.raises(ModgapError, match="unknown alignment method 'nope'"):
        make_aligner("nope")


def test_realign_fused_arithmetic_equals_the_direct_formula(rng):
    from modgap.align.methods import _CentroidCorrected

    t, i = gapped_pair(rng, 800, 600, 16)
    a = make_aligner("realign").fit(t, i)
    x = torch.from_numpy(t)
    norms = torch.linalg.vector_norm(x, dim=1)
    direct = _CentroidCorrected.transform_rows(a, x.clone(), norms)
    torch.testing.assert_close(a.transform_rows(x.clone(), norms), direct, rtol=0, atol=1e-6)


def test_the_cpu_computes_in_numpy_unless_told_and_a_device_in_torch():
    from modgap.align.fitting import choose_backend

    assert choose_backend("cpu", None) == "numpy" and choose_backend("cpu", "torch") == "torch"
    assert choose_backend("cuda", None) == "torch"
    with pytest.raises(ModgapError, match="the NumPy backend runs on the CPU, not cuda"):
        choose_backend("cuda", "numpy")
    with pytest.raises(ModgapError, match="--backend must be one of"):
        choose_backend("cpu", "jax")
