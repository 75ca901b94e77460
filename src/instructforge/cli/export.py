"""``instructforge export RUN_DIR --format messages|alpaca|sharegpt [-o FILE]``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from instructforge.cli import app
from instructforge.cli.common import handle_errors
from instructforge.tuning.export import ExportError, export_run


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
    push_to_hub: Annotated[
        str | None,
        typer.Option("--push-to-hub", metavar="REPO_ID", help="Also publish the rows with a "
                     "dataset card to this Hub dataset (as `instructforge push`).",
                     show_default=False),
    ] = None,
    public: Annotated[bool, typer.Option("--public", help="With --push-to-hub: a public "
                                         "dataset (default: private).")] = False,
    token: Annotated[str | None, typer.Option("--token", help="With --push-to-hub: Hugging Face "
                                              "token (default: HF_TOKEN); never written to a "
                                              "file.", show_default=False)] = None,
) -> None:
    """Export a run's kept records as JSONL that trainers and `datasets` load."""
    if (public or token) and push_to_hub is None:
        raise ExportError("--public and --token go with --push-to-hub REPO_ID")
    res = export_run(run_dir, fmt.value, output)
    skipped = ", ".join(f"{n} {why}" for why, n in res.skipped.items()) or "none"
    typer.echo(f"wrote {res.written} rows to {res.path} (skipped: {skipped})")
    if push_to_hub is not None:
        from instructforge.cli.push import publish

        publish(run_dir, push_to_hub, fmt.value, public=public, token=token, license="other")
