"""`modgap align run --method realign` on a ReVision pickle directory reproduces the reference pipeline.

The reference (ReVision's ReAlign script) loads every pickle, normalises in float64, and makes four
passes: means (kept as float32), traces, mu_hat, apply; it writes float32 ``<stem>_trace.pkl`` files.
``reference_realign`` below follows those steps on the same files, independently of modgap.
"""

import pickle

import numpy as np
from conftest import gapped_pair, run_cli, write_revision_pkls


def _l2(x):
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n < 1e-10, 1.0, n)


def _load_dir(d):
    files = sorted(d.glob("*.pkl"))
    out = []
    for f in files:
        with open(f, "rb") as fh:
            out.append((f, pickle.load(fh)))
    return out


def reference_realign(text_dir, image_dir, out_dir):
    texts, images = _load_dir(text_dir), _load_dir(image_dir)

    def stack(recs):
        return np.vstack([np.asarray(r["embed"]) for r in recs]).astype(np.float64)

    t_all = _l2(np.vstack([stack(r) for _, r in texts]))
    i_all = _l2(np.vstack([stack(r) for _, r in images]))
    mu_t = t_all.mean(0).astype(np.float32).astype(np.float64)
    mu_i = i_all.mean(0).astype(np.float32).astype(np.float64)
    trace_t = ((t_all - mu_t) ** 2).sum() / len(t_all)
    trace_i = ((i_all - mu_i) ** 2).sum() / len(i_all)
    scale = np.sqrt(trace_i / (trace_t + 1e-10))
    mu_hat = _l2((t_all - mu_t) * scale + mu_i).mean(0)
    out_dir.mkdir()
    for f, recs in texts:
        x_hat = _l2((_l2(stack(recs)) - mu_t) * scale + mu_i)
        final = _l2(x_hat - mu_hat + mu_i).astype(np.float32)
        res = [dict(r, embed=final[j]) for j, r in enumerate(recs)]
        with open(out_dir / f"{f.stem}_trace.pkl", "wb") as fh:
            pickle.dump(res, fh)


def test_align_run_matches_reference_realign_on_revision_pickles(tmp_path, rng):
    t, i = gapped_pair(rng, 2500, 1800, 64)
    t *= rng.uniform(0.5, 3.0, size=(len(t), 1)).astype(np.float32)  # raw, unnormalised encoder outputs
    write_revision_pkls(tmp_path / "text", t, prefix="text", per_file=1000, key="caption")
    write_revision_pkls(tmp_path / "image", i, prefix="image", per_file=700, key="image_path")
    reference_realign(tmp_path / "text", tmp_path / "image", tmp_path / "ref")

    run_cli("store", "import", "--format", "revision-pkl", tmp_path / "text", tmp_path / "st_text")
    run_cli("store", "import", "--format", "revision-pkl", tmp_path / "image", tmp_path / "st_image")
    run_cli("align", "run", "--method", "realign", "--source", tmp_path / "st_text", "--target", tmp_path / "st_image",
            "--out", tmp_path / "st_aligned", "--chunk-rows", "512")
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
