"""Choosing an aligner's setting without pairs and without test data."""

from __future__ import annotations

import numpy as np

SHRINKAGES = (1e-3, 1e-2, 0.05, 0.1, 0.3, 1.0)  # Gaussian OT's covariance shrinkage candidates


def select_shrinkage(
    text_store: str, image_store: str, *, seed: int = 0, grid: tuple[float, ...] = SHRINKAGES, sample: int = 1000
) -> tuple[float, dict[float, float]]:
    """Gaussian OT's covariance shrinkage chosen without pairs and without test data: fit on 80 % of each
    unpaired pool, move the other 20 % of the texts, and keep the shrinkage whose moved texts are closest to
    the held-out 20 % of the images (MMD², RBF kernel with one bandwidth for every candidate)."""
    from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel

    from modgap.align.base import make_aligner
    from modgap.store.store import EmbeddingStore

    rng = np.random.default_rng(seed)
    text, image = (
        EmbeddingStore.open(text_store).to_numpy(np.float32),
        EmbeddingStore.open(image_store).to_numpy(np.float32),
    )
    text, image = text[rng.permutation(len(text))], image[rng.permutation(len(image))]
    (fit_t, val_t), (fit_i, val_i) = ((x[: int(0.8 * len(x))], x[int(0.8 * len(x)) :]) for x in (text, image))
    val_t, val_i = val_t[:sample], val_i[:sample]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    target = unit(val_i).astype(np.float64)
    d = euclidean_distances(target, squared=True)
    gamma = 1.0 / max(float(np.median(d[np.triu_indices_from(d, k=1)])), 1e-12)
    k_target = rbf_kernel(target, target, gamma=gamma).mean()
    scores = {}
    for shrinkage in grid:
        aligner = make_aligner("gaussian-ot", shrinkage=shrinkage).fit(fit_t, fit_i)
        moved = unit(aligner.transform(val_t).astype(np.float64))
        scores[shrinkage] = float(rbf_kernel(moved, moved, gamma=gamma).mean() + k_target
                                  - 2 * rbf_kernel(moved, target, gamma=gamma).mean())  # fmt: skip
    return min(scores, key=scores.get), scores
