"""Magpie's filters: each one drops what it should, keeps what it should, and says why."""

from __future__ import annotations

from instructforge.dedup import ExactDedup, NearDedup, normalise
from instructforge.methods.filters import (
    FilterConfig,
    TextFilters,
    check_incomplete,
    check_language,
    check_leakage,
    check_length,
    check_repetition,
)

GOOD_QUESTION = "How do I keep basil alive on a north-facing windowsill in winter?"
GOOD_ANSWER = (
    "Basil wants warmth and at least six hours of light. On a north-facing sill in winter, add "
    "a small LED grow light for ten to twelve hours a day, keep the pot away from cold glass, "
    "water only when the top centimetre of soil is dry, and pinch off flower buds so the plant "
    "keeps making leaves."
)


# -- length -----------------------------------------------------------------------------------

def test_empty_text_is_rejected_as_empty():
    r = check_length("   \n", field="instruction", min_chars=10, max_chars=100)
    assert r is not None and r.rule == "empty"


def test_too_short_text_is_rejected_with_its_length():
    r = check_length("Hi?", field="instruction", min_chars=10, max_chars=100)
    assert r is not None and r.rule == "too_short" and r.evidence == {"chars": 3}


def test_too_long_text_is_rejected():
    r = check_length("x" * 101, field="response", min_chars=1, max_chars=100)
    assert r is not None and r.rule == "too_long"


def test_text_within_limits_passes_the_length_filter():
    assert check_length(GOOD_QUESTION, field="instruction", min_chars=10, max_chars=2000) is None


# -- incomplete -------------------------------------------------------------------------------

def test_text_cut_at_max_tokens_is_incomplete():
    r = check_incomplete("length", field="response")
    assert r is not None and r.rule == "incomplete"


def test_text_that_stopped_on_its_own_is_complete():
    assert check_incomplete("stop", field="response") is None


# -- repetition -------------------------------------------------------------------------------

def test_a_looping_phrase_is_repetition():
    r = check_repetition("I like cats and dogs. " * 8, field="response")
    assert r is not None and r.rule == "repetition"
    assert r.evidence["repeated_3gram_ratio"] > 0.3


def test_a_character_loop_is_repetition():
    r = check_repetition("Answer: " + "=" * 400, field="response")
    assert r is not None and "compression_ratio" in r.evidence


def test_fluent_text_is_not_repetition():
    assert check_repetition(GOOD_ANSWER, field="response") is None


def test_a_short_answer_is_never_called_repetitive():
    assert check_repetition("Yes, yes, yes.", field="response") is None


# -- template leakage -------------------------------------------------------------------------

def test_template_tokens_in_the_text_are_leakage():
    r = check_leakage("What is AI?<|im_end|>\n<|im_start|>assistant", field="instruction")
    assert r is not None and r.rule == "template_leakage"
    assert r.evidence == ["<|im_end|>", "<|im_start|>"]


def test_a_families_own_tokens_are_found_even_if_unusual():
    r = check_leakage("hello <|role_end|> there", field="response",
                      special_tokens=("<|role_end|>",))
    assert r is not None and "<|role_end|>" in r.evidence


def test_other_families_markup_is_leakage_too():
    assert check_leakage("[INST] tell me a joke", field="instruction") is not None


def test_ordinary_angle_brackets_are_not_leakage():
    assert check_leakage("Use <div> and a < b in code, or [1, 2].", field="response") is None


# -- language ---------------------------------------------------------------------------------

def test_text_in_another_language_is_rejected_with_the_language_found():
    r = check_language("Wie kann ich mein Fahrrad im Winter am besten lagern?",
                       field="instruction", languages=("en",))
    assert r is not None and r.rule == "language" and r.evidence["language"] == "de"


def test_text_in_an_allowed_language_passes():
    assert check_language(GOOD_QUESTION, field="instruction", languages=("en",)) is None


def test_very_short_text_skips_language_id():
    assert check_language("Merci!", field="instruction", languages=("en",)) is None


# -- exact duplicates -------------------------------------------------------------------------

def test_same_text_up_to_case_and_punctuation_is_an_exact_duplicate():
    d = ExactDedup()
    d.add("What is a black hole?", "magpie-1")
    r = d.check("  what is a BLACK hole ")
    assert r is not None and r.rule == "exact_duplicate" and r.evidence["duplicate_of"] == "magpie-1"


def test_different_text_is_not_an_exact_duplicate():
    d = ExactDedup()
    d.add("What is a black hole?", "magpie-1")
    assert d.check("What is a white dwarf?") is None


def test_normalise_ignores_case_punctuation_and_spacing():
    assert normalise("Hello,   WORLD!") == "hello world"


# -- near duplicates --------------------------------------------------------------------------

def test_a_lightly_reworded_text_is_a_near_duplicate():
    d = NearDedup(threshold=0.7)
    d.add("I'm planning a trip to Japan next spring and I want to see the cherry blossoms. "
          "Can you suggest an itinerary for two weeks?", "magpie-3")
    r = d.check("I'm planning a trip to Japan next spring and I want to see the cherry blossoms. "
                "Could you suggest an itinerary for two weeks?")
    assert r is not None and r.rule == "near_duplicate"
    assert r.evidence["duplicate_of"] == "magpie-3" and r.evidence["jaccard"] >= 0.7


def test_a_different_request_on_the_same_topic_is_not_a_near_duplicate():
    d = NearDedup(threshold=0.7)
    d.add("I'm planning a trip to Japan next spring; suggest a two-week itinerary.", "magpie-3")
    assert d.check("What documents do I need to rent a car in Japan as a tourist?") is None


# -- the combined filter ----------------------------------------------------------------------

def test_each_filter_can_be_switched_off():
    looping = "I like cats and dogs. " * 8
    on = TextFilters(FilterConfig())
    off = TextFilters(FilterConfig(repetition=False))
    assert on.check(looping, field="response") is not None
    assert off.check(looping, field="response") is None


def test_language_filter_off_keeps_any_language():
    f = TextFilters(FilterConfig(languages=None))
    assert f.check("Wie kann ich mein Fahrrad im Winter am besten lagern?",
                   field="instruction") is None


def test_incomplete_is_checked_before_length():
    r = TextFilters().check("", field="response", finish_reason="length")
    assert r is not None and r.rule == "incomplete"


def test_an_instruction_and_a_response_use_their_own_length_limits():
    f = TextFilters(FilterConfig(min_instruction_chars=10, min_response_chars=2))
    assert f.check("Yes.", field="response") is None
    assert f.check("Yes.", field="instruction (turn 2)").rule == "too_short"


def test_with_length_off_an_empty_text_is_still_dropped():
    r = TextFilters(FilterConfig(length=False)).check("", field="response")
    assert r is not None and r.rule == "empty"


def test_dedup_only_knows_what_was_remembered():
    f = TextFilters()
    assert f.check_duplicate(GOOD_QUESTION) is None
    f.remember(GOOD_QUESTION, "magpie-0")
    assert f.check_duplicate(GOOD_QUESTION).rule == "exact_duplicate"


def test_with_exact_dedup_off_a_copy_is_caught_only_as_a_near_duplicate():
    f = TextFilters(FilterConfig(exact_dedup=False))
    f.remember(GOOD_QUESTION, "magpie-0")
    assert f.check_duplicate(GOOD_QUESTION).rule == "near_duplicate"


def test_with_near_dedup_off_a_rewording_passes():
    f = TextFilters(FilterConfig(near_dedup=False))
    f.remember(GOOD_QUESTION, "magpie-0")
    assert f.check_duplicate(GOOD_QUESTION.replace("How do I", "How can I")) is None
    assert f.check_duplicate(GOOD_QUESTION).rule == "exact_duplicate"


def test_a_good_pair_passes_every_filter():
    f = TextFilters(FilterConfig(), special_tokens=("<|im_start|>", "<|im_end|>"))
    assert f.check(GOOD_QUESTION, field="instruction") is None
    assert f.check(GOOD_ANSWER, field="response") is None


def test_a_record_is_never_its_own_duplicate():
    # On resume a record written before a crash is already in the index under its own id.
    f = TextFilters()
    f.remember(GOOD_QUESTION, "magpie-0")
    assert f.check_duplicate(GOOD_QUESTION, exclude="magpie-0") is None
    assert f.check_duplicate(GOOD_QUESTION, exclude="magpie-1") is not None
