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
      state/batches.jsonl  batch mode: the batches submitted, for resume (llm/batch.py)
      state/lock           held (``flock``) by the one process writing the run; holds its pid

Each input's outputs are appended and flushed before its id goes to ``state/done.txt``; a
rerun skips done inputs and never writes a record id twice, so a ``kill -9`` at any point
loses nothing finished and duplicates nothing. One process at a time writes a run directory
(:meth:`RunDir.lock`), and a rerun must use the options the run was made with
(:meth:`RunDir.reopen`).

An input whose LLM calls failed (after the backend's retries) is not done: it goes to
``rejected.jsonl`` as a copy of the input with ``rejection.rule == "call_failed"`` and the
reason, and the next run on the directory takes these records out again and retries their
inputs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import yaml

from instructforge.errors import InstructForgeError
from instructforge.files import open_atomic, write_atomic
from instructforge.llm.urls import redact_urls
from instructforge.records import IdIndex, Record, id_problem, rejected

# Options that change how a job runs but not what its records hold: a rerun may change them
# (``--limit`` and magpie's ``n`` extend a run; the rest are speed, retries and where things
# are). Matched on the last part of a dotted key (``evol_llm.max_concurrency``).
RUN_OPTIONS = frozenset({
    "concurrency", "max_concurrency", "timeout", "limit", "n", "shared_cache", "skip_invalid",
    "executor", "shards", "base_url", "progress", "max_retries", "connect_timeout",
    "price", "max_cost", "rpm", "tpm", "batch", "batch_requests", "batch_window", "batch_poll",
    "speculative_answer",
})


class RunDirError(InstructForgeError, ValueError):
    """A run directory that cannot be used as asked (another process holds it, or it was
    made with other options), explained."""


class RunLocked(RunDirError):
    """Another process is writing the run directory."""


class OptionsChanged(RunDirError):
    """A rerun asked for options that change records, on a run made with other ones."""


class IdCollision(RunDirError):
    """Two inputs produced a record with the same id (a record would be lost or doubled)."""


# Locks this process holds: lock file -> [fd, depth]. A job inside a command that already
# holds its run directory (auto-evol's final pass) takes the lock again without blocking.
_HELD: dict[Path, list[int]] = {}


def changed_options(old: dict[str, Any], new: dict[str, Any], *,
                    may_grow: tuple[str, ...] = ()) -> list[str]:
    """``"key: old -> new"`` for every option that differs and changes records.

    Keys are dotted paths into nested options; :data:`RUN_OPTIONS` may differ, and a key
    that only one side has (an option added or removed by an upgrade) is not compared.
    Keys in ``may_grow`` may increase (the job continues what the run holds: evolve's
    ``rounds``), not decrease.

    >>> changed_options({"temperature": 0.7, "limit": 5}, {"temperature": 0.1, "limit": 50})
    ['temperature: 0.7 -> 0.1']
    >>> changed_options({"rounds": 2}, {"rounds": 3}, may_grow=("rounds",))
    []
    """
    a, b = _flatten(old), _flatten(json.loads(json.dumps(new, default=str)))
    out = []
    for key in sorted(a.keys() & b.keys()):
        if key.rsplit(".", 1)[-1] in RUN_OPTIONS or a[key] == b[key]:
            continue
        if key in may_grow and _grows(a[key], b[key]):
            continue
        if key == "input" and _same_file(a[key], b[key]):
            continue
        out.append(f"{key}: {a[key]!r} -> {b[key]!r}")
    return out


def _grows(old: Any, new: Any) -> bool:
    numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (old, new))
    return numbers and new > old


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _same_file(a: Any, b: Any) -> bool:
    try:
        return os.path.samefile(str(a), str(b))
    except OSError:
        return False


def partial_path(out: str | os.PathLike[str]) -> Path:
    """Where a command builds the output folder ``out`` before renaming it into place
    (``OUT.partial``); a folder of that name is an unfinished output.

    >>> partial_path("runs/clean").as_posix()
    'runs/clean.partial'
    """
    p = Path(out)
    return p.with_name(p.name + ".partial")


def unfinished_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the run directory or records file ``path`` is not (yet) a finished output, or
    None: it lies in an ``OUT.partial`` folder, or a job still holds its run directory."""
    p = Path(path)
    for folder in (p, *p.parents):
        if folder.name.endswith(".partial"):
            return (f"{folder} is an unfinished output (a command was stopped while writing "
                    f"it); rerun that command to finish {folder.with_suffix('')}")
    run = p.parent.parent if p.parent.name == "data" else p if p.is_dir() else None
    if run is not None and (pid := RunDir(run).holder()) is not None:
        return f"{run} is still being written by a job (pid {pid}); wait for it to finish"
    return None


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
        self.lock_file = self.root / "state" / "lock"
        self.batches = self.root / "state" / "batches.jsonl"  # batch mode's journal

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for this process: a second process fails at once with
        :class:`RunLocked` naming this one's pid. The lock is ``flock`` on ``state/lock``, so
        the system drops it when the process dies, however it dies. Re-entrant.

        >>> with RunDir("runs/demo").lock():   # doctest: +SKIP
        ...     ...
        """
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        key = self.lock_file.resolve()
        if key in _HELD:
            _HELD[key][1] += 1
            try:
                yield
            finally:
                _HELD[key][1] -= 1
            return
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(
                f"{self.root} is in use by another process (pid {holder}, holding "
                f"{self.lock_file}); two processes on one run would pay for the same calls and "
                "write records twice. Wait for it to finish or stop it, then rerun."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[key] = [fd, 1]
        try:
            yield
        finally:
            del _HELD[key]
            os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the lock

    def holder(self) -> str | None:
        """The pid of the process holding :meth:`lock` ("unknown" if it has not written it
        yet), or None when no process holds the run directory."""
        if not self.lock_file.exists():
            return None
        if self.lock_file.resolve() in _HELD:
            return str(os.getpid())
        fd = os.open(self.lock_file, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        return None

    def reopen(self, config: dict[str, Any], *, may_grow: tuple[str, ...] = ()) -> None:
        """Start (or continue) a job with ``config`` (hold :meth:`lock` first).

        Raises :class:`OptionsChanged` when the run already has outputs made with options
        that change records (see :func:`changed_options`; options in ``may_grow`` may
        increase): a rerun with other options would mix records and leave ``config.yaml``
        describing only the last. Otherwise
        writes ``config.yaml`` and removes ``data/records.parquet``, which the job writes
        again when it finishes: it is never older than ``records.jsonl``.
        """
        old = self.read_config()
        if old is not None and self.has_outputs():
            changed = changed_options(old, redact_urls(config), may_grow=may_grow)
            if changed:
                lines = "\n".join(f"  {c}" for c in changed)
                raise OptionsChanged(
                    f"{self.root} was made with other options; rerunning with these would mix "
                    f"records made two ways (old -> new):\n{lines}\nRerun with the run's "
                    f"options (see {self.config}), or write to a new run directory."
                )
        self.write_config(config)
        self.parquet.unlink(missing_ok=True)

    def has_outputs(self) -> bool:
        """Whether any input has been written (kept, rejected or marked done)."""
        return any(p.exists() and p.stat().st_size > 0
                   for p in (self.records, self.rejected, self.done))

    def write_config(self, config: dict[str, Any]) -> None:
        """Save ``config.yaml``, with credentials in server URLs removed."""
        write_atomic(self.config, yaml.safe_dump(redact_urls(config), sort_keys=False,
                                                 allow_unicode=True))

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
        # Ids written by this process, with the input that wrote each: a second input
        # writing one is a clash that would lose or double a record, never a resume.
        self._writer = IdIndex()
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
        with open(path, encoding="utf-8") as src, open_atomic(path) as dst:
            for line in src:
                if line.strip() and not is_call_failure(json.loads(line)):
                    dst.write(line)

    def is_done(self, input_id: str) -> bool:
        return input_id in self.done

    def _claim(self, rid: str, input_id: str) -> bool:
        """Whether ``rid`` is still to be written; :class:`IdCollision` when another input
        of this process wrote it."""
        first = self._writer.first_seen(rid, input_id)
        if first is not None and first != input_id:
            raise IdCollision(
                f"record id {rid!r} was written for input {first!r} and again for input "
                f"{input_id!r}; ids must be unique across a run ({self.run.root})"
            )
        return rid not in self._written

    def write(self, input_id: str, outputs: Iterable[Record]) -> tuple[int, int]:
        """Append an input's outputs, then mark the input done. Returns (kept, rejected)."""
        if problem := id_problem(input_id):
            raise RunDirError(f"input {problem}")
        kept = rej = 0
        for rec in outputs:
            if not self._claim(rec["id"], input_id):
                continue
            self._written.add(rec["id"])
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
        if not self._claim(rec["id"], "(an invalid input row)"):
            return
        self._written.add(rec["id"])
        self._rej.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._rej.flush()

    def close(self) -> None:
        for f in (self._kept, self._rej, self._done):
            f.close()
        self.done.close()
        self._written.close()
        self._writer.close()
