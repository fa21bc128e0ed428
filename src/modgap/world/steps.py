"""What every demo run shares: its sizes, the world files and stores, the one way a model is trained and
scored, the workdir claim. The ReVision demo (:mod:`modgap.world.demo`), its scaling curves
(:mod:`modgap.world.scaling`), the Unicorn row (:mod:`modgap.world.unicorn_row`) and the embedder demo
(:mod:`modgap.world.embedder_demo`) are built from these parts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modgap.files import write_json, write_jsonl, write_text
from modgap.progress import ProgressFactory
from modgap.training import claim_run_dir
from modgap.world.evaluate import relation_hits, score_captions
from modgap.world.scene import PROMPT, Scene, question_answers
from modgap.world.worlds import get_world

ENCODER = "builtin:tiny-clip"
LLM = "builtin:tiny-lm"
PAIRED = "paired images"
# Mean shift moves text onto the image centroid (x - mu_t + mu_i), the gap-closing variant; the others run
# with their defaults.
ALIGNER_PARAMS = {"mean-shift": {"add_target_mean": True}}


@dataclasses.dataclass
class DemoSize:
    image_pool: int
    text_pool: int
    paired: int
    test: int
    steps: int
    unicorn_seeds: int  # sparse seeds of the Unicorn row (from text-pool scenes; two captions each)
    batch_size: int = 32
    lr: float = 4e-3


QUICK = DemoSize(image_pool=2000, text_pool=4000, paired=4000, test=300, steps=200, unicorn_seeds=300, batch_size=16)
FULL = DemoSize(image_pool=6000, text_pool=12000, paired=12000, test=1000, steps=1200, unicorn_seeds=3000)
# The second world: pools 1/180 (full) of its ~2.9M distinct scenes, so more pairs keep saying something new.
RELATIONS_QUICK = DemoSize(image_pool=2000, text_pool=4000, paired=4000, test=300, steps=300, unicorn_seeds=300,
                           batch_size=16)  # fmt: skip
RELATIONS_FULL = DemoSize(image_pool=8000, text_pool=16000, paired=16000, test=1000, steps=1200, unicorn_seeds=3000)


def demo_size(world: str, quick: bool) -> DemoSize:
    if world == "relations":
        return RELATIONS_QUICK if quick else RELATIONS_FULL
    return QUICK if quick else FULL


def write_world(
    root: Path, size: DemoSize, seed: int, log: Callable[[str], None], world: str = "shapes"
) -> dict[str, list[Any]]:
    """Image files and JSONL data of the four disjoint pools of ``world`` (written once)."""
    kind = get_world(world)
    pools = {
        "image_pool": kind.make_scenes(size.image_pool, seed, "image-only"),
        "text_pool": kind.make_scenes(size.text_pool, seed, "text-only"),
        "paired": kind.make_scenes(size.paired, seed, "paired"),
        "test": kind.make_scenes(size.test, seed, "test"),
    }
    if (root / "world" / "done").is_file():
        return pools
    log(
        f"writing the world: {size.image_pool} image-only, {size.text_pool} text-only, {size.paired} paired, "
        f"{size.test} test scenes"
    )
    images = root / "world" / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, scenes in pools.items():
        rows = []
        for i, scene in enumerate(scenes):
            key = f"{name}-{i}"
            row: dict[str, Any] = {"id": key}
            if name != "text_pool":
                path = images / f"{key}.png"
                kind.render(scene, kind.image_size).save(path)
                row["image"] = f"images/{key}.png"
            if name == "test":
                row["captions"] = kind.references(scene)
                row["scene"] = scene.to_json()
            elif name != "image_pool":
                row["caption"] = kind.caption(scene, rng=rng)
            rows.append(row)
        write_jsonl(root / "world" / f"{name}.jsonl", rows)
    write_text(root / "world" / "done", "")
    return pools


def embed_world(root: Path, progress: ProgressFactory, log: Callable[[str], None], encoder_spec: str = ENCODER) -> None:
    from modgap.embed import EmbedOptions, embed_once
    from modgap.encoders import load_encoder

    encoder = functools.cache(lambda: load_encoder(encoder_spec))
    options = EmbedOptions(batch_size=256, num_workers=0)
    jobs = [("image_pool", "image"), ("text_pool", "text"), ("paired", "image"), ("test", "image")]
    for name, modality in jobs:
        data, out = root / "world" / f"{name}.jsonl", root / "stores" / f"{name}-{modality}"
        summary = embed_once(encoder, modality, data, out, options=options, created_by="modgap demo",
                             progress=progress)  # fmt: skip
        if summary is not None:
            log(summary.line())


def gap_figures(root: Path, aligner: Any = None) -> dict[str, Any]:
    from modgap.gap.report import gap_report

    return gap_report(
        root / "stores" / "text_pool-text",
        root / "stores" / "image_pool-image",
        aligner=aligner,
        sample=1000,
        spectrum_rows=5000,
    )


def train_revision(
    root: Path,
    name: str,
    *,
    size: DemoSize,
    seed: int,
    data: str | Path,
    store: str | Path,
    aligner: str | Path | None = None,
    stage: str = "pretrain",
    init: str | None = None,
    steps: int | None = None,
    llm: str = LLM,
    prompt: str = PROMPT,
    max_length: int = 128,
) -> Path:
    """The demo's one way to train a model (``runs/NAME``, resumed or reused): every model gets the same budget,
    seed and hyper-parameters; sft runs at a quarter of the learning rate. ``max_length`` counts a sample's
    tokens, image tokens included (one per patch for a patch-token store)."""
    from modgap.mllm.train import TrainConfig, train

    out = root / "runs" / name
    if (out / "model" / "modgap_mllm.json").is_file():
        return out / "model"
    cfg = TrainConfig(
        stage=stage,
        out=str(out),
        data=[str(data)],
        embeddings=[str(store)],
        llm=None if init else llm,
        init=init,
        aligner=str(aligner) if aligner else None,
        prompt=prompt,
        max_steps=steps or size.steps,
        batch_size=size.batch_size,
        lr=size.lr if stage == "pretrain" else size.lr / 4,
        seed=seed,
        report_to="none",
        save_every=50,
        resume=True,
        max_length=max_length,
    )
    return train(cfg).model_dir


def write_questions(root: Path, scenes: list[Scene]) -> Path:
    """Questions about the held-out test images, one per question type, with short reference answers."""
    path = root / "world" / "test_questions.jsonl"
    if not path.is_file():
        write_jsonl(path, [
            {"id": f"test-{i}-{kind}", "image": f"test-{i}", "question": question, "answer": answer, "type": kind}
            for i, scene in enumerate(scenes) for kind, question, answer in question_answers(scene)
        ])  # fmt: skip
    return path


def evaluate_model(root: Path, model_dir: Path, scenes: list[Any], world: str = "shapes") -> dict[str, float]:
    """Caption figures of held-out images, and (first world) VQA accuracy on questions about them (``vqa``,
    per type). Written last to ``test_scores.json`` beside the model (greedy decoding: a rerun would give the
    same), and read from there when present."""
    from modgap.eval.vqa import evaluate_vqa
    from modgap.mllm.infer import StoreInputs, load_model

    done = model_dir.parent / "test_scores.json"
    if done.is_file():
        return json.loads(done.read_text())
    model = load_model(model_dir)
    store = root / "stores" / "test-image"
    vqa = {}
    if get_world(world).questions:  # the second world has none yet
        answers = evaluate_vqa(model, write_questions(root, scenes), store, batch_size=128, max_new_tokens=8)
        write_jsonl(model_dir.parent / "test_answers.jsonl", answers.rows)
        vqa = {k.replace("accuracy", "vqa"): v for k, v in answers.metrics.items()}
    visual = StoreInputs(model, store).ids([f"test-{i}" for i in range(len(scenes))])
    replies = model.generate(visual, max_new_tokens=get_world(world).caption_tokens, batch_size=128)
    relations = relation_hits(replies, scenes, world)  # per caption (second world): its relation holds
    write_jsonl(
        model_dir.parent / "test_captions.jsonl",
        [
            {
                "id": f"test-{i}",
                "caption": r,
                "truth": sc.attributes(),
                **({"relation": relations[i]} if relations else {}),
            }
            for i, (r, sc) in enumerate(zip(replies, scenes, strict=True))
        ],
    )
    scores = {**score_captions(replies, scenes, world), **vqa}
    write_json(done, scores)
    return scores


def claim_demo_dir(root: Path, seed: int, quick: bool, size: DemoSize, world: str = "shapes") -> None:
    """The workdir is this demo's (same world, seed and size) or new; the embedder demo shares it."""
    settings = {"seed": seed, "quick": quick, "size": dataclasses.asdict(size)}
    claim_run_dir(
        root,
        {**settings, "world": world} if world != "shapes" else settings,  # first-world workdirs stay claimable
        settings_file="demo.json",
        hint="; use another --workdir",
    )


def first_rows(root: Path, pool: str, n: int) -> Path:
    """``world/{pool}-first-{n}.jsonl``: the first ``n`` rows of a pool (written once)."""
    path = root / "world" / f"{pool}-first-{n}.jsonl"
    if not path.is_file():
        lines = (root / "world" / f"{pool}.jsonl").read_text().splitlines()[:n]
        write_jsonl(path, [json.loads(line) for line in lines])
    return path


def sft_row(root: Path, method: str | None, size: DemoSize, seed: int, n: int, init: Path | None = None,
            world: str = "shapes") -> Path:  # fmt: skip
    """A short tuning on the first ``n`` paired samples (real image embeddings), from ``init`` (a model
    pretrained on text) or, without it, from the world's base LM and a new projector."""
    data = first_rows(root, "paired", n)
    steps = max(20, size.steps // 4)
    name = f"{method}-sft{n}" if method else f"sft{n}-only"
    return train_revision(root, name, size=size, seed=seed, data=data, store=root / "stores" / "paired-image",
                          stage="sft", init=str(init) if init else None, steps=steps,
                          **world_models(world))  # fmt: skip


def world_models(world: str) -> dict[str, str]:
    """:func:`train_revision`'s ``llm`` and ``prompt`` for ``world``: its chat LM and captioning prompt."""
    kind = get_world(world)
    return {"llm": kind.llm, "prompt": kind.prompt}
