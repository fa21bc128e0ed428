"""Overhead of `modgap embed` over the encoder's bare forward pass.

Builds a CLIP (ViT 224px/32; default 4 layers of width 256 per tower, `--layers 12 --width 768` is ViT-B/32's
shape) from a config, writes 256x256 JPEG images and
captions, then times, at the same batch size:
  * bare: get_image_features / get_text_features on tensors prepared beforehand (no decoding,
    no tokenising, no writing);
  * modgap: the embed pipeline (workers decoding/tokenising, bucketing, float16 store writes).
Prints items/s of both and the overhead. Usage: python benchmarks/bench_embed.py [--images 512] [--texts 4096]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modgap.embed import EmbedOptions, Inputs, embed_modality
from modgap.encoders import load_encoder
from modgap.world.tiny import save_tiny_clip

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
    "left",
    "right",
    "top",
    "bottom",
    "of",
    "on",
    "in",
]


def captions(n: int, rng: np.random.Generator) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=rng.integers(4, 30))) for _ in range(n)]


def bare_forward(encoder, modality: str, prepared: list[dict]) -> float:
    t0 = time.perf_counter()
    for batch in prepared:
        encoder.embed(modality, batch)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--texts", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=None, help="default: half the cores, as modgap embed")
    ap.add_argument("--width", type=int, default=256, help="hidden size of each tower")
    ap.add_argument("--layers", type=int, default=4, help="layers of each tower")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modgap-bench-embed-"))
    rng = np.random.default_rng(0)
    texts = captions(args.texts, rng)
    model = save_tiny_clip(
        work / "clip",
        texts,
        image_size=224,
        hidden=args.width,
        layers=args.layers,
        projection_dim=256,
        max_text_length=64,
    )
    (work / "img").mkdir()
    for k in range(args.images):
        pixels = (rng.random((256, 256, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(work / "img" / f"{k}.jpg", quality=90)
    encoder = load_encoder(str(model))
    torch.set_num_threads(torch.get_num_threads())
    bs = args.batch_size
    opts = EmbedOptions(batch_size=bs)
    if args.num_workers is not None:
        opts.num_workers = args.num_workers
    inputs = Inputs(
        texts=[(f"t{k}", t) for k, t in enumerate(texts)],
        images=[(f"i{k}", str(work / "img" / f"{k}.jpg")) for k in range(args.images)],
    )
    print(
        f"CLIP ViT-224/32, {args.layers} layers x {args.width} per tower, batch {bs}, {opts.num_workers} workers, "
        f"{torch.get_num_threads()} torch threads"
    )
    for modality, n in (("image", args.images), ("text", args.texts)):
        if modality == "image":
            pils = [Image.open(p).convert("RGB") for _, p in inputs.images]
            prepared = [encoder.prepare_images(pils[s : s + bs]) for s in range(0, n, bs)]
        else:
            ordered = sorted(texts, key=len)  # the same bucketing advantage the pipeline has
            prepared = [encoder.prepare_texts(ordered[s : s + bs]) for s in range(0, n, bs)]
        bare_forward(encoder, modality, prepared[:1])  # warm-up
        bare = bare_forward(encoder, modality, prepared)
        out = work / f"store-{modality}"
        t0 = time.perf_counter()
        embed_modality(encoder, modality, inputs, out, opts)
        piped = time.perf_counter() - t0
        print(
            f"{modality:5s}: bare forward {n / bare:8.1f} items/s | modgap embed {n / piped:8.1f} items/s | "
            f"overhead {100 * (piped / bare - 1):+.1f}%"
        )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
