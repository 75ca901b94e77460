"""The CLI: thin, helpful, and never a bare traceback."""

from __future__ import annotations

import json
import re
import sys

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
    # Typer's rich help takes its width from COLUMNS (terminal_width alone is ignored).
    res = runner.invoke(app, ["respond", "--help"], terminal_width=200, env={"COLUMNS": "200"})
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


# Model text that would set the window title, clear the screen, ring, overwrite the line and
# reorder text, with rich markup in it.
HOSTILE = ("Explain tides\x1b]0;pwned\x07 to a child.\x1b[2J\x1b[31m Use\rOVERWRITE "
           "\x9b1m\u202eright-to-left [bold red]markup[/bold red] two short sentences please.")


def assert_shown_escaped(output: str, *also: str) -> None:
    for raw in ("\x1b", "\x07", "\r", "\x9b", "\u202e"):
        assert raw not in output
    unwrapped = output.replace("\n", "")
    for shown in ("\\u001b]0;pwned\\u0007", "\\u001b[2J", "\\u009b", "\\u202e",
                  "[bold red]markup[/bold red]", *also):
        assert shown in unwrapped, shown


def test_magpie_show_prints_model_text_with_control_characters_escaped(tmp_path):
    with DevServer(answer=HOSTILE) as srv:
        res = runner.invoke(app, ["magpie", "-n", "1", "-o", str(tmp_path / "run"),
                                  "--base-url", srv.url, "-m", "dev", "--template", "chatml",
                                  "--language", "any", "--no-progress", "--show", "1"],
                            terminal_width=400)
    assert res.exit_code == 0, res.output
    assert "Explain tides" in res.output  # the sample was printed
    assert_shown_escaped(res.output, "\\u000dOVERWRITE")


def test_lineage_prints_model_text_with_control_characters_escaped(tmp_path):
    run = tmp_path / "run"
    with DevServer(answer=HOSTILE) as srv:
        res = runner.invoke(app, ["evolve", str(seeds(tmp_path, 1)), "-o", str(run),
                                  "--base-url", srv.url, "--evol-model", "dev",
                                  "--response-model", "dev", "--judge-model", "dev",
                                  "--rounds", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    seed_id = next(RunDir(run).kept())["lineage"]["seed_id"]
    child = f"{seed_id}-r1"
    text = runner.invoke(app, ["lineage", str(run), child, "--width", "400"],
                         terminal_width=600)
    assert text.exit_code == 0, text.output
    assert "Explain tides" in text.output
    assert_shown_escaped(text.output)  # (a CR is whitespace there, shown as a space)
    as_json = runner.invoke(app, ["lineage", str(run), child, "--json"], terminal_width=600)
    assert as_json.exit_code == 0, as_json.output
    for raw in ("\x1b", "\x07", "\r", "\x9b", "\u202e"):
        assert raw not in as_json.output
    shown = json.loads(as_json.output)["lineage"]["history"][-1]
    assert shown.startswith("Explain tides\x1b]0;pwned\x07")  # the JSON keeps the exact text


def test_a_damaged_input_file_is_a_message_not_a_traceback(tmp_path):
    p = tmp_path / "in.parquet"
    p.write_bytes(b"PAR1 truncated")
    res = runner.invoke(app, ["respond", str(p), "-o", str(tmp_path / "run"), "--dry-run"],
                        terminal_width=300)
    assert res.exit_code == 2
    # rich wraps long messages at the console width: at a space, or inside a long path
    assert "not a readable Parquet file" in " ".join(res.output.split())
    assert f"{p}:" in res.output.replace("\n", "")
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_train_without_the_train_extra_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    res = runner.invoke(app, ["train", str(seeds(tmp_path)), "-o", str(tmp_path / "m")],
                        terminal_width=300)
    assert res.exit_code == 2, res.output
    assert "train needs the train extra (torch is missing)" in res.output.replace("\n", "")
    hint = "pip install 'instructforge[train]' or bash scripts/install.sh train"
    assert hint in res.output.replace("\n", "")


def test_eval_of_a_model_folder_without_the_train_extra_says_how_to_install_it(
        tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "torch", None)
    res = runner.invoke(app, ["eval", "--model", str(model), "--task", "gsm8k", "--limit", "1",
                              "-o", str(tmp_path / "ev")], terminal_width=300)
    assert res.exit_code == 2, res.output
    assert "needs the train extra (torch is missing)" in res.output.replace("\n", "")
    assert "pip install 'instructforge[train]'" in res.output.replace("\n", "")


def test_the_missing_analysis_extra_hint_keeps_its_brackets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    res = runner.invoke(app, ["analyze", str(seeds(tmp_path)), "--tokenizer", "regex",
                              "--no-report"], terminal_width=300)
    assert res.exit_code == 2, res.output
    assert "pip install 'instructforge[analysis]'" in res.output.replace("\n", "")


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


def test_error_messages_show_a_servers_control_characters_escaped():
    from instructforge.cli import common

    with common.console.capture() as cap:
        common.print_error("HTTP 400 from http://h/v1: \x1b]0;pwned\x07 bad [bold]request")
    shown = cap.get()
    assert "\x1b]0" not in shown and "\x07" not in shown
    assert "\\u001b]0;pwned\\u0007 bad [bold]request" in shown


def test_recipe_keys_are_the_long_option_names(tmp_path):
    # magpie's -n/--num: the recipe key is the flag's name, `num` (the parameter's own name,
    # `n`, is accepted too).
    for key in ("num", "n"):
        recipe = tmp_path / f"{key}.yaml"
        recipe.write_text(f"{key}: 7\n")
        res = runner.invoke(app, ["magpie", "-o", str(tmp_path / "r"), "--config", str(recipe),
                                  "--base-url", "http://127.0.0.1:9/v1", "-m", "x", "--dry-run"],
                            terminal_width=200)
        assert res.exit_code == 0, res.output
        assert re.search(r"conversations\s+│\s+7\s", res.output), res.output


def test_unknown_recipe_key_lists_the_long_option_names(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("nm: 7\n")
    res = runner.invoke(app, ["magpie", "-o", str(tmp_path / "r"), "--config", str(recipe)],
                        terminal_width=400)
    assert res.exit_code == 2
    assert "unknown key 'nm'" in res.output
    assert " num," in res.output and " n," not in res.output


def test_respond_prints_sample_records_escaped_and_their_path(tmp_path, dev_server):
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Q{i} \x1b]0;pwned\x07?"})
                         + "\n" for i in range(5)))
    res = runner.invoke(app, ["respond", str(p), "-o", str(tmp_path / "run"), "--base-url",
                              dev_server.url, "-m", "dev", "--no-progress", "--show", "2"],
                        terminal_width=200)
    assert res.exit_code == 0, res.output
    assert res.output.count("--- q") == 2
    assert "Q0 \\u001b]0;pwned\\u0007?" in res.output and "\x1b]0;" not in res.output
    assert f"records: {tmp_path / 'run' / 'data' / 'records.jsonl'}" in res.output
    assert "smoke-test" not in res.output  # a real model was named


def test_the_default_model_is_called_a_smoke_test_model_with_the_way_to_a_real_one(tmp_path):
    res = runner.invoke(app, ["respond", str(seeds(tmp_path)), "-o", str(tmp_path / "run"),
                              "--dry-run"], terminal_width=300)
    assert res.exit_code == 0, res.output
    assert "smoke-test model" in res.output
    assert "--model embedded:qwen2.5-coder-1.5b" in res.output and "--base-url" in res.output


def test_train_summary_says_when_too_few_steps_ran_to_show_a_loss_trend():
    from instructforge.cli.train import loss_trend

    assert loss_trend([(5, 0.88), (10, 0.41)], 5) == "loss 0.880 -> 0.410 (steps 5-10)"
    for losses in ([(2, 0.381)], []):
        text = loss_trend(losses, 5)
        assert "too few steps to show a trend" in text and "->" not in text
        assert "--logging-steps 5" in text


def test_models_with_a_server_closes_its_http_session(dev_server):
    # Run as a user does: aiohttp warns about a session left open when the process exits.
    import os
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "instructforge.cli", "models", "--base-url",
                           dev_server.url], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    assert "openai:" in proc.stdout
    assert "Unclosed" not in proc.stderr


def test_analyze_filter_train_and_eval_dry_runs_plan_and_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"id": f"c{i}", "messages": [
        {"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]})
        + "\n" for i in range(6)))
    for args, planned in (
        (["analyze", "chats.jsonl", "--judge", "embedded", "--judge-limit", "4"],
         r"judge calls max\s+│\s+16\s"),  # 4 records x (3 ratings + tags)
        (["filter", "chats.jsonl", "-o", "clean", "--min-quality", "good", "-m", "embedded"],
         r"judge calls max\s+│\s+6\s"),
        (["train", "chats.jsonl", "-o", "model", "--batch-size", "2", "--epochs", "2"],
         r"optimizer steps about\s+│\s+6\s"),
        (["eval", "-o", "ev", "--task", "pairwise", "--model", "embedded", "--baseline", "x.gguf",
          "--limit", "3"], r"judge calls max\s+│\s+6\s"),
    ):
        res = runner.invoke(app, [*args, "--dry-run"], terminal_width=200)
        assert res.exit_code == 0, res.output
        assert "nothing was called" in res.output and re.search(planned, res.output), res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chats.jsonl"]


def test_a_dry_run_still_refuses_bad_input(tmp_path):
    res = runner.invoke(app, ["train", str(tmp_path / "missing"), "-o", "m", "--dry-run"])
    assert res.exit_code == 2 and "no such file" in res.output
    res = runner.invoke(app, ["eval", "-o", "ev", "--task", "pairwise", "--dry-run"])
    assert res.exit_code == 2 and "give --baseline" in res.output


def test_the_usage_table_folds_long_model_ids_at_80_columns(monkeypatch):
    import io

    from rich.console import Console

    from instructforge.cli import common

    buf = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=buf, width=80, color_system=None))
    model = "openai:Qwen/Qwen2.5-Coder-32B-Instruct@http://inference-host:8000/v1"
    common.print_usage({"runs": [{"by_model_step": {model: {"evolve": {
        "requests": 12345, "cached": 0, "errors": 0, "prompt_tokens": 9_876_543,
        "completion_tokens": 1_234_567}}}}]})
    text = buf.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "9876543" in text and "1234567" in text
