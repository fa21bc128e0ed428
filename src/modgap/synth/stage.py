"""What every synthesis stage shares: its input rows (id + text), its shard of them, its prompt template, and
its three outputs beside ``OUT`` — the rows, ``OUT.failures.jsonl`` and ``OUT.meta.json`` — written whole."""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import Any

from modgap.distributed import rank_slice
from modgap.errors import ModgapError
from modgap.files import read_rows, write_json, write_jsonl


def read_texts(path: str | os.PathLike, id_column: str, text_column: str, what: str) -> list[tuple[str, str]]:
    """(id, text) of every row; errors name the file and row (missing column, empty text, duplicate id)."""
    rows = read_rows(path, what=f"{what} file")
    if not rows:
        raise ModgapError(f"{path}: no {what}s")
    texts, seen = [], {}
    for n, row in enumerate(rows, 1):
        if id_column not in row:
            raise ModgapError(f"{path}: row {n} has no {id_column!r} column (has {sorted(row)}); see --id-column")
        rid, text = str(row[id_column]), row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise ModgapError(f"{path}: row {n} (id {rid!r}) has no text in {text_column!r}; see --text-column")
        if rid in seen:
            raise ModgapError(f"{path}: rows {seen[rid]} and {n} share the id {rid!r}")
        seen[rid] = n
        texts.append((rid, text.strip()))
    return texts


def shard_bounds(total: int, shard: tuple[int, int]) -> tuple[int, int]:
    """The contiguous block [lo, hi) of ``total`` inputs that shard ``I/N`` does."""
    index, count = shard
    if not 0 <= index < count:
        raise ModgapError(f"--shard {index}/{count}: expected 0 <= I < N")
    return rank_slice(total, index, count)


def template(prompt: str | None, shipped: str, placeholder: str) -> str:
    """``prompt``, or the template file ``shipped`` in the package; it must hold ``placeholder``."""
    text = prompt if prompt is not None else resources.files("modgap.synth").joinpath(shipped).read_text("utf-8")
    if placeholder not in text:
        raise ModgapError(f"the prompt template has no {placeholder} placeholder")
    return text


def write_outputs(
    out: Path, rows: list[dict[str, Any]], failures: list[dict[str, Any]], prompt: str, meta: dict[str, Any]
) -> None:
    """The rows, the failures and the meta (with the prompt's hash) beside ``out``, each written whole."""
    write_jsonl(out, rows)
    write_jsonl(out.parent / f"{out.stem}.failures.jsonl", failures)
    write_json(out.parent / f"{out.stem}.meta.json", {"prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
                                                      **meta})  # fmt: skip
