"""``instructforge respond``: answer every instruction in a file."""

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
    ColumnOpt,
    ConfigOpt,
    DryRunOpt,
    ExecutorOpt,
    LimitOpt,
    MaxConcurrencyOpt,
    MaxCostOpt,
    MaxRetriesOpt,
    ModelOpt,
    ModelPathOpt,
    PriceOpt,
    ProgressOpt,
    RpmOpt,
    ShardsOpt,
    SharedCacheOpt,
    SkipInvalidOpt,
    TimeoutOpt,
    TpmOpt,
    app,
    console,
    exit_if_incomplete,
    handle_errors,
    in_flight,
    positive,
    print_plan,
    print_samples,
    print_usage,
    smoke_test_note,
)
from instructforge.engine import RunDir
from instructforge.inputs import InstructionSource
from instructforge.llm.config import ModelConfig
from instructforge.methods.respond import RespondConfig, estimate, respond


@app.command("respond")
@handle_errors
def respond_cmd(
    input: Annotated[
        str, typer.Argument(help="JSONL, JSON, Parquet or CSV file, a saved HF dataset folder, "
                            "or hf:NAME[:split].")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory (resumable).")],
    config: ConfigOpt = None,
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
    column: ColumnOpt = "instruction",
    system_prompt: Annotated[
        str | None, typer.Option("--system-prompt", help="System message for every request.")
    ] = None,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature.")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", max=1.0, callback=positive,
                                         help="Nucleus sampling (> 0).")] = 1.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Answer length cap.")
                          ] = 512,
    seed: Annotated[int, typer.Option(help="Base seed; each request gets its own from it.")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, help="Records in flight.")] = 64,
    limit: LimitOpt = None,
    skip_invalid: SkipInvalidOpt = False,
    shared_cache: SharedCacheOpt = None,
    executor: ExecutorOpt = "local",
    shards: ShardsOpt = None,
    show: Annotated[int, typer.Option(min=0, help="Sample records printed at the end.")] = 3,
    dry_run: DryRunOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Answer every instruction in INPUT with an LLM into a run directory.

    Example: [bold]instructforge respond examples/instructions.jsonl -o runs/answers[/bold]
    """
    cfg = RespondConfig(
        llm=ModelConfig(model, base_url, model_path, max_concurrency, timeout, max_retries,
                        price=price, rpm=rpm, tpm=tpm, batch=batch,
                           batch_poll=batch_poll, batch_window=batch_window),
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
        system_prompt=system_prompt,
        column=column,
        skip_invalid=skip_invalid,
        limit=limit,
        concurrency=in_flight(concurrency, batch),
        shared_cache=shared_cache,
        executor=executor,
        shards=shards,
        max_cost=max_cost,
    )
    if dry_run:
        source = InstructionSource(input, column=column, skip_invalid=skip_invalid, limit=limit)
        source.validate()
        print_plan({"input": input, "model": model if not base_url else f"{model} @ {base_url}",
                    **estimate(source, cfg)})
        smoke_test_note(model, base_url, model_path)
        return
    result = respond(input, output, cfg, api_key=api_key, progress=progress)
    print_usage(result.usage)
    print_samples(RunDir(output), show)
    console.print(result.summary(), highlight=False)
    smoke_test_note(model, base_url, model_path)
    exit_if_incomplete(result)
