"""Every command's outputs are complete or visibly unfinished: filter, analyze, train's final
save and checkpoints, and the readers (export, train, eval) that refuse unfinished inputs."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest
from analysis_fixtures import make_evolve_run

from instructforge.analysis.analyze import AnalyzeConfig, analyze
from instructforge.analysis.filter import DatasetFilterConfig, filter_dataset
from instructforge.engine import RunDir
from instructforge.tuning.eval import EvalError, make_eval_llm
from instructforge.tuning.export import ExportError, export_run
from instructforge.tuning.train import TRAIN_META, last_checkpoint, save_final

# The modules (the package exports functions of the same names).
analyze_module = importlib.import_module("instructforge.analysis.analyze")
dataset_module = importlib.import_module("instructforge.analysis.dataset")


class Killed(Exception):
    """Stands for a kill at that point."""


# --- filter ---------------------------------------------------------------------------------


def test_a_killed_filter_leaves_a_visibly_partial_output_that_a_rerun_finishes(
        tmp_path, monkeypatch):
    src = make_evolve_run(tmp_path)
    out = tmp_path / "clean"

    def killed(run):
        raise Killed

    monkeypatch.setattr(dataset_module, "write_parquet", killed)  # filter writes through it
    with pytest.raises(Killed):
        filter_dataset(src, out, DatasetFilterConfig(dedup=("exact",)), progress=False)
    assert not out.exists()
    with pytest.raises(ExportError, match=r"clean.partial is an unfinished output"):
        export_run(out)
    with pytest.raises(ExportError, match=r"clean.partial is an unfinished output"):
        export_run(tmp_path / "clean.partial")

    monkeypatch.undo()
    res = filter_dataset(src, out, DatasetFilterConfig(dedup=("exact",)), progress=False)
    assert res.kept == len(list(RunDir(out).kept())) > 0
    assert RunDir(out).parquet.exists() and not (tmp_path / "clean.partial").exists()
    assert export_run(out).written == res.kept


# --- analyze --------------------------------------------------------------------------------


def test_a_killed_analyze_never_leaves_metrics_claiming_more_than_per_record_holds(
        tmp_path, monkeypatch):
    src = make_evolve_run(tmp_path)
    dumps = json.dumps
    rows = []

    def dies_on_the_third_row(obj, *a, **kw):
        if isinstance(obj, dict) and "id" in obj and "round" in obj:
            rows.append(obj)
            if len(rows) == 3:
                raise Killed
        return dumps(obj, *a, **kw)

    monkeypatch.setattr(analyze_module.json, "dumps", dies_on_the_third_row)
    with pytest.raises(Killed):
        analyze(src, AnalyzeConfig(embeddings=False, report=False), progress=False)
    monkeypatch.undo()
    metrics = src / "analysis" / "metrics.json"
    per_record = src / "analysis" / "per_record.jsonl"
    if metrics.exists():
        claimed = json.loads(metrics.read_text())["dataset"]["records"]
        assert claimed == len(per_record.read_text().splitlines())
    res = analyze(src, AnalyzeConfig(embeddings=False, report=False), progress=False)
    assert res.metrics["dataset"]["records"] == len(per_record.read_text().splitlines())


# --- train and eval -------------------------------------------------------------------------


def test_resume_skips_and_removes_a_checkpoint_cut_while_saving(tmp_path):
    ckpts = tmp_path / "model" / "checkpoints"
    for step in (1, 2):
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
        (ckpts / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"w")
    (ckpts / "checkpoint-1" / "trainer_state.json").write_text('{"global_step": 1}')
    # checkpoint-2 has no trainer_state.json (written last): resuming from it would start
    # counting steps from 0 again and train past --max-steps.
    assert last_checkpoint(ckpts) == str(ckpts / "checkpoint-1")
    assert not (ckpts / "checkpoint-2").exists()


def test_a_final_save_cut_short_leaves_a_folder_eval_refuses(tmp_path):
    out = tmp_path / "model"
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "config.json").write_text("{}")  # an earlier final save, now being replaced
    (out / TRAIN_META).write_text("{}")

    def write(folder: Path) -> None:
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "llama"}')
        raise Killed  # before the weights

    with pytest.raises(Killed):
        save_final(out, write, {"steps": 2})
    with pytest.raises(EvalError, match="unfinished `train` output"):
        make_eval_llm(str(out))


def test_a_final_save_moves_the_model_into_place_and_marks_it_finished_last(tmp_path):
    out = tmp_path / "model"
    (out / "checkpoints").mkdir(parents=True)

    def write(folder: Path) -> None:
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "llama"}')
        (folder / "model.safetensors").write_bytes(b"weights")

    save_final(out, write, {"steps": 2})
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints", "config.json", "instructforge_train.json", "model.safetensors"]
    assert json.loads((out / TRAIN_META).read_text()) == {"steps": 2}
    make_eval_llm(str(out))  # accepted (loads lazily)


# --- export ---------------------------------------------------------------------------------


def test_export_refuses_a_run_a_job_still_writes(tmp_path):
    src = make_evolve_run(tmp_path)
    with RunDir(src).lock(), pytest.raises(ExportError, match=f"pid {os.getpid()}"):
        export_run(src)
    assert export_run(src).written > 0


def test_export_refuses_records_whose_last_line_was_cut_by_a_kill(tmp_path):
    src = make_evolve_run(tmp_path)
    with open(RunDir(src).records, "a", encoding="utf-8") as f:
        f.write('{"id": "half", "messages": [')
    with pytest.raises(ExportError, match="the last record is cut short"):
        export_run(src)
