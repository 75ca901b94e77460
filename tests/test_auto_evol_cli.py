"""The ``auto-evol`` command against the instant dev server: it searches, writes the method
history, evolves the dataset with e*, and fails clearly on bad options."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.devserver import DevServer
from instructforge.engine import RunDir

# One canned answer serves every role: it holds a final rewritten instruction (for the evol
# LLM) and an optimized method (for the optimizer); the judge reads "Not Equal" in it.
ANSWER = (
    "Step 1 #Analysis#: Not Equal; stage 1 kept its complexity.\n"
    "Step 2 #Optimized Method#: Step 1: list ways to add depth. Step 2: plan with two of "
    "them. Step 3: rewrite. Step 4: review and give the final version.\n"
    "Step 4 #Finally Rewritten Instruction#: Name three rare fruits, their colours and where "
    "they grow."
)


def seeds(tmp_path):
    p = tmp_path / "seeds.jsonl"
    p.write_text("".join(json.dumps({"id": f"s{i}", "instruction": f"Name fruit number {i}."})
                         + "\n" for i in range(1, 7)))
    return p


def test_auto_evol_command_writes_the_method_history_and_the_evolved_dataset(tmp_path):
    run = tmp_path / "run"
    with DevServer(answer=ANSWER) as srv:
        result = CliRunner().invoke(app, [
            "auto-evol", str(seeds(tmp_path)), "-o", str(run), "--steps", "2", "-m", "2",
            "--dev-size", "3", "--batch-size", "2", "--rounds", "1", "--patience", "0",
            "--evol-model", srv.url, "--optimizer-model", srv.url, "--no-progress",
        ])
    assert result.exit_code == 0, result.output
    assert "method search" in result.output and "Evol-Instruct: per round" in result.output
    m = run / "methods"
    for path in ("step_0/method.jinja", "step_0/evaluation.json", "step_1/feedback.json",
                 "step_1/candidate_1/evaluation.json", "step_2/selection.json",
                 "best/auto_evol.jinja", "history.json"):
        assert (m / path).exists(), path
    kept = list(RunDir(run).kept())
    assert len(kept) == 6
    # config.yaml: the settings shared with Evol-Instruct nested under `evol:`, the flags
    # routed to the right level.
    conf = RunDir(run).read_config()
    assert conf["job"] == "auto_evol"
    assert conf["evol"]["rounds"] == 1 and conf["evol"]["evol_llm"]["model"] == srv.url
    assert conf["evol"]["response_llm"]["model"] == srv.url
    assert (conf["evol"]["evol_max_tokens"], conf["evol"]["response_max_tokens"]) == (192, 128)
    assert conf["optimizer_llm"]["model"] == srv.url
    assert (conf["steps"], conf["candidates"], conf["dev_size"]) == (2, 2, 3)
    assert "rounds" not in conf and "evol_llm" not in conf
    assert kept[0]["messages"][0]["content"].startswith("Name three rare fruits")


def test_dry_run_calls_nothing_and_counts_the_calls(tmp_path):
    result = CliRunner().invoke(app, [
        "auto-evol", str(seeds(tmp_path)), "-o", str(tmp_path / "run"), "--steps", "2",
        "-m", "3", "--dev-size", "4", "--dry-run",
    ])
    assert result.exit_code == 0, result.output
    assert "search llm calls at most" in result.output
    assert "evolution rounds" in result.output
    assert not (tmp_path / "run").exists()


def test_unknown_rule_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, [
        "auto-evol", str(seeds(tmp_path)), "-o", str(tmp_path / "run"),
        "--disable-rule", "no_such_rule",
    ])
    assert result.exit_code == 2
    assert "no_such_rule" in result.output and "stagnant_complexity" in result.output


def test_bad_initial_method_file_is_named_in_the_error(tmp_path):
    bad = tmp_path / "method.jinja"
    bad.write_text("Make it harder: {{ instruction }}")
    result = CliRunner().invoke(app, [
        "auto-evol", str(seeds(tmp_path)), "-o", str(tmp_path / "run"),
        "--initial-method", str(bad),
    ])
    assert result.exit_code == 2
    assert str(bad) in result.output.replace("\n", "")
