"""Gap figures against cases with known answers and independent computations."""

import numpy as np
import pytest

from conftest import gapped_pair, make_store
from modgap.align import make_aligner
from modgap.gap import gap_report, metrics, read_pairs


def test_centroid_figures():
    f = metrics.centroid_figures(np.array([1.0, 0.0]), np.array([0.0, 0.5]))
    assert f["centroid_distance"] == pytest.approx(np.sqrt(1.25)) and f["centroid_cosine"] == pytest.approx(0.0)


def test_effective_rank_and_power_law():
    assert metrics.effective_rank(np.ones(10)) == pytest.approx(10)
    assert metrics.effective_rank(np.array([1.0, 0, 0])) == pytest.approx(1)
    k = np.arange(1, 200)
    assert metrics.power_law_exponent(k**-1.5) == pytest.approx(1.5, abs=1e-6)


def test_subspace_overlap_and_spectral_correlation(rng):
    q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    assert metrics.subspace_overlap(q, q, 5) == pytest.approx(1)
    assert metrics.subspace_overlap(q[:, :5], q[:, 5:10], 5) == pytest.approx(0, abs=1e-12)
    v = np.linspace(5, 1, 20)
    assert metrics.spectral_correlation(v, 3 * v, 20) == pytest.approx(1)


def test_fixed_frame_splits_the_gap_orthogonally(rng):
    x = rng.normal(size=(500, 6)) * np.array([3, 2, 1, 1e-4, 1e-4, 1e-4])
    cov = np.cov(x.T, bias=True)
    m_t, m_i = np.zeros(6), np.array([0.3, 0, 0, 0.4, 0, 0])
    f = metrics.fixed_frame_decomposition(cov, cov, m_t, m_i, energy=0.99)
    assert f["frame_rank"] == 3
    assert f["bias_in_frame"] == pytest.approx(0.3, abs=1e-3) and f["bias_orthogonal"] == pytest.approx(0.4, abs=1e-3)
    assert f["bias_in_frame"] ** 2 + f["bias_orthogonal"] ** 2 == pytest.approx(0.25)


def test_separability_mixing_and_mmd_on_extreme_cases(rng):
    a = rng.normal(size=(400, 8))
    b = rng.normal(size=(400, 8))
    far = b + 20
    assert metrics.modality_separability(a, far) == 1.0
    assert abs(metrics.modality_separability(a, b) - 0.5) < 0.1
    assert metrics.knn_mixing(a, far) == 0.0
    assert abs(metrics.knn_mixing(a, b) - 0.5) < 0.05
    assert metrics.mmd_rbf(a, b) < 0.01 < metrics.mmd_rbf(a, far)


def test_preservation_figures(rng):
    x = rng.normal(size=(300, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert metrics.neighbourhood_overlap(x, x @ q) == pytest.approx(1)  # rotations keep neighbours
    assert metrics.similarity_correlation(x, x @ q) == pytest.approx(1)


def test_paired_figures_against_direct_ranking(rng):
    t = rng.normal(size=(50, 8))
    v = t + rng.normal(size=(50, 8)) * 0.8
    f = metrics.paired_figures(t, v)
    tn, vn = t / np.linalg.norm(t, axis=1, keepdims=True), v / np.linalg.norm(v, axis=1, keepdims=True)
    sims = tn @ vn.T
    rank = (sims > sims[np.arange(50), np.arange(50)][:, None]).sum(1)
    assert f["t2i_R@1"] == pytest.approx(np.mean(rank < 1)) and f["t2i_R@5"] == pytest.approx(np.mean(rank < 5))
    assert f["paired_cosine"] == pytest.approx(np.mean(np.sum(tn * vn, 1)))


def test_report_on_stores_with_aligner_and_pairs(tmp_path, rng):
    t, i = gapped_pair(rng, 800, 700, 12)
    ts, its = make_store(tmp_path / "t", t, prefix="t"), make_store(tmp_path / "i", i, prefix="i")
    a = make_aligner("realign").fit(ts, its)
    r = gap_report(ts, its, aligner=a, pairs=[(f"t{k}", f"i{k}") for k in range(100)], sample=500)
    b, af = r["before"], r["after"]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    assert b["centroid_distance"] == pytest.approx(np.linalg.norm(unit(t).mean(0) - unit(i).mean(0)), rel=1e-5)
    assert af["centroid_distance"] < 0.05 * b["centroid_distance"]
    assert af["separability"] < b["separability"] and af["knn_mixing@10"] > b["knn_mixing@10"]
    assert 0 < r["preservation"]["neighbourhood_overlap@10"] <= 1
    assert r["pairs"]["before"]["pairs"] == 100


def test_read_pairs_formats(tmp_path):
    (tmp_path / "p.tsv").write_text("text_id\timage_id\na\tb\n")
    (tmp_path / "p.jsonl").write_text('{"text_id": "a", "image_id": "b"}\n')
    assert read_pairs(tmp_path / "p.tsv") == read_pairs(tmp_path / "p.jsonl") == [("a", "b")]
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(Exception, match="needs text_id and image_id"):
        read_pairs(tmp_path / "bad.csv")
