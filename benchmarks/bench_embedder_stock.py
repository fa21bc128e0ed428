"""`embedder tune` throughput: the stock-MLLM path against the modgap-format path at the same batch, one run.

Both paths run the same vision tower (builtin:tiny-clip's) and language model (builtin:tiny-lm) on the same
world pairs (image query, caption positive): the stock path is a LlavaForConditionalGeneration assembled from
them (`modgap.world.stock.assemble_llava`) reading PNG files through its processor and vision tower every step;
the modgap-format path reads the images' stored tiny-clip patch features (64 tokens, what LLaVA's projector
also sees) from an embedding store. Prints samples/s of each (real `modgap.embedder.train`, one process, LoRA),
best of ``--rounds`` alternating rounds, and their ratio.

Usage: python benchmarks/bench_embedder_stock.py [--n 256] [--batch 16] [--steps 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from modgap.embedder.config import EmbedderTrainConfig
from modgap.embedder.train import train
from modgap.encoders import load_encoder
from modgap.encoders.patches import PatchFeatures
from modgap.store import StoreWriter
from modgap.world.scene import caption, make_scenes, render
from modgap.world.stock import assemble_llava


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    try:
        scenes = make_scenes(args.n, 0, "bench")
        (work / "images").mkdir()
        pics = [render(s) for s in scenes]
        for k, im in enumerate(pics):
            im.save(work / "images" / f"i{k}.png")
        patches = PatchFeatures(load_encoder("builtin:tiny-clip"))
        with StoreWriter(work / "patches", dim=patches.dim, modality="image", encoder=patches.describe()) as w:
            w.write([f"images/i{k}.png" for k in range(args.n)], patches.encode_images(pics).numpy())
        with open(work / "pairs.jsonl", "w") as f:
            f.writelines(json.dumps({"qry": "<|image_1|>", "qry_image_path": f"images/i{k}.png",
                                     "pos_text": caption(s)}) + "\n" for k, s in enumerate(scenes))  # fmt: skip
        llava = assemble_llava(work / "llava")
        common = dict(stage="tune", data=str(work / "pairs.jsonl"), batch_size=args.batch, max_steps=args.steps,
                      report_to="none")  # fmt: skip
        paths = {
            "stock LLaVA (PNG files through processor + vision tower)": dict(init=str(llava), image_root=str(work)),
            "modgap format (stored patch features)": dict(llm="builtin:tiny-lm", embeddings=str(work / "patches")),
        }
        best: dict[str, float] = {}
        for r in range(args.rounds):
            for name, kw in paths.items():
                out = work / f"run-{r}-{len(best)}-{hash(name) % 1000}"
                rate = train(EmbedderTrainConfig(out=str(out), **common, **kw)).samples_per_second
                best[name] = max(best.get(name, 0.0), rate)
                shutil.rmtree(out, ignore_errors=True)
        for name, rate in best.items():
            print(f"{name:58s} batch {args.batch}: {rate:8.1f} samples/s (best of {args.rounds})")
        stock, fmt = best.values()
        print(f"stock / modgap-format: {stock / fmt:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
