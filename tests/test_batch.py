"""Batch mode (--batch) against the dev server's Batch API: the same records as streaming,
resume after a SIGKILL without submitting any request twice, and failed / expired lines
handled as documented (llm/batch.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.devserver import DevServer
from instructforge.engine.context import Usage
from instructforge.engine.progress import JobProgress
from instructforge.llm.base import LLMError, SamplingParams
from instructforge.llm.batch import BatchLLM, Journal
from instructforge.llm.openai import OpenAICompatible
from instructforge.llm.prices import PRICES_ENV

pytestmark = pytest.mark.timeout(120)
runner = CliRunner()
FAST = ["--batch-poll", "0.02", "--batch-window", "0.05"]
# Serves as every evolution, answer and verdict.
ANSWER = "Name three rare fruits, their colours, and the countries where each of them grows."
# For auto-evol: a rewritten instruction and an optimized method in one answer.
SECTIONED = (
    "Step 1 #Analysis#: Not Equal; stage 1 kept its complexity.\n"
    "Step 2 #Optimized Method#: Step 1: list ways to add depth. Step 2: plan with two of "
    "them. Step 3: rewrite. Step 4: review and give the final version.\n"
    "Step 4 #Finally Rewritten Instruction#: Name three rare fruits, their colours and where "
    "they grow."
)


def write_inputs(tmp_path: Path, n: int) -> Path:
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Name fact number {i}."})
                         + "\n" for i in range(n)))
    return p


def respond_args(inp: Path, out: Path, srv: DevServer) -> list[str]:
    return ["respond", str(inp), "-o", str(out), "--base-url", srv.url, "--model", "dev",
            "--max-tokens", "10", "--no-progress", "--batch", *FAST]


def lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def cache_keys(run: Path) -> set[str]:
    db = sqlite3.connect(run / "cache.sqlite")
    try:
        return {k for (k,) in db.execute("SELECT key FROM calls")}
    finally:
        db.close()


def test_a_batch_evolve_keeps_what_the_streaming_one_keeps(tmp_path):
    seeds = write_inputs(tmp_path, 4)
    stream, batched = tmp_path / "stream", tmp_path / "batch"
    with DevServer(answer=ANSWER) as srv:  # one server: the same model id in cache keys
        for out, extra in ((stream, []), (batched, ["--batch", *FAST])):
            r = runner.invoke(app, ["evolve", str(seeds), "-o", str(out), "--rounds", "3",
                                    "--base-url", srv.url, "--no-progress", *extra])
            assert r.exit_code == 0, r.output
            if out == stream:
                assert not srv.batches and not srv.submitted

    def records(run: Path, name: str) -> list[tuple]:
        path = run / name
        return sorted((r["id"], json.dumps(r["messages"]), r.get("status")) for r in
                      (lines(path) if path.exists() else []))

    assert records(batched, "data/records.jsonl") == records(stream, "data/records.jsonl")
    assert records(batched, "rejected.jsonl") == records(stream, "rejected.jsonl")
    assert lines(batched / "data/records.jsonl")  # something was kept
    # The very same requests (cache keys), each submitted once.
    assert cache_keys(batched) == cache_keys(stream)
    assert set(srv.submitted) == cache_keys(batched)
    assert set(srv.submitted.values()) == {1}
    # One batch per step at least: evolve -> judge/respond -> ... over 3 rounds.
    assert len(srv.batches) >= 3
    journal = lines(batched / "state" / "batches.jsonl")
    assert {e["batch_id"] for e in journal if "batch_id" in e} == set(srv.batches)


def _killed_after_submitting(tmp_path: Path, srv: DevServer) -> tuple[Path, Path]:
    """A respond run in a subprocess, SIGKILLed once its batch is submitted and recorded."""
    inp, out = write_inputs(tmp_path, 6), tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "instructforge.cli",
                             *respond_args(inp, out, srv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "state" / "batches.jsonl"
    try:
        deadline = time.monotonic() + 60
        while not (journal.exists() and "batch_id" in journal.read_text()):
            assert proc.poll() is None, "the run ended before submitting its batch"
            assert time.monotonic() < deadline, "no batch was submitted"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return inp, out


def test_a_run_killed_after_submitting_polls_its_batch_instead_of_paying_again(tmp_path):
    with DevServer(batch_polls=10**9) as srv:  # the batch never ends while the run lives
        inp, out = _killed_after_submitting(tmp_path, srv)
        assert len(srv.batches) == 1 and sum(srv.submitted.values()) == 6
        srv.batch_polls = 0
        r = runner.invoke(app, respond_args(inp, out, srv))
        assert r.exit_code == 0, r.output
        assert len(srv.batches) == 1  # no new batch
        assert set(srv.submitted.values()) == {1}  # no request submitted twice
    assert len(lines(out / "data" / "records.jsonl")) == 6


def test_a_batch_created_but_not_recorded_is_found_on_the_server(tmp_path):
    # Killed between creating the batch and writing its id: the rerun matches the recorded
    # file to the server's batch by its input file id.
    with DevServer(batch_polls=10**9) as srv:
        inp, out = _killed_after_submitting(tmp_path, srv)
        journal = out / "state" / "batches.jsonl"
        journal.write_text("".join(json.dumps(e) + "\n" for e in lines(journal)
                                   if "batch_id" not in e))
        srv.batch_polls = 0
        r = runner.invoke(app, respond_args(inp, out, srv))
        assert r.exit_code == 0, r.output
        assert len(srv.batches) == 1 and set(srv.submitted.values()) == {1}


def test_failed_lines_go_into_a_later_batch_once(tmp_path):
    inp, out = write_inputs(tmp_path, 4), tmp_path / "run"
    with DevServer(batch_failures=2) as srv:  # the first two lines answered fail
        r = runner.invoke(app, respond_args(inp, out, srv))
        assert r.exit_code == 0, r.output
        assert len(srv.batches) == 2
        assert sorted(srv.submitted.values()) == [1, 1, 2, 2]
    assert len(lines(out / "data" / "records.jsonl")) == 4


def test_a_line_failing_twice_fails_its_input_with_the_providers_reason(tmp_path):
    inp, out = write_inputs(tmp_path, 4), tmp_path / "run"
    with DevServer(batch_fail_text="fact number 2.") as srv:
        r = runner.invoke(app, respond_args(inp, out, srv))
        assert r.exit_code == 3, r.output  # a failed input
        assert sorted(srv.submitted.values()) == [1, 1, 1, 2]
    assert sorted(r["id"] for r in lines(out / "data" / "records.jsonl")) == ["q0", "q1", "q3"]
    errors = json.loads((out / "usage.json").read_text())["runs"][-1]["errors"]
    assert "injected line failure" in json.dumps(errors)
    assert "2 batches" in json.dumps(errors)


def test_an_expired_batch_resubmits_only_its_unfinished_requests(tmp_path):
    inp, out = write_inputs(tmp_path, 4), tmp_path / "run"
    with DevServer(batch_expire=1) as srv:  # the first batch expires half done
        r = runner.invoke(app, respond_args(inp, out, srv))
        assert r.exit_code == 0, r.output
        statuses = sorted(b["status"] for b in srv.batches.values())
        assert statuses == ["completed", "expired"]
        assert sorted(srv.submitted.values()) == [1, 1, 2, 2]
        assert srv.served == 4  # each request answered once
    assert len(lines(out / "data" / "records.jsonl")) == 4


def test_batch_calls_cost_the_batch_price(tmp_path, monkeypatch):
    prices = tmp_path / "prices.yaml"
    prices.write_text("dev: {input: 1000, output: 1000, batch: 0.5}\n")
    monkeypatch.setenv(PRICES_ENV, str(prices))
    inp, out = write_inputs(tmp_path, 3), tmp_path / "run"
    with DevServer() as srv:  # 10 prompt + 10 completion tokens a call
        args = respond_args(inp, out, srv)
        args[args.index("--base-url"):args.index("--base-url") + 4] = ["--model",
                                                                      f"openai:dev@{srv.url}"]
        r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    spent = json.loads((out / "usage.json").read_text())["runs"][-1]["cost_usd"]
    assert spent == pytest.approx(3 * 20 * 1000 / 1e6 * 0.5)


def test_a_torn_last_journal_line_is_ignored_and_a_damaged_one_named(tmp_path):
    path = tmp_path / "batches.jsonl"
    path.write_text('{"file_id": "f1", "endpoint": "/v1/completions", "custom_ids": ["k"]}\n'
                    '{"file_id": "f1", "batch_id": "b1"}\n{"file_id": "f2", "endp')
    assert Journal(path).batches("k") == ["b1"]
    path.write_text('{"file_id": "f1", "bat\n{"file_id": "f1", "batch_id": "b1"}\n')
    with pytest.raises(LLMError, match=r"batches.jsonl:1: not a batch journal line"):
        Journal(path)


def test_magpie_batches_its_raw_completions(tmp_path):
    out = tmp_path / "run"
    with DevServer(answer="Explain how tides work and why there are two a day.") as srv:
        r = runner.invoke(app, ["magpie", "-n", "3", "-o", str(out), "--base-url", srv.url,
                                "-m", "dev", "--template", "chatml", "--language", "any",
                                "--no-progress", "--batch", *FAST])
        assert r.exit_code == 0, r.output
        endpoints = {b["endpoint"] for b in srv.batches.values()}
        assert "/v1/completions" in endpoints  # the query step: raw text completion
        assert set(srv.submitted.values()) == {1}
    assert len(lines(out / "data" / "records.jsonl")) + len(
        lines(out / "rejected.jsonl") if (out / "rejected.jsonl").exists() else []) == 3


def test_auto_evol_batches_its_final_pass_only(tmp_path):
    run = tmp_path / "run"
    with DevServer(answer=SECTIONED) as srv:
        r = runner.invoke(app, [
            "auto-evol", str(write_inputs(tmp_path, 6)), "-o", str(run), "--steps", "1", "-m", "1",
            "--dev-size", "2", "--batch-size", "2", "--rounds", "1", "--patience", "0",
            "--evol-model", srv.url, "--optimizer-model", srv.url, "--no-progress",
            "--batch", *FAST])
        assert r.exit_code == 0, r.output
        assert srv.batches and set(srv.submitted.values()) == {1}
        # The search streamed; the final pass (6 seeds: evolve, then judge and respond)
        # went through batches.
        assert srv.served > sum(srv.submitted.values()) >= 6
    assert len(lines(run / "data" / "records.jsonl")) == 6
    assert (run / "state" / "batches.jsonl").exists()


def test_a_run_may_switch_between_batch_and_streaming(tmp_path):
    inp, out = write_inputs(tmp_path, 4), tmp_path / "run"
    with DevServer() as srv:
        args = respond_args(inp, out, srv)
        streaming = [a for a in args if a not in ("--batch", *FAST)]
        assert runner.invoke(app, streaming + ["--limit", "2"]).exit_code == 0
        r = runner.invoke(app, args)  # the same records, sent another way: not refused
        assert r.exit_code == 0, r.output
        assert sum(srv.submitted.values()) == 2 and srv.served == 4


def test_a_step_of_many_records_goes_as_one_batch(tmp_path):
    # --batch raises --concurrency (64 by default): 100 records' calls are one batch.
    inp, out = write_inputs(tmp_path, 100), tmp_path / "run"
    with DevServer() as srv:
        r = runner.invoke(app, respond_args(inp, out, srv))
        assert r.exit_code == 0, r.output
        assert len(srv.batches) == 1 and sum(srv.submitted.values()) == 100


def test_progress_names_the_batches_submitted_in_progress_and_done():
    async def go(srv: DevServer) -> tuple[str, str, str]:
        llm = BatchLLM(OpenAICompatible(srv.url, "dev"), None, window=0.01, poll=0.01)
        bar = JobProgress("respond", 2, Usage(), enabled=False, llms=[llm])
        calls = [asyncio.ensure_future(llm.chat([{"role": "user", "content": f"q{i}"}],
                                                SamplingParams(max_tokens=5)))
                 for i in range(2)]
        while not llm.submitted:
            await asyncio.sleep(0.01)
        waiting = bar.line()
        srv.batch_polls = 0
        await asyncio.gather(*calls)
        done = bar.line()
        await llm.aclose()
        return waiting, done, llm.submitted[0]

    with DevServer(batch_polls=10**9) as srv:
        waiting, done, batch_id = asyncio.run(go(srv))
    assert f"batches: 1 submitted, 1 in progress ({batch_id}), 0 done" in waiting
    assert "batches: 1 submitted, 0 in progress, 1 done" in done


def test_dry_run_shows_the_batches_and_the_batch_price(tmp_path):
    inp = write_inputs(tmp_path, 30)
    args = ["respond", str(inp), "-o", str(tmp_path / "run"), "--model",
            "openai:gpt-4o-mini@http://127.0.0.1:9/v1", "--dry-run", "--max-tokens", "100000"]
    plain = runner.invoke(app, args, terminal_width=200)
    batched = runner.invoke(app, [*args, "--batch"], terminal_width=200)
    assert plain.exit_code == batched.exit_code == 0, batched.output
    assert "batches" not in plain.output
    assert "batch requests at most │ 30" in batched.output
    assert "batches about          │ 1" in batched.output

    def dollars(output: str) -> list[float]:
        line = next(ln for ln in output.splitlines() if "cost usd" in ln)
        return [float(w.strip("$,")) for w in line.split() if w.startswith("$")]

    # The most it could cost (every answer at its cap), at half the price.
    assert dollars(batched.output)[-1] == pytest.approx(dollars(plain.output)[-1] / 2, rel=0.01)


def test_the_same_request_twice_at_once_is_one_batch_line():
    async def go(srv: DevServer) -> list[str]:
        llm = BatchLLM(OpenAICompatible(srv.url, "dev"), None, window=0.01, poll=0.01)
        same = [{"role": "user", "content": "q"}]
        outs = await asyncio.gather(*(llm.chat(same, SamplingParams(max_tokens=5))
                                      for _ in range(3)))
        await llm.aclose()
        return [o.text for o in outs]

    with DevServer() as srv:
        assert len(set(asyncio.run(go(srv)))) == 1
        assert list(srv.submitted.values()) == [1]


def test_a_batch_failed_as_a_whole_is_retried_once_then_fails_with_its_reason(tmp_path):
    inp = write_inputs(tmp_path, 3)
    with DevServer(batch_fail_batches=1) as srv:  # the first batch fails: retried, answered
        r = runner.invoke(app, respond_args(inp, tmp_path / "once", srv))
        assert r.exit_code == 0, r.output
        assert [b["status"] for b in srv.batches.values()] == ["failed", "completed"]
    with DevServer(batch_fail_batches=2) as srv:  # failed twice: the inputs fail
        r = runner.invoke(app, respond_args(inp, tmp_path / "twice", srv))
        assert r.exit_code == 3, r.output
        errors = json.loads((tmp_path / "twice" / "usage.json").read_text())["runs"][-1]
        assert "injected batch failure" in json.dumps(errors["errors"])
        assert errors["failed"] == 3


def test_analyze_judges_in_batch_mode(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "messages": [
        {"role": "user", "content": f"Question {i}: why is the sky blue?"},
        {"role": "assistant", "content": "Because of Rayleigh scattering."}]}) + "\n"
        for i in range(5)))
    with DevServer(answer="good", batch_polls=1) as srv:
        res = runner.invoke(app, ["analyze", str(data), "-o", str(tmp_path / "a"),
                                  "--no-embeddings", "--no-report", "--no-progress",
                                  "--judge", "dev", "--base-url", srv.url, "--ratings",
                                  "quality", "--no-tags", "--batch", *FAST])
        assert res.exit_code == 0, res.output
        assert srv.batches  # the verdicts came through the Batch API ...
        assert sum(srv.submitted.values()) == 5  # ... one line per record, each once
        assert srv.requests < 5 + len(srv.batches) * 6  # not one HTTP call per record
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["ratings"]["quality"]["counts"]["good"] == 5
    journal = tmp_path / "a" / "judge" / "batches.jsonl"
    assert journal.exists() and journal.read_text().strip()
