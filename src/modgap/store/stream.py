"""Streaming a store (or an in-memory array) as float32 chunks, with the bad-row rule applied.

:class:`VectorSource` is how every consumer that needs all rows reads them: aligner fitting and
application, gap statistics, mining and search. Under ``torch.distributed`` each rank reads the
contiguous block :func:`~modgap.distributed.rank_slice` gives it, unless asked for an explicit range.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from modgap import arrays
from modgap.arrays import rows_and_norms
from modgap.distributed import rank_slice
from modgap.errors import ModgapError
from modgap.lazy import is_tensor, lazy_module
from modgap.store.checks import BadRows, bad_row_mask, unusable_rows
from modgap.store.store import EmbeddingStore, as_cpu_tensor
from modgap.store.sums import UnitSums, stored_unit_sums

torch = lazy_module("torch")

# float32 work chunks: for NumPy small enough to stay in a core's cache (1 MiB here) between the ~10 passes
# it makes over them; with modgap's compiled kernels (one pass) or torch (fused kernels, a device) larger, so
# each call has work: per-chunk costs (thread hand-offs, Python) then stop counting. Measured, 1M x 1280
# float16, ReAlign's second fit pass: 1 MiB chunks 0.7-1.2 s, 2-16 MiB 0.35-0.55 s with the kernels; without
# them 1 MiB 1.9-2.8 s, 4 MiB 2.2-3.0 s (and apply 7-9 s against 12-13 s).
CHUNK_BYTES = 2**20
KERNEL_CHUNK_BYTES = 4 * 2**20
DEVICE_CHUNK_BYTES = 4 * 2**20
MAX_WORKERS = 4  # threads of map_chunks (1.7x on 2 cores); more would contend for the store's pages


def default_chunk_rows(dim: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    return max(64, min(8192, chunk_bytes // (4 * dim)))


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
        chunk_bytes = DEVICE_CHUNK_BYTES
        if numpy:
            chunk_bytes = KERNEL_CHUNK_BYTES if arrays.KERNELS is not None else CHUNK_BYTES
        self.chunk_rows = chunk_rows or default_chunk_rows(self.dim, chunk_bytes)

    def my_rows(self) -> tuple[int, int]:
        """This rank's contiguous block of rows (all of them in a single process)."""
        return rank_slice(self.rows)

    def stored_unit_sums(self) -> UnitSums | None:
        """The store's kept sums of its unit vectors, when they stand for reading every row of this source:
        a whole store (one process) whose every row is usable (else the rows must be read to be reported)."""
        if self.store is None or self.my_rows() != (0, self.rows):
            return None
        sums = stored_unit_sums(self.store.manifest)
        return sums if sums is not None and sums.bad == 0 and sums.rows == self.rows else None

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

    def _buffer(self) -> Any:
        if self.numpy:
            return np.empty((self.chunk_rows, self.dim), dtype=np.float32)
        return torch.empty(self.chunk_rows, self.dim, dtype=torch.float32, device=self.device)

    def _load(self, raw: tuple[str, Any, Any, int], buf: Any) -> tuple[Rows, Any]:
        """A raw chunk as float32 rows in ``buf`` with their norms, bad rows left out; and what is needed to
        report those rows (None when there are none)."""
        where, emb, batch, start = raw
        n = len(emb)
        x = buf[:n]
        if self.numpy:
            norms = rows_and_norms(emb, x)
            mask = bad_row_mask(norms)
        else:
            x.copy_(as_cpu_tensor(emb))
            norms = torch.linalg.vector_norm(x, dim=1)
            mask = unusable_rows(norms).cpu().numpy()
        if not mask.any():
            return Rows(x, norms, start, None, batch), None
        ids = batch.column("id").to_pylist() if batch is not None else [str(start + i) for i in range(n)]
        report = (where, ids, emb.cpu().numpy() if is_tensor(emb) else np.array(emb), mask)
        keep = ~mask
        kept = keep if self.numpy else torch.from_numpy(keep).to(x.device)
        batch = batch.filter(keep) if batch is not None else None
        return Rows(x[kept], norms[kept], start, keep, batch), report

    def chunks(self, rows: tuple[int, int] | None = None, with_metadata: bool = False) -> Iterator[Rows]:
        """This rank's rows (or ``rows``), as float32 tensors on the device with their norms (NumPy arrays for a
        ``numpy=True`` source); bad rows are handled by one rule in both forms. Each chunk's ``x`` is a buffer
        the next chunk reuses.

        ``with_metadata`` carries the store's metadata columns in ``Rows.batch`` (ids always are).
        """
        buf = self._buffer()
        for raw in self._raw_chunks(rows or self.my_rows(), None if with_metadata else ()):
            chunk, report = self._load(raw, buf)
            if report is not None:
                self.bad.handle(*report)
            yield chunk

    def map_chunks(
        self, fn: Callable[[Rows], Any], rows: tuple[int, int] | None = None, with_metadata: bool = False
    ) -> Iterator[tuple[Rows, Any]]:
        """``(chunk, fn(chunk))`` for every chunk of :meth:`chunks`, in order.

        A NumPy source runs ``fn`` on a few threads at once (NumPy's kernels release the GIL; on this 2-core CPU
        that is most of the arithmetic); ``fn`` must not keep ``chunk.x`` (a per-thread buffer) or touch
        shared state, and bad rows are reported in row order all the same. A torch source runs in this thread.
        """
        raw_chunks = self._raw_chunks(rows or self.my_rows(), None if with_metadata else ())
        workers = min(MAX_WORKERS, os.cpu_count() or 1) if self.numpy else 1
        if workers == 1:
            for chunk in self.chunks(rows, with_metadata):
                yield chunk, fn(chunk)
            return
        local = threading.local()

        def work(raw: tuple[str, Any, Any, int]) -> tuple[Rows, Any, Any]:
            if not hasattr(local, "buf"):
                local.buf = self._buffer()
            chunk, report = self._load(raw, local.buf)
            return chunk, report, fn(chunk)

        with ThreadPoolExecutor(workers, thread_name_prefix="modgap-chunks") as pool:
            pending: deque[Future] = deque()
            try:
                for raw in raw_chunks:
                    pending.append(pool.submit(work, raw))
                    if len(pending) > 2 * workers:
                        yield self._in_order(pending.popleft())
                while pending:
                    yield self._in_order(pending.popleft())
            finally:  # an error or an early stop: let the chunks in flight finish, drop their results
                for f in pending:
                    f.cancel()

    def _in_order(self, future: Future) -> tuple[Rows, Any]:
        chunk, report, result = future.result()
        if report is not None:
            self.bad.handle(*report)
        return chunk, result
