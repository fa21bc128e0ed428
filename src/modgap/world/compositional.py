"""SugarCrepe-style compositional triples made from a world's held-out scenes: for each test image, a true
caption against one with a single thing changed (an attribute replaced; colours swapped between two objects;
a relation replaced by its converse). Its scenes give the truth, so no human labels are needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The converse of each relation: "a left of b" is false exactly when ... "a right of b" holds, and so on.
CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
            "inside": "holding", "holding": "inside"}  # fmt: skip


def categories(world: str = "shapes") -> list[str]:
    """The triples' categories of ``world``, in the order :func:`compositional_set` makes them."""
    if world == "relations":
        from modgap.world.relations_scene import ATTRIBUTES

        return [*(f"replace-{a}" for a in ATTRIBUTES), "replace-relation", "swap-colour"]
    return ["replace-colour", "replace-shape", "replace-size", "replace-position", "swap-colour"]


def compositional_set(scenes: list[Any], seed: int, world: str = "shapes") -> tuple[list[dict], list[dict]]:
    """(text rows ``{id, text}``, triple rows ``{image_id, positive_id, negative_id, category}``) for the test
    scenes ``test-0 ..``: one triple per scene and category where the scene allows it."""
    return (_relations if world == "relations" else _shapes)(scenes, np.random.default_rng(seed + 101))


def _triple(texts: list[dict], triples: list[dict], i: int, category: str, true: str, false: str) -> None:
    texts += [{"id": f"c{i}-{category}-true", "text": true}, {"id": f"c{i}-{category}", "text": false}]
    triples.append({"image_id": f"test-{i}", "positive_id": f"c{i}-{category}-true", "negative_id": f"c{i}-{category}",
                    "category": category})  # fmt: skip


def _shapes(scenes: list[Any], rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """The first world: colour, shape, size or position replaced (the true caption shared), main object's and a
    distractor's colours swapped. Ids and draws as before this module existed (its tables reproduce)."""
    from modgap.world.scene import COLOURS, PLACE, SHAPES, SIZES

    texts, triples = [], []
    choices = {"colour": list(COLOURS), "shape": SHAPES, "size": list(SIZES), "position": list(PLACE)}
    for i, scene in enumerate(scenes):
        m = scene.main
        attrs = {"colour": m.colour, "shape": m.shape, "size": m.size, "position": str(m.position)}
        true = f"a {m.size} {m.colour} {m.shape} {PLACE[str(m.position)]} ."
        texts.append({"id": f"c{i}-true", "text": true})
        for attr, options in choices.items():
            new = dict(attrs, **{attr: str(rng.choice([o for o in options if o != attrs[attr]]))})
            neg = f"a {new['size']} {new['colour']} {new['shape']} {PLACE[new['position']]} ."
            texts.append({"id": f"c{i}-{attr}", "text": neg})
            triples.append({"image_id": f"test-{i}", "positive_id": f"c{i}-true", "negative_id": f"c{i}-{attr}",
                            "category": f"replace-{attr}"})  # fmt: skip
        others = [d for d in scene.distractors if d.colour != m.colour]
        if others:
            d = others[int(rng.integers(len(others)))]
            place = PLACE[str(m.position)]
            true = f"a {m.size} {m.colour} {m.shape} {place} , next to a small {d.colour} {d.shape} ."
            swapped = f"a {m.size} {d.colour} {m.shape} {place} , next to a small {m.colour} {d.shape} ."
            texts += [{"id": f"c{i}-swap-true", "text": true}, {"id": f"c{i}-swap", "text": swapped}]
            triples.append({"image_id": f"test-{i}", "positive_id": f"c{i}-swap-true", "negative_id": f"c{i}-swap",
                            "category": "swap-colour"})  # fmt: skip
    return texts, triples


def _relations(scenes: list[Any], rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """The second world: the main object said in full against the same with one of its six attributes
    replaced (``replace-shape`` ... ``replace-count``); where it stands in a relation to another object, that
    relation against its converse (``replace-relation``: "a red star left of a blue ring" vs "... right of
    ..."), and where the other object's colour differs, the two colours swapped (``swap-colour``)."""
    from modgap.world import relations_scene as rw

    texts: list[dict] = []
    triples: list[dict] = []
    for i, scene in enumerate(scenes):
        truth = scene.attributes()
        full = rw.main_text(truth)
        for attribute in rw.ATTRIBUTES:
            other = str(rng.choice([v for v in rw.VALUES[attribute] if v != truth[attribute]]))
            _triple(texts, triples, i, f"replace-{attribute}", full, rw.main_text({**truth, attribute: other}))
        related = [(r, b) for a, r, b in rw.relations(scene) if a is scene.main]
        if not related:
            continue
        relation, b = related[int(rng.integers(len(related)))]
        if any(rw.holds(scene.main, CONVERSE[relation], o) for o in scene.objects if o.group == b.group):
            continue  # a counted group can lie on both sides of the main object: the converse is true too
        count = scene.count(b)
        other = f"{rw.NUMBERS[count]} {b.colour} {rw.plural(b.shape)}" if count > 1 else f"a {b.colour} {b.shape}"
        stem = full[: -len(" .")]
        _triple(texts, triples, i, "replace-relation", f"{stem} , {relation} {other} .",
                f"{stem} , {CONVERSE[relation]} {other} .")  # fmt: skip
        if b.colour != truth["colour"]:
            swapped = rw.main_text({**truth, "colour": b.colour})[: -len(" .")]
            _triple(texts, triples, i, "swap-colour", f"{stem} , {relation} {other} .",
                    f"{swapped} , {relation} {other.replace(b.colour, truth['colour'], 1)} .")  # fmt: skip
    return texts, triples
