"""Resume after ``kill -9`` in round 2: the rerun finishes the run, writes nothing twice and
makes no LLM call that had finished before the kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from test_evol_loop import ScriptedLLM, write_seeds

from instructforge.engine import RunDir
from instructforge.methods.eliminate import EliminationConfig
from instructforge.methods.evol_instruct import EvolConfig, Models, evolve

# The child process: a scripted LLM that logs every call it finishes and hangs on seed s1's
# round-2 evolution (its parent is s1's round-1 child), after touching a marker file.
CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    sys.path.insert(0, {tests!r})
    from test_evol_loop import ScriptedLLM
    from instructforge.methods.eliminate import EliminationConfig
    from instructforge.methods.evol_instruct import EvolConfig, Models, evolve

    class Hanging(ScriptedLLM):
        async def chat(self, messages, params):
            prompt = messages[-1]["content"]
            if self.role(prompt) == "evolve" and "Seed one. +1\\n" in prompt:
                open({marker!r}, "w").close()
                await asyncio.sleep(600)
            await asyncio.sleep(0.02)  # let the chains interleave
            out = await super().chat(messages, params)
            with open({log!r}, "a") as f:
                f.write(json.dumps([self.role(prompt), prompt]) + "\\n")
            return out

    llm = Hanging()
    evolve({seeds!r}, {run!r}, EvolConfig(rounds=3, elimination=EliminationConfig.preset("paper")), models=Models(llm, llm, llm),
           progress=False)
    """
)

SEEDS = ["Seed one.", "Seed two.", "Seed three.", "Seed four."]


def test_sigkill_in_round_two_then_rerun_resumes_without_repeating_calls(tmp_path: Path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", SEEDS)
    run_dir, marker, log = tmp_path / "run", tmp_path / "marker", tmp_path / "calls.log"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent), marker=str(marker),
                                   log=str(log), seeds=str(seeds), run=str(run_dir)))
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE)
    done = run_dir / "state" / "done.txt"
    deadline = time.monotonic() + 60
    # Wait until s1 hangs in round 2 and the three other chains have finished.
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode()[-2000:])
        if marker.exists() and done.exists() and len(done.read_text().split()) == 3:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        raise AssertionError("the child never reached round 2 of seed s1")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    before = {tuple(json.loads(line)) for line in log.read_text().splitlines()}
    kept_before = {r["id"] for r in RunDir(run_dir).kept()}
    assert "s1-r1" not in kept_before  # s1's chain had not been written
    assert len(kept_before) == 9

    again = ScriptedLLM()
    evolve(seeds, run_dir, EvolConfig(rounds=3, elimination=EliminationConfig.preset("paper")),
           models=Models(again, again, again),
           progress=False)

    # No finished call was made again: only s1's rounds 2 and 3 reached the LLM.
    assert not (set(again.calls) & before)
    assert [role for role, _ in again.calls] == ["evolve", "judge", "respond"] * 2
    ids = [r["id"] for r in RunDir(run_dir).kept()]
    assert len(ids) == len(set(ids)) == 12
    s1 = {r["id"]: r for r in RunDir(run_dir).kept() if r["lineage"]["seed_id"] == "s1"}
    assert s1["s1-r3"]["lineage"]["history"] == [
        "Seed one.", "Seed one. +1", "Seed one. +1 +2", "Seed one. +1 +2 +3"
    ]
