"""``instructforge export RUN_DIR --format messages|alpaca|sharegpt [-o FILE]``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from instructforge.cli import app
from instructforge.cli.common import handle_errors
from instructforge.tuning.export import export_run


class ExportFormat(StrEnum):
    messages = "messages"
    alpaca = "alpaca"
    sharegpt = "sharegpt"
    dpo = "dpo"


@app.command("export")
@handle_errors
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (or a records .jsonl file).")],
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", "-f", help="messages (TRL SFT), alpaca, sharegpt, or dpo "
                     "(TRL DPO pairs from a preferences run)."),
    ] = ExportFormat.messages,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Output JSONL (default RUN_DIR/export/FORMAT.jsonl)."),
    ] = None,
) -> None:
    """Export a run's kept records as JSONL that trainers and `datasets` load."""
    res = export_run(run_dir, fmt.value, output)
    skipped = ", ".join(f"{n} {why}" for why, n in res.skipped.items()) or "none"
    typer.echo(f"wrote {res.written} rows to {res.path} (skipped: {skipped})")
