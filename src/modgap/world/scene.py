"""A procedural image-caption world, fully determined by a seed.

A scene has one *main* object (shape, colour, size, position) and 1 to 3 small *distractors* on a
tinted background. Captions always describe the main object, in one of several phrasings, and only
sometimes one distractor: the image holds more than its caption says. That information imbalance is
what makes a contrastive encoder trained on this world show a modality gap like real ones (see the
README's figures). Captions parse back to attributes, so generated captions can be scored per attribute.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "star", "cross"]
COLOURS = {
    "red": (220, 45, 45),
    "green": (50, 175, 70),
    "blue": (55, 90, 230),
    "yellow": (235, 215, 50),
    "purple": (150, 70, 200),
    "white": (240, 240, 240),
}
SIZES = {"small": 5.0, "large": 9.0}  # radius in pixels of a 32-pixel image (scaled with the image)
POSITIONS = {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72), "middle": (0.5, 0.5)}
ATTRIBUTES = ("shape", "colour", "size", "position")
DISTRACTOR_RADIUS = 2.5
SIZE_WORDS = {"small": "small", "little": "small", "large": "large", "big": "large"}
PLACE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "middle": "in the middle",
}
TEMPLATES = [
    "a {size} {colour} {shape} {place}",
    "there is a {size} {colour} {shape} {place}",
    "the image shows a {size} {colour} {shape} {place}",
    "a {colour} {shape} , {size} , {place}",
    "{place} there is a {size} {colour} {shape}",
]
SIZE_SYNONYMS = {"small": ["small", "little"], "large": ["large", "big"]}
DISTRACTOR_PROBABILITY = 0.3
PROMPT = "describe the image briefly ."


@dataclasses.dataclass
class Thing:
    shape: str
    colour: str
    size: str = "small"
    position: str | None = None  # main object: a named position; distractors: free
    xy: tuple[float, float] = (0.5, 0.5)  # centre as a fraction of the image side
    angle: float = 0.0


@dataclasses.dataclass
class Scene:
    main: Thing
    distractors: list[Thing]
    background: tuple[int, int, int]
    seed: int  # the scene's own seed: its image and captions depend on nothing else

    def attributes(self) -> dict[str, str]:
        return {
            "shape": self.main.shape,
            "colour": self.main.colour,
            "size": self.main.size,
            "position": str(self.main.position),
        }

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Scene:
        return cls(
            Thing(**{**d["main"], "xy": tuple(d["main"]["xy"])}),
            [Thing(**{**t, "xy": tuple(t["xy"])}) for t in d["distractors"]],
            tuple(d["background"]),
            d["seed"],
        )


def make_scene(seed: int) -> Scene:
    rng = np.random.default_rng(seed)
    position = str(rng.choice(list(POSITIONS)))
    cx, cy = POSITIONS[position]
    jitter = rng.uniform(-0.05, 0.05, size=2)
    main = Thing(
        str(rng.choice(SHAPES)),
        str(rng.choice(list(COLOURS))),
        str(rng.choice(list(SIZES))),
        position,
        (cx + jitter[0], cy + jitter[1]),
        float(rng.uniform(-10, 10)),  # upright, so a shape is recognisable at 32 pixels
    )
    distractors = [
        Thing(
            str(rng.choice(SHAPES)),
            str(rng.choice(list(COLOURS))),
            "small",
            None,
            tuple(rng.uniform(0.08, 0.92, size=2).tolist()),
            float(rng.uniform(0, 360)),
        )
        for _ in range(int(rng.integers(1, 4)))
    ]
    background = tuple(int(v) for v in rng.integers(0, 70, size=3))
    return Scene(main, distractors, background, seed)  # type: ignore[arg-type]


def make_scenes(n: int, seed: int, split: str) -> list[Scene]:
    """``n`` scenes of a named split; splits of one seed never share a scene seed."""
    base = (seed * 7919 + sum(ord(c) * 31**i for i, c in enumerate(split))) % (2**31) * 10_000_019
    return [make_scene(base + i) for i in range(n)]


def polygon(
    shape: str,
    cx: float,
    cy: float,
    r: float,
    angle: float,
    extra: dict[str, tuple[int, list[float], float]] | None = None,
) -> list[tuple[float, float]] | None:
    """The outline of ``shape`` (None for a circle): regular rings of points, ``extra`` adding shapes as
    (points per turn, radii repeated along the ring, angular offset)."""

    def ring(k: int, radii: list[float], offset: float) -> list[tuple[float, float]]:
        pts = []
        for i in range(k * len(radii)):
            a = math.radians(angle + offset) + 2 * math.pi * i / (k * len(radii))
            rr = radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    if extra and shape in extra:
        k, radii, offset = extra[shape]
        return ring(k, radii, offset)
    if shape == "square":
        return ring(4, [r * 1.15], 45)
    if shape == "triangle":
        return ring(3, [r * 1.2], -90)
    if shape == "star":
        return ring(5, [r * 1.25, r * 0.5], -90)
    if shape == "cross":
        w = r * 0.38
        pts = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    return None  # circle


def _draw(draw: ImageDraw.ImageDraw, thing: Thing, side: int, radius: float) -> None:
    cx, cy = thing.xy[0] * side, thing.xy[1] * side
    colour = COLOURS[thing.colour]
    poly = polygon(thing.shape, cx, cy, radius, thing.angle)
    if poly is None:
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    else:
        draw.polygon(poly, fill=colour)


def render(scene: Scene, side: int = 32) -> Image.Image:
    """The scene's image (RGB, ``side`` x ``side``); speckle noise from the scene's own seed."""
    scale = side / 32
    rng = np.random.default_rng(scene.seed + 1)
    base = np.asarray(scene.background, dtype=np.int16)
    pixels = np.clip(base + rng.integers(-12, 13, size=(side, side, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for d in scene.distractors:
        _draw(draw, d, side, DISTRACTOR_RADIUS * scale)
    _draw(draw, scene.main, side, SIZES[scene.main.size] * scale)
    return image


def caption(scene: Scene, variant: int | None = None, rng: np.random.Generator | None = None) -> str:
    """One caption of the scene: phrasing ``variant`` (or drawn from ``rng``), sometimes a distractor."""
    rng = rng if rng is not None else np.random.default_rng(scene.seed + 2)
    template = TEMPLATES[variant % len(TEMPLATES)] if variant is not None else str(rng.choice(TEMPLATES))
    m = scene.main
    size = str(rng.choice(SIZE_SYNONYMS[m.size]))
    text = template.format(size=size, colour=m.colour, shape=m.shape, place=PLACE[str(m.position)])
    if scene.distractors and rng.random() < DISTRACTOR_PROBABILITY:
        d = scene.distractors[int(rng.integers(len(scene.distractors)))]
        text += f" , next to a small {d.colour} {d.shape}"
    return text + " ."


def references(scene: Scene) -> list[str]:
    """Reference captions for scoring: every phrasing, without distractor clauses."""
    m = scene.main
    return [
        t.format(size=m.size, colour=m.colour, shape=m.shape, place=PLACE[str(m.position)]) + " ." for t in TEMPLATES
    ]


_TOKEN = re.compile(r"[a-z]+")
_POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "middle": "middle"}
_LEXICON = {"shape": {s: s for s in SHAPES}, "colour": {c: c for c in COLOURS}, "size": SIZE_WORDS,
            "position": _POSITION_WORDS}  # fmt: skip


def parse_caption(text: str) -> dict[str, str | None]:
    """The main object's attributes named by a caption (the clause before any 'next to')."""
    main = text.lower().split("next to")[0]
    return first_named(_TOKEN.findall(main), _LEXICON)


def first_named(words: list[str], lexicon: dict[str, dict[str, str]]) -> dict[str, str | None]:
    """For each attribute of ``lexicon`` (attribute -> {word: value}), the value of the first word naming it
    (None if none does); a word naming an attribute already found is read for the next one that knows it."""
    found: dict[str, str | None] = dict.fromkeys(lexicon)
    for w in words:
        for attribute, table in lexicon.items():
            if found[attribute] is None and w in table:
                found[attribute] = table[w]
                break
    return found


def vocabulary() -> list[str]:
    """Every word the world's captions and prompts use (for tokenizers)."""
    said = [*TEMPLATES, *PLACE.values(), PROMPT, "next to a", *SEED_TEMPLATES, EXPAND_PROMPT, QA_PROMPT,
            *(q for q, _ in QUESTIONS.values()), "yes no thing something"]  # fmt: skip
    words = set(_TOKEN.findall(" ".join(said)))
    words |= set(SHAPES) | set(COLOURS) | set(SIZE_WORDS)
    return [*sorted(words - {"size", "colour", "shape", "place", "seed", "caption"} | {"colour", "shape"}),
            ",", ".", "?", ":"]  # fmt: skip


# -- What the world's LM is asked to do as an LLM is in Unicorn: expand sparse seeds, write conversations -----
SEED_TEMPLATES = [
    "a {colour} shape",
    "a {shape}",
    "something {place}",
    "a {size} thing",
    "a {colour} {shape}",
    "a {size} shape {place}",
]
EXPAND_PROMPT = "{seed} : write a full caption ."
QA_PROMPT = "{caption} write questions and answers ."
# Restating a caption given in the prompt: a task of both worlds' LMs (the second world's Unicorn row expands
# its sparse seeds with it).
RESTATE = "say it another way ."
# The pieces of JSON syntax, tokens of the LM's word-level tokenizer so that its replies decode to valid JSON.
JSON_PIECES = ['{"turns": [', '{"question": "', '", "answer": "', '"}, ', '"}]}']
QUESTIONS = {  # type -> (question, answer from the main object)
    "colour": ("what colour is the shape ?", lambda m: m.colour),
    "shape": ("what shape is it ?", lambda m: m.shape),
    "size": ("is it big or small ?", lambda m: m.size),
    "position": ("where is it ?", lambda m: PLACE[str(m.position)]),
    "round": ("is it round ?", lambda m: "yes" if m.shape == "circle" else "no"),  # a step of inference
}


def sparse_seed(scene: Scene, rng: np.random.Generator) -> str:
    """A seed that names one or two things about the main object, as Unicorn's caption seeds are sparse."""
    m = scene.main
    template = str(rng.choice(SEED_TEMPLATES))
    return template.format(colour=m.colour, shape=m.shape, size=str(rng.choice(SIZE_SYNONYMS[m.size])),
                           place=PLACE[str(m.position)])  # fmt: skip


def question_answers(scene: Scene) -> list[tuple[str, str, str]]:
    """(type, question, short answer) about the main object, for every question type."""
    return [(kind, q, answer(scene.main)) for kind, (q, answer) in QUESTIONS.items()]


def conversation_json(scene: Scene, rng: np.random.Generator) -> str:
    """Two to five question/answer turns about the main object, in the JSON ``synth instructions`` asks for."""
    turns = question_answers(scene)
    picked = [turns[i] for i in rng.permutation(len(turns))[: int(rng.integers(2, len(turns) + 1))]]
    body = '"}, '.join('{"question": "' + q + '", "answer": "' + a + " ." for _, q, a in picked)
    return '{"turns": [' + body + '"}]}'
