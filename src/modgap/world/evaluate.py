"""Scoring generated captions against world scenes: per-attribute accuracy, exact scene, BLEU-4, CIDEr."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modgap.eval.caption import caption_metrics
from modgap.world.worlds import get_world


def attribute_hits(
    predictions: Sequence[str], truths: Sequence[dict[str, str]], world: str = "shapes"
) -> dict[str, np.ndarray]:
    """Per caption and attribute: does the attribute parsed from the caption match the truth (booleans)."""
    kind = get_world(world)
    return _hits([kind.parse_caption(text) for text in predictions], truths, kind.attributes)


def _hits(parsed: Sequence[dict[str, Any]], truths: Sequence[dict[str, str]], names: Sequence[str]) -> dict:
    return {a: np.array([p[a] == t[a] for p, t in zip(parsed, truths, strict=True)], bool) for a in names}


def relation_hits(predictions: Sequence[str], scenes: Sequence[Any], world: str = "shapes") -> list[bool | None]:
    """Per caption: the relation it names holds in its scene (True/False), or it names none (None); empty for a
    world whose captions name no relations."""
    kind = get_world(world)
    if kind.relation_true is None:
        return []
    return _relations_hold(kind, [kind.parse_caption(p) for p in predictions], scenes)


def _relations_hold(kind: Any, parsed: Sequence[dict[str, Any]], scenes: Sequence[Any]) -> list[bool | None]:
    return [kind.relation_true(s, p) for p, s in zip(parsed, scenes, strict=True)]


def score_captions(predictions: Sequence[str], scenes: Sequence[Any], world: str = "shapes") -> dict[str, float]:
    """Accuracy of each main-object attribute parsed from the captions, their mean, the fraction with all
    right (``exact``), and corpus BLEU-4 / CIDEr against every reference phrasing. The second world
    (``relations``) adds ``relation`` (the caption names a relation that holds) and ``relation_said``."""
    if len(predictions) != len(scenes) or not scenes:
        raise ValueError("one prediction per scene, at least one scene")
    kind = get_world(world)
    names = kind.attributes
    parsed = [kind.parse_caption(text) for text in predictions]
    hits = _hits(parsed, [s.attributes() for s in scenes], names)
    n = len(scenes)
    out = {a: int(hits[a].sum()) / n for a in names}
    out["attributes"] = sum(out[a] for a in names) / len(names)
    out["exact"] = int(np.logical_and.reduce([hits[a] for a in names]).sum()) / n
    if kind.relation_true is not None:
        truths = _relations_hold(kind, parsed, scenes)
        out["relation"] = sum(t is True for t in truths) / n  # names a relation that holds
        out["relation_said"] = sum(t is not None for t in truths) / n
    text_scores = caption_metrics(
        {str(i): p for i, p in enumerate(predictions)}, {str(i): kind.references(s) for i, s in enumerate(scenes)}
    )
    out["bleu4"], out["cider"] = text_scores["bleu4"], text_scores["cider"]
    return out


def chance_levels(world: str = "shapes") -> dict[str, float]:
    """One over the values each attribute takes (uniform guessing)."""
    return get_world(world).chance_levels()
