"""Universal multimodal embedders trained from a vision-language model (UniME).

Rooms: ``config`` (torch-free settings), ``losses`` (small loss modules), ``model`` (the VLM as an encoder:
templates, last-token pooling), ``data`` (the two stages' inputs), ``train`` (the recipe), ``encoder`` (the
``embedder:DIR`` encoder spec). Imports are lazy so that the CLI can read the settings without torch.
"""

from modgap.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "DistillationKL": "losses",
        "HardNegativeInfoNCE": "losses",
        "select_hard_negatives": "losses",
        "Embedder": "model",
        "Item": "model",
        "EmbedderConfig": "config",
        "EmbedderTrainConfig": "config",
    },
)
