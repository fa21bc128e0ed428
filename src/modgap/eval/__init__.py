"""Evaluation: ``caption`` (pycocoevalcap BLEU/CIDEr of a model's captions), ``vqa``, ``retrieval``,
``compositional`` and ``mmeb`` (VLM2Vec's benchmark, for any encoder with ``embed_items``).
"""

from modgap.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "evaluate_mmeb": "mmeb",
        "MMEBResult": "mmeb",
        "group_means": "mmeb",
        "META_TASKS": "mmeb",
        "OUT_OF_DISTRIBUTION": "mmeb",
    },
)
