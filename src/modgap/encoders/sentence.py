"""``text:PATH``: a text-only sentence embedder in the sentence-transformers layout, loaded with 🤗 transformers.

The directory holds a 🤗 encoder (``config.json``, weights, tokenizer) and, as sentence-transformers writes
it, ``modules.json`` with a ``1_Pooling/config.json`` (mean, CLS or max pooling) and optionally a Normalize
module. Outputs are L2-normalised like every modgap encoder. Used for teacher embeddings (UniME stage 1)
and text-side baselines; it has no image side.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from modgap.encoders.base import IMAGE, Encoder, Prepared
from modgap.errors import ModgapError
from modgap.hub import default_dtype, load_kwargs, weights_revision

POOLINGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


def read_pooling(path: Path) -> str:
    """The pooling a sentence-transformers directory declares (mean when it declares none)."""
    modules = path / "modules.json"
    if not modules.is_file():
        return "mean"
    try:
        entries = json.loads(modules.read_text())
        pool_dir = next((m["path"] for m in entries if m.get("type", "").endswith("Pooling")), None)
        if pool_dir is None:
            return "mean"
        config = json.loads((path / pool_dir / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModgapError(f"{path}: unreadable sentence-transformers pooling config ({e})") from e
    chosen = [mode for key, mode in POOLINGS.items() if config.get(key)]
    if len(chosen) != 1:
        raise ModgapError(f"{path}: pooling {config} is not one of mean, cls or max")
    return chosen[0]


class TextPrep:
    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: list[str]) -> Prepared:
        out = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


class SentenceEncoder(Encoder):
    def __init__(
        self,
        path: str,
        device: str | torch.device = "cpu",
        online: bool = False,
        trust_remote_code: bool = False,
        max_text_length: int | None = None,
    ):
        from transformers import AutoModel, AutoTokenizer

        local = Path(path)
        kwargs = load_kwargs([path], online, trust_remote_code)
        self.device = torch.device(device)
        try:
            self.model = AutoModel.from_pretrained(path, dtype=default_dtype(self.device), **kwargs)
            self.tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as e:
            raise ModgapError(f"{path}: cannot load a transformers text encoder ({e})") from e
        self.model = self.model.to(self.device).eval()
        self.pooling = read_pooling(local) if local.is_dir() else "mean"
        self.name = f"text:{path}"
        self.revision = weights_revision(local) if local.is_dir() else None
        limit = getattr(self.model.config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        st_config = local / "sentence_bert_config.json"
        if st_config.is_file():  # the length the sentence embedder was trained with
            limit = min(limit, int(json.loads(st_config.read_text()).get("max_seq_length", limit)))
        self.max_text_length = min(max_text_length or limit, limit)

    def image_preprocessor(self) -> Callable[[list[Image.Image]], Prepared]:
        raise ModgapError(f"{self.name} is a text-only encoder: it cannot embed images")

    def text_preprocessor(self) -> TextPrep:
        return TextPrep(self.tokenizer, self.max_text_length)

    def text_length(self, text: str) -> int:
        return len(self.tokenizer.tokenize(text))

    @torch.inference_mode()
    def embed(self, modality: str, batch: Prepared) -> torch.Tensor:
        if modality == IMAGE:
            raise ModgapError(f"{self.name} is a text-only encoder: it cannot embed images")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, float("-inf")).max(1).values
        else:
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()
