"""The sums of unit vectors a store keeps per shard, and the fits that take their first pass from them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import gapped_pair, make_store, run_cli
from modgap.align import fit, make_aligner
from modgap.errors import BadVectorsError
from modgap.store import EmbeddingStore, StoreWriter
from modgap.store.sums import stored_unit_sums


def _unit_sum_oracle(store: EmbeddingStore) -> tuple[int, np.ndarray]:
    """float64 sum of the stored rows divided by their norms, read back through the public reader."""
    x = np.asarray(store.take(np.arange(len(store))), dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    keep = np.isfinite(norms) & (norms > 0)
    return int(keep.sum()), (x[keep] / norms[keep, None]).sum(0)


def test_writer_keeps_per_shard_sums_of_the_stored_unit_vectors(tmp_path):
    text, _ = gapped_pair(np.random.default_rng(0), 1000, 10, 24)
    store = make_store(tmp_path / "t", text, dtype="float16", shard_rows=300)
    assert len(store.manifest.shards) == 4
    with StoreWriter(tmp_path / "t", dim=24, dtype="float16", shard_rows=300) as w:  # appended shards keep theirs
        w.write([f"x{k}" for k in range(150)], text[:150] * 3)
    store = EmbeddingStore.open(tmp_path / "t")
    sums = stored_unit_sums(store.manifest)
    rows, oracle = _unit_sum_oracle(store)
    assert sums.rows == rows == 1150 and sums.bad == 0
    np.testing.assert_allclose(sums.total, oracle, rtol=1e-5, atol=1e-4)  # float32 norms, as the fit reads
    # a shard without sums (a store written before them) gives none for the store
    manifest = json.loads((store.path / "manifest.json").read_text())
    del manifest["shards"][2]["unit_sums"]
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    assert stored_unit_sums(EmbeddingStore.open(store.path).manifest) is None


@pytest.mark.parametrize("method", ["realign", "c3", "mean-shift", "gaussian-ot"])
def test_fit_from_kept_sums_equals_fit_reading_every_row(tmp_path, method):
    text, image = gapped_pair(np.random.default_rng(1), 900, 700, 16)
    src = make_store(tmp_path / "t", text, dtype="float16", shard_rows=256)
    tgt = make_store(tmp_path / "i", image, dtype="float16", prefix="i")
    quick = fit(make_aligner(method), src, tgt)
    read = fit(make_aligner(method), src, tgt, store_sums=False)
    uses_sums = method != "gaussian-ot"  # its first pass needs outer products, which stores do not keep
    assert quick.provenance.get("first_pass_from_store_sums") == (["source", "target"] if uses_sums else None)
    assert "first_pass_from_store_sums" not in read.provenance
    assert quick.counts == read.counts
    for name, value in read.state.items():
        np.testing.assert_allclose(quick.state[name], value, rtol=1e-12, atol=1e-12, err_msg=name)


def test_a_store_with_unusable_rows_is_read_so_they_are_named(tmp_path):
    text, image = gapped_pair(np.random.default_rng(2), 400, 300, 8)
    text[123] = np.nan
    src = make_store(tmp_path / "t", text, dtype="float16")
    tgt = make_store(tmp_path / "i", image, dtype="float16", prefix="i")
    assert stored_unit_sums(src.manifest).bad == 1  # kept, but they cannot stand for reading the store
    with pytest.raises(BadVectorsError, match=r"'r123' \(nan\)"):
        fit(make_aligner("realign"), src, tgt)
    skipped = fit(make_aligner("realign"), src, tgt, on_bad="skip")
    assert skipped.provenance["first_pass_from_store_sums"] == ["target"]
    assert skipped.counts == {"source": 399, "target": 300}


def test_align_run_output_is_the_same_with_and_without_kept_sums(tmp_path):
    text, image = gapped_pair(np.random.default_rng(3), 3000, 2000, 32)
    make_store(tmp_path / "t", text, dtype="float16", shard_rows=1000)
    make_store(tmp_path / "i", image, dtype="float16", prefix="i")
    outs = {}
    for name, extra in (("sums", ()), ("read", ("--read-all",))):
        run_cli("align", "run", "--source", str(tmp_path / "t"), "--target", str(tmp_path / "i"),
                "--out", str(tmp_path / name), *extra)  # fmt: skip
        s = EmbeddingStore.open(tmp_path / name)
        outs[name] = np.asarray(s.take(np.arange(len(s))), dtype=np.float32)
    diff = np.abs(outs["sums"] - outs["read"])
    assert diff.max() <= np.spacing(np.float16(1.0)) / 2  # at most one float16 rounding flip, in [-1, 1]
    assert (diff > 0).mean() < 1e-3
