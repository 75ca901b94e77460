"""The run directory's guarantees: one writer (lock), ids that never clash, reruns that
refuse other options, Parquet never staler than the JSONL it mirrors, ids that can be
marked done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from instructforge.engine import (
    IdCollision,
    OptionsChanged,
    RunDir,
    RunDirError,
    RunLocked,
    iter_jsonl,
    run_job,
)
from instructforge.inputs import InputError, InstructionSource
from instructforge.llm.config import ModelConfig
from instructforge.methods.evol_instruct import EvolConfig, evolve
from instructforge.methods.respond import RespondConfig, respond
from instructforge.records import new_record


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def seeds(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "seeds.jsonl",
                       [{"instruction": f"Question number {i}?"} for i in range(n)])


def cfg(url: str, **kw) -> RespondConfig:
    return RespondConfig(llm=ModelConfig(model="dev", base_url=url), **kw)


async def echo(rec, ctx):
    return [rec]


# --- 7: one process at a time ----------------------------------------------------------


def respond_cli(inp: Path, out: Path, url: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "instructforge.cli.__main__", "respond", str(inp), "-o",
           str(out), "--base-url", url, "-m", "dev", "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "300"})


def test_a_second_process_on_a_held_run_fails_at_once_naming_the_holders_pid(
        tmp_path, dev_server):
    run = RunDir(tmp_path / "run")
    with run.lock():
        proc = respond_cli(seeds(tmp_path, 3), run.root, dev_server.url)
    assert proc.returncode == 2, proc.stderr
    assert f"pid {os.getpid()}" in proc.stderr and "in use by another process" in proc.stderr
    assert dev_server.served == 0 and not run.records.exists()


def test_the_lock_is_released_when_the_job_ends_and_when_its_process_dies(tmp_path, dev_server):
    run = RunDir(tmp_path / "run")
    respond(seeds(tmp_path, 2), run.root, cfg(dev_server.url), progress=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from instructforge.engine import RunDir\n"
         f"with RunDir({str(run.root)!r}).lock():\n print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"), run.lock():
            pass
    finally:
        holder.kill()
        holder.wait()
    with run.lock():  # the dead holder's lock went with it
        pass


# --- 8: generated ids never collide with input ids ----------------------------------------


def test_an_input_id_shaped_like_an_invalid_rows_id_is_refused_naming_its_line(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "invalid-line-3", "instruction": "Valid?"}) + "\n"
                   + json.dumps({"id": "b", "instruction": "Also valid."}) + "\n"
                   + "{not json\n")
    with pytest.raises(InputError, match=r"in.jsonl:1: id 'invalid-line-3' is reserved"):
        InstructionSource(inp).validate()


def test_with_skip_invalid_both_rows_are_rejected_and_none_vanishes(tmp_path, dev_server):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "invalid-line-3", "instruction": "Valid?"}) + "\n"
                   + json.dumps({"id": "b", "instruction": "Also valid."}) + "\n"
                   + "{not json\n")
    res = respond(inp, tmp_path / "run", cfg(dev_server.url, skip_invalid=True), progress=False)
    run = RunDir(tmp_path / "run")
    assert [r["id"] for r in run.kept()] == ["b"]
    dropped = {r["id"]: r["rejection"]["reason"] for r in run.dropped()}
    assert set(dropped) == {"invalid-line-1", "invalid-line-3"}
    assert "reserved" in dropped["invalid-line-1"]
    assert (res.invalid, dev_server.served) == (2, 1)  # nothing paid for that vanished


def test_keep_seeds_refuses_a_seed_named_like_another_seeds_child(tmp_path):
    inp = write_jsonl(tmp_path / "seeds.jsonl", [{"id": "a", "instruction": "Say hi."},
                                                 {"id": "a-r1", "instruction": "Say bye."}])
    with pytest.raises(InputError, match=r"seeds.jsonl:2: seed id 'a-r1' is also the id of "
                                         r"round 1 of seed 'a' \(.*seeds.jsonl:1\)"):
        evolve(inp, tmp_path / "run", EvolConfig(rounds=2, keep_seeds=True), progress=False)
    assert not (tmp_path / "run").exists()  # refused before any backend or file


def test_two_inputs_writing_one_record_id_stop_the_job_instead_of_losing_one(tmp_path):
    async def same_id(rec, ctx):
        return [{**rec, "id": "child"}]

    inputs = [new_record(i, "x", method="input") for i in ("a", "b")]
    with pytest.raises(IdCollision, match="'child' was written for input 'a' and again for "
                                          "input 'b'"):
        run_job("t", inputs, same_id, tmp_path / "run", config={}, progress=False,
                concurrency=1)
    assert [r["id"] for r in RunDir(tmp_path / "run").kept()] == ["child"]


# --- 11: Parquet is never older than records.jsonl ------------------------------------------


def test_a_reopened_run_drops_its_parquet_until_it_finishes_again(tmp_path):
    async def crash_on_c(rec, ctx):
        if rec["id"] == "c":
            raise RuntimeError("killed")
        return [rec]

    run = RunDir(tmp_path / "run")
    run_job("t", [new_record("a", "x", method="input")], echo, run, config={}, progress=False)
    assert pq.read_table(run.parquet).num_rows == 1
    inputs = [new_record(i, "x", method="input") for i in ("a", "b", "c")]
    with pytest.raises(RuntimeError, match="killed"):
        run_job("t", inputs, crash_on_c, run, config={}, progress=False, concurrency=1)
    assert len(list(run.kept())) == 2
    assert not run.parquet.exists()
    run_job("t", inputs[:2], echo, run, config={}, progress=False)
    assert pq.read_table(run.parquet).num_rows == 2


# --- 12: reruns with other options refuse -----------------------------------------------------


def test_a_rerun_with_other_sampling_options_refuses_naming_them(tmp_path, dev_server):
    inp = seeds(tmp_path, 3)
    respond(inp, tmp_path / "run", cfg(dev_server.url), progress=False)
    before = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(OptionsChanged) as e:
        respond(seeds(tmp_path, 5), tmp_path / "run",
                cfg(dev_server.url, temperature=0.1, max_tokens=16), progress=False)
    assert "temperature: 0.7 -> 0.1" in str(e.value)
    assert "max_tokens: 512 -> 16" in str(e.value)
    assert "limit" not in str(e.value)
    assert (tmp_path / "run" / "config.yaml").read_text() == before
    assert dev_server.served == 3 and len(list(RunDir(tmp_path / "run").kept())) == 3


def test_a_rerun_may_extend_the_limit_and_change_concurrency(tmp_path, dev_server):
    inp = seeds(tmp_path, 6)
    respond(inp, tmp_path / "run", cfg(dev_server.url, limit=2), progress=False)
    res = respond(inp, tmp_path / "run", cfg(dev_server.url, limit=5, concurrency=3),
                  progress=False)
    assert (res.skipped, res.kept) == (2, 3)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["limit"], saved["concurrency"]) == (5, 3)


def test_options_may_change_while_the_run_has_no_output_yet(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_config({"job": "t", "model": "tpyo"})  # e.g. preflight refused a wrong name
    run_job("t", [new_record("a", "x", method="input")], echo, run, config={"model": "m"},
            progress=False)
    assert run.read_config()["model"] == "m"


def test_another_job_on_the_same_run_directory_is_refused(tmp_path):
    run_job("respond", [new_record("a", "x", method="input")], echo, tmp_path / "run",
            config={}, progress=False)
    with pytest.raises(OptionsChanged, match="job: 'respond' -> 'magpie'"):
        run_job("magpie", [new_record("b", "x", method="input")], echo, tmp_path / "run",
                config={}, progress=False)


# --- 13: ids with line breaks ------------------------------------------------------------------


@pytest.mark.parametrize("rid", ["a\nb", "a\rb"])
def test_an_input_id_with_a_line_break_is_refused_naming_its_line(tmp_path, rid):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "ok", "instruction": "x"},
                                              {"id": rid, "instruction": "y"}])
    with pytest.raises(InputError, match=r"in.jsonl:2: id .* contains a line break"):
        InstructionSource(inp).validate()


def test_the_engine_refuses_an_id_it_could_not_mark_done(tmp_path):
    called = []

    async def process(rec, ctx):
        called.append(rec["id"])
        return [rec]

    with pytest.raises(RunDirError, match="contains a line break"):
        run_job("t", [new_record("a\nb", "x", method="input")], process, tmp_path / "run",
                config={}, progress=False)
    assert called == []
    assert list(iter_jsonl(RunDir(tmp_path / "run").records)) == []
