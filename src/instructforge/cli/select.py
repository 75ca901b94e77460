"""``instructforge select RUN_DIR --by ifd --top 25% -o NEW_RUN``: keep the most useful records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from instructforge.analysis.select import SCORES, SelectConfig, plan_select, select_dataset
from instructforge.cli.common import (
    ApiKeyOpt,
    MaxConcurrencyOpt,
    MaxRetriesOpt,
    TimeoutOpt,
    app,
    console,
    handle_errors,
    out,
    print_plan,
    terminal_text,
)
from instructforge.records import instruction


@app.command("select")
@handle_errors
def select_cmd(
    source: Annotated[Path, typer.Argument(help="A run directory, or a .jsonl / .json / "
                                           ".parquet / .csv dataset.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New run directory.")],
    by: Annotated[str, typer.Option("--by", help=f"Score to rank by: {', '.join(SCORES)}.")]
    = "ifd",
    top: Annotated[str, typer.Option("--top", help="How many to keep: a share such as 25% "
                                     "or a count such as 500.")] = "25%",
    ic_ifd: Annotated[bool, typer.Option("--ic-ifd", help="IC-IFD: take the response-alone "
                                         "loss after a fixed in-context chat prefix.")] = False,
    model: Annotated[str, typer.Option("--model", "-m", help="Student for IFD: a Hugging Face "
                                       "model folder, a .gguf file, or 'embedded'; with "
                                       "--base-url the served model's name ('embedded': the "
                                       "server's only model).")]
    = "embedded",
    base_url: Annotated[str | None, typer.Option(
        "--base-url", help="Score IFD with this OpenAI-compatible server's prompt "
        "log-probabilities (/v1/completions with echo and logprobs, as vLLM answers), e.g. "
        "http://127.0.0.1:8000/v1, instead of a local student.")] = None,
    api_key: ApiKeyOpt = None,
    prompt_template: Annotated[Path | None, typer.Option(
        "--prompt-template", dir_okay=False, help="Jinja file rendering what goes before a "
        "response on the server path (variables: instruction, none for the response alone; "
        "examples). Default: prompts/tuning/ifd_server.jinja.")] = None,
    max_concurrency: MaxConcurrencyOpt = None,
    timeout: TimeoutOpt = None,
    max_retries: MaxRetriesOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Records per forward "
                                            "pass (IFD).")] = 8,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Cut "
                                            "instructions and responses to this many tokens "
                                            "(IFD; with --base-url the responses only).")]
    = 1024,
    show: Annotated[int, typer.Option("--show", min=0, help="Print the N best-ranked "
                                      "records.")] = 5,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT if it exists.")]
    = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the source and options, "
                                          "print what would be scored and kept; score and "
                                          "write nothing.")] = False,
) -> None:
    """Rank records by IFD (student model losses) or existing ratings and keep the top.

    IFD = loss(response | instruction) / loss(response alone) under the student (Li et al.
    2023); records with IFD >= 1 are dropped as misaligned, the rest ranked highest first.
    Scores land in metadata.selection; the rest go to rejected.jsonl with score and rank.
    With --base-url the losses come from a server's prompt log-probabilities (vLLM).

    Example: [bold]instructforge select runs/demo --by ifd --top 25% -o runs/demo-ifd[/bold]
    """
    cfg = SelectConfig(by=by, top=top, ic_ifd=ic_ifd, model=model, batch_size=batch_size,
                       max_tokens=max_tokens, overwrite=overwrite, base_url=base_url,
                       prompt_template=str(prompt_template) if prompt_template else None,
                       max_concurrency=max_concurrency, timeout=timeout,
                       max_retries=max_retries)
    if dry_run:
        print_plan(plan_select(source, output, cfg))
        return
    result = select_dataset(source, output, cfg, api_key=api_key)
    console.print(result.summary(), highlight=False)
    if show:
        t = Table("rank", result.by, "id", "instruction")
        with (result.run_dir / "data" / "records.jsonl").open(encoding="utf-8") as fh:
            for line, _ in zip(fh, range(show), strict=False):
                rec = json.loads(line)
                sel = rec["metadata"]["selection"]
                t.add_row(str(sel["rank"]), f"{sel['score']:.3f}", terminal_text(str(rec["id"])),
                          terminal_text(instruction(rec)[:70].replace("\n", " ")))
        out.print(t)
