"""Evaluate a model (and optionally compare it with a baseline) on one task.

Tasks:

- ``pairwise``: both models answer each question; a judge LLM compares the answers twice
  with the positions swapped (see :mod:`instructforge.tuning.judge`); win / tie / loss.
- ``gsm8k``: exact match of the final number against the ``#### N`` reference.
- ``code``: HumanEval pass@1 (greedy), the model's code run with the row's tests in the
  bubblewrap sandbox (:mod:`instructforge.tuning.sandbox`); without a working sandbox the task
  refuses unless ``unsafe_exec`` is set.

A model is ``embedded``, a ``.gguf`` file, an OpenAI-compatible server spec (all through
:func:`instructforge.llm.make_llm`) or a Hugging Face model folder such as one ``train`` wrote
(generated with transformers). The evaluation is an engine job: ``OUT_DIR`` is a run
directory (one record per question, with answers, scores and verdicts; request cache;
resume), and the summary goes to ``OUT_DIR/results.json`` and ``results.md``.

>>> # res = evaluate(EvalConfig(task="gsm8k", model="models/evolved", baseline="embedded"), "ev")
>>> # res["summary"]["model"]["accuracy"]
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from instructforge.engine import Context, run_job
from instructforge.errors import InstructForgeError
from instructforge.inputs import InputError, Row, read_rows
from instructforge.llm import LLM, SamplingParams, make_llm
from instructforge.llm.urls import redact_urls
from instructforge.records import Record, new_record, stable_id, stable_seed
from instructforge.tuning import gsm8k, humaneval, judge, train_extra_missing
from instructforge.tuning.hf_llm import HFModel, is_hf_model_dir
from instructforge.tuning.prompts import render
from instructforge.tuning.sandbox import sandbox_problem
from instructforge.tuning.train import unfinished_model

TASKS = ("pairwise", "gsm8k", "code")
DATA_DIR = Path(__file__).parent.parent / "data"
BUILTIN_DATA = {
    "pairwise": DATA_DIR / "pairwise_questions.jsonl",
    "gsm8k": DATA_DIR / "gsm8k_sample.jsonl",
    "code": DATA_DIR / "code_sample.jsonl",
}
REQUIRED_FIELDS = {
    "pairwise": (),  # any of QUESTION_FIELDS
    "gsm8k": ("question", "answer"),
    "code": ("prompt", "test", "entry_point"),
}
QUESTION_FIELDS = ("question", "instruction", "prompt", "turns")
ID_FIELDS = ("id", "question_id", "task_id")


class EvalError(InstructForgeError, ValueError):
    """Bad evaluation input (data file, task or options), with the file/line/field at fault."""


@dataclass
class EvalConfig:
    """What to evaluate and how. ``data`` None uses the small built-in set for the task."""

    task: str = "pairwise"
    model: str = "embedded"
    baseline: str | None = None
    judge_model: str = "embedded"
    data: str | None = None
    limit: int | None = None
    max_tokens: int = 512
    judge_max_tokens: int = 512
    temperature: float = 0.0
    code_timeout: float = 10.0
    code_memory_mb: int = 1024
    unsafe_exec: bool = False  # run code without the OS sandbox when none works here
    concurrency: int = 8
    device: str = "auto"
    progress: bool = True


# ---------------------------------------------------------------------------- data


def load_items(task: str, path: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """Read a task's JSONL into items ``{"id", "line", "file", "row"}``, checking fields.

    Pairwise rows need a question (``question``, ``instruction``, ``prompt`` or MT-Bench's
    ``turns``); GSM8K rows ``question`` and ``answer``; HumanEval rows ``prompt``, ``test`` and
    ``entry_point``.

    >>> len(load_items("gsm8k", limit=3))
    3
    """
    if task not in TASKS:
        raise EvalError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    p = Path(path) if path else BUILTIN_DATA[task]
    if not p.is_file():
        raise EvalError(f"{p}: no such data file")
    items: list[dict] = []
    try:
        for found in read_rows(p):  # the reader every command shares
            items.append(_item(task, p, found))
            if limit is not None and len(items) >= limit:
                break
    except InputError as e:
        raise EvalError("\n".join(e.problems)) from None
    if not items:
        raise EvalError(f"{p}: no rows")
    return items


def _item(task: str, p: Path, found: Row) -> dict[str, Any]:
    """One row as an item, or :class:`EvalError` naming its line and field."""
    where, row = f"{p}:{found.line}", found.data
    if found.problem is not None or row is None:
        raise EvalError(f"{where}: {found.problem}")
    for f in REQUIRED_FIELDS[task]:
        if not isinstance(row.get(f), str) or not row[f].strip():
            raise EvalError(f"{where}: field {f!r} is missing or not a non-empty string")
    if task == "pairwise" and question_text(row) is None:
        raise EvalError(f"{where}: no question; give one of the fields {', '.join(QUESTION_FIELDS)}")
    item_id = next((str(row[k]) for k in ID_FIELDS if row.get(k) is not None), None)
    return {"id": item_id or f"line{found.line}", "line": found.line, "file": str(p), "row": row}


def question_text(row: dict[str, Any]) -> str | None:
    """The question of a pairwise row (first turn of an MT-Bench ``turns`` list)."""
    for k in QUESTION_FIELDS:
        v = row.get(k)
        if k == "turns" and isinstance(v, list) and v and isinstance(v[0], str):
            return v[0]
        if isinstance(v, str) and v.strip():
            return v
    return None


def task_prompt(task: str, row: dict[str, Any]) -> str:
    """The user message a model answers for one row of ``task``."""
    if task == "gsm8k":
        return render("gsm8k", question=row["question"])
    if task == "code":
        return render("code", prompt=row["prompt"])
    return question_text(row) or ""


# ---------------------------------------------------------------------------- models


def make_eval_llm(spec: str, device: str = "auto") -> LLM:
    """A Hugging Face folder becomes an :class:`HFModel`; anything else goes to ``make_llm``.

    >>> # make_eval_llm("models/evolved"), make_eval_llm("embedded")
    """
    if problem := unfinished_model(spec):
        raise EvalError(problem)
    if is_hf_model_dir(spec):
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as e:
            raise EvalError(train_extra_missing(f"evaluating the model folder {spec}", e)) from None
        return HFModel(spec, device=device)
    return make_llm(spec)


# ---------------------------------------------------------------------------- scoring


async def _answer(ctx: Context, llm: LLM, prompt: str, item_id: str, cfg: EvalConfig,
                  role: str) -> dict[str, Any]:
    params = SamplingParams(
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        seed=stable_seed(item_id, "answer"),
    )
    out = await ctx.chat(llm, [{"role": "user", "content": prompt}], params, step=f"answer:{role}")
    return {"model": llm.model_id, "text": out.text, "finish_reason": out.finish_reason,
            "completion_tokens": out.completion_tokens}


async def _score(task: str, row: dict[str, Any], answer: str, cfg: EvalConfig) -> dict[str, Any]:
    if task == "gsm8k":
        gold = gsm8k.gold_answer(row["answer"])
        pred = gsm8k.extract_answer(answer)
        return {"gold": gold, "extracted": pred, "correct": gsm8k.is_correct(answer, gold)}
    res = await humaneval.run_tests(
        row["prompt"], answer, row["test"], row["entry_point"],
        timeout=cfg.code_timeout, memory_mb=cfg.code_memory_mb, unsafe=cfg.unsafe_exec,
    )
    return {"status": res.status, "passed": res.passed, "stderr": res.stderr[-1000:],
            "seconds": round(res.seconds, 3), "isolation": res.isolation}


async def _judge_pair(ctx: Context, judge_llm: LLM, question: str, model_answer: str,
                      baseline_answer: str, item_id: str, cfg: EvalConfig) -> dict[str, Any]:
    # The verdict alone, constrained to [[A]] / [[B]] / [[C]] where the server can enforce it;
    # parse_verdict also reads a free-text answer from a server that cannot.
    params = SamplingParams(temperature=0.0, max_tokens=cfg.judge_max_tokens,
                            seed=stable_seed(item_id, "judge"), choices=judge.VERDICT_CHOICES)
    raws, views, texts = [], [], []
    # Ordering 1: the model's answer first (A); ordering 2: the baseline's first.
    for model_is, (a, b) in (("A", (model_answer, baseline_answer)),
                             ("B", (baseline_answer, model_answer))):
        out = await ctx.chat(judge_llm, judge.judge_messages(question, a, b), params,
                             step=f"judge:model-as-{model_is}")
        verdict = judge.parse_verdict(out.text)
        raws.append(verdict)
        views.append(judge.model_view(verdict, model_is=model_is))
        texts.append(out.text)
    return {"raw": raws, "verdicts": views, "outcome": judge.combine(*views),
            "judgements": texts, "judge": judge_llm.model_id}


# ---------------------------------------------------------------------------- the job


def evaluate(
    config: EvalConfig,
    out_dir: str | Path,
    *,
    run_dir: str | Path | None = None,
    llms: dict[str, LLM] | None = None,
) -> dict[str, Any]:
    """Run one evaluation into ``out_dir`` and return its results (also saved as JSON + table).

    With ``run_dir`` (the run whose data trained the model), the results are copied to
    ``RUN_DIR/eval/`` so the run's report shows them. Rerunning resumes: finished questions and
    LLM calls are not repeated. ``llms`` passes ready ``LLM`` objects by role (``model``,
    ``baseline``, ``judge``) instead of building them from the config's specs.

    >>> # evaluate(EvalConfig(task="pairwise", model="m", baseline="embedded"), "ev/pairwise")
    """
    cfg = config
    if cfg.task not in TASKS:
        raise EvalError(f"unknown task {cfg.task!r}; choose one of {', '.join(TASKS)}")
    if cfg.task == "pairwise" and not (cfg.baseline or (llms and "baseline" in llms)):
        raise EvalError("the pairwise task compares two models: give --baseline")
    if cfg.task == "code" and not cfg.unsafe_exec and (problem := sandbox_problem()):
        raise EvalError(
            f"the code task runs model-written programs, and no OS sandbox works here: "
            f"{problem}. Pass --unsafe-exec (EvalConfig.unsafe_exec) to run them anyway with "
            "Python-level limits only, which code written to escape gets around."
        )
    items = load_items(cfg.task, cfg.data, cfg.limit)
    given = llms or {}

    def build(role: str, spec: str) -> LLM:
        return given[role] if role in given else make_eval_llm(spec, cfg.device)

    models: dict[str, LLM] = {"model": build("model", cfg.model)}
    if cfg.baseline or "baseline" in given:
        models["baseline"] = build("baseline", cfg.baseline or "")
    judge_llm = build("judge", cfg.judge_model) if cfg.task == "pairwise" else None

    # Ids depend on everything that decides the result, so a changed model or option is a
    # new evaluation in the same directory, never a stale "already done".
    key = [cfg.task, cfg.max_tokens, cfg.temperature, *(m.model_id for m in models.values()),
           judge_llm.model_id if judge_llm else "", cfg.judge_max_tokens]
    if judge_llm:
        key.append(judge.PROTOCOL)  # how the judge is asked (prompt and constraint)
    inputs: list[Record] = []
    for it in items:
        prompt = task_prompt(cfg.task, it["row"])
        inputs.append(new_record(
            stable_id(*key, it["id"]),
            messages=[{"role": "user", "content": prompt}],
            method="eval",
            source={"file": it["file"], "line": it["line"], "id": it["id"]},
            metadata={"task": cfg.task, "item_id": it["id"],
                      "category": it["row"].get("category")},
        ))
    rows = {r["id"]: it["row"] for r, it in zip(inputs, items, strict=True)}

    async def process(record: Record, ctx: Context) -> list[Record]:
        row = rows[record["id"]]
        item_id = record["metadata"]["item_id"]
        prompt = record["messages"][0]["content"]
        answers = {role: await _answer(ctx, llm, prompt, item_id, cfg, role)
                   for role, llm in models.items()}
        result: dict[str, Any] = {"answers": answers}
        if cfg.task == "pairwise":
            assert judge_llm is not None
            result["pairwise"] = await _judge_pair(
                ctx, judge_llm, prompt, answers["model"]["text"], answers["baseline"]["text"],
                item_id, cfg)
        else:
            result["scores"] = {role: await _score(cfg.task, row, a["text"], cfg)
                                for role, a in answers.items()}
        meta = {**record["metadata"], **result}
        return [{**record, "metadata": meta,
                 "messages": [*record["messages"],
                              {"role": "assistant", "content": answers["model"]["text"]}]}]

    llms = [*models.values(), *([judge_llm] if judge_llm else [])]
    job = run_job(
        f"eval-{cfg.task}", inputs, process, out_dir,
        config={"eval": asdict(cfg), "models": {k: m.describe() for k, m in models.items()},
                "judge": judge_llm.describe() if judge_llm else None},
        total=len(inputs), concurrency=cfg.concurrency, progress=cfg.progress,
        llms=[m for m in llms if not isinstance(m, HFModel)],
    )
    done = _read_results(Path(out_dir), {r["id"] for r in inputs})
    results = {
        "task": cfg.task,
        "data": str(cfg.data or BUILTIN_DATA[cfg.task]),
        "models": {k: {"spec": redact_urls(getattr(cfg, k)), "id": m.model_id}
                   for k, m in models.items()},
        "judge": ({"spec": redact_urls(cfg.judge_model), "id": judge_llm.model_id}
                  if judge_llm else None),
        "questions": len(inputs),
        "evaluated": len(done),
        "failed": job.failed,
        "summary": summarize(cfg.task, done, list(models)),
    }
    write_results(results, Path(out_dir), run_dir)
    return results


def _read_results(out_dir: Path, ids: set[str]) -> list[Record]:
    path = out_dir / "data" / "records.jsonl"
    if not path.exists():
        return []
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                if rec.get("id") in ids:
                    out.append(rec)
    return out


def summarize(task: str, records: list[Record], roles: list[str]) -> dict[str, Any]:
    """The task's figures from evaluated records (see :func:`judge.summarize` for pairwise).

    >>> summarize("gsm8k", [{"metadata": {"scores": {"model": {"correct": True}}}}], ["model"])
    {'model': {'n': 1, 'correct': 1, 'accuracy': 1.0}}
    """
    metas = [r["metadata"] for r in records]
    if task == "pairwise":
        summary = judge.summarize([m["pairwise"] for m in metas])
        by_cat: dict[str, list[dict]] = {}
        for m in metas:
            by_cat.setdefault(m.get("category") or "-", []).append(m["pairwise"])
        summary["by_category"] = {c: judge.summarize(v) for c, v in sorted(by_cat.items())}
        return summary
    field_ = "correct" if task == "gsm8k" else "passed"
    name = "accuracy" if task == "gsm8k" else "pass@1"
    out: dict[str, Any] = {}
    for role in roles:
        hits = [bool(m["scores"][role][field_]) for m in metas if role in m.get("scores", {})]
        out[role] = {"n": len(hits), field_: sum(hits),
                     name: round(sum(hits) / len(hits), 4) if hits else None}
    return out


def results_rows(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The results as a table: (header, rows). Stored in ``results.json`` so that a report
    can show it without knowing each task.

    >>> results_rows({"task": "gsm8k", "models": {"model": {"spec": "m"}},
    ...        "summary": {"model": {"n": 2, "correct": 1, "accuracy": 0.5}}})[1]
    [['model', 'm', 2, 1, 0.5]]
    """
    task, s = results["task"], results["summary"]
    if task == "pairwise":
        header = ["category", "questions", "win", "tie", "loss", "error", "win rate", "score",
                  "consistency"]
        rows = [
            [cat, v["questions"], v["wins"], v["ties"], v["losses"], v["errors"], v["win_rate"],
             v["score"], v["consistency"]]
            for cat, v in [("all", s), *s.get("by_category", {}).items()]
        ]
        return header, rows
    metric = "accuracy" if task == "gsm8k" else "pass@1"
    hit = "correct" if task == "gsm8k" else "passed"
    rows = [[role, results["models"][role]["spec"], v["n"], v[hit], v[metric]]
            for role, v in s.items()]
    return ["role", "model", "n", hit, metric], rows


def results_table(results: dict[str, Any]) -> str:
    """A Markdown table of the results (what ``results.md`` holds).

    >>> print(results_table({"task": "gsm8k", "models": {"model": {"spec": "m"}},
    ...        "summary": {"model": {"n": 2, "correct": 1, "accuracy": 0.5}}}).splitlines()[2])
    | model | m | 2 | 1 | 0.5 |
    """
    header, rows = results_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(results: dict[str, Any], out_dir: Path, run_dir: str | Path | None) -> None:
    """Save ``results.json`` and ``results.md`` in ``out_dir`` (and ``RUN_DIR/eval/``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header, rows = results_rows(results)
    results = {**results, "table": {"header": header, "rows": rows}}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    models = ", ".join(f"{k}: {v['spec']}" for k, v in results["models"].items())
    judge_line = f" (judge: {results['judge']['spec']})" if results.get("judge") else ""
    md = (f"## Evaluation: {results['task']}\n\n{models}{judge_line}; "
          f"{results['evaluated']}/{results['questions']} questions from {results['data']}\n\n"
          f"{results_table(results)}\n")
    (out_dir / "results.md").write_text(md, encoding="utf-8")
    if run_dir is not None:
        dest = Path(run_dir) / "eval"
        dest.mkdir(parents=True, exist_ok=True)
        name = f"{results['task']}-{out_dir.name}"
        shutil.copyfile(out_dir / "results.json", dest / f"{name}.json")
        shutil.copyfile(out_dir / "results.md", dest / f"{name}.md")
