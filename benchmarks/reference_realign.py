"""The straightforward ReAlign the reference pipeline runs, re-implemented for comparison.

Its steps, as ReVision's ReAlign script takes them: for each of four passes, load every pickled list
of dicts, stack the ``embed`` arrays into float64, normalise (overflow-safe, NaN -> 0) chunk by chunk;
pass 1 means (kept as float32), pass 2 traces, pass 3 mu_hat, pass 4 apply and pickle float32 output
as ``<stem>_trace.pkl``. Used by ``bench_align.py`` (speed) and ``tests/test_reference.py`` (output).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CHUNK = 10_000


def l2_normalize(x: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    scale = np.max(np.abs(x), axis=1, keepdims=True)
    scale = np.where(scale > 0.0, scale, 1.0)
    norm = scale * np.linalg.norm(x / scale, axis=1, keepdims=True)
    norm = np.where(norm < eps, 1.0, norm)
    return x / norm


def _files(d: Path) -> list[Path]:
    return sorted(Path(d).glob("*.pkl"))


def _matrix(f: Path) -> tuple[list[dict], np.ndarray]:
    with open(f, "rb") as fh:
        records = pickle.load(fh)  # the reference's own trusted files; modgap never does this
    records = [r for r in records if r.get("embed") is not None]
    return records, np.vstack([np.asarray(r["embed"]) for r in records]).astype(np.float64)


def _chunks(m: np.ndarray):
    for s in range(0, len(m), CHUNK):
        yield l2_normalize(m[s : s + CHUNK])


def reference_realign(text_dir: Path, image_dir: Path, out_dir: Path) -> None:
    texts, images = _files(text_dir), _files(image_dir)

    def mean(files: list[Path]) -> np.ndarray:
        total, n = 0.0, 0
        for f in files:
            for c in _chunks(_matrix(f)[1]):
                total = total + c.sum(0)
                n += len(c)
        return (total / n).astype(np.float32).astype(np.float64)

    def trace(files: list[Path], mu: np.ndarray) -> float:
        total, n = 0.0, 0
        for f in files:
            for c in _chunks(_matrix(f)[1]):
                total += float(((c - mu) ** 2).sum())
                n += len(c)
        return total / n

    mu_t, mu_i = mean(texts), mean(images)
    scale = np.sqrt(trace(images, mu_i) / (trace(texts, mu_t) + 1e-10))
    total, n = 0.0, 0
    for f in texts:
        for c in _chunks(_matrix(f)[1]):
            total = total + l2_normalize((c - mu_t) * scale + mu_i).sum(0)
            n += len(c)
    mu_hat = total / n
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in texts:
        records, m = _matrix(f)
        final = np.vstack(
            [
                l2_normalize(l2_normalize((c - mu_t) * scale + mu_i) - mu_hat + mu_i).astype(np.float32)
                for c in _chunks(m)
            ]
        )
        with open(out_dir / f"{f.stem}_trace.pkl", "wb") as fh:
            pickle.dump([dict(r, embed=final[j]) for j, r in enumerate(records)], fh)


if __name__ == "__main__":  # the reference as a whole process: python reference_realign.py TEXT_DIR IMAGE_DIR OUT
    import sys

    reference_realign(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
