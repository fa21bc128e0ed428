"""Encoders: contrastive dual encoders behind one interface, chosen by a spec string.

Specs: ``hf:PATH_OR_HUB_ID`` (a bare directory path means the same) for 🤗 CLIP, SigLIP/SigLIP2 and any
model with ``get_image_features``/``get_text_features``; ``llm2clip:VISION,LLM2VEC`` for LLM2CLIP;
``text:PATH`` for a text-only sentence embedder (sentence-transformers layout). Other kinds come from the
``modgap.encoders`` entry-point group (``embedder:DIR`` is one). Rooms: ``base`` (the interface), ``spec``
(spec strings to encoders), ``hf``, ``llm2clip``, ``sentence``, ``patches``.
"""

from modgap.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "IMAGE": "base",
        "TEXT": "base",
        "Encoder": "base",
        "Prepared": "base",
        "ENTRY_POINT_GROUP": "spec",
        "SPEC_HELP": "spec",
        "load_encoder": "spec",
    },
)
