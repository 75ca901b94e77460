"""``instructforge preferences``: --dry-run, and the cost and rate options every job shares
(--price, --max-cost, --rpm, --tpm, --max-concurrency, --batch, --config), against dev
servers that each give one fixed answer (a good one, a bad one, and the judge's verdict)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from preference_runs import VERDICT, make_run
from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.devserver import DevServer
from instructforge.engine import RunDir
from instructforge.llm.prices import Price
from instructforge.methods import preferences as prefs_method

pytestmark = pytest.mark.timeout(120)
runner = CliRunner()
FAST = ["--batch-poll", "0.02", "--batch-window", "0.05"]


def invoke(src: Path, out: Path, servers, *extra: str):
    good, bad, judge = servers
    return runner.invoke(app, [
        "preferences", str(src), "-o", str(out), "-n", "2", "--no-progress",
        "--max-tokens", "10", "--judge-max-tokens", "10",
        "--model", f"openai:judge@{judge.url}",
        "--response-model", f"openai:good@{good.url}",
        "--response-model", f"openai:bad@{bad.url}", *extra], terminal_width=200)


def plan(output: str) -> dict[str, str]:
    """The dry run's table as ``{row: value}``."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line) if c.strip()]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def served(servers) -> int:
    return sum(s.served for s in servers)


def test_dry_run_plans_the_calls_and_their_cost_and_calls_nothing(tmp_path, servers):
    src, out = make_run(tmp_path / "answers", 3), tmp_path / "prefs"
    res = invoke(src, out, servers, "-n", "3", "--price", "1000,2000", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "nothing was called" in res.output
    assert served(servers) == 0 and sum(s.requests for s in servers) == 0
    assert not out.exists()
    p = plan(res.output)
    assert p["records"] == "3" and p["answers per record"] == "3"
    # Per record: 3 answers, the judge's best, then its worst among the other two.
    assert p["llm calls at most"] == "15"
    # Every answer and verdict at its cap: 3 * (3 * 10 + 10 + 8).
    assert p["completion tokens max"] == "144"
    prompt = int(p["prompt tokens approx"].replace(",", ""))
    low, high = (float(x) for x in re.findall(r"\$([0-9.]+)", p["cost usd"]))
    # From the prompts alone at $1000/M to every completion token at $2000/M more.
    assert low == pytest.approx(prompt * 1000 / 1e6, abs=1e-4)
    assert high - low == pytest.approx(144 * 2000 / 1e6, abs=1e-4)


def test_dry_run_with_two_answers_asks_the_judge_once_and_counts_batches(tmp_path, servers):
    res = invoke(make_run(tmp_path / "answers", 4), tmp_path / "prefs", servers,
                 "--batch", "--dry-run")
    assert res.exit_code == 0, res.output
    p = plan(res.output)
    assert p["llm calls at most"] == str(4 * (2 + 1))
    assert p["batch requests at most"] == "12"
    assert p["batches about"] == "3"  # one a server: the good answers, the bad, the verdicts
    assert "unknown" in p["cost usd"]  # dev models have no price, and none was given


def test_dry_run_refuses_what_the_run_would_refuse(tmp_path, servers):
    src = make_run(tmp_path / "answers", 1)
    same = invoke(src, src, servers, "--dry-run")
    assert same.exit_code == 2 and "new run directory" in same.output
    missing = invoke(tmp_path / "nope", tmp_path / "prefs", servers, "--dry-run")
    assert missing.exit_code == 2 and "no such file" in missing.output
    assert sum(s.requests for s in servers) == 0


def test_price_puts_each_steps_dollars_in_usage(tmp_path, servers):
    out = tmp_path / "prefs"
    res = invoke(make_run(tmp_path / "answers", 3), out, servers, "--price", "1000,2000")
    assert res.exit_code == 0, res.output
    usage = json.loads((out / "usage.json").read_text())
    # Each dev call: 10 prompt + 10 completion tokens = $0.03; 3 records x (2 answers + 1
    # verdict).
    assert usage["runs"][-1]["cost_usd"] == pytest.approx(9 * 0.03)
    judge_steps = next(v for k, v in usage["total"].items() if k.startswith("openai:judge"))
    assert judge_steps["preferences-judge"]["cost_usd"] == pytest.approx(3 * 0.03)
    assert "0.0900" in res.output  # the judge's row of the usage table


def test_max_cost_stops_the_run_visibly_and_a_higher_cap_continues(tmp_path, servers):
    src, out = make_run(tmp_path / "answers", 6), tmp_path / "prefs"
    # Each call costs $0.002 (20 tokens at $100/M); a verdict may cost about $0.02 (its
    # prompt, roughly, plus --judge-max-tokens).
    stopped = invoke(src, out, servers, "--price", "100,100", "--max-cost", "0.03")
    assert stopped.exit_code == 4, stopped.output
    assert "budget reached" in stopped.output and "--max-cost" in stopped.output
    spent = json.loads((out / "usage.json").read_text())["runs"][-1]["cost_usd"]
    assert 0 < spent <= 0.03
    assert len(list(RunDir(out).kept())) < 6
    first = served(servers)
    assert first == round(spent / 0.002)

    done = invoke(src, out, servers, "--price", "100,100", "--max-cost", "1")
    assert done.exit_code == 0, done.output
    assert len(list(RunDir(out).kept())) == 6
    assert served(servers) == 6 * 3  # no call was made twice
    total = sum(r["cost_usd"] for r in json.loads((out / "usage.json").read_text())["runs"])
    assert total == pytest.approx(6 * 3 * 0.002)


def test_max_cost_without_a_price_is_refused_before_any_call(tmp_path, servers):
    res = invoke(make_run(tmp_path / "answers", 2), tmp_path / "prefs", servers,
                 "--max-cost", "1")
    assert res.exit_code == 2, res.output
    assert "--max-cost needs the price of openai:" in " ".join(res.output.split())
    assert served(servers) == 0


def test_rpm_keeps_every_server_under_its_rate_limit(tmp_path):
    # 300 requests a minute, metered over 2 s windows to keep the test short: bursts above
    # 10 are refused. 20 records: 20 requests to each server.
    src = make_run(tmp_path / "answers", 20)
    limits = dict(rate_limit=10, rate_window=2.0)
    with DevServer(answer="Paris.", model="good", **limits) as good, \
            DevServer(answer="London.", model="bad", **limits) as bad, \
            DevServer(answer=VERDICT, model="judge", **limits) as judge:
        group = (good, bad, judge)
        res = invoke(src, tmp_path / "paced", group, "--rpm", "300")
        assert res.exit_code == 0, res.output
        assert len(list(RunDir(tmp_path / "paced").kept())) == 20
        assert sum(s.throttled for s in group) <= 1
        # The same run without --rpm (and no retries) overruns the limit.
        fast = invoke(src, tmp_path / "unpaced", group, "--max-retries", "0")
        assert fast.exit_code == 3, fast.output
        assert sum(s.throttled for s in group) > 1


def test_rate_concurrency_and_price_options_reach_every_backend(tmp_path, servers,
                                                                monkeypatch):
    seen = {}

    def capture(run_dir, out_dir, cfg, **kw):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr("instructforge.cli.preferences.preferences", capture)
    invoke(make_run(tmp_path / "answers", 1), tmp_path / "prefs", servers, "--rpm", "600",
           "--tpm", "60000", "--max-concurrency", "3", "--price", "1,2", "--timeout", "7")
    built = prefs_method.preferences_job(seen["cfg"])
    assert len(built.llms) == 3  # the judge and two response models
    for llm in built.llms:
        assert llm._rpm.rate == 10 and llm._tpm.rate == 1000  # per second
        assert llm.max_concurrency == 3
        assert llm.price == Price(1.0, 2.0)


def test_batch_sends_every_step_through_the_batch_api_with_the_same_pairs(tmp_path, servers):
    src = make_run(tmp_path / "answers", 3)
    stream, batched = tmp_path / "stream", tmp_path / "batched"
    assert invoke(src, stream, servers).exit_code == 0
    assert not any(s.batches for s in servers)
    res = invoke(src, batched, servers, "--batch", *FAST)
    assert res.exit_code == 0, res.output
    assert all(s.batches for s in servers)  # answers and verdicts alike
    assert all(s.submitted and max(s.submitted.values()) == 1 for s in servers)

    def pairs(run: Path) -> list[tuple]:
        return [(r["id"], r["metadata"]["preferences"]["chosen"],
                 r["metadata"]["preferences"]["rejected"]) for r in RunDir(run).kept()]

    assert pairs(batched) == pairs(stream) and len(pairs(stream)) == 3
    saved = yaml.safe_load((batched / "config.yaml").read_text())
    assert saved["concurrency"] == 10_000  # --batch raised the records in flight
    assert saved["llm"]["batch"] and all(m["batch"] for m in saved["response_llms"])


def test_a_recipe_gives_the_options_defaults(tmp_path, servers):
    recipe = tmp_path / "prefs.yaml"
    recipe.write_text("num: 3\nprice: '1000,2000'\nrpm: 60\n")
    res = invoke(make_run(tmp_path / "answers", 2), tmp_path / "prefs", servers,
                 "--config", str(recipe), "--dry-run")
    # -n 2 given on the command line wins over the recipe's num: 3
    assert res.exit_code == 0, res.output
    p = plan(res.output)
    assert p["answers per record"] == "2"
    assert p["cost usd"].startswith("$") and not p["cost usd"].startswith("$0.0000 to $0.0000")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rpm: 0\n")
    res = invoke(make_run(tmp_path / "answers", 2), tmp_path / "prefs", servers,
                 "--config", str(bad), "--dry-run")
    assert res.exit_code == 2 and "--rpm" in res.output
