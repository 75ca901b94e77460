"""``instructforge push``: the dataset card's fields on a real run made against the dev server,
the dry-run folder, and the upload itself.

The upload runs through the real clients (``datasets.Dataset.push_to_hub``, then
``huggingface_hub.HfApi.create_commit``) against :class:`hub_standin.HubStandIn`, a local
stand-in for the Hub's HTTP API (repository info and creation, pre-upload, the LFS batch
transfer, tree listings, card validation, commit) that keeps what it is sent. The CLI runs in
a fresh process, where ``HF_ENDPOINT`` (read when ``huggingface_hub`` is imported) points at
the stand-in, with ``HF_HUB_DISABLE_XET=1``: the stand-in speaks the LFS protocol the client
falls back to, not Xet's.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys

import datasets
import pyarrow.parquet as pq
import pytest
import yaml
from hub_standin import HubStandIn
from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.devserver import DevServer
from instructforge.tuning.push import prepare

runner = CliRunner()
SECRET_URL = "http://alice:pa55word@127.0.0.1:9/v1?api_key=sk-SECRET&api-version=2"


@pytest.fixture(scope="module")
def evolved(tmp_path_factory):
    """A real 2-round evolve run (seeds kept, every child eliminated by the dev server's
    fixed answer), with a filtered record, an analysis and a priced model added."""
    base = tmp_path_factory.mktemp("push")
    seeds = base / "in.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": q}) + "\n"
                             for q in ("What is 2+2?", "Name a color.", "Explain tides.")))
    run = base / "run"
    with DevServer() as srv:
        res = runner.invoke(app, ["evolve", str(seeds), "-o", str(run), "--base-url", srv.url,
                                  "--evol-model", "dev", "--response-model", "dev",
                                  "--judge-model", "dev", "--rounds", "2", "--keep-seeds",
                                  "--no-progress"])
    assert res.exit_code == 0, res.output
    # What `analyze --filter` and a credentialed server would have left in the run.
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["judge_llm"]["base_url"] = SECRET_URL
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with (run / "rejected.jsonl").open("a") as fh:
        fh.write(json.dumps({"id": "x", "messages": [], "status": "rejected", "rejection": {
            "stage": "filter", "rule": "min_quality", "reason": "poor"}}) + "\n")
    (run / "analysis").mkdir()
    (run / "analysis" / "metrics.json").write_text(json.dumps({"per_round": [
        {"round": 0, "records": 3, "complexity": 1.25, "diversity": 7, "mean_quality": None},
        {"round": 1, "records": 2, "complexity": 2.5, "diversity": 11}]}))
    usage = json.loads((run / "usage.json").read_text())
    usage["total"]["openai:paid@https://api.example.com/v1"] = {"respond": {
        "requests": 2, "prompt_tokens": 1000, "completion_tokens": 500, "cost_usd": 0.0125}}
    (run / "usage.json").write_text(json.dumps(usage))
    return run


def dry_run(run, out, *args: str) -> str:
    res = runner.invoke(app, ["push", str(run), "me/tides", "--dry-run", "-o", str(out), *args])
    assert res.exit_code == 0, res.output
    return (out / "README.md").read_text()


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_fields_of_a_real_run(evolved, tmp_path):
    card = dry_run(evolved, tmp_path / "hub", "--license", "apache-2.0")
    meta = front_matter(card)
    assert meta["license"] == "apache-2.0"
    assert meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train*"}
    # method and paper
    assert "**Evol-Instruct**" in card and "arXiv:2304.12244" in card
    # models per role
    for role in ("evol", "response", "judge"):
        assert f"| {role} | dev |" in card
    # counts: 3 seeds kept, 6 children eliminated by rule, 1 filtered
    assert "| kept (in this dataset) | 3 |" in card
    assert "| eliminated by rule | 6 |" in card
    assert "| filtered | 1 |" in card
    assert "| eliminate | not\\_an\\_instruction | 6 |" in card
    assert "| 1 | 3 | 0 | 3 |" in card and "| 2 | 3 | 0 | 3 |" in card  # per round
    # complexity and diversity per round, from metrics.json
    assert "| 0 | 3 | 1.25 | 7 | - |" in card and "| 1 | 2 | 2.5 | 11 |" in card
    # tokens and cost, from usage.json
    assert "| 1000 | 500 | $0.0125 |" in card
    assert "cost $0.0125 (some models have no price)" in card
    # the config, its credentials removed, and how to reproduce
    assert "keep_seeds: true" in card and "rounds: 2" in card
    assert "http://127.0.0.1:9/v1?api-version=2" in card
    assert "pa55word" not in card and "sk-SECRET" not in card and "alice" not in card
    assert "instructforge rerun --config config.yaml -o RUN_DIR" in card
    assert f"instructforge push {evolved.as_posix()} me/tides --format messages" in card


def test_dry_run_writes_the_rows_in_the_chosen_format_and_the_config(evolved, tmp_path):
    out = tmp_path / "hub"
    dry_run(evolved, out, "--format", "alpaca")
    rows = [json.loads(line) for line in (out / "data" / "train.jsonl").open()]
    assert sorted(r["instruction"] for r in rows) == ["Explain tides.", "Name a color.",
                                                      "What is 2+2?"]
    assert {"instruction", "output", "history"} <= rows[0].keys()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["rounds"] == 2 and config["keep_seeds"] is True
    assert "pa55word" not in (out / "config.yaml").read_text()
    ds = datasets.load_dataset("json", data_files=str(out / "data" / "train.jsonl"),
                               split="train")
    assert ds.num_rows == 3


def test_model_text_cannot_break_the_card(evolved, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(evolved, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["evol_llm"]["model"] = "m|x\n## Owned <script>alert(1)</script> ```"
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    card = dry_run(run, tmp_path / "hub")
    row = next(line for line in card.splitlines() if line.startswith("| evol |"))
    assert row.count(" | ") == 2  # still three cells
    assert "m\\|x \\#\\# Owned &lt;script&gt;" in row
    assert "<script>" not in card.split("## Configuration")[0]
    assert "\n## Owned" not in card
    # the config block's fence is longer than the backtick run the model name holds
    assert "````yaml" in card


def test_push_of_a_run_without_kept_rows_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "records.jsonl").write_text("")
    res = runner.invoke(app, ["push", str(run), "me/x", "--dry-run"])
    assert res.exit_code == 2
    assert "no kept record with an answer to publish" in res.output


def cli(endpoint: str, home, *args: str, token: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    """``instructforge ARGS`` in a fresh process whose Hub is ``endpoint`` (``HF_TOKEN`` set
    to ``token``, or unset)."""
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(home),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):  # the suite's offline
        env.pop(name, None)  # switches would answer before any connection is tried
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "instructforge.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def expected(run, tmp_path, fmt: str, public: bool = False) -> tuple[list[dict], dict]:
    """The rows and files ``prepare`` writes for ``run`` (what the upload must carry)."""
    res = prepare(run, tmp_path / f"expected-{fmt}", fmt=fmt, repo_id="me/tides",
                  public=public)
    rows = [json.loads(line) for line in (res.folder / "data" / "train.jsonl").open()]
    return rows, {name: (res.folder / name).read_bytes() for name in res.files}


def parquet_rows(data: bytes) -> list[dict]:
    return pq.read_table(io.BytesIO(data)).to_pylist()


def test_push_uploads_rows_private_then_card_and_config_to_a_hub_stand_in(evolved, tmp_path):
    with HubStandIn() as hub:
        proc = cli(hub.url, tmp_path / "home", "push", str(evolved), "me/tides",
                   "--token", "hf_TOKEN123", "-f", "sharegpt")
    assert proc.returncode == 0, proc.stderr
    assert hub.unknown == []
    assert f"pushed 3 rows, README.md and config.yaml to {hub.url}/datasets/me/tides " \
           "(private)" in proc.stdout
    repo = hub.repos["me/tides"]
    assert repo.private is True
    # the token went to the Hub with every API call (the LFS upload URL is pre-authorised)
    api_calls = [auth for req, auth in zip(hub.requests, hub.authorizations, strict=True)
                 if " /lfs-upload/" not in req]
    assert api_calls and set(api_calls) == {"Bearer hf_TOKEN123"}
    rows, files = expected(evolved, tmp_path, "sharegpt")
    assert sorted(repo.files) == ["README.md", "config.yaml",
                                  "data/train-00000-of-00001.parquet"]
    # the rows, read back from the committed Parquet file, are the kept records as sharegpt
    assert parquet_rows(repo.files["data/train-00000-of-00001.parquet"]) == rows
    assert rows[0]["conversations"][0]["from"] == "human" and len(rows) == 3
    # push_to_hub's own commit, then the card (replacing datasets' one) and the config
    assert [c.summary for c in repo.commits] == [
        "Upload dataset", "Dataset card and config.yaml (instructforge push)"]
    assert sorted(repo.commits[-1].files) == ["README.md", "config.yaml"]
    assert repo.files["README.md"] == files["README.md"]
    assert repo.files["config.yaml"] == files["config.yaml"]
    assert b"| kept (in this dataset) | 3 |" in repo.files["README.md"]
    for commit in repo.commits:
        for name, data in commit.files.items():
            assert b"hf_TOKEN123" not in data, name


def test_export_push_to_hub_public_with_hf_token_to_a_hub_stand_in(evolved, tmp_path):
    with HubStandIn() as hub:
        proc = cli(hub.url, tmp_path / "home", "export", str(evolved),
                   "-o", str(tmp_path / "m.jsonl"), "--push-to-hub", "me/tides", "--public",
                   token="hf_FROMENV")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 3 rows" in proc.stdout and "(public)" in proc.stdout
    repo = hub.repos["me/tides"]
    assert repo.private is False
    assert "Bearer hf_FROMENV" in hub.authorizations
    rows, files = expected(evolved, tmp_path, "messages", public=True)
    assert parquet_rows(repo.files["data/train-00000-of-00001.parquet"]) == rows
    assert rows[0]["messages"][0]["role"] == "user"
    assert repo.files["README.md"] == files["README.md"]
    assert b"--public" in repo.files["README.md"]
    assert all(b"hf_FROMENV" not in data for data in repo.files.values())
    bad = runner.invoke(app, ["export", str(evolved), "--public"])
    assert bad.exit_code == 2 and "--push-to-hub" in bad.output


@pytest.mark.parametrize(("status", "body", "says"), [
    (403, b'{"error": "You have no write access to me/tides"}',
     "You have no write access to me/tides"),
    (500, b'{"error": "Internal Error"}', "500 Internal Server Error"),
    (200, b"<html>Bad gateway</html>", "the Hub's answer is not JSON"),
    (200, b"{}", "the Hub's answer was not understood (KeyError: 'commitUrl')"),
], ids=["refused", "server-error", "not-json", "missing-field"])
def test_a_failed_commit_exits_1_with_the_hubs_answer(evolved, tmp_path, status, body, says):
    with HubStandIn(fail={"commit": (status, body)}) as hub:
        proc = cli(hub.url, tmp_path / "home", "push", str(evolved), "me/tides",
                   "--token", "hf_x")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    output = " ".join((proc.stdout + proc.stderr).split())  # the console wraps long lines
    assert "error: upload to me/tides failed:" in output
    assert says in output
    assert "Traceback" not in proc.stderr
    assert hub.repos["me/tides"].commits == []


def test_a_malformed_repo_id_is_refused_before_anything(evolved, tmp_path):
    with HubStandIn() as hub:
        proc = cli(hub.url, tmp_path / "home", "push", str(evolved), "tides")
    assert proc.returncode == 2
    assert "OWNER/NAME" in proc.stdout + proc.stderr
    assert hub.requests == []


def test_an_unreachable_hub_exits_1_without_a_traceback(evolved, tmp_path):
    # A real upload attempt to a closed port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = cli(f"http://127.0.0.1:{port}", tmp_path, "push", str(evolved), "me/tides",
               "--token", "hf_x")
    assert proc.returncode == 1, proc.stderr
    assert "error: upload to me/tides failed:" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
