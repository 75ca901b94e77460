"""``instructforge eval --model MODEL [--baseline MODEL_B] --task pairwise|gsm8k|code``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from instructforge.cli.common import (
    ConfigOpt,
    DryRunOpt,
    ProgressOpt,
    app,
    console,
    handle_errors,
    out,
    positive,
    print_plan,
)


class Task(StrEnum):
    pairwise = "pairwise"
    gsm8k = "gsm8k"
    code = "code"


@app.command("eval")
@handle_errors
def eval_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Evaluation run directory.")],
    task: Annotated[Task, typer.Option("--task", help="pairwise (LLM judge), gsm8k (exact "
                    "match) or code (HumanEval pass@1).")] = Task.pairwise,
    config: ConfigOpt = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model to evaluate: 'embedded', a "
                     ".gguf, a Hugging Face folder (e.g. from `train`) or openai:MODEL@URL.")
                     ] = "embedded",
    baseline: Annotated[str | None, typer.Option("--baseline", help="Model to compare with "
                        "(required for pairwise).")] = None,
    judge_model: Annotated[str, typer.Option("--judge-model", help="Judge for pairwise.")
                           ] = "embedded",
    data: Annotated[str | None, typer.Option("--data", help="JSONL questions (default: the "
                    "built-in set for the task).")] = None,
    run: Annotated[Path | None, typer.Option("--run", help="Also add the results to this run "
                   "directory's eval/ folder (its report).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="First N questions.")
                     ] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Answer length cap.")
                          ] = 512,
    judge_max_tokens: Annotated[int, typer.Option("--judge-max-tokens", min=1,
                                                  help="Judge answer length cap.")] = 512,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy (pass@1).")] = 0.0,
    code_timeout: Annotated[float, typer.Option("--code-timeout", callback=positive,
                                                help="Seconds per program (> 0).")] = 10.0,
    code_memory_mb: Annotated[int, typer.Option("--code-memory-mb", min=1,
                                                help="Memory limit per program.")] = 1024,
    unsafe_exec: Annotated[bool, typer.Option("--unsafe-exec", help="For --task code where no "
                           "bubblewrap sandbox works: run the model's programs anyway, with "
                           "Python-level limits only (not a security boundary).")] = False,
    concurrency: Annotated[int, typer.Option(min=1, help="Questions in flight.")] = 8,
    device: Annotated[str, typer.Option(help="For Hugging Face folders: auto, cpu, cuda.")
                      ] = "auto",
    dry_run: DryRunOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Evaluate a model, optionally against a baseline, and print a results table.

    Example: [bold]instructforge eval --model models/evolved --baseline models/seeds
    --task pairwise -o evals/pairwise[/bold]
    """
    from instructforge.tuning.eval import (
        EvalConfig,
        EvalError,
        evaluate,
        load_items,
        results_table,
    )

    cfg = EvalConfig(
        task=task.value, model=model, baseline=baseline, judge_model=judge_model, data=data,
        limit=limit, max_tokens=max_tokens, judge_max_tokens=judge_max_tokens,
        temperature=temperature, code_timeout=code_timeout, code_memory_mb=code_memory_mb,
        unsafe_exec=unsafe_exec, concurrency=concurrency, device=device, progress=progress,
    )
    if dry_run:
        if task == Task.pairwise and not baseline:
            raise EvalError("the pairwise task compares two models: give --baseline")
        questions = len(load_items(task.value, data, limit))
        models = [model, *([baseline] if baseline else [])]
        print_plan({"task": task.value, "questions": questions, "model": model,
                    "baseline": baseline or "none",
                    "answer calls": questions * len(models),
                    "judge calls max": 2 * questions if task == Task.pairwise else 0,
                    "judge": judge_model if task == Task.pairwise else "none (scored exactly)",
                    "output": output})
        return
    if task == Task.code and unsafe_exec:
        from instructforge.tuning.sandbox import sandbox_problem

        if problem := sandbox_problem():
            console.print(f"[yellow]warning:[/yellow] --unsafe-exec: running model-written code "
                          f"without an OS sandbox ({escape(problem)}); it can read your files "
                          "and environment and reach the network.", highlight=False)
    res = evaluate(cfg, output, run_dir=run)
    out.print(results_table(res), markup=False, highlight=False)
    console.print(f"results: {output / 'results.json'}", highlight=False)
