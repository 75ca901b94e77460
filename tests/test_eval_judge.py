"""Pairwise LLM-as-judge: verdict parsing, position swap, aggregation, and the eval job."""

from __future__ import annotations

import json

import pytest

from instructforge.llm.base import LLM, Completion, Message, SamplingParams
from instructforge.tuning.eval import EvalConfig, EvalError, evaluate, load_items, results_table
from instructforge.tuning.judge import (
    VERDICT_CHOICES,
    combine,
    model_view,
    parse_verdict,
    summarize,
)


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Assistant A explains more. [[A]]", "A"),
        ("[[B]]", "B"),
        ("Both are equally good. [[C]]", "tie"),
        ("[[ tie ]]", "tie"),
        # The format is restated before the decision: the last tag decides.
        ('Output "[[A]]", "[[B]]" or "[[C]]". My final verdict: [[B]]', "B"),
        ("Final verdict: A", "A"),
        ("My verdict is **B**.", "B"),
        ("Overall, Assistant B is better.", "B"),
        ("Assistant A is better in tone but Assistant B is better in accuracy.", None),
        ("I like both answers.", None),
        ("", None),
        # Constrained answers: the bare choice, or {"answer": ...} from response_format.
        ("[[C]]", "tie"),
        (" [[A]]\n", "A"),
        ('{"answer": "[[B]]"}', "B"),
        ('{"answer": "[[C]]"}', "tie"),
        ("B", "B"),
        ("tie", "tie"),
        ('{"answer": "maybe"}', None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_verdicts_are_turned_into_the_models_point_of_view():
    assert model_view("A", model_is="A") == "win"
    assert model_view("A", model_is="B") == "loss"
    assert model_view("tie", model_is="B") == "tie"
    assert model_view(None, model_is="A") is None


def test_agreeing_orderings_keep_their_outcome():
    assert combine("win", "win") == "win"
    assert combine("loss", "loss") == "loss"


def test_disagreeing_orderings_count_as_a_tie():
    assert combine("win", "loss") == "tie"
    assert combine("win", "tie") == "tie"


def test_one_unparseable_verdict_leaves_the_other_to_decide():
    assert combine(None, "win") == "win"
    assert combine(None, None) == "error"


def test_summary_counts_rates_and_consistency():
    rows = [
        {"outcome": "win", "verdicts": ["win", "win"], "raw": ["A", "B"]},
        {"outcome": "tie", "verdicts": ["win", "loss"], "raw": ["A", "A"]},
        {"outcome": "loss", "verdicts": ["loss", "loss"], "raw": ["B", "A"]},
        {"outcome": "error", "verdicts": [None, None], "raw": [None, None]},
    ]
    s = summarize(rows)
    assert (s["wins"], s["ties"], s["losses"], s["errors"]) == (1, 1, 1, 1)
    assert s["win_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert s["score"] == 0.5
    assert s["consistency"] == pytest.approx(2 / 3, abs=1e-3)
    assert s["first_position_wins"] == pytest.approx(4 / 6, abs=1e-3)


class Answerer(LLM):
    """Answers every question with a fixed text."""

    def __init__(self, name: str, text: str) -> None:
        self.model_id, self.text = name, text

    async def chat(self, messages: list[Message], params: SamplingParams) -> Completion:
        return Completion(self.text, "stop", 5, 5, self.model_id)

    async def complete(self, text: str, params: SamplingParams) -> Completion:
        raise NotImplementedError


class Judge(LLM):
    """A scripted judge: ``pick(answer_a, answer_b)`` returns its verdict text; the sampling
    params of each call are kept in ``params``."""

    def __init__(self, name: str, pick) -> None:
        self.model_id, self.pick, self.calls = name, pick, 0
        self.params: list[SamplingParams] = []

    async def chat(self, messages: list[Message], params: SamplingParams) -> Completion:
        self.calls += 1
        self.params.append(params)
        prompt = messages[-1]["content"]
        a = prompt.split("[The Start of Assistant A's Answer]\n")[1].split("\n[The End")[0]
        b = prompt.split("[The Start of Assistant B's Answer]\n")[1].split("\n[The End")[0]
        return Completion(self.pick(a, b), "stop", 5, 5, self.model_id)

    async def complete(self, text: str, params: SamplingParams) -> Completion:
        raise NotImplementedError


def run_pairwise(tmp_path, judge: Judge, limit: int = 4):
    llms = {
        "model": Answerer("good", "A long, careful and correct answer."),
        "baseline": Answerer("weak", "Meh."),
        "judge": judge,
    }
    cfg = EvalConfig(task="pairwise", limit=limit, progress=False)
    return evaluate(cfg, tmp_path / "ev", llms=llms)


def test_a_judge_that_sees_the_better_answer_gives_consistent_wins(tmp_path):
    judge = Judge("fair", lambda a, b: "[[A]]" if len(a) > len(b) else "[[B]]")
    s = run_pairwise(tmp_path, judge)["summary"]
    assert (s["wins"], s["ties"], s["losses"]) == (4, 0, 0)
    assert s["consistency"] == 1.0
    assert judge.calls == 8  # every question judged in both orders


def test_the_judge_is_asked_for_the_verdict_alone_with_a_choice_constraint(tmp_path):
    judge = Judge("fair", lambda a, b: "[[A]]" if len(a) > len(b) else "[[B]]")
    run_pairwise(tmp_path, judge, limit=2)
    assert judge.params and all(p.choices == VERDICT_CHOICES for p in judge.params)
    assert all(p.json_schema is None and p.temperature == 0.0 for p in judge.params)
    assert {parse_verdict(c) for c in VERDICT_CHOICES} == {"A", "B", "tie"}


@pytest.mark.parametrize("form", [
    "{}",                    # a grammar-constrained server: the bare choice
    '{{"answer": "{}"}}',    # OpenAI's response_format: the choice as JSON
    "Assistant {0} gives the better answer, so my verdict is {0}",  # no constraint
])
def test_verdicts_read_in_every_answer_form_give_the_same_results(tmp_path, form):
    def pick(a: str, b: str) -> str:
        choice = "[[A]]" if len(a) > len(b) else "[[B]]"
        return form.format(choice if "{}" in form else choice.strip("[]"))

    s = run_pairwise(tmp_path, Judge("fair", pick))["summary"]
    assert (s["wins"], s["ties"], s["losses"], s["errors"]) == (4, 0, 0, 0)


def test_position_swap_cancels_a_judge_that_always_picks_the_first_answer(tmp_path):
    s = run_pairwise(tmp_path, Judge("biased", lambda a, b: "[[A]]"))["summary"]
    assert (s["wins"], s["ties"], s["losses"]) == (0, 4, 0)
    assert s["consistency"] == 0.0
    assert s["first_position_wins"] == 1.0


def test_results_are_saved_as_json_and_a_table(tmp_path):
    judge = Judge("fair", lambda a, b: "[[A]]" if len(a) > len(b) else "[[B]]")
    res = run_pairwise(tmp_path, judge, limit=2)
    saved = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert saved["summary"]["wins"] == 2
    assert "| all | 2 | 2 | 0 | 0 |" in (tmp_path / "ev" / "results.md").read_text()
    assert results_table(res).startswith("| category |")


def test_rerun_resumes_without_calling_the_judge_again(tmp_path):
    judge = Judge("fair", lambda a, b: "[[A]]" if len(a) > len(b) else "[[B]]")
    run_pairwise(tmp_path, judge, limit=2)
    again = Judge("fair", lambda a, b: "[[B]]")  # same id: its calls would change nothing
    res = run_pairwise(tmp_path, again, limit=2)
    assert again.calls == 0
    assert res["summary"]["wins"] == 2


def test_results_are_added_to_a_given_run_directory(tmp_path):
    run = tmp_path / "run"
    judge = Judge("fair", lambda a, b: "[[A]]")
    llms = {"model": Answerer("m", "x"), "baseline": Answerer("b", "y"), "judge": judge}
    evaluate(EvalConfig(task="pairwise", limit=1, progress=False), tmp_path / "ev", run_dir=run,
             llms=llms)
    assert (run / "eval" / "pairwise-ev.json").exists()
    assert (run / "eval" / "pairwise-ev.md").read_text().startswith("## Evaluation: pairwise")


def test_pairwise_without_a_baseline_is_refused(tmp_path):
    with pytest.raises(EvalError, match="--baseline"):
        evaluate(EvalConfig(task="pairwise"), tmp_path / "ev")


def test_builtin_question_set_loads_with_categories():
    items = load_items("pairwise")
    assert len(items) >= 30
    assert len({it["row"]["category"] for it in items}) >= 5


def test_mt_bench_style_turns_are_accepted(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"question_id": 81, "turns": ["Write a haiku.", "Now another."]}\n')
    (item,) = load_items("pairwise", f)
    assert item["id"] == "81"


def test_question_file_without_a_question_names_the_line(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"id": 1, "text": "no question field"}\n')
    with pytest.raises(EvalError, match=r"q\.jsonl:1: no question"):
        load_items("pairwise", f)
