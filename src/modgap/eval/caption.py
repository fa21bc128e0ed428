"""Caption evaluation: generate for stored embeddings, score against references with pycocoevalcap.

Captions are lower-cased and split into words with punctuation dropped before scoring (what the COCO
PTB tokenizer does, without its Java dependency).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modgap.errors import ModgapError
from modgap.files import read_rows
from modgap.progress import ProgressFactory, silent

if TYPE_CHECKING:
    from modgap.store.checks import OnBad

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize_caption(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def caption_metrics(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 and CIDEr(-D) of ``predictions`` against ``references`` (same keys)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if set(predictions) != set(references):
        raise ModgapError("predictions and references must cover the same ids")
    if not predictions:
        raise ModgapError("nothing to score")
    res = {k: [tokenize_caption(v) or "<empty>"] for k, v in predictions.items()}
    gts = {k: [tokenize_caption(r) for r in refs] for k, refs in references.items()}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its internals
        bleu, _ = Bleu(4).compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
    return {"bleu1": bleu[0], "bleu2": bleu[1], "bleu3": bleu[2], "bleu4": bleu[3], "cider": float(cider)}


def row_references(row: dict[str, Any], where: str) -> list[str]:
    """Reference captions of a data row: ``caption``/``captions`` (string or list), else the first reply."""
    for key in ("captions", "caption"):
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return list(value)
    for turn in row.get("conversations") or []:
        if isinstance(turn, dict) and turn.get("from") in ("gpt", "assistant"):
            return [str(turn.get("value"))]
    raise ModgapError(f"{where}: no reference caption ('caption', 'captions' or a gpt turn)")


@dataclass
class CaptionEval:
    metrics: dict[str, float]
    rows: list[dict[str, Any]]  # id, prediction, references
    missing: list[str]
    bad: list[dict[str, str]] = field(default_factory=list)  # NaN/Inf/zero rows left out


def iter_batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for s in range(0, len(items), size):
        yield items[s : s + size]


def evaluate_captions(
    model: Any,
    data: str | Path,
    embeddings: str | Path,
    *,
    batch_size: int = 32,
    limit: int | None = None,
    prompt: str | None = None,
    on_bad: OnBad = "error",
    progress: ProgressFactory = silent,
    **generate_kwargs: Any,
) -> CaptionEval:
    """Caption every row of ``data`` whose id is in ``embeddings`` and score the captions."""
    from modgap.mllm.infer import StoreInputs

    rows = read_rows(data)
    if limit is not None:
        rows = rows[:limit]
    inputs = StoreInputs(model, embeddings, on_bad)
    index = inputs.store.id_index()
    present, missing = [], []
    for n, row in enumerate(rows, 1):
        key = str(row.get("id", ""))
        (present if key in index else missing).append((n, key, row))
    keep = inputs.usable([index[k] for _, k, _ in present])
    present = [p for p, ok in zip(present, keep, strict=True) if ok]
    if not present:
        raise ModgapError(f"{data}: no row's id is in {embeddings}")
    predictions: dict[str, str] = {}
    references: dict[str, list[str]] = {}
    out_rows = []
    with progress("captioning", len(present)) as advance:
        for batch in iter_batches(present, batch_size):
            keys = [k for _, k, _ in batch]
            visual = inputs.rows([index[k] for k in keys])
            replies = model.generate(visual, prompt, **generate_kwargs)
            for (n, key, row), reply in zip(batch, replies, strict=False):
                refs = row_references(row, f"{data}: row {n} (id {key!r})")
                uid = f"{n}:{key}"  # the same id may occur twice in a caption file
                predictions[uid], references[uid] = reply, refs
                out_rows.append({"id": key, "prediction": reply, "references": refs})
            advance(len(batch))
    return CaptionEval(caption_metrics(predictions, references), out_rows, [k for _, k, _ in missing], inputs.bad.rows)
