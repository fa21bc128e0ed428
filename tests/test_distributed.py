"""A 2-process fit (torchrun, gloo): each rank reads half of the rows, statistics are merged."""

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import gapped_pair, make_store, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "modgap.cli.main",
        *map(str, args),
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": ""} | _env(),
    )


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}


@pytest.mark.parametrize("method", ["realign", "gaussian-ot"])
def test_two_process_fit_equals_single_process(tmp_path, rng, method):
    t, i = gapped_pair(rng, 2001, 1500, 16)
    t[1700, 3] = np.nan  # lives in rank 1's half: its report must still reach the saved aligner
    make_store(tmp_path / "t", t, prefix="t", shard_rows=300)
    make_store(tmp_path / "i", i, prefix="i", shard_rows=300)
    common = ["--source", tmp_path / "t", "--target", tmp_path / "i", "--method", method, "--on-bad", "skip"]
    proc = torchrun("align", "fit", *common, "--out", tmp_path / "dist", "--chunk-rows", "128")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_cli("align", "fit", *common, "--out", tmp_path / "single")
    a, b = load_file(tmp_path / "dist" / "aligner.safetensors"), load_file(tmp_path / "single" / "aligner.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        # float32 partial sums over different row splits; the OT map amplifies them through C_t^-1/2
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
    cfg = json.loads((tmp_path / "dist" / "aligner.json").read_text())
    assert cfg["counts"] == {"source": 2000, "target": 1500}
    bad = [json.loads(x) for x in (tmp_path / "dist" / "bad_rows.jsonl").read_text().splitlines()]
    assert [r["id"] for r in bad] == ["t1700"]


def test_two_process_embed_gives_one_store_equal_to_a_single_process_run(tmp_path):
    import json

    from modgap.store import EmbeddingStore
    from modgap.world.tiny import save_tiny_clip

    texts = [f"a {c} {s} number {k}" for k in range(3) for c in ("red", "blue", "green") for s in ("circle", "square")]
    model = save_tiny_clip(tmp_path / "clip", texts)
    (tmp_path / "d.jsonl").write_text(
        "".join(json.dumps({"id": f"t{k}", "text": t}) + "\n" for k, t in enumerate(texts))
    )
    args = [
        "embed",
        "--encoder",
        model,
        "--data",
        tmp_path / "d.jsonl",
        "--modality",
        "text",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--dtype",
        "float32",
        "--shard-rows",
        "5",
    ]
    proc = torchrun(*args, "--out-text", tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_cli(*args, "--out-text", tmp_path / "single")
    dist_store = EmbeddingStore.open(tmp_path / "dist", verify=True)
    single = EmbeddingStore.open(tmp_path / "single")
    assert dist_store.ids() == single.ids() == [f"t{k}" for k in range(len(texts))]
    assert {s.file.split("-")[1] for s in dist_store.manifest.shards} == {"r0", "r1"}
    assert not [p for p in (tmp_path / "dist").iterdir() if p.name.startswith(".rank")]
    np.testing.assert_allclose(dist_store.to_numpy(), single.to_numpy(), rtol=0, atol=1e-6)
