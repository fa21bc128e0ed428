"""`modgap demo` over several seeds: mean and spread of every model's figures, and wall time per seed.

Each seed runs in its own workdir under --root (resumable: finished seeds are only re-evaluated, and their
recorded wall time is kept). Usage:
    python benchmarks/bench_demo_seeds.py --root runs/demo-seeds --seeds 0 1 2 [--quick] [--png docs/]

--png DIR writes demo-seeds.png (mean ± std over seeds per model and attribute) and, from the first seed,
demo-projections.png (text, aligned text and image embeddings in one PCA frame).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from modgap.world.demo import run_demo

FIGURES = ["shape", "colour", "size", "position", "attributes", "exact", "bleu4", "cider", "vqa"]
COMPARED = ["attributes", "shape", "vqa"]  # per-seed differences against the unaligned model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--png", type=Path, help="Write the figures here.")
    parser.add_argument("--sft", type=int, default=0, help="Also tune every model on this many real pairs.")
    args = parser.parse_args()

    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    seconds: dict[int, float] = {}
    gaps: list[float] = []
    for seed in args.seeds:
        workdir = args.root / f"seed-{seed}{'-quick' if args.quick else ''}"
        timing = workdir / (f"wall_seconds_sft{args.sft}.json" if args.sft else "wall_seconds.json")
        started = time.perf_counter()
        result = run_demo(workdir, quick=args.quick, seed=seed, sft=args.sft, log=lambda _: None)
        # The first complete run of a seed is its figure (a seed resumed from a killed run times only the rest).
        if not timing.is_file():
            timing.write_text(json.dumps({"seconds": time.perf_counter() - started}))
        seconds[seed] = json.loads(timing.read_text())["seconds"]
        per_seed[seed] = result.rows
        gaps.append(result.gap_before["centroid_distance"])
        print(f"seed {seed}: {seconds[seed]:.0f} s", flush=True)

    n = len(args.seeds)
    print(f"\n{n} seeds ({'quick' if args.quick else 'full'}); centroid gap before alignment {np.mean(gaps):.3f}")
    print("mean ± standard deviation over seeds\n")
    print("| model | " + " | ".join(FIGURES) + " |")
    print("|---" * (len(FIGURES) + 1) + "|")
    for model in per_seed[args.seeds[0]]:
        cells = []
        for figure in FIGURES:
            values = np.array([per_seed[s][model][figure] for s in args.seeds])
            cells.append(f"{values.mean():.3f} ± {values.std(ddof=1) if n > 1 else 0.0:.3f}")
        print(f"| {model} | " + " | ".join(cells) + " |")
    if n > 1:
        from scipy import stats

        print("\nper-seed difference against the unaligned model (`none`; `none + sft N` for tuned rows), same seed and"
              " test set: mean and 95 % t-interval (* where it excludes 0)\n")  # fmt: skip
        print("| model | " + " | ".join(f"Δ {f}" for f in COMPARED) + " |")
        print("|---" * (len(COMPARED) + 1) + "|")
        half = stats.t.ppf(0.975, n - 1) / np.sqrt(n)
        for model in per_seed[args.seeds[0]]:
            baseline = f"none + sft {args.sft}" if "sft" in model else "none"
            if model == baseline:
                continue
            cells = []
            for figure in COMPARED:
                d = np.array([per_seed[s][model][figure] - per_seed[s][baseline][figure] for s in args.seeds])
                mean, width = d.mean(), half * d.std(ddof=1)
                real = "*" if abs(mean) > width else ""
                cells.append(f"{mean:+.3f} [{mean - width:+.3f}, {mean + width:+.3f}]{real}")
            print(f"| {model} | " + " | ".join(cells) + " |")
    print(f"\nwall time per seed: {', '.join(f'{seconds[s]:.0f} s' for s in args.seeds)}")
    if args.png:
        write_figures(args, per_seed)


def write_figures(args: argparse.Namespace, per_seed: dict[int, dict[str, dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modgap.world.demo import ALIGNERS
    from modgap.world.report import FIGURES as FIGURES_PLOTTED
    from modgap.world.report import _projections, bar_chart

    args.png.mkdir(parents=True, exist_ok=True)
    values = {}
    for model in per_seed[args.seeds[0]]:
        values[model] = {}
        for figure in FIGURES_PLOTTED:
            v = np.array([per_seed[s][model][figure] for s in args.seeds])
            spread = v.std(ddof=1) if len(v) > 1 else 0.0
            values[model][figure] = (v.mean(), v.mean() - spread, v.mean() + spread)
    fig = bar_chart(values, f"modgap demo, {len(args.seeds)} seeds: mean ± std over seeds")
    fig.savefig(args.png / "demo-seeds.png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    first = args.root / f"seed-{args.seeds[0]}{'-quick' if args.quick else ''}"
    fig = _projections(first, list(ALIGNERS))
    fig.savefig(args.png / "demo-projections.png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    print(f"figures: {args.png / 'demo-seeds.png'}, {args.png / 'demo-projections.png'}")


if __name__ == "__main__":
    main()
