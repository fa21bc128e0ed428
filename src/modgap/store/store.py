"""An embedding store: one modality's vectors in Arrow IPC shards plus a JSON manifest.

Layout of a store directory::

    manifest.json            dim, dtype, counts, provenance, shard list with xxh3-128 checksums
    shard-00000.arrow        Arrow IPC file (Feather v2, uncompressed): id, embedding, metadata...

Each shard is written under a hidden temporary name and renamed into place when complete, and the
manifest is rewritten atomically after each shard, so a crash never makes a partial shard visible.
Reads memory-map the shards: embeddings come back as read-only NumPy views of the file.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import uuid
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import xxhash

from modgap.arrays import BufferPool, host, store_as
from modgap.errors import ModgapError
from modgap.files import TMP_PREFIX
from modgap.lazy import lazy_module
from modgap.store.manifest import DTYPES, MANIFEST_NAME, Manifest, ShardInfo
from modgap.store.sums import UnitSums, new_scratch

torch = lazy_module("torch")

ID = "id"
EMBEDDING = "embedding"
# Shards and record batches are sized in bytes so that memory use does not grow with the dimension.
DEFAULT_SHARD_BYTES = 256 * 2**20
DEFAULT_BATCH_BYTES = 16 * 2**20
MAX_QUEUED_WRITES = 4  # record batches waiting for the writer thread (bounds memory)


def _arrow_float(dtype: str) -> pa.DataType:
    return {"float16": pa.float16(), "float32": pa.float32()}[dtype]


_NUMPY_DTYPES = {pa.float16(): np.float16, pa.float32(): np.float32, pa.float64(): np.float64}


CHECKSUM = "xxh3_128"  # ~20x faster than sha256; detects corruption, which is what the checksum is for


def checksum_file(path: Path, block: int = 8 * 2**20) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return f"{CHECKSUM}:{h.hexdigest()}"


@dataclass
class Chunk:
    """A run of consecutive rows of a store."""

    embeddings: np.ndarray  # (n, dim), read-only view of the shard where possible
    batch: pa.RecordBatch  # id and metadata columns of the same rows
    shard: int  # shard index of the first row
    start: int  # global row index of the first row

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def ids(self) -> list[str]:
        return self.batch.column(ID).to_pylist()


class EmbeddingStore:
    """Read access to a store directory. Open with :meth:`open`."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest
        self._offsets = np.cumsum([0] + [s.rows for s in manifest.shards])
        self._id_index: dict[str, int] | None = None
        self._views: tuple[np.ndarray, list[np.ndarray]] | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = False) -> EmbeddingStore:
        """Open a store; checks that every shard exists with the recorded size (and checksum if ``verify``)."""
        path = Path(path)
        manifest = Manifest.load(path)
        for shard in manifest.shards:
            f = path / shard.file
            if not f.is_file():
                raise ModgapError(f"{path}: shard {shard.file} is listed in the manifest but missing")
            size = f.stat().st_size
            if size != shard.bytes:
                raise ModgapError(
                    f"{path}: shard {shard.file} has {size} bytes, the manifest says {shard.bytes} "
                    "(truncated or replaced)"
                )
            if verify and checksum_file(f) != shard.checksum:
                raise ModgapError(f"{path}: shard {shard.file} fails its checksum (corrupted)")
        return cls(path, manifest)

    # -- properties -------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest.dtype)

    @property
    def normalized(self) -> bool:
        return self.manifest.normalized

    @property
    def metadata_columns(self) -> list[str]:
        return list(self.manifest.metadata_columns)

    @property
    def num_shards(self) -> int:
        return len(self.manifest.shards)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, rows={len(self)}, dim={self.dim}, dtype={self.dtype})"

    # -- shard access -----------------------------------------------------------------------------
    def open_shard(self, i: int) -> ipc.RecordBatchFileReader:
        """Memory-map shard ``i``; checks that its schema and row count agree with the manifest."""
        return self._map_shard(i)[0]

    def _map_shard(self, i: int) -> tuple[ipc.RecordBatchFileReader, mmap.mmap]:
        info = self.manifest.shards[i]
        where = f"{self.path / info.file}"
        try:
            with open(self.path / info.file, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            reader = ipc.open_file(pa.BufferReader(pa.py_buffer(mapped)))
        except (pa.ArrowInvalid, OSError, ValueError) as e:
            raise ModgapError(f"{where}: not a readable Arrow IPC shard ({e})") from e
        schema = reader.schema
        expected = pa.list_(_arrow_float(self.manifest.dtype), self.dim)
        if EMBEDDING not in schema.names or schema.field(EMBEDDING).type != expected:
            got = schema.field(EMBEDDING).type if EMBEDDING in schema.names else "no embedding column"
            raise ModgapError(f"{where}: embedding column is {got}, the manifest says {expected}")
        if ID not in schema.names:
            raise ModgapError(f"{where}: shard has no {ID!r} column")
        rows = sum(reader.get_batch(b).num_rows for b in range(reader.num_record_batches))
        if rows != info.rows:
            raise ModgapError(f"{where}: shard holds {rows} rows, the manifest says {info.rows}")
        return reader, mapped

    def _shard_batches(self, i: int) -> Iterator[pa.RecordBatch]:
        reader, mapped = self._map_shard(i)
        for b in range(reader.num_record_batches):
            yield reader.get_batch(b)
            # Streaming: let go of the pages read so far, so resident memory stays at about one record batch
            # whatever the shard size. The mapping is shared and read-only: a view touched again re-reads
            # the page from the page cache, so views handed out stay valid.
            if hasattr(mapped, "madvise"):
                mapped.madvise(mmap.MADV_DONTNEED)

    @staticmethod
    def batch_embeddings(batch: pa.RecordBatch, dim: int) -> np.ndarray:
        """Zero-copy (n, dim) view of a record batch's embedding column."""
        col = batch.column(EMBEDDING)
        values = col.values  # the whole child array: the batch's rows start at col.offset
        if col.null_count or values.null_count:
            raise ModgapError("embedding column holds nulls")
        # A view of the values buffer, read directly: Array.to_numpy would import pandas (0.4 s) on first use.
        dtype = np.dtype(_NUMPY_DTYPES[values.type])
        first = values.offset + col.offset * dim
        flat = np.frombuffer(values.buffers()[1], dtype=dtype, count=len(col) * dim, offset=first * dtype.itemsize)
        return flat.reshape(-1, dim)

    def iter_chunks(
        self,
        chunk_rows: int = 65536,
        rows: tuple[int, int] | None = None,
        exact: bool = True,
        columns: Sequence[str] | None = None,
    ) -> Iterator[Chunk]:
        """Stream the store in order.

        ``rows=(start, stop)`` restricts to a global row range (how ranks split a store).
        With ``exact`` every chunk but the last has exactly ``chunk_rows`` rows (chunks that span
        record batches are copied); without it chunks stop at batch boundaries and are always views.
        ``columns`` selects the metadata columns carried in ``Chunk.batch`` (default: all).
        """
        if chunk_rows <= 0:
            raise ValueError("chunk_rows must be positive")
        start, stop = rows if rows is not None else (0, len(self))
        keep = [ID, *(self.metadata_columns if columns is None else columns)]
        pending: list[Chunk] = []
        pending_rows = 0
        for i in range(self.num_shards):
            s0, s1 = int(self._offsets[i]), int(self._offsets[i + 1])
            if s1 <= start or s0 >= stop or s0 == s1:
                continue
            pos = s0
            for batch in self._shard_batches(i):
                b0, b1 = pos, pos + batch.num_rows
                pos = b1
                lo, hi = max(b0, start), min(b1, stop)
                if lo >= hi:
                    continue
                batch = batch.slice(lo - b0, hi - lo)
                emb = self.batch_embeddings(batch, self.dim)
                meta = batch.select(keep)
                off = 0
                while off < len(emb):
                    take = min(chunk_rows - pending_rows, len(emb) - off) if exact else chunk_rows
                    piece = Chunk(emb[off : off + take], meta.slice(off, take), i, lo + off)
                    off += len(piece)
                    if not exact:
                        yield piece
                        continue
                    pending.append(piece)
                    pending_rows += len(piece)
                    if pending_rows == chunk_rows:
                        yield _join(pending)
                        pending, pending_rows = [], 0
        if pending:
            yield _join(pending)

    def shard_of_row(self, row: int) -> int:
        return int(np.searchsorted(self._offsets, row, side="right") - 1)

    # -- whole-store helpers (small stores, tests, lookups) ---------------------------------------
    def ids(self) -> list[str]:
        out: list[str] = []
        for i in range(self.num_shards):
            for batch in self._shard_batches(i):
                out.extend(batch.column(ID).to_pylist())
        return out

    def to_numpy(self, dtype: Any = None) -> np.ndarray:
        """All embeddings as one array (a copy). Only for stores that fit in memory."""
        out = np.empty((len(self), self.dim), dtype=dtype or self.dtype)
        for chunk in self.iter_chunks(chunk_rows=1 << 16, exact=False, columns=()):
            out[chunk.start : chunk.start + len(chunk)] = chunk.embeddings
        return out

    def read_table(self) -> pa.Table:
        """The whole store as one Arrow table (memory-mapped, not copied)."""
        batches = [b for i in range(self.num_shards) for b in self._shard_batches(i)]
        if not batches:
            return self.empty_schema().empty_table()
        return pa.Table.from_batches(batches)

    def empty_schema(self) -> pa.Schema:
        return store_schema(self.dim, self.manifest.dtype, self.metadata_columns)

    def id_index(self) -> dict[str, int]:
        """id → global row (built once, kept)."""
        if self._id_index is None:
            self._id_index = {k: n for n, k in enumerate(self.ids())}
        return self._id_index

    def row_of(self, ids: Iterable[str]) -> np.ndarray:
        """Global row indices of ``ids``; unknown ids raise an error naming them."""
        index = self.id_index()
        rows, missing = [], []
        for k in ids:
            r = index.get(k)
            if r is None:
                missing.append(k)
            rows.append(r)
        if missing:
            raise ModgapError(f"{self.path}: {len(missing)} id(s) not in store: {_preview(missing)}")
        return np.asarray(rows, dtype=np.int64)

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """Embeddings of ``ids`` in the given order."""
        return self.take(self.row_of(ids))

    def take(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Embeddings of global row indices (random access through the memory map; a copy)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise ModgapError(f"{self.path}: row index out of range 0..{len(self) - 1}")
        starts, views = self._batch_views()
        out = np.empty((len(rows), self.dim), dtype=self.dtype)
        which = np.searchsorted(starts, rows, side="right") - 1
        for j, (w, r) in enumerate(zip(which.tolist(), rows.tolist(), strict=False)):
            out[j] = views[w][r - starts[w]]
        return out

    def _batch_views(self) -> tuple[np.ndarray, list[np.ndarray]]:
        # Zero-copy views of every record batch, kept for random access; pages come from the page cache.
        if self._views is None:
            starts, views = [], []
            for i in range(self.num_shards):
                reader, _ = self._map_shard(i)
                pos = int(self._offsets[i])
                for b in range(reader.num_record_batches):
                    emb = self.batch_embeddings(reader.get_batch(b), self.dim)
                    starts.append(pos)
                    views.append(emb)
                    pos += len(emb)
            self._views = (np.asarray(starts, dtype=np.int64), views)
        return self._views


def _join(pieces: list[Chunk]) -> Chunk:
    if len(pieces) == 1:
        return pieces[0]
    emb = np.concatenate([p.embeddings for p in pieces])
    table = pa.Table.from_batches([p.batch for p in pieces])
    batch = table.combine_chunks().to_batches()[0]
    return Chunk(emb, batch, pieces[0].shard, pieces[0].start)


def _preview(items: Sequence[Any], n: int = 10) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def as_cpu_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A CPU tensor sharing memory with ``x`` where possible (read-only store views included)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    x = np.asarray(x)
    with warnings.catch_warnings():  # read-only views of the store: only read from here
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(x))


def _string_array(values: Sequence[Any] | pa.Array) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values if values.type == pa.string() else values.cast(pa.string())
    return pa.array(values, type=pa.string())


def store_schema(dim: int, dtype: str, metadata_columns: Sequence[str]) -> pa.Schema:
    fields = [pa.field(ID, pa.string(), nullable=False), pa.field(EMBEDDING, pa.list_(_arrow_float(dtype), dim))]
    fields += [pa.field(c, pa.string()) for c in metadata_columns]
    return pa.schema(fields)


class _HashingFile:
    """A write-only file that hashes what passes through it, so shards are checksummed in one pass.

    ``durable`` fsyncs on close (power-loss safety); without it a killed process still never leaves a
    partial shard visible, because shards only appear by rename after they are complete.
    """

    def __init__(self, path: Path, durable: bool = False):
        self.durable = durable
        self._f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._h = xxhash.xxh3_128()
        self.closed = False

    def write(self, data: Any) -> int:
        self._h.update(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._f.flush()
                if self.durable:
                    os.fsync(self._f.fileno())
            finally:  # a full disk fails the flush; the descriptor is released all the same
                self._f.close()

    def checksum(self) -> str:
        return f"{CHECKSUM}:{self._h.hexdigest()}"


class StoreWriter:
    """Appends rows to a store (creating it if needed), one complete shard at a time.

    Use as a context manager: on an exception the unfinished shard is deleted and the rows already
    committed stay valid; :meth:`close` commits the last shard.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        dim: int,
        dtype: str = "float16",
        normalized: bool = False,
        modality: str | None = None,
        encoder: dict[str, Any] | None = None,
        created_by: str | None = None,
        metadata_columns: Sequence[str] = (),
        extra: dict[str, Any] | None = None,
        shard_rows: int | None = None,
        shard_prefix: str = "shard",
        check_duplicates: bool = True,
        durable: bool = False,
        unit_sums: bool = True,
    ):
        if dtype not in DTYPES:
            raise ModgapError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.path = Path(path)
        self.durable = durable
        self.path.mkdir(parents=True, exist_ok=True)
        self._remove_orphans()
        if (self.path / MANIFEST_NAME).exists():
            m = Manifest.load(self.path)
            if m.dim != dim or m.dtype != dtype or list(m.metadata_columns) != list(metadata_columns):
                raise ModgapError(
                    f"{self.path}: cannot append dim={dim} dtype={dtype} columns={list(metadata_columns)} "
                    f"to a store with dim={m.dim} dtype={m.dtype} columns={m.metadata_columns}"
                )
            self.manifest = m
        else:
            self.manifest = Manifest(
                dim=dim,
                dtype=dtype,
                normalized=normalized,
                modality=modality,
                encoder=encoder,
                created_by=created_by,
                metadata_columns=list(metadata_columns),
                extra=dict(extra or {}),
            )
            self.manifest.save(self.path)
        row_bytes = dim * np.dtype(dtype).itemsize
        self.shard_rows = shard_rows or max(1, DEFAULT_SHARD_BYTES // row_bytes)
        self.batch_rows = max(1, min(self.shard_rows, DEFAULT_BATCH_BYTES // row_bytes))
        self.shard_prefix = shard_prefix
        self.schema = store_schema(dim, dtype, metadata_columns)
        self._seen: set[str] | None = None
        if check_duplicates:
            self._seen = set(EmbeddingStore.open(self.path).ids()) if self.manifest.shards else set()
        self._pending: list[pa.RecordBatch] = []  # ids and metadata of the pending rows
        self._pending_rows = 0
        self._rest_schema = pa.schema([f for f in self.schema if f.name != EMBEDDING])
        # Batch buffers go back to the pool once the writer thread has written them.
        self._buffers = BufferPool((self.batch_rows, dim), dtype)
        self._buf = self._buffers.take()
        self._file: _HashingFile | None = None
        self._writer: ipc.RecordBatchFileWriter | None = None
        self._tmp_path: Path | None = None
        self._shard_rows_written = 0
        self._committed_rows = self.manifest.count
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modgap-store-writer")
        # Sums of the unfinished shard's unit vectors (modgap.store.sums), added on the writer thread.
        self._sums = UnitSums.empty(dim) if unit_sums else None
        self._sums_scratch: np.ndarray | None = None
        self._futures: deque[Future] = deque()

    def _remove_orphans(self) -> None:
        # Temporary shards of a crashed writer, and committed shards the manifest never listed.
        listed = set()
        if (self.path / MANIFEST_NAME).exists():
            listed = {s.file for s in Manifest.load(self.path).shards}
        for f in self.path.iterdir():
            if f.name.startswith(TMP_PREFIX) or (f.suffix == ".arrow" and f.name not in listed):
                f.unlink()

    @property
    def count(self) -> int:
        return self._committed_rows + self._shard_rows_written + self._pending_rows

    def write(
        self,
        ids: Sequence[str] | pa.Array,
        embeddings: np.ndarray | torch.Tensor,
        metadata: dict[str, Sequence[Any] | pa.Array] | None = None,
        where: str | None = None,
    ) -> None:
        """Append rows. ``embeddings`` is (n, dim) and is copied, so the caller may reuse its buffer;
        ``metadata`` maps each metadata column to n values; ``where`` names their source in errors (the
        store being written is a temporary directory the user never sees)."""
        n = len(ids)
        source = host(embeddings)
        if source.ndim != 2 or tuple(source.shape) != (n, self.manifest.dim):
            raise ModgapError(
                f"{self.path}: expected embeddings of shape ({n}, {self.manifest.dim}), got {tuple(source.shape)}"
            )
        ids_arr = _string_array(ids)
        if ids_arr.null_count:
            raise ModgapError(f"{where or self.path}: ids must not be null")
        if self._seen is not None:
            new: set[str] = set()
            dupes: set[str] = set()
            for k in ids_arr.to_pylist():
                if k in self._seen or k in new:
                    dupes.add(k)
                new.add(k)
            if dupes:
                raise ModgapError(f"{where or self.path}: duplicate id(s): {_preview(sorted(dupes))}")
            self._seen |= new
        metadata = metadata or {}
        unknown = set(metadata) - set(self.manifest.metadata_columns)
        if unknown:
            raise ModgapError(f"{self.path}: unknown metadata column(s) {sorted(unknown)}")
        cols = [ids_arr]
        for c in self.manifest.metadata_columns:
            v = metadata.get(c)
            cols.append(pa.nulls(n, pa.string()) if v is None else _string_array(v))
        rest = pa.RecordBatch.from_arrays(cols, schema=self._rest_schema)
        off = 0
        while off < n:
            room = self.shard_rows - self._shard_rows_written - self._pending_rows
            take = min(room, self.batch_rows - self._pending_rows, n - off)
            # The one copy of the vectors: into the pending record batch, converting the dtype on the way
            # (modgap.arrays' float16 conversion: NumPy's own cast is several times slower).
            store_as(source[off : off + take], self._buf[self._pending_rows : self._pending_rows + take])
            self._pending.append(rest.slice(off, take))
            self._pending_rows += take
            off += take
            if (
                self._pending_rows >= self.batch_rows
                or self._shard_rows_written + self._pending_rows >= self.shard_rows
            ):
                self._flush_pending()
            if self._shard_rows_written >= self.shard_rows:
                self._commit_shard()

    # Writing, checksumming and fsync run on one background thread (xxhash and file writes release
    # the GIL), so they overlap with the caller computing the next rows. Tasks run in submission order.
    def _submit(self, fn: Any, *args: Any) -> None:
        self._futures.append(self._pool.submit(fn, *args))
        while len(self._futures) > MAX_QUEUED_WRITES:
            self._futures.popleft().result()

    def _drain(self) -> None:
        while self._futures:
            self._futures.popleft().result()

    def _flush_pending(self) -> None:
        if not self._pending_rows:
            return
        rest = pa.Table.from_batches(self._pending, schema=self._rest_schema).combine_chunks()
        # A zero-copy view of the buffer (pa.array on a NumPy array would import pandas: 0.7 s).
        values = self._buf[: self._pending_rows].reshape(-1)
        flat = pa.Array.from_buffers(_arrow_float(self.manifest.dtype), len(values), [None, pa.py_buffer(values)])
        emb = pa.FixedSizeListArray.from_arrays(flat, self.manifest.dim)
        cols = [
            rest.column(0).combine_chunks(),
            emb,
            *(rest.column(c).combine_chunks() for c in self._rest_schema.names[1:]),
        ]
        self._submit(self._write_batches, [pa.RecordBatch.from_arrays(cols, schema=self.schema)],
                     self._buf, self._pending_rows)  # fmt: skip
        self._buf = self._buffers.take()  # the old one belongs to the batch in flight until it is written
        self._shard_rows_written += self._pending_rows
        self._pending, self._pending_rows = [], 0

    def _write_batches(self, batches: list[pa.RecordBatch], buffer: np.ndarray, rows: int) -> None:
        values = buffer[:rows]
        if self._sums is not None:
            if self._sums_scratch is None:
                self._sums_scratch = new_scratch(self.manifest.dim)
            self._sums.add_rows(values, self._sums_scratch)
        if self._writer is None:
            self._tmp_path = self.path / f"{TMP_PREFIX}{uuid.uuid4().hex}.arrow"
            self._file = _HashingFile(self._tmp_path, durable=self.durable)
            self._writer = ipc.new_file(pa.PythonFile(self._file, mode="w"), self.schema)
        for b in batches:
            self._writer.write_batch(b)
        batches.clear()  # the file has the bytes (a synchronous write): nothing refers to the buffer now
        self._buffers.give(buffer)

    def _next_shard_name(self) -> str:
        taken = {s.file for s in self.manifest.shards}
        k = len(self.manifest.shards)
        while (name := f"{self.shard_prefix}-{k:05d}.arrow") in taken:
            k += 1
        return name

    def _commit_shard(self) -> None:
        self._flush_pending()
        if self._shard_rows_written:
            self._submit(self._commit_in_thread, self._shard_rows_written)
            self._committed_rows += self._shard_rows_written
            self._shard_rows_written = 0

    def _commit_in_thread(self, rows: int) -> None:
        assert self._writer is not None and self._file is not None and self._tmp_path is not None
        self._writer.close()
        self._file.close()
        name = self._next_shard_name()
        final = self.path / name
        os.replace(self._tmp_path, final)
        sums = None
        if self._sums is not None:
            sums = self._sums.to_json()
            self._sums = UnitSums.empty(self.manifest.dim)
        self.manifest.shards.append(
            ShardInfo(file=name, rows=rows, bytes=final.stat().st_size, checksum=self._file.checksum(), unit_sums=sums)
        )
        self.manifest.save(self.path)
        self._writer = self._file = self._tmp_path = None

    def close(self) -> Manifest:
        """Commit the last shard and wait until everything is on disk."""
        self._commit_shard()
        self._drain()
        self._pool.shutdown()
        return self.manifest

    def abort(self) -> None:
        """Drop the unfinished shard; shards already complete are still committed."""
        for f in self._futures:
            with contextlib.suppress(Exception):
                f.result()
        self._futures.clear()
        self._pool.shutdown()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        if self._file is not None:
            with contextlib.suppress(OSError):  # the disk that failed the shard may fail its last flush too
                self._file.close()
        if self._tmp_path is not None and self._tmp_path.exists():
            self._tmp_path.unlink()
        self._writer = self._file = self._tmp_path = None
        self._pending, self._pending_rows, self._shard_rows_written = [], 0, 0
        if self._sums is not None:
            self._sums = UnitSums.empty(self.manifest.dim)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
