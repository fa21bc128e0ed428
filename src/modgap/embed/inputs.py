"""Inputs of `modgap embed`: lists of (id, text) and (id, image) items read from common layouts.

Supported: the ReVision ``dataset.json`` ({"images": [{"id", "image"}], "texts": [{"id", "text"}]}),
JSONL, CSV and Parquet with id/text/image columns, a folder of images (ids are relative paths), and
🤗 datasets saved with ``save_to_disk`` (an image column may hold paths or decoded images).
Everything is validated before any image is opened or any text encoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modgap.errors import ModgapError
from modgap.files import read_rows, read_text

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Inputs:
    """Ids and payloads of each modality, in input order. Images are paths, or row numbers of ``dataset``."""

    texts: list[tuple[str, str]] = field(default_factory=list)
    images: list[tuple[str, Any]] = field(default_factory=list)
    dataset: Any = None  # a 🤗 Dataset whose image column holds decoded images
    image_column: str = "image"
    source: str = ""


@dataclass
class Columns:
    id: str = "id"
    text: str = "text"
    image: str = "image"


def read_inputs(path: str | Path, image_root: str | Path | None = None, columns: Columns | None = None) -> Inputs:
    path = Path(path)
    columns = columns or Columns()
    if not path.exists():
        raise ModgapError(f"{path}: input not found")
    if path.is_dir() and (path / "dataset_info.json").exists():
        inputs = _hf_dataset(path, columns)
    elif path.is_dir():
        inputs = _image_folder(path)
    elif path.name.endswith(".json") and not path.name.endswith(".jsonl"):
        inputs = _revision_json(path, image_root)
    elif path.suffix in (".jsonl", ".csv", ".tsv", ".parquet"):
        inputs = _records(path, read_rows(path, what="input file"), columns, image_root)
    else:
        raise ModgapError(f"{path}: unknown input format (dataset.json, .jsonl, .csv, .tsv, .parquet, a folder)")
    inputs.source = str(path)
    _check_unique(path, "text", inputs.texts)
    _check_unique(path, "image", inputs.images)
    return inputs


def _check_unique(path: Path, what: str, items: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    dupes = sorted({k for k, _ in items if k in seen or seen.add(k)})  # type: ignore[func-returns-value]
    if dupes:
        raise ModgapError(f"{path}: duplicate {what} id(s): {', '.join(map(repr, dupes[:10]))}")


def _resolve(root: Path, p: str) -> str:
    q = Path(p)
    return str(q if q.is_absolute() else root / q)


def _records(path: Path, rows: list[dict[str, Any]], cols: Columns, image_root: str | Path | None) -> Inputs:
    if not rows:
        raise ModgapError(f"{path}: no rows")
    names = set().union(*(r.keys() for r in rows[:100]))
    if cols.id not in names:
        raise ModgapError(f"{path}: no {cols.id!r} column (columns: {sorted(names)}); see --id-column")
    if cols.text not in names and cols.image not in names:
        raise ModgapError(f"{path}: neither a {cols.text!r} nor an {cols.image!r} column (columns: {sorted(names)})")
    root = Path(image_root) if image_root else path.parent
    out = Inputs()
    for n, r in enumerate(rows):
        if r.get(cols.id) in (None, ""):
            raise ModgapError(f"{path}: row {n} has no id")
        k = str(r[cols.id])
        if r.get(cols.text) is not None:
            out.texts.append((k, str(r[cols.text])))
        if r.get(cols.image) not in (None, ""):
            out.images.append((k, _resolve(root, str(r[cols.image]))))
    return out


def _revision_json(path: Path, image_root: str | Path | None) -> Inputs:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ModgapError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not ({"images", "texts"} & set(data)):
        raise ModgapError(f'{path}: expected {{"images": [{{"id", "image"}}], "texts": [{{"id", "text"}}]}}')
    root = Path(image_root) if image_root else path.parent
    out = Inputs()
    for what, key, target in (("images", "image", out.images), ("texts", "text", out.texts)):
        for n, r in enumerate(data.get(what, [])):
            if not isinstance(r, dict) or r.get("id") in (None, "") or key not in r:
                raise ModgapError(f"{path}: {what}[{n}] needs 'id' and '{key}'")
            target.append((str(r["id"]), _resolve(root, r[key]) if key == "image" else str(r[key])))
    return out


def _image_folder(path: Path) -> Inputs:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ModgapError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return Inputs(images=[(str(p.relative_to(path)), str(p)) for p in files])


def _hf_dataset(path: Path, cols: Columns) -> Inputs:
    from datasets import Image as ImageFeature
    from datasets import load_from_disk

    ds = load_from_disk(str(path))
    if cols.id not in ds.column_names:
        raise ModgapError(f"{path}: no {cols.id!r} column (columns: {ds.column_names}); see --id-column")
    out = Inputs()
    ids = [str(k) for k in ds[cols.id]]
    if cols.text in ds.column_names:
        out.texts = [(k, str(t)) for k, t in zip(ids, ds[cols.text], strict=True) if t is not None]
    if cols.image in ds.column_names:
        if isinstance(ds.features[cols.image], ImageFeature):
            out.dataset, out.image_column = ds, cols.image
            out.images = list(zip(ids, range(len(ds)), strict=True))
        else:
            out.images = [(k, _resolve(path, str(p))) for k, p in zip(ids, ds[cols.image], strict=True) if p]
    if not out.texts and not out.images:
        raise ModgapError(f"{path}: neither a {cols.text!r} nor an {cols.image!r} column")
    return out
