"""Encoders: contrastive dual encoders behind one interface, chosen by a spec string.

Specs: ``hf:PATH_OR_HUB_ID`` (a bare directory path means the same) for 🤗 CLIP, SigLIP/SigLIP2 and any
model with ``get_image_features``/``get_text_features``.
"""

from __future__ import annotations

import torch

from modgap.encoders.base import IMAGE, TEXT, Encoder, Prepared
from modgap.errors import ModgapError

SPEC_HELP = "hf:PATH (a 🤗 CLIP/SigLIP-style model directory, or a Hub id with --online)"


def load_encoder(
    spec: str,
    device: str | torch.device = "cpu",
    online: bool = False,
    trust_remote_code: bool = False,
    max_text_length: int | None = None,
) -> Encoder:
    """Build the encoder a spec names; fails with a clear error before any data is read."""
    kind, sep, rest = spec.partition(":")
    if not sep or len(kind) == 1:  # a bare path (a Windows drive letter is not a kind)
        kind, rest = "hf", spec
    if kind == "hf":
        from modgap.encoders.hf import HFDualEncoder

        return HFDualEncoder(
            rest, device=device, online=online, trust_remote_code=trust_remote_code, max_text_length=max_text_length
        )
    raise ModgapError(f"unknown encoder spec {spec!r}; expected {SPEC_HELP}")


__all__ = ["IMAGE", "SPEC_HELP", "TEXT", "Encoder", "Prepared", "load_encoder"]
