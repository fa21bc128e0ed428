"""ReVision-style vision-language models: a stock 🤗 causal LM reading one global embedding as k tokens.

Names are imported on first use, so that ``modgap.mllm.config`` (the settings) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IMAGE_PLACEHOLDER": "modgap.mllm.chat",
    "encode": "modgap.mllm.chat",
    "MLLMConfig": "modgap.mllm.config",
    "TrainConfig": "modgap.mllm.config",
    "VisionLanguageModel": "modgap.mllm.model",
    "visual_view": "modgap.mllm.model",
    "Projector": "modgap.mllm.projector",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'modgap.mllm' has no attribute {name!r}")
