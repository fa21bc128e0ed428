"""``embedder:DIR``: a trained embedder behind the common encoder interface (embed, gap, eval use it as is).

Texts are embedded from their prompts. Images go first through the base encoder the model was trained on
(recorded in its config, e.g. ``builtin:tiny-clip``), then through the model's aligner view, projector and
LM, as the embedder saw them in training. Registered under the ``modgap.encoders`` entry-point group.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from modgap.embedder.model import Embedder, PromptBuilder
from modgap.encoders.base import IMAGE, Encoder, Prepared
from modgap.errors import ModgapError
from modgap.hub import weights_revision
from modgap.mllm.infer import prepared_visual, resolve_model_dir


class EmbedderEncoder(Encoder):
    def __init__(
        self,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        online: bool = False,
        trust_remote_code: bool = False,
        max_text_length: int | None = None,
        batch_size: int = 64,
    ):
        directory = resolve_model_dir(path)
        self.embedder = Embedder.load(directory, device=device)
        self.embedder.eval()
        if max_text_length:
            self.embedder.config.max_text_tokens = max_text_length
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.name = f"embedder:{path}"
        parts = [weights_revision(directory / sub) for sub in ("llm", "adapter", ".")]
        self.revision = "+".join(p for p in parts if p) or None
        self.online = online
        self._base: Encoder | None = None

    @property
    def base(self) -> Encoder:
        """The image encoder the model reads (loaded on first use: text-only work does not need it)."""
        if self._base is None:
            from modgap.encoders import load_encoder

            spec = self.embedder.vlm.config.encoder
            if not spec:
                raise ModgapError(f"{self.name}: the model records no image encoder, so it cannot embed images")
            self._base = load_encoder(spec, device=self.device, online=self.online)
        return self._base

    @property
    def dim(self) -> int:
        return int(self.embedder.vlm.config.hidden_size)

    def image_preprocessor(self) -> Callable[[list[Image.Image]], Prepared]:
        return self.base.image_preprocessor()

    def text_preprocessor(self) -> PromptBuilder:
        return self.embedder.prompts

    def text_length(self, text: str) -> int:
        return len(text)

    def visual_inputs(self, batch: Prepared) -> torch.Tensor:
        """A prepared image batch as the model reads it (global embeddings or patch tokens of the base encoder)."""
        return prepared_visual(self.embedder.vlm, self.base, batch)

    def image_inputs(self, images: list[Image.Image]) -> torch.Tensor:
        return self.visual_inputs(self.base.prepare_images(images))

    @torch.inference_mode()
    def embed(self, modality: str, batch: Prepared) -> torch.Tensor:
        if modality == IMAGE:
            return self.embedder.embed_images(self.visual_inputs(batch), batch_size=self.batch_size)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.embedder(batch["input_ids"], batch["attention_mask"]).float().cpu()

    def embed_items(self, texts: list[str | None], images: list[Image.Image | None]) -> torch.Tensor:
        """Mixed inputs (text, image or both per item; a text's ``<image>`` marks where its image goes)."""
        from modgap.embedder.model import Item

        pictures = [im for im in images if im is not None]
        visual = self.image_inputs(pictures) if pictures else None
        items = [Item(text=t, image=im is not None) for t, im in zip(texts, images, strict=True)]
        return self.embedder.embed(items, visual, batch_size=self.batch_size)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_encoder": self.embedder.vlm.config.encoder}


def load(spec_rest: str, templates: Any = None, **kwargs: Any) -> Encoder:
    """The ``modgap.encoders`` entry point: ``embedder:DIR``, a modgap embedder (or model) directory or a stock
    🤗 multimodal LLM (:mod:`modgap.embedder.stock`; ``templates``: its prompt templates)."""
    from modgap.embedder.config import EMBEDDER_FILE
    from modgap.embedder.stock import StockEmbedder, is_stock_mllm
    from modgap.mllm.config import CONFIG_FILE

    directory = resolve_model_dir(spec_rest)
    if not (directory / CONFIG_FILE).is_file():
        for candidate in (directory, directory / "model"):  # a stock checkpoint, or a run that trained one
            if is_stock_mllm(candidate):
                return StockEmbedder(candidate, templates=templates, **kwargs)
    if templates is not None:
        raise ModgapError(f"{spec_rest}: --templates applies to stock multimodal LLMs; a modgap embedder keeps its own")
    if not (directory / CONFIG_FILE).is_file() and not (directory / EMBEDDER_FILE).is_file():
        raise ModgapError(
            f"{spec_rest}: neither a modgap embedder or model directory nor a stock multimodal LLM "
            "(a config.json that AutoModelForImageTextToText loads)"
        )
    return EmbedderEncoder(spec_rest, **kwargs)
