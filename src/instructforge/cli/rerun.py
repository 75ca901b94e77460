"""``instructforge rerun``: reproduce (or grow) a run from its ``config.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from instructforge.cli.common import (
    ApiKeyOpt,
    ProgressOpt,
    app,
    console,
    exit_if_incomplete,
    handle_errors,
    print_error,
    print_usage,
)
from instructforge.config import ConfigError
from instructforge.engine import JobResult
from instructforge.methods.rerun import rerun


@app.command("rerun")
@handle_errors
def rerun_cmd(
    run_dir: Annotated[
        Path | None, typer.Argument(help="A run directory: resumed (a finished run calls "
                                    "nothing) or grown with --rounds / -n.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", dir_okay=False,
                                  help="A run's config.yaml to reproduce (with --output).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Run directory to write (default: the "
                                  "run directory itself).")
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="evolve runs: rounds per chain; more than the run "
                                 "has continues every chain from where it stopped.")
    ] = None,
    n: Annotated[
        int | None, typer.Option("-n", "--num", min=1, help="magpie runs: conversations; more than the "
                                 "run has adds conversations.")
    ] = None,
    api_key: ApiKeyOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Run a run again from the config.yaml it wrote: same method, same options.

    Examples: [bold]instructforge rerun runs/demo --rounds 4[/bold] (two more rounds on a 2-round run); [bold]instructforge rerun --config runs/demo/config.yaml -o runs/again[/bold]
    """
    if (run_dir is None) == (config is None):
        print_error("give a run directory or --config RUN_DIR/config.yaml (one of them)")
        raise typer.Exit(2)
    try:
        result = rerun(run_dir or config, output, rounds=rounds, n=n, api_key=api_key,
                       progress=progress)
    except (ConfigError, ValueError) as e:
        print_error(e)
        raise typer.Exit(2) from None
    job = result if isinstance(result, JobResult) else getattr(result, "evolution", None)
    if job is not None:
        print_usage(job.usage)
        console.print(job.summary(), highlight=False)
        exit_if_incomplete(job)
