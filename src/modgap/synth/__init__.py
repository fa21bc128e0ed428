"""Text-only data synthesis (Unicorn): ``settings`` (every stage's settings, written once), ``llm``
(backends), ``captions`` (stage 1), ``instructions`` (stage 2), ``pipeline`` (the stages with the text
stores, ``synth run``).

Imports nothing of ``mllm``: the stages produce files that ``modgap embed``, ``align`` and ``train`` read.
"""

from modgap.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "Sampling": "settings",
        "LLMSettings": "settings",
        "CaptionSettings": "settings",
        "InstructionSettings": "settings",
        "load_llm_backend": "llm",
        "open_backend": "llm",
        "synth_captions": "captions",
        "synth_instructions": "instructions",
        "UnicornConfig": "pipeline",
        "load_unicorn_config": "pipeline",
        "run_unicorn": "pipeline",
    },
)
