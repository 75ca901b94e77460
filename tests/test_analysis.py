"""Analysis: each metric on small hand-made data with known answers, the judge's parsers on
messy outputs, the loader on any dataset shape, analyze/filter end to end with a fake judge,
and one run on the real embedded model."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from analysis_fixtures import make_evolve_run, write_plain_jsonl
from typer.testing import CliRunner

from instructforge.analysis.analyze import AnalyzeConfig, analyze, elimination_table, output_paths
from instructforge.analysis.dataset import DatasetError, load_dataset
from instructforge.analysis.embeddings import coverage, nearest_neighbours, project_2d
from instructforge.analysis.filter import DatasetFilterConfig, FilterError, filter_dataset
from instructforge.analysis.judge import JudgeConfig, judge_records, judge_usage
from instructforge.analysis.lengths import TokenCounter, summarize, word_count
from instructforge.analysis.ratings import (
    DIFFICULTY_SCALE,
    QUALITY_SCALE,
    RATINGS,
    TASK_CATEGORIES,
    constrained_choice,
    parse_category,
    parse_rating,
    parse_scale,
    rate,
    rating_result,
)
from instructforge.analysis.tags import (
    TAGS_SCHEMA,
    complexity_diversity,
    normalise_tag,
    parse_tags,
    tag,
    tag_result,
)
from instructforge.cli import app
from instructforge.dedup import embedding_duplicates, exact_duplicates, minhash_duplicates
from instructforge.engine import RunDir, write_parquet
from instructforge.llm.base import LLM, Completion, SamplingParams
from instructforge.records import new_record

# ---------------------------------------------------------------- a deterministic fake judge


class FakeJudge(LLM):
    """Answers the analysis prompts like a tidy judge: difficulty by instruction length,
    quality 'good' unless the query says 'vague', category 'Math' for numbers, tags from
    the query's capitalised words.  Counts its calls.

    It tells the questions apart by their constraint, as a server would see them, and
    answers in one ``form``: ``"bare"`` (a grammar-constrained server: the bare label, the
    schema's JSON), ``"json"`` (OpenAI's response_format: ``{"answer": LABEL}``) or
    ``"free"`` (a server that ignored the constraint: Magpie- and InsTag-style free text)."""

    model_id = "fake-judge"

    def __init__(self, form: str = "bare") -> None:
        self.form = form
        self.calls: list[tuple[list[dict[str, str]], SamplingParams]] = []

    @staticmethod
    def _query(prompt: str) -> str:
        m = re.search(r"## User Query\n```\n(.*?)\n```", prompt, re.S)
        return m.group(1) if m else prompt.split("Query: ", 1)[-1].rsplit("\nAssistant:", 1)[0]

    def _answer(self, q: str, params: SamplingParams) -> str:
        if params.choices == QUALITY_SCALE:
            key, label = "input_quality", "poor" if "vague" in q else "good"
        elif params.choices == DIFFICULTY_SCALE:
            key, label = "difficulty", "hard" if len(q.split()) > 12 else "easy"
        elif params.choices == TASK_CATEGORIES:
            key, label = "primary_tag", "Math" if re.search(r"\d", q) else "Information seeking"
        elif params.json_schema is not None:
            words = re.findall(r"[A-Za-z]{5,}", q)[: 1 + len(q.split()) // 8]
            if self.form == "free":
                return json.dumps([{"tag": w, "explanation": "."} for w in words])
            return json.dumps({"tags": words})
        else:
            raise AssertionError(f"an unconstrained judge question: {params}")
        if self.form == "bare":
            return label
        if self.form == "json":
            return json.dumps({"answer": label})
        return f'```json\n{{"explanation": "ok", "{key}": "{label}"}}\n```'

    async def chat(self, messages, params):
        self.calls.append((messages, params))
        prompt = messages[-1]["content"]
        text = self._answer(self._query(prompt), params)
        return Completion(text, "stop", prompt_tokens=len(prompt.split()), completion_tokens=5,
                          model=self.model_id)

    async def complete(self, text, params):  # pragma: no cover - the judge only chats
        raise NotImplementedError


# ---------------------------------------------------------------- lengths


def test_word_count_splits_on_any_whitespace():
    assert word_count(" one\ttwo\n three  ") == 3
    assert word_count("") == 0


def test_summarize_gives_known_statistics_and_histogram():
    s = summarize([1, 2, 3, 4, 10], bins=3)
    assert (s["count"], s["mean"], s["median"], s["min"], s["max"]) == (5, 4.0, 3.0, 1.0, 10.0)
    assert s["histogram"]["counts"] == [3, 1, 1]
    assert s["histogram"]["edges"] == [1.0, 4.0, 7.0, 10.0]


def test_summarize_of_nothing_is_empty_not_an_error():
    assert summarize([])["count"] == 0 and summarize([])["mean"] is None


def test_bundled_tokenizer_counts_wordpieces_without_special_tokens():
    counter = TokenCounter()
    assert "MiniLM" in counter.name
    assert counter.count(["hello world", ""]) == [2, 0]


def test_token_counts_are_not_truncated_at_the_embedding_limit():
    assert TokenCounter().count(["word " * 600]) == [600]


def test_regex_token_counter_counts_words_and_punctuation():
    assert TokenCounter("regex").count(["Hi, you!"]) == [4]


# ---------------------------------------------------------------- embeddings figures


def test_nearest_neighbour_distances_on_known_vectors():
    d, i = nearest_neighbours(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    assert i.tolist() == [2, 2, 0]
    assert np.allclose(d, [1 - np.sqrt(0.5)] * 3)


def test_coverage_reports_mean_nn_distance_and_near_duplicate_share():
    v = np.array([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0], [0.0, -1.0]])
    c = coverage(v, duplicate_threshold=0.99)
    assert c["near_duplicate_share"] == 0.5  # the first two rows are each other's twin
    assert c["mean_nn_distance"] == pytest.approx((0 + 0 + 1 + 1) / 4, abs=1e-3)


def test_coverage_of_one_row_is_undefined_not_zero():
    assert coverage(np.ones((1, 3)))["mean_nn_distance"] is None


def test_pca_projection_keeps_far_points_far():
    xy = project_2d(np.array([[1, 0, 0], [0.99, 0.01, 0], [0, 0, 1], [0, 1, 0]]), method="pca")
    assert xy.shape == (4, 2)
    assert np.linalg.norm(xy[0] - xy[1]) < np.linalg.norm(xy[0] - xy[2])


def test_tsne_projection_gives_two_coordinates_per_row():
    rng = np.random.default_rng(0)
    xy = project_2d(rng.normal(size=(12, 8)), method="tsne")
    assert xy.shape == (12, 2) and np.isfinite(xy).all()


def test_unknown_projection_is_refused():
    with pytest.raises(ValueError, match="unknown projection"):
        project_2d(np.eye(8), method="nope")


# ---------------------------------------------------------------- dedup


def test_exact_duplicates_ignore_case_and_spacing_and_keep_the_first():
    assert exact_duplicates(["A b.", "x", "a  B.", "a b."]) == {2: (0, 1.0), 3: (0, 1.0)}


def test_minhash_finds_near_duplicates_but_not_different_texts():
    base = "Write a short story about a lighthouse keeper who finds a message in a bottle"
    texts = [base, base + " today", "Explain the rules of chess to a child in simple words"]
    dups = minhash_duplicates(texts, threshold=0.7)
    assert list(dups) == [1] and dups[1][0] == 0


def test_embedding_duplicates_join_the_group_of_the_kept_original():
    v = np.array([[1.0, 0.0], [0.999, 0.04], [0.996, 0.09], [0.0, 1.0]])
    dups = embedding_duplicates(v, threshold=0.998)
    # row 2 is close to row 1 but row 1 is itself a duplicate: it is compared with row 0.
    assert set(dups) == {1} and dups[1][0] == 0


# ---------------------------------------------------------------- rating parsers


@pytest.mark.parametrize("text,expected", [
    ('{"explanation": "clear", "input_quality": "good"}', "good"),
    ('Here you go:\n```json\n{\n  "explanation": "vague",\n  "input_quality": "Very Poor",\n}\n```',
     "very poor"),
    ("{'explanation': 'fine', 'input_quality': 'excellent'}", "excellent"),
    ("**Input quality:** average\n\nThe query is okay.", "average"),
    ('"input_quality": "poor"', "poor"),
    ("Excellent.", "excellent"),
    ('{"input_quality": 4}', "good"),
])
def test_quality_parser_reads_messy_but_clear_answers(text, expected):
    assert parse_scale(text, QUALITY_SCALE, RATINGS["quality"].keys) == expected


@pytest.mark.parametrize("text", [
    '{"explanation": "[...]", "input_quality": "[very poor/poor/average/good/excellent]"}',
    "The query is good but could be excellent with more context.",
    '{"explanation": "The user asks about',  # cut at max_tokens
    "",
    '{"input_quality": "good or average"}',
    '{"input_quality": 7}',
])
def test_quality_parser_never_guesses(text):
    assert parse_scale(text, QUALITY_SCALE, RATINGS["quality"].keys) is None


def test_difficulty_parser_prefers_very_hard_over_hard():
    text = '{"intent": "The user wants to prove it is hard", "difficulty": "very hard"}'
    assert parse_scale(text, DIFFICULTY_SCALE, RATINGS["difficulty"].keys) == "very hard"


def test_difficulty_in_a_markdown_line_is_read():
    text = "Intent: sum numbers\n- **Difficulty**: Easy (basic arithmetic)"
    assert parse_scale(text, DIFFICULTY_SCALE, RATINGS["difficulty"].keys) == "easy"


@pytest.mark.parametrize("text,expected", [
    ('{"primary_tag": "Coding & Debugging", "other_tags": ["Math"]}', "Coding & Debugging"),
    ('{"primary_tag": "coding and debugging"}', "Coding & Debugging"),
    ("Primary tag: Role-playing", "Role playing"),
    ("Math", "Math"),
    ('{"primary_tag": "<primary tag>", "other_tags": ["<tag 1>"]}', None),
    ('{"primary_tag": "Cooking"}', None),
    ("I think this is about math and also about reasoning and planning.", None),
])
def test_category_parser(text, expected):
    assert parse_category(text) == expected


def test_unparseable_rating_is_recorded_with_its_raw_text():
    r = rating_result(RATINGS["quality"], Completion("no idea", "length"))
    assert r == {"label": None, "score": None, "status": "unparseable", "raw": "no idea",
                 "finish_reason": "length"}


def test_rating_scores_follow_the_scale_order():
    r = rating_result(RATINGS["difficulty"], Completion('{"difficulty": "very hard"}', "stop"))
    assert (r["label"], r["score"], r["status"]) == ("very hard", 5, "ok")


def test_rate_sends_the_template_with_the_instruction_greedy_and_seeded():
    judge = FakeJudge()
    rec = new_record("r1", "What is 2 + 2?", method="input")
    out = asyncio.run(rate(rec, judge, "category"))
    assert out["label"] == "Math"
    messages, params = judge.calls[0]
    assert "What is 2 + 2?" in messages[0]["content"] and "all_task_tags" in messages[0]["content"]
    assert params.temperature == 0.0 and params.seed is not None
    asyncio.run(rate(new_record("r2", "What is 2 + 2?", method="input"), judge, "category"))
    assert judge.calls[1][1].seed != params.seed  # per record, so replays stay distinct


@pytest.mark.parametrize("kind,choices", [
    ("quality", QUALITY_SCALE), ("difficulty", DIFFICULTY_SCALE), ("category", TASK_CATEGORIES)])
def test_each_rating_is_asked_with_a_choice_constraint_on_its_labels(kind, choices):
    judge = FakeJudge()
    asyncio.run(rate(new_record("r1", "What is 2 + 2?", method="input"), judge, kind))
    [(messages, params)] = judge.calls
    assert params.choices == choices and params.json_schema is None
    # The prompt asks for the label alone and names every allowed answer.
    prompt = messages[0]["content"]
    assert "only" in prompt and all(c in prompt for c in choices)


@pytest.mark.parametrize("form", ["bare", "json", "free"])
def test_ratings_read_the_bare_label_the_json_answer_and_free_text(form):
    judge = FakeJudge(form)
    rec = new_record("r1", "What is 2 + 2? Please answer this vague question now.", method="input")
    got = {k: asyncio.run(rate(rec, judge, k)) for k in RATINGS}
    assert got == {"quality": {"label": "poor", "score": 2, "status": "ok"},
                   "difficulty": {"label": "easy", "score": 2, "status": "ok"},
                   "category": {"label": "Math", "status": "ok"}}


@pytest.mark.parametrize("text,choices,expected", [
    ("very hard", DIFFICULTY_SCALE, "very hard"),
    ("  Hard\n", DIFFICULTY_SCALE, "hard"),
    ('{"answer": "Good"}', QUALITY_SCALE, "good"),
    ('"average"', QUALITY_SCALE, "average"),
    ("Coding & Debugging", TASK_CATEGORIES, "Coding & Debugging"),
    ('{"answer": "Role playing"}', TASK_CATEGORIES, "Role playing"),
    # Not constrained answers: left to the tolerant parsers, which never guess.
    ("easy or hard", DIFFICULTY_SCALE, None),
    ("The query is good.", QUALITY_SCALE, None),
    ('{"answer": "great"}', QUALITY_SCALE, None),
    ('{"input_quality": "good"}', QUALITY_SCALE, None),
    ("", QUALITY_SCALE, None),
])
def test_constrained_choice_reads_only_a_constrained_answer(text, choices, expected):
    assert constrained_choice(text, choices) == expected


@pytest.mark.parametrize("kind,text,expected", [
    # Free text from a server that ignored the constraint: the first line is the label.
    ("difficulty", "Very easy\n\nThe difficulty level of the user query is very easy.",
     "very easy"),
    ("quality", "Excellent.\nThe query is clear.", "excellent"),
    ("category", "Creative writing\n\nThe user wants a poem.", "Creative writing"),
    # ...but a first line listing several labels, or a sentence, is no answer.
    ("quality", "Very poor, poor, inadequate, poor, poor", None),
    ("quality", "The query is very poor.\nIt lacks context.", None),
    ("category", "The task tag for the user query is:\n\nMath", None),
    ("difficulty", '{"answer": "[very easy/easy/medium/hard/very hard]"}', None),
])
def test_free_text_ratings_are_read_from_a_label_alone_on_the_first_line(kind, text, expected):
    assert parse_rating(RATINGS[kind], text) == expected


# ---------------------------------------------------------------- tag parser and metrics


def test_tag_normalisation_merges_spellings():
    assert normalise_tag("Data_Analysis") == normalise_tag("data-analysis") == "data analysis"
    assert normalise_tag("Word Problems") == "word problem"
    assert normalise_tag("Queries") == "query"
    assert normalise_tag("analyses") == "analysis"
    assert normalise_tag("class") == "class"


@pytest.mark.parametrize("text,expected", [
    ('[{"tag": "Math", "explanation": "sum"}, {"tag": "Arithmetic", "explanation": "add"}]',
     ["math", "arithmetic"]),
    ('```json\n[\n {"tag": "coding", "explanation": "x"},\n {"tag": "Python", "explanation": "y"},\n]\n```',
     ["coding", "python"]),
    ('{"tag": "translation", "explanation": "a"}\n{"tag": "French", "explanation": "b"}',
     ["translation", "french"]),
    ('{"tags": ["Cooking", "recipe"]}', ["cooking", "recipe"]),
    ("Tags: poetry, nature; haiku", ["poetry", "nature", "haiku"]),
    ("1. **Poetry**: writes a poem\n2. Nature - about rain", ["poetry", "nature"]),
    ('[{"tag": "math"}, {"tag": "Math"}, {"tag": "maths"}]', ["math"]),
    # The constrained form, also pretty-printed, and cut off at the token limit.
    ('{"tags": ["Math", "Word problems"]}', ["math", "word problem"]),
    ('{\n  "tags": [\n    "coding",\n    "Python"\n  ]\n}', ["coding", "python"]),
    ('{"tags": ["poetry", "nature", "hai', ["poetry", "nature"]),
])
def test_tag_parser_reads_messy_outputs(text, expected):
    assert parse_tags(text) == expected


@pytest.mark.parametrize("text", [
    "Sure! The user wants to know about fruit.",
    '{"tag": "str", "explanation": "str"}',
    '[{"tag": "',
    "",
    '{"tags": []}',
    '{"tags": ["str", "tag"]}',
    '{"tags": ["po',
])
def test_tag_parser_returns_none_when_there_are_no_tags(text):
    assert parse_tags(text) is None


TO_TAG = "Please translate the greeting Hello into French for my friend"


def test_the_tagger_asks_with_a_json_schema_of_one_to_a_few_short_tags():
    judge = FakeJudge()
    out = asyncio.run(tag(new_record("r1", TO_TAG, method="input"), judge))
    assert out == {"tags": ["please", "translate"], "status": "ok"}
    [(messages, params)] = judge.calls
    assert params.choices is None and params.schema() == TAGS_SCHEMA
    tags = TAGS_SCHEMA["properties"]["tags"]
    assert TAGS_SCHEMA["required"] == ["tags"] and TAGS_SCHEMA["type"] == "object"
    assert tags["minItems"] == 1 and 1 < tags["maxItems"] <= 20
    assert tags["items"]["type"] == "string" and tags["items"]["maxLength"] <= 100
    assert '{"tags": [str, ...]}' in messages[0]["content"]


@pytest.mark.parametrize("form", ["bare", "free"])
def test_tags_are_read_from_the_schema_answer_and_from_free_text(form):
    out = asyncio.run(tag(new_record("r1", TO_TAG, method="input"), FakeJudge(form)))
    assert out == {"tags": ["please", "translate"], "status": "ok"}


def test_a_junk_tag_answer_is_unparseable_with_its_raw_text():
    assert tag_result(Completion('{"tags": ["po', "length")) == {
        "tags": None, "status": "unparseable", "raw": '{"tags": ["po', "finish_reason": "length"}


def test_complexity_and_diversity_on_known_tags():
    cd = complexity_diversity([["math", "logic"], ["math"], None, ["poetry", "math", "rhyme"]])
    assert cd == {"tagged": 3, "complexity": 2.0, "diversity": 4,
                  "diversity_per_instruction": round(4 / 3, 4)}


# ---------------------------------------------------------------- loading any dataset


def test_run_directory_loads_kept_rejected_usage_and_config(tmp_path):
    ds = load_dataset(make_evolve_run(tmp_path))
    assert len(ds.records) == 20 and len(ds.rejected) == 4
    assert all(r["status"] == "rejected" for r in ds.rejected)
    assert ds.usage["job"] == "evol_instruct" and ds.config["rounds"] == 3


def test_run_directory_with_only_the_engines_parquet_keeps_lineage(tmp_path):
    run = make_evolve_run(tmp_path)
    write_parquet(RunDir(run))
    (run / "data" / "records.jsonl").unlink()
    ds = load_dataset(run)
    assert len(ds.records) == 20 and max(r["lineage"]["round"] for r in ds.records) == 3


def test_alpaca_jsonl_joins_input_to_instruction_and_reads_output(tmp_path):
    ds = load_dataset(write_plain_jsonl(tmp_path / "a.jsonl"))
    first = ds.records[0]
    assert first["messages"] == [{"role": "user", "content": "Translate to French.\n\nGood morning"},
                                 {"role": "assistant", "content": "Bonjour"}]
    assert first["id"] == "line-1" and first["source"]["line"] == 1


def test_custom_columns_json_list_and_parquet(tmp_path):
    rows = [{"q": "Why is the sky blue?", "a": "Rayleigh scattering."}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.json", "d.parquet"):
        ds = load_dataset(tmp_path / name, instruction_field="q", response_field="a")
        assert ds.records[0]["messages"][1]["content"] == "Rayleigh scattering."


def test_sharegpt_conversations_become_messages(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    (tmp_path / "s.jsonl").write_text(json.dumps(row) + "\n")
    assert load_dataset(tmp_path / "s.jsonl").records[0]["messages"][1]["role"] == "assistant"


def test_repeated_ids_are_made_unique(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"id": 7, "prompt": "a"}\n{"id": 7, "prompt": "b"}\n')
    assert [r["id"] for r in load_dataset(tmp_path / "d.jsonl").records] == ["7", "7~2"]


@pytest.mark.parametrize("content,message", [
    ('{"instruction": "ok"}\n{"instruction": "ok"\n', r"d\.jsonl:2: invalid JSON"),
    ('{"instruction": "ok"}\n{"title": "x"}\n', r"d\.jsonl:2: no instruction field"),
    ('{"instruction": 5}\n', r"d\.jsonl:1: field 'instruction' must be a string"),
    ('[1, 2]\n', r"d\.jsonl:1: expected a JSON object"),
])
def test_bad_rows_are_reported_with_file_line_and_field(tmp_path, content, message):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path / "d.jsonl")


def test_a_plain_directory_is_not_a_run(tmp_path):
    with pytest.raises(DatasetError, match="not a run directory"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------- judge job and analyze


def test_judge_job_is_cached_and_resumable(tmp_path):
    judge = FakeJudge()
    recs = [new_record(f"r{i}", f"Question {i}: what is {i} + {i}?", method="input")
            for i in range(3)]
    cfg = JudgeConfig(ratings=("difficulty",), tags=True)
    verdicts = judge_records(recs, judge, tmp_path / "judge", cfg, progress=False)
    assert set(verdicts) == {"r0", "r1", "r2"}
    assert verdicts["r0"]["ratings"]["difficulty"]["label"] == "easy"
    assert len(judge.calls) == 6
    again = judge_records(recs, judge, tmp_path / "judge", cfg, progress=False)
    assert again == verdicts and len(judge.calls) == 6
    [usage] = judge_usage(tmp_path / "judge")
    assert set(usage["total"]["fake-judge"]) == {"rate_difficulty", "instag"}


def test_a_judge_asked_new_questions_asks_them_of_every_record(tmp_path):
    judge = FakeJudge()
    recs = [new_record(f"r{i}", f"Question {i}?", method="input") for i in range(2)]
    judge_records(recs, judge, tmp_path / "judge", JudgeConfig(ratings=("difficulty",),
                                                               tags=False), progress=False)
    verdicts = judge_records(recs, judge, tmp_path / "judge",
                             JudgeConfig(ratings=("difficulty", "quality"), tags=False),
                             progress=False)
    assert set(verdicts["r1"]["ratings"]) == {"difficulty", "quality"}
    # The repeated difficulty questions came from the shared cache.
    assert sum(p.choices == QUALITY_SCALE for _, p in judge.calls) == 2
    assert len(judge.calls) == 4


def test_analyze_an_evolve_run_without_embeddings(tmp_path):
    run = make_evolve_run(tmp_path)
    res = analyze(run, AnalyzeConfig(embeddings=False), progress=False)
    m = res.metrics
    assert res.report == run / "report.html" and res.metrics_path == run / "analysis/metrics.json"
    assert [r["round"] for r in m["per_round"]] == [0, 1, 2, 3]
    assert [r["records"] for r in m["per_round"]] == [6, 5, 5, 4]
    # Each round appends text, so instructions grow round by round.
    means = [r["mean_instruction_words"] for r in m["per_round"]]
    assert means == sorted(means)
    assert m["elimination"]["rejected"] == 4 and m["elimination"]["kept"] == 20
    assert {r["rule"]: r["count"] for r in m["elimination"]["rules"]} == {
        "hard_to_respond": 1, "no_information_gain": 3}
    assert {(u["step"], u["requests"]) for u in m["usage"]} == {("evolve", 18), ("respond", 12)}
    rows = [json.loads(x) for x in res.per_record_path.read_text().splitlines()]
    assert len(rows) == 20 and rows[0]["instruction_words"] == 3


@pytest.mark.parametrize("form", ["bare", "json", "free"])
def test_analyze_with_a_judge_reports_ratings_tags_and_per_round_complexity(tmp_path, form):
    run = make_evolve_run(tmp_path)
    judge = FakeJudge(form)
    m = analyze(run, AnalyzeConfig(embeddings=False, report=False), judge_llm=judge,
                progress=False).metrics
    assert m["ratings"]["quality"]["counts"]["good"] == 20
    assert m["ratings"]["difficulty"]["counts"] == {"very easy": 0, "easy": 6, "medium": 0,
                                                    "hard": 14, "very hard": 0}
    assert m["tags"]["tagged"] == 20 and m["tags"]["unparseable"] == 0
    complexity = [r["complexity"] for r in m["per_round"]]
    assert complexity[0] < complexity[-1]  # longer evolved instructions get more tags
    # A second analyze asks nothing again: the verdicts come from the judge run.
    calls = len(judge.calls)
    analyze(run, AnalyzeConfig(embeddings=False, report=False), judge_llm=judge, progress=False)
    assert len(judge.calls) == calls


def test_judge_limit_rates_a_fixed_sample(tmp_path):
    run = make_evolve_run(tmp_path)
    cfg = AnalyzeConfig(embeddings=False, report=False, judge_limit=5,
                        judge=JudgeConfig(ratings=("quality",), tags=False))
    m = analyze(run, cfg, judge_llm=FakeJudge(), progress=False).metrics
    assert m["judge"]["records_judged"] == 5 and m["ratings"]["quality"]["rated"] == 5


def test_analyze_a_plain_file_writes_beside_it(tmp_path):
    src = write_plain_jsonl(tmp_path / "alpaca.jsonl")
    res = analyze(src, AnalyzeConfig(embeddings=False), progress=False)
    assert res.out_dir == tmp_path / "alpaca.analysis"
    assert res.report.exists() and res.metrics_path.exists()
    assert res.metrics["duplicates"]["exact"]["count"] == 1
    assert res.metrics["per_round"] == [] and res.metrics["elimination"]["rejected"] == 0


def test_analyze_with_embeddings_marks_near_duplicates(tmp_path):
    src = tmp_path / "d.jsonl"
    texts = ["How do I bake sourdough bread at home?", "How do I bake sourdough bread at home ?",
             "Explain quantum entanglement simply.", "Write a limerick about a cat.",
             "What is the capital of Peru?", "Sort a list in Python.", "Plan a trip to Rome."]
    src.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in texts))
    res = analyze(src, AnalyzeConfig(report_points=5), progress=False)
    e = res.metrics["embeddings"]
    assert e["count"] == 7 and 0 < e["mean_nn_distance"] < 1
    assert e["near_duplicate_share"] == pytest.approx(2 / 7, abs=1e-3)
    assert res.metrics["duplicates"]["embedding"]["count"] == 1
    rows = [json.loads(x) for x in res.per_record_path.read_text().splitlines()]
    assert rows[1]["embedding_duplicate_of"] == "line-1"
    # Coverage uses every record; only the report's sample is projected onto the map.
    assert all("nn_distance" in r for r in rows) and sum("x" in r for r in rows) == 5


def test_output_paths_follow_the_source_kind(tmp_path):
    assert output_paths(tmp_path) == (tmp_path / "analysis", tmp_path / "report.html")
    assert output_paths("x/data.parquet")[0] == Path("x/data.analysis")


def test_elimination_table_counts_by_rule_and_round():
    rej = [{"id": str(i), "lineage": {"round": 1 + i % 2},
            "rejection": {"stage": "eliminate", "rule": "copies_prompt" if i else "sorry",
                          "reason": "r"}} for i in range(3)]
    t = elimination_table(rej, kept=7)
    assert t["rejection_rate"] == 0.3
    assert t["rules"][0]["rule"] == "copies_prompt" and t["rules"][0]["count"] == 2
    assert t["per_round"] == [{"round": 1, "sorry": 1, "copies_prompt": 1},
                              {"round": 2, "copies_prompt": 1}]


# ---------------------------------------------------------------- filter


def _rated_file(tmp_path: Path) -> Path:
    rows = []
    for i, (text, q) in enumerate([("Explain photosynthesis in detail.", "good"),
                                   ("something vague", "poor"),
                                   ("Explain photosynthesis in detail.", "excellent"),
                                   ("Write a sonnet about autumn leaves falling.", None)]):
        meta = {}
        if q:
            meta["analysis"] = {"ratings": {"quality": {"label": q, "status": "ok"}}}
        else:
            meta["analysis"] = {"ratings": {"quality": {"label": None, "status": "unparseable",
                                                        "raw": "?"}}}
        rows.append(new_record(f"r{i}", text, method="input", metadata=meta))
    p = tmp_path / "rated.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_filter_keeps_rows_by_quality_then_dedups(tmp_path):
    res = filter_dataset(_rated_file(tmp_path), tmp_path / "out",
                         DatasetFilterConfig(min_quality="good", dedup=("exact",)), progress=False)
    kept = [json.loads(x)["id"] for x in (tmp_path / "out/data/records.jsonl").open()]
    rej = {json.loads(x)["id"]: json.loads(x)["rejection"]
           for x in (tmp_path / "out/rejected.jsonl").open()}
    assert kept == ["r0"] and res.kept == 1
    assert rej["r1"]["rule"] == "min_quality" and "'poor' is below 'good'" in rej["r1"]["reason"]
    assert rej["r2"]["rule"] == "exact_duplicate" and rej["r2"]["evidence"]["duplicate_of"] == "r0"
    assert rej["r3"]["rule"] == "unrated_quality"
    assert (tmp_path / "out/data/records.parquet").exists()
    assert (tmp_path / "out/config.yaml").read_text().startswith("job: filter")


def test_filter_without_ratings_and_without_judge_says_what_to_do(tmp_path):
    with pytest.raises(FilterError, match="no quality rating.*--judge"):
        filter_dataset(write_plain_jsonl(tmp_path / "a.jsonl"), tmp_path / "out",
                       DatasetFilterConfig(min_quality="good"))


def test_filter_asks_the_judge_for_missing_ratings(tmp_path):
    src = write_plain_jsonl(tmp_path / "a.jsonl")
    res = filter_dataset(src, tmp_path / "out", DatasetFilterConfig(max_difficulty="easy"),
                         judge_llm=FakeJudge(), progress=False)
    assert res.kept == 4 and judge_usage(tmp_path / "a.analysis/judge")


def test_filter_embedding_dedup_and_carried_rejections(tmp_path):
    run = make_evolve_run(tmp_path)

    def one_hot_by_seed(texts):  # every instruction of a seed chain is "the same"
        seeds = ["fruits", "haiku", "prime", "Sort", "advice", "water"]
        return np.array([[float(s in t) for s in seeds] for t in texts])

    res = filter_dataset(run, tmp_path / "clean", DatasetFilterConfig(dedup=("embedding",)),
                         embed_fn=one_hot_by_seed)
    assert res.kept == 6 and res.rejected_by_rule == {"embedding_duplicate": 14}
    assert res.carried_rejected == 4
    lines = (tmp_path / "clean/rejected.jsonl").read_text().splitlines()
    assert len(lines) == 18 and json.loads(lines[0])["rejection"]["stage"] == "eliminate"
    assert (tmp_path / "clean/usage.json").exists()


def test_filter_refuses_to_overwrite_and_bad_thresholds(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/x").write_text("")
    with pytest.raises(FilterError, match="not empty"):
        filter_dataset(write_plain_jsonl(tmp_path / "a.jsonl"), tmp_path / "out", DatasetFilterConfig())
    with pytest.raises(FilterError, match="min_quality must be one of"):
        DatasetFilterConfig(min_quality="great")
    with pytest.raises(FilterError, match="unknown dedup"):
        DatasetFilterConfig(dedup=("fuzzy",))


# ---------------------------------------------------------------- CLI


def test_cli_analyze_a_file(tmp_path):
    src = write_plain_jsonl(tmp_path / "a.jsonl")
    r = CliRunner().invoke(app, ["analyze", str(src), "--no-embeddings", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a.analysis/report.html").exists()
    assert "exact duplicates" in r.output


def test_cli_reports_a_bad_line_without_a_traceback(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"instruction": "a"}\nnot json\n')
    r = CliRunner().invoke(app, ["analyze", str(tmp_path / "bad.jsonl"), "--no-embeddings"])
    assert r.exit_code == 2
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "bad.jsonl:2: invalid JSON" in text and "Traceback" not in text


def test_cli_filter_dedups_into_a_new_run(tmp_path):
    src = write_plain_jsonl(tmp_path / "a.jsonl")
    r = CliRunner().invoke(app, ["filter", str(src), "-o", str(tmp_path / "out"),
                                 "--dedup", "exact,minhash", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "3 kept" in r.output and "exact_duplicate: 1" in r.output


# ---------------------------------------------------------------- on the real model


@pytest.mark.llm
def test_analyze_with_the_embedded_model_as_judge(tmp_path, embedded_llm):
    src = tmp_path / "one.jsonl"
    src.write_text('{"instruction": "What is 2 + 2?", "output": "4"}\n')
    cfg = AnalyzeConfig(embeddings=False, judge=JudgeConfig(ratings=("difficulty",), tags=True,
                                                           max_tokens=32))
    res = analyze(src, cfg, judge_llm=embedded_llm, progress=False)
    row = json.loads(res.per_record_path.read_text())
    # Constrained output: even a 135M judge answers a scale label and parseable tags (in 32
    # tokens), however poor its judgement.
    assert row["difficulty"] in DIFFICULTY_SCALE
    assert row["tags_status"] == "ok"
    [usage] = judge_usage(res.out_dir / "judge")
    steps = next(iter(usage["total"].values()))
    assert steps["rate_difficulty"]["requests"] == 1 and steps["instag"]["requests"] == 1
    assert res.report.exists()
    # A second analyze replays the verdicts: no new request reaches the model.
    again = analyze(src, cfg, judge_llm=embedded_llm, progress=False)
    [usage] = judge_usage(res.out_dir / "judge")
    assert next(iter(usage["total"].values()))["rate_difficulty"]["requests"] == 1
    assert json.loads(again.per_record_path.read_text()) == row


@pytest.mark.llm
def test_the_embedded_judge_gives_readable_verdicts_for_every_record(tmp_path, embedded_llm):
    questions = ["What is 2 + 2?", "Write a short poem about the sea.",
                 "Explain how a binary search works and write it in Python.",
                 "Give me three tips for planning a week-long trip to Japan on a budget."]
    recs = [new_record(f"r{i}", q, method="input") for i, q in enumerate(questions)]
    verdicts = judge_records(recs, embedded_llm, tmp_path / "judge", JudgeConfig(concurrency=4),
                             progress=False)
    assert set(verdicts) == {r["id"] for r in recs}
    for rid, v in verdicts.items():
        # Before constrained output this model left most of these unreadable.
        for kind, rating in v["ratings"].items():
            assert rating["status"] == "ok", (rid, kind, rating)
            assert rating["label"] in RATINGS[kind].choices
        assert v["tags"]["status"] == "ok" and v["tags"]["tags"], (rid, v["tags"])


def test_eval_results_saved_in_the_run_appear_in_the_report(tmp_path):
    from instructforge.tuning.eval import write_results

    run = make_evolve_run(tmp_path)
    results = {"task": "gsm8k", "models": {"model": {"spec": "tuned"}, "baseline": {"spec": "base"}},
               "summary": {"model": {"n": 4, "correct": 3, "accuracy": 0.75},
                           "baseline": {"n": 4, "correct": 1, "accuracy": 0.25}},
               "evaluated": 4, "questions": 4, "data": "gsm8k.jsonl"}
    write_results(results, tmp_path / "eval-out", run)
    res = analyze(run, AnalyzeConfig(embeddings=False), progress=False)
    (ev,) = res.metrics["evaluations"]
    assert ev["task"] == "gsm8k" and ev["rows"][0] == ["model", "tuned", 4, 3, 0.75]
    html = res.report.read_text()
    assert "Evaluation" in html and "<td>0.75</td>" in html and "<td>tuned</td>" in html
