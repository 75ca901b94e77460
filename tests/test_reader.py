"""One reader and one chat validator for every command: the methods' inputs, analyze/filter
and export read a file the same way and reject the same rows with the same words."""

from __future__ import annotations

import json

import pytest

from instructforge.analysis.dataset import DatasetError, load_dataset
from instructforge.inputs import InstructionSource, read_rows
from instructforge.tuning.export import ExportError, export_run

BAD_ROLE = {"id": "a", "messages": [{"role": "robot", "content": "beep"}]}
PROBLEM = "field 'messages[0].role' is 'robot'; expected one of system, user, assistant"


def _lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_analyze_checks_role_names_as_export_does(tmp_path):
    src = _lines(tmp_path / "d.jsonl", [BAD_ROLE])
    with pytest.raises(DatasetError) as analysed:
        load_dataset(src)
    with pytest.raises(ExportError) as exported:
        export_run(src)
    assert str(analysed.value) == str(exported.value) == f"{src}:1: {PROBLEM}"


def test_analyze_reads_csv_like_the_methods_do(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text('instruction,output\n"Add 2, then 3.",5\n')
    rec = load_dataset(src).records[0]
    assert rec["messages"] == [{"role": "user", "content": "Add 2, then 3."},
                               {"role": "assistant", "content": "5"}]
    assert next(iter(InstructionSource(src)))["messages"][0]["content"] == "Add 2, then 3."


def test_rows_of_a_split_object_are_read_as_rows(tmp_path):
    src = tmp_path / "d.json"
    src.write_text(json.dumps({"train": [{"instruction": "A?"}, {"instruction": "B?"}]}))
    assert [r["messages"][0]["content"] for r in InstructionSource(src)] == ["A?", "B?"]
    assert len(load_dataset(src).records) == 2


def test_ndjson_is_read_by_every_command(tmp_path):
    src = _lines(tmp_path / "d.ndjson", [{"instruction": "A?"}])
    assert InstructionSource(src).validate() == 1 and len(load_dataset(src).records) == 1


def test_a_bad_line_is_located_by_the_one_reader(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_bytes(b'{"instruction": "A?"}\n\xff\n{"instruction": "B?"')
    rows = list(read_rows(src))
    assert [r.line for r in rows] == [1, 2, 3]
    assert rows[1].problem.startswith("not UTF-8 text: byte 0xff")
    assert "the last record is cut short" in rows[2].problem


def test_eval_reads_its_question_file_with_the_same_reader(tmp_path):
    from instructforge.tuning.eval import load_items

    src = tmp_path / "q.csv"
    src.write_text("id,question\n7,Write a haiku about tea.\n")
    (item,) = load_items("pairwise", src)
    assert item["id"] == "7" and item["line"] == 2
