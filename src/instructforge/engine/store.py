"""The run directory and its durable, append-only record files.

Layout::

    RUN_DIR/
      config.yaml          what produced the run (no secrets)
      data/records.jsonl   kept records, appended as they finish
      data/records.parquet written on finish
      rejected.jsonl       dropped records with the reason
      cache.sqlite         request cache
      usage.json           tokens per model and step, requests, errors, wall time
      state/done.txt       ids of inputs whose records are all written (resume)

Each input's outputs are appended and flushed before its id goes to ``state/done.txt``; a
rerun skips done inputs and never writes a record id twice, so a ``kill -9`` at any point
loses nothing finished and duplicates nothing.

An input whose LLM calls failed (after the backend's retries) is not done: it goes to
``rejected.jsonl`` as a copy of the input with ``rejection.rule == "call_failed"`` and the
reason, and the next run on the directory takes these records out again and retries their
inputs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import yaml

from instructforge.records import IdIndex, Record, rejected

# The rejection of an input whose calls failed for good in this run (a rerun retries it).
CALL_FAILED = "call_failed"


def is_call_failure(rec: Record) -> bool:
    """Whether ``rec`` (from ``rejected.jsonl``) is an input whose LLM calls failed."""
    rejection = rec.get("rejection") or {}
    return rejection.get("stage") == "call" and rejection.get("rule") == CALL_FAILED


def _repair_tail(path: Path) -> None:
    """Cut a partial last line left by a killed writer."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        size = f.seek(0, os.SEEK_END)
        pos = size
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                f.truncate(pos + nl + 1)
                return
        f.truncate(0)


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file written by the engine (skips a torn last line)."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n") and line.strip():
                yield json.loads(line)


class RunDir:
    """Paths of a run directory, and the writers a job appends to."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.records = self.data / "records.jsonl"
        self.parquet = self.data / "records.parquet"
        self.rejected = self.root / "rejected.jsonl"
        self.cache = self.root / "cache.sqlite"
        self.usage = self.root / "usage.json"
        self.config = self.root / "config.yaml"
        self.done = self.root / "state" / "done.txt"

    def write_config(self, config: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))

    def read_config(self) -> dict[str, Any] | None:
        return yaml.safe_load(self.config.read_text()) if self.config.exists() else None

    def kept(self) -> Iterator[Record]:
        return iter_jsonl(self.records)

    def dropped(self) -> Iterator[Record]:
        return iter_jsonl(self.rejected)


class Store:
    """Durable appends of outputs, and the resume state."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        run.data.mkdir(parents=True, exist_ok=True)
        run.done.parent.mkdir(parents=True, exist_ok=True)
        for p in (run.records, run.rejected, run.done):
            _repair_tail(p)
        # On disk, not in Python sets: resuming a run of millions keeps memory flat.
        self.done = IdIndex()
        if run.done.exists():
            with run.done.open(encoding="utf-8") as f:
                self.done.update(ln.rstrip("\n") for ln in f if ln.strip())
        # Ids already on disk: a rerun must not write them again (an input that was cut
        # between its records and its done marker is processed again).
        self._written = IdIndex()
        self._written.update(rec["id"] for rec in iter_jsonl(run.records))
        self._forget_call_failures()
        self._kept: IO[str] = open(run.records, "a", encoding="utf-8")
        self._rej: IO[str] = open(run.rejected, "a", encoding="utf-8")
        self._done: IO[str] = open(run.done, "a", encoding="utf-8")

    def _forget_call_failures(self) -> None:
        """Learn the ids in ``rejected.jsonl`` except those of failed inputs, whose records
        are taken out of the file (this run retries them)."""
        path = self.run.rejected
        failures = 0
        for rec in iter_jsonl(path):
            if is_call_failure(rec):
                failures += 1
            else:
                self._written.add(rec["id"])
        if not failures:
            return
        tmp = path.with_suffix(".jsonl.tmp")
        with open(path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            for line in src:
                if line.strip() and not is_call_failure(json.loads(line)):
                    dst.write(line)
        tmp.replace(path)

    def is_done(self, input_id: str) -> bool:
        return input_id in self.done

    def write(self, input_id: str, outputs: Iterable[Record]) -> tuple[int, int]:
        """Append an input's outputs, then mark the input done. Returns (kept, rejected)."""
        kept = rej = 0
        for rec in outputs:
            if rec["id"] in self._written:
                continue
            line = json.dumps(rec, ensure_ascii=False) + "\n"
            if rec.get("status") == "rejected":
                self._rej.write(line)
                rej += 1
            else:
                self._kept.write(line)
                kept += 1
        # Records before the marker: a crash in between leaves records the rerun recognises.
        self._kept.flush()
        self._rej.flush()
        self._done.write(input_id + "\n")
        self._done.flush()
        return kept, rej

    def fail(self, rec: Record, reason: str, evidence: dict[str, Any]) -> None:
        """Record an input whose calls failed: in ``rejected.jsonl`` with the reason, and not
        done, so the next run retries it."""
        if rec["id"] in self._written:  # its outputs are on disk from an earlier run
            return
        out = rejected(rec, stage="call", rule=CALL_FAILED, reason=reason, evidence=evidence)
        self._rej.write(json.dumps(out, ensure_ascii=False) + "\n")
        self._rej.flush()

    def reject_input(self, rec: Record) -> None:
        """Record an invalid input row (not an input to resume)."""
        if rec["id"] in self._written:
            return
        self._written.add(rec["id"])
        self._rej.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._rej.flush()

    def close(self) -> None:
        for f in (self._kept, self._rej, self._done):
            f.close()
        self.done.close()
        self._written.close()
