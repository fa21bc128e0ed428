"""Modality-gap figures computed from arrays (samples) and streamed moments.

Conventions: rows are unit vectors unless stated; "text"/"source" is the modality being moved,
"image"/"target" the reference. Functions return plain floats or small dicts so they serialise to JSON.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import top_k_accuracy_score
from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors


def centroid_figures(mu_t: np.ndarray, mu_i: np.ndarray) -> dict[str, float]:
    gap = mu_i - mu_t
    denom = np.linalg.norm(mu_t) * np.linalg.norm(mu_i)
    return {
        "centroid_distance": float(np.linalg.norm(gap)),
        "centroid_cosine": float(mu_t @ mu_i / denom) if denom > 0 else float("nan"),
    }


def eigenspectrum(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors (columns) of a covariance."""
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    return np.clip(vals[order], 0, None), vecs[:, order]


def effective_rank(eigvals: np.ndarray) -> float:
    """exp(entropy) of the normalised eigenvalue distribution (Roy & Vetterli, 2007)."""
    p = eigvals[eigvals > 0] / eigvals.sum()
    return float(math.exp(-(p * np.log(p)).sum()))


def power_law_exponent(eigvals: np.ndarray, lo: int = 1, hi: int | None = None) -> float:
    """alpha in lambda_k ~ k^-alpha, least squares on log-log over ranks [lo, hi) of the positive spectrum."""
    pos = eigvals[eigvals > eigvals[0] * 1e-12] if eigvals[0] > 0 else eigvals[:0]
    hi = min(hi or len(pos), len(pos))
    if hi - lo < 3:
        return float("nan")
    k = np.arange(lo, hi) + 1
    slope = np.polyfit(np.log(k), np.log(pos[lo:hi]), 1)[0]
    return float(-slope)


def spectral_correlation(vals_a: np.ndarray, vals_b: np.ndarray, top: int) -> float:
    """Pearson correlation of log eigenvalues over the top ranks both spectra have positive."""
    n = min(top, int((vals_a > 0).sum()), int((vals_b > 0).sum()))
    if n < 3:
        return float("nan")
    return float(np.corrcoef(np.log(vals_a[:n]), np.log(vals_b[:n]))[0, 1])


def subspace_overlap(vecs_a: np.ndarray, vecs_b: np.ndarray, q: int) -> float:
    """||U_a^T U_b||_F^2 / q for the top-q eigenvectors: 1 = same subspace, ~q/D = random."""
    q = min(q, vecs_a.shape[1])
    m = vecs_a[:, :q].T @ vecs_b[:, :q]
    return float((m**2).sum() / q)


def fixed_frame_decomposition(
    cov_t: np.ndarray, cov_i: np.ndarray, mu_t: np.ndarray, mu_i: np.ndarray, energy: float
) -> dict[str, float]:
    """Split the mean gap m = mu_i - mu_t into the part inside the frame U and the part orthogonal to it.

    U = top-r eigenvectors of C_t + C_i holding ``energy`` of its trace: the directions where the data
    varies. The in-frame bias P_U m moves along those directions; the orthogonal bias P_V m is a
    constant offset in directions where neither modality varies.
    """
    vals, vecs = eigenspectrum(cov_t + cov_i)
    cum = np.cumsum(vals) / max(vals.sum(), 1e-300)
    r = int(np.searchsorted(cum, energy) + 1)
    u = vecs[:, :r]
    m = mu_i - mu_t
    in_frame = u @ (u.T @ m)
    orth = m - in_frame
    total = float(m @ m) or 1.0
    return {
        "frame_rank": r,
        "frame_energy": float(cum[r - 1]),
        "bias_in_frame": float(np.linalg.norm(in_frame)),
        "bias_orthogonal": float(np.linalg.norm(orth)),
        "orthogonal_share": float(orth @ orth / total),
    }


def modality_separability(text: np.ndarray, image: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy of a logistic-regression text-vs-image classifier (0.5 = indistinguishable)."""
    n = min(len(text), len(image))
    x = np.concatenate([text[:n], image[:n]]).astype(np.float64)
    y = np.r_[np.zeros(n), np.ones(n)]
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(xtr, ytr)
    return float(clf.score(xte, yte))


def knn_mixing(text: np.ndarray, image: np.ndarray, k: int = 10) -> float:
    """Mean share of images among each text's k nearest neighbours in the pooled, balanced set.

    0 = the modalities never meet; 0.5 = perfectly mixed.
    """
    n = min(len(text), len(image))
    pooled = np.concatenate([text[:n], image[:n]])
    nn = NearestNeighbors(n_neighbors=k + 1, metric="euclidean").fit(pooled)
    idx = nn.kneighbors(text[:n], return_distance=False)[:, 1:]  # drop the text itself
    return float((idx >= n).mean())


def mmd_rbf(a: np.ndarray, b: np.ndarray) -> float:
    """Biased MMD^2 with an RBF kernel, bandwidth from the median pairwise distance of the pooled sample."""
    pooled = np.concatenate([a, b])
    d = euclidean_distances(pooled, squared=True)
    med = float(np.median(d[np.triu_indices_from(d, k=1)]))
    gamma = 1.0 / max(med, 1e-12)
    kaa = rbf_kernel(a, a, gamma=gamma).mean()
    kbb = rbf_kernel(b, b, gamma=gamma).mean()
    kab = rbf_kernel(a, b, gamma=gamma).mean()
    return float(kaa + kbb - 2 * kab)


def neighbourhood_overlap(before: np.ndarray, after: np.ndarray, k: int = 10) -> float:
    """Mean |kNN_before ∩ kNN_after| / k over rows: how much alignment keeps each text's neighbours."""

    def neighbours(x: np.ndarray) -> np.ndarray:
        return NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]

    nb, na = neighbours(before), neighbours(after)
    return float(np.mean([len(set(p) & set(q)) / k for p, q in zip(nb, na, strict=True)]))


def similarity_correlation(before: np.ndarray, after: np.ndarray) -> float:
    """Pearson correlation of all pairwise cosine similarities before vs after."""

    def cos(x: np.ndarray) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return (x @ x.T)[np.triu_indices(len(x), k=1)]

    return float(np.corrcoef(cos(before), cos(after))[0, 1])


def paired_figures(text: np.ndarray, image: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Mean paired cosine and Recall@k both ways; row j of ``text`` is paired with row j of ``image``."""
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    v = image / np.linalg.norm(image, axis=1, keepdims=True)
    sims = t @ v.T
    n = len(sims)
    labels = np.arange(n)
    out = {"pairs": n, "paired_cosine": float(np.mean(np.einsum("ij,ij->i", t, v)))}
    for k in ks:
        if k < n:
            out[f"t2i_R@{k}"] = float(top_k_accuracy_score(labels, sims, k=k, labels=labels))
            out[f"i2t_R@{k}"] = float(top_k_accuracy_score(labels, sims.T, k=k, labels=labels))
    return out
