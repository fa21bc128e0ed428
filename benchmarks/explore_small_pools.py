"""Exploratory (not a claim): the second world's paired curve below its smallest pool. In seed directories a
finished ``bench_demo_seeds.py --world relations --scaling-only`` run left, trains models on the first 250 /
500 / 1,000 real pairs (same steps, settings and held-out images as the curve's) and prints their caption
figures, one JSON line per model. Resumable: a finished model is read back from its ``test_scores.json``.

Usage: python benchmarks/explore_small_pools.py --root runs/relations-curve2 --seeds 0 1 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from modgap.world.steps import demo_size, evaluate_model, first_rows, train_revision, write_world
from modgap.world.worlds import get_world

POOLS = (250, 500, 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 3])
    args = parser.parse_args()
    size, kind = demo_size("relations", False), get_world("relations")
    rows: dict[int, list[dict]] = {}
    for seed in args.seeds:
        root = args.root / f"seed-{seed}-relations"
        test = write_world(root, size, seed, lambda _: None, "relations")["test"]
        for n in POOLS:
            model = train_revision(root, f"scaling/paired{n}", size=size, seed=seed, llm=kind.llm,
                                   prompt=kind.prompt, data=first_rows(root, "paired", n),
                                   store=root / "stores" / "paired-image")  # fmt: skip
            row = evaluate_model(root, model, test, "relations")
            rows.setdefault(n, []).append(row)
            print(json.dumps({"seed": seed, "pairs": n, **{k: round(v, 3) for k, v in row.items()}}), flush=True)
    for n, found in rows.items():
        mean = {k: round(float(np.mean([r[k] for r in found])), 3) for k in ("attributes", "position", "shape")}
        print(f"{n} pairs, mean over {len(found)} seeds: {mean}")


if __name__ == "__main__":
    main()
