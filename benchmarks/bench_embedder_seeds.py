"""`modgap demo --embedder` over several seeds: mean ± std of every variant, and UniME's two claims tested
with paired per-seed differences (mean difference and a 95 % t-interval over seeds).

Each seed runs in its own workdir under --root (resumable). Usage:
    python benchmarks/bench_embedder_seeds.py --root runs/embedder-seeds --seeds 0 1 2 [--quick]
        [--world relations] [--results DIR]

--world relations runs the second world (no stock-LLaVA rows; stage 2 also at a large batch with gradient
caching, where false negatives occur; their expected number per batch is printed). --results DIR keeps each
finished seed's rows and the commit they ran at in DIR/seed-N.json and reads them back on a later run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from modgap.eval.seeds import paired_interval
from modgap.world.embedder_demo import (
    MINED_VARIANT,
    PATCH_VARIANT,
    STOCK_BASE,
    STOCK_VARIANT,
    EmbedderSize,
    columns,
    embedder_size,
    large_name,
    run_embedder_demo,
)
from modgap.world.worlds import WORLDS

# (claim, better, worse, figure): UniME's two claims and its ablations, as paired comparisons.
COMPARISONS = [
    ("distillation helps (stage 1 + 2 vs stage 2 only)", "stage 1 + 2", "stage 2 only", "i2t_R@1"),
    ("distillation helps (stage 1 + 2 vs stage 2 only)", "stage 1 + 2", "stage 2 only", "t2i_R@1"),
    ("distillation helps (stage 1 only vs base VLM)", "stage 1 only", "base VLM (no embedder training)", "t2i_R@5"),
    ("hard negatives + filter help (vs no filter)", "stage 1 + 2", "1 + 2, no false-negative filter", "comp:mean"),
    ("hard negatives + filter help (vs no selection)", "stage 1 + 2", "1 + 2, no hard-negative selection", "comp:mean"),
    ("hard negatives + filter help (vs no filter)", "stage 1 + 2", "1 + 2, no false-negative filter", "i2t_R@1"),
    ("hard negatives + filter help (vs no selection)", "stage 1 + 2", "1 + 2, no hard-negative selection", "i2t_R@1"),
    ("mined negatives help", MINED_VARIANT, "stage 1 + 2", "comp:mean"),
    ("mined negatives help", MINED_VARIANT, "stage 1 + 2", "i2t_R@1"),
    ("patch tokens beat one global embedding", PATCH_VARIANT, "stage 1 + 2", "i2t_R@1"),
    ("patch tokens beat one global embedding", PATCH_VARIANT, "stage 1 + 2", "comp:mean"),
    ("UniME's stages help on the stock path", STOCK_VARIANT, STOCK_BASE, "i2t_R@1"),
    ("UniME's stages help on the stock path", STOCK_VARIANT, STOCK_BASE, "comp:mean"),
    # The same model and budget on both paths: a difference is the path's (raw images vs stored features).
    ("stock path vs modgap-format path (same model)", STOCK_VARIANT, PATCH_VARIANT, "i2t_R@1"),
    ("stock path vs modgap-format path (same model)", STOCK_VARIANT, PATCH_VARIANT, "comp:mean"),
]


def large_batch_comparisons(size: EmbedderSize) -> list[tuple[str, str, str, str]]:
    """The second world's ablations at a batch where false negatives occur (chosen before its run)."""
    batch = size.large_batch
    big = large_name("stage 1 + 2", batch)
    out = []
    for key in ("comp:mean", "i2t_R@1"):
        out += [(f"filter helps at batch {batch}", big, large_name("1 + 2, no false-negative filter", batch), key),
                (f"hard-negative selection helps at batch {batch}", big,
                 large_name("1 + 2, no hard-negative selection", batch), key),
                (f"batch {batch} (gradient caching) vs {size.batch_size}", big, "stage 1 + 2", key)]  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--world", default="shapes", choices=sorted(WORLDS))
    parser.add_argument("--results", type=Path, help="Keep each seed's rows here (with the commit), read finished "
                        "seeds back.")  # fmt: skip
    args = parser.parse_args()
    from bench_demo_seeds import git_commit, keep, read_back, world_suffix  # (same folder: run as a script)

    rows: dict[int, dict[str, dict[str, float]]] = {}
    fn_per_batch: dict = {}
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        kept = args.results / f"seed-{seed}.json" if args.results else None
        if record := read_back(kept):
            rows[seed], fn_per_batch = record["rows"], record["false_negatives_per_batch"]
            continue
        workdir = args.root / f"seed-{seed}{world_suffix(args.world)}{'-quick' if args.quick else ''}"
        started = time.perf_counter()
        result = run_embedder_demo(workdir, quick=args.quick, seed=seed, world=args.world, log=lambda _: None)
        rows[seed], fn_per_batch = result["rows"], result["false_negatives_per_batch"]
        timing = workdir / "embedder" / "wall_seconds.json"
        if not timing.is_file():  # the first complete run of a seed is its figure
            timing.write_text(json.dumps({"seconds": time.perf_counter() - started}))
        seconds = json.loads(timing.read_text())["seconds"]
        print(f"seed {seed}: {seconds:.0f} s", flush=True)
        if kept is not None:
            keep(kept, {"seed": seed, "commit": git_commit(), "seconds": seconds, "rows": rows[seed],
                        "false_negatives_per_batch": fn_per_batch})  # fmt: skip

    heads = columns(args.world)
    print(f"\n{len(args.seeds)} seeds ({'quick' if args.quick else 'full'}, {args.world} world); expected "
          "false-negative pairs per stage-2 batch: " + ", ".join(f"batch {b}: {n:.1f}" for b, n in fn_per_batch.items())
          + "; mean ± std over seeds\n")  # fmt: skip
    print("| model | " + " | ".join(h for _, h in heads) + " |")
    print("|---" * (len(heads) + 1) + "|")
    for model in rows[args.seeds[0]]:
        cells = []
        for key, _ in heads:
            v = np.array([rows[s][model][key] for s in args.seeds])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}")
        print(f"| {model} | " + " | ".join(cells) + " |")
    print(
        "\npaired differences over seeds (better - worse), mean [95 % t-interval]; real when the interval excludes 0\n"
    )
    print("| claim | comparison | figure | difference | real? |")
    print("|---|---|---|---|---|")
    comparisons = COMPARISONS
    if args.world == "relations":  # no stock rows there; stage 2 also at a large batch
        comparisons = [c for c in COMPARISONS if not {STOCK_BASE, STOCK_VARIANT} & set(c[1:3])]
        comparisons += large_batch_comparisons(embedder_size(args.world, args.quick))
    for claim, better, worse, key in comparisons:
        diffs = np.array([rows[s][better][key] - rows[s][worse][key] for s in args.seeds])
        mean, lo, hi = paired_interval(diffs)
        real = "yes" if lo > 0 else ("reversed" if hi < 0 else "no")
        print(f"| {claim} | {better} vs {worse} | {key} | {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] | {real} |")


if __name__ == "__main__":
    main()
