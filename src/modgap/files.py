"""Files written whole or not at all, rows read with ``path:line`` errors, settings files read into dataclasses.

Writes go to a temporary sibling that is renamed into place: a reader (or a rerun after a crash) sees the
old file or the new one, never half of one. Every row-file reader in modgap (embed inputs, training data,
gap pairs, caption references, synthesis seeds) goes through :func:`read_rows`, so a bad line is always
reported as ``FILE:LINE: why``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from modgap.errors import ModgapError

TMP_PREFIX = ".tmp-"  # hidden temporary names; a later writer may remove leftovers that carry it
ROW_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Any]:
    """A text handle on a temporary sibling that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            yield handle
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text``; a reader sees the old file or the new one, never half of one."""
    with atomic_file(path) as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Rows written one line at a time (a generator is never held whole), the file renamed into place."""
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


@contextlib.contextmanager
def atomic_output_dir(dest: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that becomes ``dest`` only if the block succeeds."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise ModgapError(f"{dest}: already exists (pass --overwrite to replace it)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{TMP_PREFIX}{dest.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        old = dest.with_name(f"{TMP_PREFIX}{dest.name}-old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


# ---------------------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """One JSON object per non-empty line; a bad line is an error naming ``path:line``."""
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ModgapError(f"{path}:{n}: not valid JSON ({e})") from e
            if not isinstance(row, dict):
                raise ModgapError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def read_rows(path: str | os.PathLike, *, what: str = "data file") -> list[dict[str, Any]]:
    """Rows of a JSONL, JSON (a list of objects), CSV/TSV (header row) or Parquet file, as dicts.

    Errors name the file and, for text formats, the line.
    """
    path = Path(path)
    if not path.is_file():
        raise ModgapError(f"{path}: no such {what}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ModgapError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ModgapError(f"{path}: expected a list of objects (JSON) or one object per line (JSONL)")
        return rows
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, dialect="excel-tab" if suffix == ".tsv" else "excel")
            rows = []
            for row in reader:
                if None in row:  # more cells than header names
                    raise ModgapError(f"{path}:{reader.line_num}: more fields than the header names")
                rows.append(row)
        return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:
            raise ModgapError(f"{path}: not a readable Parquet file ({e})") from e
    raise ModgapError(f"{path}: unknown row format {suffix!r} (one of {', '.join(ROW_SUFFIXES)})")


# ---------------------------------------------------------------------------------------------
# Settings files → dataclasses
# ---------------------------------------------------------------------------------------------
def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Pairs file: CSV/TSV with a header naming ``text_id`` and ``image_id``, or JSONL/JSON with those keys."""
    path = Path(path)
    rows = read_rows(path, what="pairs file")
    pairs: list[tuple[str, str]] = []
    for n, row in enumerate(rows, 1):
        if row.get("text_id") in (None, "") or row.get("image_id") in (None, ""):
            raise ModgapError(f"{path}: row {n} needs text_id and image_id (has {sorted(row)})")
        pairs.append((str(row["text_id"]), str(row["image_id"])))
    if not pairs:
        raise ModgapError(f"{path}: no pairs")
    return pairs


def read_settings(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON or YAML mapping of settings."""
    path = Path(path)
    if not path.is_file():
        raise ModgapError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:
        raise ModgapError(f"{path}: cannot parse ({e})") from e
    if not isinstance(data, dict):
        raise ModgapError(f"{path}: expected a mapping of settings")
    return data


def setting(default: Any, help: str, flag: str | None = None) -> Any:
    """A dataclass field that carries its command-line help (and its flag when it is not ``--field-name``), so
    a command's options are written once, on the config dataclass. ``list`` as default means an empty list."""
    meta = {"help": help, **({"flag": flag} if flag else {})}
    if default is list:
        return dataclasses.field(default_factory=list, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str, **fixed: Any) -> T:
    """``cls(**data, **fixed)`` for a dataclass, refusing keys it does not have (a typo is an error, not a no-op)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ModgapError(f"{where}: unknown settings {unknown}")
    try:
        return cls(**{**data, **fixed})
    except TypeError as e:
        raise ModgapError(f"{where}: {e}") from e


def load_dataclass(
    cls: type[T], path: str | os.PathLike, overrides: Mapping[str, Any] | None = None, **fixed: Any
) -> T:
    """A dataclass from a JSON/YAML file, with ``overrides`` (e.g. options given on the command line) on top."""
    return from_mapping(cls, {**read_settings(path), **(overrides or {})}, str(path), **fixed)
