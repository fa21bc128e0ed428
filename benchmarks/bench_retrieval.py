"""Time and peak memory of `modgap eval retrieval` against the plain full-similarity-matrix approach.

Prints, from one run on this machine:
  * the streamed evaluator (the real CLI, in a child process): seconds, scored pairs/s, peak RSS, at
    N images x 5N captions and at N/10 x 5N/10 (memory must not grow with N);
  * the plain approach (one float32 similarity matrix, ranks by comparing against the positives' scores)
    in a child process at the smaller size, its peak RSS, and the bytes its matrix would take at N;
  * that both give the same Recall@k where both ran.

Usage: python benchmarks/bench_retrieval.py [--images 100000] [--per-image 5] [--dim 64] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from modgap.store import StoreWriter


def make_world(root: Path, n_images: int, per_image: int, dim: int, seed: int = 0) -> None:
    """Images, noisy captions (per_image each) and the pairs file, written in blocks."""
    rng = np.random.default_rng(seed)
    block = 20000
    with (
        StoreWriter(root / "img", dim=dim, dtype="float16", check_duplicates=False) as wi,
        StoreWriter(root / "txt", dim=dim, dtype="float16", check_duplicates=False) as wt,
        open(root / "pairs.csv", "w") as pairs,
    ):
        pairs.write("text_id,image_id\n")
        for s in range(0, n_images, block):
            m = min(block, n_images - s)
            img = rng.standard_normal((m, dim), dtype=np.float32)
            wi.write([f"i{k}" for k in range(s, s + m)], img)
            txt = np.repeat(img, per_image, axis=0) + 2.5 * rng.standard_normal((m * per_image, dim), dtype=np.float32)
            wt.write([f"t{k}" for k in range(s * per_image, (s + m) * per_image)], txt)
            pairs.writelines(f"t{k},i{k // per_image}\n" for k in range(s * per_image, (s + m) * per_image))


PLAIN = r"""
import json, sys, time
import numpy as np
from modgap.store import EmbeddingStore
root, per = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
img = EmbeddingStore.open(root + "/img").to_numpy(np.float32)
txt = EmbeddingStore.open(root + "/txt").to_numpy(np.float32)
img /= np.linalg.norm(img, axis=1, keepdims=True); txt /= np.linalg.norm(txt, axis=1, keepdims=True)
sims = img @ txt.T  # the whole matrix
owner = np.arange(len(txt)) // per
pos = sims[owner, np.arange(len(txt))]
t2i = (sims > pos[None, :]).sum(0)
best = sims.reshape(len(img), len(img), per)[np.arange(len(img)), np.arange(len(img))].max(1)
i2t = (sims > best[:, None]).sum(1)
out = {f"i2t_R@{k}": float(np.mean(i2t < k)) for k in (1, 5, 10)}
out.update({f"t2i_R@{k}": float(np.mean(t2i < k)) for k in (1, 5, 10)})
out["seconds"] = time.perf_counter() - t0
print(json.dumps(out))
"""


# The floor the issue defines: a fresh process that imports torch and computes the same float32 scores in a
# plain loop (blocks of images against all captions; no ranks kept), start-up included.
FLOOR = r"""
import sys
import numpy as np
import torch
from modgap.store import EmbeddingStore
img = torch.from_numpy(EmbeddingStore.open(sys.argv[1] + "/img").to_numpy(np.float32))
txt = torch.from_numpy(EmbeddingStore.open(sys.argv[1] + "/txt").to_numpy(np.float32))
img, txt = img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True)
for s in range(0, len(img), 4096):
    (img[s : s + 4096] @ txt.T).max(1)
"""


def child(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a child process under /usr/bin/time: its wall seconds and its own peak RSS in GiB."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "maxrss_kib=%M", *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} failed:\n{proc.stderr}")
    kib = int(proc.stderr.rsplit("maxrss_kib=", 1)[1].split()[0])
    return proc, seconds, kib / 2**20


def streamed(root: Path) -> tuple[dict, float, float]:
    cmd = [sys.executable, "-m", "modgap.cli.main", "eval", "retrieval", "--image", str(root / "img")]
    cmd += ["--text", str(root / "txt"), "--pairs", str(root / "pairs.csv"), "--json", str(root / "r.json")]
    _, seconds, rss = child(cmd)
    return json.loads((root / "r.json").read_text()), seconds, rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--per-image", type=int, default=5)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--skip-plain", action="store_true", help="Only the streamed evaluator (memory at N and N/10).")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.workdir))
    try:
        small_n = args.images // 10
        for name, n in (("small", small_n), ("large", args.images)):
            make_world(work / name, n, args.per_image, args.dim)
        small, s_sec, s_rss = streamed(work / "small")
        if not args.skip_plain:
            plain_proc, p_sec, p_rss = child([sys.executable, "-c", PLAIN, str(work / "small"), str(args.per_image)])
            plain = json.loads(plain_proc.stdout)
        large, l_sec, l_rss = streamed(work / "large")
        for n, sec, rss in ((small_n, s_sec, s_rss), (args.images, l_sec, l_rss)):
            pairs = n * n * args.per_image
            print(
                f"streamed {n:,} x {n * args.per_image:,} (D={args.dim}): {sec:.1f} s, "
                f"{pairs / sec / 1e6:,.0f} M scored pairs/s, peak RSS {rss:.2f} GiB"
            )
        if not args.skip_plain:
            agree = all(abs(plain[k] - small[k]) < 1e-9 for k in small if "@" in k)
            print(
                f"plain full matrix {small_n:,} x {small_n * args.per_image:,}: {p_sec:.1f} s, "
                f"peak RSS {p_rss:.2f} GiB (same Recall@k as streamed: {agree})"
            )
        full_bytes = args.images * args.images * args.per_image * 4
        print(f"plain full matrix at {args.images:,} x {args.images * args.per_image:,}: {full_bytes / 2**30:.0f} GiB")
        print("recall (large):", {k: round(v, 4) for k, v in large.items() if "@" in k})
        ours, floor = [l_sec], []  # alternating rounds against the floor, best of 3
        for r in range(3):
            floor.append(child([sys.executable, "-c", FLOOR, str(work / "large")])[1])
            if r < 2:
                ours.append(streamed(work / "large")[1])
        size = f"{args.images:,} x {args.images * args.per_image:,}"
        print(f"`eval retrieval` at {size} as a command: {min(ours):.1f} s; "
              f"the floor (fresh process, torch, float32 scores in a plain loop): {min(floor):.1f} s; "
              f"ratio {min(ours) / min(floor):.2f}")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
