"""Completed requests, persisted as they complete: SQLite in WAL mode, keyed by what determines the reply.

A key is a hash of the backend's name, the messages and the sampling settings with the sample's seed, so
a rerun — after ``kill -9``, Ctrl-C or a dead server — finds every reply that came back and sends only what
is missing; a change of prompt, model or settings makes new keys instead of reusing stale replies.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from modgap.synth.llm import Messages, Reply, Sampling


def request_key(model: str, messages: Messages, sampling: Sampling, seed: int, extra: str | None = None) -> str:
    """``extra`` names anything else the request carries (a structured-output schema's hash)."""
    parts: list[object] = [model, messages, sampling.as_dict(), seed]
    if extra is not None:
        parts.append(extra)
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ReplyCache:
    def __init__(self, path: str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self.db = sqlite3.connect(str(path), isolation_level=None)  # autocommit: each reply is durable at once
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")

    def get(self, key: str) -> Reply | None:
        row = self.db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return Reply(**json.loads(row[0])) if row else None

    def put(self, key: str, reply: Reply) -> None:
        data: dict[str, Any] = reply.__dict__
        self.db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?)", (key, json.dumps(data, ensure_ascii=False)))

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        self.db.close()
