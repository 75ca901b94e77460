"""``instructforge train --method dpo``: the pairs of a preferences run through TRL's
``DPOTrainer``, one real step on SmolLM2-135M on CPU."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("trl")
pytest.importorskip("gguf")

pytestmark = pytest.mark.timeout(1800)

from instructforge.cli import app  # noqa: E402
from instructforge.records import new_record  # noqa: E402
from instructforge.tuning.train import TrainError, load_examples  # noqa: E402

PAIRS = [("What is the capital of France?", "Paris.", "London."),
         ("What is 2 + 2?", "4.", "5."),
         ("Name a primary colour.", "Red.", "Purple.")]


def write_pairs_run(root, pairs=PAIRS):
    """A run as ``instructforge preferences`` writes it (the chosen answer in ``messages``,
    the pair in ``metadata["preferences"]``)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    with open(root / "data" / "records.jsonl", "w", encoding="utf-8") as f:
        for i, (q, good, bad) in enumerate(pairs):
            rec = new_record(f"p{i}", messages=[{"role": "user", "content": q},
                                                {"role": "assistant", "content": good}],
                             method="respond")
            rec["metadata"] = {"preferences": {"chosen": good, "rejected": bad,
                                               "reason": "right"}}
            f.write(json.dumps(rec) + "\n")
    return root


def test_dpo_examples_are_the_pairs_and_a_run_without_pairs_is_refused(tmp_path):
    run = write_pairs_run(tmp_path / "prefs")
    rows = load_examples(run, "dpo")
    assert rows[0] == {"prompt": [{"role": "user", "content": PAIRS[0][0]}],
                       "chosen": [{"role": "assistant", "content": "Paris."}],
                       "rejected": [{"role": "assistant", "content": "London."}]}
    plain = tmp_path / "plain"
    (plain / "data").mkdir(parents=True)
    (plain / "data" / "records.jsonl").write_text(json.dumps(new_record("a", messages=[
        {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
        method="respond")) + "\n")
    with pytest.raises(TrainError, match="instructforge preferences"):
        load_examples(plain, "dpo")
    with pytest.raises(TrainError, match="--method"):
        load_examples(run, "ppo")


def test_dry_run_counts_the_pairs(tmp_path):
    run = write_pairs_run(tmp_path / "prefs")
    res = CliRunner().invoke(app, ["train", str(run), "--method", "dpo", "-o",
                                   str(tmp_path / "m"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "dpo" in res.output and "3" in res.output


@pytest.mark.slow
def test_one_dpo_step_runs_on_the_135m_model(tmp_path):
    from instructforge.llm.embedded import default_model_path
    from instructforge.tuning.train import hf_from_gguf

    base = hf_from_gguf(default_model_path())
    run = write_pairs_run(tmp_path / "prefs")
    out = tmp_path / "model"
    res = CliRunner().invoke(app, ["train", str(run), "--method", "dpo", "--base-model",
                                   str(base), "-o", str(out), "--max-steps", "1",
                                   "--batch-size", "2", "--max-length", "64",
                                   "--logging-steps", "1", "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "instructforge_train.json").read_text())
    assert meta["steps"] == 1 and meta["config"]["method"] == "dpo"
    assert meta["losses"] and meta["losses"][0][1] > 0
    assert (out / "config.json").is_file()
