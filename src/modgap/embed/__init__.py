"""`modgap embed`: inputs, the resumable multi-process pipeline."""

from modgap.embed.inputs import Columns, Inputs, read_inputs
from modgap.embed.pipeline import EmbedOptions, EmbedSummary, embed_modality, merge_rank_stores

__all__ = ["Columns", "EmbedOptions", "EmbedSummary", "Inputs", "embed_modality", "merge_rank_stores", "read_inputs"]
