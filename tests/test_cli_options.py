"""Every numeric option of every command is range-checked before anything runs: a bad value is
a clear usage error naming the option (exit 2), never a hang (``--concurrency 0`` once waited
forever) or a traceback. The same checks apply to values from a ``--config`` recipe."""

from __future__ import annotations

import inspect
import typing

import pytest
import typer
from typer.testing import CliRunner

from instructforge.cli import app

runner = CliRunner()
UNREACHABLE = ["--base-url", "http://127.0.0.1:9/v1"]

# Arguments that let each command reach its options and, on any code path that ignored a bad
# value, fail fast (a missing input, an unreachable server, a dry run) rather than run a job.
BASE_ARGS: dict[str, list[str]] = {
    "respond": ["missing.jsonl", "-o", "run", *UNREACHABLE, "--dry-run"],
    "evolve": ["missing.jsonl", "-o", "run", *UNREACHABLE, "--dry-run"],
    "auto-evol": ["missing.jsonl", "-o", "run", *UNREACHABLE, "--dry-run"],
    "magpie": ["-o", "run", "-m", "x", *UNREACHABLE, "--dry-run"],
    "analyze": ["missing.jsonl"],
    "filter": ["missing.jsonl", "-o", "out"],
    "lineage": ["missing-run", "seed-1"],
    "train": ["missing-run", "-o", "model"],
    "eval": ["-o", "ev", "--data", "missing.jsonl"],
    "rerun": ["run"],
    "decontaminate": ["missing-run", "--against", "gsm8k", "-o", "out"],
    "select": ["missing-run", "-o", "out"],
    "preferences": ["missing-run", "-o", "out", *UNREACHABLE],
}
# Any integer is a valid seed for the commands that derive per-request seeds from it.
UNBOUNDED = {("respond", "seed"), ("evolve", "seed"), ("auto-evol", "seed"), ("magpie", "seed"),
             ("preferences", "seed")}


def _numeric_options() -> list[tuple[str, str, type]]:
    """(command, option, int or float) for every numeric option of every command."""
    click_group = typer.main.get_command(app)
    found = []
    for info in app.registered_commands:
        fn = inspect.unwrap(info.callback)
        name = info.name or fn.__name__
        params = {p.name: p for p in click_group.commands[name].params}
        for pname, hint in typing.get_type_hints(fn, include_extras=True).items():
            base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
            kinds = [t for t in (typing.get_args(base) or (base,)) if t in (int, float)]
            if kinds and pname in params and (name, pname) not in UNBOUNDED:
                opt = next(o for o in params[pname].opts if o.startswith("--"))
                found.append((name, opt, kinds[0]))
    return found


NUMERIC = _numeric_options()


def _invoke(tmp_path, monkeypatch, command: str, *extra: str):
    monkeypatch.chdir(tmp_path)
    return runner.invoke(app, [command, *BASE_ARGS[command], *extra], terminal_width=200)


def test_every_command_with_numeric_options_is_covered():
    assert {c for c, _, _ in NUMERIC} == set(BASE_ARGS)
    assert len(NUMERIC) > 50


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("command", "option", "kind"), NUMERIC,
                         ids=[f"{c} {o}" for c, o, _ in NUMERIC])
def test_a_value_far_below_any_valid_one_is_a_usage_error(tmp_path, monkeypatch, command,
                                                          option, kind):
    res = _invoke(tmp_path, monkeypatch, command, f"{option}=-1000000")
    assert res.exit_code == 2, res.output
    assert "Invalid value for" in res.output and f"'{option}'" in res.output


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("command", "option", "value"), [
    ("respond", "--concurrency", "0"),
    ("respond", "--max-concurrency", "0"),
    ("respond", "--timeout", "0"),
    ("respond", "--top-p", "0"),
    ("respond", "--top-p", "1.5"),
    ("respond", "--max-tokens", "0"),
    ("respond", "--limit", "0"),
    ("evolve", "--rounds", "0"),
    ("evolve", "--concurrency", "0"),
    ("auto-evol", "--candidates", "0"),
    ("magpie", "--concurrency", "0"),
    ("magpie", "--near-dup-threshold", "1.5"),
    ("magpie", "--query-top-p", "0"),
    ("analyze", "--duplicate-threshold", "2"),
    ("analyze", "--judge-concurrency", "0"),
    ("filter", "--embedding-threshold", "1.01"),
    ("train", "--max-steps", "0"),
    ("train", "--epochs", "0"),
    ("train", "--learning-rate", "0"),
    ("eval", "--code-timeout", "0"),
    ("eval", "--concurrency", "0"),
])
def test_a_value_at_an_excluded_bound_is_a_usage_error(tmp_path, monkeypatch, command, option,
                                                       value):
    res = _invoke(tmp_path, monkeypatch, command, option, value)
    assert res.exit_code == 2, res.output
    assert "Invalid value for" in res.output and f"'{option}'" in res.output


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("command", "key", "option"), [
    ("respond", "concurrency: 0", "--concurrency"),
    ("evolve", "top-p: 0", "--top-p"),
    ("magpie", "max_tokens: -3", "--max-tokens"),
    ("train", "batch-size: 0", "--batch-size"),
])
def test_a_bad_value_in_a_recipe_file_is_a_usage_error(tmp_path, monkeypatch, command, key,
                                                        option):
    (tmp_path / "recipe.yaml").write_text(key + "\n")
    res = _invoke(tmp_path, monkeypatch, command, "--config", "recipe.yaml")
    assert res.exit_code == 2, res.output
    assert "Invalid value for" in res.output and f"'{option}'" in res.output


def test_magpie_refuses_a_max_chars_below_min_chars(tmp_path, monkeypatch):
    res = _invoke(tmp_path, monkeypatch, "magpie", "--min-chars", "50", "--max-chars", "20")
    assert res.exit_code == 2, res.output
    assert "--max-chars 20 is below --min-chars 50" in res.output


def test_the_help_shows_the_ranges():
    res = runner.invoke(app, ["respond", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    lines = {line.split()[1]: line for line in res.output.splitlines() if "│    --" in line}
    assert "[x>=1]" in lines["--concurrency"]
    assert "[x<=1.0]" in lines["--top-p"] and "(> 0)" in lines["--top-p"]
    assert "(> 0)" in lines["--timeout"]


@pytest.mark.parametrize("value", ["1", "0.5"])
def test_valid_values_at_the_bounds_pass(tmp_path, monkeypatch, value):
    seeds = tmp_path / "in.jsonl"
    seeds.write_text('{"instruction": "Q?"}\n')
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["respond", "in.jsonl", "-o", "run", *UNREACHABLE, "--dry-run",
                              "--concurrency", "1", "--top-p", value, "--temperature", "0",
                              "--timeout", "0.5", "--limit", "1"], terminal_width=200)
    assert res.exit_code == 0, res.output
