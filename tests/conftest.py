"""Shared helpers: small stores, ReVision-layout pickle directories, and the CLI run as a real process."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One torch thread per worker (and per process a test starts) when workers share the cores: two workers
    # with two threads each on two cores ran the suite in 501 s, with one thread each in 318 s (measured).
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import contextlib
import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modgap.store import EmbeddingStore, StoreWriter

REPO = Path(__file__).resolve().parents[1]


def make_store(
    path: Path,
    vectors: np.ndarray,
    *,
    prefix: str = "r",
    dtype: str = "float32",
    shard_rows: int | None = None,
    metadata: dict[str, list] | None = None,
    modality: str | None = None,
) -> EmbeddingStore:
    ids = [f"{prefix}{k}" for k in range(len(vectors))]
    with StoreWriter(
        path,
        dim=vectors.shape[1],
        dtype=dtype,
        shard_rows=shard_rows,
        metadata_columns=list(metadata or {}),
        modality=modality,
    ) as w:
        w.write(ids, vectors, metadata)
    return EmbeddingStore.open(path)


def write_revision_pkls(
    directory: Path, vectors: np.ndarray, *, prefix: str, per_file: int, key: str = "caption"
) -> list[str]:
    """The ReVision/Unicorn layout: *.pkl files, each a list of {"id", "embed", caption|image_path}."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = []
    for part, s in enumerate(range(0, len(vectors), per_file)):
        records = []
        for j in range(s, min(s + per_file, len(vectors))):
            ids.append(f"{prefix}{j}")
            records.append({"id": f"{prefix}{j}", key: f"{key} {j}", "embed": vectors[j].astype(np.float32)})
        with open(directory / f"{prefix}_{part}.pkl", "wb") as f:
            pickle.dump(records, f)
    return ids


def gapped_pair(rng: np.random.Generator, n_text: int, n_image: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Text and image vectors with a shared structure, offset means and different spreads (a modality gap)."""
    basis = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    spectrum = np.linspace(2.0, 0.2, dim)
    t = (rng.normal(size=(n_text, dim)) * spectrum) @ basis + 1.5 * np.eye(dim)[0]
    i = (rng.normal(size=(n_image, dim)) * spectrum[::-1] * 0.7) @ basis - 1.0 * np.eye(dim)[1]
    return t.astype(np.float32), i.astype(np.float32)


def run_cli(
    *args: str, cwd: Path | None = None, check: bool = True, process: bool = False
) -> subprocess.CompletedProcess:
    """Run ``modgap`` with its exit status, stdout and stderr, as a user would see them.

    In this interpreter by default (the command's own entry point, ``modgap.cli.main.run``, with the streams
    captured): a fresh interpreter costs 3-5 s of imports per call, most of the suite's time. ``process=True``
    runs a real ``modgap`` process, for what only a process shows (imports, signals, environment).
    """
    argv = [str(a) for a in args]
    if process:
        env = {**os.environ, "COLUMNS": "200"}
        proc = subprocess.run(
            [sys.executable, "-m", "modgap.cli.main", *argv], capture_output=True, text=True, cwd=cwd, env=env
        )
    else:
        proc = _run_in_this_interpreter(argv, cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"modgap {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def patch_world(root: Path, n: int, split: str) -> tuple[list, list[dict]]:
    """``n`` world scenes rendered under ``root/img``, their rows in ``root/data.jsonl`` (id, image, caption),
    and their tiny-clip patch tokens in the store ``root/patches`` (float32); returns the scenes and rows."""
    import json

    from modgap.world.scene import caption, make_scenes, render

    scenes = make_scenes(n, 0, split)
    (root / "img").mkdir()
    rows = []
    for i, scene in enumerate(scenes):
        render(scene).save(root / "img" / f"{i}.png")
        rows.append({"id": f"p{i}", "image": f"img/{i}.png", "caption": caption(scene, variant=0)})
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_cli("embed", "--encoder", "builtin:tiny-clip", "--data", root / "data.jsonl", "--image-root", root,
            "--modality", "image", "--features", "patch", "--out-image", root / "patches", "--dtype", "float32",
            "--num-workers", 0)  # fmt: skip
    return scenes, rows


def _run_in_this_interpreter(argv: list[str], cwd: Path | None) -> subprocess.CompletedProcess:
    from modgap.cli.main import run

    stdout, stderr = io.StringIO(), io.StringIO()
    here, columns, sys_argv = os.getcwd(), os.environ.get("COLUMNS"), sys.argv
    os.environ["COLUMNS"] = "200"
    sys.argv = ["modgap", *argv]  # what the run records as its command
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = run(argv)
    finally:
        os.chdir(here)
        sys.argv = sys_argv
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    return subprocess.CompletedProcess(["modgap", *argv], code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
