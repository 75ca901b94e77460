"""`instructforge eval` end to end on the real embedded model (llama.cpp over HTTP)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.tuning.eval import EvalConfig, evaluate


@pytest.mark.llm
def test_gsm8k_and_code_score_real_generations(embedded_llm, tmp_path):
    for task in ("gsm8k", "code"):
        res = evaluate(EvalConfig(task=task, limit=1, max_tokens=64, progress=False),
                       tmp_path / task, llms={"model": embedded_llm})
        assert res["evaluated"] == 1
        summary = res["summary"]["model"]
        assert summary["n"] == 1
        recs = [json.loads(x) for x in (tmp_path / task / "data" / "records.jsonl").open()]
        assert all(r["messages"][-1]["role"] == "assistant" for r in recs)


@pytest.mark.llm
def test_cli_pairwise_embedded_against_itself_with_a_real_judge(embedded_llm, tmp_path):
    out = tmp_path / "pw"
    res = CliRunner().invoke(app, [
        "eval", "--task", "pairwise", "--model", "embedded", "--baseline", "embedded",
        "--judge-model", "embedded", "--limit", "1", "--max-tokens", "48",
        "--judge-max-tokens", "64", "-o", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "results.json").read_text())
    s = saved["summary"]
    assert s["questions"] == 1
    # Constrained to [[A]] / [[B]] / [[C]], even the 135M judge gives two readable verdicts.
    assert s["wins"] + s["ties"] + s["losses"] == 1 and s["errors"] == 0
    assert "| all | 1 |" in res.output


def test_cli_bad_data_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text("not json\n")
    res = CliRunner().invoke(app, ["eval", "--task", "gsm8k", "--data", str(bad),
                                   "-o", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "q.jsonl:1" in res.output and "Traceback" not in res.output
