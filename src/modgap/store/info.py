"""A store's summary: its manifest plus statistics of a sample of rows (norms, bad rows, mean direction)."""

from __future__ import annotations

from typing import Any

import numpy as np

from modgap.store.checks import bad_row_mask, row_norms
from modgap.store.store import EmbeddingStore


def sample_stats(store: EmbeddingStore, sample: int = 10000) -> dict[str, Any]:
    """Norm range and mean, bad rows, and the length of the mean unit vector (1: all rows point one way,
    ~0: spread out) over the first ``sample`` rows."""
    norms, vecs = [], []
    for chunk in store.iter_chunks(chunk_rows=max(1, min(sample, 65536)), exact=True, columns=()):
        norms.append(row_norms(chunk.embeddings))
        vecs.append(np.asarray(chunk.embeddings, dtype=np.float32))
        break
    n = np.concatenate(norms) if norms else np.zeros(0)
    usable = ~bad_row_mask(n)
    finite = n[usable]
    unit_mean = (np.concatenate(vecs)[usable] / finite[:, None]).mean(0) if len(finite) else None
    return {
        "rows_sampled": len(n),
        "norm_min": float(finite.min()) if len(finite) else None,
        "norm_mean": float(finite.mean()) if len(finite) else None,
        "norm_max": float(finite.max()) if len(finite) else None,
        "bad_rows_in_sample": int(len(n) - len(finite)),
        "unit_mean_length": float(np.linalg.norm(unit_mean)) if unit_mean is not None else None,
    }


def store_info(store: EmbeddingStore, sample: int = 10000, verified: bool = False) -> dict[str, Any]:
    """The manifest, the path, whether checksums were verified, and :func:`sample_stats`."""
    return {
        **store.manifest.to_dict(),
        "path": str(store.path),
        "verified": verified,
        "stats": sample_stats(store, sample),
    }
