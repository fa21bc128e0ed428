"""Run directories: claimed with the settings they are built with, resumed only with settings that agree.

A run directory records its settings in a JSON file. Resuming compares them with the new settings; the
ones listed as ``may_change`` (how often to save, where to log, when to stop) may differ, any other
difference is refused with the names and both values, because continuing would mix two runs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from modgap.errors import ModgapError
from modgap.files import write_json


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
) -> bool:
    """Whether ``out`` may be used for a run with ``settings``; returns True when a recorded run is resumed.

    Without ``resume``, an existing non-empty directory is refused unless ``overwrite``. With ``resume``,
    a directory without recorded settings starts from scratch and one with other settings is refused.
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
        changed = settings_changes(before, settings, may_change)
        if changed:
            raise ModgapError(
                f"{out}: cannot resume, settings differ from the run being resumed: " + ", ".join(changed) + hint
            )
        return True
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ModgapError(f"{out}: already exists (pass --resume to continue it or --overwrite to start over)")
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
