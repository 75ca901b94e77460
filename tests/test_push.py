"""``instructforge push``: the dataset card's fields on a real run made against the dev server,
the dry-run folder, and the upload's calls.

The upload itself is tested by replacing ``datasets.Dataset.push_to_hub`` and
``huggingface_hub.HfApi.create_commit`` (monkeypatch) and checking their arguments: a local
stand-in for the Hub's HTTP API (``HF_ENDPOINT``) would need its repo, preupload, LFS and
commit endpoints, which these tests do not provide.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import datasets
import huggingface_hub
import pytest
import yaml
from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.devserver import DevServer

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


class FakeHub:
    """Records the calls ``push`` makes to ``datasets`` and ``huggingface_hub``."""

    def __init__(self, monkeypatch, fail: Exception | None = None) -> None:
        self.pushed: list[dict] = []
        self.commits: list[dict] = []
        hub = self

        def push_to_hub(ds, repo_id, **kw):
            if fail is not None:
                raise fail
            hub.pushed.append({"repo_id": repo_id, "rows": ds.to_list(), **kw})

        def create_commit(api, repo_id, operations, **kw):
            files = {op.path_in_repo: open(op.path_or_fileobj).read() for op in operations}
            hub.commits.append({"repo_id": repo_id, "token": api.token, "files": files, **kw})

        monkeypatch.setattr(datasets.Dataset, "push_to_hub", push_to_hub)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)


def test_push_uploads_rows_private_then_card_and_config(evolved, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub = FakeHub(monkeypatch)
    res = runner.invoke(app, ["push", str(evolved), "me/tides", "--token", "hf_TOKEN123",
                              "-f", "sharegpt"])
    assert res.exit_code == 0, res.output
    assert "pushed 3 rows" in res.output and "(private)" in res.output
    [pushed] = hub.pushed
    assert pushed["repo_id"] == "me/tides" and pushed["private"] is True
    assert pushed["split"] == "train" and pushed["token"] == "hf_TOKEN123"
    assert pushed["rows"][0]["conversations"][0]["from"] == "human"
    [commit] = hub.commits
    assert commit["repo_type"] == "dataset" and commit["token"] == "hf_TOKEN123"
    assert sorted(commit["files"]) == ["README.md", "config.yaml"]
    assert "| kept (in this dataset) | 3 |" in commit["files"]["README.md"]
    for text in commit["files"].values():
        assert "hf_TOKEN123" not in text


def test_public_and_hf_token_and_export_push_to_hub(evolved, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_FROMENV")
    hub = FakeHub(monkeypatch)
    res = runner.invoke(app, ["export", str(evolved), "-o", str(tmp_path / "m.jsonl"),
                              "--push-to-hub", "me/tides", "--public"])
    assert res.exit_code == 0, res.output
    assert "wrote 3 rows" in res.output and "(public)" in res.output
    assert hub.pushed[0]["private"] is False and hub.pushed[0]["token"] == "hf_FROMENV"
    assert "--public" in hub.commits[0]["files"]["README.md"]
    bad = runner.invoke(app, ["export", str(evolved), "--public"])
    assert bad.exit_code == 2 and "--push-to-hub" in bad.output


def test_a_refused_upload_exits_1_with_the_hubs_answer(evolved, monkeypatch):
    class Refused(huggingface_hub.errors.HfHubHTTPError):
        def __init__(self, message: str) -> None:  # no HTTP response object to build
            Exception.__init__(self, message)

    FakeHub(monkeypatch, fail=Refused("401 Unauthorized"))
    res = runner.invoke(app, ["push", str(evolved), "me/tides"])
    assert res.exit_code == 1
    assert "upload to me/tides failed: 401 Unauthorized" in res.output
    assert "Traceback" not in res.output


def test_a_malformed_repo_id_is_refused_before_anything(evolved, monkeypatch):
    hub = FakeHub(monkeypatch)
    res = runner.invoke(app, ["push", str(evolved), "tides"])
    assert res.exit_code == 2 and "OWNER/NAME" in res.output
    assert hub.pushed == []


def test_an_unreachable_hub_exits_1_without_a_traceback(evolved, tmp_path):
    # A real upload attempt (in a fresh process, where HF_ENDPOINT is read) to a closed port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path),
           "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    for offline in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # the suite's; it would answer
        env.pop(offline, None)  # before any connection is tried
    proc = subprocess.run([sys.executable, "-m", "instructforge.cli", "push", str(evolved),
                           "me/tides", "--token", "hf_x"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "error: upload to me/tides failed:" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
