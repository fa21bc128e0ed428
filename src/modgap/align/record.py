"""The aligned-store record: what ``modgap align apply|run`` writes into the store it makes, and what training
and inference read back.

An aligned store carries the aligner that made it (``ALIGNER_SUBDIR``) and names it in
``manifest.extra["aligner"]``, so a model trained on the store uses its rows as they are and carries that
aligner; inference refuses an aligned store whose aligner is not the model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modgap.align.base import ARTIFACT_CONFIG, Aligner, load_aligner
from modgap.errors import ModgapError
from modgap.store.store import EmbeddingStore

ALIGNER_SUBDIR = "aligner"  # an aligned store carries the aligner that made it, so training can use it
RECORD_KEY = "aligner"  # its entry in manifest.extra


def aligner_record(aligner: Aligner, input_store: EmbeddingStore, aligner_path: str | None) -> dict[str, Any]:
    """The ``manifest.extra["aligner"]`` entry of a store written by ``aligner`` from ``input_store``."""
    return {
        "method": aligner.method,
        "params": aligner.params(),
        "path": aligner_path,
        "fitted_on": aligner.provenance,
        "input_store": str(input_store.path),
        "dir": ALIGNER_SUBDIR,
    }


def is_aligned(store: EmbeddingStore) -> bool:
    """Whether the store's rows were written by an aligner (``modgap align apply``/``run``)."""
    return bool(store.manifest.extra.get(RECORD_KEY))


def store_aligner(store: EmbeddingStore) -> Aligner | None:
    """The aligner recorded in an aligned store; None for a raw store."""
    if not is_aligned(store):
        return None
    record = store.manifest.extra[RECORD_KEY]
    candidates = [store.path / record["dir"]] if record.get("dir") else []
    if record.get("path"):
        candidates.append(Path(record["path"]))
    for path in candidates:
        if (path / ARTIFACT_CONFIG).is_file():
            return load_aligner(path)
    raise ModgapError(
        f"{store.path}: the store was written by the {record.get('method')!r} aligner, but that aligner is "
        "not saved with it (made by an older modgap); rerun 'modgap align apply' to rewrite the store"
    )


def same_aligner(a: Aligner, b: Aligner) -> bool:
    """Same method, parameters and fitted arrays."""
    if a.method != b.method or a.params() != b.params() or set(a.state) != set(b.state):
        return False
    return all(np.array_equal(a.state[k], b.state[k]) for k in a.state)
