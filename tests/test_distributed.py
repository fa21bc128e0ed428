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


# -- training engines: what `accelerate launch` with the shipped configs really starts -------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny LM, 48 captions and their (random) text embeddings."""
    from modgap.world.tiny import save_tiny_llm

    root = tmp_path_factory.mktemp("engines")
    caps = [f"there is a {c} {s} in the picture ." for c in ("red", "green", "blue") for s in ("circle", "star")] * 8
    save_tiny_llm(root / "llm", [*caps, "describe ."], kind="llama", hidden=32, layers=2)
    rng = np.random.default_rng(0)
    make_store(root / "s", rng.normal(size=(len(caps), 8)).astype(np.float32), prefix="t", modality="text")
    (root / "d.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "caption": c}) + "\n" for i, c in enumerate(caps)))
    args = ["train", "pretrain", "--llm", root / "llm", "--data", root / "d.jsonl", "--embeddings", root / "s",
            "--report-to", "none", "--max-steps", "3", "--prompt", "describe ."]  # fmt: skip
    run_cli(*args, "--out", root / "one", "--batch-size", "8")
    return root, args


def test_accelerate_launch_with_the_cpu_config_runs_two_processes_equal_to_one(tiny_run):
    """configs/accelerate/cpu-2proc.yaml starts two gloo processes whose global batch of 2 x 4 trains the
    model one process trains with a batch of 8 (with MULTI_CPU + use_cpu it silently started one)."""
    from conftest import REPO

    root, args = tiny_run
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "cpu-2proc.yaml"), "--main_process_port", str(free_port()),
           "-m", "modgap.cli.main", *map(str, args), "--out", str(root / "two"), "--batch-size", "4"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1"} | _env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("trained 3 steps") == 2  # both processes ran and finished
    one, two = (load_file(str(root / r / "model" / "projector.safetensors")) for r in ("one", "two"))
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-4, atol=1e-6)


def test_fsdp_asked_for_on_cpu_is_refused_not_run_unsharded(tiny_run):
    """On CPU, accelerate 1.x ignores the FSDP plugin and sets up plain DDP: modgap refuses instead of
    training unsharded under an FSDP config."""
    import os

    root, args = tiny_run
    env = os.environ.copy()
    os.environ["ACCELERATE_USE_FSDP"] = "1"
    try:
        proc = torchrun(*args, "--out", root / "fsdp", "--batch-size", "4")
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert proc.returncode != 0 and "FSDP was asked for, but Accelerate set up MULTI_CPU" in proc.stderr, proc.stderr
    assert not (root / "fsdp" / "model").exists()


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available() or __import__("torch").cuda.device_count() < 2,
    reason="FSDP needs two GPUs (on CPU Accelerate runs it as DDP, refused above)",
)
def test_fsdp_on_two_gpus_saves_the_one_process_model(tiny_run, tmp_path):
    """The gathered full state an FSDP run saves equals the model one process trains on the global batch."""
    from conftest import REPO

    root, args = tiny_run
    config = (REPO / "configs" / "accelerate" / "fsdp.yaml").read_text().replace("num_processes: 8", "num_processes: 2")
    (tmp_path / "fsdp2.yaml").write_text(config.replace("mixed_precision: bf16", "mixed_precision: 'no'"))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "fsdp2.yaml"),
           "--main_process_port", str(free_port()), "-m", "modgap.cli.main", *map(str, args),
           "--out", str(tmp_path / "fsdp"), "--batch-size", "4"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr
    one, sharded = (load_file(str(d / "model" / "projector.safetensors")) for d in (root / "one", tmp_path / "fsdp"))
    for k in one:
        np.testing.assert_allclose(sharded[k], one[k], rtol=1e-3, atol=1e-5)
