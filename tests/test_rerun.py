"""Runs reproduce from their directory: configs round-trip through config.yaml, a rerun with
changed options is refused naming them, and the two extensions a method can honour work:
``evolve --rounds N`` continues every chain, ``magpie -n`` adds conversations."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
from test_evol_loop import ScriptedLLM, write_seeds

from instructforge.engine import OptionsChanged, RunDir
from instructforge.methods.eliminate import EliminationConfig
from instructforge.methods.evol_instruct import EvolConfig, Models, evolve

SEEDS = ["Seed one.", "Seed two.", "Seed three."]


def _evolve(tmp_path: Path, llm: ScriptedLLM, rounds: int, run: str = "run") -> RunDir:
    seeds = write_seeds(tmp_path / "seeds.jsonl", SEEDS)
    cfg = EvolConfig(rounds=rounds, elimination=EliminationConfig.preset("paper"))
    evolve(seeds, tmp_path / run, cfg, models=Models(llm, llm, llm), progress=False)
    return RunDir(tmp_path / run)


def _all(run: RunDir) -> list[dict]:
    return [*run.kept(), *run.dropped()]


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "metadata"}


def test_more_rounds_on_a_finished_run_continue_every_chain_from_where_it_stopped(tmp_path):
    # Seed two's round-2 child is judged equal to its parent: eliminated, so its chain's
    # last kept child is round 1's.
    judge = {"Seed two. +1 +2": "Equal"}
    run = _evolve(tmp_path, ScriptedLLM(judge_reply=judge), rounds=2)
    before = {r["id"] for r in _all(run)}

    more = ScriptedLLM(judge_reply=judge)
    _evolve(tmp_path, more, rounds=3)

    records = _all(run)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "a record was written twice"
    new = {r["id"]: r for r in records if r["id"] not in before}
    assert sorted(new) == ["s1-r3", "s2-r3", "s3-r3"]
    # Each new round's parent is its chain's last kept child.
    assert {i: r["lineage"]["parent_id"] for i, r in new.items()} == {
        "s1-r3": "s1-r2", "s2-r3": "s2-r1", "s3-r3": "s3-r2"}
    assert new["s2-r3"]["lineage"]["history"] == ["Seed two.", "Seed two. +1", "Seed two. +1 +2"]
    # Only the new round reached the model: one evolution per chain, nothing of rounds 1-2.
    assert more.count("evolve") == 3
    assert all("+1 +2 +3" not in p and ("+2" in p or "Seed two. +1" in p)
               for role, p in more.calls if role == "evolve")
    assert json.loads((run.root / "summary.json").read_text())["per_round"][-1]["round"] == 3
    assert run.read_config()["rounds"] == 3
    # The same records as a run made with three rounds from the start.
    fresh = _evolve(tmp_path, ScriptedLLM(judge_reply=judge), rounds=3, run="fresh")
    assert sorted(map(_strip, _all(fresh)), key=lambda r: r["id"]) == \
        sorted(map(_strip, records), key=lambda r: r["id"])


def test_a_rerun_with_the_same_rounds_calls_nothing(tmp_path):
    _evolve(tmp_path, ScriptedLLM(), rounds=2)
    again = ScriptedLLM()
    _evolve(tmp_path, again, rounds=2)
    assert again.calls == []


def test_fewer_rounds_or_other_options_are_refused_naming_them(tmp_path):
    _evolve(tmp_path, ScriptedLLM(), rounds=2)
    with pytest.raises(OptionsChanged, match=r"rounds: 2 -> 1"):
        _evolve(tmp_path, ScriptedLLM(), rounds=1)
    seeds = tmp_path / "seeds.jsonl"
    llm = ScriptedLLM()
    cfg = EvolConfig(rounds=3, seed=7, elimination=EliminationConfig.preset("paper"))
    with pytest.raises(OptionsChanged) as e:
        evolve(seeds, tmp_path / "run", cfg, models=Models(llm, llm, llm), progress=False)
    assert "seed: 0 -> 7" in str(e.value) and "rounds:" not in str(e.value)
    assert llm.calls == []


def test_an_extension_cut_by_a_failure_is_continued_by_the_next_rerun(tmp_path):
    run = _evolve(tmp_path, ScriptedLLM(), rounds=1)

    class Failing(ScriptedLLM):
        async def chat(self, messages, params):
            if "Seed two. +1\n" in messages[-1]["content"]:
                from instructforge.llm import LLMError
                raise LLMError("server went away")
            return await super().chat(messages, params)

    _evolve(tmp_path, Failing(), rounds=2)
    assert "s2-r2" not in {r["id"] for r in run.kept()}
    retry = ScriptedLLM()
    _evolve(tmp_path, retry, rounds=2)
    assert retry.count("evolve") == 1
    counts = Counter(r["id"] for r in _all(run))
    assert counts["s2-r2"] == 1 and max(counts.values()) == 1
    assert not any(r.get("rejection", {}).get("rule") == "call_failed" for r in run.dropped())


# --- configs round-trip ---------------------------------------------------------------------

def _roundtrip(tmp_path: Path, job: str, saved: dict) -> object:
    from instructforge.methods.rerun import load_run_config

    run = RunDir(tmp_path / job)
    run.write_config({"job": job, **saved})
    got_job, _, cfg = load_run_config(run.root)
    assert got_job == job
    return cfg


def test_every_method_config_loads_from_the_config_yaml_it_writes(tmp_path):
    from instructforge.llm.config import ModelConfig
    from instructforge.methods.auto_evol import AutoEvolConfig, FailureConfig, evol_config
    from instructforge.methods.filters import FilterConfig
    from instructforge.methods.magpie import MagpieConfig
    from instructforge.methods.respond import RespondConfig

    respond_cfg = RespondConfig(llm=ModelConfig("openai:m@http://h/v1", timeout=9.0),
                                temperature=0.2, system_prompt="Be brief.", limit=5)
    assert _roundtrip(tmp_path, "respond", {"input": "x.jsonl", **dataclasses.asdict(
        respond_cfg)}) == respond_cfg

    evol_cfg = EvolConfig(rounds=3, operations=["deepening"], weights={"deepening": 2.0},
                          elimination=EliminationConfig.preset("paper", ["hard_to_respond"]),
                          judge_llm=ModelConfig("openai:j@http://h/v1"), seed=4)
    assert _roundtrip(tmp_path, "evol_instruct", {"input": "x", **evol_cfg.to_dict()}) \
        == evol_cfg

    magpie_cfg = MagpieConfig(n=7, turns=2, categories={"math": 2.0},
                              response_llm=ModelConfig("openai:r@http://h/v1"),
                              filters=FilterConfig())
    assert _roundtrip(tmp_path, "magpie", {**magpie_cfg.describe(),
                                           "chat_template": {"name": "chatml"}}) == magpie_cfg

    auto_cfg = AutoEvolConfig(evol=evol_config(rounds=2, seed=3), steps=2, candidates=2,
                              failures=FailureConfig(stagnant_complexity=False))
    assert _roundtrip(tmp_path, "auto_evol", {"input": "x", **auto_cfg.to_dict(),
                                              "final_pass": {"method": "auto_evol"}}) == auto_cfg


def test_a_run_config_with_an_unknown_option_is_refused_naming_file_and_key(tmp_path):
    from instructforge.config import ConfigError

    with pytest.raises(ConfigError, match=r"config.yaml: unknown option\(s\) temprature"):
        _roundtrip(tmp_path, "respond", {"input": "x", "temprature": 0.1})


def test_rerun_reproduces_an_evolve_run_and_adds_rounds(tmp_path, dev_server):
    from instructforge.llm.config import ModelConfig
    from instructforge.methods.rerun import rerun

    seeds = write_seeds(tmp_path / "seeds.jsonl", SEEDS)
    model = ModelConfig("dev", base_url=dev_server.url)
    cfg = EvolConfig(rounds=1, evol_llm=model, response_llm=model, judge_llm=model,
                     elimination=EliminationConfig.preset("paper"))
    evolve(seeds, tmp_path / "run", cfg, progress=False)
    served = dev_server.served
    rerun(tmp_path / "run", progress=False)
    assert dev_server.served == served  # finished: nothing to call
    # Into a new directory: the same records, made again.
    rerun(tmp_path / "run" / "config.yaml", tmp_path / "copy", progress=False)
    assert sorted(map(_strip, _all(RunDir(tmp_path / "copy"))), key=lambda r: r["id"]) == \
        sorted(map(_strip, _all(RunDir(tmp_path / "run"))), key=lambda r: r["id"])
    # One more round: only its calls. The dev server's fixed answer repeats the round-1
    # child, which is eliminated at once: one evolution per chain, nothing of round 1.
    served = dev_server.served
    rerun(tmp_path / "run", rounds=2, progress=False)
    assert dev_server.served - served == 3
    assert {r["id"] for r in _all(RunDir(tmp_path / "run"))} >= {"s1-r2", "s2-r2", "s3-r2"}
    assert RunDir(tmp_path / "run").read_config()["rounds"] == 2


# --- magpie -n ------------------------------------------------------------------------------

def test_a_larger_magpie_n_adds_conversations_and_calls_only_for_them(tmp_path):
    from test_magpie import ScriptedLLM as MagpieLLM
    from test_magpie import _query_calls

    from instructforge.methods.filters import FilterConfig
    from instructforge.methods.magpie import MagpieConfig, magpie

    def go(n: int) -> MagpieLLM:
        llm = MagpieLLM()
        magpie(tmp_path / "run", MagpieConfig(n=n, filters=FilterConfig(languages=None)),
               llm=llm, progress=False)
        return llm

    go(3)
    more = go(5)
    run = RunDir(tmp_path / "run")
    ids = [r["id"] for r in _all(run)]
    assert sorted(ids) == [f"magpie-{i}" for i in range(5)]
    assert len(_query_calls(more)) == 2  # magpie-3 and magpie-4 only


# --- the command ----------------------------------------------------------------------------

def test_the_rerun_command_grows_an_evolve_run_and_a_recipe_flag_refuses_a_run_config(
        tmp_path, dev_server):
    from typer.testing import CliRunner

    from instructforge.cli import app
    from instructforge.llm.config import ModelConfig

    seeds = write_seeds(tmp_path / "seeds.jsonl", SEEDS)
    model = ModelConfig("dev", base_url=dev_server.url)
    evolve(seeds, tmp_path / "run", EvolConfig(rounds=1, evol_llm=model, response_llm=model,
                                              judge_llm=model), progress=False)
    runner = CliRunner()
    res = runner.invoke(app, ["rerun", str(tmp_path / "run"), "--rounds", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert {"s1-r2", "s2-r2", "s3-r2"} <= {r["id"] for r in _all(RunDir(tmp_path / "run"))}
    res = runner.invoke(app, ["rerun", str(tmp_path / "run"), "-n", "5"])
    assert res.exit_code == 2 and "-n applies to magpie runs" in res.output
    res = runner.invoke(app, ["evolve", str(seeds), "-o", str(tmp_path / "x"), "--config",
                              str(tmp_path / "run" / "config.yaml")])
    assert res.exit_code == 2 and "instructforge rerun --config" in res.output


# --- one plan, one default ------------------------------------------------------------------

def test_the_dry_run_plan_is_the_librarys_estimate(tmp_path):
    from typer.testing import CliRunner

    from instructforge.cli import app
    from instructforge.methods import auto_evol, evol_instruct

    seeds = write_seeds(tmp_path / "seeds.jsonl", SEEDS)
    plan = evol_instruct.estimate(seeds, EvolConfig(rounds=2))
    assert (plan["seeds"], plan["llm_calls_at_most"]) == (3, 3 * 2 * 5)
    res = CliRunner().invoke(app, ["evolve", str(seeds), "-o", str(tmp_path / "r"), "--rounds",
                                   "2", "--dry-run"], terminal_width=200)
    assert res.exit_code == 0 and f"{plan['llm_calls_at_most']}" in res.output
    assert auto_evol.estimate(seeds)["instructions"] == 3


def test_auto_evol_plays_every_role_with_the_evol_model_unless_told_otherwise():
    from instructforge.llm.config import ModelConfig
    from instructforge.methods.auto_evol import evol_config

    model = ModelConfig("openai:big@http://h/v1")
    cfg = evol_config(evol_llm=model)
    assert cfg.response_llm == model and cfg.judge_llm == model
    judge = ModelConfig("openai:judge@http://h/v1")
    assert evol_config(evol_llm=model, judge_llm=judge).judge_llm == judge
