"""Compositional understanding, SugarCrepe-style: the true caption must beat a hard-negative one.

Triples name an image, its true caption and a caption that differs in one compositional detail (an
attribute replaced or swapped, an object replaced); all three are ids into stores, so any encoder's
embeddings can be scored. A triple is correct when the true caption scores strictly higher than the
negative (a tie counts as wrong: the model could not tell them apart). Scores are float64 from the stored
vectors, as in :mod:`modgap.eval.retrieval`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modgap.errors import ModgapError
from modgap.eval.retrieval import TIE_TOLERANCE, open_store, pair_scores, prepare_vectors
from modgap.files import read_rows
from modgap.store.checks import BadRows, usable_store_rows
from modgap.store.store import EmbeddingStore
from modgap.store.topk import METRICS

TRIPLE_KEYS = ("image_id", "positive_id", "negative_id")


@dataclass
class Triple:
    image_id: str
    positive_id: str
    negative_id: str
    category: str = "all"


def read_triples(path: str | os.PathLike) -> list[Triple]:
    """Rows with ``image_id``, ``positive_id``, ``negative_id`` and an optional ``category`` (JSONL/CSV/...)."""
    triples = []
    for n, row in enumerate(read_rows(path, what="triples file"), 1):
        missing = [k for k in TRIPLE_KEYS if row.get(k) in (None, "")]
        if missing:
            raise ModgapError(f"{path}: row {n} lacks {', '.join(missing)} (has {sorted(row)})")
        triples.append(Triple(*(str(row[k]) for k in TRIPLE_KEYS), str(row.get("category") or "all")))
    if not triples:
        raise ModgapError(f"{Path(path)}: no triples")
    return triples


def compositional_accuracy(
    image: EmbeddingStore | str | os.PathLike,
    text: EmbeddingStore | str | os.PathLike,
    triples: list[Triple],
    *,
    metric: str = "cosine",
) -> dict[str, float]:
    """Accuracy per category, ``overall`` (over all triples) and ``mean`` (over categories), as fractions."""
    if metric not in METRICS:
        raise ModgapError(f"unknown metric {metric!r}; choose one of {METRICS}")
    image_store, text_store = open_store(image), open_store(text)
    error = BadRows("error")  # names the store and the ids of the unusable vectors themselves
    usable_store_rows(image_store, image_store.row_of(list(dict.fromkeys(t.image_id for t in triples))), error)
    captions = list(dict.fromkeys(k for t in triples for k in (t.positive_id, t.negative_id)))
    usable_store_rows(text_store, text_store.row_of(captions), error)
    v = prepare_vectors(image_store.get([t.image_id for t in triples]), metric)
    pos = prepare_vectors(text_store.get([t.positive_id for t in triples]), metric)
    neg = prepare_vectors(text_store.get([t.negative_id for t in triples]), metric)
    margin = pair_scores(pos, v, metric) - pair_scores(neg, v, metric)
    bad = np.flatnonzero(~np.isfinite(margin))
    if len(bad):
        t = triples[int(bad[0])]
        raise ModgapError(f"{len(bad)} triple(s) have a NaN, Inf or zero vector, e.g. image {t.image_id!r}")
    correct = margin > TIE_TOLERANCE
    by_category: dict[str, list[bool]] = defaultdict(list)
    for t, ok in zip(triples, correct.tolist(), strict=True):
        by_category[t.category].append(ok)
    result = {c: float(np.mean(v)) for c, v in sorted(by_category.items())}
    result["mean"] = float(np.mean(list(result.values())))
    result["overall"] = float(np.mean(correct))
    result["triples"] = len(triples)
    return result
