"""Training data of the two embedder stages, tokenised once, joined to their stores by id.

* distill: texts (``id`` and ``text``, or ``caption``) and the teacher's embedding of each, from a store
  (``modgap embed --encoder text:TEACHER --modality text`` on the same file).
* tune: query/positive(/negative) rows in MMEB's training layout — ``qry``, ``qry_image_path``,
  ``pos_text``, ``pos_image_path``, optional ``neg_text``/``neg_image_path`` — where the image paths are ids
  of an image store (``modgap embed`` on the image folder uses the paths as ids). A ``<|image_N|>`` token
  in a text marks where the image goes.

Each sample's inputs are :class:`~modgap.embedder.model.Item`; a batch lists the prompts of its queries,
then its positives, then its negatives, and one visual row per input with an image, in that order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from modgap.embedder.model import Embedder, Item
from modgap.errors import ModgapError
from modgap.eval.mmeb import mmeb_text
from modgap.files import read_rows
from modgap.mllm.infer import StoreInputs
from modgap.store.checks import BadRows, usable_store_rows
from modgap.store.store import EmbeddingStore

SIDES = ("qry", "pos", "neg")


@dataclass
class Batch:
    prompts: list[list[int]]  # queries, then positives, then negatives (if any)
    visual: torch.Tensor | None  # one row per prompt with an image, in prompt order
    has_image: list[bool]  # per prompt
    segments: list[int]  # how many prompts of each kind: [n] (distill) or [n, n(, n)] (tune)
    teacher: torch.Tensor | None = None  # distill: (n, teacher dim)

    def __len__(self) -> int:
        return len(self.prompts)


def read_teacher_texts(
    path: str | os.PathLike, teacher: str | os.PathLike, bad: BadRows | None = None
) -> tuple[list[str], list[str], torch.Tensor]:
    """(ids, texts, teacher vectors) of a text file (id, text or caption) whose ids have a usable vector in the
    teacher store; errors name the row."""
    rows = read_rows(path, what="text file")
    ids, texts = [], []
    for n, row in enumerate(rows, 1):
        text = row.get("text", row.get("caption"))
        if row.get("id") in (None, "") or not isinstance(text, str) or not text.strip():
            raise ModgapError(f"{path}: row {n} needs an id and a non-empty text (or caption)")
        ids.append(str(row["id"]))
        texts.append(text)
    if len(set(ids)) != len(ids):
        dup = next(k for k in ids if ids.count(k) > 1)
        raise ModgapError(f"{path}: id {dup!r} appears more than once")
    store = EmbeddingStore.open(teacher)
    rows_of = store.row_of(ids)
    keep = usable_store_rows(store, rows_of, bad or BadRows("error"))
    ids, texts = (
        [k for k, ok in zip(ids, keep, strict=True) if ok],
        [t for t, ok in zip(texts, keep, strict=True) if ok],
    )
    if not ids:
        raise ModgapError(f"{path}: no text left with a usable teacher embedding in {store.path}")
    return ids, texts, torch.from_numpy(store.take(rows_of[keep]).astype(np.float32))


class TextSet:
    """Texts and their teacher embeddings (stage 1)."""

    def __init__(
        self, path: str | os.PathLike, teacher: str | os.PathLike, embedder: Embedder, bad: BadRows | None = None
    ):
        self.ids, texts, self.teacher = read_teacher_texts(path, teacher, bad)
        self.prompts = [embedder.prompt_ids(Item(text=t)) for t in texts]

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: list[int]) -> Batch:
        return Batch(
            [self.prompts[i] for i in indices], None, [False] * len(indices), [len(indices)], self.teacher[indices]
        )


def pair_sides(rows: list[dict], path: str | os.PathLike) -> list[str]:
    """The sides of MMEB-layout training rows: query and positive, and negative when the rows have one (all of
    them or none)."""
    has_neg = [bool(r.get("neg_text") or r.get("neg_image_path")) for r in rows]
    if any(has_neg) and not all(has_neg):
        n = has_neg.index(False) + 1
        raise ModgapError(f"{path}: row {n} has no negative while others do (give one to all or none)")
    return ["qry", "pos", "neg"] if any(has_neg) else ["qry", "pos"]


def side_input(row: dict, side: str, where: str) -> tuple[str | None, str | None]:
    """(text, image path) of one side of a training row (MMEB's image tokens as modgap's placeholder); an error
    naming the row when it has neither."""
    text = mmeb_text(row.get("qry" if side == "qry" else f"{side}_text"))
    image = row.get(f"{side}_image_path")
    image = None if image in (None, "") else str(image)
    if text is None and image is None:
        raise ModgapError(f"{where} has neither a {side} text nor a {side} image")
    return text, image


class PairSet:
    """Query / positive (/ negative) rows in MMEB's training layout (stage 2)."""

    def __init__(
        self,
        path: str | os.PathLike,
        images: str | os.PathLike | None,
        embedder: Embedder,
        bad: BadRows | None = None,
    ):
        rows = read_rows(path, what="pairs file")
        self.sides = pair_sides(rows, path)
        self.store_inputs = StoreInputs(embedder.vlm, images) if images else None
        index = self.store_inputs.store.id_index() if self.store_inputs else {}
        self.prompts: dict[str, list[list[int]]] = {s: [] for s in self.sides}
        self.image_rows: dict[str, list[int]] = {s: [] for s in self.sides}  # -1: no image
        for n, row in enumerate(rows, 1):
            for side in self.sides:
                text, image = side_input(row, side, f"{path}: row {n}")
                r = -1
                if image is not None:
                    if self.store_inputs is None:
                        raise ModgapError(f"{path}: row {n} names an image ({image!r}); pass --embeddings")
                    r = index.get(image, -2)
                    if r == -2:
                        where = self.store_inputs.store.path
                        raise ModgapError(f"{path}: row {n}: image {image!r} is not in {where}")
                self.prompts[side].append(embedder.prompt_ids(Item(text=text, image=r >= 0)))
                self.image_rows[side].append(r)
        if not rows:
            raise ModgapError(f"{path}: no rows")
        if self.store_inputs is not None:
            self._leave_out_bad_images(bad or BadRows("error"))
        if not len(self):
            raise ModgapError(f"{path}: no row left with usable image embeddings in {images}")

    def _leave_out_bad_images(self, bad: BadRows) -> None:
        """Rows whose image embedding is NaN/Inf/zero: an error, or left out and recorded (``--on-bad skip``)."""
        assert self.store_inputs is not None
        used = np.unique([r for side in self.sides for r in self.image_rows[side] if r >= 0])
        unusable = set(used[~usable_store_rows(self.store_inputs.store, used, bad)].tolist())
        if not unusable:
            return
        keep = [not any(self.image_rows[s][n] in unusable for s in self.sides) for n in range(len(self))]
        for side in self.sides:
            self.prompts[side] = [p for p, ok in zip(self.prompts[side], keep, strict=True) if ok]
            self.image_rows[side] = [r for r, ok in zip(self.image_rows[side], keep, strict=True) if ok]

    def __len__(self) -> int:
        return len(self.prompts["qry"])

    def batch(self, indices: list[int]) -> Batch:
        prompts, rows = [], []
        for side in self.sides:
            prompts += [self.prompts[side][i] for i in indices]
            rows += [self.image_rows[side][i] for i in indices]
        has_image = [r >= 0 for r in rows]
        visual = None
        if any(has_image):
            assert self.store_inputs is not None
            visual = self.store_inputs.rows([r for r in rows if r >= 0])
        return Batch(prompts, visual, has_image, [len(indices)] * len(self.sides))
