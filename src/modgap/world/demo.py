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
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modgap.align import method_names
from modgap.errors import ModgapError
from modgap.files import write_json, write_jsonl, write_text
from modgap.progress import ProgressFactory, silent
from modgap.training import claim_run_dir
from modgap.world.evaluate import chance_levels, score_captions
from modgap.world.scene import (
    ATTRIBUTES,
    EXPAND_PROMPT,
    PROMPT,
    QA_PROMPT,
    Scene,
    caption,
    make_scenes,
    question_answers,
    references,
    render,
    sparse_seed,
)

ALIGNERS = method_names("baseline", "aligner")  # every registered method except train-time augmentations
# Mean shift moves text onto the image centroid (x - mu_t + mu_i), the gap-closing variant; the others run
# with their defaults.
ALIGNER_PARAMS = {"mean-shift": {"add_target_mean": True}}
PAIRED = "paired images"
UNICORN = "unicorn (synthetic text)"
VALIDATED_OT = "gaussian-ot, validated shrinkage"
SHRINKAGES = (1e-3, 1e-2, 0.05, 0.1, 0.3, 1.0)
SCALES = (1, 2, 4, 8)  # pool sizes of the scaling curves, as multiples of 1/8 of the text pool
SCALING_METHODS = ("realign",)  # the paper's aligner: the default text-only curve
ENCODER = "builtin:tiny-clip"
LLM = "builtin:tiny-lm"


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


QUICK = DemoSize(image_pool=2000, text_pool=4000, paired=4000, test=300, steps=300, unicorn_seeds=500)
FULL = DemoSize(image_pool=6000, text_pool=12000, paired=12000, test=1000, steps=1200, unicorn_seeds=3000)


@dataclasses.dataclass
class DemoResult:
    rows: dict[str, dict[str, float]]  # model name → figures
    run_dirs: dict[str, Path]  # model name → its run directory
    gap_before: dict[str, float]
    seconds: float
    workdir: Path
    scaling: dict[str, Any] | None = None  # see :func:`run_scaling`


def write_world(root: Path, size: DemoSize, seed: int, log: Callable[[str], None]) -> dict[str, list[Scene]]:
    """Image files and JSONL data of the four disjoint pools (written once)."""
    pools = {
        "image_pool": make_scenes(size.image_pool, seed, "image-only"),
        "text_pool": make_scenes(size.text_pool, seed, "text-only"),
        "paired": make_scenes(size.paired, seed, "paired"),
        "test": make_scenes(size.test, seed, "test"),
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
                render(scene).save(path)
                row["image"] = f"images/{key}.png"
            if name == "test":
                row["captions"] = references(scene)
                row["scene"] = scene.to_json()
            elif name != "image_pool":
                row["caption"] = caption(scene, rng=rng)
            rows.append(row)
        write_jsonl(root / "world" / f"{name}.jsonl", rows)
    write_text(root / "world" / "done", "")
    return pools


def embed_world(root: Path, progress: ProgressFactory, log: Callable[[str], None]) -> None:
    from modgap.embed import EmbedOptions, embed_once
    from modgap.encoders import load_encoder

    encoder = functools.cache(lambda: load_encoder(ENCODER))
    options = EmbedOptions(batch_size=256, num_workers=0)
    jobs = [("image_pool", "image"), ("text_pool", "text"), ("paired", "image"), ("test", "image")]
    for name, modality in jobs:
        data, out = root / "world" / f"{name}.jsonl", root / "stores" / f"{name}-{modality}"
        summary = embed_once(encoder, modality, data, out, options=options, created_by="modgap demo",
                             progress=progress)  # fmt: skip
        if summary is not None:
            log(summary.line())


def _gap(root: Path, aligner: Any = None) -> dict[str, Any]:
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
    size: DemoSize,
    seed: int,
    data: str,
    store: str,
    aligner: str | None,
    stage: str = "pretrain",
    init: str | None = None,
    steps: int | None = None,
) -> Path:
    from modgap.mllm.train import TrainConfig, train

    out = root / "runs" / name
    if (out / "model" / "modgap_mllm.json").is_file():
        return out / "model"
    cfg = TrainConfig(
        stage=stage,
        out=str(out),
        data=[data],
        embeddings=[store],
        llm=None if init else LLM,
        init=init,
        aligner=aligner,
        prompt=PROMPT,
        max_steps=steps or size.steps,
        batch_size=size.batch_size,
        lr=size.lr if stage == "pretrain" else size.lr / 4,
        seed=seed,
        report_to="none",
        save_every=50,
        resume=True,
        max_length=128,
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


def _evaluate(root: Path, model_dir: Path, scenes: list[Scene]) -> dict[str, float]:
    """Caption figures of held-out images, and VQA accuracy on questions about them (``vqa``, per type).
    Written last to ``test_scores.json`` beside the model (greedy decoding: a rerun would give the same), and
    read from there when present."""
    from modgap.eval.vqa import evaluate_vqa
    from modgap.mllm.infer import StoreInputs, load_model

    done = model_dir.parent / "test_scores.json"
    if done.is_file():
        return json.loads(done.read_text())
    model = load_model(model_dir)
    store = root / "stores" / "test-image"
    answers = evaluate_vqa(model, write_questions(root, scenes), store, batch_size=128, max_new_tokens=8)
    write_jsonl(model_dir.parent / "test_answers.jsonl", answers.rows)
    vqa = {k.replace("accuracy", "vqa"): v for k, v in answers.metrics.items()}
    visual = StoreInputs(model, store).ids([f"test-{i}" for i in range(len(scenes))])
    replies = model.generate(visual, max_new_tokens=24, batch_size=128)
    write_jsonl(
        model_dir.parent / "test_captions.jsonl",
        [
            {"id": f"test-{i}", "caption": r, "truth": sc.attributes()}
            for i, (r, sc) in enumerate(zip(replies, scenes, strict=True))
        ],
    )
    scores = {**score_captions(replies, scenes), **vqa}
    write_json(done, scores)
    return scores


def validated_shrinkage(
    text_store: str, image_store: str, seed: int, grid: tuple[float, ...] = SHRINKAGES, sample: int = 1000
) -> tuple[float, dict[float, float]]:
    """Gaussian OT's covariance shrinkage chosen without pairs and without test data: fit on 80 % of each
    unpaired pool, move the other 20 % of the texts, and keep the shrinkage whose moved texts are closest to
    the held-out 20 % of the images (MMD², RBF kernel with one bandwidth for every candidate)."""
    from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel

    from modgap.align import make_aligner
    from modgap.store.store import EmbeddingStore

    rng = np.random.default_rng(seed)
    text, image = (
        EmbeddingStore.open(text_store).to_numpy(np.float32),
        EmbeddingStore.open(image_store).to_numpy(np.float32),
    )
    text, image = text[rng.permutation(len(text))], image[rng.permutation(len(image))]
    (fit_t, val_t), (fit_i, val_i) = ((x[: int(0.8 * len(x))], x[int(0.8 * len(x)) :]) for x in (text, image))
    val_t, val_i = val_t[:sample], val_i[:sample]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    target = unit(val_i).astype(np.float64)
    d = euclidean_distances(target, squared=True)
    gamma = 1.0 / max(float(np.median(d[np.triu_indices_from(d, k=1)])), 1e-12)
    k_target = rbf_kernel(target, target, gamma=gamma).mean()
    scores = {}
    for shrinkage in grid:
        aligner = make_aligner("gaussian-ot", shrinkage=shrinkage).fit(fit_t, fit_i)
        moved = unit(aligner.transform(val_t).numpy().astype(np.float64))
        scores[shrinkage] = float(rbf_kernel(moved, moved, gamma=gamma).mean() + k_target
                                  - 2 * rbf_kernel(moved, target, gamma=gamma).mean())  # fmt: skip
    return min(scores, key=scores.get), scores


def claim_demo_dir(root: Path, seed: int, quick: bool, size: DemoSize) -> None:
    """The workdir is this demo's (same seed and size) or new; the embedder demo shares it."""
    claim_run_dir(
        root,
        {"seed": seed, "quick": quick, "size": dataclasses.asdict(size)},
        settings_file="demo.json",
        hint="; use another --workdir",
    )


def run_demo(
    workdir: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    sft: int = 0,
    aligners: tuple[str, ...] = ALIGNERS,
    scaling: tuple[int, ...] = (),
    scaling_methods: tuple[str, ...] = SCALING_METHODS,
    progress: ProgressFactory = silent,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """The demo in ``workdir``; ``scaling`` (e.g. :data:`SCALES`) adds the data-scaling curves of
    :func:`run_scaling`, one text-only curve per aligner of ``scaling_methods``."""
    from modgap.align import load_aligner, make_aligner

    started = time.perf_counter()
    root = Path(workdir)
    size = QUICK if quick else FULL
    if sft < 0 or sft > size.paired:
        raise ModgapError(f"--sft must be between 0 and the {size.paired} paired samples, got {sft}")
    if scaling:
        _check_scaling(scaling, scaling_methods)
    claim_demo_dir(root, seed, quick, size)
    pools = write_world(root, size, seed, log)
    embed_world(root, progress, log)
    text_store = str(root / "stores" / "text_pool-text")
    image_store = str(root / "stores" / "image_pool-image")

    before = _gap(root)["before"]
    log(
        f"gap before alignment: centroid distance {before['centroid_distance']:.3f}, modality classifier "
        f"accuracy {before['separability']:.3f}, k-NN mixing {before['knn_mixing@10']:.3f}"
    )
    rows: dict[str, dict[str, float]] = {}
    run_dirs: dict[str, Path] = {}  # model name -> its run directory (test captions and answers)

    def aligned_row(name: str, slug: str, path: Path) -> None:
        report = _gap(root, load_aligner(path))
        log(f"training on text aligned with {name}")
        model_dir = train_revision(root, slug, size, seed, str(root / "world" / "text_pool.jsonl"), text_store,
                                   str(path))  # fmt: skip
        rows[name] = {
            "centroid_distance": report["after"]["centroid_distance"],
            "knn_mixing": report["after"]["knn_mixing@10"],
            "neighbourhood_overlap": report["preservation"]["neighbourhood_overlap@10"],
            **_evaluate(root, model_dir, pools["test"]),
        }
        run_dirs[name] = model_dir.parent
        if sft:
            sft_dir = _sft(root, slug, size, seed, sft, init=model_dir)
            rows[f"{name} + sft {sft}"] = _evaluate(root, sft_dir, pools["test"])
            run_dirs[f"{name} + sft {sft}"] = sft_dir.parent

    for method in aligners:
        path = root / "aligners" / method
        if not (path / "aligner.json").is_file():
            make_aligner(method, **ALIGNER_PARAMS.get(method, {})).fit(text_store, image_store).save(path)
        aligned_row(method, method, path)
    if "gaussian-ot" in aligners:
        path = root / "aligners" / "gaussian-ot-validated"
        if not (path / "aligner.json").is_file():
            shrinkage, scores = validated_shrinkage(text_store, image_store, seed)
            log(f"gaussian-ot shrinkage chosen on a validation split of the unpaired pools: {shrinkage} "
                f"(MMD² " + ", ".join(f"{k}: {v:.4f}" for k, v in scores.items()) + ")")  # fmt: skip
            write_json(root / "aligners" / "gaussian-ot-validation.json", {"chosen": shrinkage, "mmd2": scores})
            make_aligner("gaussian-ot", shrinkage=shrinkage).fit(text_store, image_store).save(path)
        aligned_row(VALIDATED_OT, "gaussian-ot-validated", path)
    log("training on real paired image embeddings (upper bound)")
    paired_dir = train_revision(
        root, "paired", size, seed, str(root / "world" / "paired.jsonl"), str(root / "stores" / "paired-image"), None
    )
    rows[PAIRED], run_dirs[PAIRED] = _evaluate(root, paired_dir, pools["test"]), paired_dir.parent
    log("Unicorn: sparse seeds -> synthetic captions and conversations -> text pretraining and tuning")
    unicorn_dir = _unicorn(root, size, seed, pools["text_pool"], image_store, progress, log)
    rows[UNICORN], run_dirs[UNICORN] = _evaluate(root, unicorn_dir, pools["test"]), unicorn_dir.parent
    if sft:
        # The baseline the tuned rows answer to: the same tuning on the same pairs, without text pretraining.
        only = _sft(root, None, size, seed, sft)
        rows[f"sft {sft} only"], run_dirs[f"sft {sft} only"] = _evaluate(root, only, pools["test"]), only.parent
    curves = None
    if scaling:
        curves = run_scaling(root, size, seed, pools["test"], rows, run_dirs, scaling, scaling_methods, log)
    result = DemoResult(rows, run_dirs, before, time.perf_counter() - started, root, curves)
    write_json(
        root / "results.json",
        {
            "rows": rows,
            "gap_before": before,
            "seed": seed,
            "quick": quick,
            "size": dataclasses.asdict(size),
            "runs": {name: str(d.relative_to(root)) for name, d in run_dirs.items()},
            **({"scaling": curves} if curves else {}),
        },
    )
    write_text(root / "report.md", report_markdown(result, size, seed))
    from modgap.world.report import demo_report_html

    title = f"modgap demo (seed {seed}, {'quick' if quick else 'full'})"
    write_text(root / "report.html", demo_report_html(root, rows, run_dirs, list(aligners), title, curves))
    return result


def _check_scaling(scales: tuple[int, ...], methods: tuple[str, ...]) -> None:
    if not scales or any(k not in SCALES for k in scales):
        raise ModgapError(f"scaling scales must be among {SCALES}, got {scales}")
    unknown = [m for m in methods if m not in ALIGNERS]
    if unknown or not methods:
        raise ModgapError(f"scaling aligners must be among {', '.join(ALIGNERS)}, got {', '.join(unknown) or 'none'}")


def run_scaling_demo(
    workdir: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    scales: tuple[int, ...] = SCALES,
    methods: tuple[str, ...] = SCALING_METHODS,
    progress: ProgressFactory = silent,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The data-scaling curves of :func:`run_scaling` alone, in a demo workdir (the same world, stores and claim
    as :func:`run_demo`): every size is trained under ``scaling/``, the full pools too, so no other demo model
    is needed. Written to ``scaling.json``; resumable like the demo."""
    root, size = Path(workdir), QUICK if quick else FULL
    _check_scaling(scales, methods)
    claim_demo_dir(root, seed, quick, size)
    pools = write_world(root, size, seed, log)
    embed_world(root, progress, log)
    curves = run_scaling(root, size, seed, pools["test"], {}, {}, scales, methods, log)
    write_json(root / "scaling.json", curves)
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
) -> dict[str, Any]:
    """Does more unpaired text stand in for fewer pairs? For each scale k and aligner, a model pretrained on
    the first k/8 of the text pool (aligned with that method, fitted on exactly those texts and the image
    pool), and one on the first k/8 of the paired pool, same steps and settings as every other model. The
    full pools (k = 8) are the demo's own aligner and ``paired images`` models when it trained them.

    Returns ``{"methods", "sizes", "curves": {curve: [figures per size]}, "runs": {curve: [run dir per size]}}``
    with one curve ``text only, METHOD`` per method, then ``paired images``.
    """
    log(f"scaling: text only ({', '.join(methods)}) against paired images, pools of x{', x'.join(map(str, scales))}")
    full = min(size.text_pool, size.paired)
    names = {method: f"text only, {method}" for method in methods}
    curves = [*names.values(), PAIRED]
    out: dict[str, Any] = {"methods": list(methods), "sizes": [], "curves": {c: [] for c in curves},
                           "runs": {c: [] for c in curves}}  # fmt: skip
    for k in sorted(scales):
        n = full * k // SCALES[-1]
        trained = []
        for method in methods:
            if n == size.text_pool and method in rows:
                trained.append((names[method], rows[method], run_dirs[method]))
                continue
            data, aligner = _first_rows(root, "text_pool", n), _subset_aligner(root, method, n)
            model = train_revision(root, f"scaling/{method}-text{n}", size, seed, str(data),
                                   str(root / "stores" / "text_pool-text"), str(aligner))  # fmt: skip
            trained.append((names[method], _evaluate(root, model, test), model.parent))
        if n == size.paired and PAIRED in rows:
            trained.append((PAIRED, rows[PAIRED], run_dirs[PAIRED]))
        else:
            model = train_revision(root, f"scaling/paired{n}", size, seed, str(_first_rows(root, "paired", n)),
                                   str(root / "stores" / "paired-image"), None)  # fmt: skip
            trained.append((PAIRED, _evaluate(root, model, test), model.parent))
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
        ids = [json.loads(line)["id"] for line in _first_rows(root, "text_pool", n).read_text().splitlines()]
        texts = EmbeddingStore.open(root / "stores" / "text_pool-text").get(ids)
        make_aligner(method, **ALIGNER_PARAMS.get(method, {})).fit(
            texts.astype(np.float32), str(root / "stores" / "image_pool-image")
        ).save(path)
    return path


def _first_rows(root: Path, pool: str, n: int) -> Path:
    """``world/{pool}-first-{n}.jsonl``: the first ``n`` rows of a pool (written once)."""
    path = root / "world" / f"{pool}-first-{n}.jsonl"
    if not path.is_file():
        lines = (root / "world" / f"{pool}.jsonl").read_text().splitlines()[:n]
        write_jsonl(path, [json.loads(line) for line in lines])
    return path


def _unicorn(
    root: Path,
    size: DemoSize,
    seed: int,
    scenes: list[Scene],
    image_store: str,
    progress: ProgressFactory,
    log: Callable[[str], None],
) -> Path:
    """Unicorn on the world: a sparse seed per text-pool scene (``size.unicorn_seeds``), two captions per seed and a
    conversation per caption from the built-in LM (``synth run``), the captions' text embeddings mean-shifted
    onto the image centroid (the demo's mean shift), then pretraining on the captions and tuning (LLM and
    projector) on the conversations, both on those embeddings."""
    from modgap.synth.pipeline import (
        CaptionsSection,
        InstructionsSection,
        LLMSection,
        SeedsSection,
        TransferSection,
        UnicornConfig,
        run_unicorn,
    )

    seeds = root / "world" / "unicorn_seeds.jsonl"
    if not seeds.is_file():
        rng = np.random.default_rng(seed)
        write_jsonl(seeds, [{"id": f"seed-{i}", "text": sparse_seed(s, rng)}
                            for i, s in enumerate(scenes[: size.unicorn_seeds])])  # fmt: skip
    write_text(root / "world" / "expand.txt", EXPAND_PROMPT)
    write_text(root / "world" / "qa.txt", QA_PROMPT)
    config = UnicornConfig(
        llm=LLMSection(model=LLM, batch_size=64),
        seeds=SeedsSection(path=str(seeds)),
        captions=CaptionsSection(
            per_seed=2,
            temperature=0.7,
            max_tokens=32,
            min_words=3,
            dedupe=False,
            prompt_file=str(root / "world" / "expand.txt"),
        ),
        instructions=InstructionsSection(
            min_turns=2,
            max_turns=5,
            max_attempts=2,
            temperature=0.7,
            max_tokens=96,
            prompt_file=str(root / "world" / "qa.txt"),
        ),
        transfer=TransferSection(
            encoder=ENCODER,
            method="mean-shift",
            params=ALIGNER_PARAMS["mean-shift"],
            target=image_store,
            batch_size=256,
        ),
        seed=seed,
    )
    made = run_unicorn(config, root / "unicorn", command="modgap demo", progress=progress, log=log)
    store = str(made.transferred_store)
    pretrained = train_revision(root, "unicorn", size, seed, str(made.captions), store, None)
    return train_revision(root, "unicorn-sft", size, seed, str(made.instructions), store, None, stage="sft",
                          init=str(pretrained), steps=max(20, size.steps // 4))  # fmt: skip


def _sft(root: Path, method: str | None, size: DemoSize, seed: int, n: int, init: Path | None = None) -> Path:
    """A short tuning on the first ``n`` paired samples (real image embeddings), from ``init`` (a model
    pretrained on text) or, without it, from the base LM and a new projector."""
    data = _first_rows(root, "paired", n)
    steps = max(20, size.steps // 4)
    return train_revision(
        root,
        f"{method}-sft{n}" if method else f"sft{n}-only",
        size,
        seed,
        str(data),
        str(root / "stores" / "paired-image"),
        None,
        stage="sft",
        init=str(init) if init else None,
        steps=steps,
    )


COLUMNS = [
    ("centroid_distance", "gap"),
    ("knn_mixing", "k-NN mix"),
    ("neighbourhood_overlap", "nbr overlap"),
    *((a, a) for a in ATTRIBUTES),
    ("attributes", "mean attr"),
    ("exact", "exact"),
    ("bleu4", "BLEU-4"),
    ("cider", "CIDEr"),
    ("vqa", "VQA"),
]


def table_rows(rows: dict[str, dict[str, float]]) -> list[list[str]]:
    return [[name, *(f"{r[k]:.3f}" if k in r else "" for k, _ in COLUMNS)] for name, r in rows.items()]


def report_markdown(result: DemoResult, size: DemoSize, seed: int) -> str:
    b = result.gap_before
    lines = [
        "# modgap demo",
        "",
        f"Seed {seed}; {size.image_pool} image-only and {size.text_pool} text-only scenes (unpaired), "
        f"{size.paired} paired scenes for the upper bound, {size.test} held-out test images; "
        f"{size.steps} pretraining steps of batch {size.batch_size} for every model; {result.seconds:.0f} s.",
        "",
        f"Gap of builtin:tiny-clip before alignment: centroid distance {b['centroid_distance']:.3f}, "
        f"modality classifier accuracy {b['separability']:.3f}, k-NN mixing {b['knn_mixing@10']:.3f}.",
        "",
        "Models pretrained on *text only* (aligned as named), on real paired image embeddings, and on "
        "synthetic text only (Unicorn: seeds expanded and conversations written by the built-in LM), all "
        "evaluated on captions of held-out *images* and on questions about them (VQA accuracy, one question "
        "per attribute and whether the shape is round). Gap figures are after alignment.",
        "",
        "| model | " + " | ".join(h for _, h in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
        *("| " + " | ".join(r) + " |" for r in table_rows(result.rows)),
        "",
        "Chance per attribute: " + ", ".join(f"{k} {v:.2f}" for k, v in chance_levels().items()) + ".",
        "",
    ]
    if result.scaling:
        curves = result.scaling["curves"]
        lines += [
            "## Scaling",
            "",
            f"Mean attribute accuracy (VQA) of models trained on the first N rows of the text pool (aligned with "
            f"{', '.join(result.scaling['methods'])}, fitted on those texts) or of the paired pool; {size.steps} "
            "steps each.",
            "",
            "| N | " + " | ".join(curves) + " |",
            "|---" * (len(curves) + 1) + "|",
            *(
                f"| {n} | " + " | ".join(attributes_and_vqa(c[i]) for c in curves.values()) + " |"
                for i, n in enumerate(result.scaling["sizes"])
            ),
            "",
        ]
    return "\n".join(lines)


def attributes_and_vqa(row: dict[str, float]) -> str:
    return f"{row['attributes']:.3f} ({row.get('vqa', float('nan')):.3f})"
