"""Training speed of k visual tokens against the reference's 576 repeated tokens.

Builds a small Llama from a config (default 4 layers, width 512), synthetic captions and a text store,
then runs `modgap.mllm.train` (pretrain stage: LLM frozen, projector trained; gradients still flow
through the LLM) for a few steps per design at the same batch size. Prints step time, samples/s,
sequence length and all-token throughput. Usage: python benchmarks/bench_train.py [--steps 6] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from modgap.mllm.train import TrainConfig, train
from modgap.store.store import StoreWriter
from modgap.world.tiny import save_tiny_llm

WORDS = [
    "a",
    "an",
    "the",
    "red",
    "green",
    "blue",
    "yellow",
    "small",
    "large",
    "circle",
    "square",
    "triangle",
    "star",
    "on",
    "left",
    "right",
    "of",
    "top",
    "near",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--designs", default="expand:8,expand:32,repeat:576")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = args.batch * (args.steps + 1)
        captions = [" ".join(rng.choice(WORDS, size=24)) + " ." for _ in range(n)]
        llm = save_tiny_llm(root / "llm", captions, hidden=args.width, layers=args.layers, heads=8, max_length=1024)
        with StoreWriter(root / "text", dim=args.dim, dtype="float16", modality="text") as w:
            w.write([f"t{i}" for i in range(n)], rng.standard_normal((n, args.dim)).astype(np.float32))
        data = root / "caps.jsonl"
        data.write_text("".join(json.dumps({"id": f"t{i}", "caption": c}) + "\n" for i, c in enumerate(captions)))
        print(
            f"LLM: Llama {args.layers} layers x {args.width}; batch {args.batch}; captions of 25 tokens; "
            f"{args.steps} steps after 1 warm-up step"
        )
        rows = []
        for design in args.designs.split(","):
            mode, k = design.split(":")
            cfg = dict(
                stage="pretrain",
                data=[str(data)],
                embeddings=[str(root / "text")],
                llm=str(llm),
                token_mode=mode,
                num_visual_tokens=int(k),
                batch_size=args.batch,
                report_to="none",
                max_length=1024,
            )
            out = root / f"run-{mode}-{k}"
            train(TrainConfig(out=str(out), max_steps=args.steps + 1, stop_after=1, **cfg))
            res = train(TrainConfig(out=str(out), max_steps=args.steps + 1, resume=True, **cfg))
            step_s = res.seconds / args.steps
            rows.append((design, step_s, args.batch / step_s, res.tokens_per_second))
        base = rows[-1][1]
        print(f"{'design':>14} {'step s':>8} {'samples/s':>10} {'tokens/s':>10} {'speed-up vs last':>17}")
        for design, step_s, sps, tps in rows:
            print(f"{design:>14} {step_s:8.3f} {sps:10.1f} {tps:10,.0f} {base / step_s:16.1f}x")


if __name__ == "__main__":
    main()
