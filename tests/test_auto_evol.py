"""Auto Evol-Instruct without a model: the section parser (property-based), the paper's
failure types, failure rates, candidate selection, method files, the sections wrapper, and
the search loop on a scripted fake LLM."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructforge.engine import RunDir
from instructforge.llm import LLM, Completion, SamplingParams
from instructforge.methods import auto_evol as auto_evol_module
from instructforge.methods import eliminate as el
from instructforge.methods.auto_evol import (
    INSUFFICIENT_QUALIFICATION,
    LOSS_OF_KEY_INFORMATION,
    MODEL_ID_SUFFIX,
    STAGNANT_COMPLEXITY,
    UNPARSEABLE,
    AutoEvolConfig,
    AutoEvolError,
    DevResult,
    EvolvingMethod,
    Score,
    SearchModels,
    SectionsLLM,
    auto_evolve,
    evol_config,
    failure_rate,
    paper_failure_types,
    parse_method_output,
    parse_optimized_method,
    search,
    select_candidate,
)
from instructforge.methods.evol_instruct import EvolConfig, load_operations
from instructforge.records import stable_seed

# --- a scripted fake LLM playing every role --------------------------------------------------

VARIANTS = {
    # What the optimizer returns, by its sampling seed; the fake evol LLM reads the keyword.
    0: "GOOD method: list methods, plan, rewrite, review, and always finish every section.",
    1: "HALF method: list methods, plan, rewrite, review; sometimes forget the last section.",
    2: "BROKEN method: just chat about the instruction freely without any of the sections.",
}


# Candidate j of step k (run seed 0, or 5) gets variant (j - 1 + k) % 3: at step 1 the GOOD
# one is the last candidate, so picking the first or the last sampled would be caught.
VARIANT_OF_SEED = {stable_seed(run, "optimize", k, j): (j - 1 + k) % 3
                   for run in (0, 5) for k in range(1, 10) for j in range(1, 4)}


class FakeLLM(LLM):
    """Deterministic on (prompt, seed). Evolving prompts get headed sections whose final
    instruction appends " +1"; a BROKEN method's answer has no sections, a HALF method's (and
    the initial method's) has none for half the instructions; the optimizer returns one of
    VARIANTS chosen by its seed."""

    model_id = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int | None]] = []

    @staticmethod
    def role(prompt: str) -> str:
        if prompt.startswith("Here are two instructions"):
            return "judge"
        if prompt.startswith("A model was asked to rewrite an instruction"):
            return "instruction_judge"
        if prompt.startswith("An instruction was rewritten"):
            return "task_judge"
        if "#Optimized Method#" in prompt:
            return "optimize"
        if "Stage 0:" in prompt:
            return "analysis"
        if "#Instruction#:" in prompt:
            return "evolve"
        return "respond"

    def reply(self, prompt: str, seed: int | None) -> str:
        role = self.role(prompt)
        if role == "judge":
            return "Not Equal"
        if role == "instruction_judge":
            return "Instruction"
        if role == "task_judge":
            return "Yes"
        if role == "optimize":
            return f"Step 1 #Analysis#: fix it\nStep 2 #Optimized Method#:\n{VARIANTS[VARIANT_OF_SEED[seed]]}"
        if role == "analysis":
            return "#Issues#: Stage 2 did not get more complex."
        if role == "evolve":
            parent = prompt.rsplit("#Instruction#:", 1)[1].strip()
            half = "HALF method" in prompt or "Instruction Rewriter" in prompt
            if "BROKEN method" in prompt or (half and stable_seed(parent) % 2):
                return "I think this instruction is fine as it is."
            return (f"Step 1 #Methods List#: add a number\nStep 2 #Plan#: add it\n"
                    f"Step 3 #Rewritten Instruction#: {parent} draft\n"
                    f"Step 4 #Finally Rewritten Instruction#: {parent} +1")
        return f"Here is a careful answer about {prompt[:40]}, with details and examples."

    async def chat(self, messages, params: SamplingParams) -> Completion:
        prompt = messages[-1]["content"]
        self.calls.append((self.role(prompt), prompt, params.seed))
        return Completion(self.reply(prompt, params.seed), "stop", 10, 5, model="fake")

    async def complete(self, text, params):  # pragma: no cover - only chat is used
        raise NotImplementedError


def write_seeds(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"s{i}", "instruction": f"Seed number {i}."})
                            + "\n" for i in range(1, n + 1)))
    return path


def fake_models(llm: LLM | None = None) -> SearchModels:
    llm = llm or FakeLLM()
    return SearchModels(llm, llm, llm, llm)


EVOL_FIELDS = {f.name for f in dataclasses.fields(EvolConfig)}


def small_config(**kw) -> AutoEvolConfig:
    """Small sizes; keys Auto Evol shares with Evol-Instruct (rounds, seed, ...) go into the
    embedded ``evol`` config, the others onto AutoEvolConfig itself."""
    base = dict(steps=2, candidates=3, trajectory_steps=2, batch_size=2, dev_size=4, rounds=0,
                patience=0)
    merged = {**base, **kw}
    shared = {k: v for k, v in merged.items() if k in EVOL_FIELDS}
    own = {k: v for k, v in merged.items() if k not in EVOL_FIELDS}
    return AutoEvolConfig(evol=evol_config(**shared), **own)


# --- the section parser --------------------------------------------------------------------

# Content made of words that can never form a header or commentary.
WORDS = ["Explain", "why", "leaves", "change", "colour", "in", "autumn", "using", "three",
         "examples", "and", "a", "table", "of", "data", "with", "Python", "code", "1,", "2.",
         "-", "(see", "below)", "42", "\u00e9t\u00e9", "`x`"]
line_st = st.lists(st.sampled_from(WORDS), min_size=1, max_size=10).map(" ".join)
content_st = st.lists(line_st, min_size=1, max_size=3).map("\n".join)

# The ways small models write a section header.
HEADER_STYLES = [
    "Step {n} #{name}#:", "Step {n} #{name}#:\n", "**Step {n}: {name}**\n", "### {name}\n",
    "## Step {n} - {name}:", "{name}:", "**{name}:**", "#{name}#:\n", "- **{name}**:",
    "> {name}:", "STEP {n} #{upper}#:",
]
FINAL_NAMES = ["Finally Rewritten Instruction", "Final Rewritten Instruction",
               "Final Instruction"]
OTHER = [(1, "Methods List"), (2, "Plan"), (3, "Rewritten Instruction")]


def header(style: str, n: int, name: str) -> str:
    return style.format(n=n, name=name, upper=name.upper())


@st.composite
def method_answer(draw) -> tuple[str, str]:
    """A messy answer and the final instruction it holds."""
    parts: list[str] = []
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from(["Sure! Here is my answer.", "Okay.", "```"])))
    if draw(st.booleans()):  # the model first echoes the empty format
        parts.append("\n".join(f"Step {n} #{nm}#:" for n, nm in OTHER)
                     + "\nStep 4 #Finally Rewritten Instruction#:")
    for n, name in OTHER:
        if draw(st.booleans()):  # missing headers
            parts.append(header(draw(st.sampled_from(HEADER_STYLES)), n, name) + " "
                         + draw(content_st))
    final = ""
    for _ in range(draw(st.integers(1, 3))):  # repeated final sections: the last one counts
        final = draw(content_st)
        style = draw(st.sampled_from(HEADER_STYLES))
        parts.append(header(style, 4, draw(st.sampled_from(FINAL_NAMES))) + " " + final)
    if draw(st.booleans()):  # extra text after the answer
        parts.append(draw(st.sampled_from(["\nNote: I added a constraint.",
                                           "\nThis rewritten instruction adds a table."])))
    return "\n".join(parts), final.strip()


@settings(max_examples=300, deadline=None)
@given(method_answer())
def test_parser_finds_the_last_final_section_in_messy_answers(case):
    text, final = case
    assert parse_method_output(text).instruction == final


@settings(max_examples=200, deadline=None)
@given(content_st, st.sampled_from(HEADER_STYLES), st.booleans())
def test_parser_falls_back_to_the_rewritten_section_when_the_final_header_is_missing(
        rewritten, style, with_plan):
    text = ("Step 2 #Plan#: add a table\n" if with_plan else "") \
        + header(style, 3, "Rewritten Instruction") + " " + rewritten
    out = parse_method_output(text)
    assert (out.instruction, out.section) == (rewritten.strip(), "rewritten")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parser_never_raises_and_returns_text_from_the_input(text):
    out = parse_method_output(text)
    assert out.instruction is None or out.instruction.strip("*_ ") in text


@settings(max_examples=100, deadline=None)
@given(content_st)
def test_text_without_any_section_is_unparseable(text):
    assert parse_method_output(text).instruction is None


def test_parser_does_not_cut_a_final_answer_that_starts_with_instruction():
    text = "Step 4 #Finally Rewritten Instruction#:\nInstruction: name three rare fruits."
    assert parse_method_output(text).instruction == "Instruction: name three rare fruits."


def test_parser_stops_the_final_section_at_an_echoed_instruction():
    text = "Step 4 #Finally Rewritten Instruction#: Name a rare fruit.\n#Instruction#:\nName a fruit."
    assert parse_method_output(text).instruction == "Name a rare fruit."


def test_an_echoed_answer_format_intro_is_not_an_instruction():
    # SmolLM2 wrote this (runs/auto-small): the format, then its intro again as the "answer".
    text = ("Please reply strictly in the format:\nStep 1 #Methods List#:\nStep 2 #Plan#:\n"
            "Step 3 #Rewritten Instruction#:\nStep 4 #Final Rewritten Instruction#:\n"
            "Please reply strictly in the format:")
    assert parse_method_output(text).instruction is None
    text2 = "Step 4 #Final Instruction#: Name a rare fruit.\nPlease reply strictly in the format:"
    assert parse_method_output(text2).instruction == "Name a rare fruit."


def test_optimizer_answer_with_only_an_analysis_or_a_stub_gives_no_candidate():
    assert parse_optimized_method("Step 1 #Analysis#: " + "the plan is weak. " * 5) is None
    assert parse_optimized_method("Step 2 #Optimized Method#: too short") is None
    assert parse_optimized_method("I would improve the plan step.") is None


def test_optimizer_answer_without_any_header_is_taken_whole():
    text = "Step 1: list ways to add depth. Step 2: plan. Step 3: rewrite. Step 4: review."
    assert parse_optimized_method(text) == text


def test_optimizer_answer_drops_an_echoed_answer_format():
    body = "Step 1: list methods. Step 2: plan them. Step 3: rewrite. Step 4: review it."
    text = (f"Step 1 #Analysis#: ok\nStep 2 #Optimized Method#:\n{body}\n"
            "Please reply strictly in the following format:\nStep 1 #Methods List#:")
    assert parse_optimized_method(text) == body


# --- the paper's failure types -----------------------------------------------------------


@pytest.mark.parametrize("answer, rule", [
    ("Understood. What would you like me to do with it?", STAGNANT_COMPLEXITY),
    ("Got it! Anything else you need?", STAGNANT_COMPLEXITY),
    ("Noted, thank you. What should the poem be about?", STAGNANT_COMPLEXITY),
    ("Sure! What kind of table do you mean?", INSUFFICIENT_QUALIFICATION),
    ("Of course. Could you tell me which language you want?", INSUFFICIENT_QUALIFICATION),
    ("Please provide the list of numbers first.", LOSS_OF_KEY_INFORMATION),
    ("Could you clarify which dataset you are referring to?", LOSS_OF_KEY_INFORMATION),
    ("You haven't provided the table, so I cannot compute the totals.", LOSS_OF_KEY_INFORMATION),
])
def test_each_paper_failure_type_fires_on_its_answer(answer, rule):
    assert [f.rule for f in paper_failure_types(answer) if f.fired] == [rule]


@pytest.mark.parametrize("answer", [
    "Sure! Leaves change colour because chlorophyll breaks down in autumn.",
    "Of course. Here is the function:\n```python\ndef biggest(xs): return max(xs)\n```",
    "Understood is a past participle; it means grasped.",
    "Paris is the capital of France. Would you like to know more?",
])
def test_real_answers_do_not_fire_the_paper_failure_types(answer):
    assert not any(f.fired for f in paper_failure_types(answer))


def test_long_or_truncated_answers_never_count_as_asking_back():
    long = "Sure! What kind of poem do you mean? " + "Here is a stanza about rain. " * 20
    assert not any(f.fired for f in paper_failure_types(long))
    assert not any(f.fired for f in paper_failure_types("Please provide", truncated=True))


# --- failure rate and selection ------------------------------------------------------------


def result(rid: str, *fired: str) -> DevResult:
    findings = [el.Finding(r, True, "") for r in fired] or [el.Finding("x", False, "")]
    return DevResult(rid, "p", "", None if UNPARSEABLE in fired else "a child", None, None,
                     findings)


def test_failure_rate_counts_failed_items_and_each_rule_once_per_item():
    results = [result("a"), result("b", UNPARSEABLE),
               result("c", el.HARD_TO_RESPOND, LOSS_OF_KEY_INFORMATION),
               result("d", el.NO_INFORMATION_GAIN), result("e")]
    s = failure_rate("m", results)
    assert (s.failures, s.total, s.failure_rate) == (3, 5, 0.6)
    assert s.rule_counts == {UNPARSEABLE: 1, el.HARD_TO_RESPOND: 1,
                             LOSS_OF_KEY_INFORMATION: 1, el.NO_INFORMATION_GAIN: 1}
    assert s.firings == 4


def test_failure_rate_of_a_clean_dev_set_is_zero():
    assert failure_rate("m", [result("a"), result("b")]).failure_rate == 0.0


def test_selection_picks_the_true_minimum_wherever_it_is():
    rates = [0.6, 0.3, 0.9, 0.1, 0.4]
    for shift in range(len(rates)):
        order = rates[shift:] + rates[:shift]
        cands = [Score(f"c{i}", r) for i, r in enumerate(order)]
        sel = select_candidate(Score("current", 0.7), cands)
        assert sel.winner == f"c{order.index(0.1)}" and sel.improved
        assert [c.failure_rate for c in sorted(cands, key=lambda c: sel.ranking.index(c.name))] \
            == sorted(order)


def test_selection_breaks_a_tie_by_fewer_rule_firings():
    a = Score("c1", 0.2, rule_counts={UNPARSEABLE: 1, el.HARD_TO_RESPOND: 2})
    b = Score("c2", 0.2, rule_counts={UNPARSEABLE: 2})
    assert select_candidate(Score("current", 0.5), [a, b]).winner == "c2"


def test_selection_breaks_a_full_tie_by_longer_instructions_then_order():
    a, b = Score("c1", 0.2, mean_words=10), Score("c2", 0.2, mean_words=14)
    assert select_candidate(Score("current", 0.5), [a, b]).winner == "c2"
    c, d = Score("c1", 0.2), Score("c2", 0.2)
    assert select_candidate(Score("current", 0.5), [c, d]).winner == "c1"


def test_current_method_stays_when_no_candidate_beats_it():
    sel = select_candidate(Score("current", 0.3), [Score("c1", 0.3), Score("c2", 0.5)])
    assert (sel.winner, sel.improved) == ("current", False)


def test_current_method_stays_when_the_optimizer_gave_no_candidate():
    sel = select_candidate(Score("current", 0.3), [Score("c1", None), Score("c2", None)])
    assert (sel.winner, sel.improved, sel.ranking) == ("current", False, [])


def test_a_missing_candidate_never_wins_over_a_real_one():
    sel = select_candidate(Score("current", 0.9), [Score("c1", None), Score("c2", 0.8)])
    assert sel.winner == "c2"


# --- method files ----------------------------------------------------------------------------


def test_initial_method_lists_plans_rewrites_reviews_and_ends_with_the_instruction():
    prompt = EvolvingMethod.initial().render("Name a fruit.")
    for section in ("#Methods List#", "#Plan#", "#Rewritten Instruction#",
                    "#Finally Rewritten Instruction#"):
        assert section in prompt
    assert prompt.endswith("#Instruction#:\nName a fruit.")


def test_a_new_method_body_is_literal_text_even_with_braces():
    method = EvolvingMethod.initial().with_body("Use {{ this }} and {% that %} literally.")
    assert "Use {{ this }} and {% that %} literally." in method.render("x")
    assert method.body == "{% raw %}Use {{ this }} and {% that %} literally.{% endraw %}" \
        or method.body == "Use {{ this }} and {% that %} literally."


def test_a_method_file_without_a_method_block_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "m.jinja"
    bad.write_text("Rewrite this harder: {{ instruction }}")
    with pytest.raises(AutoEvolError, match=re.escape(str(bad)) + ".*block method"):
        EvolvingMethod.load(bad)


def test_a_method_file_without_the_instruction_slot_is_refused(tmp_path):
    bad = tmp_path / "m.jinja"
    bad.write_text("{% block method %}Rewrite harder.{% endblock %}\nFormat: ...")
    with pytest.raises(AutoEvolError, match="instruction"):
        EvolvingMethod.load(bad)


def test_best_method_file_loads_as_an_evol_instruct_operation(tmp_path):
    method = EvolvingMethod.initial().with_body("Rewrite {{ it }} harder, step by step.")
    (tmp_path / "auto_evol.jinja").write_text(method.source)
    op = load_operations(tmp_path)["auto_evol"]
    assert op.render("Name a fruit.") == method.render("Name a fruit.")


# --- the sections wrapper ----------------------------------------------------------------


class Canned(LLM):
    model_id = "canned"

    def __init__(self, text: str) -> None:
        self.text = text

    async def chat(self, messages, params):
        return Completion(self.text, "stop", 3, 4, model="canned")

    async def complete(self, text, params):  # pragma: no cover
        raise NotImplementedError


def test_wrapper_returns_the_final_instruction_under_its_own_model_id():
    inner = Canned("Step 3 #Rewritten Instruction#: A\nStep 4 #Finally Rewritten Instruction#: B")
    wrapper = SectionsLLM(inner)
    out = asyncio.run(wrapper.chat([{"role": "user", "content": "x"}], SamplingParams()))
    assert (out.text, out.completion_tokens) == ("B", 4)
    assert wrapper.model_id == "canned" + MODEL_ID_SUFFIX != inner.model_id


def test_wrapper_returns_empty_text_for_an_unparseable_answer():
    wrapper = SectionsLLM(Canned("I like this instruction."))
    out = asyncio.run(wrapper.chat([{"role": "user", "content": "x"}], SamplingParams()))
    assert out.text == ""


# --- the search loop on the fake LLM ---------------------------------------------------------


def test_search_writes_every_method_version_feedback_and_failure_rates(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 8)
    found = search(seeds, tmp_path / "run", small_config(), models=fake_models())
    m = tmp_path / "run" / "methods"
    assert (m / "step_0" / "method.jinja").read_text() == EvolvingMethod.initial().source
    for k in (1, 2):
        d = m / f"step_{k}"
        assert json.loads((d / "feedback.json").read_text())[0]["feedback"]
        assert len((d / "trajectories.jsonl").read_text().splitlines()) == 2
        for j in (1, 2, 3):
            ev = json.loads((d / f"candidate_{j}" / "evaluation.json").read_text())
            assert set(ev["score"]) >= {"failure_rate", "rule_counts", "failures", "total"}
            assert (d / f"candidate_{j}" / "method.jinja").exists()
        assert json.loads((d / "step.json").read_text())["step"] == k
    assert (m / "best" / "auto_evol.jinja").read_text() == found.best_method.source
    assert json.loads((m / "history.json").read_text())["best"]["step"] == found.best.step


def test_search_keeps_the_candidate_with_the_lowest_dev_failure_rate(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 8)
    found = search(seeds, tmp_path / "run", small_config(), models=fake_models())
    step0, step1 = found.steps[0], found.steps[1]
    rates = {c["name"]: c["failure_rate"] for c in step1.candidates}
    assert step0.failure_rate > 0
    assert rates == {"candidate_1": rates["candidate_1"], "candidate_2": 1.0, "candidate_3": 0.0}
    assert step1.improved and step1.winner == "candidate_3"
    sel = json.loads((tmp_path / "run/methods/step_1/selection.json").read_text())
    assert sel["winner"] == step1.winner
    diff = (tmp_path / "run/methods/step_1/method.diff").read_text()
    assert "+GOOD method" in diff and "-You are an Instruction Rewriter" in diff


def test_unparseable_outputs_count_as_failures_on_the_dev_set(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 8)
    search(seeds, tmp_path / "run", small_config(steps=1), models=fake_models())
    d = tmp_path / "run/methods/step_1"
    for j in (1, 2, 3):
        ev = json.loads((d / f"candidate_{j}/evaluation.json").read_text())
        method = (d / f"candidate_{j}/method.jinja").read_text()
        if "BROKEN" in method:
            assert ev["score"]["failure_rate"] == 1.0
            assert ev["score"]["rule_counts"] == {UNPARSEABLE: 4}


def test_search_stops_when_patience_runs_out(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 8)
    found = search(seeds, tmp_path / "run", small_config(steps=6, patience=2),
                   models=fake_models())
    # Step 1 reaches a 0.0 failure rate; nothing can beat it, so steps 2-3 are stale.
    assert [r.step for r in found.steps] == [0, 1, 2, 3]
    assert "patience 2" in found.stopped
    assert not (tmp_path / "run/methods/step_4").exists()


def test_a_rerun_of_a_finished_search_makes_no_llm_call(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 8)
    search(seeds, tmp_path / "run", small_config(), models=fake_models())
    again = FakeLLM()
    search(seeds, tmp_path / "run", small_config(), models=fake_models(again))
    assert again.calls == []


def test_a_rerun_with_other_search_settings_is_refused(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 8)
    search(seeds, tmp_path / "run", small_config(steps=1), models=fake_models())
    with pytest.raises(AutoEvolError, match="candidates"):
        search(seeds, tmp_path / "run", small_config(steps=1, candidates=2),
               models=fake_models())


def test_optimizer_samples_use_distinct_seeds(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 8)
    llm = FakeLLM()
    search(seeds, tmp_path / "run", small_config(steps=1), models=fake_models(llm))
    optimize_seeds = [s for role, _, s in llm.calls if role == "optimize"]
    assert len(optimize_seeds) == len(set(optimize_seeds)) == 3


def test_evol_and_optimizer_may_be_different_backends(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 8)
    evol, optimizer = FakeLLM(), FakeLLM()
    search(seeds, tmp_path / "run", small_config(steps=1),
           models=SearchModels(evol, optimizer, evol, evol))
    assert {r for r, _, _ in optimizer.calls} == {"analysis", "optimize"}
    assert {r for r, _, _ in evol.calls} == {"evolve", "judge", "instruction_judge",
                                             "task_judge", "respond"}


def test_auto_evolve_runs_evol_instruct_with_the_best_method(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 6)
    result = auto_evolve(seeds, tmp_path / "run", small_config(steps=1, rounds=2),
                         models=fake_models(), progress=False)
    assert result.evolution is not None
    kept = list(RunDir(tmp_path / "run").kept())
    assert {r["lineage"]["operation"] for r in kept} == {"auto_evol"}
    assert {r["method"] for r in kept} == {"auto_evol"}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["total"]["attempted"] == 12  # 6 seeds x 2 rounds, counted under auto_evol
    s1 = {r["id"]: r for r in kept if r["lineage"]["seed_id"] == "s1"}
    assert s1["s1-r2"]["lineage"]["history"] == ["Seed number 1.", "Seed number 1. +1",
                                                 "Seed number 1. +1 +1"]
    assert (tmp_path / "run" / "summary.json").exists()
    log = (tmp_path / "run/methods/best/evolutions.jsonl").read_text().splitlines()
    assert json.loads(log[0])["raw"].startswith("Step 1 #Methods List#")


def test_dev_set_is_held_out_from_the_mini_batches(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 6)
    methods = tmp_path / "run" / "methods"
    search(seeds, tmp_path / "run", small_config(steps=2, dev_size=4, batch_size=2),
           models=fake_models(FakeLLM()))
    dev = {json.loads(line)["id"] for line in (methods / "dev_set.jsonl").read_text().splitlines()}
    batches = [{json.loads(line)["id"] for line in (methods / f"step_{k}" / "trajectories.jsonl")
                .read_text().splitlines()} for k in (1, 2)]
    assert len(dev) == 4
    assert all(len(b) == 2 and not b & dev for b in batches)


def test_a_pool_too_small_for_dev_set_and_mini_batch_is_a_clear_error(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 5)
    with pytest.raises(AutoEvolError, match=r"5 instructions cannot hold a dev set of 4 and "
                       r"mini-batches of 2 apart: give at least 6"):
        search(seeds, tmp_path / "run", small_config(steps=1, dev_size=4, batch_size=2),
               models=fake_models(FakeLLM()))


# --- the configuration: Evol-Instruct's embedded, Auto Evol's own beside it ---------------------

SEARCH_KEYS = {"evol_llm", "optimizer_llm", "response_llm", "judge_llm", "candidates",
               "trajectory_steps", "batch_size", "dev_size", "seed", "elimination", "failures",
               "evol_temperature", "evol_max_tokens", "optimizer_temperature",
               "optimizer_max_tokens", "analysis_max_tokens", "response_temperature",
               "response_max_tokens", "judge_max_tokens", "top_p", "column", "limit"}


def test_the_shared_settings_are_an_embedded_evol_config_with_auto_evols_defaults():
    cfg = AutoEvolConfig()
    assert isinstance(cfg.evol, EvolConfig)
    e = cfg.evol
    assert (e.rounds, e.evol_max_tokens, e.response_max_tokens, e.method) == (1, 192, 128,
                                                                              "auto_evol")
    assert AutoEvolConfig().evol is not cfg.evol  # a default_factory, never shared
    d = cfg.to_dict()
    assert d["evol"]["rounds"] == 1 and d["evol"]["evol_llm"]["model"] == "embedded"
    for name in ("evol_llm", "response_llm", "judge_llm", "rounds", "seed", "elimination",
                 "evol_temperature", "evol_max_tokens", "response_temperature",
                 "response_max_tokens", "judge_max_tokens", "top_p", "column", "skip_invalid",
                 "limit", "concurrency", "shared_cache"):
        assert name not in d and not hasattr(cfg, name), name
    assert json.loads(json.dumps(d)) == d


def test_search_key_is_flat_and_reads_the_shared_settings_from_evol():
    cfg = small_config(seed=7, evol_max_tokens=99, top_p=0.9, limit=5, candidates=2)
    key = cfg.search_key()
    assert set(key) == SEARCH_KEYS
    assert (key["seed"], key["evol_max_tokens"], key["top_p"], key["limit"],
            key["candidates"]) == (7, 99, 0.9, 5, 2)
    assert key["elimination"] == cfg.to_dict()["evol"]["elimination"]
    assert key["evol_llm"] == dataclasses.asdict(cfg.evol.evol_llm)


def test_a_rerun_with_another_shared_setting_is_refused(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 8)
    search(seeds, tmp_path / "run", small_config(steps=1), models=fake_models())
    with pytest.raises(AutoEvolError, match="evol_max_tokens"):
        search(seeds, tmp_path / "run", small_config(steps=1, evol_max_tokens=64),
               models=fake_models())


def test_check_accepts_rounds_zero_and_refuses_what_the_final_pass_cannot_run():
    small_config(rounds=0).check()  # search only
    with pytest.raises(AutoEvolError, match="rounds"):
        small_config(rounds=-1).check()
    with pytest.raises(AutoEvolError, match="operations"):
        small_config(operations=["deepening"]).check()
    with pytest.raises(AutoEvolError, match="operations"):
        small_config(weights={"deepening": 2.0}).check()
    with pytest.raises(AutoEvolError, match="executor"):
        small_config(executor="ray").check()


def test_rounds_zero_searches_only(tmp_path, monkeypatch):
    def no_evolve(*a, **kw):
        raise AssertionError("the final pass ran with rounds 0")

    monkeypatch.setattr(auto_evol_module, "evolve", no_evolve)
    seeds = write_seeds(tmp_path / "seeds.jsonl", 6)
    result = auto_evolve(seeds, tmp_path / "run", small_config(steps=1, rounds=0),
                         models=fake_models(), progress=False)
    assert result.evolution is None
    assert (tmp_path / "run/methods/best/auto_evol.jinja").exists()
    assert list(RunDir(tmp_path / "run").kept()) == []


def test_the_final_pass_runs_the_embedded_evol_config_with_only_the_operation_replaced(
        tmp_path, monkeypatch):
    real_evolve = auto_evol_module.evolve
    seen: list[EvolConfig] = []

    def capture(input_path, run_dir, config, **kw):
        seen.append(config)
        return real_evolve(input_path, run_dir, config, **kw)

    monkeypatch.setattr(auto_evol_module, "evolve", capture)
    seeds = write_seeds(tmp_path / "seeds.jsonl", 6)
    # Settings off every default, so a field dropped or copied wrong would show.
    cfg = small_config(steps=1, rounds=2, seed=5, evol_temperature=0.5, evol_max_tokens=150,
                       response_temperature=0.4, response_max_tokens=90, judge_max_tokens=8,
                       top_p=0.95, concurrency=7, keep_seeds=True, method="evol_instruct")
    before = dataclasses.replace(cfg.evol)
    auto_evolve(seeds, tmp_path / "run", cfg, models=fake_models(), progress=False)

    [final] = seen
    best = tmp_path / "run" / "methods" / "best"
    replaced = {"operations": ["auto_evol"], "ops_dir": str(best),
                "elimination": cfg.elimination_for_auto_evol(), "method": "auto_evol"}
    assert final == dataclasses.replace(cfg.evol, **replaced)
    for f in dataclasses.fields(EvolConfig):
        if f.name not in replaced:
            assert getattr(final, f.name) == getattr(cfg.evol, f.name), f.name
        else:
            assert getattr(final, f.name) == replaced[f.name], f.name
    assert final.elimination.evolving_prompt_patterns[
        :len(cfg.evol.elimination.evolving_prompt_patterns)] \
        == cfg.evol.elimination.evolving_prompt_patterns
    assert cfg.evol == before  # the embedded config itself is left as it was

    # config.yaml shows the whole config with the shared part nested, and what the final
    # pass set in it.
    conf = RunDir(tmp_path / "run").read_config()
    assert conf["job"] == "auto_evol" and conf["input"] == str(seeds)
    assert conf["evol"] == json.loads(json.dumps(dataclasses.asdict(cfg.evol)))
    assert conf["evol"]["rounds"] == 2 and conf["steps"] == 1 and "rounds" not in conf
    assert conf["final_pass"] == {"operations": ["auto_evol"], "ops_dir": str(best),
                                  "elimination": final.to_dict()["elimination"],
                                  "method": "auto_evol"}
