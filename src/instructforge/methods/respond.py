"""Answer every instruction: the simplest job, and the response step of every method.

>>> cfg = RespondConfig(max_tokens=256)
>>> result = respond("seeds.jsonl", "runs/answers", cfg)          # doctest: +SKIP
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from instructforge.engine import Context, Job, JobResult, RunDir
from instructforge.engine.run import ProcessFn
from instructforge.inputs import InstructionSource
from instructforge.llm import LLM, SamplingParams
from instructforge.llm.config import ModelConfig, gpus_needed
from instructforge.llm.prices import cost_range
from instructforge.records import Record, instruction, stable_seed


@dataclass
class RespondConfig:
    llm: ModelConfig = field(default_factory=ModelConfig)
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0
    system_prompt: str | None = None
    column: str = "instruction"
    skip_invalid: bool = False
    limit: int | None = None
    concurrency: int = 64
    shared_cache: str | None = None
    executor: str = "local"  # "ray": sharded over a Ray cluster (engine/ray_executor.py)
    shards: int | None = None
    max_cost: float | None = None  # dollars the run may spend at most (--max-cost)

    def params(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.max_tokens, self.seed)


async def respond_to(
    record: Record,
    ctx: Context,
    llm: LLM,
    params: SamplingParams,
    *,
    system_prompt: str | None = None,
    step: str = "respond",
) -> Record:
    """``record`` with an assistant answer to its instruction appended (and metadata)."""
    messages = [{"role": "user", "content": instruction(record)}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    p = params.replace(seed=stable_seed(params.seed, record["id"], step))
    out = await ctx.chat(llm, messages, p, step=step)
    meta = dict(record.get("metadata") or {})
    meta[step] = {
        "model": llm.model_id,
        "finish_reason": out.finish_reason,
        "truncated": out.finish_reason == "length",
        "completion_tokens": out.completion_tokens,
    }
    return {
        **record,
        "messages": [*messages, {"role": "assistant", "content": out.text.strip()}],
        "method": "respond" if record.get("method") == "input" else record.get("method"),
        "metadata": meta,
    }


def respond(
    input_path: str | Path,
    run_dir: str | Path,
    config: RespondConfig | None = None,
    *,
    api_key: str | None = None,
    progress: bool = True,
) -> JobResult:
    """Answer every instruction in ``input_path`` into ``run_dir`` (resumable)."""
    cfg = config or RespondConfig()
    source = InstructionSource(
        input_path, column=cfg.column, skip_invalid=cfg.skip_invalid, limit=cfg.limit
    )
    total = source.validate()
    return Job(
        "respond",
        source,
        functools.partial(respond_job, cfg, api_key),
        config={"input": str(input_path), **asdict(cfg)},
        total=total,
        concurrency=cfg.concurrency,
        shared_cache=cfg.shared_cache,
        executor=cfg.executor,
        shards=cfg.shards,
        max_cost=cfg.max_cost,
        num_gpus=gpus_needed(cfg.llm),
    ).run(run_dir, progress=progress)


def respond_job(
    cfg: RespondConfig, api_key: str | None = None, run: RunDir | None = None
) -> tuple[ProcessFn, list[LLM]]:
    """The respond job's per-record step and its LLM, built where it runs (a Ray worker
    builds its own backend from the config; ``run`` is the shard's directory, where batch
    mode records its batches)."""
    llm = cfg.llm.build(api_key, run.batches if run is not None else None)
    params = cfg.params()

    async def process(record: Record, ctx: Context) -> list[Record]:
        return [await respond_to(record, ctx, llm, params, system_prompt=cfg.system_prompt)]

    return process, [llm]


def estimate(source: InstructionSource, cfg: RespondConfig) -> dict[str, Any]:
    """What a run would cost, without calling anything (for ``--dry-run``)."""
    n = chars = 0
    for rec in source:
        if rec.get("status") == "rejected":
            continue
        n += 1
        chars += len(instruction(rec)) + len(cfg.system_prompt or "")
    prompt_tokens = chars // 4 + 20 * n  # ~4 characters a token plus the chat template
    return {
        "records": n,
        "llm_calls": n,
        "prompt_tokens_approx": prompt_tokens,
        "completion_tokens_max": n * cfg.max_tokens,
        "cost_usd": cost_range([(cfg.llm.resolve_price(), n, prompt_tokens // max(n, 1),
                                 cfg.max_tokens)]),
        **cfg.llm.batches(n, 1),
    }
