"""Modality aligners: move source (text) embeddings into the target (image) distribution."""

from modgap.align.base import REGISTRY, Aligner, load_aligner, make_aligner, parse_params
from modgap.align.fit import apply_to_store, fit
from modgap.align.methods import C3, GaussianNoise, GaussianOT, MeanShift, NoAlignment, ReAlign

METHODS = tuple(REGISTRY)

__all__ = [
    "C3",
    "METHODS",
    "Aligner",
    "GaussianNoise",
    "GaussianOT",
    "MeanShift",
    "NoAlignment",
    "ReAlign",
    "apply_to_store",
    "fit",
    "load_aligner",
    "make_aligner",
    "parse_params",
]
