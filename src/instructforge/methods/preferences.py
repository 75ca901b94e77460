"""Preference pairs for DPO: several answers to each instruction, ranked by a judge.

For each kept record of a run:

1. **Responses**: ``n`` answers to its prompt (the conversation before its last answer), each
   with its own seed and temperature, from one model or several (``response_llms`` are used
   in turn: answer ``i`` comes from model ``i % len(response_llms)``).
2. **Judge**: one constrained call (``SamplingParams.json_schema``: ``reason``, then ``best``
   and ``worst``, each one of ``"1"``..``"n"``) names the best and the worst answer and says
   why.
3. **Pair**: the best answer is ``chosen``, the worst ``rejected``, kept in
   ``metadata["preferences"]`` with the judge's reason and every candidate; the record's own
   answer becomes the chosen one. A record whose answers are all the same, or whose judge
   gives no usable verdict, goes to ``rejected.jsonl`` saying why.

The output is a run directory written by the engine (resumable, every call cached);
``instructforge export RUN --format dpo`` writes the ``prompt``/``chosen``/``rejected`` rows
TRL's ``DPOTrainer`` reads.

>>> cfg = PreferencesConfig(n=4)
>>> result = preferences("runs/answers", "runs/prefs", cfg)      # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from instructforge.engine import Built, Context, Job, JobResult, RunDir
from instructforge.errors import InstructForgeError
from instructforge.llm import LLM, SamplingParams
from instructforge.llm.base import Message
from instructforge.llm.config import ModelConfig, build_roles, distinct, gpus_needed
from instructforge.llm.structured import read_json
from instructforge.prompt_files import render_prompt
from instructforge.records import Record, rejected, stable_seed

STEP = "preferences"


class PreferencesError(InstructForgeError, ValueError):
    """A preferences run that cannot start (no such run, a bad option), explained."""


@dataclass
class PreferencesConfig:
    """Everything a preferences run depends on (saved to config.yaml; no secrets).

    ``temperatures``: answer ``i`` is sampled at ``temperatures[i % len(temperatures)]``;
    every answer has its own seed.
    """

    llm: ModelConfig = field(default_factory=ModelConfig)  # the judge
    response_llms: list[ModelConfig] = field(default_factory=list)  # empty: the judge's model
    n: int = 4
    temperatures: list[float] = field(default_factory=lambda: [0.7, 1.0])
    top_p: float = 1.0
    max_tokens: int = 512
    judge_max_tokens: int = 256
    seed: int = 0
    concurrency: int = 16
    shared_cache: str | None = None
    max_cost: float | None = None

    def validate(self) -> None:
        if self.n < 2:
            raise PreferencesError(f"-n must be at least 2 to make a pair (got {self.n})")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise PreferencesError(f"temperatures must be >= 0 (got {self.temperatures})")

    def responders(self) -> list[ModelConfig]:
        return self.response_llms or [self.llm]


def judge_schema(n: int) -> dict[str, Any]:
    """The verdict's JSON schema: a short reason first (so the judge reasons before it
    decides), then the best and the worst answer's number.

    >>> judge_schema(3)["properties"]["best"]["enum"]
    ['1', '2', '3']
    """
    numbers = [str(i) for i in range(1, n + 1)]
    return {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "maxLength": 400},
            "best": {"type": "string", "enum": numbers},
            "worst": {"type": "string", "enum": numbers},
        },
        "required": ["reason", "best", "worst"],
        "additionalProperties": False,
    }


def read_verdict(text: str, n: int) -> tuple[int, int, str] | None:
    """``(best, worst, reason)`` (0-based answer indices) from the judge's answer, or None when
    it names no two different answers among ``1..n``.

    >>> read_verdict('{"reason": "2 is right", "best": "2", "worst": "1"}', 3)
    (1, 0, '2 is right')
    >>> read_verdict('{"reason": "", "best": "2", "worst": "2"}', 3) is None
    True
    """
    value = read_json(text)
    if not isinstance(value, dict):
        return None
    try:
        best, worst = int(str(value.get("best"))), int(str(value.get("worst")))
    except ValueError:
        return None
    if not (1 <= best <= n and 1 <= worst <= n) or best == worst:
        return None
    return best - 1, worst - 1, str(value.get("reason") or "").strip()


def prompt_messages(record: Record) -> list[Message]:
    """The conversation the answers continue: the record's messages before its last
    assistant answer (``role``/``content`` only)."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in record.get("messages") or []]
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    return msgs


def judge_messages(prompt: list[Message], answers: list[str]) -> list[Message]:
    """The judge's request: the conversation's last user turn and the numbered answers."""
    last_user = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
    return [
        {"role": "system", "content": render_prompt("preferences", "judge_system.jinja")},
        {"role": "user", "content": render_prompt("preferences", "judge.jinja",
                                                  prompt=last_user, answers=answers)},
    ]


async def rank(record: Record, ctx: Context, cfg: PreferencesConfig, responders: list[LLM],
               judge: LLM) -> Record:
    """``record`` with a chosen/rejected pair, or a rejected copy saying why there is none."""
    prompt = prompt_messages(record)
    if not any(m["role"] == "user" for m in prompt):
        return rejected(record, stage=STEP, rule="no_prompt",
                        reason="the record has no user message to answer")

    async def answer(i: int) -> dict[str, Any]:
        llm = responders[i % len(responders)]
        temperature = cfg.temperatures[i % len(cfg.temperatures)]
        seed = stable_seed(cfg.seed, record["id"], STEP, i)
        params = SamplingParams(temperature, cfg.top_p, cfg.max_tokens, seed)
        out = await ctx.chat(llm, prompt, params, step=f"{STEP}-response")
        return {"text": out.text.strip(), "model": llm.model_id, "temperature": temperature,
                "seed": seed, "finish_reason": out.finish_reason}

    candidates = list(await asyncio.gather(*(answer(i) for i in range(cfg.n))))
    texts = [c["text"] for c in candidates]
    if len({t for t in texts if t}) < 2:
        return rejected(record, stage=STEP, rule="same_answers",
                        reason=f"the {cfg.n} answers hold fewer than two different texts",
                        evidence=texts[:2])
    params = SamplingParams(0.0, 1.0, cfg.judge_max_tokens,
                            stable_seed(cfg.seed, record["id"], f"{STEP}-judge"),
                            json_schema=judge_schema(cfg.n))
    out = await ctx.chat(judge, judge_messages(prompt, texts), params, step=f"{STEP}-judge")
    verdict = read_verdict(out.text, cfg.n)
    if verdict is None:
        return rejected(record, stage=STEP, rule="no_verdict",
                        reason="the judge named no two different answers", evidence=out.text)
    best, worst, reason = verdict
    if texts[best] == texts[worst] or not texts[best] or not texts[worst]:
        return rejected(record, stage=STEP, rule="same_answers",
                        reason="the best and the worst answer are the same text (or empty)",
                        evidence={"best": best + 1, "worst": worst + 1})
    meta = dict(record.get("metadata") or {})
    meta[STEP] = {
        "chosen": texts[best],
        "rejected": texts[worst],
        "chosen_index": best,
        "rejected_index": worst,
        "reason": reason,
        "judge": judge.model_id,
        "candidates": candidates,
    }
    return {**record, "messages": [*prompt, {"role": "assistant", "content": texts[best]}],
            "metadata": meta}


def kept_records(run_dir: str | Path) -> list[Record]:
    """The kept records of ``run_dir``; a clear error when it is not a run directory."""
    run = RunDir(run_dir)
    if not run.records.is_file():
        raise PreferencesError(f"{run.records}: no such file (is {run_dir} a run directory?)")
    return list(run.kept())


def preferences(
    run_dir: str | Path,
    out_dir: str | Path,
    config: PreferencesConfig | None = None,
    *,
    api_key: str | None = None,
    progress: bool = True,
) -> JobResult:
    """Rank ``n`` answers to each kept record of ``run_dir`` into the run ``out_dir``."""
    cfg = config or PreferencesConfig()
    cfg.validate()
    if Path(out_dir).resolve() == Path(run_dir).resolve():
        raise PreferencesError("-o must name a new run directory, not the input run")
    records = kept_records(run_dir)
    return Job(
        STEP,
        records,
        functools.partial(preferences_job, cfg, api_key),
        config={"input": str(run_dir), **asdict(cfg)},
        total=len(records),
        concurrency=cfg.concurrency,
        shared_cache=cfg.shared_cache,
        max_cost=cfg.max_cost,
        num_gpus=gpus_needed(cfg.llm, *cfg.responders()),
    ).run(out_dir, progress=progress)


def preferences_job(cfg: PreferencesConfig, api_key: str | None = None,
                    run: RunDir | None = None) -> Built:
    """The per-record step and its backends (the judge and the response models; one backend
    per distinct model config)."""
    journal = run.batches if run is not None else None
    judge, *responders = build_roles([cfg.llm, *cfg.responders()], api_key, journal)

    async def process(record: Record, ctx: Context) -> list[Record]:
        return [await rank(record, ctx, cfg, responders, judge)]

    return Built(process, distinct([judge, *responders]))
