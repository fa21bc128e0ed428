"""`modgap embed`: inputs, the resumable multi-process pipeline."""

from modgap.embed.inputs import Columns, Inputs, read_inputs
from modgap.embed.pipeline import EmbedOptions, EmbedSummary, embed_data, embed_modality, embed_once

__all__ = [
    "Columns",
    "EmbedOptions",
    "EmbedSummary",
    "Inputs",
    "embed_data",
    "embed_modality",
    "embed_once",
    "read_inputs",
]
