"""Train the built-in tiny CLIP on world pairs (contrastive), saved in 🤗 CLIPModel format.

Positives: in this small world many scenes fit one caption, so with the plain CLIP loss (one positive per
row) the loss can never be satisfied and training pulls matched pairs together until the gap is nearly
closed. ``positives="describes"`` counts every image in the batch that the caption truly describes as a
positive (multi-positive InfoNCE), which is what caption uniqueness gives a real CLIP: once the positives
win by the temperature's margin the gradient stops, and the cone-shaped gap of the initialisation survives.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modgap.errors import ModgapError
from modgap.hub import MODEL_RECORD
from modgap.progress import ProgressFactory, silent
from modgap.world.scene import (
    ATTRIBUTES,
    Scene,
    parse_caption,
)


def train_encoder(
    out: str | Path,
    *,
    world: str = "shapes",
    pairs: int = 20000,
    steps: int = 600,
    batch_size: int = 256,
    lr: float = 2e-4,
    temperature: float = 0.01,
    learn_temperature: bool = False,
    positives: str = "describes",
    partial_captions: float = 0.7,
    image_size: int | None = None,
    width: int = 64,
    layers: int = 3,
    projection_dim: int = 128,
    patch_size: int = 4,
    grouped: int = 1,
    position_init: str = "random",
    seed: int = 0,
    progress: ProgressFactory = silent,
    on_step: Callable[[int, Any], None] | None = None,
) -> dict:
    """Train on ``pairs`` scenes of ``world``'s ``encoder`` split (a fresh caption phrasing each visit) and save.

    ``positives``: ``"pair"`` (CLIP's loss) or ``"describes"`` (see the module docstring). ``grouped``: each
    batch is made of groups of this many scenes whose main objects are alike in all but place and count, so
    that place and count are what tells a caption's images apart: in a world of millions of scenes a random
    batch almost never holds two alike, the other attributes alone win the contrast, and both towers learn
    to ignore where the object is (measured: a red circle's image embedding at nine places, cosine 1.00).
    ``position_init="sincos"`` starts the vision tower's position embeddings at a 2-D sine-cosine grid (see
    :func:`sincos_positions`) instead of 🤗's small random init; they stay trainable and the saved model is a
    plain CLIPModel.
    ``on_step(step, model)`` is called after each optimizer step (calibration runs measure the geometry).
    """
    if positives not in ("pair", "describes"):
        raise ModgapError(f"--positives must be 'pair' or 'describes', not {positives!r}")
    if grouped < 1 or batch_size % grouped:
        raise ModgapError(f"--grouped must divide the batch size {batch_size}, not {grouped}")
    if position_init not in ("random", "sincos"):
        raise ModgapError(f"--position-init must be 'random' or 'sincos', not {position_init!r}")
    if not 0 <= partial_captions <= 1:
        raise ModgapError(f"--partial-captions must be between 0 and 1, not {partial_captions}")
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from modgap.files import atomic_output_dir
    from modgap.world.tiny import build_word_tokenizer
    from modgap.world.worlds import get_world

    kind = get_world(world)
    image_size = image_size or kind.image_size
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    scenes = kind.make_scenes(pairs, seed, "encoder")
    tokenizer = build_word_tokenizer(kind.vocabulary(), max_length=48 if world != "shapes" else 32)
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    tower = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(tower, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
        logit_scale_init_value=math.log(1 / temperature),
    )
    model = CLIPModel(config)
    if position_init == "sincos":
        positions = model.get_submodule(_VISION_POSITIONS).weight
        with torch.no_grad():
            positions.copy_(sincos_positions(image_size // patch_size, width))
    model.logit_scale.requires_grad_(learn_temperature)
    with progress("rendering", pairs) as advance:
        pixels = []
        for s in range(0, pairs, 1024):
            chunk = [kind.render(sc, image_size) for sc in scenes[s : s + 1024]]
            pixels.append(processor(images=chunk, return_tensors="pt")["pixel_values"])
            advance(len(chunk))
    pixels = torch.cat(pixels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    losses = []
    model.train()
    keys, alike = alike_groups(scenes) if grouped > 1 else ([], {})
    with progress("training encoder", steps) as advance:
        for _ in range(steps):
            if grouped > 1:
                idx = _grouped_batch(rng, keys, alike, batch_size // grouped, grouped)
            else:
                idx = rng.choice(pairs, size=batch_size, replace=False)
            texts = [kind.training_text(scenes[i], rng, partial_captions) for i in idx]
            tok = tokenizer(texts, padding=True, return_tensors="pt")
            result = model(
                input_ids=tok["input_ids"],
                attention_mask=tok["attention_mask"],
                pixel_values=pixels[torch.from_numpy(idx)],
                return_loss=positives == "pair",
            )
            if positives == "pair":
                loss = result.loss
            else:
                mask = torch.from_numpy(kind.describes(texts, [scenes[i] for i in idx]))
                loss = multi_positive_loss(result.logits_per_text, mask)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            with torch.no_grad():  # CLIP's own clamp: the logit scale never exceeds 100
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            advance(1)
            if on_step is not None:
                on_step(len(losses), model)
    provenance = {
        # The command that regenerates these weights (the output path aside).
        "command": (
            "modgap world train-encoder"
            + (f" --world {world}" if world != "shapes" else "")
            + f" --pairs {pairs} --steps {steps} --seed {seed} --width {width}"
            f" --projection-dim {projection_dim} --temperature {temperature} --lr {lr}"
            f"{' --learn-temperature' if learn_temperature else ''} --positives {positives}"
            f" --partial-captions {partial_captions}"
            + (f" --grouped {grouped}" if grouped > 1 else "")
            + (f" --position-init {position_init}" if position_init != "random" else "")
        ),
        "seed": seed,
        **({"world": world} if world != "shapes" else {}),
        "pairs": pairs,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "temperature": temperature,
        "learn_temperature": learn_temperature,
        "final_temperature": float(1 / model.logit_scale.exp()),
        "positives": positives,
        "partial_captions": partial_captions,
        "image_size": image_size,
        "width": width,
        "layers": layers,
        "projection_dim": projection_dim,
        "patch_size": patch_size,
        **({"grouped": grouped} if grouped > 1 else {}),
        **({"position_init": position_init} if position_init != "random" else {}),
        "final_loss": float(np.mean(losses[-20:])),
    }
    with atomic_output_dir(out, overwrite=True, markers=(MODEL_RECORD,)) as tmp:
        model.eval()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / MODEL_RECORD).write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


SINCOS_SCALE = 0.5
_VISION_POSITIONS = "vision_model.embeddings.position_embedding"


def sincos_positions(grid: int, width: int, scale: float = SINCOS_SCALE) -> torch.Tensor:
    """Position embeddings for a ``grid`` x ``grid`` patch grid plus the class token (row 0, zeros): sines and
    cosines of each patch's column and row at geometric frequencies (as MAE's), times ``scale``.

    Why: 🤗's init (std 0.02) is ten times smaller than a patch's content embedding, and the second world's
    tower then learned place slowly even when trained on place alone (a supervised probe at 200 steps: 0.29
    with the random init, 0.59 with this one at scale 0.5; chance 0.11)."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    parts = []
    for coordinate in (cols.flatten(), rows.flatten()):
        angle = coordinate[:, None].double() * omega[None]
        parts += [angle.sin(), angle.cos()]
    table = torch.zeros(grid * grid + 1, width, dtype=torch.float64)
    table[1:, : 4 * quarter] = torch.cat(parts, 1)
    return (scale * table).float()


def group_key(scene: Any) -> tuple[str, ...]:
    """The main object's attributes but its place and count (what a batch group shares)."""
    return tuple(v for k, v in sorted(scene.attributes().items()) if k not in ("position", "count"))


def alike_groups(scenes: list) -> tuple[list[tuple[str, ...]], dict[tuple[str, ...], list[int]]]:
    """Each scene's :func:`group_key`, and the scenes of each key in order (one pass)."""
    keys = [group_key(s) for s in scenes]
    members: dict[tuple[str, ...], list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    return keys, members


def _grouped_batch(
    rng: np.random.Generator, keys: list, alike: dict[tuple[str, ...], list[int]], groups: int, size: int
) -> np.ndarray:
    """``groups`` anchor scenes, each with ``size - 1`` others alike in all but place and count."""
    out: list[int] = []
    taken: set[int] = set()
    for anchor in rng.permutation(len(keys)):
        if len(out) == groups * size:
            break
        if int(anchor) in taken:
            continue
        pool = [i for i in alike[keys[int(anchor)]] if i not in taken and i != anchor]
        if len(pool) < size - 1:
            continue
        members = [int(anchor), *(int(i) for i in rng.choice(pool, size=size - 1, replace=False))]
        out += members
        taken.update(members)
    return np.asarray(out)


_MENTIONED = re.compile(r"next to a small ([a-z]+) ([a-z]+)")


def describes(texts: list[str], scenes: list[Scene]) -> np.ndarray:
    """``[i, j]``: caption ``i`` is a true description of scene ``j``: what it says of the main object (a partial
    caption says less), and the distractor it mentions if any."""
    attributes = [s.attributes() for s in scenes]
    owned = [{(d.colour, d.shape) for d in s.distractors} for s in scenes]
    out = np.zeros((len(texts), len(scenes)), dtype=bool)
    for i, text in enumerate(texts):
        said = parse_caption(text)
        mention = _MENTIONED.search(text)
        for j, attrs in enumerate(attributes):
            out[i, j] = all(said[a] in (None, attrs[a]) for a in ATTRIBUTES) and (
                mention is None or (mention.group(1), mention.group(2)) in owned[j]
            )
    return out


def multi_positive_loss(logits_per_text: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where a row's target is every column marked positive: −log Σ_pos softmax, both ways."""
    neg_inf = torch.finfo(logits_per_text.dtype).min

    def one_way(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~mask, neg_inf), 1)).mean()

    return (one_way(logits_per_text, positives) + one_way(logits_per_text.T, positives.T)) / 2
