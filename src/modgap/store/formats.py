"""Import into and export out of embedding stores: ReVision/Unicorn pickles, .npy + ids, Parquet.

Every function writes its output under a temporary name and renames it when complete.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from modgap.errors import ModgapError
from modgap.files import atomic_output_dir, read_lines
from modgap.store.checks import BadRows, OnBad, bad_row_mask, row_norms
from modgap.store.manifest import MANIFEST_NAME
from modgap.store.safe_pickle import safe_load
from modgap.store.store import EMBEDDING, ID, EmbeddingStore, StoreWriter

IMPORT_FORMATS = ("revision-pkl", "npy", "parquet")
EXPORT_FORMATS = ("npy", "parquet", "revision-pkl")
# Metadata keys of the ReVision/Unicorn pickle records that are kept as store columns.
PKL_METADATA_KEYS = ("caption", "text", "image_path")
SOURCE = "source"
IMPORT_CHUNK_ROWS = 65536

Progress = Callable[[int], None]


def _noop(_: int) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------
def import_store(
    fmt: str,
    src: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    dtype: str | None = None,
    modality: str | None = None,
    normalized: bool | None = None,
    ids_file: str | os.PathLike | None = None,
    id_column: str = ID,
    embedding_column: str = EMBEDDING,
    on_bad: OnBad = "error",
    bad_report: str | os.PathLike | None = None,
    created_by: str | None = None,
    overwrite: bool = False,
    progress: Progress = _noop,
) -> EmbeddingStore:
    """Import ``src`` in format ``fmt`` into a new store at ``dest``.

    ``dtype=None`` keeps the source's precision: float16 sources stay float16, others become float32.
    """
    if fmt not in IMPORT_FORMATS:
        raise ModgapError(f"unknown import format {fmt!r}; choose one of {IMPORT_FORMATS}")
    src = Path(src)
    if not src.exists():
        raise ModgapError(f"{src}: no such file or directory")
    if fmt == "revision-pkl":
        dim, columns, batches = _pkl_batches(src)
    elif fmt == "npy":
        dim, columns, batches = _npy_batches(src, ids_file)
    else:
        dim, columns, batches = _parquet_batches(src, id_column, embedding_column)
    bad = BadRows(on_bad)
    all_unit = True
    batches = _Peekable(batches)
    if dtype is None:
        first = batches.peek()
        dtype = "float16" if first is not None and first[2].dtype == np.float16 else "float32"
    with atomic_output_dir(dest, overwrite=overwrite, markers=(MANIFEST_NAME,), inputs=[src, ids_file]) as tmp:
        with StoreWriter(
            tmp, dim=dim, dtype=dtype, modality=modality, created_by=created_by, metadata_columns=columns
        ) as writer:
            for where, ids, emb, meta in batches:
                with np.errstate(over="ignore"):  # out of the store dtype's range: Inf, caught as a bad row below
                    emb = np.asarray(emb).astype(dtype, copy=False)  # checked as stored, not as read
                norms = row_norms(emb)
                mask = bad_row_mask(norms)
                bad.handle(where, ids, emb, mask)
                if mask.any():
                    keep = ~mask
                    ids = [k for k, ok in zip(ids, keep, strict=True) if ok]
                    emb, norms = emb[keep], norms[keep]
                    meta = {c: [v for v, ok in zip(vals, keep, strict=True) if ok] for c, vals in meta.items()}
                all_unit &= bool(np.all(np.abs(norms - 1) < 1e-3))
                writer.write(ids, emb, meta, where=where)
                progress(len(ids) + int(mask.sum()))
            writer.manifest.normalized = all_unit if normalized is None else normalized
            if writer.count == 0:
                raise ModgapError(f"{src}: no usable vectors to import")
        if bad.rows:
            bad.write(bad_report or Path(tmp) / "bad_rows.jsonl")
    return EmbeddingStore.open(dest)


Batch = tuple[str, list[str], np.ndarray, dict[str, list[Any]]]


class _Peekable:
    def __init__(self, it: Iterator[Batch]):
        self._it = it
        self._head: list[Batch] = []

    def peek(self) -> Batch | None:
        if not self._head:
            try:
                self._head.append(next(self._it))
            except StopIteration:
                return None
        return self._head[0]

    def __iter__(self) -> Iterator[Batch]:
        yield from self._head
        self._head = []
        yield from self._it


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _pkl_batches(src: Path) -> tuple[int, list[str], Iterator[Batch]]:
    files = sorted(src.glob("*.pkl"), key=_natural_key) if src.is_dir() else [src]
    if not files:
        raise ModgapError(f"{src}: no *.pkl files")
    first = _load_pkl(files[0])
    if not first:
        raise ModgapError(f"{files[0]}: empty list")
    dim = len(_pkl_vector(first[0], files[0], 0))
    columns = [k for k in PKL_METADATA_KEYS if any(k in r for r in first)] + [SOURCE]

    def gen() -> Iterator[Batch]:
        for n, f in enumerate(files):
            records = first if n == 0 else _load_pkl(f)
            ids, vecs = [], []
            meta: dict[str, list[Any]] = {c: [] for c in columns}
            for i, r in enumerate(records):
                extra = [k for k in PKL_METADATA_KEYS if k in r and k not in columns]
                if extra:
                    raise ModgapError(
                        f"{f}: record {i} has metadata {extra} that the first file lacks; import such files separately"
                    )
                v = _pkl_vector(r, f, i)
                if len(v) != dim:
                    raise ModgapError(f"{f}: record {i} (id {r['id']!r}) has dimension {len(v)}, expected {dim}")
                ids.append(str(r["id"]))
                vecs.append(v)
                for c in columns:
                    meta[c].append(f.name if c == SOURCE else _str_or_none(r.get(c)))
            if ids:
                yield str(f), ids, np.stack(vecs), meta

    return dim, columns, gen()


def _load_pkl(f: Path) -> list[dict[str, Any]]:
    data = safe_load(f)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ModgapError(f"{f}: expected a list of dicts (the ReVision embedding layout)")
    return data


def _pkl_vector(r: dict[str, Any], f: Path, i: int) -> np.ndarray:
    if "id" not in r or r["id"] is None:
        raise ModgapError(f"{f}: record {i} has no 'id'")
    if r.get("embed") is None:
        raise ModgapError(f"{f}: record {i} (id {r['id']!r}) has no 'embed'")
    v = np.asarray(r["embed"])
    if v.ndim != 1 or v.dtype.kind not in "fiu":
        raise ModgapError(
            f"{f}: record {i} (id {r['id']!r}): 'embed' must be a 1-D numeric array, got {v.dtype} {v.shape}"
        )
    return v


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


def _npy_batches(src: Path, ids_file: str | os.PathLike | None) -> tuple[int, list[str], Iterator[Batch]]:
    npy = src / "embeddings.npy" if src.is_dir() else src
    ids_path = Path(ids_file) if ids_file else npy.with_name("ids.txt")
    if not npy.is_file():
        raise ModgapError(f"{npy}: no such .npy file")
    if not ids_path.is_file():
        raise ModgapError(f"{ids_path}: ids file not found (one id per line; pass --ids)")
    try:
        arr = np.load(npy, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise ModgapError(f"{npy}: not a plain numeric .npy file ({e})") from e
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise ModgapError(f"{npy}: expected a 2-D float array, got {arr.dtype} {arr.shape}")
    ids = read_lines(ids_path)
    seen: dict[str, int] = {}
    for line, key in enumerate(ids, 1):
        if not key.strip():
            raise ModgapError(f"{ids_path}:{line}: empty id")
        if key in seen:
            raise ModgapError(f"{ids_path}:{line}: id {key!r} already on line {seen[key]}")
        seen[key] = line
    del seen
    if len(ids) != len(arr):
        raise ModgapError(f"{ids_path}: {len(ids)} ids for {len(arr)} rows in {npy}")

    def gen() -> Iterator[Batch]:
        for s in range(0, len(arr), IMPORT_CHUNK_ROWS):
            yield (
                f"{npy} rows {s + 1}..",
                ids[s : s + IMPORT_CHUNK_ROWS],
                np.asarray(arr[s : s + IMPORT_CHUNK_ROWS]),
                {},
            )

    return arr.shape[1], [], gen()


def _parquet_batches(src: Path, id_column: str, embedding_column: str) -> tuple[int, list[str], Iterator[Batch]]:
    files = sorted(src.glob("*.parquet"), key=_natural_key) if src.is_dir() else [src]
    if not files:
        raise ModgapError(f"{src}: no *.parquet files")
    try:
        schema = pq.read_schema(files[0])
    except (pa.ArrowInvalid, OSError) as e:
        raise ModgapError(f"{files[0]}: not a readable Parquet file ({e})") from e
    for c in (id_column, embedding_column):
        if c not in schema.names:
            raise ModgapError(
                f"{files[0]}: no column {c!r} (columns: {schema.names}); see --id-column/--embedding-column"
            )
    columns = [c for c in schema.names if c not in (id_column, embedding_column)]
    emb_type = schema.field(embedding_column).type
    if (
        not pa.types.is_list(emb_type)
        and not pa.types.is_fixed_size_list(emb_type)
        and not pa.types.is_large_list(emb_type)
    ):
        raise ModgapError(f"{files[0]}: column {embedding_column!r} is {emb_type}, expected a list of floats")
    first = pq.ParquetFile(files[0]).read_row_group(0, columns=[embedding_column]).column(0)
    dim = len(first[0].as_py()) if len(first) else 0
    if dim == 0:
        raise ModgapError(f"{files[0]}: cannot determine the embedding dimension")

    def gen() -> Iterator[Batch]:
        for f in files:
            pf = pq.ParquetFile(f)
            if pf.schema_arrow.names != schema.names:
                raise ModgapError(f"{f}: columns {pf.schema_arrow.names} differ from {files[0]}'s {schema.names}")
            start = 0
            for batch in pf.iter_batches(batch_size=IMPORT_CHUNK_ROWS):
                where = f"{f} rows {start + 1}.."
                col = batch.column(embedding_column)
                if col.null_count:
                    i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                    raise ModgapError(f"{f}: row {start + i + 1} has no embedding (null)")
                lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
                if (lengths != dim).any():
                    i = int(np.flatnonzero(lengths != dim)[0])
                    raise ModgapError(
                        f"{f}: row {start + i + 1} has an embedding of length {lengths[i]}, expected {dim}"
                    )
                emb = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
                raw_ids = batch.column(id_column)
                if raw_ids.null_count:
                    i = int(np.flatnonzero(raw_ids.is_null().to_numpy(zero_copy_only=False))[0])
                    raise ModgapError(f"{f}: row {start + i + 1} has no id (null in column {id_column!r})")
                ids = [str(x) for x in raw_ids.to_pylist()]
                meta = {c: [_str_or_none(v) for v in batch.column(c).to_pylist()] for c in columns}
                yield where, ids, emb, meta
                start += batch.num_rows

    return dim, columns, gen()


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
# Marks a directory `store export` wrote, so --overwrite may replace it; "_" keeps Parquet dataset readers
# (pyarrow, 🤗 datasets) from taking it for data.
EXPORT_MARKER = "_modgap_export.json"


def export_store(
    fmt: str,
    store: EmbeddingStore,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    records_per_pkl: int = 200_000,
    progress: Progress = _noop,
) -> Path:
    """Export ``store`` into ``out_dir`` (created whole or not at all)."""
    if fmt not in EXPORT_FORMATS:
        raise ModgapError(f"unknown export format {fmt!r}; choose one of {EXPORT_FORMATS}")
    with atomic_output_dir(out_dir, overwrite=overwrite, markers=(EXPORT_MARKER,), inputs=[store.path]) as tmp:
        if fmt == "npy":
            _export_npy(store, tmp, progress)
        elif fmt == "parquet":
            _export_parquet(store, tmp, progress)
        else:
            _export_pkl(store, tmp, records_per_pkl, progress)
        marker = {"format": fmt, "store": str(store.path), "rows": len(store), "dim": store.dim}
        (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return Path(out_dir)


def _export_npy(store: EmbeddingStore, out: Path, progress: Progress) -> None:
    # Plain writes, not a memory map: a full disk is then an OSError (reported as such), not a SIGBUS.
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False}
    with open(out / "embeddings.npy", "wb") as arr, open(out / "ids.txt", "w", encoding="utf-8") as f:
        np.lib.format.write_array_header_1_0(arr, {**header, "shape": (len(store), store.dim)})
        for chunk in store.iter_chunks(IMPORT_CHUNK_ROWS, exact=False, columns=()):
            arr.write(np.ascontiguousarray(chunk.embeddings, dtype="<f4").tobytes())
            ids = chunk.ids
            if any("\n" in k or "\r" in k for k in ids):
                raise ModgapError(f"{store.path}: an id contains a line break; export as parquet instead")
            f.write("".join(k + "\n" for k in ids))
            progress(len(chunk))


def _export_parquet(store: EmbeddingStore, out: Path, progress: Progress) -> None:
    for i in range(store.num_shards):
        reader = store.open_shard(i)
        with pq.ParquetWriter(out / f"part-{i:05d}.parquet", reader.schema) as w:
            for b in range(reader.num_record_batches):
                batch = reader.get_batch(b)
                w.write_batch(batch)
                progress(batch.num_rows)


def _export_pkl(store: EmbeddingStore, out: Path, records_per_pkl: int, progress: Progress) -> None:
    """ReVision layout. Rows imported from pickles go back to files of the same names (``source``)."""
    keys = [c for c in store.metadata_columns if c in PKL_METADATA_KEYS]
    by_source = SOURCE in store.metadata_columns
    buf: list[dict[str, Any]] = []
    name: str | None = None
    part = 0

    def flush() -> None:
        nonlocal buf, part
        if not buf:
            return
        fname = name if by_source and name else f"{store.manifest.modality or 'embeddings'}_{part}.pkl"
        path = out / fname
        if path.exists():
            raise ModgapError(f"{store.path}: rows of source {fname} are not contiguous; cannot rebuild its file")
        with open(path, "wb") as f:
            pickle.dump(buf, f, protocol=4)
        buf, part = [], part + 1

    for chunk in store.iter_chunks(IMPORT_CHUNK_ROWS, exact=False):
        cols = {c: chunk.batch.column(c).to_pylist() for c in [*keys, SOURCE] if c in store.metadata_columns}
        emb = np.asarray(chunk.embeddings, dtype=np.float32)
        for j, k in enumerate(chunk.ids):
            src = cols[SOURCE][j] if by_source else None
            if (by_source and src != name) or (not by_source and len(buf) >= records_per_pkl):
                flush()
                name = src
            rec: dict[str, Any] = {"id": k}
            for c in keys:
                if cols[c][j] is not None:
                    rec[c] = cols[c][j]
            rec["embed"] = emb[j].copy()
            buf.append(rec)
        progress(len(chunk))
    flush()
