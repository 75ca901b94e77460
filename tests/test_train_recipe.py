"""The seeds-vs-evolved recipe: every step is a valid instructforge command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from instructforge.cli import app
from instructforge.tuning.experiment import RecipeError, load_recipe, run_experiment

RECIPE = Path(__file__).parent.parent / "examples" / "seeds-vs-evolved.yaml"


def test_recipe_runs_the_papers_experiment_in_order():
    names = [s.command for s in load_recipe(RECIPE)]
    assert names == ["respond", "evolve", "decontaminate", "decontaminate", "train", "train",
                     "eval", "eval", "eval"]


def test_the_models_train_on_data_decontaminated_against_the_eval_sets():
    steps = {s.name: s.args for s in load_recipe(RECIPE, {"workdir": "w"})}
    evals = {steps[f"eval-{t}"][steps[f"eval-{t}"].index("--task") + 1] for t in ("gsm8k", "code")}
    for run in ("seeds", "evolved"):
        args = steps[f"decontaminate-{run}"]
        assert args[0] == f"w/{run}"
        assert {args[i + 1] for i, a in enumerate(args) if a == "--against"} == evals
        assert steps[f"train-{run}"][0] == args[args.index("-o") + 1] == f"w/{run}-clean"


def test_every_step_parses_as_a_command_line():
    group = typer.main.get_command(app)
    for step in load_recipe(RECIPE, {"workdir": "/tmp/x"}):
        cmd = group.commands[step.command]
        ctx = cmd.make_context(step.command, list(step.args))  # raises on bad options
        assert ctx.params


def test_vars_are_filled_and_can_be_overridden():
    steps = load_recipe(RECIPE, {"workdir": "w", "max_steps": "4"})
    train = next(s for s in steps if s.name == "train-evolved")
    assert train.args[:4] == ["w/evolved-clean", "--base-model", "embedded", "-o"]
    assert train.args[train.args.index("--max-steps") + 1] == "4"


def test_unknown_override_is_refused():
    with pytest.raises(RecipeError, match="unknown var"):
        load_recipe(RECIPE, {"nope": "1"})


def test_undefined_placeholder_names_the_step(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("steps:\n  - command: train\n    args: ['{missing}']\n")
    with pytest.raises(RecipeError, match="step 1: undefined var 'missing'"):
        load_recipe(bad)


def test_dry_run_prints_and_runs_nothing(tmp_path):
    lines: list[str] = []
    steps = run_experiment(RECIPE, overrides={"workdir": str(tmp_path / "w")}, dry_run=True,
                           echo=lines.append)
    assert len(lines) == len(steps) == 9
    assert not (tmp_path / "w").exists()


def test_steps_run_in_this_process_and_a_failing_step_stops_the_recipe(tmp_path, monkeypatch):
    import subprocess

    from instructforge.cli.train import run_command

    def no_subprocess(*a, **kw):
        raise AssertionError("a recipe step was run as a subprocess")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Name a fruit."}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "vars: {out: " + str(tmp_path / "run") + "}\n"
        "steps:\n"
        f"  - {{name: plan, command: respond, args: [{seeds}, -o, '{{out}}', --dry-run]}}\n"
        "  - {name: bad, command: respond, args: [no-such-file.jsonl, -o, '{out}', --dry-run]}\n"
        "  - {name: never, command: respond, args: [--help]}\n")
    ran: list[list[str]] = []

    def run_step(argv: list[str]) -> int:
        ran.append(argv)
        return run_command(argv)

    with pytest.raises(RecipeError, match="step 'bad' failed \\(exit 2\\)"):
        run_experiment(recipe, run_step=run_step, echo=lambda s: None)
    assert [a[-1] for a in ran] == ["--dry-run", "--dry-run"]  # the third step never ran
