"""`modgap align run --method realign` on a ReVision pickle directory reproduces the reference pipeline.

The reference (ReVision's ReAlign script) loads every pickle, normalises in float64, and makes four
passes: means (kept as float32), traces, mu_hat, apply; it writes float32 ``<stem>_trace.pkl`` files.
``benchmarks/reference_realign.py`` follows those steps, independently of modgap.
"""

import pickle
import sys

import numpy as np

from conftest import REPO, gapped_pair, run_cli, write_revision_pkls

sys.path.insert(0, str(REPO / "benchmarks"))
from reference_realign import reference_realign


def test_align_run_matches_reference_realign_on_revision_pickles(tmp_path, rng):
    t, i = gapped_pair(rng, 2500, 1800, 64)
    t *= rng.uniform(0.5, 3.0, size=(len(t), 1)).astype(np.float32)  # raw, unnormalised encoder outputs
    write_revision_pkls(tmp_path / "text", t, prefix="text", per_file=1000, key="caption")
    write_revision_pkls(tmp_path / "image", i, prefix="image", per_file=700, key="image_path")
    reference_realign(tmp_path / "text", tmp_path / "image", tmp_path / "ref")

    run_cli("store", "import", "--format", "revision-pkl", tmp_path / "text", tmp_path / "st_text")
    run_cli("store", "import", "--format", "revision-pkl", tmp_path / "image", tmp_path / "st_image")
    run_cli(
        "align",
        "run",
        "--method",
        "realign",
        "--source",
        tmp_path / "st_text",
        "--target",
        tmp_path / "st_image",
        "--out",
        tmp_path / "st_aligned",
        "--chunk-rows",
        "512",
    )
    run_cli("store", "export", "--format", "revision-pkl", tmp_path / "st_aligned", tmp_path / "ours")

    ref_files = sorted((tmp_path / "ref").glob("*.pkl"))
    assert len(ref_files) == 3
    for ref_file in ref_files:
        with open(ref_file, "rb") as f:
            ref = pickle.load(f)
        with open(tmp_path / "ours" / ref_file.name.replace("_trace", ""), "rb") as f:
            ours = pickle.load(f)
        assert [r["id"] for r in ours] == [r["id"] for r in ref]
        assert [r["caption"] for r in ours] == [r["caption"] for r in ref]
        diff = np.abs(np.stack([r["embed"] for r in ours]) - np.stack([r["embed"] for r in ref]))
        assert diff.max() < 1e-5, diff.max()
