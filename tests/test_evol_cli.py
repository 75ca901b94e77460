"""`instructforge evolve` option handling, without calling a model (--dry-run and errors)."""

from __future__ import annotations

from typer.testing import CliRunner

from instructforge.cli import app

SEEDS = "examples/seeds.jsonl"


def invoke(*args: str):
    return CliRunner().invoke(app, ["evolve", SEEDS, "-o", "unused-run", *args])


def test_dry_run_plans_the_calls_and_calls_nothing(tmp_path):
    result = CliRunner().invoke(app, ["evolve", SEEDS, "-o", str(tmp_path / "r"), "--rounds",
                                      "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    # 10 seeds x 2 rounds x (evolve + 3 judges + respond)
    assert "llm calls at most" in result.output and "100" in result.output
    assert not (tmp_path / "r").exists()
    paper = CliRunner().invoke(app, ["evolve", SEEDS, "-o", str(tmp_path / "r"), "--rounds",
                                     "2", "--rules", "paper", "--dry-run"])
    assert paper.exit_code == 0, paper.output
    assert "60" in paper.output  # 10 x 2 x (evolve + equality judge + respond)


def test_unknown_rule_set_exits_2():
    result = invoke("--rules", "strict", "--dry-run")
    assert result.exit_code == 2 and "unknown rule set 'strict'" in result.output


def test_unknown_operation_exits_2_naming_it():
    result = invoke("--ops", "deepening,widen", "--dry-run")
    assert result.exit_code == 2
    assert "unknown operation(s): widen" in result.output


def test_unknown_rule_exits_2_listing_the_rules():
    result = invoke("--disable-rule", "too_long", "--dry-run")
    assert result.exit_code == 2
    assert "unknown rule(s) too_long" in result.output and "only_stop_words" in result.output


def test_bad_weight_exits_2():
    result = invoke("--weights", "deepening", "--dry-run")
    assert result.exit_code == 2 and "NAME=NUMBER" in result.output


def test_recipe_file_sets_defaults(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("rounds: 3\nops: deepening,in_breadth\nrules: paper\n"
                      "disable_rule: [no_information_gain]\n")
    result = CliRunner().invoke(app, ["evolve", SEEDS, "-o", str(tmp_path / "r"), "--config",
                                      str(recipe), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "deepening, in_breadth" in result.output
    assert "60" in result.output  # 10 seeds x 3 rounds x (evolve + respond), no judge


def test_missing_input_file_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["evolve", str(tmp_path / "nope.jsonl"), "-o",
                                      str(tmp_path / "r"), "--dry-run"])
    assert result.exit_code == 2
    assert "nope.jsonl: no such file" in " ".join(result.output.split())


def _busy_summary(rounds: int = 4) -> dict:
    """A summary where every operation ran in every round and every rule fired."""
    from collections import Counter

    from instructforge.methods import eliminate as el
    from instructforge.methods.evol_instruct import IN_BREADTH, IN_DEPTH

    rules = (*el.ALL_RULES, el.EMPTY_INSTRUCTION)

    def cell(n: int) -> dict:
        return {"attempted": 1000 * n, "kept": 400 * n, "normalised": 12 * n,
                "truncated_responses": 33 * n,
                "eliminated": Counter({r: 70 * n + i for i, r in enumerate(rules)}),
                "prompt_tokens": 9_000_000 * n, "completion_tokens": 4_000_000 * n}

    def merge(cells: list[dict]) -> dict:
        out = cell(0)
        for c in cells:
            for k in out:
                out[k] = out[k] + c[k]
        return out

    rows = [{"round": r, "operation": op, **cell(r)}
            for r in range(1, rounds + 1) for op in (*IN_DEPTH, *IN_BREADTH)]
    per_round = [{"round": r, **merge([c for c in rows if c["round"] == r])}
                 for r in range(1, rounds + 1)]
    return {"rows": rows, "per_round": per_round, "total": merge(per_round)}


def test_summary_tables_fit_80_columns_without_cutting_a_name(monkeypatch):
    import io

    from rich.console import Console

    from instructforge.cli import evolve as evolve_cli
    from instructforge.methods import eliminate as el
    from instructforge.methods.evol_instruct import IN_BREADTH, IN_DEPTH

    buf = io.StringIO()
    monkeypatch.setattr(evolve_cli, "out", Console(file=buf, width=80, color_system=None))
    summary = _busy_summary()
    evolve_cli.print_summary(summary)
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for name in (*IN_DEPTH, *IN_BREADTH, *el.ALL_RULES, el.EMPTY_INSTRUCTION):
        assert name in text
    total = summary["total"]
    assert f"{total['prompt_tokens'] + total['completion_tokens']:,}" in text  # never cut
