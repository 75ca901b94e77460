"""Our checks beyond the paper's four rules, the rule-4 echo fix, and the one elimination
that Evol-Instruct and Auto Evol-Instruct share (rule sets, order, judge questions)."""

from __future__ import annotations

import asyncio

import pytest

from instructforge.methods import eliminate as el
from instructforge.methods.eliminate import (
    EliminationConfig,
    answer_opening,
    check_instruction,
    check_response,
    copies_evolving_prompt,
    degenerate_repetition,
    lost_the_task,
    no_information_gain,
    normalise_instruction,
    not_an_instruction,
    truncated_evolution,
)

# --- rule 4 cannot be bypassed by cleaning --------------------------------------------------


@pytest.mark.parametrize("raw", [
    # Truncated loops of the evolving prompt seen from the embedded model: cleaning kept only
    # the tail, which rule 4 alone let through.
    "#The Given Prompt#:\nWhat is 2 + 2?\n\n#Rewritten Prompt#:\nThe Rewritten",
    "#The Given Prompt#: Say hello.\n#Rewritten Prompt#: #Good Morning,\nRew",
    "#Given Prompt#: Name a fruit.\n#Rewritten Prompt#: Name a fruit.\n#Rewritten Prompt#: Name",
])
def test_rule4_fires_on_an_echo_that_cleaning_cut_away(raw):
    child, norms = normalise_instruction(raw)
    assert "echoed_scaffold" in [n["name"] for n in norms]
    assert not copies_evolving_prompt(child).fired  # the tail alone looks harmless
    f = copies_evolving_prompt(child, normalisations=norms)
    assert f.fired and f.evidence["where"] == "echo"


@pytest.mark.parametrize("raw", [
    "#Rewritten Prompt#: List three rare fruits and where they grow.",
    "**Rewritten prompt:**\nList three rare fruits and where they grow.",
    '"List three rare fruits and where they grow."',
])
def test_rule4_an_output_label_is_formatting_not_an_echo(raw):
    child, norms = normalise_instruction(raw)
    assert child == "List three rare fruits and where they grow."
    assert not copies_evolving_prompt(child, normalisations=norms).fired


@pytest.mark.parametrize("child, fired", [
    # Seen from Qwen2.5-Coder-1.5B on in-breadth, whose prompt asks for "a brand-new prompt".
    ("Here's a new prompt inspired by the given one, about shopping:\n\nSelect the shortest "
     "sentence in the paragraph.", True),
    ("Certainly! I'll create a brand-new prompt based on the essay question.", True),
    ("Write a new poem about the sea, in four lines.", False),
    ("Suggest a prompt for an image generator that shows a new city at night.", False),
])
def test_rule4_the_in_breadth_prompts_words_are_an_echo(child, fired):
    assert copies_evolving_prompt(child).fired is fired


def test_rule4_an_input_label_where_the_rewrite_should_be_is_an_echo():
    # Seen from the embedded model: the given-prompt label, then an answer to the parent.
    child, norms = normalise_instruction("#The Given Prompt#:\nTo help you choose a movie, "
                                         "I'd love to know more about your preferences.")
    assert child.startswith("To help you") and norms[0]["name"] == "leading_label"
    assert copies_evolving_prompt(child, normalisations=norms).fired


# --- truncated evolution, degenerate repetition --------------------------------------------


def test_truncated_evolution_fires_only_when_cut_at_the_limit():
    assert truncated_evolution("Write a sonnet about the sea that", True).fired
    assert not truncated_evolution("Write a sonnet about the sea.", False).fired


@pytest.mark.parametrize("text", [
    "Calculate the sum of 3 and 5. " * 8,
    "List the steps.\nList the steps.\nList the steps.\nThen stop.",
    "What is the capital of France? What is the capital of France? What is the capital of "
    "France? What is the capital of France? What is the capital of France?",
])
def test_degenerate_repetition_fires_on_repeating_text(text):
    assert degenerate_repetition(text).fired


@pytest.mark.parametrize("text", [
    "Write a Python function that returns the n-th Fibonacci number, explain its time "
    "complexity, and give a version that runs in linear time with constant memory.",
    "Sort these numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16.",
    "Translate 'good morning' into French.",
])
def test_degenerate_repetition_does_not_fire_on_ordinary_instructions(text):
    assert not degenerate_repetition(text).fired


# --- not an instruction ---------------------------------------------------------------------


@pytest.mark.parametrize("child", [
    "The answer is: A rectangle has length 12 cm and width 8 cm. The area is 96 cm^2.",
    "Answer: 42",
    "Sure! Here is a harder version of your question.",
    "The given prompt asks for the area of a rectangle.",
    "In this rewritten version, the user must also explain the formula.",
    "Let's solve this step by step: first multiply 12 by 8.",
    "**The final answer is** 96.",
])
def test_answer_openings_are_caught_without_a_judge(child):
    assert answer_opening(child)
    f = not_an_instruction(child, None)
    assert f.fired and f.evidence["judge"] is None


@pytest.mark.parametrize("child", [
    "What is the area of a rectangle 12 cm long and 8 cm wide, in square metres?",
    "Here is a table of sales by month; find the month with the highest growth.",
    "Answer the following question in French: what is the capital of Peru?",
    "Solve for x: 3x + 5 = 20, and show each step.",
    "I want you to write a limerick about a cat.",
])
def test_instructions_do_not_open_like_answers(child):
    assert answer_opening(child) is None


@pytest.mark.parametrize("judge,fired", [
    ("Answer", True), ('{"answer": "Answer"}', True), ("Instruction", False),
    ('{"answer": "Instruction"}', False),
])
def test_not_an_instruction_reads_the_constrained_verdict(judge, fired):
    f = not_an_instruction("If 1 + 4 = 5, and you add another one, you get 7.", judge)
    assert f.fired is fired and f.evidence["verdict"] in ("Answer", "Instruction")


def test_not_an_instruction_unreadable_verdict_keeps_and_says_so():
    f = not_an_instruction("Describe a tree.", "Hmm, hard to say.")
    assert not f.fired and f.evidence["verdict"] is None and "unreadable" in f.reason


# --- lost the task --------------------------------------------------------------------------


def test_lost_the_task_fires_on_no_and_not_on_yes():
    assert lost_the_task("No").fired
    assert lost_the_task('{"answer": "No"}').fired
    assert not lost_the_task("Yes").fired


@pytest.mark.parametrize("parent,child", [
    # Seen from Qwen2.5-Coder-1.5B: the "harder" child refers to an input it no longer has.
    ("Sort the given list ascendingly.\nList: [10, 2, 5, -4, 92, 101]",
     "Sort the given list in ascending order, ensuring that the list contains only unique "
     "elements."),
    ("Translate this sentence into any Arabic dialect and say what dialect it is.\n"
     "The beautiful ones are not yet born",
     "Translate this sentence from any Arabic dialect and specify which dialect it is, then "
     "explain the process."),
])
def test_lost_the_task_fires_without_a_judge_when_the_input_is_gone(parent, child):
    f = lost_the_task(None, "add_constraints", parent=parent, child=child)
    assert f.fired and f.evidence["signal"] == "input_dropped"


@pytest.mark.parametrize("parent,child", [
    ("Sort the given list ascendingly.\nList: [10, 2, 5, -4, 92, 101]",
     "Sort this list ascendingly and say how many swaps bubble sort needs: "
     "[10, 2, 5, -4, 92, 101]"),
    ("Write a recommendation letter given the student's achievement.\nAchievement:\n"
     "- GPA 3.8\n- Excellent TA in the deep learning class\n- One paper with high impact",
     "Write a detailed recommendation letter for a student with a GPA of 3.8 who was an "
     "excellent TA in the deep learning class and has one paper with high impact."),
    ("Name three fruits.", "Name three tropical fruits and where they grow."),  # no input
])
def test_lost_the_task_keeps_a_child_that_kept_the_input(parent, child):
    assert not lost_the_task(None, "add_constraints", parent=parent, child=child).fired


def test_lost_the_task_input_check_skips_in_breadth():
    f = lost_the_task(None, "in_breadth", parent="Sort the list.\nList: [10, 2, 5, 92]",
                      child="Write a haiku about autumn.")
    assert not f.fired


def test_lost_the_task_is_not_asked_of_in_breadth_children():
    f = lost_the_task(None, "in_breadth")
    assert not f.fired and f.evidence["operation"] == "in_breadth"


# --- rule 1 with constrained answers --------------------------------------------------------


@pytest.mark.parametrize("judge,fired", [("Equal", True), ('{"answer": "Equal"}', True),
                                         ('{"answer": "Not Equal"}', False)])
def test_rule1_reads_constrained_answers(judge, fired):
    assert no_information_gain("Name a fruit.", "Name one fruit.", judge).fired is fired


# --- response rules -------------------------------------------------------------------------


def test_rule2_does_not_fire_on_an_answer_cut_at_the_limit():
    cfg = EliminationConfig()
    assert check_response("Sorry, the first step is to", cfg)[0].fired
    assert not check_response("Sorry, the first step is to", cfg, truncated=True)[0].fired


# --- one elimination: presets, order, judge questions --------------------------------------


class Judge:
    """Answers each judge question from a table; records what it was asked."""

    def __init__(self, equality="Not Equal", instruction="Instruction", task="Yes"):
        self.answers = {el.EQUALITY_CHOICES: equality, el.INSTRUCTION_CHOICES: instruction,
                        el.TASK_CHOICES: task}
        self.asked: list[tuple[str, ...]] = []

    async def __call__(self, prompt: str, choices: tuple[str, ...]) -> str:
        self.asked.append(choices)
        return self.answers[choices]


def check(parent, child, judge, cfg=None, **kw):
    return asyncio.run(check_instruction(parent, child, judge, cfg or EliminationConfig(), **kw))


def test_presets_paper_and_all():
    paper = EliminationConfig.preset("paper")
    assert paper.active() == list(el.RULES)
    assert EliminationConfig.preset("all").active() == list(el.ALL_RULES)
    assert EliminationConfig().active() == list(el.ALL_RULES)
    assert "lost_the_task" not in EliminationConfig.preset("all", ["lost_the_task"]).active()
    with pytest.raises(ValueError, match="unknown rule set"):
        EliminationConfig.preset("strict")
    with pytest.raises(ValueError, match="unknown rule"):
        EliminationConfig.preset("all", ["too_long"])


def test_a_valid_child_is_asked_all_three_questions_and_kept():
    judge = Judge()
    findings = check("Name a fruit.", "Name a fruit that grows in cold climates.", judge,
                     operation="add_constraints")
    assert el.first_fired(findings) is None
    assert judge.asked == [el.EQUALITY_CHOICES, el.INSTRUCTION_CHOICES, el.TASK_CHOICES]
    assert [f.rule for f in findings] == [
        "truncated_evolution", "copies_evolving_prompt", "degenerate_repetition",
        "no_information_gain", "not_an_instruction", "lost_the_task"]


def test_paper_rules_ask_only_the_equality_judge():
    judge = Judge(instruction="Answer", task="No")
    findings = check("Name a fruit.", "Name a fruit.", judge, EliminationConfig.preset("paper"))
    assert [f.rule for f in findings if f.fired] == ["no_information_gain"]
    findings = check("Name a fruit.", "The answer is apple.", judge,
                     EliminationConfig.preset("paper"), truncated=True)
    assert el.first_fired(findings) is None and judge.asked == [el.EQUALITY_CHOICES]


def test_cheap_checks_fire_before_any_judge_call():
    judge = Judge()
    for child, kw, rule in [
        ("Write a poem about", {"truncated": True}, "truncated_evolution"),
        ("Rewrite the given prompt.", {}, "copies_evolving_prompt"),
        ("Add 2 and 3. " * 12, {}, "degenerate_repetition"),
        ("The answer is 5.", {}, "not_an_instruction"),
    ]:
        assert el.first_fired(check("Add 2 and 3.", child, judge, **kw)).rule == rule
    assert judge.asked == []


def test_judge_verdicts_eliminate_with_their_own_rule():
    assert el.first_fired(check("A?", "B?", Judge(instruction="Answer"))).rule == \
        "not_an_instruction"
    assert el.first_fired(check("A?", "B?", Judge(task="No"), operation="deepening")).rule == \
        "lost_the_task"
    judge = Judge(task="No")
    assert el.first_fired(check("A?", "B?", judge, operation="in_breadth")) is None
    assert el.TASK_CHOICES not in judge.asked


def test_empty_child_is_eliminated_without_calls():
    judge = Judge()
    assert el.first_fired(check("A?", "  ", judge)).rule == el.EMPTY_INSTRUCTION
    assert judge.asked == []


def test_config_round_trips_through_plain_data():
    import json
    from dataclasses import asdict

    cfg = EliminationConfig.preset("paper", ["hard_to_respond"], short_response_words=50)
    assert EliminationConfig.from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg
