"""The gap report: figures for a text store and an image store, before and (optionally) after alignment.

Means are exact (streamed over every row); spectra come from a random sample of up to
``spectrum_rows`` rows per modality; the neighbourhood and classifier figures from a smaller sample.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Any

import numpy as np

from modgap.align.base import Aligner, normalize_rows
from modgap.align.stats import Moments
from modgap.errors import ModgapError
from modgap.gap import metrics
from modgap.progress import ProgressFactory, silent
from modgap.store.checks import BadRows, OnBad
from modgap.store.store import EmbeddingStore
from modgap.store.stream import VectorSource


def _sample(src: VectorSource, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` random rows (raw float32, bad rows dropped), in random order."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(src.rows, size=min(n, src.rows), replace=False))
    out = []
    for chunk in src.chunks(rows=(0, src.rows)):
        lo, hi = chunk.start, chunk.start + (len(chunk.keep) if chunk.keep is not None else len(chunk.x))
        sel = rows[(rows >= lo) & (rows < hi)] - lo
        if len(sel) == 0:
            continue
        if chunk.keep is not None:  # map chunk positions to positions among the kept rows
            kept_pos = np.cumsum(chunk.keep) - 1
            sel = kept_pos[sel[chunk.keep[sel]]]
        out.append(chunk.x[sel].copy())
    arr = np.concatenate(out) if out else np.empty((0, src.dim), np.float32)
    return arr[rng.permutation(len(arr))]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _stream_mean(src: VectorSource, fn: Any, progress: ProgressFactory, label: str) -> np.ndarray:
    """The mean of ``fn(rows, norms)`` over every row, summed in float64."""
    m = Moments(src.dim)
    with progress(label, src.rows) as advance:
        for c in src.chunks(rows=(0, src.rows)):
            m.update(fn(c.x, c.norms))
            advance(len(c.keep) if c.keep is not None else len(c.x))
    return m.mean()


def _figures(
    mu_t: np.ndarray,
    mu_i: np.ndarray,
    spec_t: np.ndarray,
    spec_i: np.ndarray,
    small_t: np.ndarray,
    small_i: np.ndarray,
    k: int,
    energy: float,
    top_q: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    cov_t, cov_i = np.cov(spec_t.T.astype(np.float64), bias=True), np.cov(spec_i.T.astype(np.float64), bias=True)
    vals_t, vecs_t = metrics.eigenspectrum(cov_t)
    vals_i, vecs_i = metrics.eigenspectrum(cov_i)
    q = min(top_q, len(vals_t))
    fig = {
        **metrics.centroid_figures(mu_t, mu_i),
        "text_trace": float(vals_t.sum()),
        "image_trace": float(vals_i.sum()),
        "text_effective_rank": metrics.effective_rank(vals_t),
        "image_effective_rank": metrics.effective_rank(vals_i),
        "text_power_law": metrics.power_law_exponent(vals_t),
        "image_power_law": metrics.power_law_exponent(vals_i),
        "spectral_correlation": metrics.spectral_correlation(vals_t, vals_i, top=q),
        f"subspace_overlap@{q}": metrics.subspace_overlap(vecs_t, vecs_i, q),
        **metrics.fixed_frame_decomposition(cov_t, cov_i, mu_t, mu_i, energy),
        "separability": metrics.modality_separability(small_t, small_i, seed),
        f"knn_mixing@{k}": metrics.knn_mixing(small_t, small_i, k),
        "mmd2": metrics.mmd_rbf(small_t, small_i),
    }
    return fig, {"text_eigenvalues": vals_t[:256].tolist(), "image_eigenvalues": vals_i[:256].tolist()}


def gap_report(
    text: EmbeddingStore | str | os.PathLike,
    image: EmbeddingStore | str | os.PathLike,
    *,
    aligner: Aligner | None = None,
    pairs: list[tuple[str, str]] | None = None,
    sample: int = 2000,
    spectrum_rows: int = 20000,
    max_pairs: int = 5000,
    k: int = 10,
    energy: float = 0.95,
    top_q: int = 32,
    seed: int = 0,
    on_bad: OnBad = "error",
    progress: ProgressFactory = silent,
) -> dict[str, Any]:
    """Compute the gap figures (see the module docstring). Returns a JSON-serialisable dict."""
    bad = BadRows(on_bad)
    t_src = VectorSource(text, "text", bad, numpy=True)
    i_src = VectorSource(image, "image", bad, numpy=True)
    if t_src.dim != i_src.dim:
        raise ModgapError(
            f"dimension mismatch: text {t_src.label} has D={t_src.dim}, image {i_src.label} has D={i_src.dim}"
        )
    report: dict[str, Any] = {
        "inputs": {
            "text": t_src.label,
            "image": i_src.label,
            "text_rows": t_src.rows,
            "image_rows": i_src.rows,
            "dim": t_src.dim,
            "sample": sample,
            "spectrum_rows": spectrum_rows,
            "seed": seed,
            "aligner": aligner.method if aligner else None,
        },
    }
    unit = normalize_rows
    mu_t = _stream_mean(t_src, unit, progress, "text mean")
    mu_i = _stream_mean(i_src, unit, progress, "image mean")
    raw_t, raw_i = _sample(t_src, spectrum_rows, seed), _sample(i_src, spectrum_rows, seed + 1)
    t0, i0 = _unit(raw_t), _unit(raw_i)
    report["before"], spectra = _figures(mu_t, mu_i, t0, i0, t0[:sample], i0[:sample], k, energy, top_q, seed)
    report["spectra"] = {"before": spectra}
    plots = {"before": (t0[:sample], i0[:sample])}
    if aligner is not None:
        aligner._require_fitted()
        aligner.require_dim(t_src.dim, f"{t_src.label} and {i_src.label}")
        mu_t1 = _stream_mean(t_src, aligner.transform_rows, progress, f"text after {aligner.method}")
        mu_i1 = _stream_mean(i_src, aligner.transform_target_rows, progress, f"image after {aligner.method}")
        t1 = aligner.transform(raw_t)
        i1 = aligner.transform_target(raw_i)
        report["after"], spectra = _figures(mu_t1, mu_i1, t1, i1, t1[:sample], i1[:sample], k, energy, top_q, seed)
        report["spectra"]["after"] = spectra
        report["preservation"] = {
            f"neighbourhood_overlap@{k}": metrics.neighbourhood_overlap(t0[:sample], t1[:sample], k),
            "similarity_correlation": metrics.similarity_correlation(t0[:sample], t1[:sample]),
        }
        plots["after"] = (t1[:sample], i1[:sample])
    if pairs:
        report["pairs"] = _pair_report(t_src, i_src, pairs, aligner, max_pairs, seed)
    if bad.rows:
        report["bad_rows"] = bad.rows
    report["_plots"] = plots  # arrays for the HTML report; dropped from JSON
    return report


def _pair_report(
    t_src: VectorSource,
    i_src: VectorSource,
    pairs: list[tuple[str, str]],
    aligner: Aligner | None,
    max_pairs: int,
    seed: int,
) -> dict[str, Any]:
    if t_src.store is None or i_src.store is None:
        raise ModgapError("--pairs needs stores (ids are looked up)")
    if len(pairs) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False))
        pairs = [pairs[j] for j in keep]
    t = t_src.store.get([p[0] for p in pairs]).astype(np.float32)
    v = i_src.store.get([p[1] for p in pairs]).astype(np.float32)
    out = {"before": metrics.paired_figures(t, v)}
    if aligner is not None:
        out["after"] = metrics.paired_figures(aligner.transform(t), aligner.transform_target(v))
    return out


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def report_json(report: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in report.items() if not k.startswith("_")}, indent=2)


def report_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, before, after) rows for tables."""
    rows = []
    after = report.get("after", {})
    for key, val in report["before"].items():
        rows.append((key, _fmt(val), _fmt(after.get(key)) if after else ""))
    for key, val in report.get("preservation", {}).items():
        rows.append((key, "", _fmt(val)))
    pairs = report.get("pairs", {})
    for key, val in pairs.get("before", {}).items():
        rows.append((f"pairs: {key}", _fmt(val), _fmt(pairs.get("after", {}).get(key)) if "after" in pairs else ""))
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def report_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page: the table, 2-D PCA of both modalities, eigenspectra."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = []
    stages = list(report["_plots"])
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 4.5), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        t, v = report["_plots"][stage]
        pooled = np.concatenate([t, v]).astype(np.float64)
        centre = pooled.mean(0)
        _, _, vt = np.linalg.svd(pooled - centre, full_matrices=False)
        pt, pv = (t - centre) @ vt[:2].T, (v - centre) @ vt[:2].T
        ax.scatter(pt[:, 0], pt[:, 1], s=3, alpha=0.5, label="text")
        ax.scatter(pv[:, 0], pv[:, 1], s=3, alpha=0.5, label="image")
        ax.set_title(f"PCA of both modalities ({stage})")
        ax.legend(markerscale=4)
    images.append(_png(fig))
    plt.close(fig)
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 4), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        for name, vals in report["spectra"][stage].items():
            vals = np.asarray(vals)
            vals = vals[vals > 0]
            ax.loglog(np.arange(1, len(vals) + 1), vals, label=name.replace("_eigenvalues", ""))
        ax.set_title(f"covariance eigenspectrum ({stage})")
        ax.set_xlabel("rank")
        ax.legend()
    images.append(_png(fig))
    plt.close(fig)
    has_after = "after" in report
    head = "<tr><th>figure</th><th>before</th>" + ("<th>after</th>" if has_after else "") + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{b}</td>" + (f"<td>{a}</td>" if has_after else "") + "</tr>"
        for k, b, a in report_rows(report)
    )
    inputs = html.escape(json.dumps(report["inputs"], indent=1))
    imgs = "".join(f'<p><img src="data:image/png;base64,{b}"></p>' for b in images)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>modgap gap report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}</style>"
        f"</head><body><h1>Modality gap report</h1><pre>{inputs}</pre><table>{head}{body}</table>{imgs}</body></html>"
    )
