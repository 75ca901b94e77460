"""``--model`` names the model of every role (a user with one server names it once); a role
option (``--evol-model``, ``--response-model``, ``--judge-model``, ``--optimizer-model``,
``--judge``) overrides it for its role. Checked on the config each command builds."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from instructforge.cli import analyze as analyze_cli
from instructforge.cli import app
from instructforge.cli import auto_evol as auto_evol_cli
from instructforge.cli import evolve as evolve_cli
from instructforge.cli import magpie as magpie_cli

runner = CliRunner()
SERVER = ["--base-url", "http://127.0.0.1:9/v1"]


@pytest.fixture
def seeds(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"instruction": "Add 2 and 3."}\n')
    return str(path)


def _planned(monkeypatch, module: Any, args: list[str]) -> Any:
    """The config the command hands to its ``--dry-run`` estimate."""
    seen = []
    monkeypatch.setattr(module, "estimate", lambda *a: seen.append(a[-1]) or {})
    res = runner.invoke(app, [*args, "--dry-run"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return seen[0]


def _models(*roles: Any) -> list[tuple[str, str | None]]:
    return [(r.model, r.base_url) for r in roles]


def test_evolve_model_sets_every_role(monkeypatch, seeds, tmp_path):
    cfg = _planned(monkeypatch, evolve_cli,
                   ["evolve", seeds, "-o", str(tmp_path / "r"), *SERVER, "--model", "qwen"])
    assert _models(cfg.evol_llm, cfg.response_llm, cfg.judge_llm) == \
        [("qwen", "http://127.0.0.1:9/v1")] * 3


def test_evolve_role_option_overrides_model(monkeypatch, seeds, tmp_path):
    cfg = _planned(monkeypatch, evolve_cli, ["evolve", seeds, "-o", str(tmp_path / "r"),
                                             "-m", "qwen", "--judge-model", "small"])
    assert [r.model for r in (cfg.evol_llm, cfg.response_llm, cfg.judge_llm)] == \
        ["qwen", "qwen", "small"]


def test_evolve_without_model_uses_the_embedded_one(monkeypatch, seeds, tmp_path):
    cfg = _planned(monkeypatch, evolve_cli, ["evolve", seeds, "-o", str(tmp_path / "r")])
    assert {r.model for r in (cfg.evol_llm, cfg.response_llm, cfg.judge_llm)} == {"embedded"}


def test_auto_evol_model_sets_every_role(monkeypatch, seeds, tmp_path):
    cfg = _planned(monkeypatch, auto_evol_cli,
                   ["auto-evol", seeds, "-o", str(tmp_path / "r"), *SERVER, "--model", "qwen"])
    assert {r.model for r in (cfg.evol.evol_llm, cfg.evol.response_llm, cfg.evol.judge_llm,
                              cfg.optimizer_llm)} == {"qwen"}


def test_auto_evol_role_options_override_model(monkeypatch, seeds, tmp_path):
    cfg = _planned(monkeypatch, auto_evol_cli,
                   ["auto-evol", seeds, "-o", str(tmp_path / "r"), "--model", "qwen",
                    "--optimizer-model", "big", "--evol-model", "mid"])
    assert [r.model for r in (cfg.evol.evol_llm, cfg.evol.response_llm, cfg.evol.judge_llm,
                              cfg.optimizer_llm)] == ["mid", "qwen", "qwen", "big"]


def test_auto_evol_answer_and_judge_follow_the_evol_model_without_model(monkeypatch, seeds,
                                                                         tmp_path):
    cfg = _planned(monkeypatch, auto_evol_cli,
                   ["auto-evol", seeds, "-o", str(tmp_path / "r"), "--evol-model", "mid"])
    assert [r.model for r in (cfg.evol.evol_llm, cfg.evol.response_llm, cfg.evol.judge_llm,
                              cfg.optimizer_llm)] == ["mid", "mid", "mid", "embedded"]


def test_magpie_model_writes_queries_and_answers(monkeypatch, tmp_path):
    cfg = _planned(monkeypatch, magpie_cli, ["magpie", "-o", str(tmp_path / "r"), *SERVER,
                                             "--model", "qwen"])
    assert (cfg.llm.model, cfg.response_llm) == ("qwen", None)  # None: the answers use llm
    cfg = _planned(monkeypatch, magpie_cli, ["magpie", "-o", str(tmp_path / "r"), *SERVER,
                                             "--model", "qwen", "--response-model", "openai:b"])
    assert (cfg.llm.model, cfg.response_llm.model) == ("qwen", "openai:b")


@pytest.mark.parametrize("command", ["analyze", "filter"])
def test_analyze_and_filter_model_sets_the_judge(monkeypatch, tmp_path, command):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Add 2 and 3.", "response": "5"}\n')
    judges = []
    target = "analyze" if command == "analyze" else "filter_dataset"
    monkeypatch.setattr(analyze_cli, target, lambda *a, **kw: judges.append(kw["judge_llm"])
                        or (_ for _ in ()).throw(SystemExit(0)))
    extra = ["-o", str(tmp_path / "out")] if command == "filter" else []
    for args, want in ((["--model", "qwen"], "openai:qwen@http://127.0.0.1:9/v1"),
                       (["-m", "qwen", "--judge", "small"], "openai:small@http://127.0.0.1:9/v1")):
        runner.invoke(app, [command, str(data), *extra, *SERVER, *args])
        assert judges.pop().model_id == want
