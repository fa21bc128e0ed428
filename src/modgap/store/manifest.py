"""The manifest of an embedding store: what the vectors are, where they came from, which shards hold them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modgap.errors import ModgapError
from modgap.files import write_text

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "modgap-embedding-store"
FORMAT_VERSION = 1
DTYPES = ("float16", "float32")


@dataclass
class ShardInfo:
    file: str
    rows: int
    bytes: int
    checksum: str  # "xxh3_128:<hex>"
    # Sums of the shard's unit vectors (modgap.store.sums.UnitSums.to_json); absent in older stores.
    unit_sums: dict[str, Any] | None = None


@dataclass
class Manifest:
    dim: int
    dtype: str
    normalized: bool
    modality: str | None = None
    encoder: dict[str, Any] | None = None
    created_by: str | None = None
    metadata_columns: list[str] = field(default_factory=list)
    shards: list[ShardInfo] = field(default_factory=list)
    # Provenance added by later stages (the aligner that produced the store, for instance).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(s.rows for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for shard in d["shards"]:
            if shard["unit_sums"] is None:
                del shard["unit_sums"]
        d = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "count": self.count, **d}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> Manifest:
        if d.get("format") != FORMAT_NAME:
            raise ModgapError(f"{where}: not a modgap store manifest (format is {d.get('format')!r})")
        if d.get("version") != FORMAT_VERSION:
            raise ModgapError(f"{where}: unsupported store version {d.get('version')!r}")
        try:
            shards = [ShardInfo(**s) for s in d["shards"]]
            m = cls(
                dim=int(d["dim"]),
                dtype=str(d["dtype"]),
                normalized=bool(d["normalized"]),
                modality=d.get("modality"),
                encoder=d.get("encoder"),
                created_by=d.get("created_by"),
                metadata_columns=list(d.get("metadata_columns", [])),
                shards=shards,
                extra=dict(d.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModgapError(f"{where}: malformed manifest ({e})") from e
        if m.dtype not in DTYPES:
            raise ModgapError(f"{where}: dtype {m.dtype!r} is not one of {DTYPES}")
        if m.dim <= 0:
            raise ModgapError(f"{where}: dim must be positive, got {m.dim}")
        if "count" in d and int(d["count"]) != m.count:
            raise ModgapError(
                f"{where}: manifest count {d['count']} disagrees with the sum of its shard rows {m.count}"
            )
        return m

    @classmethod
    def load(cls, store_dir: Path) -> Manifest:
        path = Path(store_dir) / MANIFEST_NAME
        if not Path(store_dir).is_dir():
            raise ModgapError(f"{store_dir}: no such store directory")
        if not path.is_file():
            raise ModgapError(f"{store_dir}: not an embedding store (no {MANIFEST_NAME})")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModgapError(f"{path}: manifest is not valid JSON ({e})") from e
        return cls.from_dict(d, str(path))

    def save(self, store_dir: Path) -> None:
        """Write atomically: a reader sees the old manifest or the new one, never half of one."""
        write_text(Path(store_dir) / MANIFEST_NAME, json.dumps(self.to_dict(), indent=2) + "\n")
