"""The data-scaling curves: does more unpaired text stand in for fewer pairs? Models pretrained on growing
shares of the text pool (aligned by a method fitted on exactly those texts) against models trained on as many
real pairs, same steps (``modgap demo --scaling``, ``bench_demo_seeds.py --scaling-only``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modgap.align import method_names
from modgap.errors import ModgapError
from modgap.files import write_json
from modgap.progress import ProgressFactory, silent
from modgap.world.scene import Scene
from modgap.world.steps import (
    ALIGNER_PARAMS,
    PAIRED,
    DemoSize,
    claim_demo_dir,
    demo_size,
    embed_world,
    evaluate_model,
    first_rows,
    train_revision,
    world_models,
    write_world,
)

ALIGNERS = method_names("baseline", "aligner")  # every registered method except train-time augmentations
SCALES = (1, 2, 4, 8)  # pool sizes of the scaling curves: multiples of 1/8 of the pools, or of a base size
SCALING_METHODS = ("realign",)  # the paper's aligner: the default text-only curve


def check_scaling(
    scales: tuple[int, ...], methods: tuple[str, ...], paired_only: bool = False,
    base: int | None = None, size: DemoSize | None = None,
) -> None:  # fmt: skip
    if not scales or any(k not in SCALES for k in scales):
        raise ModgapError(f"scaling scales must be among {SCALES}, got {scales}")
    if base is not None:
        assert size is not None, "a scaling base is checked against the pools' size"
        most = min(size.text_pool, size.paired) // SCALES[-1]
        if not 1 <= base <= most:
            raise ModgapError(f"scaling base must be 1 to {most} (x{SCALES[-1]} must fit both pools), got {base}")
    unknown = [m for m in methods if m not in ALIGNERS]
    if unknown or not (methods or paired_only):
        raise ModgapError(f"scaling aligners must be among {', '.join(ALIGNERS)}, got {', '.join(unknown) or 'none'}")


def run_scaling_demo(
    workdir: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    scales: tuple[int, ...] = SCALES,
    methods: tuple[str, ...] = SCALING_METHODS,
    world: str = "shapes",
    size: DemoSize | None = None,
    base: int | None = None,
    progress: ProgressFactory = silent,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The data-scaling curves of :func:`run_scaling` alone, in a demo workdir (the same world, stores and claim
    as :func:`run_demo`): every size is trained under ``scaling/``, the full pools too, so no other demo model
    is needed. Written to ``scaling.json``; resumable like the demo. ``methods=()``: the paired curve alone
    (the second world's first check: does it rise?). ``size`` replaces the world's quick/full sizes; ``base``
    sets the pool sizes to base x 1, 2, 4, 8 (``scaling-base{base}.json``) instead of 1/8 .. all of the pools."""
    from modgap.world.worlds import get_world

    root, size = Path(workdir), size or demo_size(world, quick)
    check_scaling(scales, methods, paired_only=True, base=base, size=size)
    claim_demo_dir(root, seed, quick, size, world)
    pools = write_world(root, size, seed, log, world)
    embed_world(root, progress, log, get_world(world).encoder)
    curves = run_scaling(root, size, seed, pools["test"], {}, {}, scales, methods, log, world, base)
    write_json(root / ("scaling.json" if base is None else f"scaling-base{base}.json"), curves)
    return curves


def run_scaling(
    root: Path,
    size: DemoSize,
    seed: int,
    test: list[Scene],
    rows: dict[str, dict[str, float]],
    run_dirs: dict[str, Path],
    scales: tuple[int, ...] = SCALES,
    methods: tuple[str, ...] = SCALING_METHODS,
    log: Callable[[str], None] = print,
    world: str = "shapes",
    base: int | None = None,
) -> dict[str, Any]:
    """Does more unpaired text stand in for fewer pairs? For each scale k and aligner, a model pretrained on
    the first k/8 of the text pool (aligned with that method, fitted on exactly those texts and the image
    pool), and one on the first k/8 of the paired pool, same steps and settings as every other model. The
    full pools (k = 8) are the demo's own aligner and ``paired images`` models when it trained them. With
    ``base``, the first ``base * k`` texts and pairs instead (a small paired pool against text pools 1-8x it:
    where a world's paired curve rises only below its pools' eighth). Models are named by their pool size,
    so a size both designs use is trained once.

    Returns ``{"methods", "sizes", "curves": {curve: [figures per size]}, "runs": {curve: [run dir per size]}}``
    with one curve ``text only, METHOD`` per method, then ``paired images``.
    """
    models = world_models(world)
    log(f"scaling: text only ({', '.join(methods)}) against paired images, pools of x{', x'.join(map(str, scales))}")
    full = min(size.text_pool, size.paired)
    names = {method: f"text only, {method}" for method in methods}
    curves = [*names.values(), PAIRED]
    out: dict[str, Any] = {"methods": list(methods), "sizes": [], "curves": {c: [] for c in curves},
                           "runs": {c: [] for c in curves}}  # fmt: skip
    for k in sorted(scales):
        n = base * k if base is not None else full * k // SCALES[-1]
        trained = []
        for method in methods:
            if n == size.text_pool and method in rows:
                trained.append((names[method], rows[method], run_dirs[method]))
                continue
            data, aligner = first_rows(root, "text_pool", n), _subset_aligner(root, method, n)
            model = train_revision(root, f"scaling/{method}-text{n}", size=size, seed=seed, data=data,
                                   store=root / "stores" / "text_pool-text", aligner=aligner, **models)  # fmt: skip
            trained.append((names[method], evaluate_model(root, model, test, world), model.parent))
        if n == size.paired and PAIRED in rows:
            trained.append((PAIRED, rows[PAIRED], run_dirs[PAIRED]))
        else:
            model = train_revision(
                root,
                f"scaling/paired{n}",
                size=size,
                seed=seed,
                data=first_rows(root, "paired", n),
                store=root / "stores" / "paired-image",
                **models,
            )
            trained.append((PAIRED, evaluate_model(root, model, test, world), model.parent))
        out["sizes"].append(n)
        for curve, row, run in trained:
            out["curves"][curve].append(row)
            out["runs"][curve].append(str(run.relative_to(root)))
    return out


def _subset_aligner(root: Path, method: str, n: int) -> Path:
    """``aligners/{method}-text{n}``: ``method`` fitted on exactly the first ``n`` texts of the pool (the texts
    that model trains on) and the whole image pool (written once)."""
    from modgap.align import make_aligner
    from modgap.store.store import EmbeddingStore

    path = root / "aligners" / f"{method}-text{n}"
    if not (path / "aligner.json").is_file():
        ids = [json.loads(line)["id"] for line in first_rows(root, "text_pool", n).read_text().splitlines()]
        texts = EmbeddingStore.open(root / "stores" / "text_pool-text").get(ids)
        make_aligner(method, **ALIGNER_PARAMS.get(method, {})).fit(
            texts.astype(np.float32), str(root / "stores" / "image_pool-image")
        ).save(path)
    return path
