"""The second built-in world, ``relations``: scenes of two to four objects with relations, far more diverse
than any pool the demo trains on (the first world, :mod:`modgap.world.scene`, has 300 distinct main-object
descriptions, so 1500 pairs already cover it and no data-scaling claim can be tested there).

A scene holds 2-4 objects (8 shapes, 8 colours, 3 textures, continuous sizes and positions, some in counted
groups, a small object sometimes inside a big ring) on one of 4 backgrounds. A caption describes only part
of it: always the main object's colour and shape (clearly the largest; a counted main group is a cluster),
its other attributes each with some probability, often one relation to another object, sometimes one more;
phrasings, word order and synonyms vary, so exact duplicate captions are rare. Captions parse back to the
main object's attributes and to relations, and a relation is scored against the scene's geometry
(:func:`holds`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from modgap.world.scene import COLOURS as FIRST_WORLD_COLOURS
from modgap.world.scene import RESTATE, first_named, polygon
from modgap.world.scene import SHAPES as FIRST_WORLD_SHAPES

SIDE = 48  # image side in pixels: textures and four objects need more room than the first world's 32
SHAPES = [*FIRST_WORLD_SHAPES, "diamond", "hexagon", "ring"]
COLOURS = {**FIRST_WORLD_COLOURS, "orange": (245, 140, 30), "cyan": (60, 210, 220)}
TEXTURES = ["plain", "striped", "dotted"]
SIZES = {"small": (3.5, 5.0), "medium": (5.5, 7.0), "large": (7.5, 9.5)}  # radius ranges, pixels of SIDE
BACKGROUNDS = {"dark": (20, 20, 28), "grey": (90, 90, 95), "navy": (20, 30, 75), "forest": (20, 60, 30)}
RELATIONS = ("left of", "right of", "above", "below", "inside", "holding")
ATTRIBUTES = ("shape", "colour", "size", "texture", "position", "count")
NUMBERS = {1: "one", 2: "two", 3: "three"}
PROMPT = "describe the image briefly ."
# Unicorn's expansion step: the LM restates a sparse seed (its short caption) and fills in what the seed leaves
# unsaid from its own prior (the second world's LM was trained to caption and to restate, nothing else).
EXPAND_PROMPT = "{seed} " + RESTATE

# Synonyms: each caption draws one, the parser maps all back.
SIZE_WORDS = {"small": ["small", "little", "tiny"], "medium": ["medium", "mid-sized"], "large": ["large", "big"]}
TEXTURE_WORDS = {"plain": ["plain", "solid"], "striped": ["striped", "stripy"], "dotted": ["dotted", "spotted"]}
RELATION_WORDS = {
    "left of": ["left of", "to the left of"],
    "right of": ["right of", "to the right of"],
    "above": ["above", "over"],
    "below": ["below", "under", "beneath"],
    "inside": ["inside", "within"],
    "holding": ["holding", "containing"],  # a ring with an object inside: the main object is the larger one
}
ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "centre", "right")
MAIN_TEMPLATES = [  # {place} may be empty: the caption then does not say where
    "{desc} {place}",
    "there is {desc} {place}",
    "the picture shows {desc} {place}",
    "{place} , {desc}",
    "{place} we see {desc}",
    "an image of {desc} {place}",
    "{desc} sits {place}",
    "you can see {desc} {place}",
]
RELATION_TEMPLATES = [" , {rel} {other}", " and it is {rel} {other}", " ; it lies {rel} {other}"]
EXTRA_TEMPLATES = [" , and also {other}", " , plus {other}", " ; there is also {other}"]
# Texture is said often enough that its most likely word beats the colour word that would follow without it:
# at 0.6 (two synonyms each) a greedy reply never said it (measured: the LM restated texture 2 % of the time).
P_SIZE, P_TEXTURE, P_PLACE, P_RELATION, P_EXTRA = 0.75, 0.85, 0.7, 0.65, 0.35
# The main object must be the one an encoder can tell is the largest: every other object's radius is at most
# 1/SALIENCE of it. (Before, "the largest" was often a fraction of a pixel larger than another object: in 26 %
# of scenes the runner-up was within 15 % of its radius, and a tiny ViT could not learn which object a caption
# was about; measured, a supervised probe's place accuracy at 200 steps 0.18 before, 0.29 after.) A counted main
# group is a cluster (copies within CLUSTER of the first, as a fraction of the side), placed by its centre.
SALIENCE, MIN_RADIUS, CLUSTER, RING_HOLDS = 1.3, 2.5, 0.22, 7.0


@dataclasses.dataclass
class Obj:
    shape: str
    colour: str
    texture: str
    radius: float  # pixels of a SIDE-pixel image
    xy: tuple[float, float]  # centre as a fraction of the side
    angle: float = 0.0
    group: int = 0  # objects of one counted group share shape, colour, texture and size word

    @property
    def size(self) -> str:
        return next(name for name, (lo, hi) in SIZES.items() if self.radius <= hi + 1e-9 or name == "large")

    @property
    def position(self) -> str:
        return region(self.xy)


@dataclasses.dataclass
class RelationScene:
    objects: list[Obj]  # objects[0] is the main object (the largest)
    background: str
    seed: int

    @property
    def main(self) -> Obj:
        return self.objects[0]

    def count(self, obj: Obj) -> int:
        """How many objects share ``obj``'s group (1 for a single object)."""
        return sum(o.group == obj.group for o in self.objects)

    def place(self, obj: Obj) -> str:
        """Where ``obj``'s group is: the region of its members' centre (a single object's own region)."""
        members = [o.xy for o in self.objects if o.group == obj.group]
        return region(tuple(sum(c) / len(members) for c in zip(*members, strict=True)))

    def attributes(self) -> dict[str, str]:
        m = self.main
        return {"shape": m.shape, "colour": m.colour, "size": m.size, "texture": m.texture,
                "position": self.place(m), "count": str(self.count(m))}  # fmt: skip

    def description(self) -> str:
        """Every object's attributes and every relation between objects of different groups, in a canonical
        order: two scenes with the same description are the same for every caption the world can write."""
        things = sorted(f"{o.size} {o.texture} {o.colour} {o.shape} at {o.position}" for o in self.objects)
        rels = sorted(f"{_name(a)} {r} {_name(b)}" for a, r, b in relations(self))
        return f"{self.background} | " + " | ".join(things) + " || " + " | ".join(rels)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RelationScene:
        return cls([Obj(**{**o, "xy": tuple(o["xy"])}) for o in d["objects"]], d["background"], d["seed"])


def region(xy: tuple[float, ...]) -> str:
    """Which of nine regions a point (fractions of the side) lies in: top left, top, top right, left, middle,
    right, bottom left, bottom, bottom right."""
    row = ROWS[min(2, int(xy[1] * 3))]
    column = COLUMNS[min(2, int(xy[0] * 3))]
    if row == "middle":
        return "middle" if column == "centre" else column
    return row if column == "centre" else f"{row} {column}"


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _name(o: Obj) -> str:
    return f"{o.colour} {o.shape}"


def make_scene(seed: int) -> RelationScene:
    """A scene whose main object (group 0) is clearly the largest and, when counted, a cluster (see SALIENCE)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 5))
    objects: list[Obj] = []
    group, main_radius = 0, 0.0
    while len(objects) < n:
        shape, colour = str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS)))
        texture = str(rng.choice(TEXTURES))
        copies = int(rng.choice([1, 1, 1, 2, 3])) if len(objects) + 1 < n else 1
        copies = min(copies, n - len(objects))
        if group == 0:
            main_radius = radius = float(rng.uniform(*SIZES[str(rng.choice(list(SIZES)))]))
        else:
            radius = float(rng.uniform(MIN_RADIUS, main_radius / SALIENCE))
        anchor = _free_spot(rng, objects, radius)
        for c in range(copies):  # the main group's copies cluster round its first
            xy = anchor if c == 0 else _free_spot(rng, objects, radius, near=anchor if group == 0 else None)
            objects.append(Obj(shape, colour, texture, radius, xy, float(rng.uniform(-12, 12)), group))
        group += 1
    # A small object inside a big ring, sometimes: the one containment relation.
    rings = [o for o in objects if o.shape == "ring" and o.radius >= RING_HOLDS]
    if rings and rng.random() < 0.5:
        ring = rings[0]
        inner = Obj(str(rng.choice([s for s in SHAPES if s != "ring"])), str(rng.choice(list(COLOURS))),
                    "plain", float(rng.uniform(2.0, 2.8)), ring.xy, 0.0, group)  # fmt: skip
        objects.append(inner)
    objects.sort(key=lambda o: (o.group != 0, -o.radius))  # the main group first
    return RelationScene(objects, str(rng.choice(list(BACKGROUNDS))), seed)


def _free_spot(
    rng: np.random.Generator, placed: list[Obj], radius: float, near: tuple[float, float] | None = None
) -> tuple[float, float]:
    """A centre whose disc overlaps no placed object's (best of 50 tries); ``near``: within CLUSTER of it."""
    best, best_gap = near or (0.5, 0.5), -math.inf
    margin = (radius + 1) / SIDE
    for _ in range(50):
        if near is None:
            xy = tuple(rng.uniform(margin, 1 - margin, size=2).tolist())
        else:
            xy = tuple(np.clip(np.asarray(near) + rng.uniform(-CLUSTER, CLUSTER, 2), margin, 1 - margin).tolist())
        gap = min((math.dist(xy, o.xy) * SIDE - o.radius - radius for o in placed), default=math.inf)
        if gap > (1.5 if near is None else 1.0):
            return xy  # type: ignore[return-value]
        if gap > best_gap:
            best, best_gap = xy, gap
    return best  # type: ignore[return-value]


def make_scenes(n: int, seed: int, split: str) -> list[RelationScene]:
    """``n`` scenes of a named split; splits of one seed never share a scene seed (as in the first world)."""
    base = (seed * 7919 + sum(ord(c) * 31**i for i, c in enumerate(split))) % (2**31) * 10_000_019 + 5_000_000
    return [make_scene(base + i) for i in range(n)]


def holds(a: Obj, relation: str, b: Obj) -> bool:
    """Whether ``a`` stands in ``relation`` to ``b`` in the image (what a relation in a caption is scored by)."""
    dx, dy = (a.xy[0] - b.xy[0]) * SIDE, (a.xy[1] - b.xy[1]) * SIDE
    if relation == "inside":
        return b.shape == "ring" and math.hypot(dx, dy) + a.radius < b.radius * 0.8
    if relation == "holding":
        return holds(b, "inside", a)
    if relation in ("left of", "right of"):
        return abs(dx) > max(abs(dy), 2.0) and (dx < 0) == (relation == "left of")
    return abs(dy) > max(abs(dx), 2.0) and (dy < 0) == (relation == "above")


def relations(scene: RelationScene) -> list[tuple[Obj, str, Obj]]:
    """Every (a, relation, b) that holds between objects of different groups."""
    return [(a, r, b) for a in scene.objects for b in scene.objects if a.group != b.group
            for r in RELATIONS if holds(a, r, b)]  # fmt: skip


# -- rendering ------------------------------------------------------------------------------------------------
def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]] | None:
    """The first world's shapes, plus a rhombus and a hexagon; None for circles and rings."""
    extra = {"diamond": (2, [r * 1.3, r * 0.8], 0.0), "hexagon": (6, [r * 1.05], 0.0)}
    return None if shape == "ring" else polygon(shape, cx, cy, r, angle, extra)


def _mask(o: Obj, side: int) -> np.ndarray:
    scale = side / SIDE
    cx, cy, r = o.xy[0] * side, o.xy[1] * side, o.radius * scale
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    outline = _outline(o.shape, cx, cy, r, o.angle)
    if outline is not None:
        draw.polygon(outline, fill=255)
    elif o.shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=max(2, round(r * 0.3)))
    else:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    return np.asarray(canvas) > 127


def render(scene: RelationScene, side: int = SIDE) -> Image.Image:
    """The scene's image (RGB, ``side`` x ``side``); speckle noise from the scene's own seed."""
    rng = np.random.default_rng(scene.seed + 1)
    base = np.asarray(BACKGROUNDS[scene.background], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-12, 13, size=(side, side, 3)), 0, 255).astype(np.int16)
    yy, xx = np.mgrid[0:side, 0:side] * (SIDE / side)
    for o in sorted(scene.objects, key=lambda o: -o.radius):  # small ones drawn last: a ring's content shows
        mask = _mask(o, side)
        colour = np.asarray(COLOURS[o.colour], dtype=np.int16)
        pixels[mask] = colour
        if o.texture == "striped":
            pattern = mask & (((xx + yy) // 2.5) % 2 == 0)
        elif o.texture == "dotted":
            pattern = mask & ((xx % 4) < 1.5) & ((yy % 4) < 1.5)
        else:
            continue
        pixels[pattern] = colour // 3
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


# -- captions -------------------------------------------------------------------------------------------------
def _place(position: str) -> str:
    return "in the middle" if position == "middle" else f"at the {position}"


def _phrase(scene: RelationScene, o: Obj, rng: np.random.Generator, full: bool) -> str:
    """Words for an object: colour and shape always; count, size and texture (``full``: with their
    probabilities; otherwise only the colour and shape)."""
    count = scene.count(o)
    words = []
    if full and rng.random() < P_SIZE:
        words.append(str(rng.choice(SIZE_WORDS[o.size])))
    if full and rng.random() < P_TEXTURE:
        words.append(str(rng.choice(TEXTURE_WORDS[o.texture])))
    words += [o.colour, plural(o.shape) if count > 1 else o.shape]
    article = NUMBERS[count] if count > 1 else ("an" if words[0][0] in "aeiou" else "a")
    return " ".join([article, *words])


def _main_sentence(template: str, desc: str, place: str, count: int) -> str:
    """A main-object frame filled in (``place`` may be empty), with plural verbs for a counted group."""
    text = re.sub(r"\s+", " ", template.format(desc=desc, place=place)).strip(" ,")
    if count > 1:
        text = text.replace("there is ", "there are ").replace(" sits", " sit")
    return text


def caption(scene: RelationScene, rng: np.random.Generator | None = None) -> str:
    """One partial caption of the scene (drawn from ``rng``, by default the scene's own)."""
    rng = rng if rng is not None else np.random.default_rng(scene.seed + 2)
    m = scene.main
    template = str(rng.choice(MAIN_TEMPLATES))
    place = _place(scene.place(m)) if rng.random() < P_PLACE else ""
    text = _main_sentence(template, _phrase(scene, m, rng, full=True), place, scene.count(m))
    from_main = [(r, b) for a, r, b in relations(scene) if a is m]
    if from_main and rng.random() < P_RELATION:
        r, b = from_main[int(rng.integers(len(from_main)))]
        words = str(rng.choice(RELATION_WORDS[r]))
        text += str(rng.choice(RELATION_TEMPLATES)).format(rel=words, other=_phrase(scene, b, rng, full=False))
    others = [o for o in scene.objects if o.group != m.group]
    if others and rng.random() < P_EXTRA:
        o = others[int(rng.integers(len(others)))]
        text += str(rng.choice(EXTRA_TEMPLATES)).format(other=_phrase(scene, o, rng, full=True))
    return text + " ."


_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)?")
_SIZE = {w: k for k, ws in SIZE_WORDS.items() for w in ws}
_TEXTURE = {w: k for k, ws in TEXTURE_WORDS.items() for w in ws}
_COUNT = {"two": "2", "three": "3"}
_RELATION = sorted(((w, k) for k, ws in RELATION_WORDS.items() for w in ws), key=lambda p: -len(p[0]))
_SHAPE = {**{s: s for s in SHAPES}, **{plural(s): s for s in SHAPES}}
_ALSO = r" , and also | , plus | ; there is also "  # how EXTRA_TEMPLATES start
_LEXICON = {"shape": _SHAPE, "colour": {c: c for c in COLOURS}, "size": _SIZE, "texture": _TEXTURE, "count": _COUNT}
_PLACE = re.compile(r"\b(?:at the ((?:top|bottom)(?: left| right)?|left|right)|in the (middle))\b(?! of)")


def _parse_object(words: list[str]) -> dict[str, str | None]:
    found = first_named(words, _LEXICON)
    shape_word = next((w for w in words if w in _SHAPE), None)
    if found["count"] is None and shape_word is not None:  # no number word: a plural says more than one
        found["count"] = "1" if shape_word in SHAPES else "2"
    return found


def parse_caption(text: str) -> dict[str, Any]:
    """The main object's attributes (None where the caption does not say), the relation it names as
    ``(relation, {"colour": ..., "shape": ...})`` or None, and the other object it mentions (``"also"``)."""
    lower = re.sub(r"\s*-\s*", "-", text.lower())  # a word-level tokenizer decodes "mid-sized" as "mid - sized"
    also = None
    parts = re.split(_ALSO, lower, maxsplit=1)
    if len(parts) == 2:
        o = _parse_object(_TOKEN.findall(parts[1]))
        also = {"colour": o["colour"], "shape": o["shape"]}
    lower = parts[0]
    main_part, rel, rest = lower, None, ""
    for words, name in _RELATION:
        at = lower.find(f" {words} ")
        if at >= 0:
            main_part, rel, rest = lower[:at], name, lower[at + len(words) + 2 :]
            break
    words = _TOKEN.findall(main_part)
    found: dict[str, Any] = _parse_object(words)
    place = _PLACE.search(main_part)
    found["position"] = (place.group(1) or place.group(2)) if place is not None else None
    other = None
    if rel is not None:
        o = _parse_object(_TOKEN.findall(rest))
        other = {"colour": o["colour"], "shape": o["shape"]}
    found["relation"] = (rel, other) if rel is not None else None
    found["also"] = also
    return found


def relation_true(scene: RelationScene, parsed: dict[str, Any]) -> bool | None:
    """Whether the relation a parsed caption names holds in ``scene`` from the main object to some object of
    the named colour and shape (None when the caption names no relation)."""
    if parsed.get("relation") is None:
        return None
    rel, other = parsed["relation"]
    named = [b for b in scene.objects if (b.colour, b.shape) == (other["colour"], other["shape"])]
    return any(holds(scene.main, rel, b) for b in named if b.group != scene.main.group)


def vocabulary() -> list[str]:
    """Every word the world's captions and prompts use (for tokenizers)."""
    said = [*MAIN_TEMPLATES, *RELATION_TEMPLATES, *EXTRA_TEMPLATES, PROMPT, "a an at the in middle are sit",
            *(w for ws in RELATION_WORDS.values() for w in ws)]  # fmt: skip
    words = set(_TOKEN.findall(" ".join(said))) - {"desc", "place", "rel", "other"}
    words |= set(_SHAPE) | set(COLOURS) | set(_SIZE) | set(_TEXTURE) | set(_COUNT) | set(ROWS) | {"left", "right"}
    return [*sorted(words), ",", ".", ";"]


def describes(texts: list[str], scenes: list[RelationScene]) -> np.ndarray:
    """``[i, j]``: caption ``i`` is a true description of scene ``j``: the main object's attributes it names,
    the relation it names (by the geometry) and the other object it mentions."""
    out = np.zeros((len(texts), len(scenes)), dtype=bool)
    attributes = [s.attributes() for s in scenes]
    owned = [{(o.colour, o.shape) for o in s.objects if o.group != s.main.group} for s in scenes]
    for i, text in enumerate(texts):
        said = parse_caption(text)
        also = said["also"]
        for j, scene in enumerate(scenes):
            out[i, j] = (
                all(said[a] in (None, attributes[j][a]) for a in ATTRIBUTES)
                and relation_true(scene, said) is not False
                and (also is None or (also["colour"], also["shape"]) in owned[j])
            )
    return out


def short_caption(scene: RelationScene, rng: np.random.Generator) -> str:
    """The least a caption says: the main object's colour and shape (the encoder's partial captions)."""
    return _phrase(scene, scene.main, rng, full=False) + " ."


def references(scene: RelationScene) -> list[str]:
    """Reference captions for BLEU/CIDEr: the main object said in full (count or article, size, texture,
    colour, shape, place) in every main phrasing, without relations or other objects."""
    return [main_text(scene.attributes(), template) for template in MAIN_TEMPLATES]


POSITIONS = ("top left", "top", "top right", "left", "middle", "right", "bottom left", "bottom", "bottom right")
VALUES = {"shape": tuple(SHAPES), "colour": tuple(COLOURS), "size": tuple(SIZES), "texture": tuple(TEXTURES),
          "position": POSITIONS, "count": ("1", "2", "3")}  # fmt: skip


def main_text(attributes: dict[str, str], template: str = MAIN_TEMPLATES[0]) -> str:
    """A caption saying every attribute of a main object given as ``attributes`` (as :meth:`attributes`)."""
    count = int(attributes["count"])
    shape = plural(attributes["shape"]) if count > 1 else attributes["shape"]
    desc = " ".join([NUMBERS[count] if count > 1 else "a", attributes["size"], attributes["texture"],
                     attributes["colour"], shape])  # fmt: skip
    return _main_sentence(template, desc, _place(attributes["position"]), count) + " ."


def counterfactuals(scene: RelationScene, attribute: str) -> list[str]:
    """The full caption of the scene's main object, then the same caption with ``attribute`` changed to each
    other value (what the encoder's own per-attribute retrieval is scored on)."""
    truth = scene.attributes()
    return [main_text(truth)] + [main_text({**truth, attribute: v}) for v in VALUES[attribute] if v != truth[attribute]]


def chance_levels() -> dict[str, float]:
    """One over the values each attribute takes (uniform guessing)."""
    return {name: 1 / len(values) for name, values in VALUES.items()}
