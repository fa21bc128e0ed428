"""`modgap embed`: inputs (``inputs``) and the resumable multi-process pipeline (``pipeline``)."""

from modgap.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "Columns": "inputs",
        "Inputs": "inputs",
        "read_inputs": "inputs",
        "EmbedOptions": "pipeline",
        "EmbedSummary": "pipeline",
        "embed_data": "pipeline",
        "embed_modality": "pipeline",
        "embed_once": "pipeline",
    },
)
