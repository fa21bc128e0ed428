"""The built-in worlds by name, each as the few functions the world's models are trained and scored with.

``shapes`` is the first world (:mod:`modgap.world.scene`: one main object, 300 distinct descriptions; its
tables in docs/world.md); ``relations`` the second (:mod:`modgap.world.relations_scene`: 2-4 objects with
relations, millions of distinct scenes) for the data-scaling claim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from modgap.errors import ModgapError
from modgap.world import relations_scene, scene


@dataclasses.dataclass(frozen=True)
class World:
    name: str
    image_size: int  # the side its encoder sees
    make_scenes: Callable[[int, int, str], list[Any]]
    render: Callable[[Any, int], Any]
    caption: Callable[..., str]  # caption(scene, rng=...): one caption in the world's phrasings
    vocabulary: Callable[[], list[str]]
    describes: Callable[[list[str], list[Any]], np.ndarray]  # [i, j]: caption i is true of scene j
    # A training caption: with probability ``partial`` (drawn only when it is non-zero) a minimal one.
    training_text: Callable[[Any, np.random.Generator, float], str]
    attributes: tuple[str, ...]  # of the main object, scored in generated captions
    parse_caption: Callable[[str], dict[str, Any]]
    references: Callable[[Any], list[str]]  # reference captions for BLEU/CIDEr
    prompt: str  # the captioning prompt
    encoder: str  # the world's built-in CLIP and chat LM
    llm: str
    chance_levels: Callable[[], dict[str, float]]  # per attribute: one over the values it takes
    # Unicorn's row: a sparse seed per scene, the prompt the LM expands it with, and the prompt it writes a
    # conversation about a caption with (None: the world's LM has no such task, the row pretrains only).
    sparse_seed: Callable[[Any, np.random.Generator], str]
    expand_prompt: str
    qa_prompt: str | None
    questions: bool  # held-out images come with questions (VQA figures)
    caption_tokens: int = 24  # new tokens a generated caption may take
    # relation_true(scene, parsed caption): the relation it names holds (None: it names none); None: the world's
    # captions name no relations.
    relation_true: Callable[[Any, dict[str, Any]], bool | None] | None = None


def _shapes_text(s: Any, rng: np.random.Generator, partial: float) -> str:
    # (no draw when there are no partial captions, so that older settings regenerate the same weights)
    return scene.sparse_seed(s, rng) if partial and rng.random() < partial else scene.caption(s, rng=rng)


def _relations_text(s: Any, rng: np.random.Generator, partial: float) -> str:
    if partial and rng.random() < partial:
        return relations_scene.short_caption(s, rng)
    return relations_scene.caption(s, rng)


def _shapes_describes(texts: list[str], scenes: list[Any]) -> np.ndarray:
    from modgap.world.encoder import describes

    return describes(texts, scenes)


def _shapes_chance() -> dict[str, float]:
    return {"shape": 1 / len(scene.SHAPES), "colour": 1 / len(scene.COLOURS), "size": 1 / len(scene.SIZES),
            "position": 1 / len(scene.POSITIONS)}  # fmt: skip


WORLDS = {
    "shapes": World("shapes", 32, scene.make_scenes, scene.render, scene.caption, scene.vocabulary,
                    _shapes_describes, _shapes_text, scene.ATTRIBUTES, scene.parse_caption, scene.references,
                    scene.PROMPT, "builtin:tiny-clip", "builtin:tiny-lm", _shapes_chance, scene.sparse_seed,
                    scene.EXPAND_PROMPT, scene.QA_PROMPT, questions=True),
    "relations": World("relations", relations_scene.SIDE, relations_scene.make_scenes, relations_scene.render,
                       relations_scene.caption, relations_scene.vocabulary, relations_scene.describes,
                       _relations_text, relations_scene.ATTRIBUTES, relations_scene.parse_caption,
                       relations_scene.references, relations_scene.PROMPT, "builtin:tiny-clip-relations",
                       "builtin:tiny-lm-relations", relations_scene.chance_levels, relations_scene.short_caption,
                       relations_scene.EXPAND_PROMPT, None, questions=False, caption_tokens=40,
                       relation_true=relations_scene.relation_true),
}  # fmt: skip


def get_world(name: str) -> World:
    if name not in WORLDS:
        raise ModgapError(f"unknown world {name!r}; choose one of {sorted(WORLDS)}")
    return WORLDS[name]
