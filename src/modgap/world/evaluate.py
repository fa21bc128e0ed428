"""Scoring generated captions against world scenes: per-attribute accuracy, exact scene, BLEU-4, CIDEr."""

from __future__ import annotations

from collections.abc import Sequence

from modgap.eval.caption import caption_metrics
from modgap.world.scene import ATTRIBUTES, Scene, parse_caption, references


def score_captions(predictions: Sequence[str], scenes: Sequence[Scene]) -> dict[str, float]:
    """Accuracy of each main-object attribute parsed from the captions, their mean, the fraction with all
    four right (``exact``), and corpus BLEU-4 / CIDEr against every reference phrasing."""
    if len(predictions) != len(scenes) or not scenes:
        raise ValueError("one prediction per scene, at least one scene")
    hits = dict.fromkeys(ATTRIBUTES, 0)
    exact = 0
    for text, scene in zip(predictions, scenes, strict=True):
        found, truth = parse_caption(text), scene.attributes()
        ok = [found[a] == truth[a] for a in ATTRIBUTES]
        for a, good in zip(ATTRIBUTES, ok, strict=True):
            hits[a] += good
        exact += all(ok)
    n = len(scenes)
    out = {a: hits[a] / n for a in ATTRIBUTES}
    out["attributes"] = sum(out[a] for a in ATTRIBUTES) / len(ATTRIBUTES)
    out["exact"] = exact / n
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
