"""Merging sub-stores (one per rank of a multi-process job) into one store, crash-safe."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from modgap.files import write_text
from modgap.store.manifest import MANIFEST_NAME, Manifest


def merge_sub_stores(out: str | os.PathLike, subs: Sequence[str | os.PathLike], concat: Sequence[str] = ()) -> Manifest:
    """Move the shards of every store in ``subs`` into ``out`` (created or appended to), in order, and
    remove the sub-stores. Files named in ``concat`` (line-oriented reports such as ``failures.jsonl``)
    are concatenated into ``out``.

    Each shard is unlisted from its sub-store, moved, then listed in ``out``: a crash in between leaves an
    unlisted file that the next writer removes and the next run recomputes; a row is never listed twice.
    """
    out = Path(out)
    subs = [Path(s) for s in subs]
    first = Manifest.load(subs[0])
    if (out / MANIFEST_NAME).exists():
        merged = Manifest.load(out)
    else:
        merged = Manifest(
            dim=first.dim,
            dtype=first.dtype,
            normalized=first.normalized,
            modality=first.modality,
            encoder=first.encoder,
            created_by=first.created_by,
            metadata_columns=list(first.metadata_columns),
            extra=dict(first.extra),
        )
    taken = {s.file for s in merged.shards}
    lines: dict[str, list[str]] = {name: [] for name in concat}
    for r, sub in enumerate(subs):
        m = Manifest.load(sub)
        while m.shards:
            shard = m.shards.pop(0)
            m.save(sub)
            k = 0
            while (name := f"shard-r{r}-{k:05d}.arrow") in taken:
                k += 1
            os.replace(sub / shard.file, out / name)
            taken.add(name)
            shard.file = name
            merged.shards.append(shard)
            merged.save(out)
        for name in concat:
            if (sub / name).exists():
                lines[name] += (sub / name).read_text().splitlines()
        shutil.rmtree(sub)
    merged.save(out)
    for name, found in lines.items():
        write_text(out / name, "".join(line + "\n" for line in found))
    return merged
