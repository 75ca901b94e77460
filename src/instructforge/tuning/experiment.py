"""Run a multi-step recipe (e.g. evolve -> train two models -> evaluate both) in one command.

A recipe is YAML with ``vars`` (values substituted into ``{name}`` placeholders) and
``steps``, each an ``instructforge`` command and its arguments::

    vars: {workdir: runs/exp, rounds: 2}
    steps:
      - name: evolve
        command: evolve
        args: [examples/seeds.jsonl, -o, "{workdir}/evolved", --rounds, "{rounds}"]

Each step is an ``instructforge`` command line, run in this process by the caller's
``run_step`` (the ``experiment`` command runs it through the command-line app, so a step
behaves exactly as typed), in order; the recipe stops when a step fails. Every command
resumes, so rerunning a recipe continues where it stopped.

>>> # run_experiment("examples/seeds-vs-evolved.yaml", overrides={"limit": "3"})
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from instructforge.errors import InstructForgeError


class RecipeError(InstructForgeError, ValueError):
    """A recipe file that cannot be run, with the file and step at fault."""


@dataclass
class Step:
    """One command line of a recipe."""

    name: str
    command: str
    args: list[str]

    def argv(self) -> list[str]:
        return [self.command, *self.args]


def load_recipe(path: str | Path, overrides: dict[str, str] | None = None) -> list[Step]:
    """Read a recipe and return its steps with ``{var}`` placeholders filled in.

    ``overrides`` replace ``vars`` values (``--set name=value`` on the command line).

    >>> # [s.argv() for s in load_recipe("examples/seeds-vs-evolved.yaml")]
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{p}: no such recipe file") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise RecipeError(f"{p}: a recipe needs a 'steps' list")
    variables: dict[str, Any] = {**(data.get("vars") or {}), **(overrides or {})}
    unknown = set(overrides or {}) - set(data.get("vars") or {})
    if unknown:
        raise RecipeError(f"{p}: unknown var(s) {', '.join(sorted(unknown))}")
    steps = []
    for i, raw in enumerate(data["steps"], start=1):
        where = f"{p}: step {i}"
        if not isinstance(raw, dict) or not isinstance(raw.get("command"), str):
            raise RecipeError(f"{where}: needs a 'command' (an instructforge command name)")
        args = raw.get("args") or []
        if not isinstance(args, list):
            raise RecipeError(f"{where}: 'args' must be a list")
        try:
            filled = [str(a).format_map(variables) for a in args]
        except KeyError as e:
            raise RecipeError(f"{where}: undefined var {e.args[0]!r}") from None
        steps.append(Step(str(raw.get("name") or raw["command"]), raw["command"], filled))
    return steps


def run_experiment(
    path: str | Path,
    *,
    overrides: dict[str, str] | None = None,
    only: list[str] | None = None,
    dry_run: bool = False,
    echo: Any = print,
    run_step: Callable[[list[str]], int] | None = None,
) -> list[Step]:
    """Run the recipe's steps in order (or just those named in ``only``); return them.

    ``run_step(argv)`` runs one command line and returns its exit code. With ``dry_run`` the
    command lines are printed, nothing runs.
    """
    if run_step is None and not dry_run:
        raise RecipeError("run_experiment needs run_step (how to run a command line)")
    steps = load_recipe(path, overrides)
    if only:
        missing = set(only) - {s.name for s in steps}
        if missing:
            raise RecipeError(f"{path}: no step named {', '.join(sorted(missing))}")
        steps = [s for s in steps if s.name in only]
    for n, step in enumerate(steps, start=1):
        echo(f"[{n}/{len(steps)}] {step.name}: instructforge {' '.join(step.argv())}")
        if dry_run:
            continue
        assert run_step is not None
        code = run_step(step.argv())
        if code != 0:
            raise RecipeError(
                f"step {step.name!r} failed (exit {code}); fix it and rerun the "
                "recipe: finished work is kept and resumed"
            )
    return steps
