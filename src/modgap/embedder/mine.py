"""Hard negatives mined from a whole candidate pool, written into the training rows (MMEB's ``neg_text``).

In-batch hard negatives (stage 2's default) are only as hard as the batch. Mining looks further: every
query's image embedding is searched against a store of candidate texts (exact chunked top-k,
:func:`modgap.store.topk`, or a faiss index for pools of tens of millions, :mod:`modgap.store.ann`), and
each row gets the most similar candidate that is neither its positive nor a likely false negative (a
candidate scoring above ``sim(q, pos) + fn_margin``, UniME's filter). The rows keep MMEB's training layout,
so ``modgap embedder tune`` reads them as they are (their negatives join the in-batch candidates).
Embeddings come from any encoder (usually the base one: mining precedes training).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modgap.errors import ModgapError
from modgap.files import read_rows, write_jsonl
from modgap.progress import ProgressFactory, silent
from modgap.store.checks import BadRows, usable_store_rows
from modgap.store.store import EmbeddingStore
from modgap.store.topk import search


@dataclass
class MineSummary:
    rows: int
    mined: int
    without: int  # rows where every searched candidate was the positive or a false negative
    filtered: int  # candidates skipped as likely false negatives

    def line(self) -> str:
        return (
            f"{self.mined} of {self.rows} rows got a mined negative ({self.without} without one within the "
            f"search depth); {self.filtered} candidates dropped as likely false negatives"
        )


def mine_negatives(
    data: str | os.PathLike,
    images: str | os.PathLike,
    texts: str | os.PathLike,
    text_embeddings: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fn_margin: float = 0.1,
    depth: int = 32,
    index: str = "exact",
    index_path: str | os.PathLike | None = None,
    factory: str = "auto",
    nprobe: int | None = None,
    progress: ProgressFactory = silent,
) -> MineSummary:
    """Rows of ``data`` (MMEB layout, image queries) with ``neg_text`` set to the hardest mined candidate.

    ``texts``: the candidate pool (``id``, ``text`` rows), embedded in ``text_embeddings`` by id; ``images``:
    the queries' image embeddings by ``qry_image_path``. A row whose positive text is not in the pool is an
    error (its similarity is what the filter compares against).

    ``index="faiss"``: approximate search (:mod:`modgap.store.ann`) with a faiss ``factory`` index, built
    once and kept at ``index_path`` for later runs; ``nprobe`` lists visited (IVF).
    """
    if index not in ("exact", "faiss"):
        raise ModgapError(f"--index must be 'exact' or 'faiss', not {index!r}")
    if index == "exact" and (index_path is not None or factory != "auto" or nprobe is not None):
        raise ModgapError("--index-path, --factory and --nprobe apply with --index faiss")
    rows = read_rows(data, what="pairs file")
    pool = read_rows(texts, what="text file")
    text_store, image_store = EmbeddingStore.open(text_embeddings), EmbeddingStore.open(images)
    if text_store.dim != image_store.dim:
        raise ModgapError(
            f"dimension mismatch: {text_store.path} holds {text_store.dim}-d vectors, {image_store.path} "
            f"{image_store.dim}-d ones"
        )
    pool_ids, text_of, line_of = [], {}, {}
    for n, r in enumerate(pool, 1):
        if r.get("id") in (None, ""):
            raise ModgapError(f"{texts}: row {n} has no id")
        k = str(r["id"])
        if k in line_of:
            raise ModgapError(f"{texts}: row {n}: id {k!r} already on row {line_of[k]} (pool ids must be unique)")
        line_of[k] = n
        pool_ids.append(k)
        text_of[k] = str(r.get("text", r.get("caption", "")))
    absent = [k for k in pool_ids if k not in text_store.id_index()]
    if absent:
        raise ModgapError(
            f"{texts}: {len(absent)} pool id(s) have no embedding in {text_store.path} (e.g. {absent[:5]}); "
            "embed the whole pool"
        )
    id_of_text: dict[str, str] = {}
    for k in pool_ids:
        id_of_text.setdefault(text_of[k], k)
    query_ids, positive_ids = [], []
    for n, row in enumerate(rows, 1):
        image, positive = row.get("qry_image_path"), row.get("pos_text")
        if not image or not positive:
            raise ModgapError(f"{data}: row {n}: mining needs an image query and a positive text")
        if positive not in id_of_text:
            raise ModgapError(f"{data}: row {n}: positive text {positive!r} is not in the pool {texts}")
        query_ids.append(str(image))
        positive_ids.append(id_of_text[positive])
    error = BadRows("error")  # a NaN/Inf/zero query or positive would score every candidate as NaN
    usable_store_rows(image_store, image_store.row_of(query_ids), error)
    usable_store_rows(text_store, text_store.row_of(positive_ids), error)
    queries = image_store.get(query_ids).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    positives = text_store.get(positive_ids).astype(np.float32)
    positives /= np.linalg.norm(positives, axis=1, keepdims=True)
    pos_sim = np.einsum("ij,ij->i", queries, positives)
    if index == "faiss":
        from modgap.store.ann import approximate_search, index_for

        built = index_for(text_store, index_path, metric="cosine", factory=factory)
        found = approximate_search(queries, built, min(depth, built.vectors), nprobe=nprobe, store=text_store)
    else:
        found = search(queries, text_store, min(depth, len(text_store)), metric="cosine")
    assert found.ids is not None
    mined = without = filtered = 0
    out_rows = []
    with progress("mine", len(rows)) as advance:
        for n, row in enumerate(rows):
            negative = None
            for score, cid in zip(found.scores[n].tolist(), found.ids[n], strict=True):
                candidate = text_of.get(cid)
                if candidate is None or candidate == row["pos_text"]:
                    continue
                if score > pos_sim[n] + fn_margin:
                    filtered += 1
                    continue
                negative = candidate
                break
            new = dict(row)
            if negative is None:
                without += 1
            else:
                mined += 1
                new["neg_text"], new["neg_image_path"] = negative, ""
            out_rows.append(new)
            advance(1)
    if without:
        raise ModgapError(
            f"{without} rows found no negative among their {depth} nearest candidates (all positives or false "
            "negatives); search deeper with --depth or lower the filter's reach with --fn-margin"
        )
    write_jsonl(Path(out), out_rows)
    return MineSummary(len(rows), mined, without, filtered)
