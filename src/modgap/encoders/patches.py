"""Patch features as an encoder: each image becomes its vision tower's patch tokens, flattened to one row.

A store of patch features holds (patches x width) values per image, row-major, with the shape in the
manifest's encoder record (``features: patch``, ``tokens``, ``token_dim``). The vectors are the tower's
hidden states, not unit vectors; a vision-language model with ``token_mode="patch"`` projects each token
on its own (LLaVA's design) instead of expanding one global vector.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from modgap.encoders.base import IMAGE, Encoder, Prepared
from modgap.errors import ModgapError

FEATURES = ("global", "patch")


class PatchFeatures(Encoder):
    normalized_output = False

    def __init__(self, inner: Encoder, image_size: int = 224):
        self.inner = inner
        self.name = inner.name
        self.revision = inner.revision
        probe = inner.embed_patches(inner.prepare_images([Image.new("RGB", (image_size, image_size))]))
        self.tokens, self.token_dim = int(probe.shape[1]), int(probe.shape[2])
        self._dim = self.tokens * self.token_dim

    def image_preprocessor(self) -> Callable[[list[Image.Image]], Prepared]:
        return self.inner.image_preprocessor()

    def text_preprocessor(self) -> Callable[[list[str]], Prepared]:
        raise ModgapError("patch features are an image representation: embed texts with --features global")

    def embed(self, modality: str, batch: Prepared) -> torch.Tensor:
        if modality != IMAGE:
            raise ModgapError("patch features are an image representation: embed texts with --features global")
        return self.inner.embed_patches(batch).flatten(1)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "dim": self.dim, "features": "patch", "tokens": self.tokens,
                "token_dim": self.token_dim}  # fmt: skip


def patch_shape(encoder_record: dict[str, Any] | None) -> tuple[int, int] | None:
    """(tokens, token_dim) of a store of patch features (from its manifest's encoder record), else None."""
    if not encoder_record or encoder_record.get("features") != "patch":
        return None
    return int(encoder_record["tokens"]), int(encoder_record["token_dim"])
