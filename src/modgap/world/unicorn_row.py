"""The demo's Unicorn row: no image and no human caption, only sparse seeds and the built-in LM."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modgap.files import write_jsonl, write_text
from modgap.progress import ProgressFactory
from modgap.world.steps import ALIGNER_PARAMS, DemoSize, train_revision, world_models
from modgap.world.worlds import get_world


def unicorn_row(
    root: Path,
    size: DemoSize,
    seed: int,
    scenes: list[Any],
    image_store: str,
    progress: ProgressFactory,
    log: Callable[[str], None],
    world: str = "shapes",
) -> Path:
    """Unicorn on the world: a sparse seed per text-pool scene (``size.unicorn_seeds``), two captions per seed and a
    conversation per caption from the built-in LM (``synth run``), the captions' text embeddings mean-shifted
    onto the image centroid (the demo's mean shift), then pretraining on the captions and tuning (LLM and
    projector) on the conversations, both on those embeddings. A world whose LM writes no conversations (the
    second) skips the conversation stage and the tuning: its row is pretrained on the synthetic captions only."""
    from modgap.synth.pipeline import SeedsSection, TransferSection, UnicornConfig, run_unicorn
    from modgap.synth.settings import CaptionSettings, InstructionSettings, LLMSettings

    kind = get_world(world)
    seeds = root / "world" / "unicorn_seeds.jsonl"
    if not seeds.is_file():
        rng = np.random.default_rng(seed)
        write_jsonl(seeds, [{"id": f"seed-{i}", "text": kind.sparse_seed(s, rng)}
                            for i, s in enumerate(scenes[: size.unicorn_seeds])])  # fmt: skip
    write_text(root / "world" / "expand.txt", kind.expand_prompt)
    if kind.qa_prompt is not None:
        write_text(root / "world" / "qa.txt", kind.qa_prompt)
    config = UnicornConfig(
        llm=LLMSettings(model=kind.llm, batch_size=64),
        seeds=SeedsSection(path=str(seeds)),
        captions=CaptionSettings(
            per_seed=2,
            temperature=0.7,
            max_tokens=kind.caption_tokens + 8,
            min_words=3,
            dedupe=False,
            prompt_file=str(root / "world" / "expand.txt"),
            seed=seed,
        ),
        instructions=None if kind.qa_prompt is None else InstructionSettings(
            min_turns=2,
            max_turns=5,
            max_attempts=2,
            temperature=0.7,
            max_tokens=96,
            prompt_file=str(root / "world" / "qa.txt"),
            seed=seed,
        ),
        transfer=TransferSection(
            encoder=kind.encoder,
            method="mean-shift",
            params=ALIGNER_PARAMS["mean-shift"],
            target=image_store,
            batch_size=256,
        ),
    )
    made = run_unicorn(config, root / "unicorn", command="modgap demo", progress=progress, log=log)
    store = str(made.transferred_store)
    pretrained = train_revision(root, "unicorn", size=size, seed=seed, data=made.captions, store=store,
                                **world_models(world))  # fmt: skip
    if made.instructions is None:
        return pretrained
    return train_revision(root, "unicorn-sft", size=size, seed=seed, data=made.instructions, store=store, stage="sft",
                          init=str(pretrained), steps=max(20, size.steps // 4), **world_models(world))  # fmt: skip
