"""Training data: conversation or caption files joined by id to embedding stores, tokenised up front.

Each ``(data file, store)`` pair is a *source*. Rows are LLaVA/Bunny conversations
(``{"id", "conversations": [{"from": "human"|"gpt", "value"}]}``) or captions (``{"id", "caption"}``,
a string or a list of strings, one sample each), in JSON (a list) or JSONL. Documented behaviours:

- a row whose id is not in the store is skipped and counted; the run stops if the skipped fraction
  exceeds ``max_missing``;
- a conversation without ``<image>`` gets it in front of its first user turn (counted);
- a sample longer than ``max_length`` tokens is cut from the end (counted); if no reply token would
  remain it is dropped (counted).

A store written by ``modgap align apply`` carries its aligner (``manifest.extra["aligner"]``); its rows are
used as they are and that aligner goes into the model (:func:`training_aligner`), so training on an aligned
store and training on the raw store with ``--aligner`` give the same visual inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modgap.align.base import Aligner, load_aligner
from modgap.align.record import is_aligned, same_aligner, store_aligner
from modgap.errors import ModgapError
from modgap.files import read_rows
from modgap.mllm.chat import IGNORE, caption_messages, encode, llava_messages, place_image
from modgap.mllm.model import visual_view
from modgap.progress import ProgressFactory, silent
from modgap.store.checks import BadRows, usable_store_rows
from modgap.store.store import EmbeddingStore

KEEP_IDS = 1000  # missing ids listed in the report (the count is always exact)


@dataclasses.dataclass
class SourceReport:
    data: str
    store: str
    modality: str
    rows: int = 0
    samples: int = 0
    missing: int = 0
    missing_ids: list[str] = dataclasses.field(default_factory=list)
    placeholder_added: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    bad_vectors: int = 0  # samples left out under --on-bad skip (their embedding is NaN, Inf or zero)

    def line(self) -> str:
        parts = [f"{self.data}: {self.samples} samples from {self.rows} rows ({self.modality} embeddings)"]
        if self.missing:
            parts.append(f"{self.missing} rows skipped (id not in {self.store}; e.g. {self.missing_ids[:3]})")
        if self.placeholder_added:
            parts.append(f"<image> added to {self.placeholder_added}")
        if self.truncated:
            parts.append(f"{self.truncated} cut to max_length")
        if self.dropped_overlong:
            parts.append(f"{self.dropped_overlong} dropped (over max_length, no reply left)")
        if self.bad_vectors:
            parts.append(f"{self.bad_vectors} left out (NaN, Inf or zero embedding; see bad_rows.jsonl)")
        return "; ".join(parts)


@dataclasses.dataclass
class Source:
    store: EmbeddingStore
    modality: str
    aligned: bool = False  # rows written by an aligner: used as they are


def training_aligner(stores: Sequence[EmbeddingStore], aligner_dir: str | None) -> Aligner | None:
    """The aligner a model trained on ``stores`` reads through: the one recorded in aligned stores, or
    ``--aligner`` for raw ones. Refuses the combinations that would align twice or inconsistently."""
    recorded = [(s, a) for s in stores if (a := store_aligner(s)) is not None]
    if not recorded:
        return load_aligner(aligner_dir) if aligner_dir else None
    store, aligner = recorded[0]
    method = aligner.method
    if aligner_dir:
        raise ModgapError(
            f"{store.path} is already aligned with {method!r} (its manifest records the aligner); drop "
            "--aligner: training uses the store's rows as they are and the aligner recorded with them"
        )
    for other, other_aligner in recorded[1:]:
        if not same_aligner(aligner, other_aligner):
            raise ModgapError(f"{store.path} and {other.path} were written by different aligners")
    raw_text = [s for s in stores if not is_aligned(s) and (s.manifest.modality or "image") == "text"]
    if raw_text:
        raise ModgapError(
            f"{raw_text[0].path} is a raw text store and {store.path} an aligned one; align it with the same "
            "aligner ('modgap align apply') or train on raw stores with --aligner"
        )
    return aligner


@dataclasses.dataclass
class TrainingSet:
    """Tokenised samples: ``input_ids[i]``/``labels[i]`` (int32 arrays) and where their embedding lives."""

    input_ids: list[np.ndarray]
    labels: list[np.ndarray]
    source: np.ndarray  # which source each sample's embedding comes from
    row: np.ndarray  # its row in that source's store
    sources: list[Source]
    reports: list[SourceReport]

    def __len__(self) -> int:
        return len(self.input_ids)

    def num_tokens(self, indices: Sequence[int]) -> int:
        return int(sum(len(self.input_ids[i]) for i in indices))


def row_conversations(row: dict[str, Any], where: str, prompt: str) -> list[list[dict[str, str]]]:
    """The conversations one data row contributes (one per caption for caption rows)."""
    if "conversations" in row:
        return [llava_messages(row["conversations"], where)]
    caption = row.get("caption")
    captions = caption if isinstance(caption, list) else [caption]
    if caption is None or not all(isinstance(c, str) and c.strip() for c in captions):
        raise ModgapError(f"{where}: row needs 'conversations' or a non-empty 'caption' (string or list)")
    return [caption_messages(c, prompt) for c in captions]


def build_training_set(
    pairs: Sequence[tuple[str | Path, str | Path]],
    tokenizer: Any,
    num_visual_tokens: int,
    *,
    prompt: str,
    max_length: int,
    max_missing: float = 0.01,
    id_key: str = "id",
    bad: BadRows | None = None,
    progress: ProgressFactory = silent,
) -> TrainingSet:
    """Samples of every ``(data file, store)`` pair, tokenised; the embeddings they use are checked once
    (``bad``: the NaN/Inf/zero rule, an error unless it skips and records)."""
    bad = bad or BadRows("error")
    ids_out: list[np.ndarray] = []
    labels_out: list[np.ndarray] = []
    src_out: list[int] = []
    row_out: list[int] = []
    sources, reports = [], []
    for s, (data_path, store_path) in enumerate(pairs):
        store = EmbeddingStore.open(store_path)
        modality = store.manifest.modality or "image"
        if modality not in ("text", "image"):
            raise ModgapError(f"{store_path}: store modality is {modality!r}; expected text or image")
        rows = read_rows(data_path)
        first = len(row_out)
        report = SourceReport(str(data_path), str(store_path), modality, rows=len(rows))
        keys = []
        for n, row in enumerate(rows, 1):
            if id_key not in row:
                raise ModgapError(f"{data_path}: row {n} has no {id_key!r} field")
            keys.append(str(row[id_key]))
        index = store.id_index()
        with progress(f"tokenising {Path(data_path).name}", len(rows)) as advance:
            for n, (row, key) in enumerate(zip(rows, keys, strict=False), 1):
                advance(1)
                where = f"{data_path}: row {n} (id {key!r})"
                store_row = index.get(key)
                if store_row is None:
                    report.missing += 1
                    if len(report.missing_ids) < KEEP_IDS:
                        report.missing_ids.append(key)
                    continue
                for messages in row_conversations(row, where, prompt):
                    messages, added = place_image(messages, where)
                    report.placeholder_added += added
                    try:
                        enc = encode(tokenizer, messages, num_visual_tokens, max_length=max_length)
                    except ModgapError as e:
                        if "max_length" not in str(e):
                            raise ModgapError(f"{where}: {e}") from e
                        report.dropped_overlong += 1
                        continue
                    report.truncated += enc.truncated
                    report.samples += 1
                    ids_out.append(np.asarray(enc.input_ids, dtype=np.int32))
                    labels_out.append(np.asarray(enc.labels, dtype=np.int32))
                    src_out.append(s)
                    row_out.append(store_row)
        used = np.asarray(row_out[first:], dtype=np.int64)
        unique = np.unique(used)
        unusable = unique[~usable_store_rows(store, unique, bad)]
        if len(unusable):
            keep = ~np.isin(used, unusable)
            report.bad_vectors = int((~keep).sum())
            report.samples -= report.bad_vectors
            for out in (ids_out, labels_out, src_out, row_out):
                out[first:] = [x for x, ok in zip(out[first:], keep, strict=True) if ok]
        if rows and report.missing / len(rows) > max_missing:
            raise ModgapError(
                f"{data_path}: {report.missing} of {len(rows)} rows ({report.missing / len(rows):.1%}) have no "
                f"embedding in {store_path} (e.g. {report.missing_ids[:5]}); the limit is {max_missing:.1%} "
                "(--max-missing)"
            )
        sources.append(Source(store, modality, aligned=is_aligned(store)))
        reports.append(report)
    if not ids_out:
        raise ModgapError("no training samples left: " + " | ".join(r.line() for r in reports))
    return TrainingSet(ids_out, labels_out, np.asarray(src_out), np.asarray(row_out), sources, reports)


def collate(data: TrainingSet, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` of the samples ``indices``."""
    width = max(len(data.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    labels = torch.full((len(indices), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for j, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[j, :n] = torch.from_numpy(data.input_ids[i])
        labels[j, :n] = torch.from_numpy(data.labels[i])
        mask[j, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_visual(
    data: TrainingSet,
    indices: Sequence[int],
    aligner: Aligner | None,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    noise_std: float = 0.0,
    normalize: bool = True,
) -> torch.Tensor:
    """The visual inputs of the samples ``indices`` as the projector reads them (see :func:`visual_view`)."""
    indices = np.asarray(indices)
    out: torch.Tensor | None = None
    for s, source in enumerate(data.sources):
        sel = np.nonzero(data.source[indices] == s)[0]
        if not len(sel):
            continue
        raw = source.store.take(data.row[indices[sel]])
        view = visual_view(
            raw,
            source.modality,
            aligner,
            aligned=source.aligned,
            train=train,
            generator=generator,
            noise_std=noise_std,
            normalize=normalize,
        )
        if out is None:
            out = torch.empty((len(indices), view.shape[1]), dtype=view.dtype)
        out[torch.from_numpy(sel)] = view
    assert out is not None
    return out
