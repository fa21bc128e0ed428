"""`modgap demo --embedder` over several seeds: mean ± std of every variant, and UniME's two claims tested
with paired per-seed differences (mean difference and a 95 % t-interval over seeds).

Each seed runs in its own workdir under --root (resumable). Usage:
    python benchmarks/bench_embedder_seeds.py --root runs/embedder-seeds --seeds 0 1 2 [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

from modgap.world.embedder_demo import (
    COLUMNS,
    MINED_VARIANT,
    PATCH_VARIANT,
    STOCK_BASE,
    STOCK_VARIANT,
    run_embedder_demo,
)

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


def interval(diffs: np.ndarray) -> tuple[float, float, float]:
    mean = float(np.mean(diffs))
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(diffs) - 1) * np.std(diffs, ddof=1) / np.sqrt(len(diffs)))
    return mean, mean - half, mean + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows: dict[int, dict[str, dict[str, float]]] = {}
    for seed in args.seeds:
        workdir = args.root / f"seed-{seed}{'-quick' if args.quick else ''}"
        started = time.perf_counter()
        result = run_embedder_demo(workdir, quick=args.quick, seed=seed, log=lambda _: None)
        rows[seed] = result["rows"]
        timing = workdir / "embedder" / "wall_seconds.json"
        if not timing.is_file():  # the first complete run of a seed is its figure
            timing.write_text(json.dumps({"seconds": time.perf_counter() - started}))
        print(f"seed {seed}: {json.loads(timing.read_text())['seconds']:.0f} s", flush=True)

    print(f"\n{len(args.seeds)} seeds ({'quick' if args.quick else 'full'}); mean ± std over seeds\n")
    print("| model | " + " | ".join(h for _, h in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for model in rows[args.seeds[0]]:
        cells = []
        for key, _ in COLUMNS:
            v = np.array([rows[s][model][key] for s in args.seeds])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}")
        print(f"| {model} | " + " | ".join(cells) + " |")
    print(
        "\npaired differences over seeds (better - worse), mean [95 % t-interval]; real when the interval excludes 0\n"
    )
    print("| claim | comparison | figure | difference | real? |")
    print("|---|---|---|---|---|")
    for claim, better, worse, key in COMPARISONS:
        diffs = np.array([rows[s][better][key] - rows[s][worse][key] for s in args.seeds])
        mean, lo, hi = interval(diffs)
        real = "yes" if lo > 0 else ("reversed" if hi < 0 else "no")
        print(f"| {claim} | {better} vs {worse} | {key} | {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] | {real} |")


if __name__ == "__main__":
    main()
