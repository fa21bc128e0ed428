"""The encoder interface: a contrastive dual encoder that maps images and texts into one space.

Preprocessing is split from the forward pass so that a DataLoader's worker processes can decode
images and tokenise texts while the model runs: ``prepare_*`` is pure CPU work on inputs, ``embed``
runs the model on what ``prepare_*`` returned.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from modgap.errors import ModgapError

IMAGE, TEXT = "image", "text"
Prepared = dict[str, torch.Tensor]


def open_images(paths: list[str | os.PathLike]) -> list[Image.Image]:
    """Image files decoded to RGB; an unreadable one is an error naming it."""
    pics = []
    for p in paths:
        try:
            with Image.open(p) as im:
                pics.append(im.convert("RGB"))
        except OSError as e:
            raise ModgapError(f"{p}: cannot read image ({e})") from e
    return pics


class Encoder(ABC):
    """Outputs are float32 tensors of shape (B, dim), L2-normalised unless ``normalized_output`` is False."""

    name: str  # e.g. "hf:/models/clip-vit-b32"
    revision: str | None = None  # a content hash of the weights, recorded in store manifests
    normalized_output: bool = True
    # Whether image batches are prepared whole (a processor whose per-image output varies in size, e.g. a
    # multimodal LLM's prompt with image tokens); otherwise images are prepared one by one and stacked.
    prepares_image_batches: bool = False

    @property
    def dim(self) -> int:
        """Output dimension, found once by encoding a one-word text."""
        if getattr(self, "_dim", None) is None:
            self._dim = int(self.encode_texts(["a"]).shape[1])
        return self._dim

    @abstractmethod
    def image_preprocessor(self) -> Callable[[list[Image.Image]], Prepared]:
        """Image decoding-to-tensors as a picklable callable, run in DataLoader workers."""

    @abstractmethod
    def text_preprocessor(self) -> Callable[[list[str]], Prepared]:
        """Tokenisation as a picklable callable, run in DataLoader workers."""

    def prepare_images(self, images: list[Image.Image]) -> Prepared:
        return self.image_preprocessor()(images)

    def prepare_texts(self, texts: list[str]) -> Prepared:
        return self.text_preprocessor()(texts)

    @abstractmethod
    def embed(self, modality: str, batch: Prepared) -> torch.Tensor:
        """Run the model on a prepared batch; returns (B, dim) unit vectors (float32, on the CPU)."""

    def embed_patches(self, batch: Prepared) -> torch.Tensor:
        """The vision tower's patch features of a prepared image batch, (B, patches, width), float32 on the CPU
        (LLaVA's visual tokens); encoders without a vision tower of patches do not have them."""
        raise ModgapError(f"{self.name} has no patch features")

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        return self.embed(IMAGE, self.prepare_images(images))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.embed(TEXT, self.prepare_texts(texts))

    def describe(self) -> dict[str, Any]:
        """What a store manifest records about the encoder."""
        record = {"name": self.name, "revision": self.revision, "dim": self.dim}
        if getattr(self, "max_text_length", None) is not None:
            record["max_text_length"] = self.max_text_length  # changes text vectors: a resume must match it
        return record

    def text_length(self, text: str) -> int:
        """A cheap length estimate used to bucket texts of similar length together."""
        return len(text)
