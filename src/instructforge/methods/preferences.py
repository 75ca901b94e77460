"""Preference pairs for DPO: several answers to each instruction, ranked by a judge.

For each kept record of a run:

1. **Responses**: ``n`` answers to its prompt (the conversation before its last answer), each
   with its own seed and temperature, from one model or several (``response_llms`` are used
   in turn: answer ``i`` comes from model ``i % len(response_llms)``).
2. **Judge**: a constrained call (``SamplingParams.json_schema``: an ``analysis``, then
   ``best``, one of ``"1"``..``"n"``) names the best answer and says why; a second one
   (``SamplingParams.choices``: the other numbers) names the worst (with two answers, the
   other one is the worst).
3. **Pair**: the best answer is ``chosen``, the worst ``rejected``, kept in
   ``metadata["preferences"]`` with the judge's reason and every candidate; the record's own
   answer becomes the chosen one. A record whose answers are all the same, or whose judge
   gives no usable verdict, goes to ``rejected.jsonl`` saying why.

The output is a run directory written by the engine (resumable, every call cached);
``instructforge export RUN --format dpo`` writes the ``prompt``/``chosen``/``rejected`` rows
TRL's ``DPOTrainer`` reads. :func:`estimate` plans the calls, tokens and cost without calling
anything (the CLI's ``--dry-run``).

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
from instructforge.llm.prices import cost_range
from instructforge.llm.structured import read_choice, read_json
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
    """The first verdict's JSON schema: a short analysis, then the best answer's number.
    ``SamplingParams`` keeps a schema as sorted JSON, and constrained decoding writes the
    keys in that order, so ``analysis`` (alphabetically first) comes before ``best``: the
    judge reasons before it decides.

    >>> judge_schema(3)["properties"]["best"]["enum"]
    ['1', '2', '3']
    """
    return {
        "type": "object",
        "properties": {
            "analysis": {"type": "string", "maxLength": 300},
            "best": {"type": "string", "enum": [str(i) for i in range(1, n + 1)]},
        },
        "required": ["analysis", "best"],
        "additionalProperties": False,
    }


def read_best(text: str, n: int) -> tuple[int, str] | None:
    """``(best, analysis)`` (a 0-based answer index) from the judge's first answer, or None
    when it names no answer among ``1..n``.

    >>> read_best('{"analysis": "2 is right", "best": "2"}', 3)
    (1, '2 is right')
    >>> read_best('{"analysis": "none", "best": "7"}', 3) is None
    True
    """
    value = read_json(text)
    if not isinstance(value, dict):
        return None
    best = read_choice(str(value.get("best", "")), [str(i) for i in range(1, n + 1)])
    if best is None:
        return None
    return int(best) - 1, str(value.get("analysis") or "").strip()


def prompt_messages(record: Record) -> list[Message]:
    """The conversation the answers continue: the record's messages before its last
    assistant answer (``role``/``content`` only)."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in record.get("messages") or []]
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    return msgs


def judge_messages(prompt: list[Message], answers: list[str]) -> list[Message]:
    """The judge's first request: the conversation's last user turn and the numbered answers."""
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
    seed = stable_seed(cfg.seed, record["id"], f"{STEP}-judge")
    asked = judge_messages(prompt, texts)
    params = SamplingParams(0.0, 1.0, cfg.judge_max_tokens, seed, json_schema=judge_schema(cfg.n))
    out = await ctx.chat(judge, asked, params, step=f"{STEP}-judge")
    verdict = read_best(out.text, cfg.n)
    if verdict is None:
        return rejected(record, stage=STEP, rule="no_verdict",
                        reason="the judge named no best answer", evidence=out.text)
    best, reason = verdict
    others = [str(i + 1) for i in range(cfg.n) if i != best]
    if len(others) == 1:
        worst = int(others[0]) - 1
    else:  # then the worst, among the others only: never the best one again
        follow = [*asked, {"role": "assistant", "content": out.text},
                  {"role": "user", "content": render_prompt("preferences", "judge_worst.jinja",
                                                            others=others)}]
        params = SamplingParams(0.0, 1.0, 8, seed, choices=tuple(others))
        second = await ctx.chat(judge, follow, params, step=f"{STEP}-judge")
        choice = read_choice(second.text, others)
        if choice is None:
            return rejected(record, stage=STEP, rule="no_verdict",
                            reason="the judge named no worst answer", evidence=second.text)
        worst = int(choice) - 1
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


def check_output(run_dir: str | Path, out_dir: str | Path | None) -> None:
    """Refuse an output run that is the input run itself."""
    if out_dir is not None and Path(out_dir).resolve() == Path(run_dir).resolve():
        raise PreferencesError("-o must name a new run directory, not the input run")


def judge_calls(n: int) -> int:
    """Judge calls a record makes at most: the best, then the worst among the others (with
    two answers the other one is the worst: no second call)."""
    return 1 if n == 2 else 2


def estimate(run_dir: str | Path, config: PreferencesConfig | None = None,
             out_dir: str | Path | None = None) -> dict[str, Any]:
    """What :func:`preferences` would do and cost at most, without calling anything (the
    CLI's ``--dry-run``). Checks the config and the input run as :func:`preferences` does.

    Prompt tokens are about 4 characters a token plus 20 for the chat template; the judge's
    prompt is counted with every answer at ``max_tokens``; the low end of ``cost_usd``
    counts no answer tokens, the high end every answer and verdict at its cap."""
    cfg = config or PreferencesConfig()
    cfg.validate()
    check_output(run_dir, out_dir)
    records = kept_records(run_dir)
    asked = [r for r in records if any(m["role"] == "user" for m in prompt_messages(r))]
    k = len(asked)
    prompt_chars = sum(len(m["content"]) for r in asked for m in prompt_messages(r))
    answer_prompt = (prompt_chars // 4 + 20 * k) // max(k, 1)  # tokens, a record on average
    judge_chars = sum(len(m["content"]) for r in asked
                      for m in judge_messages(prompt_messages(r), [""] * cfg.n))
    judge_prompt = (judge_chars // 4 + 20 * k) // max(k, 1) + cfg.n * cfg.max_tokens
    responders = cfg.responders()
    per_model = [sum(1 for i in range(cfg.n) if i % len(responders) == j)
                 for j in range(len(responders))]
    worst = judge_calls(cfg.n) - 1
    parts = [(mc.resolve_price(), k * calls, answer_prompt, cfg.max_tokens)
             for mc, calls in zip(responders, per_model, strict=True)]
    parts.append((cfg.llm.resolve_price(), k, judge_prompt, cfg.judge_max_tokens))
    if worst:  # the follow-up: the first request, its verdict and one more line; a number
        parts.append((cfg.llm.resolve_price(), k, judge_prompt + cfg.judge_max_tokens + 30, 8))
    batches: dict[str, int] = {}
    for mc, requests, steps in [*((mc, k * calls, 1) for mc, calls in
                                  zip(responders, per_model, strict=True)),
                                (cfg.llm, k, 1 + worst)]:
        for key, v in mc.batches(requests, steps).items():
            batches[key] = batches.get(key, 0) + v
    return {
        "input": str(run_dir),
        "records": len(records),
        "without_a_prompt": len(records) - k,
        "answers_per_record": cfg.n,
        "models": f"judge={cfg.llm.model} responses="
                  + ",".join(dict.fromkeys(mc.model for mc in responders)),
        "llm_calls_at_most": k * (cfg.n + judge_calls(cfg.n)),
        "prompt_tokens_approx": k * (cfg.n * answer_prompt + judge_prompt
                                     + worst * (judge_prompt + cfg.judge_max_tokens + 30)),
        "completion_tokens_max": k * (cfg.n * cfg.max_tokens + cfg.judge_max_tokens + 8 * worst),
        "cost_usd": cost_range(parts),
        **batches,
    }


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
    check_output(run_dir, out_dir)
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
