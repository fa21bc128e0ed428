"""Embedder training and encoding throughput on the built-in LM, from one run on this machine.

Prints samples/s of both stages (real `modgap.embedder.train`, one process) at a given batch, with and
without gradient caching (same gradients, activation memory of one chunk), and texts/s and images/s of the
trained model as an encoder (`embedder:DIR`, the path `modgap embed` takes).

Usage: python benchmarks/bench_embedder.py [--n 1024] [--batch 64] [--steps 8] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from modgap.embedder.config import EmbedderTrainConfig
from modgap.embedder.train import train
from modgap.encoders import load_encoder
from modgap.encoders.patches import PatchFeatures
from modgap.store import StoreWriter
from modgap.world.scene import caption, make_scenes, render


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.workdir))
    try:
        scenes = make_scenes(args.n, 0, "bench")
        texts = [caption(s) for s in scenes]
        clip = load_encoder("builtin:tiny-clip")
        pics = [render(s) for s in scenes]
        with StoreWriter(work / "images", dim=clip.dim, modality="image", encoder=clip.describe()) as w:
            w.write([f"i{k}" for k in range(args.n)], clip.encode_images(pics).numpy())
        patches = PatchFeatures(clip)
        with StoreWriter(work / "patches", dim=patches.dim, modality="image", encoder=patches.describe()) as w:
            w.write([f"i{k}" for k in range(args.n)], patches.encode_images(pics).numpy())
        rng = np.random.default_rng(0)
        with StoreWriter(work / "teacher", dim=384) as w:  # throughput only: the teacher's values do not matter
            w.write([f"t{k}" for k in range(args.n)], rng.normal(size=(args.n, 384)).astype(np.float32))
        with open(work / "texts.jsonl", "w") as f:
            f.writelines(json.dumps({"id": f"t{k}", "text": t}) + "\n" for k, t in enumerate(texts))
        with open(work / "pairs.jsonl", "w") as f:
            f.writelines(
                json.dumps({"qry": "<|image_1|>", "qry_image_path": f"i{k}", "pos_text": t}) + "\n"
                for k, t in enumerate(texts)
            )
        common = dict(llm="builtin:tiny-lm", embed_dim=clip.dim, batch_size=args.batch, max_steps=args.steps,
                      report_to="none")  # fmt: skip
        runs = [("distill", None, "images"), ("distill", 16, "images"), ("tune", None, "images"),
                ("tune", 16, "images"), ("tune", None, "patches")]  # fmt: skip
        for stage, chunk, images in runs:
            data = {"distill": {"data": str(work / "texts.jsonl"), "teacher_embeddings": str(work / "teacher")},
                    "tune": {"data": str(work / "pairs.jsonl"), "embeddings": str(work / images)}}[stage]  # fmt: skip
            out = work / f"{stage}-{chunk}-{images}"
            result = train(EmbedderTrainConfig(stage=stage, out=str(out), grad_cache_chunk=chunk, **data, **common))
            inputs = args.batch * (1 if stage == "distill" else 2)
            visual = "" if stage == "distill" else (", 64 patch tokens" if images == "patches" else ", 8 global tokens")
            print(
                f"{stage:7s} batch {args.batch} ({inputs} inputs/step{visual}), grad cache "
                f"{'off' if chunk is None else f'chunks of {chunk}'}: {result.samples_per_second:,.1f} samples/s"
            )
        for run, visual in (("tune-None-images", "global"), ("tune-None-patches", "patch")):
            encoder = load_encoder(f"embedder:{work / run}")
            jobs = [("images", encoder.image_preprocessor(), pics, "image")]
            if visual == "global":
                jobs.insert(0, ("texts", encoder.text_preprocessor(), texts, "text"))
            for name, prep, items, modality in jobs:
                encoder.embed(modality, prep(items[:64]))  # warm-up
                started = time.perf_counter()
                for s in range(0, len(items), 128):
                    encoder.embed(modality, prep(items[s : s + 128]))
                rate = len(items) / (time.perf_counter() - started)
                print(f"encode {name} with embedder:DIR ({visual} visual tokens): {rate:,.0f} {name}/s (batch 128)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
