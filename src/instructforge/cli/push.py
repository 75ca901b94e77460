"""``instructforge push RUN_DIR REPO_ID``: the kept records and a dataset card to the Hub."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from instructforge.cli.common import app, handle_errors
from instructforge.cli.export import ExportFormat
from instructforge.tuning.push import PushError, PushResult, prepare, push_run

PublicOpt = Annotated[bool, typer.Option("--public", help="Make the dataset public "
                                         "(default: private).")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Hugging Face token with write "
                                              "access (default: HF_TOKEN, or `hf auth login`'s); "
                                              "never written to a file.", show_default=False)]
LicenseOpt = Annotated[str, typer.Option("--license", help="License id for the card "
                                         "(e.g. apache-2.0, cc-by-4.0; check the models' terms).")]


def publish(run_dir: Path, repo_id: str, fmt: str, *, public: bool, token: str | None,
            license: str) -> PushResult:
    """Upload and say where it went (shared by ``push`` and ``export --push-to-hub``)."""
    res = push_run(run_dir, repo_id, fmt=fmt, private=not public,
                   token=token or os.environ.get("HF_TOKEN") or None, license=license)
    typer.echo(f"pushed {res.rows} rows, README.md and config.yaml to {res.url} "
               f"({'public' if public else 'private'})")
    return res


@app.command("push")
@handle_errors
def push_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (or a records .jsonl file).")],
    repo_id: Annotated[str, typer.Argument(help="Hub dataset repository, OWNER/NAME.")],
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", "-f", help="messages (TRL SFT), alpaca or sharegpt."),
    ] = ExportFormat.messages,
    public: PublicOpt = False,
    token: TokenOpt = None,
    license: LicenseOpt = "other",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write the card and the data files "
                                          "to --output instead of uploading.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder for --dry-run "
                                                "(default RUN_DIR/hub).")] = None,
) -> None:
    """Publish a run's kept records to the Hugging Face Hub with a dataset card (method and
    paper, models per role, config, counts, per-round figures, tokens and cost, how to
    reproduce).

    Example: [bold]instructforge push runs/demo me/demo-evol --dry-run[/bold], then without --dry-run
    """
    if output is not None and not dry_run:
        raise PushError("--output is for --dry-run (an upload writes no local folder)")
    if dry_run:
        folder = output or (run_dir if run_dir.is_dir() else run_dir.parent) / "hub"
        res = prepare(run_dir, folder, fmt=fmt.value, repo_id=repo_id, license=license,
                      public=public)
        typer.echo(f"wrote {', '.join(res.files)} ({res.rows} rows) to {res.folder}; "
                   f"nothing uploaded")
        return
    publish(run_dir, repo_id, fmt.value, public=public, token=token, license=license)
