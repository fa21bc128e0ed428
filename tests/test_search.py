"""Exact streamed top-k search over a store, checked against a brute-force NumPy computation."""

import numpy as np
import pytest

from conftest import make_store
from modgap.errors import BadVectorsError, ModgapError
from modgap.store import search


def brute_force(q: np.ndarray, x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    if metric == "cosine":
        s = (q64 / np.linalg.norm(q64, axis=1, keepdims=True)) @ (x64 / np.linalg.norm(x64, axis=1, keepdims=True)).T
    elif metric == "dot":
        s = q64 @ x64.T
    else:
        s = -((q64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_search_equals_brute_force_across_shards_chunks_and_query_blocks(tmp_path, rng, metric):
    x = rng.normal(size=(1000, 24)).astype(np.float32) * rng.uniform(0.5, 2, size=(1000, 1)).astype(np.float32)
    q = rng.normal(size=(37, 24)).astype(np.float32)
    store = make_store(tmp_path / "s", x, shard_rows=300)
    got = search(q, store, 7, metric=metric, chunk_rows=128, query_block=10)
    want_s, want_rows = brute_force(q, x, 7, metric)
    np.testing.assert_array_equal(got.rows, want_rows)
    np.testing.assert_allclose(got.scores, want_s, rtol=1e-4, atol=1e-4)
    assert got.ids[3] == [f"r{r}" for r in want_rows[3]]


def test_search_over_an_array_and_k_equal_to_the_corpus(rng):
    x = rng.normal(size=(50, 8)).astype(np.float32)
    got = search(x[:5], x, 50, metric="cosine", chunk_rows=16)
    assert got.ids is None and got.rows.shape == (5, 50)
    np.testing.assert_array_equal(got.rows[:, 0], np.arange(5))  # each query finds itself first
    assert all(sorted(r) == list(range(50)) for r in got.rows.tolist())


def test_bad_rows_stop_the_search_or_are_never_returned(tmp_path, rng):
    x = rng.normal(size=(40, 8)).astype(np.float32)
    x[5] = np.nan
    x[9] = 0
    store = make_store(tmp_path / "s", x)
    with pytest.raises(BadVectorsError, match="r5"):
        search(x[:2], store, 3)
    got = search(rng.normal(size=(4, 8)), store, 38, on_bad="skip", chunk_rows=8)
    assert not {5, 9} & set(got.rows.ravel().tolist())
    with pytest.raises(ModgapError, match="only 38 usable rows"):
        search(rng.normal(size=(4, 8)), store, 39, on_bad="skip")
    with pytest.raises(ModgapError, match="D=8"):
        search(rng.normal(size=(4, 9)), store, 3)


def test_ties_go_to_the_earlier_row_within_and_across_chunks(tmp_path, rng):
    """Small integer vectors: most scores tie, and the earlier row must win, as in a stable sort of the whole
    score matrix, from a store and from tensors (torch.topk alone orders ties arbitrarily: this failed)."""
    import torch

    x = rng.integers(0, 2, size=(300, 6)).astype(np.float32) + np.eye(6, dtype=np.float32)[rng.integers(0, 6, 300)]
    q = rng.integers(0, 2, size=(20, 6)).astype(np.float32) + 1
    want_s, want_rows = brute_force(q, x, 9, "dot")
    store = make_store(tmp_path / "s", x, shard_rows=70)
    tensors = torch.from_numpy(q), torch.from_numpy(x)
    for name, got in (("store", search(q, store, 9, metric="dot", chunk_rows=32, query_block=7)),
                      ("tensors", search(*tensors, 9, metric="dot", chunk_rows=32, query_block=7))):  # fmt: skip
        np.testing.assert_array_equal(got.rows, want_rows, err_msg=name)
        np.testing.assert_allclose(got.scores, want_s)
