"""ReVision-style vision-language models: a stock 🤗 causal LM reading one global embedding as k tokens.

Names are imported on first use, so that ``modgap.mllm.config`` (the settings) loads without torch.
"""

from modgap.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "IMAGE_PLACEHOLDER": "chat",
        "encode": "chat",
        "MLLMConfig": "config",
        "TrainConfig": "config",
        "VisionLanguageModel": "model",
        "visual_view": "model",
        "Projector": "projector",
    },
)
