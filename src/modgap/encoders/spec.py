"""Spec strings to encoders: ``hf:``, ``builtin:``, ``llm2clip:``, ``text:`` here, other kinds from the
``modgap.encoders`` entry-point group: a package registers ``KIND = "module:load"`` and ``load(rest,
**options)`` returns the encoder."""

from __future__ import annotations

import os
from typing import Any

import torch

from modgap.encoders.base import Encoder
from modgap.errors import ModgapError

ENTRY_POINT_GROUP = "modgap.encoders"

SPEC_HELP = (
    "hf:PATH (a 🤗 CLIP/SigLIP-style model directory, or a Hub id with --online), builtin:tiny-clip, "
    "llm2clip:VISION_DIR,LLM2VEC_DIR (needs --trust-remote-code for the published checkpoints), "
    "text:PATH (a sentence-transformers text embedder) or embedder:DIR (a trained modgap embedder)"
)


def load_encoder(
    spec: str,
    device: str | torch.device = "cpu",
    online: bool = False,
    trust_remote_code: bool = False,
    max_text_length: int | None = None,
    templates: str | os.PathLike | dict[str, str] | None = None,
) -> Encoder:
    """Build the encoder a spec names; fails with a clear error before any data is read. ``templates`` (prompt
    templates) apply to kinds that take them (``embedder:DIR`` on a stock multimodal LLM)."""
    kind, sep, rest = spec.partition(":")
    if not sep or len(kind) == 1:  # a bare path (a Windows drive letter is not a kind)
        kind, rest = "hf", spec
    if templates is not None and kind in ("builtin", "hf", "llm2clip", "text"):
        raise ModgapError(f"--templates applies to embedder:DIR encoders, not {kind}:")
    if kind == "builtin":
        from modgap.encoders.hf import HFDualEncoder
        from modgap.hub import resolve

        encoder = HFDualEncoder(resolve(spec), device=device, max_text_length=max_text_length)
        encoder.name = spec  # the manifest records the portable name, not this installation's path
        return encoder
    if kind == "hf":
        from modgap.encoders.hf import HFDualEncoder

        return HFDualEncoder(
            rest, device=device, online=online, trust_remote_code=trust_remote_code, max_text_length=max_text_length
        )
    if kind == "llm2clip":
        from modgap.encoders.llm2clip import LLM2CLIPEncoder

        vision, comma, text = rest.partition(",")
        if not comma:
            raise ModgapError(f"encoder spec {spec!r}: expected llm2clip:VISION_DIR,LLM2VEC_DIR")
        return LLM2CLIPEncoder(
            vision,
            text,
            device=device,
            online=online,
            trust_remote_code=trust_remote_code,
            max_text_length=max_text_length,
        )
    if kind == "text":
        from modgap.encoders.sentence import SentenceEncoder

        return SentenceEncoder(
            rest, device=device, online=online, trust_remote_code=trust_remote_code, max_text_length=max_text_length
        )
    plugin = _plugin(kind)
    if plugin is not None:
        extra = {"templates": templates} if templates is not None else {}
        return plugin(
            rest,
            device=device,
            online=online,
            trust_remote_code=trust_remote_code,
            max_text_length=max_text_length,
            **extra,
        )
    raise ModgapError(f"unknown encoder spec {spec!r}; expected {SPEC_HELP}")


def _plugin(kind: str) -> Any:
    """The loader an installed package registers for ``kind`` (entry-point group ``modgap.encoders``)."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
    return found[0].load() if found else None
