"""``instructforge preferences`` and ``export --format dpo`` against dev servers (logic:
each server gives one fixed answer, so every verdict is known in advance)."""

from __future__ import annotations

import json

import pytest
from preference_runs import VERDICT, make_run
from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.devserver import DevServer
from instructforge.engine import RunDir


def run_prefs(tmp_path, servers, *extra):
    good, bad, judge = servers
    src = make_run(tmp_path / "answers")
    out = tmp_path / "prefs"
    res = CliRunner().invoke(app, [
        "preferences", str(src), "-n", "2", "-o", str(out), "--no-progress",
        "--model", f"openai:judge@{judge.url}",
        "--response-model", f"openai:good@{good.url}",
        "--response-model", f"openai:bad@{bad.url}", *extra])
    # (-n given twice: the last wins)
    return res, out


def test_pairs_keep_the_judges_best_and_worst_with_its_reason(tmp_path, servers):
    res, out = run_prefs(tmp_path, servers)
    assert res.exit_code == 0, res.output
    recs = list(RunDir(out).kept())
    assert [r["id"] for r in recs] == ["q0", "q1", "q2"]
    for r in recs:
        pref = r["metadata"]["preferences"]
        assert (pref["chosen"], pref["rejected"]) == ("Paris.", "London.")
        assert pref["reason"] == "Answer 1 names the right city."
        assert [c["model"].split("@")[0] for c in pref["candidates"]] == ["openai:good",
                                                                       "openai:bad"]
        assert r["messages"][-1] == {"role": "assistant", "content": "Paris."}
        assert "old answer" not in json.dumps(r["messages"])
    good, bad, judge = servers
    # One judge call a record (with two answers the other one is the worst), constrained to
    # the answers' numbers, and it saw both answers.
    assert judge.served == 3
    body = judge.bodies[0]
    schema = json.dumps(body.get("response_format") or body.get("json_schema"))
    assert '"enum": ["1", "2"]' in schema
    assert "Paris." in body["messages"][1]["content"]
    assert "London." in body["messages"][1]["content"]
    # Distinct seeds per answer.
    seeds = {c["seed"] for r in recs for c in r["metadata"]["preferences"]["candidates"]}
    assert len(seeds) == 6
    # Resumable: a second run calls nothing.
    served = judge.served
    again, _ = run_prefs(tmp_path, servers)
    assert again.exit_code == 0, again.output
    assert judge.served == served


def test_same_answers_are_rejected_without_asking_the_judge(tmp_path):
    with DevServer(answer="Paris.", model="one") as one, \
            DevServer(answer=VERDICT, model="judge") as judge:
        src = make_run(tmp_path / "answers", n=1)
        out = tmp_path / "prefs"
        res = CliRunner().invoke(app, [
            "preferences", str(src), "-n", "3", "-o", str(out), "--no-progress",
            "--model", f"openai:judge@{judge.url}", "--response-model", f"openai:one@{one.url}"])
        assert res.exit_code == 0, res.output
        assert judge.served == 0
    dropped = list(RunDir(out).dropped())
    assert dropped[0]["rejection"]["rule"] == "same_answers"


def test_an_unusable_verdict_is_rejected_with_the_judges_text(tmp_path, servers):
    good, bad, judge = servers
    judge.answer = json.dumps({"analysis": "both", "best": "9"})
    res, out = run_prefs(tmp_path, servers)
    assert res.exit_code == 0, res.output
    dropped = list(RunDir(out).dropped())
    assert len(dropped) == 3 and dropped[0]["rejection"]["rule"] == "no_verdict"
    assert list(RunDir(out).kept()) == []


def test_with_more_answers_the_worst_is_asked_among_the_others_only(tmp_path, servers):
    good, bad, judge = servers
    judge.answer = json.dumps({"analysis": "Answer 1 is right, 3 is the worst.", "best": "1"})
    with DevServer(answer="Rome.", model="ugly") as ugly:
        res, out = run_prefs(tmp_path, servers, "-n", "3",
                             "--response-model", f"openai:ugly@{ugly.url}")
    assert res.exit_code == 0, res.output
    recs = list(RunDir(out).kept())
    assert len(recs) == 3
    pref = recs[0]["metadata"]["preferences"]
    assert (pref["chosen"], pref["rejected"]) == ("Paris.", "Rome.")
    assert (pref["chosen_index"], pref["rejected_index"]) == (0, 2)
    assert judge.served == 6
    second = [b for b in judge.bodies if len(b["messages"]) == 4]
    assert len(second) == 3
    assert '"enum": ["2", "3"]' in json.dumps(second[0].get("response_format"))


def test_dpo_export_loads_with_datasets_and_has_the_three_fields(tmp_path, servers):
    res, out = run_prefs(tmp_path, servers)
    assert res.exit_code == 0, res.output
    exp = CliRunner().invoke(app, ["export", str(out), "--format", "dpo"])
    assert exp.exit_code == 0, exp.output
    assert "wrote 3 rows" in exp.output
    import datasets

    ds = datasets.load_dataset("json", data_files=str(out / "export" / "dpo.jsonl"),
                               split="train")
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert ds[0]["prompt"][-1]["role"] == "user"
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "Paris."}]
    assert ds[0]["rejected"] == [{"role": "assistant", "content": "London."}]


def test_dpo_export_of_a_run_without_pairs_skips_every_record(tmp_path):
    src = make_run(tmp_path / "answers", n=2)
    exp = CliRunner().invoke(app, ["export", str(src), "--format", "dpo"])
    assert exp.exit_code == 0, exp.output
    assert "wrote 0 rows" in exp.output and "2 no pair" in exp.output


@pytest.mark.parametrize("args, message", [
    (["-n", "1"], "-n"),
    (["-o", "SRC"], "new run directory"),
])
def test_bad_options_are_explained(tmp_path, args, message):
    src = make_run(tmp_path / "answers", n=1)
    args = [str(src) if a == "SRC" else a for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "prefs")]
    res = CliRunner().invoke(app, ["preferences", str(src), *args, "--no-progress"])
    assert res.exit_code != 0
    assert message in " ".join(res.output.split())


def test_a_missing_run_directory_is_explained(tmp_path):
    res = CliRunner().invoke(app, ["preferences", str(tmp_path / "nope"), "-o",
                                   str(tmp_path / "prefs"), "--no-progress"])
    assert res.exit_code != 0
    assert "no such file (is" in res.output
    assert "a run directory?" in " ".join(res.output.split())
