"""A content-addressed request cache in SQLite: every finished call is free the second time.

The key is a hash of (backend model id, call kind, rendered messages or text, sampling params
including the seed) and never of code, so editing a method does not silently invalidate (or
keep) answers: only what was actually sent matters.

>>> cache = RequestCache(Path("/tmp/c.sqlite"))            # doctest: +SKIP
>>> k = request_key("m", "chat", [{"role": "user", "content": "hi"}], {"seed": 1})
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from instructforge.llm.base import Completion, request_key

__all__ = ["RequestCache", "request_key"]


class RequestCache:
    """SQLite (WAL) table of key -> completion. Safe for several processes on one file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a killed process (not a power cut) and is much faster.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, model TEXT, kind TEXT, "
            "response TEXT NOT NULL, created REAL)"
        )

    def get(self, key: str) -> Completion | None:
        row = self.db.execute("SELECT response FROM calls WHERE key=?", (key,)).fetchone()
        return Completion.from_dict(json.loads(row[0]), cached=True) if row else None

    def put(self, key: str, model: str, kind: str, completion: Completion) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO calls VALUES (?,?,?,?,?)",
            (key, model, kind, json.dumps(completion.to_dict(), ensure_ascii=False), time.time()),
        )

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        self.db.close()
