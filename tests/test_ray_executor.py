"""``--executor ray`` on a local Ray cluster (2 CPUs): same records, resume, a killed worker."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys

import pytest
from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.engine import JobAborted, RunDir
from instructforge.engine.ray_executor import run_sharded, shard_dir
from instructforge.inputs import InstructionSource
from instructforge.llm.config import ModelConfig
from instructforge.methods.respond import RespondConfig, respond_job

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'instructforge[ray]'")


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster for the module (starting Ray costs seconds), always shut down."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 1024**2)
    # Functions defined here must reach the workers, which cannot import the tests folder.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield ray
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()


def _inputs(tmp_path, n=8):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Name {i + 2} colours of the sky."})
                            + "\n" for i in range(n)))
    return path


def _respond(*args: str) -> str:
    res = CliRunner().invoke(app, ["respond", *args, "--no-progress"])
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


@pytest.mark.llm
def test_respond_on_ray_keeps_the_same_records_as_local(tmp_path, ray_cluster, embedded_llm):
    inp = str(_inputs(tmp_path, 6))
    common = ["--model", embedded_llm.model, "--base-url", embedded_llm.base_url,
              "--max-tokens", "24", "--seed", "7"]
    _respond(inp, "-o", str(tmp_path / "local"), *common)
    _respond(inp, "-o", str(tmp_path / "ray"), *common, "--executor", "ray", "--shards", "2")
    local = {r["id"]: r for r in RunDir(tmp_path / "local").kept()}
    on_ray = {r["id"]: r for r in RunDir(tmp_path / "ray").kept()}
    assert len(local) == 6 and on_ray == local


def test_a_rerun_on_ray_skips_finished_shards(tmp_path, ray_cluster, dev_server):
    args = [str(_inputs(tmp_path)), "-o", str(tmp_path / "run"), "--model", "dev",
            "--base-url", dev_server.url, "--executor", "ray", "--shards", "2"]
    first = _respond(*args)
    assert "2 run, 0 already finished" in first
    served = dev_server.served
    again = _respond(*args)
    assert "0 run, 2 already finished" in again and dev_server.served == served
    assert len(list(RunDir(tmp_path / "run").kept())) == 8


def _killing(marker, run, process, nth):
    """``process``, but the worker process is killed (SIGKILL) at shard 0's ``nth`` record,
    once; the marker file remembers the kill across Ray's retry."""
    seen = []

    async def killing(record, ctx):
        seen.append(record["id"])
        if run.root.name == "00000" and len(seen) == nth and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return await process(record, ctx)

    return killing


def _kill_worker_once(marker, cfg, run):
    """A respond job whose worker is SIGKILLed at shard 0's third record, once."""
    process, llms = respond_job(cfg, None, run)
    return _killing(marker, run, process, 3), llms


def test_a_worker_killed_mid_shard_is_retried_and_resumes(tmp_path, ray_cluster, dev_server):
    cfg = RespondConfig(llm=ModelConfig("dev", dev_server.url), max_tokens=8)
    make = functools.partial(_kill_worker_once, tmp_path / "killed", cfg)
    res = run_sharded("respond", InstructionSource(_inputs(tmp_path, 12)), tmp_path / "run",
                      make, config={}, shards=2, concurrency=1, progress=False)
    assert (tmp_path / "killed").exists()
    ids = [r["id"] for r in RunDir(tmp_path / "run").kept()]
    assert len(ids) == len(set(ids)) == 12 and res.shards_failed == {}
    # The two records shard 0 finished before the kill were not asked again.
    assert dev_server.served == 12


def _raise_once(marker, cfg, run):
    process, llms = respond_job(cfg, None, run)
    if run.root.name == "00001" and not marker.exists():
        marker.write_text("raised")
        raise RuntimeError("no GPU on this worker")
    return process, llms


def test_a_shard_that_raises_fails_alone_and_the_rerun_resumes_it(tmp_path, ray_cluster,
                                                                   dev_server):
    cfg = RespondConfig(llm=ModelConfig("dev", dev_server.url), max_tokens=8)
    make = functools.partial(_raise_once, tmp_path / "raised", cfg)

    def run():
        return run_sharded("respond", InstructionSource(_inputs(tmp_path)), tmp_path / "run",
                           make, config={}, shards=2, progress=False)

    with pytest.raises(JobAborted, match="shard 1: RuntimeError: no GPU on this worker"):
        run()
    assert (shard_dir(RunDir(tmp_path / "run"), 0).root / "FINISHED").exists()
    res = run()
    assert (res.shards_run, res.shards_skipped) == ([1], [0])
    ids = [r["id"] for r in RunDir(tmp_path / "run").kept()]
    assert len(ids) == len(set(ids)) == 8


def _evolve(*args: str) -> None:
    res = CliRunner().invoke(app, ["evolve", *args, "--no-progress"])
    assert res.exit_code == 0, res.output


@pytest.mark.llm
def test_evolve_on_ray_keeps_the_same_records_as_local(tmp_path, ray_cluster, embedded_llm):
    inp = str(_inputs(tmp_path, 4))
    spec = f"openai:{embedded_llm.model}@{embedded_llm.base_url}"
    common = ["--rounds", "1", "--ops", "add_constraints,in_breadth", "--evol-model", spec,
              "--response-model", spec, "--judge-model", spec, "--evol-max-tokens", "48",
              "--max-tokens", "24", "--seed", "3",
              # Same seed, same cache: sampled text on a batching server is not bit-stable
              # across runs, so the Ray run replays the local run's calls from the shared cache.
              "--shared-cache", str(tmp_path / "shared.sqlite")]
    _evolve(inp, "-o", str(tmp_path / "local"), *common)
    _evolve(inp, "-o", str(tmp_path / "ray"), *common, "--executor", "ray", "--shards", "2")
    for files in ("kept", "dropped"):
        local = {r["id"]: r for r in getattr(RunDir(tmp_path / "local"), files)()}
        on_ray = {r["id"]: r for r in getattr(RunDir(tmp_path / "ray"), files)()}
        assert on_ray == local
    assert (tmp_path / "ray" / "summary.json").exists()


def _kill_evolve_worker_once(marker, cfg, run):
    """An evolve job whose worker is SIGKILLed at shard 0's second chain, once."""
    from instructforge.methods.evol_instruct import evol_job

    chain, llms = evol_job(cfg, None, run)
    return _killing(marker, run, chain, 2), llms


def test_evolve_survives_a_killed_worker(tmp_path, ray_cluster, dev_server):
    from instructforge.methods.evol_instruct import EvolConfig

    model = ModelConfig("dev", dev_server.url)
    cfg = EvolConfig(evol_llm=model, response_llm=model, judge_llm=model, rounds=2)
    make = functools.partial(_kill_evolve_worker_once, tmp_path / "killed", cfg)
    res = run_sharded("evol_instruct", InstructionSource(_inputs(tmp_path, 8)),
                      tmp_path / "run", make, config={}, shards=2, concurrency=1,
                      progress=False)
    assert (tmp_path / "killed").exists() and res.shards_failed == {}
    run = RunDir(tmp_path / "run")
    ids = [r["id"] for r in [*run.kept(), *run.dropped()]]
    assert len(ids) == len(set(ids)) == 16  # 8 chains x 2 rounds, each child once


def _magpie(*args: str) -> str:
    res = CliRunner().invoke(app, ["magpie", *args, "--no-progress", "--show", "0"])
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


@pytest.mark.llm
def test_magpie_on_ray_keeps_the_same_records_as_local(tmp_path, ray_cluster, embedded_llm):
    common = ["-n", "6", "--model", embedded_llm.model, "--base-url", embedded_llm.base_url,
              "--template", "smollm2", "--query-max-tokens", "64", "--max-tokens", "32",
              "--seed", "5", "--shared-cache", str(tmp_path / "shared.sqlite")]
    _magpie("-o", str(tmp_path / "local"), *common)
    out = _magpie("-o", str(tmp_path / "ray"), *common, "--executor", "ray", "--shards", "2")
    assert "2 shards: 2 run" in out
    for files in ("kept", "dropped"):
        local = {r["id"]: r for r in getattr(RunDir(tmp_path / "local"), files)()}
        on_ray = {r["id"]: r for r in getattr(RunDir(tmp_path / "ray"), files)()}
        assert on_ray == local
    run = RunDir(tmp_path / "ray")
    assert len([*run.kept(), *run.dropped()]) == 6


def test_magpie_on_ray_drops_a_query_another_shard_kept(tmp_path, ray_cluster, dev_server):
    # The dev server writes the same query every time: each shard keeps its first one, and
    # the union keeps one of those two.
    args = ["-n", "8", "-o", str(tmp_path / "run"), "--model", "dev", "--base-url",
            dev_server.url, "--template", "chatml", "--executor", "ray", "--shards", "2"]
    first = _magpie(*args)
    assert "2 shards: 2 run, 0 already finished, 0 failed, 1 dropped across shards" in first
    run = RunDir(tmp_path / "run")
    kept, dropped = list(run.kept()), list(run.dropped())
    assert len(kept) == 1 and len(dropped) == 7
    across = [r for r in dropped if "kept by another shard" in r["rejection"]["reason"]]
    assert len(across) == 1 and across[0]["rejection"]["rule"] == "exact_duplicate"
    assert across[0]["rejection"]["evidence"] == {"duplicate_of": kept[0]["id"]}
    served = dev_server.served
    again = _magpie(*args)
    assert "0 run, 2 already finished" in again and dev_server.served == served
    assert [r["id"] for r in run.kept()] == [kept[0]["id"]]


def _kill_magpie_worker_once(marker, cfg, run):
    """A Magpie job whose worker is SIGKILLed at shard 0's third conversation, once."""
    from instructforge.methods.magpie import magpie_job

    job, llms = magpie_job(cfg, None, run)
    return _killing(marker, run, job.process, 3), llms


def test_magpie_survives_a_killed_worker(tmp_path, ray_cluster, dev_server):
    from instructforge.methods.filters import FilterConfig
    from instructforge.methods.magpie import MagpieConfig
    from instructforge.records import new_record

    cfg = MagpieConfig(llm=ModelConfig("dev", dev_server.url), template="chatml",
                       filters=FilterConfig(exact_dedup=False, near_dedup=False))
    make = functools.partial(_kill_magpie_worker_once, tmp_path / "killed", cfg)
    slots = (new_record(f"magpie-{i}", method="magpie") for i in range(10))
    res = run_sharded("magpie", slots, tmp_path / "run", make, config={}, shards=2,
                      concurrency=1, progress=False)
    assert (tmp_path / "killed").exists() and res.shards_failed == {}
    ids = [r["id"] for r in RunDir(tmp_path / "run").kept()]
    assert len(ids) == len(set(ids)) == 10
    # Per shard: one 1-token template probe (the retried shard finds it in its cache), then
    # a query and an answer per conversation; the two finished before the kill were not
    # asked again.
    assert dev_server.served == 2 + 10 * 2
