"""Inputs → visual embeddings → replies: what ``modgap generate``, caption evaluation and the demo share.

Visual inputs come from a store (rows as the model reads them: raw text through its aligner, images
through the aligner's target view, rows of an aligned store as they are), from image files or from texts
(both encoded with the model's recorded encoder).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from modgap.align.record import same_aligner, store_aligner
from modgap.encoders.base import IMAGE, Encoder, Prepared, open_images
from modgap.errors import ModgapError
from modgap.mllm.config import CONFIG_FILE
from modgap.mllm.model import VisionLanguageModel
from modgap.store.checks import BadRows, OnBad, bad_row_mask, row_norms, usable_store_rows
from modgap.store.store import EmbeddingStore


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model directory, or a training run's ``--out`` (whose model is in ``model/``)."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() and (path / "model" / CONFIG_FILE).is_file():
        return path / "model"
    return path


def load_model(path: str | os.PathLike, *, base_llm: str | None = None, device: str = "cpu") -> VisionLanguageModel:
    """A saved model (or a run's), in eval mode, without 🤗 download bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = VisionLanguageModel.load(resolve_model_dir(path), base_llm=base_llm, device=device)
    model.eval()
    return model


class StoreInputs:
    """Rows of one store as a model's visual inputs; checks once that the store suits the model, and never
    feeds it a NaN/Inf/zero vector (:meth:`usable` leaves them out under ``--on-bad skip``, recorded in
    ``bad``; reading one is an error)."""

    def __init__(self, model: VisionLanguageModel, store: EmbeddingStore | str | os.PathLike, on_bad: OnBad = "error"):
        self.model = model
        self.bad = BadRows(on_bad)
        self.store = store if isinstance(store, EmbeddingStore) else EmbeddingStore.open(store)
        self.modality = self.store.manifest.modality or "image"
        if self.store.dim != model.config.embed_dim:
            raise ModgapError(
                f"{self.store.path}: holds {self.store.dim}-d embeddings, the model reads {model.config.embed_dim}-d"
            )
        recorded = store_aligner(self.store)
        self.aligned = recorded is not None
        if recorded is not None and (model.aligner is None or not same_aligner(recorded, model.aligner)):
            raise ModgapError(
                f"{self.store.path}: rows were aligned with {recorded.method!r}, but the model reads through "
                + (f"{model.aligner.method!r}" if model.aligner else "no aligner")
                + "; use the raw store"
            )

    def usable(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Which of ``rows`` may be read: a bad one raises (``--on-bad error``) or is recorded and masked out."""
        return usable_store_rows(self.store, rows, self.bad)

    def rows(self, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        raw = self.store.take(rows)
        mask = bad_row_mask(row_norms(raw))
        if mask.any():
            ids = self.store.ids()
            BadRows("error").handle(str(self.store.path), [ids[r] for r in rows], raw, mask)
        return self.model.visual_inputs(torch.from_numpy(raw.astype(np.float32)), self.modality, aligned=self.aligned)

    def ids(self, ids: Sequence[str]) -> torch.Tensor:
        return self.rows(self.store.row_of(ids))


def image_inputs(
    model: VisionLanguageModel, paths: Sequence[str | os.PathLike], encoder: str | None = None, device: str = "cpu"
) -> torch.Tensor:
    """Image files encoded with ``encoder`` (default: the model's recorded encoder), as visual inputs."""
    enc = _encoder(model, encoder, device)
    return prepared_visual(model, enc, enc.prepare_images(open_images(list(paths))))


def prepared_visual(model: VisionLanguageModel, encoder: Encoder, batch: Prepared) -> torch.Tensor:
    """A prepared image batch as ``model`` reads it: the encoder's global embeddings, or its patch tokens for
    a model with a patch projector."""
    if model.config.token_mode == "patch":
        return model.visual_inputs(encoder.embed_patches(batch).flatten(1), "image")
    return model.visual_inputs(encoder.embed(IMAGE, batch), "image")


def text_inputs(
    model: VisionLanguageModel, texts: Sequence[str], encoder: str | None = None, device: str = "cpu"
) -> torch.Tensor:
    """Texts encoded with ``encoder`` (default: the model's) and aligned as in training: a check without images."""
    return model.visual_inputs(_encoder(model, encoder, device).encode_texts(list(texts)), "text")


def _encoder(model: VisionLanguageModel, spec: str | None, device: str):
    from modgap.encoders import load_encoder

    spec = spec or model.config.encoder
    if not spec:
        raise ModgapError("the model records no encoder; pass --encoder")
    return load_encoder(spec, device=device)
