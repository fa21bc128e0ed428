"""Streaming fit and apply of aligners over stores or in-memory arrays, on one or many processes.

Under ``torchrun`` (or any initialised ``torch.distributed`` group) each rank reads a contiguous
slice of the rows, and the sufficient statistics are summed with one all-reduce per pass, so the
fit equals the single-process fit up to float64 rounding.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from modgap import __version__
from modgap.align.base import SOURCE, TARGET, Aligner, unusable_rows
from modgap.align.methods import GaussianNoise, MeanShift
from modgap.align.stats import Moments
from modgap.errors import ModgapError
from modgap.progress import ProgressFactory, silent
from modgap.store.checks import BadRows, OnBad
from modgap.store.store import EmbeddingStore, StoreWriter, as_cpu_tensor, atomic_output_dir

CHUNK_BYTES = 4 * 2**20  # float32 work chunk: small enough to stay in cache between the ops on it


def default_chunk_rows(dim: int) -> int:
    return max(64, min(8192, CHUNK_BYTES // (4 * dim)))


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class Rows:
    """A chunk ready for an aligner: float32 rows (a reusable buffer), their norms, global start."""

    x: torch.Tensor
    norms: torch.Tensor
    start: int
    keep: np.ndarray | None  # rows kept from the chunk when bad rows were skipped
    batch: pa.RecordBatch | None  # ids and metadata of the kept rows (stores only)


class VectorSource:
    """Rows of a store or of an array, streamed as float32 chunks with bad rows checked.

    Arrays are treated like a store with ids "0", "1", ...
    """

    def __init__(
        self,
        data: Any,
        name: str,
        bad: BadRows,
        chunk_rows: int | None = None,
        device: torch.device | str = "cpu",
    ):
        self.name = name
        self.bad = bad
        self.device = torch.device(device)
        if isinstance(data, (str, os.PathLike)):
            data = EmbeddingStore.open(data)
        if isinstance(data, EmbeddingStore):
            self.store: EmbeddingStore | None = data
            self.array = None
            self.dim, self.rows = data.dim, len(data)
            self.label = str(data.path)
        else:
            self.store = None
            self.array = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
            if self.array.ndim != 2:
                raise ModgapError(f"{name}: expected a 2-D array of vectors, got shape {tuple(self.array.shape)}")
            self.dim, self.rows = self.array.shape[1], self.array.shape[0]
            self.label = f"<{name} array>"
        if self.rows == 0:
            raise ModgapError(f"{self.label}: the {name} is empty")
        self.chunk_rows = chunk_rows or default_chunk_rows(self.dim)

    def my_rows(self) -> tuple[int, int]:
        rank, world = rank_and_world()
        return self.rows * rank // world, self.rows * (rank + 1) // world

    def _raw_chunks(
        self, rows: tuple[int, int], columns: tuple[str, ...] | None
    ) -> Iterator[tuple[str, Any, Any, int]]:
        if self.store is not None:
            for c in self.store.iter_chunks(self.chunk_rows, rows=rows, exact=False, columns=columns):
                yield f"{self.label}/{self.store.manifest.shards[c.shard].file}", c.embeddings, c.batch, c.start
        else:
            for s in range(rows[0], rows[1], self.chunk_rows):
                e = min(s + self.chunk_rows, rows[1])
                yield self.label, self.array[s:e], None, s

    def chunks(self, rows: tuple[int, int] | None = None, with_metadata: bool = False) -> Iterator[Rows]:
        """This rank's rows (or ``rows``), as float32 tensors on the device with their norms.

        ``with_metadata`` carries the store's metadata columns in ``Rows.batch`` (ids always are).
        """
        buf = torch.empty(self.chunk_rows, self.dim, dtype=torch.float32, device=self.device)
        for where, emb, batch, start in self._raw_chunks(rows or self.my_rows(), None if with_metadata else ()):
            n = len(emb)
            src = as_cpu_tensor(emb)
            x = buf[:n]
            x.copy_(src)
            norms = torch.linalg.vector_norm(x, dim=1)
            mask = unusable_rows(norms)
            keep = None
            if bool(mask.any()):
                mask_np = mask.cpu().numpy()
                ids = batch.column("id").to_pylist() if batch is not None else [str(start + i) for i in range(n)]
                self.bad.handle(where, ids, src.cpu().numpy(), mask_np)
                keep = ~mask_np
                x, norms = x[~mask], norms[~mask]
                batch = batch.filter(keep) if batch is not None else None
            yield Rows(x, norms, start, keep, batch)


def _all_reduce(stats: dict[str, Moments]) -> None:
    if rank_and_world()[1] > 1:
        for role in sorted(stats):
            for t in stats[role].tensors():
                dist.all_reduce(t, op=dist.ReduceOp.SUM)


def fit(
    aligner: Aligner,
    source: Any,
    target: Any,
    *,
    on_bad: OnBad = "error",
    bad: BadRows | None = None,
    chunk_rows: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFactory = silent,
) -> Aligner:
    """Fit ``aligner`` on ``source`` (to be moved) and ``target`` (the distribution to reach).

    ``source`` and ``target`` are stores, store paths, arrays or tensors of shape (n, D).
    """
    bad = bad or BadRows(on_bad)
    src = VectorSource(source, SOURCE, bad, chunk_rows, device)
    tgt = VectorSource(target, TARGET, bad, chunk_rows, device)
    if src.dim != tgt.dim:
        raise ModgapError(f"dimension mismatch: source {src.label} has D={src.dim}, target {tgt.label} has D={tgt.dim}")
    for p in range(aligner.passes):
        stats = aligner.new_stats(p, src.dim, device)
        for role, s in ((SOURCE, src), (TARGET, tgt)):
            if role not in stats:
                continue
            lo, hi = s.my_rows()
            with progress(f"{aligner.method} pass {p + 1}/{aligner.passes}: {role}", hi - lo) as advance:
                for rows in s.chunks():
                    aligner.accumulate(p, role, rows.x, rows.norms, stats)
                    advance(len(rows.keep) if rows.keep is not None else len(rows.x))
        _all_reduce(stats)
        aligner.end_pass(p, stats)
    if rank_and_world()[1] > 1:  # every rank reports every skipped row
        gathered: list[Any] = [None] * rank_and_world()[1]
        dist.all_gather_object(gathered, bad.rows)
        for rows in gathered:
            bad.add(rows)
    aligner.provenance = {
        "source": _describe(src),
        "target": _describe(tgt),
        "modgap_version": __version__,
        "command": None,  # the CLI records its command line here
    }
    if aligner.passes == 0:
        aligner.counts = {}
    return aligner


def _describe(s: VectorSource) -> dict[str, Any]:
    d: dict[str, Any] = {"path": s.label, "rows": s.rows, "dim": s.dim}
    if s.store is not None:
        d["encoder"] = s.store.manifest.encoder
        d["modality"] = s.store.manifest.modality
    return d


def output_is_normalized(aligner: Aligner) -> bool:
    return not isinstance(aligner, MeanShift) and not (isinstance(aligner, GaussianNoise) and not aligner.renormalize)


def apply_to_store(
    aligner: Aligner,
    store: EmbeddingStore | str | os.PathLike,
    out: str | os.PathLike,
    *,
    on_bad: OnBad = "error",
    bad: BadRows | None = None,
    dtype: str | None = None,
    chunk_rows: int | None = None,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
    created_by: str | None = None,
    aligner_path: str | None = None,
    progress: ProgressFactory = silent,
) -> EmbeddingStore:
    """Write ``aligner(store)`` as a new store at ``out``: same ids, order and metadata."""
    bad = bad or BadRows(on_bad)
    if not isinstance(store, EmbeddingStore):
        store = EmbeddingStore.open(store)
    aligner._require_fitted()
    fitted_dim = next((int(v.shape[-1]) for v in aligner.state.values() if v.ndim >= 1), store.dim)
    if fitted_dim != store.dim:
        raise ModgapError(f"dimension mismatch: aligner was fitted on D={fitted_dim}, {store.path} has D={store.dim}")
    src = VectorSource(store, SOURCE, bad, chunk_rows, device)
    m = store.manifest
    dtype = dtype or m.dtype
    extra = dict(m.extra)
    extra["aligner"] = {
        "method": aligner.method,
        "params": aligner.params(),
        "path": aligner_path,
        "fitted_on": aligner.provenance,
        "input_store": str(store.path),
    }
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        with (
            StoreWriter(
                tmp,
                dim=store.dim,
                dtype=dtype,
                normalized=output_is_normalized(aligner),
                modality=m.modality,
                encoder=m.encoder,
                created_by=created_by,
                metadata_columns=m.metadata_columns,
                extra=extra,
                check_duplicates=False,
            ) as w,
            progress(f"apply {aligner.method}", len(store)) as advance,
        ):
            for rows in src.chunks(rows=(0, len(store)), with_metadata=True):
                y = aligner.transform_rows(rows.x, rows.norms, rows.start)
                meta = {c: rows.batch.column(c) for c in m.metadata_columns}
                w.write(rows.batch.column("id"), y, meta)
                advance(len(rows.keep) if rows.keep is not None else len(y))
            if w.count == 0:
                raise ModgapError(f"{store.path}: no usable vectors to align")
        if bad.rows:
            bad.write(Path(tmp) / "bad_rows.jsonl")
    return EmbeddingStore.open(out)
