"""``instructforge train RUN_DIR --base-model PATH -o MODEL_DIR``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import click
import typer

from instructforge.cli.common import (
    ConfigOpt,
    ProgressOpt,
    app,
    console,
    handle_errors,
    positive,
    print_error,
    print_plan,
)


def _steps(value: int) -> int:
    if value != -1 and value < 1:
        raise typer.BadParameter(f"must be -1 (off) or >= 1, got {value}")
    return value


def loss_trend(losses: list[tuple[int, float]], logging_steps: int) -> str:
    """How the logged training loss moved, or why it cannot show a trend.

    >>> loss_trend([(5, 0.88), (10, 0.41)], 5)
    'loss 0.880 -> 0.410 (steps 5-10)'
    >>> loss_trend([(2, 0.381)], 5)
    'loss 0.381 at step 2 only: too few steps to show a trend (the loss is logged every --logging-steps 5)'
    """
    why = f"the loss is logged every --logging-steps {logging_steps}"
    if not losses:
        return f"no loss logged: too few steps to show a trend ({why})"
    (first_step, first), (last_step, last) = losses[0], losses[-1]
    if len(losses) < 2:
        return (f"loss {last:.3f} at step {last_step} only: too few steps to show a trend "
                f"({why})")
    return f"loss {first:.3f} -> {last:.3f} (steps {first_step}-{last_step})"


@app.command("train")
@handle_errors
def train_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (or a records/messages .jsonl).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder to write.")],
    config: ConfigOpt = None,
    base_model: Annotated[
        str, typer.Option("--base-model", help="Hugging Face model folder, a .gguf file, or "
                          "'embedded' (SmolLM2-135M-Instruct converted from its GGUF).")
    ] = "embedded",
    method: Annotated[str, typer.Option("--method", help="sft: supervised on the chats; dpo: "
                      "TRL's DPOTrainer on the chosen/rejected pairs of a preferences run.")
                      ] = "sft",
    beta: Annotated[float, typer.Option("--beta", callback=positive,
                                        help="DPO's KL weight (> 0; --method dpo).")] = 0.1,
    epochs: Annotated[float, typer.Option(callback=positive, help="Passes over the data (> 0).")
                      ] = 3.0,
    max_steps: Annotated[int, typer.Option("--max-steps", callback=_steps, help="Stop after N "
                         "optimizer steps (overrides --epochs; -1: off).")] = -1,
    learning_rate: Annotated[float | None, typer.Option(
        "--learning-rate", "--lr", callback=positive,
        help="Default 2e-5 (full) / 2e-4 (LoRA); > 0.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Per-device batch.")] = 4,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1,
                                            help="Gradient accumulation.")] = 1,
    max_length: Annotated[int, typer.Option("--max-length", min=1, help="Tokens per example.")
                          ] = 1024,
    lora: Annotated[bool, typer.Option("--lora/--full", help="LoRA adapters (merged on save) "
                    "or full fine-tuning.")] = False,
    lora_r: Annotated[int, typer.Option("--lora-r", min=1, help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", min=1, help="LoRA scaling.")] = 32,
    save_steps: Annotated[int, typer.Option("--save-steps", min=1, help="Checkpoint every N steps.")
                          ] = 100,
    logging_steps: Annotated[int, typer.Option("--logging-steps", min=1,
                                               help="Log the loss every N steps.")] = 5,
    seed: Annotated[int, typer.Option(min=0, help="Training seed.")] = 42,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use the first N records.")
                     ] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the last "
                      "checkpoint in MODEL_DIR/checkpoints.")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate the data and options, "
                       "print the plan (examples, optimizer steps), train nothing.")] = False,
    progress: ProgressOpt = True,
) -> None:
    """Fine-tune a base model on a run's chats (loss on assistant tokens only), or with
    --method dpo on the chosen/rejected pairs of a preferences run.

    Example: [bold]instructforge train runs/demo --base-model embedded -o models/demo --lora[/bold]
    """
    from instructforge.tuning.train import TrainConfig, TrainError, load_examples, train

    cfg = TrainConfig(
        base_model=base_model, method=method, beta=beta, output_dir=str(output), epochs=epochs, max_steps=max_steps,
        learning_rate=learning_rate, batch_size=batch_size, grad_accum=grad_accum,
        max_length=max_length, lora=lora, lora_r=lora_r, lora_alpha=lora_alpha,
        save_steps=save_steps, logging_steps=logging_steps, seed=seed, max_records=limit,
        resume=resume, device=device, progress=progress,
    )
    if dry_run:
        if device not in ("auto", "cpu", "cuda"):
            raise TrainError(f"--device must be auto, cpu or cuda, got {device!r}")
        if base_model != "embedded" and not Path(base_model).exists():
            raise TrainError(f"--base-model {base_model}: no such file or folder")
        examples = len(load_examples(run_dir, method, limit))
        per_step = batch_size * grad_accum
        steps = max_steps if max_steps != -1 else math.ceil(epochs * math.ceil(examples / per_step))
        print_plan({"data": run_dir, "examples": examples, "base model": base_model,
                    "method": f"{method}, " + (f"LoRA r={lora_r}" if lora else
                                               "full fine-tuning"),
                    "optimizer steps about": steps, "examples per step": per_step,
                    "output": output})
        return
    res = train(run_dir, cfg)
    resumed = f", resumed from {res.resumed_from}" if res.resumed_from else ""
    console.print(
        f"trained {res.steps} steps on {res.examples} examples in {res.seconds:.0f}s "
        f"({loss_trend(res.losses, logging_steps)}{resumed}) -> {res.model_dir}",
        highlight=False)


@app.command("experiment")
@handle_errors
def experiment_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML, e.g. "
                                           "examples/seeds-vs-evolved.yaml.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe var: "
                    "NAME=VALUE (repeatable).")] = None,
    step: Annotated[list[str] | None, typer.Option("--step", help="Run only this step "
                    "(repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command lines, run "
                       "nothing.")] = False,
) -> None:
    """Run a multi-step recipe (evolve -> train -> eval) in one command; reruns resume.

    Example: [bold]instructforge experiment examples/seeds-vs-evolved.yaml[/bold]
    """
    from instructforge.tuning.experiment import run_experiment

    overrides = {}
    for item in set_ or []:
        name, sep, value = item.partition("=")
        if not sep:
            print_error(f"--set {item!r}: expected NAME=VALUE")
            raise typer.Exit(2)
        overrides[name.strip()] = value
    run_experiment(recipe, overrides=overrides, only=step, dry_run=dry_run,
                   echo=lambda s: console.print(s, highlight=False, markup=False),
                   run_step=run_command)


def run_command(argv: list[str]) -> int:
    """Run one ``instructforge`` command line in this process; its exit code."""
    from instructforge.cli import app

    try:
        code = app(argv, standalone_mode=False)
    except click.exceptions.ClickException as e:  # a usage error: say it as the CLI would
        e.show()
        return e.exit_code
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return code if isinstance(code, int) else 0
