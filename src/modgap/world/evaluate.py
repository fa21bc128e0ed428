"""Scoring generated captions against world scenes: per-attribute accuracy, exact scene, BLEU-4, CIDEr."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modgap.eval.caption import caption_metrics
from modgap.world.scene import ATTRIBUTES, Scene, parse_caption, references


def attribute_hits(predictions: Sequence[str], truths: Sequence[dict[str, str]]) -> dict[str, np.ndarray]:
    """Per caption and attribute: does the attribute parsed from the caption match the truth (booleans)."""
    found = [parse_caption(text) for text in predictions]
    return {a: np.array([f[a] == t[a] for f, t in zip(found, truths, strict=True)], bool) for a in ATTRIBUTES}


def score_captions(predictions: Sequence[str], scenes: Sequence[Scene]) -> dict[str, float]:
    """Accuracy of each main-object attribute parsed from the captions, their mean, the fraction with all
    four right (``exact``), and corpus BLEU-4 / CIDEr against every reference phrasing."""
    if len(predictions) != len(scenes) or not scenes:
        raise ValueError("one prediction per scene, at least one scene")
    hits = attribute_hits(predictions, [s.attributes() for s in scenes])
    n = len(scenes)
    out = {a: int(hits[a].sum()) / n for a in ATTRIBUTES}
    out["attributes"] = sum(out[a] for a in ATTRIBUTES) / len(ATTRIBUTES)
    out["exact"] = int(np.logical_and.reduce([hits[a] for a in ATTRIBUTES]).sum()) / n
    text_scores = caption_metrics(
        {str(i): p for i, p in enumerate(predictions)}, {str(i): references(s) for i, s in enumerate(scenes)}
    )
    out["bleu4"], out["cider"] = text_scores["bleu4"], text_scores["cider"]
    return out


def chance_levels() -> dict[str, float]:
    from modgap.world.scene import COLOURS, POSITIONS, SHAPES, SIZES

    return {
        "shape": 1 / len(SHAPES),
        "colour": 1 / len(COLOURS),
        "size": 1 / len(SIZES),
        "position": 1 / len(POSITIONS),
    }
