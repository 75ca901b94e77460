"""``instructforge preferences`` end to end on the real embedded model over HTTP, then
``export --format dpo``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.engine import RunDir
from instructforge.records import new_record

pytestmark = pytest.mark.llm


def make_run(path, n):
    path.joinpath("data").mkdir(parents=True)
    with open(path / "data" / "records.jsonl", "w", encoding="utf-8") as f:
        for i, q in enumerate(["Name a primary colour.", "Say hello in French."][:n]):
            rec = new_record(f"q{i}", messages=[{"role": "user", "content": q}],
                             method="input")
            f.write(json.dumps(rec) + "\n")
    return path


def test_preferences_on_the_embedded_model_make_pairs_trl_can_read(tmp_path):
    src = make_run(tmp_path / "answers", n=2)
    out = tmp_path / "prefs"
    res = CliRunner().invoke(app, ["preferences", str(src), "-n", "2", "-o", str(out),
                                   "--max-tokens", "24", "--judge-max-tokens", "160",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    kept, dropped = list(RunDir(out).kept()), list(RunDir(out).dropped())
    assert len(kept) + len(dropped) == 2 and kept, res.output
    for r in kept:
        pref = r["metadata"]["preferences"]
        assert pref["chosen"] != pref["rejected"]
        assert {pref["chosen_index"], pref["rejected_index"]} == {0, 1}
        assert len(pref["candidates"]) == 2 and pref["judge"].startswith("gguf:")
    exp = CliRunner().invoke(app, ["export", str(out), "--format", "dpo"])
    assert exp.exit_code == 0, exp.output
    rows = [json.loads(line) for line in (out / "export" / "dpo.jsonl").open()]
    assert len(rows) == len(kept)
    assert all(set(row) == {"id", "prompt", "chosen", "rejected"} for row in rows)
