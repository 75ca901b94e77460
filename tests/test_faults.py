"""Fault injection: a server that fails 20% of its completion requests (HTTP 429/5xx, dropped
connections, hangs, `choices: []`, `content: null`, `[]`, `null`, HTML) under respond, evolve
and magpie, through the CLI.

Every input ends kept, rejected, or failed with its reason (`rule: call_failed` in
rejected.jsonl, never marked done); the exit code says whether the run is complete (0) or
not (3); and a rerun against the healed server completes the run without repeating any call
that had been answered.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.devserver import BODY_FAULTS, DevServer
from instructforge.engine import RequestCache, RunDir

# A guard only: with 3 s attempts the whole file takes about a minute.
pytestmark = pytest.mark.timeout(300)

runner = CliRunner()
# Short attempts keep hung requests cheap (long enough that only hung ones time out, on a
# busy machine too); one retry lets some calls fail for good.
FLAKY = ["--timeout", "3", "--max-retries", "1", "--concurrency", "8", "--no-progress"]


def write_inputs(tmp_path: Path, n: int) -> Path:
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Name fact number {i}."})
                         + "\n" for i in range(n)))
    return p


def command(kind: str, tmp_path: Path, url: str, n: int = 0) -> tuple[list[str], list[str]]:
    """The CLI arguments for ``kind`` and the ids of its inputs."""
    run = str(tmp_path / "run")
    if kind == "respond":
        n = n or 24
        return (["respond", str(write_inputs(tmp_path, n)), "-o", run, "--base-url", url,
                 "-m", "dev"], [f"q{i}" for i in range(n)])
    if kind == "evolve":
        n = 10
        return (["evolve", str(write_inputs(tmp_path, n)), "-o", run, "--base-url", url,
                 "--rounds", "2", "--evol-model", "dev", "--response-model", "dev",
                 "--judge-model", "dev"], [f"q{i}" for i in range(n)])
    n = 20
    return (["magpie", "-n", str(n), "-o", run, "--base-url", url, "-m", "dev",
             "--template", "chatml", "--show", "0"], [f"magpie-{i}" for i in range(n)])


def outcome(run: RunDir, kind: str, inputs: list[str]) -> dict[str, Any]:
    """Which inputs finished and which failed, after checking that each input is accounted
    for exactly once and no record id is written twice."""
    kept, dropped = list(run.kept()), list(run.dropped())
    ids = [r["id"] for r in kept + dropped]
    assert len(ids) == len(set(ids)), Counter(ids).most_common(3)
    failed = {r["id"]: r for r in dropped if r["rejection"]["rule"] == "call_failed"}
    for rec in failed.values():
        assert rec["rejection"]["stage"] == "call"
        assert "failed after 2 attempts" in rec["rejection"]["reason"]
        assert rec["rejection"]["evidence"]["step"]
    done = run.done.read_text().split() if run.done.exists() else []
    assert len(done) == len(set(done))
    assert not set(done) & set(failed)
    assert sorted([*done, *failed]) == sorted(inputs)  # every input: finished or failed
    finished = [r for r in kept + dropped if r["id"] not in failed]
    if kind == "evolve":  # a finished chain wrote one child per round, kept or eliminated
        by_seed = Counter(r["lineage"]["seed_id"] for r in finished)
        assert by_seed == {s: 2 for s in done}
    else:  # one record per input, kept or rejected
        assert sorted(r["id"] for r in finished) == sorted(done)
    return {"done": done, "failed": failed}


def finished_calls(run: RunDir) -> int:
    """Calls whose answer the run received (each is in its request cache, once)."""
    cache = RequestCache(run.cache)
    try:
        return len(cache)
    finally:
        cache.close()


@pytest.mark.parametrize("kind", ["respond", "evolve", "magpie"])
def test_a_flaky_server_loses_no_input_and_a_rerun_completes_the_run(tmp_path, kind):
    run = RunDir(tmp_path / "run")
    # Seed 19's first 24 completion requests meet a hang, `choices: []`, `content: null`, `[]`,
    # a dropped connection, an empty answer and an HTML page.
    with DevServer(fault_rate=0.2, seed=19) as srv:
        args, inputs = command(kind, tmp_path, srv.url)
        first = runner.invoke(app, args + FLAKY, terminal_width=300)
        assert first.exception is None or isinstance(first.exception, SystemExit), first.output
        assert "Traceback" not in first.output
        got = outcome(run, kind, inputs)
        assert first.exit_code == (3 if got["failed"] else 0), first.output
        assert {"hang", "empty_choices", "null_content", "list_body"} <= set(srv.injected)
        usage = json.loads(run.usage.read_text())["runs"][-1]["by_model_step"]
        assert sum(u["retries"] for steps in usage.values() for u in steps.values()) > 0

        finished = finished_calls(run)
        srv.fault_rate = 0.0
        srv.served = 0
        again = runner.invoke(app, args + FLAKY, terminal_width=300)
        assert again.exit_code == 0, again.output
        got = outcome(run, kind, inputs)
        assert got["failed"] == {} and sorted(got["done"]) == sorted(inputs)
        # Every request of the rerun was a call not finished before: none was paid twice.
        assert srv.served == finished_calls(run) - finished


def test_inputs_whose_calls_all_fail_are_each_rejected_with_the_reason(tmp_path):
    run = RunDir(tmp_path / "run")
    with DevServer(fault_rate=1.0, fault_mix=BODY_FAULTS, seed=1) as srv:
        # Fewer inputs than the 20 failures in a row that stop a job as hopeless.
        args, inputs = command("respond", tmp_path, srv.url, n=8)
        args += ["--timeout", "3", "--max-retries", "1", "--no-progress"]
        first = runner.invoke(app, args, terminal_width=300)
        assert first.exit_code == 3, first.output
        assert f"{len(inputs)} input(s) failed after retries" in first.output
        got = outcome(run, "respond", inputs)
        assert sorted(got["failed"]) == sorted(inputs) and got["done"] == []
        assert list(run.kept()) == []
        srv.fault_rate = 0.0
        again = runner.invoke(app, args, terminal_width=300)
    assert again.exit_code == 0, again.output
    assert sorted(r["id"] for r in run.kept()) == sorted(inputs)
    assert list(run.dropped()) == []
