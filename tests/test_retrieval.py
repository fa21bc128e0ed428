"""`eval retrieval` against a full similarity matrix ranked by NumPy, with several captions per image and ties."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_store, run_cli
from modgap.errors import ModgapError
from modgap.eval.retrieval import retrieval_recall


def oracle(images: np.ndarray, texts: np.ndarray, pairs: list[tuple[int, int]], metric: str, ks=(1, 5, 10)):
    """Rank every query against the whole gallery: sort by (score desc, row asc) and find the positive."""
    paired_t = sorted({t for t, _ in pairs})
    paired_i = sorted({i for _, i in pairs})
    image_of = dict(pairs)
    a, b = images.astype(np.float64), texts.astype(np.float64)
    if metric == "cosine":
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
    sims = -((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) if metric == "l2" else a @ b.T
    sims = np.round(sims, 9)  # scores equal to 1e-9 are ties, as the evaluator documents
    out = {}
    i2t = []
    for i in paired_i:
        cols = np.array(paired_t)
        ranked = cols[np.lexsort((cols, -sims[i, cols]))]
        i2t.append(min(np.flatnonzero([image_of[t] == i for t in ranked])))
    t2i = []
    for t in paired_t:
        rows = np.array(paired_i)
        ranked = rows[np.lexsort((rows, -sims[rows, t]))]
        t2i.append(int(np.flatnonzero(ranked == image_of[t])[0]))
    for k in ks:
        out[f"i2t_R@{k}"] = float(np.mean(np.array(i2t) < k))
    for k in ks:
        out[f"t2i_R@{k}"] = float(np.mean(np.array(t2i) < k))
    return out, np.array(i2t), np.array(t2i)


def world(rng, n_images=40, per_image=3, dim=8, extra_texts=7, integer=False):
    images = rng.normal(size=(n_images, dim))
    texts = np.repeat(images, per_image, axis=0) + rng.normal(scale=1.2, size=(n_images * per_image, dim))
    texts = np.concatenate([texts, rng.normal(size=(extra_texts, dim))])  # rows no pair names
    if integer:  # small integers: many exact ties, exact in float32 and float64
        images, texts = np.round(images), np.round(texts)
        images[images.sum(1) == 0, 0] = 1
        texts[np.abs(texts).sum(1) == 0, 0] = 1
    perm = rng.permutation(n_images * per_image)  # captions not stored next to their image
    pairs = [(int(perm[j]), j // per_image) for j in range(n_images * per_image)]
    return images.astype(np.float32), texts.astype(np.float32), pairs


def _torch_on_cpu(real_ops):
    """The evaluator's torch operations (those of `--device cuda`) on the CPU, to test that path here."""
    import torch

    def make(device="cpu"):
        ops = real_ops("cpu")
        ops.numpy, ops.device = False, torch.device("cpu")
        return ops

    return make


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("metric,integer", [("cosine", False), ("dot", True), ("l2", True), ("cosine", True)])
def test_recall_equals_full_matrix_ranking(tmp_path, rng, metric, integer, backend, monkeypatch):
    if backend == "torch":
        from modgap.eval import retrieval

        monkeypatch.setattr(retrieval, "_Ops", _torch_on_cpu(retrieval._Ops))
    images, texts, pairs = world(rng, integer=integer)
    img = make_store(tmp_path / "img", images, prefix="i")
    txt = make_store(tmp_path / "txt", texts, prefix="t", shard_rows=16)
    id_pairs = [(f"t{t}", f"i{i}") for t, i in pairs]
    # Small blocks and chunks: many blocks, captions of one image spread over several chunks.
    got = retrieval_recall(img, txt, id_pairs, metric=metric, block_rows=7, chunk_rows=11)
    want, i2t, t2i = oracle(images, texts, pairs, metric)
    for key, value in want.items():
        assert got.metrics[key] == pytest.approx(value), key
    np.testing.assert_array_equal(got.i2t_rank, i2t)
    np.testing.assert_array_equal(got.t2i_rank, t2i)
    assert got.metrics["images"] == 40 and got.metrics["texts"] == 120


def test_ties_go_to_the_earlier_row(tmp_path):
    # Two identical images: each caption ties between them; the earlier image wins.
    images = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    texts = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    img, txt = make_store(tmp_path / "i", images, prefix="i"), make_store(tmp_path / "t", texts, prefix="t")
    res = retrieval_recall(img, txt, [("t0", "i0"), ("t1", "i1"), ("t2", "i2")], ks=(1, 2))
    assert res.t2i_rank.tolist() == [0, 1, 0]  # t1's image i1 ties with the earlier i0
    assert res.i2t_rank.tolist() == [0, 1, 0]  # i1's caption t1 ties with the earlier t0
    assert res.metrics["t2i_R@1"] == pytest.approx(2 / 3) and res.metrics["t2i_R@2"] == 1.0


def test_clear_errors(tmp_path, rng):
    img = make_store(tmp_path / "i", rng.normal(size=(3, 4)).astype(np.float32), prefix="i")
    txt = make_store(tmp_path / "t", rng.normal(size=(3, 4)).astype(np.float32), prefix="t")
    with pytest.raises(ModgapError, match="paired with two images"):
        retrieval_recall(img, txt, [("t0", "i0"), ("t0", "i1")])
    with pytest.raises(ModgapError, match="not in store: 't9'"):
        retrieval_recall(img, txt, [("t9", "i0")])
    zero = make_store(tmp_path / "z", np.array([[0, 0, 0, 0], [1, 0, 0, 0]], np.float32), prefix="t")
    with pytest.raises(ModgapError, match="caption 't0'"):
        retrieval_recall(img, zero, [("t0", "i0")])


def test_cli_writes_fractions_under_gap_key_names(tmp_path, rng):
    images, texts, pairs = world(rng, n_images=12, per_image=2, extra_texts=0)
    make_store(tmp_path / "img", images, prefix="i")
    make_store(tmp_path / "txt", texts, prefix="t")
    (tmp_path / "pairs.csv").write_text("text_id,image_id\n" + "".join(f"t{t},i{i}\n" for t, i in pairs))
    run_cli(
        "eval", "retrieval", "--image", tmp_path / "img", "--text", tmp_path / "txt",
        "--pairs", tmp_path / "pairs.csv", "--json", tmp_path / "r.json",
    )  # fmt: skip
    got = json.loads((tmp_path / "r.json").read_text())
    want, _, _ = oracle(images, texts, pairs, "cosine")
    for key, value in want.items():
        assert got[key] == pytest.approx(value)
    assert {"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"} <= set(got)


def test_compositional_accuracy_per_category(tmp_path):
    from modgap.eval.compositional import compositional_accuracy, read_triples

    images = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    texts = np.array([[1, 0.1, 0], [0, 1, 0], [1, 0, 0], [0.5, 0.5, 0]], np.float32)
    make_store(tmp_path / "i", images, prefix="i")
    make_store(tmp_path / "t", texts, prefix="t")
    (tmp_path / "tri.jsonl").write_text(
        '{"image_id": "i0", "positive_id": "t0", "negative_id": "t1", "category": "swap"}\n'  # right
        '{"image_id": "i0", "positive_id": "t0", "negative_id": "t2", "category": "swap"}\n'  # wrong
        '{"image_id": "i1", "positive_id": "t1", "negative_id": "t3", "category": "replace"}\n'  # right
        '{"image_id": "i0", "positive_id": "t2", "negative_id": "t2", "category": "replace"}\n'  # a tie: wrong
    )
    acc = compositional_accuracy(tmp_path / "i", tmp_path / "t", read_triples(tmp_path / "tri.jsonl"))
    assert acc == {"replace": 0.5, "swap": 0.5, "mean": 0.5, "overall": 0.5, "triples": 4}
    (tmp_path / "bad.csv").write_text("image_id,positive_id\ni0,t0\n")
    with pytest.raises(ModgapError, match="row 1 lacks negative_id"):
        read_triples(tmp_path / "bad.csv")
