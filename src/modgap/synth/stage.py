"""What every synthesis stage shares: its input rows (id + text), its shard of them, its prompt template, and
its three outputs beside ``OUT`` — the rows, ``OUT.failures.jsonl`` and ``OUT.meta.json`` — each appearing
whole or not at all. Rows and failures are streamed to temporary files as each window of inputs is done
(nothing per row stays in memory), and renamed into place when the run completes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from modgap.distributed import rank_slice
from modgap.errors import ModgapError
from modgap.files import atomic_file, read_rows, read_text, write_json
from modgap.hub import MODEL_RECORD, declared_prompts

Emit = Callable[[dict[str, Any]], None]


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


def template(
    prompt: str | None,
    shipped: str,
    placeholder: str,
    prompt_file: str | None = None,
    *,
    backend: Any = None,
    stage: str = "",
) -> tuple[str, str]:
    """(template, where it came from): ``prompt``, else the file ``prompt_file``, else the template the
    backend's model declares for ``stage`` (:func:`modgap.hub.declared_prompts`), else the template file
    ``shipped`` in the package. It must hold ``placeholder``."""
    source = "given"
    if prompt is None and prompt_file:
        prompt, source = read_text(prompt_file), f"prompt file {prompt_file}"
    if prompt is None and backend is not None:
        model = getattr(backend, "model_id", "")
        if (declared := declared_prompts(model).get(stage)) is not None:
            prompt, source = declared, f"declared by {model} ({MODEL_RECORD}, prompts.{stage})"
    if prompt is None:
        prompt, source = resources.files("modgap.synth").joinpath(shipped).read_text("utf-8"), f"shipped {shipped}"
    if placeholder not in prompt:
        raise ModgapError(f"the prompt template ({source}) has no {placeholder} placeholder")
    return prompt, source


def failures_path(out: Path) -> Path:
    return out.parent / f"{out.stem}.failures.jsonl"


@contextlib.contextmanager
def streamed_outputs(out: Path) -> Iterator[tuple[Emit, Emit]]:
    """``(emit_row, emit_failure)`` writing JSONL lines to temporary files that become ``out`` and its failures
    file only if the block succeeds."""
    with atomic_file(out) as rows, atomic_file(failures_path(out)) as failures:
        yield (lambda r: rows.write(json.dumps(r) + "\n")), (lambda f: failures.write(json.dumps(f) + "\n"))


def run_streamed(run: Callable[[Emit, Emit], Awaitable[None]], out: Path, backend: Any, cache: Any) -> None:
    """Run a stage's coroutine ``run(emit_row, emit_failure)`` with streamed outputs (see
    :func:`streamed_outputs`); the backend and the reply cache are closed however it ends."""

    async def main(emit_row: Emit, emit_failure: Emit) -> None:
        try:
            await run(emit_row, emit_failure)
        finally:
            await backend.close()

    try:
        with streamed_outputs(out) as (emit_row, emit_failure):
            asyncio.run(main(emit_row, emit_failure))
    finally:
        cache.close()


def write_meta(out: Path, prompt: str, backend: Any, settings: Any, **meta: Any) -> None:
    """``OUT.meta.json``: the model, the prompt template's hash, the sampling and other settings, and ``meta``."""
    write_json(
        out.parent / f"{out.stem}.meta.json",
        {
            "model": backend.name,
            "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
            "sampling": settings.sampling.as_dict(),
            "settings": settings.recorded(),
            **meta,
        },
    )


class DistinctNgrams:
    """Distinct-n (Li et al. 2016) counted as texts arrive: distinct n-grams over all n-grams."""

    def __init__(self, orders: tuple[int, ...] = (1, 2, 3)):
        self.seen: dict[int, set[int]] = {n: set() for n in orders}
        self.total = dict.fromkeys(orders, 0)

    def add(self, text: str) -> None:
        words = text.lower().split()
        for n, seen in self.seen.items():
            grams = [hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)]
            seen.update(grams)
            self.total[n] += len(grams)

    def figures(self) -> dict[str, float]:
        return {f"distinct-{n}": len(self.seen[n]) / t if t else 0.0 for n, t in self.total.items()}
