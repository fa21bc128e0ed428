"""MMEB evaluation (VLM2Vec's Massive Multimodal Embedding Benchmark layout): Precision@1 per task.

``--data DIR`` holds one file per task (``TASK.parquet`` or ``TASK.jsonl``), as released: each row has a
query (``qry_text``, where a token such as ``<|image_1|>`` marks the image, and ``qry_img_path``, empty for a
text-only query) and a candidate list (``tgt_text`` and ``tgt_img_path``, lists of one length) whose first
entry is the target. A row is correct when the target scores highest; as in VLM2Vec's evaluation
(``argmax``), a tie goes to the earlier candidate. ``qry_inst``/``tgt_inst``, when present, are prefixed to
the texts. Image paths are relative to ``--image-root``. Identical inputs are embedded once per task.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modgap.encoders.base import open_images
from modgap.errors import ModgapError
from modgap.files import read_rows
from modgap.mllm.chat import IMAGE_PLACEHOLDER
from modgap.progress import ProgressFactory, silent

TASK_SUFFIXES = (".parquet", ".jsonl")
MMEB_IMAGE_TOKEN = re.compile(r"<\|image_\d+\|>")


def mmeb_text(value: object) -> str | None:
    """An MMEB text with its image tokens as modgap's placeholder; None when nothing but the marker is left
    (then the input is an image alone, under the image template)."""
    if value in (None, ""):
        return None
    text = MMEB_IMAGE_TOKEN.sub(IMAGE_PLACEHOLDER, str(value))
    return text if text.replace(IMAGE_PLACEHOLDER, "").strip() else None


@dataclass
class MMEBResult:
    tasks: dict[str, float]  # task -> Precision@1
    rows: dict[str, int]
    overall: float  # mean over tasks, as MMEB reports it
    predictions: dict[str, list[int]] = field(default_factory=dict)  # task -> chosen candidate per row
    groups: dict[str, float] = field(default_factory=dict)  # meta-task and IND/OOD means, as VLM2Vec reports


# MMEB's 36 image tasks by meta-task, and which of them its training set covers (IND) or not (OOD), as
# VLM2Vec and UniME report them. Task files are matched by name (``ImageNet-1K.parquet``).
META_TASKS = {
    "classification": ("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A",
                       "ImageNet-R", "ObjectNet", "Country211"),
    "vqa": ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA", "VizWiz", "GQA",
            "TextVQA"),
    "retrieval": ("VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA",
                  "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS"),
    "grounding": ("MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"),
}  # fmt: skip
OUT_OF_DISTRIBUTION = ("Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211", "ScienceQA", "VizWiz",
                       "GQA", "TextVQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS", "RefCOCO", "RefCOCO-Matching",
                       "Visual7W-Pointing")  # fmt: skip


def group_means(tasks: dict[str, float]) -> dict[str, float]:
    """Means of the evaluated tasks per meta-task and over IND / OOD tasks (groups with no evaluated task are
    left out; tasks MMEB does not name count only in the overall mean)."""
    known = {t for names in META_TASKS.values() for t in names}
    groups = {name: [tasks[t] for t in names if t in tasks] for name, names in META_TASKS.items()}
    groups["IND"] = [p for t, p in tasks.items() if t in known and t not in OUT_OF_DISTRIBUTION]
    groups["OOD"] = [p for t, p in tasks.items() if t in OUT_OF_DISTRIBUTION]
    return {name: float(np.mean(values)) for name, values in groups.items() if values}


def _text(row: dict, key: str, inst_key: str) -> str | None:
    text = mmeb_text(row.get(key))
    inst = row.get(inst_key)
    if text is None:
        return None
    return f"{inst} {text}" if inst else text


def task_files(data: str | os.PathLike) -> list[Path]:
    data = Path(data)
    files = sorted(p for p in data.iterdir() if p.suffix in TASK_SUFFIXES) if data.is_dir() else [data]
    if not files:
        raise ModgapError(f"{data}: no task files (*.parquet, *.jsonl)")
    return files


class _Inputs:
    """The distinct inputs of one task, in first-seen order, with their images loaded on demand."""

    def __init__(self, image_root: Path):
        self.image_root = image_root
        self.index: dict[tuple[str | None, str | None], int] = {}

    def add(self, text: str | None, image: str | None, where: str) -> int:
        if text is None and image is None:
            raise ModgapError(f"{where}: an input with neither text nor image")
        if image is None and text is not None and IMAGE_PLACEHOLDER in text:
            raise ModgapError(f"{where}: the text marks an image (<|image_1|>) but no image path is given")
        return self.index.setdefault((text, image), len(self.index))

    def embed(self, encoder: Any, batch_size: int) -> torch.Tensor:
        """Every input through ``encoder.embed_items`` (a modgap embedder or a stock multimodal LLM)."""
        keys = list(self.index)
        out = []
        for s in range(0, len(keys), batch_size):
            part = keys[s : s + batch_size]
            pictures = iter(open_images([self.image_root / image for _, image in part if image is not None]))
            images = [next(pictures) if image is not None else None for _, image in part]
            out.append(encoder.embed_items([t for t, _ in part], images))
        return torch.cat(out)


def evaluate_mmeb(
    encoder: Any,
    data: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    batch_size: int = 64,
    limit: int | None = None,
    progress: ProgressFactory = silent,
) -> MMEBResult:
    """Precision@1 of ``encoder`` on every task file under ``data``. ``encoder`` is anything with
    ``embed_items(texts, images) -> (n, D)`` unit vectors: a modgap embedder or a stock multimodal LLM, as
    ``modgap.embedder.encoder.load`` opens them."""
    root = Path(image_root) if image_root else Path(data)
    tasks, counts, predictions = {}, {}, {}
    files = task_files(data)
    with progress("mmeb", len(files)) as advance:
        for path in files:
            rows = read_rows(path, what="MMEB task file")[:limit]
            inputs = _Inputs(root)
            queries: list[int] = []
            candidates: list[Sequence[int]] = []
            for n, row in enumerate(rows, 1):
                where = f"{path}: row {n}"
                texts, images = row.get("tgt_text") or [], row.get("tgt_img_path") or []
                if not isinstance(texts, list) or not isinstance(images, list):
                    raise ModgapError(f"{where}: tgt_text and tgt_img_path must be lists")
                width = max(len(texts), len(images))
                if width == 0 or (texts and images and len(texts) != len(images)):
                    raise ModgapError(f"{where}: tgt_text and tgt_img_path must be non-empty lists of one length")
                texts, images = texts or [""] * width, images or [""] * width
                queries.append(inputs.add(_text(row, "qry_text", "qry_inst"), row.get("qry_img_path") or None, where))
                candidates.append([
                    inputs.add(_text({"t": t, "i": row.get("tgt_inst")}, "t", "i"), img or None, where)
                    for t, img in zip(texts, images, strict=True)
                ])  # fmt: skip
            if not rows:
                raise ModgapError(f"{path}: no rows")
            emb = inputs.embed(encoder, batch_size)
            chosen = []
            for q, cands in zip(queries, candidates, strict=True):
                # Each distinct input is scored once, so a candidate repeated in the list ties exactly (a matmul
                # may sum two equal rows in different orders and split them by one ulp).
                distinct, where_in = np.unique(np.asarray(cands), return_inverse=True)
                scores = (emb[torch.from_numpy(distinct)] @ emb[q]).numpy()[where_in]
                chosen.append(int(np.argmax(scores)))  # first maximum: ties go to the earlier candidate
            tasks[path.stem] = float(np.mean([c == 0 for c in chosen]))
            counts[path.stem] = len(rows)
            predictions[path.stem] = chosen
            advance(1)
    return MMEBResult(tasks, counts, float(np.mean(list(tasks.values()))), predictions, group_means(tasks))
