"""Modality aligners: move source (text) embeddings into the target (image) distribution.

Rooms: ``base`` (the interface, registry and saved form), ``methods`` (ReAlign, Gaussian OT, ...), ``stats``
(streamed moments), ``fitting`` (fit/apply over stores), ``select`` (shrinkage chosen by validation), ``record``
(the aligned-store record).
"""

from modgap.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "ALIGNER_SUBDIR": "record",
        "is_aligned": "record",
        "same_aligner": "record",
        "store_aligner": "record",
        "REGISTRY": "base",
        "Aligner": "base",
        "load_aligner": "base",
        "make_aligner": "base",
        "method_help": "base",
        "method_names": "base",
        "parse_params": "base",
        "apply_to_store": "fitting",
        "fit": "fitting",
        "fit_and_apply": "fitting",
        "fit_and_save": "fitting",
        "METHODS": "methods",
        "C3": "methods",
        "GaussianNoise": "methods",
        "GaussianOT": "methods",
        "MeanShift": "methods",
        "NoAlignment": "methods",
        "ReAlign": "methods",
    },
)
