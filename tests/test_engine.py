"""The streaming engine: durable outputs, request cache, resume, usage, parquet."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from instructforge.devserver import DevServer
from instructforge.engine import JobAborted, RequestCache, RunDir, Usage, iter_jsonl, run_job
from instructforge.engine.progress import JobProgress
from instructforge.llm import LLMError, OpenAICompatible
from instructforge.llm.config import ModelConfig
from instructforge.methods.respond import RespondConfig, respond
from instructforge.records import new_record, rejected


def seeds(tmp_path: Path, n: int) -> Path:
    p = tmp_path / "seeds.jsonl"
    p.write_text("".join(json.dumps({"instruction": f"Question number {i}?"}) + "\n"
                         for i in range(n)))
    return p


def cfg(url: str, **kw) -> RespondConfig:
    return RespondConfig(llm=ModelConfig(model="dev", base_url=url), **kw)


def test_respond_writes_a_complete_run_directory(tmp_path, dev_server):
    res = respond(seeds(tmp_path, 5), tmp_path / "run", cfg(dev_server.url), progress=False)
    run = RunDir(tmp_path / "run")
    recs = list(run.kept())
    assert res.kept == 5 and len(recs) == 5
    assert all(r["messages"][-1] == {"role": "assistant", "content": dev_server.answer}
               for r in recs)
    assert run.config.exists() and run.cache.exists() and run.parquet.exists()
    usage = json.loads(run.usage.read_text())
    assert usage["total"]["openai:dev@" + dev_server.url]["respond"]["requests"] == 5


def test_rerun_makes_no_llm_call_and_duplicates_nothing(tmp_path, dev_server):
    respond(seeds(tmp_path, 5), tmp_path / "run", cfg(dev_server.url), progress=False)
    res = respond(seeds(tmp_path, 5), tmp_path / "run", cfg(dev_server.url), progress=False)
    assert dev_server.served == 5
    assert res.skipped == 5
    assert len(list(RunDir(tmp_path / "run").kept())) == 5


def test_cache_answers_a_new_run_dir_through_the_shared_cache(tmp_path, dev_server):
    shared = tmp_path / "shared.sqlite"
    respond(seeds(tmp_path, 3), tmp_path / "a", cfg(dev_server.url, shared_cache=str(shared)),
            progress=False)
    respond(seeds(tmp_path, 3), tmp_path / "b", cfg(dev_server.url, shared_cache=str(shared)),
            progress=False)
    assert dev_server.served == 3
    assert len(list(RunDir(tmp_path / "b").kept())) == 3


def test_changed_sampling_params_miss_the_cache(tmp_path, dev_server):
    respond(seeds(tmp_path, 2), tmp_path / "a", cfg(dev_server.url), progress=False)
    respond(seeds(tmp_path, 2), tmp_path / "b", cfg(dev_server.url, temperature=0.1),
            progress=False)
    assert dev_server.served == 4


def test_parquet_holds_every_kept_record(tmp_path, dev_server):
    respond(seeds(tmp_path, 4), tmp_path / "run", cfg(dev_server.url), progress=False)
    table = pq.read_table(RunDir(tmp_path / "run").parquet)
    assert table.num_rows == 4
    assert table.column("messages").to_pylist()[0][1]["role"] == "assistant"


def test_rejected_outputs_and_invalid_inputs_go_to_rejected_jsonl(tmp_path):
    async def process(rec, ctx):
        return [rejected(rec, stage="test", rule="always", reason="demo")]

    inputs = [new_record("a", "x", method="input"),
              rejected(new_record("bad", method="input"), stage="input", rule="invalid_input",
                       reason="f:2: oops")]
    res = run_job("t", inputs, process, tmp_path / "run", config={}, progress=False)
    assert (res.kept, res.rejected, res.invalid) == (0, 1, 1)
    rules = [r["rejection"]["rule"] for r in RunDir(tmp_path / "run").dropped()]
    assert sorted(rules) == ["always", "invalid_input"]


def test_consecutive_llm_failures_abort_keeping_what_finished(tmp_path):
    async def process(rec, ctx):
        if rec["id"] != "ok":
            raise LLMError("server gone")
        return [rec]

    inputs = [new_record("ok", "x", method="input")] + [
        new_record(f"f{i}", "x", method="input") for i in range(10)]
    with pytest.raises(JobAborted, match="server gone"):
        run_job("t", inputs, process, tmp_path / "run", config={}, progress=False,
                max_consecutive_failures=3, concurrency=1)
    assert [r["id"] for r in RunDir(tmp_path / "run").kept()] == ["ok"]


def test_preflight_fails_before_any_record_when_the_server_is_unreachable(tmp_path):
    called = []

    async def process(rec, ctx):
        called.append(rec)
        return [rec]

    llm = OpenAICompatible("http://127.0.0.1:9/v1", None, max_retries=0)
    with pytest.raises(LLMError, match="cannot connect"):
        run_job("t", [new_record("a", "x", method="input")], process, tmp_path / "run",
                config={}, progress=False, llms=[llm])
    assert called == []


def test_a_torn_last_line_is_repaired_on_resume(tmp_path, dev_server):
    respond(seeds(tmp_path, 3), tmp_path / "run", cfg(dev_server.url), progress=False)
    run = RunDir(tmp_path / "run")
    with open(run.records, "a") as f:
        f.write('{"id": "half')
    respond(seeds(tmp_path, 3), tmp_path / "run", cfg(dev_server.url), progress=False)
    assert len(list(iter_jsonl(run.records))) == 3
    assert run.records.read_text().endswith("}\n")


def test_config_yaml_never_holds_the_api_key(tmp_path, dev_server):
    respond(seeds(tmp_path, 1), tmp_path / "run", cfg(dev_server.url), api_key="sk-topsecret",
            progress=False)
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file():
            assert b"sk-topsecret" not in f.read_bytes(), f


SECRETS = (b"S3CRETPASS", b"S3CRETKEY")


def secret_url(srv: DevServer) -> str:
    return f"http://user:S3CRETPASS@127.0.0.1:{srv.port}/v1?api_key=S3CRETKEY"


@pytest.mark.parametrize("command", [
    ["respond", "{seeds}", "--base-url", "{url}", "-m", "dev", "--no-progress"],
    ["respond", "{seeds}", "--base-url", "{url}", "-m", "dev", "--dry-run"],
    ["evolve", "{seeds}", "--base-url", "{url}", "--evol-model", "dev", "--response-model",
     "dev", "--judge-model", "dev", "--rounds", "1", "--no-progress"],
    ["magpie", "-n", "2", "--base-url", "{url}", "-m", "dev", "--template", "chatml",
     "--no-progress"],
    ["auto-evol", "{seeds}", "--evol-model", "openai:dev@{url}", "--optimizer-model",
     "openai:dev@{url}", "--steps", "1", "-m", "1", "--dev-size", "2", "--batch-size", "2",
     "--rounds", "1", "--patience", "0", "--no-progress"],
    ["eval", "--task", "gsm8k", "--model", "openai:dev@{url}", "--limit", "2", "--no-progress"],
    ["models", "--base-url", "{url}"],
], ids=lambda c: "-".join(c[:1] + [a for a in c if a == "--dry-run"]))
def test_credentials_in_the_server_url_never_reach_disk_or_the_terminal(
    tmp_path, monkeypatch, command
):
    from typer.testing import CliRunner

    from instructforge.cli import app

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    run = tmp_path / "run"
    with DevServer() as srv:
        args = [a.format(seeds=seeds(tmp_path, 6), url=secret_url(srv)) for a in command]
        if command[0] != "models":
            args += ["-o", str(run)]
        res = CliRunner().invoke(app, args, terminal_width=300)
        assert res.exit_code == 0, res.output
        assert srv.served > 0 or "--dry-run" in command or command[0] == "models"
    for secret in SECRETS:
        assert secret.decode() not in res.output
        for f in tmp_path.rglob("*"):
            if f.is_file():
                assert secret not in f.read_bytes(), f
    if "--dry-run" not in command and command[0] != "models":
        assert b"127.0.0.1" in (run / "config.yaml").read_bytes()  # the URL is still there


@pytest.mark.slow
def test_resume_after_sigkill_loses_nothing_duplicates_nothing_repeats_no_finished_call(tmp_path):
    n = 60
    inp = seeds(tmp_path, n)
    run = RunDir(tmp_path / "run")
    with DevServer(delay=0.05) as srv:
        cmd = [sys.executable, "-m", "instructforge.cli.__main__", "respond", str(inp),
               "-o", str(run.root), "--base-url", srv.url, "-m", "dev", "--no-progress",
               "--concurrency", "4"]
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 60
        while time.time() < deadline:
            done = run.done.read_text().count("\n") if run.done.exists() else 0
            if done >= 15:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert 15 <= len(list(iter_jsonl(run.records))) < n
        cache = RequestCache(run.cache)
        finished_calls = len(cache)  # calls whose answer was stored before the kill
        cache.close()
        time.sleep(0.5)  # let the server finish answering the killed process's requests
        srv.served = 0
        subprocess.run(cmd, check=True, timeout=120)
        asked_again = srv.served
    ids = [r["id"] for r in iter_jsonl(run.records)]
    assert len(ids) == n and len(set(ids)) == n  # 0 lost, 0 duplicated
    assert asked_again == n - finished_calls  # 0 repeated finished calls


@pytest.mark.timeout(60)
def test_a_concurrency_below_1_is_refused_rather_than_waiting_forever(tmp_path):
    async def process(rec, ctx):
        return [rec]

    with pytest.raises(ValueError, match="concurrency must be >= 1, got 0"):
        run_job("t", [new_record("a", "x", method="input")], process, tmp_path / "run",
                config={}, progress=False, concurrency=0)
    assert not (tmp_path / "run").exists()


def flaky(url: str, **kw) -> RespondConfig:
    """Respond one input at a time, so the server's faults in order hit known inputs."""
    return RespondConfig(llm=ModelConfig("dev", url, timeout=0.5, max_retries=1),
                         concurrency=1, **kw)


def test_an_empty_answer_is_never_kept_nor_cached_and_a_rerun_asks_again(tmp_path):
    run = RunDir(tmp_path / "run")
    with DevServer(faults=["", "empty_choices", "null_content"]) as srv:  # "": the preflight
        res = respond(seeds(tmp_path, 1), run.root, flaky(srv.url), progress=False)
        assert (res.kept, res.failed) == (0, 1)
        cache = RequestCache(run.cache)
        assert len(cache) == 0
        cache.close()
        res = respond(seeds(tmp_path, 1), run.root, flaky(srv.url), progress=False)
    assert (res.kept, res.failed) == (1, 0)
    assert [r["messages"][-1]["content"] for r in run.kept()] == [srv.answer]


def test_a_malformed_body_fails_that_input_only_with_the_reason(tmp_path):
    with DevServer(faults=["", "list_body", "null_body"]) as srv:
        res = respond(seeds(tmp_path, 4), tmp_path / "run", flaky(srv.url), progress=False)
    assert (res.kept, res.failed) == (3, 1)
    [failed] = RunDir(tmp_path / "run").dropped()
    assert failed["rejection"]["rule"] == "call_failed"
    assert "the body is JSON null" in failed["rejection"]["reason"]


def test_usage_json_counts_retries_by_cause(tmp_path):
    with DevServer(faults=["", "503", "hang", "null_content"]) as srv:
        cfg_ = RespondConfig(llm=ModelConfig("dev", srv.url, timeout=0.5, max_retries=3),
                             concurrency=1)
        respond(seeds(tmp_path, 2), tmp_path / "run", cfg_, progress=False)
    usage = json.loads(RunDir(tmp_path / "run").usage.read_text())
    for counts in (usage["total"], usage["runs"][-1]["by_model_step"]):
        u = counts[f"openai:dev@{srv.url}"]["respond"]
        assert u["retries"] == 3
        assert u["retry_causes"] == {"HTTP 503": 1, "empty": 1, "timeout": 1}
        assert u["errors"] == 0


def test_the_progress_line_shows_retries_and_their_causes():
    usage = Usage()
    usage.steps[("m", "respond")].count_retries({"timeout": 2, "HTTP 503": 1})
    usage.steps[("m", "judge")].count_retries({"timeout": 1})
    line = JobProgress("respond", 10, usage, enabled=False).line()
    assert "retries 4 (timeout 3, HTTP 503 1)" in line


def test_a_failed_input_is_rejected_with_the_reason_not_done_and_retried_by_a_rerun(tmp_path):
    async def failing(rec, ctx):
        if rec["id"] == "b":
            raise LLMError("server said no")
        return [rec]

    async def working(rec, ctx):
        return [rec]

    inputs = [new_record(i, "x", method="input") for i in ("a", "b", "c")]
    run = RunDir(tmp_path / "run")
    res = run_job("t", inputs, failing, run.root, config={}, progress=False)
    assert (res.kept, res.failed) == (2, 1)
    [failed] = run.dropped()
    assert failed["id"] == "b" and failed["rejection"]["rule"] == "call_failed"
    assert failed["rejection"]["reason"] == "server said no"
    assert run.done.read_text().split() == ["a", "c"]

    res = run_job("t", inputs, working, run.root, config={}, progress=False)
    assert (res.processed, res.skipped, res.failed) == (1, 2, 0)
    assert sorted(r["id"] for r in run.kept()) == ["a", "b", "c"]
    assert list(run.dropped()) == []


def test_a_call_shared_with_a_cancelled_caller_is_made_by_the_one_still_waiting():
    from instructforge.engine import Context
    from instructforge.llm import LLM, Completion, SamplingParams

    class FirstHangs(LLM):
        model_id = "first-hangs"
        calls = 0

        async def chat(self, messages, params):
            self.calls += 1
            if self.calls == 1:
                await asyncio.Event().wait()  # ends only by being cancelled
            return Completion("made again", "stop", model=self.model_id)

        async def complete(self, text, params):  # pragma: no cover - chats only
            raise NotImplementedError

    async def scenario():
        ctx, llm, msg = Context(None), FirstHangs(), [{"role": "user", "content": "q"}]
        owner = asyncio.create_task(ctx.chat(llm, msg, SamplingParams(), step="s"))
        await asyncio.sleep(0)
        sharer = asyncio.create_task(ctx.chat(llm, msg, SamplingParams(), step="s"))
        await asyncio.sleep(0)
        owner.cancel()  # e.g. a speculative answer thrown away
        # Before, the sharer waited forever on the abandoned call (the guard ends the test).
        return (await asyncio.wait_for(sharer, 10)).text, llm.calls

    assert asyncio.run(scenario()) == ("made again", 2)
