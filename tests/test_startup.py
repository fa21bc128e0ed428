"""No torch where none is needed (issue 22): the store, gap and evaluation commands and the aligners' metadata
run in a fresh interpreter without loading torch (`import torch` alone costs ~2 s), checked through
`sys.modules` in a real subprocess; the results themselves are tested elsewhere against oracles."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_store

PROBE = (
    "import sys; from modgap.cli.main import run; code = run(sys.argv[1:]); "
    "print('torch loaded:', 'torch' in sys.modules, file=sys.stderr); sys.exit(code)"
)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("startup")
    rng = np.random.default_rng(0)
    make_store(root / "t", rng.normal(size=(300, 16)).astype(np.float32), prefix="t", modality="text")
    make_store(root / "i", rng.normal(size=(200, 16)).astype(np.float32) + 1, prefix="i", modality="image")
    (root / "pairs.jsonl").write_text("".join(json.dumps({"text_id": f"t{k}", "image_id": f"i{k}"}) + "\n"
                                              for k in range(200)))  # fmt: skip
    (root / "triples.jsonl").write_text("".join(json.dumps({"image_id": f"i{k}", "positive_id": f"t{k}",
                                                            "negative_id": f"t{299 - k}"}) + "\n"
                                                for k in range(100)))  # fmt: skip
    return root


def _torch_loaded(*argv, cwd) -> bool:
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, argv)], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return "torch loaded: True" in proc.stderr


def test_importing_the_array_packages_loads_no_torch():
    code = "import sys, modgap.store, modgap.align, modgap.gap, modgap.eval; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.parametrize(
    "argv",
    [
        ["store", "info", "t"],
        ["store", "info", "t", "--verify", "--json"],
        ["store", "export", "t", "{tmp}/npy"],
        ["align", "methods"],
        ["align", "run", "--help"],
        ["align", "fit", "--method", "gaussian-ot", "--source", "t", "--target", "i", "--out", "{tmp}/a"],
        ["align", "run", "--method", "realign", "--source", "t", "--target", "i", "--out", "{tmp}/r"],
        ["align", "run", "--method", "noise", "--source", "t", "--target", "i", "--out", "{tmp}/n"],
        ["gap", "t", "i", "--json", "gap.json"],
        ["eval", "retrieval", "--image", "i", "--text", "t", "--pairs", "pairs.jsonl", "--json", "r.json"],
        ["eval", "compositional", "--image", "i", "--text", "t", "--triples", "triples.jsonl"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_commands_that_need_no_torch_do_not_load_it(stores, argv, tmp_path):
    assert not _torch_loaded(*(a.format(tmp=tmp_path) for a in argv), cwd=stores)


def test_aligned_stores_and_fitted_aligners_are_used_without_torch(stores, tmp_path):
    """The second half of an aligner's life: applying a saved one, and the gap figures after it."""
    fit = ["align", "fit", "--method", "c3", "--source", "t", "--target", "i", "--out", tmp_path / "c3"]
    assert not _torch_loaded(*fit, cwd=stores)
    assert not _torch_loaded("store", "export", "t", tmp_path / "npy", cwd=stores)
    assert not _torch_loaded("store", "import", tmp_path / "npy", tmp_path / "back", "--format", "npy", cwd=stores)
    assert not _torch_loaded("align", "apply", "--aligner", tmp_path / "c3", "--source", "t",
                             "--out", tmp_path / "moved", cwd=stores)  # fmt: skip
    assert not _torch_loaded("gap", "t", "i", "--aligner", tmp_path / "c3", "--json", tmp_path / "g.json", cwd=stores)


def test_the_probe_sees_torch_where_a_command_needs_it(stores, tmp_path):
    """The check can fail: embedding runs a model, which is torch."""
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"id": f"c{k}", "text": "a red cube"}) + "\n"
                                                  for k in range(3)))  # fmt: skip
    assert _torch_loaded("embed", "--encoder", "builtin:tiny-clip", "--data", tmp_path / "texts.jsonl",
                         "--modality", "text", "--out-text", tmp_path / "e", cwd=stores)  # fmt: skip
