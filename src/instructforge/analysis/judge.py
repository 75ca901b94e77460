"""Run the LLM judge (ratings and InsTag tags) over a dataset through the engine.

The judge job is an ordinary resumable run directory (``ANALYSIS_DIR/judge/run-KEY/``, one
per model and question set): every call goes through ``ctx.chat`` (SQLite request cache
shared by all judge runs, per-step token counts in ``usage.json``), and each judged record is
written with its verdicts under ``metadata["analysis"]``, so a rerun only asks about records
it has not judged yet.

>>> cfg = JudgeConfig(ratings=("quality", "difficulty"), tags=True)
>>> verdicts = judge_records(records, llm, "runs/demo/analysis/judge", cfg)  # doctest: +SKIP
>>> verdicts["a1b2"]["ratings"]["quality"]["label"]                          # doctest: +SKIP
'good'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from instructforge.analysis.ratings import RATINGS, rate
from instructforge.analysis.tags import tag
from instructforge.engine import Context, RunDir, iter_jsonl, run_job
from instructforge.llm.base import LLM, Completion, Message, SamplingParams
from instructforge.records import Record, stable_id

PROTOCOL = "constrained-1"
"""How the judge is asked (prompts and output constraints); part of the judge run key, so a
changed protocol asks again instead of resuming runs that hold the old protocol's verdicts."""

Verdict = dict[str, Any]
"""``{"ratings": {"quality": {...}, ...}, "tags": {...} or None}`` for one record."""


@dataclass
class JudgeConfig:
    """What the judge is asked per record, and how hard to push it."""

    ratings: Sequence[str] = ("quality", "difficulty", "category")
    tags: bool = True
    max_tokens: int = 256
    concurrency: int = 16

    def __post_init__(self) -> None:
        unknown = [r for r in self.ratings if r not in RATINGS]
        if unknown:
            raise ValueError(f"unknown rating(s) {unknown}; choose from {sorted(RATINGS)}")


async def judge_one(record: Record, llm: LLM, ctx: Context, cfg: JudgeConfig) -> Verdict:
    """All of ``cfg``'s verdicts for one record, each call cached and counted by ``ctx``."""

    async def chat(model: LLM, messages: list[Message], params: SamplingParams,
                   step: str) -> Completion:
        return await ctx.chat(model, messages, params, step=step)

    verdict: Verdict = {"ratings": {}, "tags": None}
    for kind in cfg.ratings:
        verdict["ratings"][kind] = await rate(record, llm, kind, chat=chat,
                                              max_tokens=cfg.max_tokens)
    if cfg.tags:
        verdict["tags"] = await tag(record, llm, chat=chat, max_tokens=cfg.max_tokens)
    return verdict


def judge_run_dir(judge_root: str | Path, llm: LLM, cfg: JudgeConfig) -> Path:
    """The judge run directory for this model and question set, under ``judge_root``.

    Resume skips records by id, so a run asked other questions (another model, other
    ratings, another token cap, another :data:`PROTOCOL`) must live in its own directory, or
    its records would be taken as done; one shared request cache keeps the common questions
    free.

    >>> class M(LLM):
    ...     model_id = "m"
    ...     async def chat(self, messages, params): ...
    ...     async def complete(self, text, params): ...
    >>> judge_run_dir("a/judge", M(), JudgeConfig()).parent.as_posix()
    'a/judge'
    """
    key = stable_id(llm.model_id, sorted(cfg.ratings), cfg.tags, cfg.max_tokens, PROTOCOL,
                    length=10)
    return Path(judge_root) / f"run-{key}"


def judge_records(
    records: Sequence[Record],
    llm: LLM,
    judge_root: str | Path,
    cfg: JudgeConfig,
    *,
    progress: bool = True,
) -> dict[str, Verdict]:
    """Judge ``records`` into a run directory under ``judge_root`` (see
    :func:`judge_run_dir`); returns :func:`read_verdicts` of ``judge_root``."""

    async def process(record: Record, ctx: Context) -> list[Record]:
        verdict = await judge_one(record, llm, ctx, cfg)
        meta = {**(record.get("metadata") or {}), "analysis": verdict}
        return [{**record, "metadata": meta, "status": "kept"}]

    # Rejected rows are judged too (they are data worth seeing), but the engine would file
    # an input marked rejected straight away, so hand it a kept copy.
    inputs = [{**r, "status": "kept"} if r.get("status") == "rejected" else r for r in records]
    config = {"judge": llm.describe(), **asdict(cfg), "ratings": list(cfg.ratings)}
    run_job("judge", inputs, process, judge_run_dir(judge_root, llm, cfg), config=config,
            total=len(inputs), concurrency=cfg.concurrency, progress=progress, llms=[llm],
            shared_cache=Path(judge_root) / "cache.sqlite")
    return read_verdicts(judge_root)


def judge_runs(judge_root: str | Path) -> list[RunDir]:
    """The judge run directories under ``judge_root``, oldest first."""
    root = Path(judge_root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / "data" / "records.jsonl").exists()]
    return [RunDir(p) for p in sorted(runs, key=lambda p: p.stat().st_mtime)]


def read_verdicts(judge_root: str | Path) -> dict[str, Verdict]:
    """All verdicts stored under ``judge_root``, merged per record (the newest run wins for
    a rating both asked); empty when there are none."""
    merged: dict[str, Verdict] = {}
    for run in judge_runs(judge_root):
        for r in iter_jsonl(run.records):
            v = (r.get("metadata") or {}).get("analysis")
            if not isinstance(v, dict):
                continue
            m = merged.setdefault(r["id"], {"ratings": {}, "tags": None})
            m["ratings"].update(v.get("ratings") or {})
            if v.get("tags") is not None:
                m["tags"] = v["tags"]
    return merged


def judge_usage(judge_root: str | Path) -> list[dict[str, Any]]:
    """The ``usage.json`` of every judge run under ``judge_root``."""
    out = []
    for run in judge_runs(judge_root):
        try:
            out.append(json.loads(run.usage.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return out


def judge_models(judge_root: str | Path) -> list[str]:
    """The models that judged under ``judge_root``."""
    models = []
    for run in judge_runs(judge_root):
        cfg = run.read_config() or {}
        model = (cfg.get("judge") or {}).get("model")
        if model and model not in models:
            models.append(model)
    return models


def verdict_from_metadata(record: Record) -> Verdict | None:
    """A verdict already carried by the record (``metadata.analysis``), e.g. in a dataset
    written by an earlier ``analyze``/``filter``."""
    v = (record.get("metadata") or {}).get("analysis")
    return v if isinstance(v, dict) else None
