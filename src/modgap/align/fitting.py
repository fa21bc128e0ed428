"""Streaming fit and apply of aligners over stores or in-memory arrays, on one or many processes.

Under ``torchrun`` (or any initialised ``torch.distributed`` group) each rank reads a contiguous
slice of the rows, and the sufficient statistics are summed with one all-reduce per pass, so the
fit equals the single-process fit up to float64 rounding.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modgap import __version__
from modgap.align.record import ALIGNER_SUBDIR, RECORD_KEY, aligner_record
from modgap.align.stats import SOURCE, TARGET, Moments
from modgap.arrays import BufferPool
from modgap.distributed import barrier, rank_and_world
from modgap.errors import ModgapError
from modgap.files import atomic_output_dir, check_replaceable
from modgap.lazy import lazy_module
from modgap.progress import ProgressFactory, silent
from modgap.store.checks import BadRows, OnBad
from modgap.store.manifest import MANIFEST_NAME
from modgap.store.store import EmbeddingStore, StoreWriter
from modgap.store.stream import Rows, VectorSource

dist = lazy_module("torch.distributed")
torch = lazy_module("torch")

if TYPE_CHECKING:
    from modgap.align.base import Aligner


def _all_reduce(stats: dict[str, Moments]) -> None:
    if rank_and_world()[1] > 1:
        for role in sorted(stats):
            for a in stats[role].arrays():
                if dist.get_backend() == "nccl":  # NCCL reduces device memory only
                    t = torch.from_numpy(a).cuda()
                    dist.all_reduce(t, op=dist.ReduceOp.SUM)
                    a[...] = t.cpu().numpy()
                else:
                    dist.all_reduce(torch.from_numpy(a), op=dist.ReduceOp.SUM)  # shares the array's memory


BACKENDS = ("numpy", "torch")
# Aligned stores do not keep sums of unit vectors (modgap.store.sums): they are rarely aligned again, and the
# sums would add a conversion and a sum per row on the writer's thread to the apply pass.
UNIT_SUMS_ON_APPLY = False


def choose_backend(device: Any, backend: str | None) -> str:
    """torch on a device; on the CPU ``backend``, NumPy by default.

    NumPy starts ~2.2 s sooner (no torch import) and, with modgap's float16 conversion and chunks on threads,
    keeps up with torch's CPU kernels on large stores (measured: 200k + 100k x 768, 2.7-3.9 s against
    6.0-6.9 s as whole processes; 1M + 1M x 1280, 19-21 s against 19-21 s), so there is no size at which
    the CPU default would gain from loading torch.
    """
    if backend not in (None, *BACKENDS):
        raise ModgapError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    if str(device) != "cpu":
        if backend == "numpy":
            raise ModgapError(f"the NumPy backend runs on the CPU, not {device}")
        return "torch"
    return backend or "numpy"


def fit(
    aligner: Aligner,
    source: Any,
    target: Any,
    *,
    on_bad: OnBad = "error",
    bad: BadRows | None = None,
    chunk_rows: int | None = None,
    device: torch.device | str = "cpu",
    backend: str | None = None,
    store_sums: bool = True,
    progress: ProgressFactory = silent,
) -> Aligner:
    """Fit ``aligner`` on ``source`` (to be moved) and ``target`` (the distribution to reach).

    ``source`` and ``target`` are stores, store paths, arrays or tensors of shape (n, D). The arithmetic runs
    in torch on a ``device``; on the CPU in NumPy, or torch with ``backend="torch"`` (:func:`choose_backend`).

    With ``store_sums`` a first pass that needs only the means of the unit vectors takes them from the sums a
    store keeps in its manifest (:mod:`modgap.store.sums`) where they stand for reading it: the same numbers up
    to float64 rounding, without reading the shards. ``store_sums=False`` reads every row.
    """
    bad = bad or BadRows(on_bad)
    numpy = choose_backend(device, backend) == "numpy"
    src = VectorSource(source, SOURCE, bad, chunk_rows, device, numpy=numpy)
    tgt = VectorSource(target, TARGET, bad, chunk_rows, device, numpy=numpy)
    if src.dim != tgt.dim:
        raise ModgapError(f"dimension mismatch: source {src.label} has D={src.dim}, target {tgt.label} has D={tgt.dim}")
    from_sums: list[str] = []
    for p in range(aligner.passes):
        stats = aligner.new_stats(p, src.dim)
        for role, s in ((SOURCE, src), (TARGET, tgt)):
            if role not in stats:
                continue
            kept = s.stored_unit_sums() if p == 0 and store_sums and aligner.pass0_unit_sums else None
            if kept is not None:
                stats[role].count[0], stats[role].sum[:] = kept.rows, kept.total
                from_sums.append(role)
                continue
            lo, hi = s.my_rows()

            def chunk_sums(rows: Rows, p: int = p, role: str = role) -> dict[str, Moments]:
                sums = aligner.new_stats(p, src.dim, (role,))  # each chunk's own sums, added in row order: one result
                aligner.accumulate(p, role, rows.x, rows.norms, sums)  # whatever the threads' timing
                return sums

            with progress(f"{aligner.method} pass {p + 1}/{aligner.passes}: {role}", hi - lo) as advance:
                for rows, sums in s.map_chunks(chunk_sums):
                    stats[role].add(sums[role])
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
    if from_sums:
        aligner.provenance["first_pass_from_store_sums"] = from_sums
    if aligner.passes == 0:
        aligner.counts = {}
    return aligner


def _describe(s: VectorSource) -> dict[str, Any]:
    d: dict[str, Any] = {"path": s.label, "rows": s.rows, "dim": s.dim}
    if s.store is not None:
        d["encoder"] = s.store.manifest.encoder
        d["modality"] = s.store.manifest.modality
    return d


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
    backend: str | None = None,
    overwrite: bool = False,
    created_by: str | None = None,
    aligner_path: str | None = None,
    progress: ProgressFactory = silent,
) -> EmbeddingStore:
    """Write ``aligner(store)`` as a new store at ``out``: same ids, order and metadata.

    The aligner itself is saved inside the store (``aligner/``) and named in ``manifest.extra["aligner"]``:
    training on the store then uses its output as it is and carries the aligner into the model.
    """
    bad = bad or BadRows(on_bad)
    if not isinstance(store, EmbeddingStore):
        store = EmbeddingStore.open(store)
    aligner._require_fitted()
    aligner.require_dim(store.dim, str(store.path))
    numpy = choose_backend(device, backend) == "numpy"
    src = VectorSource(store, SOURCE, bad, chunk_rows, device, numpy=numpy)
    m = store.manifest
    dtype = dtype or m.dtype
    extra = dict(m.extra)
    extra[RECORD_KEY] = aligner_record(aligner, store, aligner_path)
    inputs = [store.path, aligner_path]
    with atomic_output_dir(out, overwrite=overwrite, markers=(MANIFEST_NAME,), inputs=inputs) as tmp:
        with (
            StoreWriter(
                tmp,
                dim=store.dim,
                dtype=dtype,
                normalized=aligner.output_normalized,
                modality=m.modality,
                encoder=m.encoder,
                created_by=created_by,
                metadata_columns=m.metadata_columns,
                extra=extra,
                check_duplicates=False,
                unit_sums=UNIT_SUMS_ON_APPLY,
            ) as w,
            progress(f"apply {aligner.method}", len(store)) as advance,
        ):

            outputs = BufferPool((src.chunk_rows, store.dim), dtype)  # given back once the writer has copied one

            def aligned(rows: Rows) -> tuple[Any, np.ndarray]:  # in the store's dtype, converted on the threads
                buf = outputs.take()
                return aligner.transform_rows_as(rows.x, rows.norms, dtype, rows.start, out=buf[: len(rows.x)]), buf

            for rows, (y, buf) in src.map_chunks(aligned, rows=(0, len(store)), with_metadata=True):
                meta = {c: rows.batch.column(c) for c in m.metadata_columns}
                w.write(rows.batch.column("id"), y, meta)
                outputs.give(buf)
                advance(len(rows.keep) if rows.keep is not None else len(y))
            if w.count == 0:
                raise ModgapError(f"{store.path}: no usable vectors to align")
        if bad.rows:
            bad.write(Path(tmp) / "bad_rows.jsonl")
        aligner.save(Path(tmp) / ALIGNER_SUBDIR)
    return EmbeddingStore.open(out)


def _store_paths(*sources: Any) -> list[Any]:
    """The directories a fit reads (stores or paths; a list of them for several), for the overwrite guard."""
    paths: list[Any] = []
    for s in sources:
        for one in s if isinstance(s, list | tuple) else [s]:
            paths.append(one.path if isinstance(one, EmbeddingStore) else one)
    return paths


def _fit_method(
    method: str, params: dict[str, Any] | None, source: Any, target: Any, on_bad: OnBad, command: str | None,
    **fit_options: Any,
) -> tuple[Aligner, BadRows]:  # fmt: skip
    """Fit a new ``method`` aligner on every process; its provenance records ``command``."""
    from modgap.align.base import make_aligner

    bad = BadRows(on_bad)
    aligner = make_aligner(method, **(params or {}))
    fit(aligner, source, target, bad=bad, **fit_options)
    aligner.provenance["command"] = command
    return aligner, bad


def fit_and_save(
    method: str,
    source: Any,
    target: Any,
    out: str | os.PathLike,
    *,
    params: dict[str, Any] | None = None,
    on_bad: OnBad = "error",
    chunk_rows: int | None = None,
    device: torch.device | str = "cpu",
    backend: str | None = None,
    store_sums: bool = True,
    command: str | None = None,
    progress: ProgressFactory = silent,
) -> Aligner:
    """``modgap align fit``: fit on every process (statistics merged), save on rank 0 with ``bad_rows.jsonl``
    when rows were skipped. ``command`` is recorded in the aligner's provenance."""
    from modgap.align.base import ARTIFACT_CONFIG

    check_replaceable(out, (ARTIFACT_CONFIG,), inputs=_store_paths(source, target))
    aligner, bad = _fit_method(method, params, source, target, on_bad, command, chunk_rows=chunk_rows,
                               device=device, backend=backend, store_sums=store_sums, progress=progress)  # fmt: skip
    if rank_and_world()[0] == 0:
        aligner.save(out)
        if bad.rows:
            bad.write(Path(out) / "bad_rows.jsonl")
    barrier()
    return aligner


def fit_and_apply(
    method: str,
    source: Any,
    target: Any,
    out: str | os.PathLike,
    *,
    params: dict[str, Any] | None = None,
    save_aligner: str | os.PathLike | None = None,
    on_bad: OnBad = "error",
    dtype: str | None = None,
    chunk_rows: int | None = None,
    device: torch.device | str = "cpu",
    backend: str | None = None,
    overwrite: bool = False,
    store_sums: bool = True,
    command: str | None = None,
    progress: ProgressFactory = silent,
) -> EmbeddingStore | None:
    """``modgap align run``: fit on every process, then rank 0 writes the aligned source store (and the
    aligner, with ``save_aligner``). Returns the store on rank 0, None elsewhere."""
    from modgap.align.base import ARTIFACT_CONFIG

    if Path(out).exists() and not overwrite:
        raise ModgapError(f"{out}: already exists (pass --overwrite to replace it)")
    inputs = _store_paths(source, target)
    check_replaceable(out, (MANIFEST_NAME,), inputs=[*inputs, save_aligner])
    if save_aligner is not None:
        check_replaceable(save_aligner, (ARTIFACT_CONFIG,), inputs=[*inputs, out], flag="--save-aligner")
        if Path(save_aligner).resolve() == Path(out).resolve():
            raise ModgapError(f"{out}: --save-aligner and --out name the same directory")
    aligner, bad = _fit_method(method, params, source, target, on_bad, command, chunk_rows=chunk_rows,
                               device=device, backend=backend, store_sums=store_sums, progress=progress)  # fmt: skip
    store = None
    if rank_and_world()[0] == 0:
        if save_aligner:
            aligner.save(save_aligner)
        store = apply_to_store(
            aligner,
            source,
            out,
            bad=bad,
            dtype=dtype,
            chunk_rows=chunk_rows,
            device=device,
            backend=backend,
            overwrite=overwrite,
            created_by=command,
            aligner_path=str(save_aligner) if save_aligner else None,
            progress=progress,
        )
    barrier()
    return store
