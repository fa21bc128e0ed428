"""`report.html` of a demo workdir: pictures of what the tables say, self-contained like the gap report.

Bar charts: per model, accuracy per attribute of its captions of the held-out images and its VQA accuracy,
with 95 % intervals from a bootstrap over test images (one seed's uncertainty; the seed spread is in
``benchmarks/bench_demo_seeds.py``). Projections: one 2-D PCA frame fitted on unaligned text and image
embeddings, and in it, per aligner, the image embeddings and the text embeddings after alignment. Scaling
curves (when the demo ran them): mean attribute accuracy and VQA against pool size, text only vs paired.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from modgap.world.evaluate import attribute_hits, chance_levels
from modgap.world.worlds import get_world

BOOTSTRAP = 1000


def per_image_scores(run_dir: Path, world: str = "shapes") -> dict[str, np.ndarray]:
    """0/1 per test image and attribute (from ``test_captions.jsonl``), per image whether its caption names a
    relation that holds (second world; models scored before that was kept have none), and VQA accuracy per
    question."""
    captions = [json.loads(x) for x in (run_dir / "test_captions.jsonl").read_text().splitlines()]
    hits = attribute_hits([r["caption"] for r in captions], [r["truth"] for r in captions], world)
    out = {a: hits[a].astype(float) for a in get_world(world).attributes}
    if captions and all("relation" in r for r in captions):
        out["relation"] = np.array([r["relation"] is True for r in captions], float)
    answers = run_dir / "test_answers.jsonl"
    if answers.is_file():
        out["vqa"] = np.array([json.loads(x)["accuracy"] for x in answers.read_text().splitlines()], float)
    return out


def bootstrap_interval(values: np.ndarray, seed: int = 0, reps: int = BOOTSTRAP) -> tuple[float, float]:
    """95 % percentile interval of the mean over ``reps`` resamples of the rows."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(reps, len(values)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def figures(world: str = "shapes") -> list[str]:
    """What the bar charts show: each attribute of the main object, and VQA where the world has questions."""
    kind = get_world(world)
    return [*kind.attributes, *(["vqa"] if kind.questions else [])]


def bar_chart(values: dict[str, dict[str, tuple[float, float, float]]], title: str, world: str = "shapes") -> Any:
    """Grouped bars: ``values[model][figure] = (value, lower, upper)`` for each of :func:`figures`; chance
    dotted."""
    import matplotlib.pyplot as plt

    shown = figures(world)
    attributes = get_world(world).attributes
    models = list(values)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(models)
    for m, model in enumerate(models):
        v = np.array([values[model].get(f, (np.nan,) * 3) for f in shown])
        ax.bar(np.arange(len(shown)) + (m - (len(models) - 1) / 2) * width, v[:, 0], width,
               yerr=[v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]], capsize=2, label=model)  # fmt: skip
    chance = chance_levels(world)
    for i, attribute in enumerate(attributes):
        ax.hlines(chance[attribute], i - 0.45, i + 0.45, colors="black", linestyles="dotted")
    ax.set_xticks(np.arange(len(shown)), [f.replace("vqa", "VQA") for f in shown])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy on held-out images")
    ax.set_title(title + " (dotted: chance)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def _bars(scores: dict[str, dict[str, np.ndarray]], world: str) -> Any:
    values = {model: {f: (float(v.mean()), *bootstrap_interval(v)) for f, v in per.items()}
              for model, per in scores.items()}  # fmt: skip
    what = "captions and answers about" if get_world(world).questions else "captions of"
    return bar_chart(values, f"{what} held-out images, 95 % bootstrap over test images", world)


def second_figure(world: str = "shapes") -> str:
    """The figure shown beside the mean attribute accuracy: VQA where the world has questions, else relations
    named and true (the second world)."""
    return "vqa" if get_world(world).questions else "relation"


SECOND_FIGURE_LABELS = {"vqa": "VQA accuracy", "relation": "relation named and true"}


def scaling_chart(sizes: list[int], curves: dict[str, dict[str, np.ndarray]], title: str, world: str = "shapes") -> Any:
    """Two panels (mean attribute accuracy; :func:`second_figure`): ``curves[name][figure]`` is an array
    (3, len(sizes)) of value, lower and upper bound per pool size."""
    import matplotlib.pyplot as plt

    second = second_figure(world)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = ["mean attribute accuracy", SECOND_FIGURE_LABELS[second]]
    for ax, figure, label in zip(axes, ["attributes", second], labels, strict=True):
        for name, per in curves.items():
            if figure not in per:
                continue
            v = per[figure]
            ax.errorbar(sizes, v[0], yerr=[v[0] - v[1], v[2] - v[0]], marker="o", capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("training pool size (texts or image-caption pairs)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(title, y=1.02)
    return fig


def _scaling(root: Path, scaling: dict[str, Any], world: str) -> Any:
    curves: dict[str, dict[str, np.ndarray]] = {}
    for name, runs in scaling["runs"].items():
        per_size = [per_image_scores(root / run, world) for run in runs]
        mean_attr = [np.mean([s[a] for a in get_world(world).attributes], axis=0) for s in per_size]
        curves[name] = {"attributes": np.array([(v.mean(), *bootstrap_interval(v)) for v in mean_attr]).T}
        second = second_figure(world)
        if all(second in s for s in per_size):
            curves[name][second] = np.array([(s[second].mean(), *bootstrap_interval(s[second])) for s in per_size]).T
    title = "scaling: same steps, growing pools (95 % bootstrap over test images)"
    return scaling_chart(scaling["sizes"], curves, title, world)


def _sample(store: Path, n: int, seed: int) -> np.ndarray:
    from modgap.store.store import EmbeddingStore

    s = EmbeddingStore.open(store)
    rows = np.sort(np.random.default_rng(seed).choice(len(s), size=min(n, len(s)), replace=False))
    return s.take(rows).astype(np.float32)


def _projections(root: Path, aligners: list[str], n: int = 500) -> Any:
    import matplotlib.pyplot as plt

    from modgap.align import load_aligner

    text = _sample(root / "stores" / "text_pool-text", n, 0)
    image = _sample(root / "stores" / "image_pool-image", n, 1)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    text, image = unit(text), unit(image)
    pooled = np.concatenate([text, image]).astype(np.float64)
    centre = pooled.mean(0)
    basis = np.linalg.svd(pooled - centre, full_matrices=False)[2][:2].T
    panels: list[tuple[str, np.ndarray, np.ndarray]] = [("no alignment", text, image)]
    for method in (m for m in aligners if m != "none"):  # "none" is the first panel
        aligner = load_aligner(root / "aligners" / method)
        moved = aligner.transform(text)
        seen = aligner.transform_target(image)  # C3 centres the images too
        panels.append((method, moved, seen))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, (name, t, v) in zip(axes[0], panels, strict=True):
        pv, pt = (v - centre) @ basis, (t - centre) @ basis
        ax.scatter(pv[:, 0], pv[:, 1], s=3, alpha=0.4, label="image")
        ax.scatter(pt[:, 0], pt[:, 1], s=3, alpha=0.4, label="text" if name == "no alignment" else "aligned text")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(markerscale=4, fontsize=7)
    fig.suptitle("text and image embeddings in one PCA frame of the unaligned pools", y=1.03)
    return fig


def demo_report_html(root: Path, rows: dict[str, dict[str, float]], run_dirs: dict[str, Path],
                     aligners: list[str], title: str, scaling: dict[str, Any] | None = None,
                     world: str = "shapes") -> str:  # fmt: skip
    """The page: a table of every model's figures, the bar chart, the projections, the scaling curves when
    given (PNG inlined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modgap.gap.report import _png

    scores = {name: per_image_scores(d, world) for name, d in run_dirs.items()
              if (d / "test_captions.jsonl").is_file()}  # fmt: skip
    pictures = []
    makers = [lambda: _bars(scores, world), lambda: _projections(root, aligners)]
    if scaling:
        makers.append(lambda: _scaling(root, scaling, world))
    for make in makers:
        fig = make()
        pictures.append(_png(fig))
        plt.close(fig)
    keys = [k for k, _ in columns(world)]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["model", *keys])
    body = "".join(
        "<tr><td>" + html.escape(name) + "</td>"
        + "".join(f"<td>{r[k]:.3f}</td>" if k in r else "<td></td>" for k in keys) + "</tr>"
        for name, r in rows.items()
    )  # fmt: skip
    imgs = "".join(f'<p><img src="data:image/png;base64,{p}" style="max-width:100%"></p>' for p in pictures)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}"
        "td:first-child{text-align:left}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table><tr>{head}</tr>{body}</table>{imgs}</body></html>"
    )


# -- report.md --------------------------------------------------------------------------------
def columns(world: str = "shapes") -> list[tuple[str, str]]:
    """(key, header) of the demo table: gap figures, each attribute, the caption figures, and VQA (first
    world) or relations named and true (second)."""
    kind = get_world(world)
    return [
        ("centroid_distance", "gap"),
        ("knn_mixing", "k-NN mix"),
        ("neighbourhood_overlap", "nbr overlap"),
        *((a, a) for a in kind.attributes),
        ("attributes", "mean attr"),
        ("exact", "exact"),
        *([] if kind.questions else [("relation", "relation")]),
        ("bleu4", "BLEU-4"),
        ("cider", "CIDEr"),
        *([("vqa", "VQA")] if kind.questions else []),
    ]


COLUMNS = columns()


def table_rows(rows: dict[str, dict[str, float]], world: str = "shapes") -> list[list[str]]:
    return [[name, *(f"{r[k]:.3f}" if k in r else "" for k, _ in columns(world))] for name, r in rows.items()]


def report_markdown(result: Any, size: Any, seed: int, world: str = "shapes") -> str:
    """``report.md`` of a demo run (``result``: a :class:`~modgap.world.demo.DemoResult`)."""
    b, kind = result.gap_before, get_world(world)
    heads = columns(world)
    unicorn = "seeds expanded and conversations written" if kind.qa_prompt else "seeds expanded into captions"
    scored = ("captions of held-out *images* and on questions about them (VQA accuracy, one question per "
              "attribute and whether the shape is round)") if kind.questions else (
              "captions of held-out *images* (attributes of the main object; `relation`: the caption names a "
              "relation that holds in the image)")  # fmt: skip
    lines = [
        f"# modgap demo ({world} world)",
        "",
        f"Seed {seed}; {size.image_pool} image-only and {size.text_pool} text-only scenes (unpaired), "
        f"{size.paired} paired scenes for the upper bound, {size.test} held-out test images; "
        f"{size.steps} pretraining steps of batch {size.batch_size} for every model; {result.seconds:.0f} s.",
        "",
        f"Gap of {kind.encoder} before alignment: centroid distance {b['centroid_distance']:.3f}, "
        f"modality classifier accuracy {b['separability']:.3f}, k-NN mixing {b['knn_mixing@10']:.3f}.",
        "",
        "Models pretrained on *text only* (aligned as named), on real paired image embeddings, and on "
        f"synthetic text only (Unicorn: {unicorn} by the built-in LM), all evaluated on {scored}. Gap figures "
        "are after alignment.",
        "",
        "| model | " + " | ".join(h for _, h in heads) + " |",
        "|---" * (len(heads) + 1) + "|",
        *("| " + " | ".join(r) + " |" for r in table_rows(result.rows, world)),
        "",
        "Chance per attribute: " + ", ".join(f"{k} {v:.2f}" for k, v in chance_levels(world).items()) + ".",
        "",
    ]
    if result.scaling:
        curves, second = result.scaling["curves"], SECOND_FIGURE_LABELS[second_figure(world)]
        lines += [
            "## Scaling",
            "",
            f"Mean attribute accuracy ({second}) of models trained on the first N rows of the text pool (aligned with "
            f"{', '.join(result.scaling['methods'])}, fitted on those texts) or of the paired pool; {size.steps} "
            "steps each.",
            "",
            "| N | " + " | ".join(curves) + " |",
            "|---" * (len(curves) + 1) + "|",
            *(
                f"| {n} | " + " | ".join(attributes_and_second(c[i], world) for c in curves.values()) + " |"
                for i, n in enumerate(result.scaling["sizes"])
            ),
            "",
        ]
    return "\n".join(lines)


def attributes_and_second(row: dict[str, float], world: str = "shapes") -> str:
    """Mean attribute accuracy and, in brackets, the world's :func:`second_figure`."""
    return f"{row['attributes']:.3f} ({row.get(second_figure(world), float('nan')):.3f})"
