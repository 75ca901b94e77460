"""The CLI: thin, helpful, and never a bare traceback."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.devserver import DevServer
from instructforge.engine import RunDir

runner = CliRunner()


def seeds(tmp_path, n=3):
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps({"instruction": f"Q{i}?"}) + "\n" for i in range(n)))
    return p


def test_help_lists_the_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("respond", "models"):
        assert cmd in res.output


def test_respond_help_documents_options_and_an_example():
    res = runner.invoke(app, ["respond", "--help"], terminal_width=200)
    assert res.exit_code == 0
    for opt in ("--base-url", "--dry-run", "--skip-invalid", "--config", "--max-concurrency"):
        assert opt in res.output
    assert "instructforge respond examples/instructions.jsonl" in res.output


def test_dry_run_calls_nothing_and_reports_the_plan(tmp_path, dev_server):
    res = runner.invoke(app, ["respond", str(seeds(tmp_path)), "-o", str(tmp_path / "run"),
                              "--base-url", dev_server.url, "-m", "dev", "--dry-run"],
                        terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "llm calls" in res.output and "3" in res.output
    assert dev_server.requests == 0
    assert not (tmp_path / "run").exists()


def test_recipe_file_supplies_options(tmp_path, dev_server):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base-url: {dev_server.url}\nmodel: dev\nmax_tokens: 7\nprogress: false\n")
    res = runner.invoke(app, ["respond", str(seeds(tmp_path)), "-o", str(tmp_path / "run"),
                              "--config", str(recipe)])
    assert res.exit_code == 0, res.output
    assert RunDir(tmp_path / "run").read_config()["max_tokens"] == 7
    assert dev_server.served == 3


def test_command_line_flags_win_over_the_recipe(tmp_path, dev_server):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base-url: {dev_server.url}\nmodel: dev\nmax-tokens: 7\n")
    res = runner.invoke(app, ["respond", str(seeds(tmp_path)), "-o", str(tmp_path / "run"),
                              "--config", str(recipe), "--max-tokens", "9", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert RunDir(tmp_path / "run").read_config()["max_tokens"] == 9


def test_unknown_recipe_key_is_a_clear_error(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("max-tokenz: 7\n")
    res = runner.invoke(app, ["respond", str(seeds(tmp_path)), "-o", str(tmp_path / "r"),
                              "--config", str(recipe)], terminal_width=200)
    assert res.exit_code == 2
    assert "unknown key 'max-tokenz'" in res.output


def test_bad_input_exits_2_naming_file_line_and_field_before_any_call(tmp_path, dev_server):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"instruction": "fine"}\n{"prompt": "x"}\n')
    res = runner.invoke(app, ["respond", str(p), "-o", str(tmp_path / "run"),
                              "--base-url", dev_server.url, "-m", "dev"], terminal_width=300)
    assert res.exit_code == 2
    assert f"{p}:2: field 'instruction' is missing" in res.output.replace("\n", "")
    assert "Traceback" not in res.output
    assert dev_server.requests == 0


def test_skip_invalid_keeps_going_and_lists_bad_rows(tmp_path, dev_server):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"instruction": "fine"}\n{"prompt": "x"}\n')
    res = runner.invoke(app, ["respond", str(p), "-o", str(tmp_path / "run"), "--skip-invalid",
                              "--base-url", dev_server.url, "-m", "dev", "--no-progress"])
    assert res.exit_code == 0, res.output
    run = RunDir(tmp_path / "run")
    assert len(list(run.kept())) == 1
    assert [r["rejection"]["rule"] for r in run.dropped()] == ["invalid_input"]


def test_unreachable_server_exits_1_with_a_message(tmp_path):
    res = runner.invoke(app, ["respond", str(seeds(tmp_path)), "-o", str(tmp_path / "run"),
                              "--base-url", "http://127.0.0.1:9/v1", "-m", "x", "--no-progress"],
                        terminal_width=300)
    assert res.exit_code == 1
    assert "cannot connect to http://127.0.0.1:9/v1" in res.output.replace("\n", "")


def test_models_lists_the_embedded_model_and_a_servers_models(dev_server):
    res = runner.invoke(app, ["models", "--base-url", dev_server.url], terminal_width=300)
    assert res.exit_code == 0, res.output
    assert "SmolLM2-135M-Instruct" in res.output and "dev" in res.output


def test_failed_inputs_are_rejected_with_the_reason_exit_3_and_a_rerun_retries_them(tmp_path):
    run = RunDir(tmp_path / "run")
    with DevServer(faults=["", "500", "500"]) as srv:  # "": the preflight; then input 1 fails
        args = ["respond", str(seeds(tmp_path)), "-o", str(run.root), "--base-url", srv.url,
                "-m", "dev", "--no-progress", "--max-retries", "1", "--concurrency", "1"]
        res = runner.invoke(app, args, terminal_width=300)
        assert res.exit_code == 3, res.output
        assert "1 input(s) failed after retries" in res.output
        assert "1 failed" in res.output
        [failed] = run.dropped()
        assert failed["rejection"]["rule"] == "call_failed"
        assert "HTTP 500" in failed["rejection"]["reason"]
        assert failed["rejection"]["evidence"]["step"] == "respond"
        assert failed["rejection"]["evidence"]["retries"] == {"HTTP 500": 1}
        assert failed["id"] not in run.done.read_text().split()
        assert len(list(run.kept())) == 2

        res = runner.invoke(app, args, terminal_width=300)
    assert res.exit_code == 0, res.output
    ids = [r["id"] for r in run.kept()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 3
    assert list(run.dropped()) == []
