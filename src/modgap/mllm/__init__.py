"""ReVision-style vision-language models: a stock 🤗 causal LM reading one global embedding as k tokens."""

from modgap.mllm.chat import IMAGE_PLACEHOLDER, encode
from modgap.mllm.config import MLLMConfig
from modgap.mllm.model import VisionLanguageModel, visual_view
from modgap.mllm.projector import Projector

__all__ = ["IMAGE_PLACEHOLDER", "MLLMConfig", "Projector", "VisionLanguageModel", "encode", "visual_view"]
