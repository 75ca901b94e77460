"""Streaming executor, run directory, request cache and resume. Knows no method."""

from instructforge.engine.budget import Budget, BudgetExceeded
from instructforge.engine.cache import RequestCache, request_key
from instructforge.engine.context import Context, Usage
from instructforge.engine.job import Built, Job
from instructforge.engine.run import (
    JobAborted,
    JobResult,
    arun_job,
    preflight,
    run_job,
    write_parquet,
)
from instructforge.engine.store import (
    IdCollision,
    OptionsChanged,
    RunDir,
    RunDirError,
    RunLocked,
    Store,
    iter_jsonl,
    partial_path,
    unfinished_problem,
)

__all__ = [
    "Budget",
    "BudgetExceeded",
    "Built",
    "Job",
    "Context",
    "IdCollision",
    "JobAborted",
    "JobResult",
    "OptionsChanged",
    "RequestCache",
    "RunDir",
    "RunDirError",
    "RunLocked",
    "Store",
    "Usage",
    "arun_job",
    "iter_jsonl",
    "partial_path",
    "preflight",
    "request_key",
    "run_job",
    "unfinished_problem",
    "write_parquet",
]
