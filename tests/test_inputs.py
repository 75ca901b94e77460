"""Bad input gets a clear error naming file, line and field, before any LLM call."""

from __future__ import annotations

import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructforge.inputs import InputError, InstructionSource


def write(tmp_path, name, text: str | bytes):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def problems(path, **kw) -> str:
    with pytest.raises(InputError) as e:
        InstructionSource(path, **kw).validate()
    return str(e.value)


def test_reads_jsonl_records_with_ids_from_the_file(tmp_path):
    p = write(tmp_path, "a.jsonl", '{"id": "x", "instruction": "Hi"}\n{"instruction": "Yo"}\n')
    recs = list(InstructionSource(p))
    assert [r["id"] for r in recs] == ["x", "line-2"]
    assert recs[1]["messages"] == [{"role": "user", "content": "Yo"}]
    assert recs[1]["source"] == {"file": str(p), "line": 2, "id": "line-2"}


def test_invalid_json_names_file_and_line(tmp_path):
    p = write(tmp_path, "a.jsonl", '{"instruction": "ok"}\n{"instruction": \n')
    assert f"{p}:2: invalid JSON" in problems(p)


def test_missing_field_names_the_field_and_what_is_there(tmp_path):
    p = write(tmp_path, "a.jsonl", '{"prompt": "hello"}\n')
    msg = problems(p)
    assert f"{p}:1: field 'instruction' is missing (fields present: prompt; set --column)" in msg


def test_non_string_instruction_is_reported(tmp_path):
    p = write(tmp_path, "a.jsonl", '{"instruction": 42}\n')
    assert "field 'instruction' must be a string, got int" in problems(p)


def test_blank_instruction_is_reported(tmp_path):
    p = write(tmp_path, "a.jsonl", '{"instruction": "   "}\n')
    assert "field 'instruction' is empty" in problems(p)


def test_empty_file_is_reported(tmp_path):
    p = write(tmp_path, "a.jsonl", "")
    assert "the file is empty" in problems(p)


def test_non_utf8_line_is_reported(tmp_path):
    p = write(tmp_path, "a.jsonl", b'{"instruction": "ok"}\n{"instruction": "caf\xe9"}\n')
    assert f"{p}:2: not UTF-8 text" in problems(p)


def test_one_bad_byte_in_a_csv_rejects_only_its_row_with_line_and_offset(tmp_path):
    lines = [b"id,instruction\n"] + [b"r%d,Task number %d.\n" % (n, n) for n in range(2, 10_002)]
    lines[9_001] = b"r9002,Caf\xe9 au lait.\n"  # Latin-1, not UTF-8, on line 9,002
    p = write(tmp_path, "big.csv", b"".join(lines))
    offset = b"".join(lines).index(b"\xe9")
    src = InstructionSource(p, skip_invalid=True)
    assert src.validate() == 9_999
    recs = list(src)
    kept = [r for r in recs if r["status"] == "kept"]
    bad = [r for r in recs if r["status"] == "rejected"]
    assert len(kept) == 9_999 and kept[-1]["id"] == "r10001"
    assert len(bad) == 1 and bad[0]["source"]["line"] == 9_002
    assert bad[0]["rejection"]["reason"] == (
        f"{p}:9002: not UTF-8 text: byte 0xe9 at file offset {offset} "
        "(invalid continuation byte)")
    assert f"{p}:9002: not UTF-8 text" in problems(p)


def test_a_bad_byte_inside_a_multiline_csv_field_names_its_own_line(tmp_path):
    data = b'instruction\n"one\ntw\xffo\nthree"\nok\n'
    p = write(tmp_path, "a.csv", data)
    offset = data.index(b"\xff")
    recs = list(InstructionSource(p, skip_invalid=True))
    assert recs[0]["rejection"]["reason"] == (
        f"{p}:4: not UTF-8 text: byte 0xff at file offset {offset} "
        "(invalid start byte) on line 3")
    assert recs[1]["messages"][0]["content"] == "ok"


def test_an_unreadable_csv_header_fails_the_file(tmp_path):
    p = write(tmp_path, "a.csv", b"instr\xffuction\nhello\n")
    assert f"{p}:1: the header line is unreadable: not UTF-8 text" in problems(p, skip_invalid=True)


def test_csv_lines_ending_in_a_bare_carriage_return_are_rows(tmp_path):
    p = write(tmp_path, "a.csv", "instruction\rone\rtwo\r")
    assert [r["messages"][0]["content"] for r in InstructionSource(p)] == ["one", "two"]


def test_non_utf8_jsonl_and_json_name_the_line_and_file_offset(tmp_path):
    data = b'{"instruction": "ok"}\n{"instruction": "caf\xe9"}\n'
    p = write(tmp_path, "a.jsonl", data)
    offset = data.index(b"\xe9")
    assert f"{p}:2: not UTF-8 text: byte 0xe9 at file offset {offset} " in problems(p)
    data = b'[\n{"instruction": "ok"},\n{"instruction": "caf\xe9"}\n]'
    p = write(tmp_path, "a.json", data)
    offset = data.index(b"\xe9")
    assert f"{p}:3: not UTF-8 text: byte 0xe9 at file offset {offset} " in problems(p)


def test_unknown_column_is_reported_for_csv_with_its_line(tmp_path):
    p = write(tmp_path, "a.csv", "question,answer\nWhat is 2+2?,4\n")
    assert f"{p}:2: field 'instruction' is missing (fields present: answer, question" in problems(p)


def test_csv_with_configured_column(tmp_path):
    p = write(tmp_path, "a.csv", "question,answer\nWhat is 2+2?,4\n")
    assert [r["messages"][0]["content"] for r in InstructionSource(p, column="question")] == [
        "What is 2+2?"
    ]


def test_json_array_items_are_located(tmp_path):
    p = write(tmp_path, "a.json", json.dumps([{"instruction": "a"}, {"text": "b"}]))
    assert f"{p} item 1: field 'instruction' is missing" in problems(p)


def test_parquet_rows_are_read_and_located(tmp_path):
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"instruction": ["a", None]}), p)
    assert f"{p} row 2: field 'instruction' must be a string, got NoneType" in problems(p)


def test_duplicate_ids_are_reported(tmp_path):
    p = write(tmp_path, "a.jsonl", '{"id": 1, "instruction": "a"}\n{"id": 1, "instruction": "b"}\n')
    assert "duplicate id '1' (first at" in problems(p)


def test_a_duplicate_id_while_streaming_is_rejected_naming_the_first(tmp_path):
    # An explicit id equal to another row's line-based id is a duplicate too.
    p = write(tmp_path, "a.jsonl", '{"instruction": "a"}\n{"id": "line-1", "instruction": "b"}\n'
              '{"instruction": "c"}\n')
    out = list(InstructionSource(p, skip_invalid=True))
    assert [r["id"] for r in out] == ["line-1", "invalid-line-2", "line-3"]
    assert out[1]["rejection"]["reason"] == (
        f"{p}:2: duplicate id 'line-1' (first at {p}:1)")
    with pytest.raises(InputError, match="duplicate id 'line-1'"):
        list(InstructionSource(p))


def test_checking_ids_keeps_memory_flat_with_input_size(tmp_path):
    # The id index lives in a temporary SQLite file: Python allocations do not grow with
    # the row count (a dict of 50k ids and their places takes about 10 MB).
    p = tmp_path / "big.jsonl"
    p.write_text("".join(json.dumps({"id": f"seed-{i:07d}", "instruction": "Why is the sky "
                                     "blue?"}) + "\n" for i in range(50_000)))
    tracemalloc.start()
    try:
        assert InstructionSource(p).validate() == 50_000
        assert sum(1 for _ in InstructionSource(p)) == 50_000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB"


def test_every_bad_row_is_listed_not_just_the_first(tmp_path):
    p = write(tmp_path, "a.jsonl", "{}\n[]\n{\n")
    msg = problems(p)
    assert ":1:" in msg and ":2:" in msg and ":3:" in msg


def test_unsupported_file_type_is_reported(tmp_path):
    p = write(tmp_path, "a.txt", "hello")
    assert "unsupported file type '.txt'" in problems(p)


def test_missing_file_is_reported(tmp_path):
    assert "no such file" in problems(tmp_path / "nope.jsonl")


def test_skip_invalid_yields_good_rows_and_rejected_records_for_bad_ones(tmp_path):
    p = write(tmp_path, "a.jsonl", '{"instruction": "good"}\n{"oops": 1}\nnot json\n')
    src = InstructionSource(p, skip_invalid=True)
    assert src.validate() == 1
    recs = list(src)
    assert [r["status"] for r in recs] == ["kept", "rejected", "rejected"]
    assert recs[1]["rejection"]["rule"] == "invalid_input"
    assert f"{p}:2: field 'instruction' is missing" in recs[1]["rejection"]["reason"]


def test_hf_dataset_saved_to_disk_is_read(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"instruction": ["a", "b"]}).save_to_disk(tmp_path / "ds")
    assert len(list(InstructionSource(tmp_path / "ds"))) == 2


def test_a_damaged_parquet_file_is_a_located_input_error(tmp_path):
    p = write(tmp_path, "a.parquet", b"PAR1 not really parquet")
    assert f"{p}: not a readable Parquet file" in problems(p)


def test_a_csv_field_over_128_kib_is_read_whole(tmp_path):
    long = "word " * 60_000  # 300 KB, over csv's default field limit
    p = write(tmp_path, "a.csv", f'instruction\n"{long}"\nshort\n')
    texts = [r["messages"][0]["content"] for r in InstructionSource(p)]
    assert texts == [long.strip(), "short"]


def test_a_csv_row_with_extra_fields_names_its_line(tmp_path):
    p = write(tmp_path, "a.csv", "instruction,id\nHello, world,a\nFine,b\n")
    assert f"{p}:2: 3 fields but the header has 2" in problems(p)
    recs = list(InstructionSource(p, skip_invalid=True))
    assert [r["status"] for r in recs] == ["rejected", "kept"]


def test_a_short_csv_row_lacks_its_last_fields(tmp_path):
    p = write(tmp_path, "a.csv", "id,instruction\nonly-an-id\n")
    assert f"{p}:2: field 'instruction' is missing (fields present: id;" in problems(p)


def test_a_folder_that_is_not_a_saved_dataset_is_reported(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hi")
    assert "not a dataset saved with Dataset.save_to_disk" in problems(tmp_path / "notes")


def test_a_missing_split_of_a_saved_dataset_dict_names_the_splits(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"instruction": ["a"]})
    datasets.DatasetDict({"test": ds}).save_to_disk(tmp_path / "dd")
    assert "no split 'train' (splits: test)" in problems(tmp_path / "dd")


def test_an_uncached_hub_dataset_offline_says_how_to_get_it(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    text = problems("hf:instructforge-tests/never-cached")
    assert "hf:instructforge-tests/never-cached: offline mode is on" in text
    assert "not in the local cache" in text
    assert "save_to_disk" in text
