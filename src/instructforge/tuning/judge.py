"""Pairwise LLM-as-judge with position swapping (the Vicuna / MT-Bench / WizardLM protocol).

Each question is judged twice, once with the evaluated model's answer shown first (as A)
and once shown second (as B), because LLM judges favour a position. The two verdicts are
turned into the model's point of view and combined: when they agree the result stands, when
they disagree the question counts as a tie (MT-Bench's rule), and when one verdict could not
be parsed the other one decides. Unparseable verdicts are recorded as such, never guessed.

The judge is asked for the verdict alone with a choice constraint (:data:`VERDICT_CHOICES`,
MT-Bench's ``[[A]]`` / ``[[B]]`` / ``[[C]]``), so a server with structured output can only
answer a verdict; :func:`parse_verdict` reads that (bare, or as ``{"answer": "[[A]]"}``) and
the free text of a server that ignored the constraint.

>>> parse_verdict("Both are fine but A is more precise. [[A]]")
'A'
>>> combine(model_view("A", model_is="A"), model_view("A", model_is="B"))
'tie'
"""

from __future__ import annotations

import re
from typing import Any

from instructforge.llm.base import Message
from instructforge.llm.structured import CHOICE_KEY, read_json
from instructforge.tuning.prompts import render

OUTCOMES = ("win", "tie", "loss")
VERDICT_CHOICES = ("[[A]]", "[[B]]", "[[C]]")
"""The answers the judge is constrained to: A better, B better, a tie."""
PROTOCOL = "verdict-choice-1"
"""Names how the judge is asked (prompt and constraint); part of the eval record ids, so a
changed protocol re-judges instead of reusing verdicts given to the old one."""

_BRACKET_RE = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
# "Final verdict: B", "Verdict - [A]", "verdict is **tie**"
_VERDICT_RE = re.compile(
    r"verdict\s*(?:is)?\s*[:\-]?\s*[\"'*\[(]*\s*(A|B|C|tie)\b", re.IGNORECASE
)
_BETTER_RE = re.compile(
    r"\b(?:assistant|answer)\s+(A|B)(?:'s answer)?\s+is\s+(?:clearly\s+|much\s+|slightly\s+)?"
    r"(?:better|superior|more helpful|the winner)",
    re.IGNORECASE,
)


def judge_messages(question: str, answer_a: str, answer_b: str) -> list[Message]:
    """The chat sent to the judge for one ordering of the two answers."""
    return [
        {"role": "system", "content": render("judge_pairwise_system")},
        {
            "role": "user",
            "content": render(
                "judge_pairwise", question=question, answer_a=answer_a, answer_b=answer_b
            ),
        },
    ]


def _norm(v: str) -> str:
    v = v.upper()
    return "tie" if v in ("C", "TIE") else v


def parse_verdict(text: str) -> str | None:
    """``"A"``, ``"B"``, ``"tie"`` or None from a judge's answer.

    The constrained answer first: one of :data:`VERDICT_CHOICES` (or ``A`` / ``B`` / ``C`` /
    ``tie``), bare or as ``{"answer": ...}``. In free text the last ``[[X]]`` wins (judges
    often restate the format before deciding); without one, a "verdict: X" phrase, then
    "Assistant X is better" when only one side is named.

    >>> parse_verdict("[[B]]"), parse_verdict('{"answer": "[[C]]"}')
    ('B', 'tie')
    >>> parse_verdict("Format: [[A]], [[B]] or [[C]]. My verdict: [[C]]")
    'tie'
    >>> parse_verdict("I cannot decide.") is None
    True
    """
    if not text:
        return None
    value = read_json(text)
    answer = value.get(CHOICE_KEY) if isinstance(value, dict) else value
    if isinstance(answer, str):
        bare = answer.strip().strip("[]").strip()
        if bare.upper() in ("A", "B", "C", "TIE"):
            return _norm(bare)
    bare = text.strip().strip("[]").strip()
    if bare.upper() in ("A", "B", "C", "TIE"):
        return _norm(bare)
    tags = _BRACKET_RE.findall(text)
    if tags:
        return _norm(tags[-1])
    phrases = _VERDICT_RE.findall(text)
    if phrases:
        return _norm(phrases[-1])
    better = {_norm(v) for v in _BETTER_RE.findall(text)}
    if len(better) == 1:
        return better.pop()
    return None


def model_view(verdict: str | None, *, model_is: str) -> str | None:
    """A verdict seen from the evaluated model's side, which was shown as ``model_is``.

    >>> model_view("B", model_is="B"), model_view("B", model_is="A"), model_view("tie", model_is="A")
    ('win', 'loss', 'tie')
    """
    if verdict is None:
        return None
    if verdict == "tie":
        return "tie"
    return "win" if verdict == model_is else "loss"


def combine(first: str | None, second: str | None) -> str:
    """One outcome from the two orderings' outcomes (model's view): win, tie, loss or error.

    >>> combine("win", "win"), combine("win", "loss"), combine(None, "loss"), combine(None, None)
    ('win', 'tie', 'loss', 'error')
    """
    if first is None and second is None:
        return "error"
    if first is None or second is None:
        return first or second  # type: ignore[return-value]
    return first if first == second else "tie"


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Win/tie/loss counts and rates over per-question results.

    Each row has ``outcome`` and the two orderings' ``verdicts`` (model view). Rates are over
    questions with a valid outcome; ``score`` counts a tie as half a win; ``consistency`` is
    the share of doubly-judged questions where both orderings agreed (the judge's order bias
    shows as low consistency); ``first_position_wins`` is how often the answer shown first won.

    >>> s = summarize([{"outcome": "win", "verdicts": ["win", "win"], "raw": ["A", "B"]}])
    >>> s["wins"], s["win_rate"], s["consistency"]
    (1, 1.0, 1.0)
    """
    counts = {k: 0 for k in (*OUTCOMES, "error")}
    both = agree = 0
    first_pos = decided = 0
    for r in rows:
        counts[r["outcome"]] += 1
        v1, v2 = r.get("verdicts", [None, None])
        if v1 is not None and v2 is not None:
            both += 1
            agree += v1 == v2
        # The answer shown first is labelled A in both orderings.
        for raw in r.get("raw", []):
            if raw in ("A", "B"):
                decided += 1
                first_pos += raw == "A"
    valid = counts["win"] + counts["tie"] + counts["loss"]

    def rate(n: int) -> float | None:
        return round(n / valid, 4) if valid else None

    return {
        "questions": len(rows),
        "wins": counts["win"],
        "ties": counts["tie"],
        "losses": counts["loss"],
        "errors": counts["error"],
        "win_rate": rate(counts["win"]),
        "tie_rate": rate(counts["tie"]),
        "loss_rate": rate(counts["loss"]),
        "score": round((counts["win"] + 0.5 * counts["tie"]) / valid, 4) if valid else None,
        "consistency": round(agree / both, 4) if both else None,
        "first_position_wins": round(first_pos / decided, 4) if decided else None,
    }
