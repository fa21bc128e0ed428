"""Approximate search with faiss (modgap.store.ann, `embedder mine --index faiss`) against the exact search."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_store, run_cli
from modgap.errors import ModgapError
from modgap.store import search
from modgap.store.ann import FaissIndex, approximate_search, build_index, index_for

faiss = pytest.importorskip("faiss")  # the [faiss] extra; `make install` installs it


def clustered(rng: np.random.Generator, n: int, dim: int = 16, clusters: int = 40) -> np.ndarray:
    centres = rng.normal(size=(clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + 0.4 * rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_a_flat_index_returns_the_exact_search_rows_and_scores(tmp_path, rng, metric):
    x = clustered(rng, 3000)
    x[7] = np.nan  # a bad row: skipped on both sides, never returned
    store = make_store(tmp_path / "s", x, shard_rows=1000)
    queries = clustered(rng, 50)
    exact = search(queries, store, 10, metric=metric, on_bad="skip")
    found = approximate_search(
        queries, build_index(store, metric=metric, factory="Flat", on_bad="skip"), 10, store=store
    )
    np.testing.assert_array_equal(found.rows, exact.rows)
    np.testing.assert_allclose(found.scores, exact.scores, rtol=1e-5, atol=1e-4)
    assert found.ids == exact.ids and 7 not in found.rows


def test_an_ivf_index_visiting_every_list_is_exact_and_fewer_lists_lose_little(tmp_path, rng):
    x = clustered(rng, 6000)
    store = make_store(tmp_path / "s", x, dtype="float16")
    queries = clustered(rng, 200)
    exact = search(queries, store, 10)
    index = build_index(store)  # auto: IVF with ~4 sqrt(N) lists
    lists = faiss.extract_index_ivf(index.index).nlist
    assert index.factory == f"IVF{lists},Flat" and index.vectors == 6000
    every = approximate_search(queries, index, 10, nprobe=lists)
    np.testing.assert_array_equal(every.rows, exact.rows)
    few = approximate_search(queries, index, 10, nprobe=4)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(few.rows.tolist(), exact.rows.tolist(), strict=True)])
    assert 0.5 < recall < 1.0  # approximate: most neighbours found, not all (measured 0.8-0.9)


def test_an_index_round_trips_and_refuses_a_changed_store_or_file(tmp_path, rng):
    x = clustered(rng, 2000)
    store = make_store(tmp_path / "s", x)
    queries = clustered(rng, 20)
    index = index_for(store, tmp_path / "pool.faiss", factory="IVF16,Flat")
    again = index_for(store, tmp_path / "pool.faiss")  # reused, not rebuilt
    assert (tmp_path / "pool.faiss.json").exists() and again.factory == "IVF16,Flat"
    a, b = approximate_search(queries, index, 5), approximate_search(queries, again, 5)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.scores, b.scores)
    with pytest.raises(ModgapError, match="not the HNSW32 cosine index"):
        index_for(store, tmp_path / "pool.faiss", factory="HNSW32")
    changed = make_store(tmp_path / "s2", x[::-1].copy())
    with pytest.raises(ModgapError, match="the store changed"):
        FaissIndex.load(tmp_path / "pool.faiss", changed)
    raw = bytearray((tmp_path / "pool.faiss").read_bytes())
    raw[-1] ^= 1
    (tmp_path / "pool.faiss").write_bytes(bytes(raw))
    with pytest.raises(ModgapError, match="not the one its record describes"):
        FaissIndex.load(tmp_path / "pool.faiss", store)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_bad_rows_and_queries_are_named(tmp_path, rng):
    x = clustered(rng, 500)
    x[42] = 0
    store = make_store(tmp_path / "s", x)
    with pytest.raises(ModgapError, match="42"):
        build_index(store)
    with pytest.raises(ModgapError, match="cannot build the index 'IVF0,Nonsense'"):
        build_index(store, factory="IVF0,Nonsense", on_bad="skip")
    index = build_index(store, factory="Flat", on_bad="skip")
    queries = clustered(rng, 3)
    queries[1] = np.nan
    with pytest.raises(ModgapError, match=r"queries \[1\]"):
        approximate_search(queries, index, 5)
    with pytest.raises(ModgapError, match="fewer than k=600"):
        approximate_search(queries[:1], index, 600)


def test_mining_through_a_faiss_index_picks_the_exact_negatives_and_keeps_the_index(tmp_path, rng):
    n_img, n_txt, dim = 30, 400, 16
    images = clustered(rng, n_img, dim)
    pool = clustered(rng, n_txt, dim)
    pool[:n_img] = images + 0.3 * rng.normal(size=(n_img, dim)).astype(np.float32)
    make_store(tmp_path / "img", images, prefix="img/")
    make_store(tmp_path / "txt", pool, prefix="t")
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps({"id": f"t{k}", "text": f"text {k}"}) + "\n"
                                                 for k in range(n_txt)))  # fmt: skip
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"qry": "<|image_1|>", "qry_image_path": f"img/{i}", "pos_text": f"text {i}"}) + "\n"
        for i in range(n_img)
    ))  # fmt: skip
    common = ["embedder", "mine", "--data", tmp_path / "pairs.jsonl", "--images", tmp_path / "img",
              "--texts", tmp_path / "pool.jsonl", "--text-embeddings", tmp_path / "txt", "--depth", 16]  # fmt: skip
    run_cli(*common, "--out", tmp_path / "exact.jsonl")
    ann = [*common, "--index", "faiss", "--factory", "IVF8,Flat", "--nprobe", 8, "--index-path", tmp_path / "ix"]
    run_cli(*ann, "--out", tmp_path / "ann.jsonl")
    built = (tmp_path / "ix").stat().st_mtime_ns
    run_cli(*ann, "--out", tmp_path / "ann2.jsonl")
    assert (tmp_path / "ix").stat().st_mtime_ns == built  # the second run reused the kept index
    exact = (tmp_path / "exact.jsonl").read_text()
    assert (tmp_path / "ann.jsonl").read_text() == exact == (tmp_path / "ann2.jsonl").read_text()
    bad = run_cli(*common, "--index", "annoy", "--out", tmp_path / "x.jsonl", check=False)
    assert bad.returncode != 0 and "--index must be 'exact' or 'faiss'" in bad.stderr
    stray = run_cli(*common, "--nprobe", 4, "--out", tmp_path / "x.jsonl", check=False)
    assert stray.returncode != 0 and "apply with --index faiss" in stray.stderr
    assert not (tmp_path / "x.jsonl").exists()
