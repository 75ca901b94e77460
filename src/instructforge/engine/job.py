"""A job: what the engine runs, whichever executor runs it.

A method describes its work as a :class:`Job` (its name, its inputs, how to build its
per-record step, what ``config.yaml`` records) and calls :meth:`Job.run`; the executor
(``local``: this process; ``ray``: shards over a Ray cluster; ``inline``: the shards one
after another here) is chosen here and nowhere else::

    job = Job("respond", InstructionSource("seeds.jsonl"),
              functools.partial(respond_job, cfg), config={"model": "embedded"})
    result = job.run("runs/answers")

``build(run)`` makes the per-record coroutine and the backends it calls where the job runs
(a Ray worker builds its own), so it must be picklable for Ray: a module-level function, or
a ``functools.partial`` of one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from instructforge.engine.run import JobResult, ProcessFn, run_job
from instructforge.engine.store import RunDir
from instructforge.errors import InstructForgeError
from instructforge.llm.base import LLM
from instructforge.records import Record

EXECUTORS = ("local", "ray", "inline")


@dataclass
class Built:
    """A job's step as built for one run directory: the per-record coroutine, the backends
    it calls (checked before the first record, closed at the end), and what ``config.yaml``
    adds once they are built (Magpie: the chat template it found)."""

    process: ProcessFn
    llms: Sequence[LLM] = ()
    config: dict[str, Any] = field(default_factory=dict)


MakeProcess = Callable[[RunDir], "Built | tuple[ProcessFn, Sequence[LLM]]"]
"""Builds a job's step inside the process that runs it: ``build(run) -> Built`` (or the
pair ``(process, llms)``)."""

UnionFilter = Callable[[Record], Record | None]
"""Sees each kept record of a sharded run's union in order; returns a rejected copy to drop
it (e.g. a duplicate of a record kept by another shard), or None to keep it."""


def as_built(made: Built | tuple[ProcessFn, Sequence[LLM]]) -> Built:
    """What a :data:`MakeProcess` returned, as a :class:`Built`."""
    if isinstance(made, Built):
        return made
    process, llms = made
    return Built(process, llms)


class JobConfigError(InstructForgeError, ValueError):
    """A job that cannot run as asked (an unknown executor), explained."""


@dataclass
class Job:
    """One method run over its inputs, ready for any executor (see the module docstring).

    ``config`` is what ``config.yaml`` records (secret-free); ``concurrency`` bounds the
    records in flight (per shard under Ray); ``shards``, ``num_gpus`` (per shard task) and
    ``union_filter`` matter to the sharded executors only. ``may_grow`` names options a
    rerun may increase because the job continues what the run holds (evolve's ``rounds``);
    the local executor honours it, a sharded run (whose shard inputs are fixed) refuses the
    change. ``max_cost`` caps the run's spending in dollars (the local executor only; see
    :mod:`~instructforge.engine.budget`).
    """

    name: str
    inputs: Iterable[Record]
    build: MakeProcess
    config: dict[str, Any]
    total: int | None = None
    concurrency: int = 64
    shared_cache: str | None = None
    executor: str = "local"
    shards: int | None = None
    num_gpus: float = 0
    union_filter: UnionFilter | None = None
    may_grow: tuple[str, ...] = ()  # local executor: options a rerun may increase
    max_cost: float | None = None  # dollars, local executor only

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise JobConfigError(f"unknown executor {self.executor!r}; choose from "
                                 f"{', '.join(EXECUTORS)}")
        if self.max_cost is not None and self.executor != "local":
            raise JobConfigError("--max-cost needs --executor local: shards running at once "
                                 "cannot share one budget")

    def run(self, run_dir: str | os.PathLike[str] | RunDir, *, progress: bool = True
            ) -> JobResult:
        """Run (or resume) the job into ``run_dir`` with its executor."""
        if self.executor == "local":
            run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
            built = as_built(self.build(run))
            return run_job(self.name, self.inputs, built.process, run,
                           config={**self.config, **built.config}, total=self.total,
                           concurrency=self.concurrency, progress=progress, llms=built.llms,
                           shared_cache=self.shared_cache, may_grow=self.may_grow,
                           max_cost=self.max_cost)
        from instructforge.engine.ray_executor import run_sharded  # Ray only when asked for

        return run_sharded(self.name, self.inputs, run_dir, self.build, config=self.config,
                           shards=self.shards, executor=self.executor,
                           concurrency=self.concurrency, progress=progress,
                           shared_cache=self.shared_cache, num_gpus=self.num_gpus,
                           union_filter=self.union_filter)
