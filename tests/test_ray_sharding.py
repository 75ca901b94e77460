"""Sharded runs without Ray: partitioning, shard markers, the union, usage (``inline``)."""

from __future__ import annotations

import functools
import json

import pytest

from instructforge.engine import JobAborted, RunDir
from instructforge.engine.ray_executor import (
    ShardingError,
    partition,
    run_sharded,
    shard_dir,
    shard_of,
    union,
)
from instructforge.inputs import InstructionSource
from instructforge.llm.config import ModelConfig, gpus_needed
from instructforge.methods.respond import RespondConfig, respond, respond_job


def _inputs(tmp_path, n=12):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Question {i}?"}) + "\n"
                            for i in range(n)))
    return path


def _cfg(dev_server, **kw) -> RespondConfig:
    return RespondConfig(llm=ModelConfig("dev", dev_server.url), max_tokens=8, **kw)


def _ids(run) -> list[str]:
    return [r["id"] for r in RunDir(run).kept()]


def test_a_record_always_lands_in_the_same_shard():
    assert [shard_of(f"r{i}", 5) for i in range(50)] == [shard_of(f"r{i}", 5) for i in range(50)]
    assert len({shard_of(f"r{i}", 5) for i in range(50)}) == 5


def test_partition_splits_every_input_exactly_once(tmp_path):
    run = RunDir(tmp_path / "run")
    manifest = partition(InstructionSource(_inputs(tmp_path)), run, 3)
    parts = [[json.loads(x)["id"] for x in (shard_dir(run, i).root / "input.jsonl").open()]
             for i in range(3)]
    assert manifest["counts"] == [len(p) for p in parts] and manifest["total"] == 12
    assert sorted(sum(parts, [])) == sorted(r["id"] for r in InstructionSource(_inputs(tmp_path)))


def test_a_run_directory_keeps_its_shard_count(tmp_path):
    run = RunDir(tmp_path / "run")
    partition(InstructionSource(_inputs(tmp_path)), run, 3)
    assert partition([], run, None)["shards"] == 3
    with pytest.raises(ShardingError, match="--shards 3"):
        partition([], run, 4)


def test_sharded_respond_equals_local_respond(tmp_path, dev_server):
    inp = _inputs(tmp_path)
    respond(inp, tmp_path / "local", _cfg(dev_server), progress=False)
    res = respond(inp, tmp_path / "sharded", _cfg(dev_server, executor="inline", shards=3),
                  progress=False)
    local = {r["id"]: r for r in RunDir(tmp_path / "local").kept()}
    sharded = {r["id"]: r for r in RunDir(tmp_path / "sharded").kept()}
    assert sharded == local and len(_ids(tmp_path / "sharded")) == 12
    assert (res.kept, res.processed, res.shards_run) == (12, 12, [0, 1, 2])
    assert RunDir(tmp_path / "sharded").parquet.exists()


def test_a_rerun_skips_finished_shards_and_calls_nothing(tmp_path, dev_server):
    inp = _inputs(tmp_path)
    cfg = _cfg(dev_server, executor="inline", shards=3)
    respond(inp, tmp_path / "run", cfg, progress=False)
    served = dev_server.served
    again = respond(inp, tmp_path / "run", cfg, progress=False)
    assert dev_server.served == served
    assert (again.shards_skipped, again.shards_run, again.skipped) == ([0, 1, 2], [], 12)
    assert len(set(_ids(tmp_path / "run"))) == len(_ids(tmp_path / "run")) == 12


def _fail_shard_once(marker, cfg, api_key, run):
    """A respond job whose shard 1 dies the first time it runs (then works)."""
    process, llms = respond_job(cfg, api_key, run)
    if run.root.name == "00001" and not marker.exists():
        marker.write_text("failed once")

        async def broken(record, ctx):
            raise RuntimeError("worker lost")

        return broken, llms
    return process, llms


def test_a_failed_shard_spares_the_others_and_the_rerun_resumes_only_it(tmp_path, dev_server):
    inp = _inputs(tmp_path)
    cfg = _cfg(dev_server)
    make = functools.partial(_fail_shard_once, tmp_path / "marker", cfg, None)
    src = functools.partial(InstructionSource, inp)
    with pytest.raises(JobAborted, match="shard 1: RuntimeError: worker lost"):
        run_sharded("respond", src(), tmp_path / "run", make, config={}, shards=3,
                    executor="inline", progress=False)
    assert not (shard_dir(RunDir(tmp_path / "run"), 1).root / "FINISHED").exists()
    res = run_sharded("respond", src(), tmp_path / "run", make, config={}, shards=3,
                      executor="inline", progress=False)
    assert (res.shards_run, res.shards_skipped) == ([1], [0, 2])
    ids = _ids(tmp_path / "run")
    assert len(ids) == len(set(ids)) == 12


def test_the_union_writes_each_id_once(tmp_path):
    run = RunDir(tmp_path / "run")
    for i in range(2):
        d = shard_dir(run, i)
        d.data.mkdir(parents=True)
        d.records.write_text(json.dumps({"id": "same"}) + "\n" + json.dumps({"id": f"x{i}"}) + "\n")
    assert union(run, 2) == (3, 0, 0)
    assert _ids(run.root) == ["same", "x0", "x1"]


def test_a_local_run_directory_is_not_resharded(tmp_path, dev_server):
    inp = _inputs(tmp_path, 3)
    respond(inp, tmp_path / "run", _cfg(dev_server), progress=False)
    with pytest.raises(ShardingError, match="local executor"):
        respond(inp, tmp_path / "run", _cfg(dev_server, executor="inline"), progress=False)


def test_usage_sums_the_shards(tmp_path, dev_server):
    respond(_inputs(tmp_path), tmp_path / "run", _cfg(dev_server, executor="inline", shards=3),
            progress=False)
    usage = json.loads(RunDir(tmp_path / "run").usage.read_text())
    assert usage["total"]["openai:dev@" + dev_server.url]["respond"]["requests"] == 12
    assert usage["runs"][-1]["kept"] == 12


def test_a_vllm_shard_reserves_its_tensor_parallel_gpus_and_a_server_none():
    assert gpus_needed("vllm:/models/x?tensor_parallel_size=4") == 4
    assert gpus_needed("vllm:/models/x", "vllm:/models/x", "openai:m@http://h/v1") == 1
    assert gpus_needed("vllm:/models/x", "vllm:/models/judge?tensor_parallel_size=2") == 3
    assert gpus_needed("openai:m@http://h/v1", None) == 0


def test_zero_shards_is_refused(tmp_path, dev_server):
    with pytest.raises(ShardingError, match="--shards must be >= 1"):
        respond(_inputs(tmp_path, 2), tmp_path / "run",
                _cfg(dev_server, executor="inline", shards=0), progress=False)
