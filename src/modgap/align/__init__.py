"""Modality aligners: move source (text) embeddings into the target (image) distribution."""

from modgap.align.base import REGISTRY, Aligner, load_aligner, make_aligner, method_help, method_names, parse_params
from modgap.align.fit import apply_to_store, fit, fit_and_apply, fit_and_save
from modgap.align.methods import C3, GaussianNoise, GaussianOT, MeanShift, NoAlignment, ReAlign
from modgap.align.record import ALIGNER_SUBDIR, is_aligned, same_aligner, store_aligner

METHODS = method_names()

__all__ = [
    "ALIGNER_SUBDIR",
    "C3",
    "METHODS",
    "REGISTRY",
    "Aligner",
    "GaussianNoise",
    "GaussianOT",
    "MeanShift",
    "NoAlignment",
    "ReAlign",
    "apply_to_store",
    "fit",
    "fit_and_apply",
    "fit_and_save",
    "is_aligned",
    "load_aligner",
    "make_aligner",
    "method_help",
    "method_names",
    "parse_params",
    "same_aligner",
    "store_aligner",
]
