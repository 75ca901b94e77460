"""The one record schema every method writes and every command reads.

A record is plain JSON: one line of ``data/records.jsonl`` (kept) or ``rejected.jsonl``
(dropped, with a ``rejection``).  See ``docs/records.md``.

>>> r = new_record("seed-1", "Name three fruits.", method="input")
>>> instruction(r)
'Name three fruits.'
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1

Record = dict[str, Any]
"""A record is a JSON object with these keys:

- ``schema_version`` (int): currently 1.
- ``id`` (str): unique, deterministic id (stable across reruns, so resume never duplicates).
- ``messages`` (list of ``{"role": ..., "content": ...}``): the chat; the first user message
  is the instruction, assistant messages are responses.
- ``method`` (str): what produced it: ``input``, ``respond``, ``evol_instruct``,
  ``auto_evol``, ``magpie``.
- ``source`` (dict): where the root input came from: ``{"file", "line", "id"}`` (may be empty).
- ``lineage`` (dict or null): for evolved records ``{"seed_id", "parent_id", "round",
  "operation", "history": [instruction at each round, seed first], "normalisations": [...]}``.
- ``metadata`` (dict): free-form facts: ``finish_reason``, ``model``, ``usage``, ``category``,
  ratings, tags...
- ``status`` (str): ``kept`` or ``rejected``.
- ``rejection`` (dict, rejected records only): ``{"stage", "rule", "reason", "evidence"}``.
"""


def new_record(
    record_id: str,
    instruction_text: str | None = None,
    *,
    method: str,
    messages: list[dict[str, str]] | None = None,
    source: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Record:
    """Build a record; give either ``instruction_text`` or a full ``messages`` list."""
    if messages is None:
        messages = [] if instruction_text is None else [{"role": "user", "content": instruction_text}]
    return {
        "schema_version": SCHEMA_VERSION,
        "id": record_id,
        "messages": messages,
        "method": method,
        "source": source or {},
        "lineage": lineage,
        "metadata": metadata or {},
        "status": "kept",
    }


def instruction(record: Record) -> str:
    """The first user message's text ('' when there is none)."""
    for m in record.get("messages") or []:
        if m.get("role") == "user":
            return m.get("content") or ""
    return ""


def response(record: Record) -> str:
    """The last assistant message's text ('' when there is none)."""
    for m in reversed(record.get("messages") or []):
        if m.get("role") == "assistant":
            return m.get("content") or ""
    return ""


@dataclass(frozen=True)
class Rejection:
    """Why a text was dropped (the fields of a record's ``rejection``)."""

    rule: str
    reason: str
    evidence: Any = None


ROLES = ("system", "user", "assistant")


def messages_problem(messages: Any, field: str = "messages") -> str | None:
    """Why ``messages`` is not a chat every command can read (a list of ``{"role",
    "content"}`` objects, roles among :data:`ROLES`, contents strings), or None when it is.
    Callers prefix the file and line.

    >>> messages_problem([{"role": "user", "content": "Hi"}]) is None
    True
    >>> messages_problem([{"role": "human", "content": "Hi"}])
    "field 'messages[0].role' is 'human'; expected one of system, user, assistant"
    """
    if not isinstance(messages, list):
        return f"field {field!r} must be a list of {{role, content}} objects"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"field '{field}[{i}]' must be an object"
        if m.get("role") not in ROLES:
            return (f"field '{field}[{i}].role' is {m.get('role')!r}; expected one of "
                    f"{', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            return f"field '{field}[{i}].content' must be a string"
    return None


def rejected(record: Record, *, stage: str, rule: str, reason: str, evidence: Any = None) -> Record:
    """A copy of ``record`` marked rejected, with why (for ``rejected.jsonl``)."""
    out = dict(record)
    out["status"] = "rejected"
    out["rejection"] = {"stage": stage, "rule": rule, "reason": reason, "evidence": evidence}
    return out


def id_problem(rid: str) -> str | None:
    """Why ``rid`` cannot be a record id, or None when it can. ``state/done.txt`` holds one
    id a line, so an id with a line break could never be marked done.

    >>> id_problem("a-1") is None, id_problem("a\\nb") is None
    (True, False)
    """
    if "\n" in rid or "\r" in rid:
        return f"id {rid!r} contains a line break (\\n or \\r); ids must be one line"
    return None


def stable_id(*parts: object, length: int = 16) -> str:
    """A short deterministic id from its parts (same parts, same id, every run)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return h[:length]


def stable_seed(*parts: object) -> int:
    """A deterministic 31-bit sampling seed derived from its parts."""
    return int(stable_id(*parts), 16) % (2**31 - 1)


class IdIndex:
    """A set of record ids (each with where it was first seen) in a private temporary SQLite
    file, so memory stays flat however many records a run has: SQLite keeps a few MiB of
    pages in memory and spills the rest to disk.

    >>> ids = IdIndex()
    >>> ids.first_seen("a", "in.jsonl:1"), ids.first_seen("a", "in.jsonl:7"), "a" in ids
    (None, 'in.jsonl:1', True)
    >>> ids.close()
    """

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self.db = sqlite3.connect("", isolation_level=None)  # "": temporary, deleted on close
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, at TEXT) WITHOUT ROWID")
        self.db.execute("BEGIN")
        self.update(ids)

    def add(self, rid: str, where: str = "") -> bool:
        """Remember ``rid`` (first seen at ``where``); False when it was already there."""
        return self.db.execute("INSERT OR IGNORE INTO ids VALUES (?, ?)", (rid, where)).rowcount > 0

    def first_seen(self, rid: str, where: str) -> str | None:
        """Where ``rid`` was seen before (None the first time; this time is then remembered)."""
        if self.add(rid, where):
            return None
        return self.db.execute("SELECT at FROM ids WHERE id = ?", (rid,)).fetchone()[0]

    def update(self, ids: Iterable[str]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO ids VALUES (?, '')", ((i,) for i in ids))

    def __contains__(self, rid: object) -> bool:
        return self.db.execute("SELECT 1 FROM ids WHERE id = ?", (rid,)).fetchone() is not None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> IdIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
