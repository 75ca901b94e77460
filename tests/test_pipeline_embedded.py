"""From a run to the Hub, on the real embedded model: ``respond`` answers instructions (one of
them a planted GSM8K question), ``decontaminate`` drops that one, ``select --by ifd`` ranks the
rest with the 135M student, ``preferences`` makes chosen/rejected pairs, ``export --format
dpo`` writes them for TRL, and ``push`` uploads the pairs run with its card to a stand-in for
the Hub's HTTP API. Each step reads the run the previous one wrote."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from hub_standin import HubStandIn
from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.engine import RunDir
from instructforge.tuning.eval import BUILTIN_DATA

pytestmark = [pytest.mark.llm, pytest.mark.slow]
runner = CliRunner()


def invoke(*args: str) -> str:
    res = runner.invoke(app, [*args], terminal_width=200)
    assert res.exit_code == 0, res.output
    return res.output


def test_a_run_goes_through_every_dataset_command_to_the_hub(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    planted = json.loads((BUILTIN_DATA["gsm8k"]).read_text().splitlines()[3])["question"]
    questions = ["Name three primary colours.", "Say hello in French.",
                 "Write one sentence about the sea.", planted]
    src = tmp_path / "questions.jsonl"
    src.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in questions))

    answers, clean, best, pairs = (tmp_path / n for n in ("answers", "clean", "best", "pairs"))
    invoke("respond", str(src), "-o", str(answers), "--max-tokens", "32", "--no-progress")
    assert len(list(RunDir(answers).kept())) == 4

    out = invoke("decontaminate", str(answers), "--against", "gsm8k", "--no-embeddings",
                 "-o", str(clean))
    [dropped] = [r for r in RunDir(clean).dropped() if r["rejection"]["stage"] != "respond"]
    assert dropped["messages"][0]["content"] == planted
    assert dropped["rejection"]["evidence"]["benchmark"] == "gsm8k"
    assert "1" in out and len(list(RunDir(clean).kept())) == 3

    invoke("select", str(clean), "--by", "ifd", "--top", "2", "-o", str(best), "--show", "0")
    kept = list(RunDir(best).kept())
    assert 1 <= len(kept) <= 2
    scores = [r["metadata"]["selection"]["score"] for r in kept]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)

    invoke("preferences", str(best), "-n", "2", "-o", str(pairs), "--max-tokens", "24",
           "--judge-max-tokens", "160", "--no-progress")
    with_pairs = list(RunDir(pairs).kept())
    assert with_pairs, "the judge named no usable answer for any record"
    invoke("export", str(pairs), "--format", "dpo")
    rows = [json.loads(line) for line in (pairs / "export" / "dpo.jsonl").open()]
    assert len(rows) == len(with_pairs)
    assert all(r["chosen"] != r["rejected"] for r in rows)

    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_XET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        env.pop(name, None)  # the suite's offline switches would stop the upload
    with HubStandIn() as hub:
        proc = subprocess.run(
            [sys.executable, "-m", "instructforge.cli", "push", str(pairs), "me/pairs",
             "--token", "hf_PIPELINE", "-f", "dpo"],
            env={**env, "HF_ENDPOINT": hub.url}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    repo = hub.repos["me/pairs"]
    assert repo.private is True
    uploaded = pq.read_table(io.BytesIO(repo.files["data/train-00000-of-00001.parquet"]))
    assert uploaded.to_pylist() == rows
    card = repo.files["README.md"].decode()
    assert "preferences" in card and "hf_PIPELINE" not in card
