"""Run directories: claimed with the settings they are built with, resumed only with settings that agree.

A run directory records its settings in a JSON file. Resuming compares them with the new settings; the
ones listed as ``may_change`` (how often to save, where to log, when to stop) may differ, any other
difference is refused with the names and both values, because continuing would mix two runs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from modgap.errors import ModgapError
from modgap.files import check_replaceable, write_json

CHECKPOINTS = "checkpoints"  # the run directory's checkpoint folder
INPUTS_KEY = "input_fingerprints"  # recorded settings: a content hash of every input, checked on resume


def settings_changes(before: Mapping[str, Any], now: Mapping[str, Any], may_change: Collection[str] = ()) -> list[str]:
    """``"name (old -> new)"`` for every setting that differs and may not."""
    keys = [k for k in now if k not in may_change and before.get(k) != now[k]]
    keys += [k for k in before if k not in now and k not in may_change]
    return [f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in sorted(set(keys))]


def check_run_dir(
    out: str | os.PathLike,
    settings: Mapping[str, Any],
    *,
    resume: bool,
    overwrite: bool = False,
    may_change: Collection[str] = (),
    settings_file: str = "settings.json",
    hint: str = "",
    inputs: Iterable[str | os.PathLike | None] = (),
) -> bool:
    """Whether ``out`` may be used for a run with ``settings``; returns True when a recorded run is resumed.

    Without ``resume``, an existing non-empty directory is refused unless ``overwrite``, and ``overwrite``
    replaces only a run directory (one holding ``settings_file`` or checkpoints) that holds none of the run's
    ``inputs``. With ``resume``, a directory without recorded settings starts from scratch and one with other
    settings is refused.
    """
    out = Path(out)
    saved = out / settings_file
    if resume:
        if not saved.is_file():
            return False
        try:
            before = json.loads(saved.read_text())
        except json.JSONDecodeError as e:
            raise ModgapError(f"{saved}: not valid JSON ({e})") from e
        was, now = before.get(INPUTS_KEY), settings.get(INPUTS_KEY)
        if isinstance(was, dict) and isinstance(now, dict):
            edited = sorted(p for p in set(was) & set(now) if was[p] != now[p])
            if edited:
                raise ModgapError(
                    f"{out}: cannot resume: the content of {', '.join(edited)} changed since the run began "
                    "(continuing would train on other data; start over with --overwrite)"
                )
        changed = settings_changes(before, settings, may_change)
        if changed:
            raise ModgapError(
                f"{out}: cannot resume, settings differ from the run being resumed: " + ", ".join(changed) + hint
            )
        return True
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ModgapError(f"{out}: already exists (pass --resume to continue it or --overwrite to start over)")
        check_replaceable(out, (settings_file, CHECKPOINTS), inputs=[p for p in inputs if p is not None])
    return False


def record_settings(out: str | os.PathLike, settings: Mapping[str, Any], settings_file: str = "settings.json") -> None:
    """Write the settings the run directory is built with (atomically)."""
    write_json(Path(out) / settings_file, dict(settings))


def clear_run_dir(out: str | os.PathLike) -> None:
    """Remove a run directory that ``--overwrite`` replaces."""
    shutil.rmtree(out, ignore_errors=True)


def claim_run_dir(
    out: str | os.PathLike,
    settings: Mapping[str, Any],
    *,
    may_change: Collection[str] = (),
    settings_file: str = "settings.json",
    hint: str = "",
) -> bool:
    """For single-process jobs whose every step resumes (the demo): check, then record. True when resuming."""
    resuming = check_run_dir(out, settings, resume=True, may_change=may_change, settings_file=settings_file, hint=hint)
    if not resuming:
        Path(out).mkdir(parents=True, exist_ok=True)
        record_settings(out, settings, settings_file)
    return resuming
