"""The streaming engine: records flow through a method's steps, none waits behind a batch.

A job is a coroutine ``process(record, ctx) -> list[Record]`` applied to every input record
with bounded concurrency. Each input's outputs are appended durably the moment it finishes;
LLM calls go through the context's request cache. Re-running the same job on the same run
directory resumes::

    async def respond(record, ctx):
        out = await ctx.chat(llm, record["messages"], SamplingParams(seed=1), step="respond")
        return [{**record, "messages": record["messages"] + [
            {"role": "assistant", "content": out.text}]}]

    result = run_job("respond", records, respond, "runs/demo", config={"model": "embedded"})
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from instructforge.engine.cache import RequestCache
from instructforge.engine.context import Context, Usage
from instructforge.engine.progress import JobProgress
from instructforge.engine.store import RunDir, RunDirError, Store, iter_jsonl
from instructforge.errors import EXIT_FAILED, InstructForgeError
from instructforge.files import atomic_path, write_atomic
from instructforge.llm.base import LLM, LLMError
from instructforge.records import Record, id_problem

ProcessFn = Callable[[Record, Context], Awaitable[list[Record]]]


class JobAborted(InstructForgeError, RuntimeError):
    """The job stopped early (e.g. the server went away); everything finished is kept."""

    exit_code = EXIT_FAILED


@dataclass
class JobResult:
    run_dir: RunDir
    processed: int = 0
    skipped: int = 0
    kept: int = 0
    rejected: int = 0
    invalid: int = 0
    failed: int = 0
    seconds: float = 0.0
    started: float = field(default_factory=lambda: round(time.time(), 3))  # names this invocation
    usage: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.processed} inputs processed ({self.skipped} already done), "
            f"{self.kept} kept, {self.rejected} rejected, {self.invalid} invalid, "
            f"{self.failed} failed, {self.seconds:.1f}s -> {self.run_dir.root}"
        )


def run_job(
    name: str,
    inputs: Iterable[Record],
    process: ProcessFn,
    run_dir: str | os.PathLike[str] | RunDir,
    **options: Any,
) -> JobResult:
    """Run a job to completion (options as for :func:`arun_job`)."""
    return asyncio.run(arun_job(name, inputs, process, run_dir, **options))


async def preflight(llms: Sequence[LLM]) -> None:
    """Fail fast, before any record, when a server is unreachable or a model name is wrong."""
    for llm in llms:
        await llm.resolve_model()


async def arun_job(
    name: str,
    inputs: Iterable[Record],
    process: ProcessFn,
    run_dir: str | os.PathLike[str] | RunDir,
    *,
    config: dict[str, Any],
    total: int | None = None,
    concurrency: int = 64,
    progress: bool = True,
    llms: Sequence[LLM] = (),
    shared_cache: str | os.PathLike[str] | None = None,
    max_consecutive_failures: int = 20,
    may_grow: tuple[str, ...] = (),
) -> JobResult:
    """Run ``process`` over ``inputs`` into ``run_dir`` (resuming if it has state).

    ``concurrency`` bounds the records in flight (each backend bounds its own requests);
    ``llms`` are checked before the first record and closed at the end. Input records with
    ``status == "rejected"`` (invalid rows kept by ``--skip-invalid``) go straight to
    ``rejected.jsonl``. An input whose ``process`` raises :class:`LLMError` (a call failed
    after the backend's retries) is counted in ``failed``, written to ``rejected.jsonl``
    with the reason (rule ``call_failed``) and not marked done: a rerun retries it. Raises
    :class:`JobAborted` after ``max_consecutive_failures`` inputs in a row fail; everything
    finished is kept.

    The job holds the run directory's lock (:class:`RunLocked` if another process has it)
    and refuses a run made with options that change records (:class:`OptionsChanged`),
    except that options in ``may_grow`` may increase (see :meth:`RunDir.reopen`).
    """
    if concurrency < 1:  # no record could ever start: the job would wait forever
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    with run.lock():
        run.reopen({"job": name, **config}, may_grow=may_grow)
        return await _run_locked(name, inputs, process, run, config, total, concurrency,
                                 progress, llms, shared_cache, max_consecutive_failures)


async def _run_locked(
    name: str,
    inputs: Iterable[Record],
    process: ProcessFn,
    run: RunDir,
    config: dict[str, Any],
    total: int | None,
    concurrency: int,
    progress: bool,
    llms: Sequence[LLM],
    shared_cache: str | os.PathLike[str] | None,
    max_consecutive_failures: int,
) -> JobResult:
    await preflight(llms)
    store = Store(run)
    cache = RequestCache(run.cache)
    shared = RequestCache(Path(shared_cache)) if shared_cache else None
    ctx = Context(cache, shared)
    result = JobResult(run)
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    consecutive = 0
    abort: list[str] = []

    async def one(rec: Record, bar: JobProgress) -> None:
        nonlocal consecutive
        try:
            outputs = await process(rec, ctx)
        except LLMError as e:
            result.failed += 1
            consecutive += 1
            store.fail(rec, str(e), {"step": e.step, "model": e.model, "retries": e.retries})
            if len(result.errors) < 20:
                result.errors.append(f"{rec['id']}: {e}")
            if consecutive >= max_consecutive_failures and not abort:
                abort.append(str(e))
        else:
            consecutive = 0
            k, r = store.write(rec["id"], outputs)
            result.kept += k
            result.rejected += r
            result.processed += 1
        finally:
            sem.release()
            bar.advance()

    saver = asyncio.create_task(_save_usage_periodically(run, name, ctx, result, t0))
    try:
        with JobProgress(name, total, ctx.usage, enabled=progress) as bar:
            for rec in inputs:
                if abort:
                    break
                if rec.get("status") == "rejected":
                    store.reject_input(rec)
                    result.invalid += 1
                    bar.advance()
                    continue
                if problem := id_problem(rec["id"]):
                    raise RunDirError(f"input {problem}")
                if store.is_done(rec["id"]):
                    result.skipped += 1
                    bar.advance()
                    continue
                await sem.acquire()
                t = asyncio.create_task(one(rec, bar))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            if abort:
                for t in tasks:
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=bool(abort))
    finally:
        saver.cancel()
        for t in tasks:
            t.cancel()
        for llm in llms:
            await llm.aclose()
        store.close()
        result.seconds = time.perf_counter() - t0
        _save_usage(run, name, ctx, result)
        cache.close()
        if shared:
            shared.close()
    if abort:
        raise JobAborted(
            f"stopped after {max_consecutive_failures} inputs failed in a row; last error: "
            f"{abort[0]}. Everything finished is kept in {run.root}; rerun the same command to "
            "resume."
        )
    write_parquet(run)
    return result


async def _save_usage_periodically(
    run: RunDir, name: str, ctx: Context, result: JobResult, t0: float
) -> None:
    while True:
        await asyncio.sleep(5)
        result.seconds = time.perf_counter() - t0
        _save_usage(run, name, ctx, result)


def _save_usage(run: RunDir, name: str, ctx: Context, result: JobResult) -> None:
    this = {
        "pid": os.getpid(),
        "started": result.started,
        "wall_seconds": round(result.seconds, 3),
        **{k: getattr(result, k) for k in COUNTERS},
        "errors": result.errors,
        "by_model_step": ctx.usage.as_dict(),
    }
    result.usage = save_usage(run.usage, name, this)


COUNTERS = ("processed", "skipped", "kept", "rejected", "invalid", "failed")


def save_usage(
    path: Path, job: str, this: dict[str, Any], *, total: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write ``usage.json``: this invocation's counts under ``runs`` (replacing an earlier save
    of the same invocation, matched on ``started``; every invocation has its entry) and
    ``total``: the one given, or every invocation's ``by_model_step`` summed. Returns what
    was written."""
    runs: list[dict[str, Any]] = []
    if path.exists():
        try:
            runs = json.loads(path.read_text()).get("runs", [])
        except ValueError:
            pass
    runs = [r for r in runs if r.get("started") != this.get("started")]
    runs.append(this)
    if total is None:
        summed = Usage()
        for r in runs:
            summed.add(r.get("by_model_step") or {})
        total = summed.as_dict()
    data = {"job": job, **extra, "total": total, "runs": runs}
    write_atomic(path, data)
    return data


PARQUET_JSON_COLUMNS = ("source", "lineage", "metadata", "rejection")


def write_parquet(run: RunDir, chunk: int = 10_000) -> Path | None:
    """Convert ``data/records.jsonl`` to Parquet in bounded memory.

    ``messages`` is a list of {role, content} structs; free-form dicts (source, lineage,
    metadata) are JSON strings so rows of any shape fit one schema.
    """
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("schema_version", pa.int32()),
            ("method", pa.string()),
            ("status", pa.string()),
            ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            *[(c, pa.string()) for c in PARQUET_JSON_COLUMNS],
        ]
    )
    if not run.records.exists():
        return None
    with atomic_path(run.parquet) as tmp:
        _write_parquet(run, tmp, schema, chunk)
    return run.parquet


def _write_parquet(run: RunDir, tmp: Path, schema: pa.Schema, chunk: int) -> None:
    writer = pq.ParquetWriter(tmp, schema)
    rows: list[dict[str, Any]] = []

    def flush() -> None:
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            rows.clear()

    try:
        for rec in iter_jsonl(run.records):
            row = {k: rec.get(k) for k in ("id", "schema_version", "method", "status")}
            row["messages"] = [
                {"role": m.get("role"), "content": m.get("content")} for m in rec["messages"]
            ]
            for c in PARQUET_JSON_COLUMNS:
                row[c] = json.dumps(rec[c], ensure_ascii=False) if rec.get(c) is not None else None
            rows.append(row)
            if len(rows) >= chunk:
                flush()
        flush()
    finally:
        writer.close()
