"""Streaming a store (or an in-memory array) as float32 chunks, with the bad-row rule applied.

:class:`VectorSource` is how every consumer that needs all rows reads them: aligner fitting and
application, gap statistics, mining and search. Under ``torch.distributed`` each rank reads the
contiguous block :func:`~modgap.distributed.rank_slice` gives it, unless asked for an explicit range.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from modgap.distributed import rank_slice
from modgap.errors import ModgapError
from modgap.lazy import is_tensor, lazy_module
from modgap.store.checks import BadRows, bad_row_mask, row_norms, unusable_rows
from modgap.store.store import EmbeddingStore, as_cpu_tensor

torch = lazy_module("torch")

CHUNK_BYTES = 4 * 2**20  # float32 work chunk: small enough to stay in cache between the ops on it


def default_chunk_rows(dim: int) -> int:
    return max(64, min(8192, CHUNK_BYTES // (4 * dim)))


@dataclass
class Rows:
    """A chunk ready for an aligner: float32 rows (a reusable buffer), their norms, global start; tensors, or
    NumPy arrays from a source made with ``numpy=True``."""

    x: Any
    norms: Any
    start: int
    keep: np.ndarray | None  # rows kept from the chunk when bad rows were skipped
    batch: pa.RecordBatch | None  # ids and metadata of the kept rows (stores only)


class VectorSource:
    """Rows of a store or of an array, streamed as float32 chunks with bad rows checked.

    Arrays are treated like a store with ids "0", "1", ... ``numpy=True`` (CPU only) streams NumPy arrays and
    never loads torch (the consumers whose arithmetic is NumPy: gap figures, retrieval, compositional).
    """

    def __init__(
        self,
        data: Any,
        name: str,
        bad: BadRows,
        chunk_rows: int | None = None,
        device: torch.device | str = "cpu",
        *,
        numpy: bool = False,
    ):
        self.name = name
        self.bad = bad
        self.numpy = numpy
        if numpy and str(device) != "cpu":
            raise ModgapError(f"{name}: NumPy streaming is for the CPU, not {device}")
        self.device = device if numpy else torch.device(device)
        if isinstance(data, (str, os.PathLike)):
            data = EmbeddingStore.open(data)
        if isinstance(data, EmbeddingStore):
            self.store: EmbeddingStore | None = data
            self.array = None
            self.dim, self.rows = data.dim, len(data)
            self.label = str(data.path)
        else:
            self.store = None
            if numpy:
                self.array = data.detach().cpu().numpy() if is_tensor(data) else np.asarray(data)
            else:
                self.array = torch.as_tensor(np.asarray(data) if not is_tensor(data) else data)
            if self.array.ndim != 2:
                raise ModgapError(f"{name}: expected a 2-D array of vectors, got shape {tuple(self.array.shape)}")
            self.dim, self.rows = self.array.shape[1], self.array.shape[0]
            self.label = f"<{name} array>"
        if self.rows == 0:
            raise ModgapError(f"{self.label}: the {name} is empty")
        self.chunk_rows = chunk_rows or default_chunk_rows(self.dim)

    def my_rows(self) -> tuple[int, int]:
        """This rank's contiguous block of rows (all of them in a single process)."""
        return rank_slice(self.rows)

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
        """This rank's rows (or ``rows``), as float32 tensors on the device with their norms (NumPy arrays for a
        ``numpy=True`` source); bad rows are handled by one rule in both forms.

        ``with_metadata`` carries the store's metadata columns in ``Rows.batch`` (ids always are).
        """
        if self.numpy:
            buf = np.empty((self.chunk_rows, self.dim), dtype=np.float32)
        else:
            buf = torch.empty(self.chunk_rows, self.dim, dtype=torch.float32, device=self.device)
        for where, emb, batch, start in self._raw_chunks(rows or self.my_rows(), None if with_metadata else ()):
            n = len(emb)
            x = buf[:n]
            if self.numpy:
                x[...] = emb
                norms = row_norms(x)
                mask = bad_row_mask(norms)
            else:
                x.copy_(as_cpu_tensor(emb))
                norms = torch.linalg.vector_norm(x, dim=1)
                mask = unusable_rows(norms).cpu().numpy()
            keep = None
            if mask.any():
                ids = batch.column("id").to_pylist() if batch is not None else [str(start + i) for i in range(n)]
                self.bad.handle(where, ids, emb.cpu().numpy() if is_tensor(emb) else np.asarray(emb), mask)
                keep = ~mask
                kept = keep if self.numpy else torch.from_numpy(keep).to(x.device)
                x, norms = x[kept], norms[kept]
                batch = batch.filter(keep) if batch is not None else None
            yield Rows(x, norms, start, keep, batch)
