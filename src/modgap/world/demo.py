"""`modgap demo`: the whole ReVision method on the built-in world, offline, with real models.

Steps (each skipped when its output is already in the workdir, so a killed demo resumes):
world files → embed images and texts with builtin:tiny-clip → gap report → fit each aligner on the
*unpaired* pools → pretrain one projector per aligner on text only, plus one on real paired image
embeddings (upper bound) → caption held-out *images* and answer questions about them, scored. Same
budget, seeds and hyper-parameters for every aligner. The Unicorn row starts from sparse seeds only: the
built-in LM expands them into captions and writes conversations about them (``synth run``), their text
embeddings are moved to the image distribution, and the model is pretrained on the captions and tuned on
the conversations — no image and no human-written caption.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modgap.align.select import select_shrinkage
from modgap.errors import ModgapError
from modgap.files import write_json, write_text
from modgap.progress import ProgressFactory, silent
from modgap.world.report import COLUMNS, attributes_and_second, columns, report_markdown, table_rows
from modgap.world.scaling import ALIGNERS, SCALES, SCALING_METHODS, check_scaling, run_scaling, run_scaling_demo
from modgap.world.steps import (
    ALIGNER_PARAMS,
    FULL,
    PAIRED,
    QUICK,
    DemoSize,
    claim_demo_dir,
    demo_size,
    embed_world,
    evaluate_model,
    gap_figures,
    sft_row,
    train_revision,
    world_models,
    write_world,
)
from modgap.world.unicorn_row import unicorn_row
from modgap.world.worlds import get_world

UNICORN = "unicorn (synthetic text)"
VALIDATED_OT = "gaussian-ot, validated shrinkage"

__all__ = ["ALIGNERS", "COLUMNS", "FULL", "QUICK", "SCALES", "SCALING_METHODS", "DemoResult", "DemoSize",
           "attributes_and_second", "columns", "run_demo", "run_scaling_demo", "table_rows"]  # fmt: skip


@dataclasses.dataclass
class DemoResult:
    rows: dict[str, dict[str, float]]  # model name → figures
    run_dirs: dict[str, Path]  # model name → its run directory
    gap_before: dict[str, float]
    seconds: float
    workdir: Path
    scaling: dict[str, Any] | None = None  # see :func:`run_scaling`
    world: str = "shapes"


def run_demo(
    workdir: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    sft: int = 0,
    aligners: tuple[str, ...] = ALIGNERS,
    scaling: tuple[int, ...] = (),
    scaling_methods: tuple[str, ...] = SCALING_METHODS,
    size: DemoSize | None = None,
    world: str = "shapes",
    progress: ProgressFactory = silent,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """The demo in ``workdir``; ``scaling`` (e.g. :data:`SCALES`) adds the data-scaling curves of
    :func:`run_scaling`, one text-only curve per aligner of ``scaling_methods``. ``size`` replaces the
    quick/full sizes (the test suite's small world; recorded in the workdir like them). ``world`` names the
    built-in world (:mod:`modgap.world.worlds`): its scenes, encoder, LM and scoring."""
    from modgap.align import load_aligner, make_aligner

    started = time.perf_counter()
    root = Path(workdir)
    kind = get_world(world)
    models = world_models(world)
    size = size or demo_size(world, quick)
    if sft < 0 or sft > size.paired:
        raise ModgapError(f"--sft must be between 0 and the {size.paired} paired samples, got {sft}")
    if scaling:
        check_scaling(scaling, scaling_methods)
    claim_demo_dir(root, seed, quick, size, world)
    pools = write_world(root, size, seed, log, world)
    embed_world(root, progress, log, kind.encoder)
    text_store = str(root / "stores" / "text_pool-text")
    image_store = str(root / "stores" / "image_pool-image")

    before = gap_figures(root)["before"]
    log(
        f"gap before alignment: centroid distance {before['centroid_distance']:.3f}, modality classifier "
        f"accuracy {before['separability']:.3f}, k-NN mixing {before['knn_mixing@10']:.3f}"
    )
    rows: dict[str, dict[str, float]] = {}
    run_dirs: dict[str, Path] = {}  # model name -> its run directory (test captions and answers)

    def aligned_row(name: str, slug: str, path: Path) -> None:
        report = gap_figures(root, load_aligner(path))
        log(f"training on text aligned with {name}")
        model_dir = train_revision(root, slug, size=size, seed=seed, data=root / "world" / "text_pool.jsonl",
                                   store=text_store, aligner=path, **models)  # fmt: skip
        rows[name] = {
            "centroid_distance": report["after"]["centroid_distance"],
            "knn_mixing": report["after"]["knn_mixing@10"],
            "neighbourhood_overlap": report["preservation"]["neighbourhood_overlap@10"],
            **evaluate_model(root, model_dir, pools["test"], world),
        }
        run_dirs[name] = model_dir.parent
        if sft:
            sft_dir = sft_row(root, slug, size, seed, sft, init=model_dir, world=world)
            rows[f"{name} + sft {sft}"] = evaluate_model(root, sft_dir, pools["test"], world)
            run_dirs[f"{name} + sft {sft}"] = sft_dir.parent

    for method in aligners:
        path = root / "aligners" / method
        if not (path / "aligner.json").is_file():
            make_aligner(method, **ALIGNER_PARAMS.get(method, {})).fit(text_store, image_store).save(path)
        aligned_row(method, method, path)
    if "gaussian-ot" in aligners:
        path = root / "aligners" / "gaussian-ot-validated"
        chosen_file = root / "aligners" / "gaussian-ot-validation.json"
        if not chosen_file.is_file():
            shrinkage, scores = select_shrinkage(text_store, image_store, seed=seed)
            log(f"gaussian-ot shrinkage chosen on a validation split of the unpaired pools: {shrinkage} "
                f"(MMD² " + ", ".join(f"{k}: {v:.4f}" for k, v in scores.items()) + ")")  # fmt: skip
            write_json(chosen_file, {"chosen": shrinkage, "mmd2": scores})
        shrinkage = json.loads(chosen_file.read_text())["chosen"]
        if shrinkage == load_aligner(root / "aligners" / "gaussian-ot").shrinkage:
            # The same aligner trains the same model (bit-identical rows on every seed where it happened):
            # the row reuses gaussian-ot's instead of training a copy.
            log(f"validated shrinkage {shrinkage} is gaussian-ot's own: its model stands for this row")
            for suffix in ["", *([f" + sft {sft}"] if sft else [])]:
                rows[VALIDATED_OT + suffix] = dict(rows["gaussian-ot" + suffix])
                run_dirs[VALIDATED_OT + suffix] = run_dirs["gaussian-ot" + suffix]
        else:
            if not (path / "aligner.json").is_file():
                make_aligner("gaussian-ot", shrinkage=shrinkage).fit(text_store, image_store).save(path)
            aligned_row(VALIDATED_OT, "gaussian-ot-validated", path)
    log("training on real paired image embeddings (upper bound)")
    paired_dir = train_revision(root, "paired", size=size, seed=seed, data=root / "world" / "paired.jsonl",
                                store=root / "stores" / "paired-image", **models)  # fmt: skip
    rows[PAIRED], run_dirs[PAIRED] = evaluate_model(root, paired_dir, pools["test"], world), paired_dir.parent
    log("Unicorn: sparse seeds -> synthetic captions" + (" and conversations" if kind.qa_prompt else "")
        + " -> text pretraining" + (" and tuning" if kind.qa_prompt else ""))  # fmt: skip
    unicorn_dir = unicorn_row(root, size, seed, pools["text_pool"], image_store, progress, log, world)
    rows[UNICORN], run_dirs[UNICORN] = evaluate_model(root, unicorn_dir, pools["test"], world), unicorn_dir.parent
    if sft:
        # The baseline the tuned rows answer to: the same tuning on the same pairs, without text pretraining.
        only = sft_row(root, None, size, seed, sft, world=world)
        rows[f"sft {sft} only"] = evaluate_model(root, only, pools["test"], world)
        run_dirs[f"sft {sft} only"] = only.parent
    curves = None
    if scaling:
        curves = run_scaling(root, size, seed, pools["test"], rows, run_dirs, scaling, scaling_methods, log, world)
    result = DemoResult(rows, run_dirs, before, time.perf_counter() - started, root, curves, world)
    write_json(
        root / "results.json",
        {
            "rows": rows,
            "gap_before": before,
            "seed": seed,
            "world": world,
            "quick": quick,
            "size": dataclasses.asdict(size),
            "runs": {name: str(d.relative_to(root)) for name, d in run_dirs.items()},
            **({"scaling": curves} if curves else {}),
        },
    )
    write_text(root / "report.md", report_markdown(result, size, seed, world))
    from modgap.world.report import demo_report_html

    title = f"modgap demo ({world} world, seed {seed}, {'quick' if quick else 'full'})"
    write_text(root / "report.html", demo_report_html(root, rows, run_dirs, list(aligners), title, curves, world))
    return result
