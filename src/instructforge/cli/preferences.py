"""``instructforge preferences RUN_DIR -n 4 -o NEW_RUN``: preference pairs for DPO."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from instructforge.cli.common import (
    ApiKeyOpt,
    BaseUrlOpt,
    BatchOpt,
    BatchPollOpt,
    BatchWindowOpt,
    ConfigOpt,
    DryRunOpt,
    MaxConcurrencyOpt,
    MaxCostOpt,
    MaxRetriesOpt,
    ModelOpt,
    ModelPathOpt,
    PriceOpt,
    ProgressOpt,
    RpmOpt,
    SharedCacheOpt,
    TimeoutOpt,
    TpmOpt,
    app,
    console,
    exit_if_incomplete,
    handle_errors,
    in_flight,
    out,
    positive,
    print_plan,
    print_usage,
    smoke_test_note,
    terminal_text,
)
from instructforge.engine import RunDir
from instructforge.llm.config import ModelConfig
from instructforge.methods.preferences import PreferencesConfig, estimate, preferences


def print_pairs(run: RunDir, k: int) -> None:
    """The first ``k`` pairs: the instruction, the chosen and the rejected answer, and why."""
    for i, rec in enumerate(run.kept()):
        if i >= k:
            break
        pref = rec["metadata"]["preferences"]
        prompt = next(m["content"] for m in rec["messages"] if m["role"] == "user")
        out.print(f"[bold]--- {terminal_text(rec['id'])}[/bold]", highlight=False)
        for label, text in (("prompt", prompt),
                            (f"chosen (answer {pref['chosen_index'] + 1})", pref["chosen"]),
                            (f"rejected (answer {pref['rejected_index'] + 1})", pref["rejected"]),
                            ("judge", pref["reason"])):
            text = text if len(text) <= 400 else text[:400] + " [...]"
            out.print(f"[cyan]{label}:[/cyan] {terminal_text(text)}", highlight=False)
    console.print(f"records: {terminal_text(str(run.records))}", highlight=False, soft_wrap=True)


@app.command("preferences")
@handle_errors
def preferences_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run directory whose kept records to pair.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New run directory "
                                         "(resumable).")],
    config: ConfigOpt = None,
    n: Annotated[int, typer.Option("-n", "--num", min=2, help="Answers per instruction.")] = 4,
    model: ModelOpt = "embedded",
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    model_path: ModelPathOpt = None,
    max_concurrency: MaxConcurrencyOpt = None,
    timeout: TimeoutOpt = None,
    max_retries: MaxRetriesOpt = None,
    price: PriceOpt = None,
    max_cost: MaxCostOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    batch: BatchOpt = False,
    batch_poll: BatchPollOpt = 30.0,
    batch_window: BatchWindowOpt = 2.0,
    response_model: Annotated[
        list[str] | None,
        typer.Option("--response-model", help="A model that writes answers (same spec forms "
                     "as --model); repeat for several, used in turn. Default: --model."),
    ] = None,
    temperature: Annotated[
        list[float] | None,
        typer.Option("--temperature", min=0.0, help="Sampling temperature of the answers; "
                     "repeat for several, used in turn (default 0.7 and 1.0). Every answer "
                     "has its own seed."),
    ] = None,
    top_p: Annotated[float, typer.Option("--top-p", max=1.0, callback=positive,
                                         help="Nucleus sampling (> 0).")] = 1.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Answer length cap.")
                          ] = 512,
    judge_max_tokens: Annotated[int, typer.Option("--judge-max-tokens", min=1,
                                                  help="Length cap of each verdict.")] = 256,
    seed: Annotated[int, typer.Option(help="Base seed; each request gets its own from it.")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, help="Records in flight.")] = 16,
    shared_cache: SharedCacheOpt = None,
    show: Annotated[int, typer.Option(min=0, help="Sample pairs printed at the end.")] = 2,
    dry_run: DryRunOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Answer each kept instruction of RUN_DIR N times and let a judge (--model) pick the
    best and the worst answer: chosen/rejected pairs for DPO, with the judge's reason.

    Example: [bold]instructforge preferences runs/answers -n 4 -o runs/prefs[/bold]
    """
    def role(spec: str, url: str | None = None, path: str | None = None) -> ModelConfig:
        return ModelConfig(spec, url, path, max_concurrency, timeout, max_retries, price=price,
                           rpm=rpm, tpm=tpm, batch=batch, batch_poll=batch_poll,
                           batch_window=batch_window)

    cfg = PreferencesConfig(
        llm=role(model, base_url, model_path),
        response_llms=[role(m) for m in response_model or []],
        n=n,
        temperatures=list(temperature) if temperature else [0.7, 1.0],
        top_p=top_p,
        max_tokens=max_tokens,
        judge_max_tokens=judge_max_tokens,
        seed=seed,
        concurrency=in_flight(concurrency, batch),
        shared_cache=shared_cache,
        max_cost=max_cost,
    )
    if dry_run:
        print_plan(estimate(run_dir, cfg, output))
        smoke_test_note(model, base_url, model_path)
        return
    result = preferences(run_dir, output, cfg, api_key=api_key, progress=progress)
    print_usage(result.usage)
    print_pairs(RunDir(output), show)
    console.print(result.summary(), highlight=False)
    smoke_test_note(model, base_url, model_path)
    exit_if_incomplete(result)
