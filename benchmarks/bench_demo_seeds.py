"""`modgap demo` over several seeds: mean and spread of every model's figures, and wall time per seed.

Each seed runs in its own workdir under --root (resumable: finished seeds are only re-evaluated, and their
recorded wall time is kept). Usage:
    python benchmarks/bench_demo_seeds.py --root runs/demo-seeds --seeds 0 1 2 [--quick] [--png docs/]
        [--sft N] [--scaling | --scaling-only] [--scaling-aligners realign gaussian-ot] [--scaling-base N]

--sft N adds every text-pretrained model tuned on N real pairs and the same tuning without text pretraining,
and compares against both. --scaling adds the data-scaling curves (text pool vs paired pool of 1/8 .. all;
one text-only curve per aligner of --scaling-aligners, default realign) and compares every text-only size
with every paired size; --scaling-only trains only those curves (the full pools too, under scaling/);
--scaling-base N makes their pools N, 2N, 4N, 8N texts and pairs (--scaling-only) instead of 1/8 .. all;
--results DIR keeps each finished seed's figures (rows, or curves with --scaling-only) and the commit they ran
at in DIR/seed-N[_sftN].json and reads them back on a later run. --world relations runs the second world (its
own encoder and LM; workdirs seed-N-relations; figures named ...-relations.png).
--png DIR writes demo-seeds.png (mean ± std over seeds per model and attribute), from the first seed
demo-projections.png (text, aligned text and image embeddings in one PCA frame), and with --scaling
demo-scaling[-METHODS].png (mean ± std over seeds per pool size).
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

from modgap.eval.seeds import format_interval
from modgap.world.demo import SCALES, SCALING_METHODS, run_demo, run_scaling_demo
from modgap.world.report import second_figure

# Per world: the figures tabulated, and those compared per seed against the unaligned model (the second world's
# chosen before its claims ran: the mean attribute, place, and relations named and true; it has no VQA).
FIGURES = {"shapes": ["shape", "colour", "size", "position", "attributes", "exact", "bleu4", "cider", "vqa"],
           "relations": ["shape", "colour", "size", "texture", "position", "count", "attributes", "exact",
                         "relation", "bleu4", "cider"]}  # fmt: skip
COMPARED = {"shapes": ["attributes", "shape", "vqa"], "relations": ["attributes", "position", "relation"]}
# Model against model, per seed (the readings docs/world.md states for both worlds' zero-shot tables).
PAIRS = [("realign", "mean-shift"), ("c3", "realign"), ("gaussian-ot", "realign"), ("gaussian-ot", "c3"),
         ("paired images", "gaussian-ot"), ("gaussian-ot, validated shrinkage", "gaussian-ot"),
         ("unicorn (synthetic text)", "mean-shift")]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--png", type=Path, help="Write the figures here.")
    parser.add_argument("--sft", type=int, default=0, help="Also tune every model on this many real pairs.")
    parser.add_argument("--scaling", action="store_true", help="Also run the data-scaling curves.")
    parser.add_argument("--scaling-only", action="store_true", help="Only the data-scaling curves.")
    parser.add_argument("--scaling-aligners", nargs="*", default=list(SCALING_METHODS), metavar="METHOD",
                        help="One text-only scaling curve per aligner (none: the paired curve alone).")  # fmt: skip
    parser.add_argument("--results", type=Path, help="Keep each seed's figures here (with the commit), read "
                        "finished seeds back.")  # fmt: skip
    parser.add_argument("--scaling-base", type=int, help="Scaling pools of N x 1, 2, 4, 8 (--scaling-only).")
    parser.add_argument("--world", default="shapes", choices=sorted(FIGURES),
                        help="shapes (the first world) or relations (the second)")  # fmt: skip
    args = parser.parse_args()
    if args.scaling_base is not None and not args.scaling_only:
        parser.error("--scaling-base goes with --scaling-only")
    if args.results and args.scaling:
        parser.error("--results keeps rows, or curves with --scaling-only; not both (--scaling)")
    if args.scaling_only:
        scaling_only(args)
        return

    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    scaling: dict[int, dict] = {}
    seconds: dict[int, float] = {}
    gaps: list[float] = []
    methods = tuple(args.scaling_aligners)
    figures, compared = FIGURES[args.world], COMPARED[args.world]
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        kept = args.results / f"seed-{seed}{f'_sft{args.sft}' if args.sft else ''}.json" if args.results else None
        if record := read_back(kept):
            per_seed[seed], seconds[seed] = record["rows"], record["seconds"]
            gaps.append(record["gap_before"]["centroid_distance"])
            continue
        workdir = args.root / f"seed-{seed}{world_suffix(args.world)}{'-quick' if args.quick else ''}"
        timing = workdir / ("wall_seconds" + (f"_sft{args.sft}" if args.sft else "")
                            + (f"_scaling{methods_suffix(methods)}" if args.scaling else "") + ".json")  # fmt: skip
        started = time.perf_counter()
        result = run_demo(workdir, quick=args.quick, seed=seed, sft=args.sft, scaling=SCALES if args.scaling else (),
                          scaling_methods=methods, world=args.world, log=lambda _: None)  # fmt: skip
        scaling[seed] = result.scaling
        # The first complete run of a seed is its figure (a seed resumed from a killed run times only the rest).
        if not timing.is_file():
            timing.write_text(json.dumps({"seconds": time.perf_counter() - started}))
        seconds[seed] = json.loads(timing.read_text())["seconds"]
        per_seed[seed] = result.rows
        gaps.append(result.gap_before["centroid_distance"])
        print(f"seed {seed}: {seconds[seed]:.0f} s", flush=True)
        if kept is not None:
            keep(kept, {"seed": seed, "commit": git_commit(), "seconds": seconds[seed], "rows": result.rows,
                        "gap_before": result.gap_before})  # fmt: skip

    n = len(args.seeds)
    print(f"\n{n} seeds ({'quick' if args.quick else 'full'}, {args.world} world); centroid gap before alignment "
          f"{np.mean(gaps):.3f}")  # fmt: skip
    print("mean ± standard deviation over seeds\n")
    print("| model | " + " | ".join(figures) + " |")
    print("|---" * (len(figures) + 1) + "|")
    for model in per_seed[args.seeds[0]]:
        cells = []
        for figure in figures:
            values = np.array([per_seed[s][model][figure] for s in args.seeds])
            cells.append(f"{values.mean():.3f} ± {values.std(ddof=1) if n > 1 else 0.0:.3f}")
        print(f"| {model} | " + " | ".join(cells) + " |")
    if n > 1:
        print("\nper-seed difference against the unaligned model (`none`; `none + sft N` for tuned rows), same seed and"
              " test set: mean and 95 % t-interval (* where it excludes 0)\n")  # fmt: skip
        print("| model | " + " | ".join(f"Δ {f}" for f in compared) + " |")
        print("|---" * (len(compared) + 1) + "|")
        for model in per_seed[args.seeds[0]]:
            baseline = f"none + sft {args.sft}" if "sft" in model else "none"
            if model != baseline:
                cells = [difference(per_seed, args.seeds, model, baseline, figure) for figure in compared]
                print(f"| {model} | " + " | ".join(cells) + " |")
        print("\nper-seed difference between models (first − second), same seed and test set\n")
        print("| comparison | " + " | ".join(f"Δ {f}" for f in compared) + " |")
        print("|---" * (len(compared) + 1) + "|")
        for better, worse in PAIRS:
            cells = [difference(per_seed, args.seeds, better, worse, figure) for figure in compared]
            print(f"| {better} − {worse} | " + " | ".join(cells) + " |")
        if args.sft:
            only = f"sft {args.sft} only"
            print(f"\nper-seed difference against the same tuning without text pretraining (`{only}`)\n")
            print("| model | " + " | ".join(f"Δ {f}" for f in compared) + " |")
            print("|---" * (len(compared) + 1) + "|")
            tuned = [m for m in per_seed[args.seeds[0]] if m.endswith(f" + sft {args.sft}")]
            for model in tuned:
                cells = [difference(per_seed, args.seeds, model, only, figure) for figure in compared]
                print(f"| {model} | " + " | ".join(cells) + " |")
            print("\nper-seed difference of each tuned model against itself before the tuning (its zero-shot row)\n")
            print("| model | " + " | ".join(f"Δ {f}" for f in compared) + " |")
            print("|---" * (len(compared) + 1) + "|")
            for model in tuned:
                start = model.removesuffix(f" + sft {args.sft}")
                cells = [difference(per_seed, args.seeds, model, start, figure) for figure in compared]
                print(f"| {model} | " + " | ".join(cells) + " |")
    if args.scaling:
        print_scaling(scaling, args.seeds, args.world)
    print(f"\nwall time per seed: {', '.join(f'{seconds[s]:.0f} s' for s in args.seeds)}")
    if args.png:
        write_figures(args, per_seed, scaling)


def world_suffix(world: str) -> str:
    """Workdir and figure names of the second world end in ``-relations``; the first world's are unchanged."""
    return "" if world == "shapes" else f"-{world}"


def read_back(path: Path | None) -> dict | None:
    """A seed's record kept by an earlier run (``--results``), said so on stdout; None when there is none."""
    if path is None or not path.is_file():
        return None
    record = json.loads(path.read_text())
    print(f"seed {record['seed']}: read from {path} ({record['seconds']:.0f} s, commit {record['commit']})", flush=True)
    return record


def keep(path: Path, record: dict) -> None:
    """``record`` as JSON at ``path`` (temporary name, then rename: a killed run leaves no half file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def methods_suffix(methods: tuple[str, ...]) -> str:
    """How file names tell scaling runs apart: nothing for the default aligners, ``-m1-m2`` otherwise."""
    if not methods:
        return "-paired-only"
    return "" if methods == SCALING_METHODS else "-" + "-".join(methods)


def scaling_only(args: argparse.Namespace) -> None:
    """The scaling curves per seed; with --results DIR each finished seed's curves and wall time are kept in
    DIR/seed-N.json (a file to commit) and a seed found there is read back, not run: a claim run over more
    seeds than one session has time for continues in the next from the same frozen commit."""
    scaling, seconds = {}, {}
    methods = tuple(args.scaling_aligners)
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        kept = args.results / f"seed-{seed}.json" if args.results else None
        if record := read_back(kept):
            scaling[seed], seconds[seed] = record["scaling"], record["seconds"]
            continue
        workdir = args.root / f"seed-{seed}{world_suffix(args.world)}{'-quick' if args.quick else ''}"
        base = "" if args.scaling_base is None else f"_base{args.scaling_base}"
        timing = workdir / f"wall_seconds_scaling_only{methods_suffix(methods)}{base}.json"
        started = time.perf_counter()
        scaling[seed] = run_scaling_demo(workdir, quick=args.quick, seed=seed, methods=methods, world=args.world,
                                         base=args.scaling_base, log=lambda _: None)  # fmt: skip
        if not timing.is_file():
            timing.write_text(json.dumps({"seconds": time.perf_counter() - started}))
        seconds[seed] = json.loads(timing.read_text())["seconds"]
        print(f"seed {seed}: {seconds[seed]:.0f} s", flush=True)
        if kept is not None:
            keep(kept, {"seed": seed, "commit": git_commit(), "seconds": seconds[seed], "scaling": scaling[seed]})
    print_scaling(scaling, args.seeds, args.world)
    print(f"\nwall time per seed: {', '.join(f'{seconds[s]:.0f} s' for s in args.seeds)}")
    if args.png:
        write_scaling_figure(args, scaling)


def git_commit() -> str:
    """The checkout's commit (with ``+changes`` when the tree differs from it): what the figures were run on."""
    import subprocess

    here = Path(__file__).parent
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                           text=True).stdout.strip()  # fmt: skip
    return commit + ("+changes" if dirty else "")


def difference(per_seed: dict[int, dict[str, dict[str, float]]], seeds: list[int], model: str, baseline: str,
               figure: str) -> str:  # fmt: skip
    """Mean per-seed difference ``model - baseline`` with its 95 % t-interval, ``*`` where it excludes 0."""
    return format_interval([per_seed[s][model][figure] - per_seed[s][baseline][figure] for s in seeds])


def print_scaling(scaling: dict[int, dict], seeds: list[int], world: str) -> None:
    """Mean ± std per pool size and curve; then, per text-only curve, every text size against every paired size
    (per-seed differences of the mean attribute accuracy): where does N texts match M pairs? With two text
    curves, also the per-seed difference between them at each size."""
    first = scaling[seeds[0]]
    sizes, curves = first["sizes"], list(first["curves"])
    *texts, paired = curves
    second = second_figure(world)

    def attributes(curve: str, i: int, s: int) -> float:
        return scaling[s]["curves"][curve][i]["attributes"]

    print(f"\nscaling ({len(seeds)} seeds): mean attribute accuracy / {second}, mean ± std over seeds\n")
    heads = " | ".join(f"{c}: attributes | {c}: {second}" for c in curves)
    deltas = "".join(f" | Δ attributes ({t} − paired)" for t in texts)
    print(f"| pool size | {heads}{deltas} |")
    print("|---" * (2 * len(curves) + len(texts) + 1) + "|")
    for i, n in enumerate(sizes):
        cells = []
        for curve in curves:
            for figure in ("attributes", second):
                v = np.array([scaling[s]["curves"][curve][i][figure] for s in seeds])
                cells.append(f"{v.mean():.3f} ± {v.std(ddof=1):.3f}")
        cells += [format_interval([attributes(t, i, s) - attributes(paired, i, s) for s in seeds]) for t in texts]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print(f"\n{paired}, all {sizes[-1]} against each smaller pool: per-seed Δ (95 % t-interval, * excludes 0)\n")
    print("| smaller pool | Δ attributes | " + " | ".join(f"Δ {a}" for a in first["curves"][paired][0]
                                                     if a not in ("attributes", "bleu4", "cider")) + " |")  # fmt: skip
    names = [a for a in first["curves"][paired][0] if a not in ("attributes", "bleu4", "cider")]
    print("|---" * (len(names) + 2) + "|")
    for i, n in enumerate(sizes[:-1]):
        curve = [scaling[s]["curves"][paired] for s in seeds]
        cells = [format_interval([c[-1][f] - c[i][f] for c in curve]) for f in ("attributes", *names)]
        print(f"| {n} | " + " | ".join(cells) + " |")
    for text in texts:
        print(f"\n{text} (rows, N texts) against {paired} (columns, M pairs): per-seed Δ mean attribute accuracy, "
              "95 % t-interval (* excludes 0)\n")  # fmt: skip
        print("| N texts \\ M pairs | " + " | ".join(map(str, sizes)) + " |")
        print("|---" * (len(sizes) + 1) + "|")
        for i, n in enumerate(sizes):
            cells = [format_interval([attributes(text, i, s) - attributes(paired, j, s) for s in seeds])
                     for j in range(len(sizes))]  # fmt: skip
            print(f"| {n} | " + " | ".join(cells) + " |")
    for a, b in pairwise(texts):
        print(f"\n{b} − {a}, same size: per-seed Δ (95 % t-interval)\n")
        print(f"| pool size | Δ attributes | Δ {second} |")
        print("|---|---|---|")
        for i, n in enumerate(sizes):
            cells = [format_interval([scaling[s]["curves"][b][i][f] - scaling[s]["curves"][a][i][f] for s in seeds])
                     for f in ("attributes", second)]  # fmt: skip
            print(f"| {n} | " + " | ".join(cells) + " |")


def write_figures(args: argparse.Namespace, per_seed: dict[int, dict[str, dict[str, float]]],
                  scaling: dict[int, dict]) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modgap.world.demo import ALIGNERS
    from modgap.world.report import _projections, bar_chart, figures

    args.png.mkdir(parents=True, exist_ok=True)
    values = {}
    for model in per_seed[args.seeds[0]]:
        values[model] = {}
        for figure in figures(args.world):
            v = np.array([per_seed[s][model][figure] for s in args.seeds])
            spread = v.std(ddof=1) if len(v) > 1 else 0.0
            values[model][figure] = (v.mean(), v.mean() - spread, v.mean() + spread)
    world = world_suffix(args.world)
    fig = bar_chart(values, f"modgap demo, {len(args.seeds)} seeds: mean ± std over seeds", args.world)
    bars, projections = args.png / f"demo-seeds{world}.png", args.png / f"demo-projections{world}.png"
    fig.savefig(bars, dpi=90, bbox_inches="tight")
    plt.close(fig)
    first = args.root / f"seed-{args.seeds[0]}{world}{'-quick' if args.quick else ''}"
    if first.is_dir():  # (seeds read back from --results may have no workdir here)
        fig = _projections(first, list(ALIGNERS))
        fig.savefig(projections, dpi=80, bbox_inches="tight")
        plt.close(fig)
    print(f"figures: {bars}, {projections}")
    if args.scaling:
        write_scaling_figure(args, scaling)


def write_scaling_figure(args: argparse.Namespace, scaling: dict[int, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modgap.world.report import scaling_chart

    sizes = scaling[args.seeds[0]]["sizes"]
    curves = {}
    for curve in scaling[args.seeds[0]]["curves"]:
        curves[curve] = {}
        for figure in ("attributes", second_figure(args.world)):
            v = np.array([[row[figure] for row in scaling[s]["curves"][curve]] for s in args.seeds])
            mean, spread = v.mean(0), v.std(0, ddof=1)
            curves[curve][figure] = np.stack([mean, mean - spread, mean + spread])
    title = f"scaling, {len(args.seeds)} seeds: mean ± std over seeds, same steps"
    fig = scaling_chart(sizes, curves, title, args.world)
    world = world_suffix(args.world)
    base = "" if args.scaling_base is None else f"-base{args.scaling_base}"
    name = f"demo-scaling{world}{methods_suffix(tuple(args.scaling_aligners))}{base}.png"
    args.png.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png / name, dpi=90, bbox_inches="tight")
    plt.close(fig)
    print(f"figure: {args.png / name}")


if __name__ == "__main__":
    main()
