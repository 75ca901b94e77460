"""Paying for an API: dollar costs in usage.json, the --max-cost budget cap (stops within one
call's cost of the cap, resumes with a higher cap repeating nothing), prices files, and rate
limits (--rpm token buckets, concurrency that halves on 429)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.devserver import DevServer
from instructforge.engine.budget import Budget, BudgetExceeded
from instructforge.llm.config import ModelConfig
from instructforge.llm.openai import OpenAICompatible
from instructforge.llm.prices import PRICES_ENV, Price, PriceError, load_prices
from instructforge.llm.ratelimit import AdaptiveLimit

pytestmark = pytest.mark.timeout(120)
runner = CliRunner()
MSG = [{"role": "user", "content": "hi"}]


def write_inputs(tmp_path: Path, n: int) -> Path:
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Name fact number {i}."})
                         + "\n" for i in range(n)))
    return p


def respond(inp: Path, out: Path, srv: DevServer, *extra: str):
    return runner.invoke(app, ["respond", str(inp), "-o", str(out), "--base-url", srv.url,
                               "--model", "dev", "--max-tokens", "10", "--no-progress",
                               "--concurrency", "8", *extra])


def usage(out: Path) -> dict:
    return json.loads((out / "usage.json").read_text())


def test_usage_records_dollars_per_model_and_step(tmp_path):
    with DevServer() as srv:  # 10 prompt + 10 completion tokens a call
        r = respond(write_inputs(tmp_path, 3), tmp_path / "run", srv, "--price", "1000,2000")
    assert r.exit_code == 0, r.output
    u = usage(tmp_path / "run")
    step = next(iter(u["total"].values()))["respond"]
    assert step["cost_usd"] == pytest.approx(3 * (10 * 1000 + 10 * 2000) / 1e6)
    assert u["runs"][-1]["cost_usd"] == pytest.approx(0.09)


def test_budget_stops_within_one_calls_cost_of_the_cap_and_resumes(tmp_path):
    inp, out = write_inputs(tmp_path, 10), tmp_path / "run"
    # Each call costs $0.02 (20 tokens at $1000/M) and may cost up to $0.022 (its prompt,
    # roughly, plus --max-tokens 10).
    with DevServer() as srv:
        r = respond(inp, out, srv, "--price", "1000,1000", "--max-cost", "0.1")
        assert r.exit_code == 4, r.output
        assert "budget reached" in r.output and "--max-cost" in r.output
        spent = usage(out)["runs"][-1]["cost_usd"]
        assert 0.1 - 0.022 < spent <= 0.1
        kept = (out / "data" / "records.jsonl").read_text().splitlines()
        assert len(kept) == srv.served == round(spent / 0.02)
        assert not (out / "rejected.jsonl").exists() or not (out / "rejected.jsonl").read_text()

        r = respond(inp, out, srv, "--price", "1000,1000", "--max-cost", "1")
        assert r.exit_code == 0, r.output
        assert srv.served == 10  # no call was made twice
        assert len((out / "data" / "records.jsonl").read_text().splitlines()) == 10
        assert sum(run["cost_usd"] for run in usage(out)["runs"]) == pytest.approx(0.2)


def test_a_rerun_under_the_cap_already_spent_calls_nothing(tmp_path):
    inp, out = write_inputs(tmp_path, 6), tmp_path / "run"
    with DevServer() as srv:
        assert respond(inp, out, srv, "--price", "1000,1000", "--max-cost", "0.05"
                       ).exit_code == 4
        served = srv.served
        r = respond(inp, out, srv, "--price", "1000,1000", "--max-cost", "0.05")
        assert r.exit_code == 4 and srv.served == served


def test_max_cost_without_a_price_is_refused_before_any_call(tmp_path):
    with DevServer() as srv:
        r = respond(write_inputs(tmp_path, 2), tmp_path / "run", srv, "--max-cost", "1")
        assert r.exit_code == 2
        assert "--max-cost needs the price of openai:dev@" in r.output
        assert srv.requests == 0


def test_bad_price_option_is_named(tmp_path):
    with DevServer() as srv:
        r = respond(write_inputs(tmp_path, 1), tmp_path / "run", srv, "--price", "cheap")
    assert r.exit_code == 2 and "--price" in r.output and "two numbers" in r.output


def test_dry_run_prints_the_cost_range(tmp_path):
    r = runner.invoke(app, ["respond", str(write_inputs(tmp_path, 4)), "-o", str(tmp_path / "r"),
                            "--model", "openai:gpt-4o-mini@http://127.0.0.1:1/v1", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "cost usd" in r.output and "$0.0000 to $0.0012" in r.output


def test_a_users_prices_file_extends_the_shipped_one(tmp_path, monkeypatch):
    f = tmp_path / "prices.yaml"
    f.write_text("my-model: {input: 1, output: 3}\n")
    monkeypatch.setenv(PRICES_ENV, str(f))
    assert load_prices()["my-model"] == Price(1.0, 3.0)
    assert ModelConfig("openai:my-model-2025@http://h/v1").resolve_price() == Price(1.0, 3.0)
    assert ModelConfig("openai:gpt-4o@http://h/v1").resolve_price().input == 2.5
    f.write_text("my-model: {input: 1}\n")
    with pytest.raises(PriceError, match=r"prices.yaml: model 'my-model': expected"):
        load_prices()


def test_budget_waits_for_calls_in_flight_before_giving_up():
    async def go() -> list[str]:
        b = Budget(1.0)
        await b.admit(0.6)  # in flight, may cost up to 0.6
        events = []

        async def second() -> None:
            await b.admit(0.6)  # does not fit beside the first, fits once it cost 0.1
            events.append("admitted")

        t = asyncio.create_task(second())
        await asyncio.sleep(0)
        events.append("waiting")
        b.settle(0.6, 0.1)
        await t
        b.settle(0.6, 0.5)
        with pytest.raises(BudgetExceeded):
            await b.admit(0.6)  # 0.6 spent, nothing in flight: stop
        with pytest.raises(BudgetExceeded):
            await b.admit(0.0)  # and stay stopped
        return events

    assert asyncio.run(go()) == ["waiting", "admitted"]


def test_concurrency_halves_on_overload_once_and_grows_back():
    lim = AdaptiveLimit(8)
    lim.overloaded(lim.epoch)
    lim.overloaded(0)  # a request sent before the halving: already accounted for
    assert lim.limit == 4
    for _ in range(4):
        lim.succeeded()
    assert lim.limit == 5
    lim.overloaded(lim.epoch)
    lim.overloaded(lim.epoch)
    assert lim.limit == 1  # 5 -> 2 -> 1, never 0


async def _many(llm: OpenAICompatible, n: int) -> list:
    try:
        return await asyncio.gather(*(llm.chat(MSG, llm_params()) for _ in range(n)),
                                    return_exceptions=True)
    finally:
        await llm.aclose()


def llm_params():
    from instructforge.llm import SamplingParams

    return SamplingParams(max_tokens=8)


def test_rpm_keeps_under_a_servers_rate_limit():
    # 600 requests a minute, metered over 2 s windows instead of a minute to keep the test
    # short: bursts above 20 are refused; the client bursts one second's worth (10).
    with DevServer(rate_limit=20, rate_window=2.0) as srv:
        llm = OpenAICompatible(srv.url, "dev", max_concurrency=16, rpm=600)
        out = asyncio.run(_many(llm, 50))
    assert all(not isinstance(o, BaseException) for o in out)
    assert srv.throttled < 0.01 * srv.requests


def test_without_rpm_the_same_server_answers_429():
    with DevServer(rate_limit=20, rate_window=2.0) as srv:
        llm = OpenAICompatible(srv.url, "dev", max_concurrency=16, max_retries=0)
        asyncio.run(_many(llm, 50))
    assert srv.throttled > 0.01 * srv.requests
    assert llm._sem.halvings >= 1  # the backend saw the overload and took fewer slots


def test_rate_limit_options_reach_the_backend():
    llm = ModelConfig("openai:m@http://h/v1", rpm=600, tpm=60000).build()
    assert llm._rpm.rate == 10 and llm._tpm.rate == 1000
