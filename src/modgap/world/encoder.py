"""Train the built-in tiny CLIP on world pairs (contrastive, fixed temperature), saved in 🤗 CLIPModel format.

The temperature is fixed at 0.01 (the value real CLIP ends at) rather than learned: with the world's
information imbalance this gives a modality gap of the kind real encoders show (a learned temperature
on fully described images nearly closes it; see the README).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from modgap.progress import ProgressFactory, silent
from modgap.world.scene import caption, make_scenes, render, vocabulary

PROVENANCE = "modgap_world.json"


def train_encoder(
    out: str | Path,
    *,
    pairs: int = 20000,
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 1e-3,
    temperature: float = 0.01,
    image_size: int = 32,
    width: int = 64,
    layers: int = 3,
    projection_dim: int = 32,
    patch_size: int = 4,
    seed: int = 0,
    progress: ProgressFactory = silent,
) -> dict:
    """Train on ``pairs`` scenes of the ``encoder`` split (a fresh caption phrasing each visit) and save."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from modgap.files import atomic_output_dir
    from modgap.world.tiny import build_word_tokenizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    scenes = make_scenes(pairs, seed, "encoder")
    tokenizer = build_word_tokenizer(vocabulary(), max_length=32)
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    tower = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=32,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(tower, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
        logit_scale_init_value=math.log(1 / temperature),
    )
    model = CLIPModel(config)
    model.logit_scale.requires_grad_(False)
    with progress("rendering", pairs) as advance:
        pixels = []
        for s in range(0, pairs, 1024):
            chunk = [render(sc, image_size) for sc in scenes[s : s + 1024]]
            pixels.append(processor(images=chunk, return_tensors="pt")["pixel_values"])
            advance(len(chunk))
    pixels = torch.cat(pixels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    losses = []
    model.train()
    with progress("training encoder", steps) as advance:
        for _ in range(steps):
            idx = rng.choice(pairs, size=batch_size, replace=False)
            texts = [caption(scenes[i], rng=rng) for i in idx]
            tok = tokenizer(texts, padding=True, return_tensors="pt")
            result = model(
                input_ids=tok["input_ids"],
                attention_mask=tok["attention_mask"],
                pixel_values=pixels[torch.from_numpy(idx)],
                return_loss=True,
            )
            result.loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(result.loss.item())
            advance(1)
    provenance = {
        # The command that regenerates these weights (the output path aside).
        "command": f"modgap world train-encoder --pairs {pairs} --steps {steps} --seed {seed}",
        "seed": seed,
        "pairs": pairs,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "temperature": temperature,
        "image_size": image_size,
        "width": width,
        "layers": layers,
        "projection_dim": projection_dim,
        "patch_size": patch_size,
        "final_loss": float(np.mean(losses[-20:])),
    }
    with atomic_output_dir(out, overwrite=True) as tmp:
        model.eval()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance
