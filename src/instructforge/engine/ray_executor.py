"""Run a job sharded over a Ray cluster: same job, same run directory semantics, many workers.

The input is streamed once into ``shards`` parts (by a hash of each record id, so a record
always lands in the same shard); each shard is a full engine run directory that one Ray task
runs with :func:`~instructforge.engine.run_job`. A finished shard leaves a marker file, so a
rerun skips it and resumes the others from their own ``state/done.txt`` and request cache. The
top-level ``data/records.jsonl`` is rebuilt as the union of the shards, each id once::

    RUN_DIR/
      config.yaml  usage.json  data/records.jsonl  data/records.parquet  rejected.jsonl
      shards/manifest.json          shard count and inputs per shard
      shards/00000/input.jsonl      this shard's inputs
      shards/00000/...              a full run directory (cache, state, data, usage)
      shards/00000/FINISHED         marker: every input of the shard is done

A worker builds its job with ``make_process(shard_run_dir)`` (a picklable callable returning
the per-record coroutine and the LLMs it uses), so a backend is created where it runs: a
shared OpenAI-compatible endpoint, or a vLLM engine per GPU worker. Methods do not call
this module: they describe a :class:`~instructforge.engine.job.Job` with ``executor="ray"``
and :meth:`~instructforge.engine.job.Job.run` comes here::

    result = Job("respond", InstructionSource("seeds.jsonl"),
                 functools.partial(respond_job, cfg), config={"model": "..."},
                 executor="ray", shards=16).run("runs/big")

A worker killed mid-shard (a lost node, OOM, ``kill -9``) is retried by Ray
(``max_retries``); the retry resumes the shard, so nothing finished is redone or duplicated.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from instructforge.engine.context import Usage
from instructforge.engine.job import MakeProcess, UnionFilter, as_built
from instructforge.engine.progress import JobProgress
from instructforge.engine.run import (
    COUNTERS,
    JobAborted,
    JobResult,
    run_job,
    save_usage,
    write_parquet,
)
from instructforge.engine.store import RunDir, iter_jsonl
from instructforge.files import open_atomic, write_atomic
from instructforge.records import IdIndex, Record, stable_id

EXECUTORS = ("ray", "inline")
FINISHED = "FINISHED"


class ShardingError(JobAborted):
    """The run directory or the executor cannot be used as asked (nothing was run)."""


@dataclass
class ShardedResult(JobResult):
    """A :class:`JobResult` over all shards, plus which shards ran and which were skipped."""

    shards: int = 0
    shards_run: list[int] = field(default_factory=list)
    shards_skipped: list[int] = field(default_factory=list)
    shards_failed: dict[int, str] = field(default_factory=dict)
    union_rejected: int = 0  # kept by a shard, dropped by the union filter

    def summary(self) -> str:
        across = (f", {self.union_rejected} dropped across shards" if self.union_rejected
                  else "")
        return (
            f"{super().summary()} ({self.shards} shards: {len(self.shards_run)} run, "
            f"{len(self.shards_skipped)} already finished, {len(self.shards_failed)} failed"
            f"{across})"
        )


def shard_of(record_id: str, shards: int) -> int:
    """The shard a record belongs to: a stable hash of its id, so reruns agree.

    >>> shard_of("seed-1", 4) == shard_of("seed-1", 4)
    True
    """
    return int(stable_id(record_id), 16) % shards


def shard_dir(run: RunDir, index: int) -> RunDir:
    """``RUN_DIR/shards/NNNNN`` as a run directory of its own."""
    return RunDir(run.root / "shards" / f"{index:05d}")


def _manifest_path(run: RunDir) -> Path:
    return run.root / "shards" / "manifest.json"


def existing_manifest(run: RunDir, shards: int | None) -> dict[str, Any] | None:
    """The manifest of a run directory already split (None if not), after checking that
    ``shards`` agrees with it and that the directory is not a local executor's run."""
    path = _manifest_path(run)
    if path.exists():
        manifest = json.loads(path.read_text())
        if shards is not None and shards != manifest["shards"]:
            raise ShardingError(
                f"{run.root} was split into {manifest['shards']} shards; rerun with "
                f"--shards {manifest['shards']} (or without --shards), or use a new run directory."
            )
        return manifest
    if run.records.exists() and run.records.stat().st_size:
        # A run made by the local executor: sharding it would redo (and overwrite) its work.
        raise ShardingError(
            f"{run.root} holds a run of the local executor; resume it with --executor local, "
            "or use a new run directory for --executor ray."
        )
    return None


def partition(inputs: Iterable[Record], run: RunDir, shards: int | None) -> dict[str, Any]:
    """Stream ``inputs`` into per-shard ``input.jsonl`` files once; later calls reuse them.

    Returns the manifest ``{"shards": N, "counts": [...], "total": T}``. A run directory keeps
    the shard count it was first partitioned with: asking for another raises
    :class:`ShardingError`.
    """
    manifest = existing_manifest(run, shards)
    if manifest is not None:
        return manifest
    n = 1 if shards is None else shards
    if n < 1:
        raise ShardingError(f"--shards must be >= 1, got {n}")
    dirs = [shard_dir(run, i) for i in range(n)]
    files: list[IO[str]] = []
    counts = [0] * n
    try:
        for d in dirs:
            d.root.mkdir(parents=True, exist_ok=True)
            files.append(open(d.root / "input.jsonl.tmp", "w", encoding="utf-8"))
        for rec in inputs:
            i = shard_of(rec["id"], n)
            files[i].write(json.dumps(rec, ensure_ascii=False) + "\n")
            counts[i] += 1
    finally:
        for f in files:
            f.close()
    for d in dirs:
        (d.root / "input.jsonl.tmp").replace(d.root / "input.jsonl")
    manifest = {"shards": n, "counts": counts, "total": sum(counts)}
    # The manifest last: its presence means every shard input is complete.
    write_atomic(_manifest_path(run), manifest)
    return manifest


def run_shard(
    name: str,
    shard_root: str,
    make_process: MakeProcess,
    config: dict[str, Any],
    options: dict[str, Any],
) -> dict[str, Any]:
    """Run (or resume, or skip) one shard in this process; returns its counts.

    The ``FINISHED`` marker is written only when no input failed, so a shard with failed
    inputs is resumed by the next run, exactly as the local executor retries them.
    """
    run = RunDir(shard_root)
    marker = run.root / FINISHED
    if marker.exists():
        return {**json.loads(marker.read_text()), "finished": True, "ran": False}
    built = as_built(make_process(run))
    result = run_job(
        name,
        iter_jsonl(run.root / "input.jsonl"),
        built.process,
        run,
        config={**config, **built.config},
        llms=built.llms,
        progress=False,
        **options,
    )
    out = {k: getattr(result, k) for k in COUNTERS}
    out.update(seconds=result.seconds, errors=result.errors,
               usage=(result.usage.get("runs") or [{}])[-1].get("by_model_step", {}))
    if result.failed == 0:
        totals = {"kept": _count(run.records), "rejected": _count(run.rejected)}
        marker.write_text(json.dumps({**totals, "inputs": _count(run.root / "input.jsonl")}))
    return {**out, "finished": result.failed == 0, "ran": True}


def _count(path: Path) -> int:
    return sum(1 for _ in iter_jsonl(path))


def run_sharded(
    name: str,
    inputs: Iterable[Record],
    run_dir: str | os.PathLike[str] | RunDir,
    make_process: MakeProcess,
    *,
    config: dict[str, Any],
    shards: int | None = None,
    executor: str = "ray",
    concurrency: int = 64,
    progress: bool = True,
    shared_cache: str | os.PathLike[str] | None = None,
    max_consecutive_failures: int = 20,
    max_retries: int = 3,
    num_cpus: float = 1,
    num_gpus: float = 0,
    union_filter: UnionFilter | None = None,
) -> ShardedResult:
    """Run ``make_process``'s job over ``inputs`` in shards: on Ray (``executor="ray"``), or
    one shard after another in this process (``"inline"``, for debugging without Ray).

    ``shards`` defaults to the cluster's CPU count (``executor="ray"``) or 1, and is fixed the
    first time a run directory is partitioned. ``concurrency`` is per shard (records in flight
    in one worker); ``num_cpus`` / ``num_gpus`` are what each shard task reserves (a vLLM
    worker: ``num_gpus`` = its tensor parallel size). ``max_retries`` retries a shard whose
    worker died. Raises :class:`JobAborted` when a shard fails (the others finish first, and
    the union of everything finished is written); rerun to resume. ``union_filter`` sees
    the union's kept records in shard order and may drop some (see :func:`union`).
    """
    if executor not in EXECUTORS:
        raise ShardingError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if shards is not None and shards < 1:
        raise ShardingError(f"--shards must be >= 1, got {shards}")
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    with run.lock():
        return _run_sharded(name, inputs, run, make_process, config, shards, executor,
                            concurrency, progress, shared_cache, max_consecutive_failures,
                            max_retries, num_cpus, num_gpus, union_filter)


def _run_sharded(
    name: str,
    inputs: Iterable[Record],
    run: RunDir,
    make_process: MakeProcess,
    config: dict[str, Any],
    shards: int | None,
    executor: str,
    concurrency: int,
    progress: bool,
    shared_cache: str | os.PathLike[str] | None,
    max_consecutive_failures: int,
    max_retries: int,
    num_cpus: float,
    num_gpus: float,
    union_filter: UnionFilter | None,
) -> ShardedResult:
    t0 = time.perf_counter()
    # Checked before starting Ray: a wrong --shards or directory should fail at once.
    split = existing_manifest(run, shards)
    ray, started = _connect() if executor == "ray" else (None, False)
    try:
        if ray is not None and shards is None and split is None:
            shards = max(1, int(ray.cluster_resources().get("CPU", 1)))
        manifest = partition(inputs, run, shards)
        n = manifest["shards"]
        run.reopen({"job": name, **config, "executor": executor, "shards": n})
        options = {"concurrency": concurrency, "shared_cache": str(shared_cache) if shared_cache
                   else None, "max_consecutive_failures": max_consecutive_failures}
        roots = [str(shard_dir(run, i).root) for i in range(n)]
        configs = [{**config, "executor": executor, "shard": i, "shards": n} for i in range(n)]
        result = ShardedResult(run, shards=n)
        usage = Usage()
        with JobProgress(f"{name} shards", n, usage, enabled=progress) as bar:

            def collect(i: int, out: dict[str, Any] | None, error: str | None) -> None:
                bar.advance()
                if out is None:
                    result.shards_failed[i] = error or "failed"
                    result.errors.append(f"shard {i}: {error}")
                    return
                if not out["ran"]:
                    result.shards_skipped.append(i)
                    result.skipped += out.get("inputs", 0)
                    return
                result.shards_run.append(i)
                for k in COUNTERS:
                    setattr(result, k, getattr(result, k) + out[k])
                result.errors.extend(out["errors"][: max(0, 20 - len(result.errors))])
                usage.add(out["usage"])
                if not out["finished"]:
                    result.shards_failed[i] = f"{out['failed']} inputs failed"

            if ray is None:
                for i in range(n):
                    try:
                        collect(i, run_shard(name, roots[i], make_process, configs[i], options),
                                None)
                    except Exception as e:  # as on Ray: one shard's error spares the others
                        collect(i, None, _ray_error(e))
            else:
                task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus,
                                  max_retries=max_retries)(run_shard)
                refs = {task.remote(name, roots[i], make_process, configs[i], options): i
                        for i in range(n)}
                while refs:
                    ready, _ = ray.wait(list(refs), num_returns=1)
                    for ref in ready:
                        i = refs.pop(ref)
                        try:
                            collect(i, ray.get(ref), None)
                        except Exception as e:  # a shard's error must not lose the others
                            collect(i, None, _ray_error(e))
    finally:
        if started:
            ray.shutdown()
    result.shards_run.sort()
    result.shards_skipped.sort()
    result.seconds = time.perf_counter() - t0
    result.union_rejected = union(run, n, union_filter)[2]
    _save_usage(run, name, usage, result)
    write_parquet(run)
    if result.shards_failed:
        detail = "; ".join(f"shard {i}: {e}" for i, e in sorted(result.shards_failed.items()))
        raise JobAborted(
            f"{len(result.shards_failed)} of {n} shards did not finish ({detail}). Everything "
            f"finished is kept in {run.root}; rerun the same command to resume them."
        )
    return result


def _connect() -> tuple[Any, bool]:
    """Import Ray and join the cluster in ``RAY_ADDRESS`` (or start a local one).

    Returns ``(ray, started)``; a cluster started here is shut down at the end.
    """
    try:
        import ray
    except ImportError:
        raise ShardingError("--executor ray needs Ray: pip install 'instructforge[ray]'") from None
    if ray.is_initialized():
        return ray, False
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(include_dashboard=False)
    return ray, True


def _ray_error(e: BaseException) -> str:
    """The first line of the cause: a RayTaskError repeats the whole remote traceback."""
    cause = getattr(e, "cause", None) or e
    text = f"{type(cause).__name__}: {cause}".strip()
    return text.splitlines()[0][:300]


def union(run: RunDir, shards: int,
          union_filter: UnionFilter | None = None) -> tuple[int, int, int]:
    """Rebuild ``data/records.jsonl`` and ``rejected.jsonl`` from the shards, each id once.

    Returns (kept, rejected, dropped by ``union_filter``). An id is written once across both
    files, as the local executor's store does. ``union_filter`` sees the shards' kept records
    in shard order (a rerun sees the same order, so it drops the same ones); the copies it
    returns go to ``rejected.jsonl``, before the shards' own rejections. The files are
    replaced atomically, so a crash here is harmless and the shards keep everything.
    """
    run.data.mkdir(parents=True, exist_ok=True)
    seen = IdIndex()  # on disk: the union of millions of records keeps memory flat
    kept = dropped = rejected_n = 0
    with seen, open_atomic(run.records) as keep, open_atomic(run.rejected) as reject:
        for i in range(shards):
            for rec in iter_jsonl(shard_dir(run, i).records):
                if not seen.add(rec["id"]):
                    continue
                out = union_filter(rec) if union_filter is not None else None
                if out is None:
                    keep.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    kept += 1
                else:
                    reject.write(json.dumps(out, ensure_ascii=False) + "\n")
                    dropped += 1
        for i in range(shards):
            for rec in iter_jsonl(shard_dir(run, i).rejected):
                if seen.add(rec["id"]):
                    reject.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    rejected_n += 1
    return kept, rejected_n + dropped, dropped


def _save_usage(run: RunDir, name: str, usage: Usage, result: ShardedResult) -> None:
    """usage.json as the local executor writes it, with ``total`` summed over every shard's
    own usage.json (all invocations)."""
    this = {
        "pid": os.getpid(),
        "started": round(time.time() - result.seconds, 3),
        "wall_seconds": round(result.seconds, 3),
        **{k: getattr(result, k) for k in COUNTERS},
        "errors": result.errors,
        "shards_run": result.shards_run,
        "shards_skipped": result.shards_skipped,
        "by_model_step": usage.as_dict(),
    }
    total = Usage()
    for i in range(result.shards):
        path = shard_dir(run, i).usage
        if path.exists():
            total.add(json.loads(path.read_text()).get("total", {}))
    result.usage = save_usage(run.usage, name, this, total=total.as_dict(),
                              executor="sharded", shards=result.shards)
