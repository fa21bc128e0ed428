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
import errno
import io
import json
import os
import re
import shutil
import socket
import types
import typing
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from modgap.errors import ModgapError

TMP_PREFIX = ".tmp-"  # hidden temporary names; a later writer may remove leftovers that carry it
ROW_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")

T = TypeVar("T")
# What follows a temporary's prefix: HOST-PID-random. The host keeps a writer on another machine of a shared
# file system from being taken for a dead local process.
_TEMP_TAIL = re.compile(r"([A-Za-z0-9]{1,16})-(\d+)-(?:old-)?[0-9a-f]{6,8}")
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16] or "host"


def _writer_tag() -> str:
    return f"{_HOST}-{os.getpid()}"


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process
    return True


def remove_stale_temps(parent: Path, prefix: str) -> None:
    """Remove ``prefix + HOST-PID-…`` leftovers in ``parent`` whose writer (a process of this host) is no longer
    running: what a killed run left behind. A live writer's temporaries, and other hosts', are never touched."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        found = _TEMP_TAIL.fullmatch(entry.name[len(prefix) :])
        if not found or found[1] != _HOST or int(found[2]) == os.getpid() or _pid_alive(int(found[2])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@contextlib.contextmanager
def disk_errors(where: str | os.PathLike) -> Iterator[None]:
    """A full disk (or quota) becomes one line naming the folder, not a traceback."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ModgapError(f"no space left on {where} (nothing was written)") from e
        raise


def _file_temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, binary: bool = False) -> Iterator[Any]:
    """A text (or ``binary``) handle on a temporary sibling that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise ModgapError(f"{path}: is a directory; name a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_file_temp_prefix(path)}{_writer_tag()}-{uuid.uuid4().hex[:6]}")
    try:
        with disk_errors(path.parent), tmp.open("wb") if binary else tmp.open("w", encoding="utf-8") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    remove_stale_temps(path.parent, _file_temp_prefix(path))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text``; a reader sees the old file or the new one, never half of one."""
    with atomic_file(path) as handle:
        handle.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path, binary=True) as handle:
        handle.write(data)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Rows written one line at a time (a generator is never held whole), the file renamed into place."""
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_replaceable(
    dest: str | os.PathLike, markers: Sequence[str], inputs: Iterable[str | os.PathLike] = (), flag: str = "--out"
) -> None:
    """The one rule for what ``--overwrite`` may delete: an empty directory, or one modgap made (it holds one
    of ``markers``: a store manifest, a run's settings file, an aligner's JSON, …), and never a directory that
    holds one of the command's ``inputs`` or the working folder. Anything else is refused, untouched."""
    dest = Path(dest)
    if not dest.exists() and not dest.is_symlink():
        return
    real = dest.resolve()
    for src in inputs:
        if src is not None and _inside(Path(src).resolve(), real):
            raise ModgapError(f"{dest}: not replaced: it holds the input {src} ({flag} must not contain an input)")
    if _inside(Path.cwd().resolve(), real):
        raise ModgapError(f"{dest}: not replaced: it holds the working folder; choose another {flag}")
    if dest.is_symlink() or not dest.is_dir():
        raise ModgapError(f"{dest}: not replaced: it is not a directory modgap wrote; choose another {flag}")
    if not any(dest.iterdir()) or any((dest / m).exists() for m in markers):
        return
    raise ModgapError(
        f"{dest}: not replaced: it holds no {' or '.join(markers) or 'modgap marker'}, so it is not a modgap output "
        f"of this kind; remove it yourself or choose another {flag}"
    )


@contextlib.contextmanager
def atomic_output_dir(
    dest: str | os.PathLike,
    overwrite: bool = False,
    *,
    markers: Sequence[str] = (),
    inputs: Iterable[str | os.PathLike] = (),
) -> Iterator[Path]:
    """Yield a temporary sibling directory that becomes ``dest`` only if the block succeeds.

    An existing ``dest`` is refused unless ``overwrite``, and then replaced only as :func:`check_replaceable`
    allows (``markers``: the files that show modgap wrote a directory of this kind)."""
    dest = Path(dest)
    inputs = [p for p in inputs if p is not None]
    if dest.exists():
        if not overwrite:
            raise ModgapError(f"{dest}: already exists (pass --overwrite to replace it)")
        check_replaceable(dest, markers, inputs)
    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{TMP_PREFIX}{dest.name}-"
    tmp = dest.with_name(f"{prefix}{_writer_tag()}-{uuid.uuid4().hex[:8]}")
    with disk_errors(dest.parent):
        tmp.mkdir()
    try:
        with disk_errors(dest.parent):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        old = dest.with_name(f"{prefix}{_writer_tag()}-old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    remove_stale_temps(dest.parent, prefix)


# ---------------------------------------------------------------------------------------------
# Reading text and rows
# ---------------------------------------------------------------------------------------------
def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file (a leading BOM dropped); bytes that are not UTF-8 are an error naming the file, the
    line and the byte offset, never a traceback or a silent replacement character."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ModgapError(f"{path}:{line}: not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r})") from e


def read_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file (see :func:`read_text`), without their line breaks."""
    return read_text(path).splitlines()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """One JSON object per non-empty line; a bad line is an error naming ``path:line``."""
    path = Path(path)
    rows = []
    for n, line in enumerate(read_text(path).split("\n"), 1):
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
            rows = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise ModgapError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ModgapError(f"{path}: expected a list of objects (JSON) or one object per line (JSONL)")
        return rows
    if suffix in (".csv", ".tsv"):
        with io.StringIO(read_text(path), newline="") as f:
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


def content_fingerprint(path: str | os.PathLike, *, part: int = 2**20) -> str | None:
    """A hash of what a job reads from ``path``, recorded so that a resume with changed inputs is refused.

    A file: its whole content. A store: its manifest (which holds every shard's checksum). Another directory
    (a model): the names and sizes of its files, the whole of small ones and the first and last ``part``
    bytes of large ones (a weight file is not read whole at every start). None when ``path`` does not exist.
    """
    import xxhash

    path = Path(path)
    h = xxhash.xxh3_128()
    if path.is_file():
        with open(path, "rb") as f:
            while block := f.read(16 * part):
                h.update(block)
    elif path.is_dir():
        files = [path / "manifest.json"] if (path / "manifest.json").is_file() else sorted(path.rglob("*"))
        for f in files:
            if not f.is_file() or f.name.startswith("."):
                continue
            size = f.stat().st_size
            h.update(f"{f.relative_to(path)}\0{size}\0".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(part))
                if size > 2 * part:
                    fh.seek(size - part)
                h.update(fh.read(part))
    else:
        return None
    return h.hexdigest()


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
    text = read_text(path)
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModgapError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    except Exception as e:  # yaml.YAMLError: one line with the place, not PyYAML's multi-line report
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        why = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ModgapError(f"{path}{line}: cannot parse ({why})") from e
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


def _typed(value: Any, tp: Any, name: str, where: str) -> Any:
    """``value`` as the field's type: YAML reads ``1e-4`` as a string and ``3`` as an int where a float is
    meant; anything that is not the type is an error naming the setting."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if value is None:
        return value
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    try:
        if tp is float and isinstance(value, int | float | str) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    except ValueError:
        pass
    expected = {float: (int, float), int: (int,), bool: (bool,), str: (str, os.PathLike)}.get(tp)
    if expected and (not isinstance(value, expected) or (tp is not bool and isinstance(value, bool))):
        raise ModgapError(f"{where}: setting {name} must be {tp.__name__}, got {value!r}")
    if typing.get_origin(tp) is list and not isinstance(value, list | tuple):
        raise ModgapError(f"{where}: setting {name} must be a list, got {value!r}")
    return value


def setting_like(base: type, name: str, default: Any, help: str | None = None) -> Any:
    """The field ``name`` of dataclass ``base`` with another default (and help) for a subclass: a recipe
    whose batch size or learning rate differs restates the default, not the setting."""
    field = next(f for f in dataclasses.fields(base) if f.name == name)
    return setting(default, help or field.metadata["help"], field.metadata.get("flag"))


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str, **fixed: Any) -> T:
    """``cls(**data, **fixed)`` for a dataclass, refusing keys it does not have (a typo is an error, not a no-op)
    and values that are not of the setting's type."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ModgapError(f"{where}: unknown settings {unknown}")
    hints = typing.get_type_hints(cls)
    data = {k: _typed(v, hints[k], k, where) for k, v in data.items()}
    try:
        return cls(**{**data, **fixed})
    except TypeError as e:
        raise ModgapError(f"{where}: {e}") from e


def load_dataclass(
    cls: type[T], path: str | os.PathLike | None, overrides: Mapping[str, Any] | None = None, **fixed: Any
) -> T:
    """A dataclass from a JSON/YAML file (or none), with ``overrides`` (e.g. options given on the command line)
    on top and ``fixed`` (what the command decides, e.g. the stage) over both."""
    settings = read_settings(path) if path else {}
    return from_mapping(cls, {**settings, **(overrides or {})}, str(path or "settings"), **fixed)
