"""Train the built-in tiny chat LM on world language (🤗 Llama config, word-level tokenizer).

It learns the captions as replies to captioning prompts, and to restate a description given in the
user turn in another phrasing: the in-context use of content that a real LLM brings to ReVision, and
what lets a projector steer a frozen LM. Copying arrives abruptly: colour, size and position within a few
hundred steps, shape only after ~1000 steps (its loss sits at log 5 until then), so the default budget is
3000 steps at lr 1e-3; a run of 1500 steps at 2e-3 never learned to copy shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from modgap.mllm.chat import caption_messages
from modgap.mllm.lm import train_causal_lm
from modgap.mllm.tiny import build_chat_tokenizer, save_tiny_llm
from modgap.progress import ProgressFactory, silent
from modgap.world.scene import PROMPT, caption, make_scenes, vocabulary

PROVENANCE = "modgap_world.json"
RESTATE = "say it another way ."


def lm_texts(n: int, seed: int, tokenizer) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = []
    for scene in make_scenes(n, seed, "lm"):
        a, b = caption(scene, rng=rng), caption(scene, rng=rng)
        texts.append(tokenizer.apply_chat_template(caption_messages(a, PROMPT), tokenize=False))
        texts.append(tokenizer.apply_chat_template(caption_messages(b, f"{a} {RESTATE}"), tokenize=False))
    return texts


def train_world_lm(
    out: str | Path,
    *,
    texts: int = 40000,
    steps: int = 3000,
    batch_size: int = 32,
    lr: float = 1e-3,
    warmup: int = 100,
    width: int = 128,
    layers: int = 4,
    seed: int = 0,
    progress: ProgressFactory = silent,
) -> dict:
    from modgap.store.store import atomic_output_dir

    words = [*vocabulary(), *RESTATE.split(), "<image>"]
    tokenizer = build_chat_tokenizer(words, max_length=256)
    corpus = lm_texts(texts // 2, seed, tokenizer)
    with atomic_output_dir(out, overwrite=True) as tmp:
        save_tiny_llm(tmp / "init", words, hidden=width, layers=layers, heads=4, max_length=256, seed=seed)
        losses = train_causal_lm(
            tmp / "init",
            corpus,
            tmp / "trained",
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            warmup=warmup,
            seed=seed,
            progress=progress,
        )
        for f in (tmp / "trained").iterdir():
            f.rename(tmp / f.name)
        for d in ("init", "trained"):
            for f in (tmp / d).glob("*"):
                f.unlink()
            (tmp / d).rmdir()
        provenance = {
            "command": f"modgap world train-lm --texts {texts} --steps {steps} --seed {seed}",
            "seed": seed,
            "texts": len(corpus),
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "warmup": warmup,
            "width": width,
            "layers": layers,
            "final_loss": float(np.mean(losses[-20:])),
        }
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance
