"""Universal multimodal embedders trained from a vision-language model (UniME).

Rooms: ``config`` (torch-free settings), ``losses`` (small loss modules), ``model`` (the VLM as an encoder:
templates, last-token pooling), ``data`` (the two stages' inputs), ``train`` (the recipe), ``encoder`` (the
``embedder:DIR`` encoder spec). Imports are lazy so that the CLI can read the settings without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DistillationKL": "losses",
    "HardNegativeInfoNCE": "losses",
    "select_hard_negatives": "losses",
    "Embedder": "model",
    "Item": "model",
    "EmbedderConfig": "config",
    "EmbedderTrainConfig": "config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'modgap.embedder' has no attribute {name!r}")
    return getattr(importlib.import_module(f"modgap.embedder.{_EXPORTS[name]}"), name)
