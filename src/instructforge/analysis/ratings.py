"""LLM-judge ratings with Magpie's scales: input quality, difficulty and task category.

Each rating is a prompt template (``prompts/analysis/{quality,difficulty,category}.jinja``)
asking for one label, sent with a choice constraint (``SamplingParams.choices`` = the scale's
labels or the category list), so a server with structured output can only answer a label.
The reader takes that constrained answer (the bare label, or ``{"answer": LABEL}`` where the
server enforces JSON) and, from a server that ignored the constraint, the judge's JSON,
markdown or bare answers, but never guesses: an answer that names no label, or several, is
recorded as ``unparseable`` with its raw text.

>>> parse_rating(RATINGS["quality"], '{"answer": "good"}')
'good'

>>> parse_scale('{"input_quality": "good"}', QUALITY_SCALE, ("input_quality",))
'good'
>>> parse_scale('{"difficulty": "[very easy/easy/medium/hard/very hard]"}',
...             DIFFICULTY_SCALE, ("difficulty",)) is None
True
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from instructforge import prompt_files
from instructforge.analysis.parsing import clean_label, find_json
from instructforge.llm.base import LLM, Completion, Message, SamplingParams
from instructforge.llm.structured import CHOICE_KEY, read_choice, read_json
from instructforge.records import Record, instruction, stable_seed

QUALITY_SCALE = ("very poor", "poor", "average", "good", "excellent")
DIFFICULTY_SCALE = ("very easy", "easy", "medium", "hard", "very hard")
TASK_CATEGORIES = (
    "Information seeking", "Reasoning", "Planning", "Editing", "Coding & Debugging", "Math",
    "Role playing", "Data analysis", "Creative writing", "Advice seeking", "Brainstorming",
    "Others",
)
# Spellings small judges use for the same category.
_CATEGORY_ALIASES = {
    "information seeking": "Information seeking", "information": "Information seeking",
    "coding": "Coding & Debugging", "debugging": "Coding & Debugging",
    "coding and debugging": "Coding & Debugging", "code": "Coding & Debugging",
    "mathematics": "Math", "maths": "Math", "roleplay": "Role playing",
    "role play": "Role playing", "role-playing": "Role playing", "other": "Others",
    "data analysis": "Data analysis", "creative writing": "Creative writing",
    "advice": "Advice seeking", "advice seeking": "Advice seeking",
}
UNPARSEABLE = "unparseable"

ChatFn = Callable[[LLM, list[Message], SamplingParams, str], Awaitable[Completion]]
"""``chat(llm, messages, params, step)``: how a judge call is made (the engine's ``ctx.chat``
gives caching and token accounting; the default calls the backend directly)."""


@dataclass(frozen=True)
class RatingKind:
    """One judge rating: its template, the JSON keys holding the answer, and its scale."""

    name: str
    template: str
    keys: tuple[str, ...]
    scale: tuple[str, ...] | None  # None: a category, not an ordered scale

    @property
    def step(self) -> str:
        return f"rate_{self.name}"

    @property
    def choices(self) -> tuple[str, ...]:
        """The answers the judge is constrained to: the scale's labels or the categories."""
        return self.scale if self.scale is not None else TASK_CATEGORIES


RATINGS: dict[str, RatingKind] = {
    "quality": RatingKind("quality", "quality.jinja", ("input_quality", "quality", "rating"),
                          QUALITY_SCALE),
    "difficulty": RatingKind("difficulty", "difficulty.jinja", ("difficulty", "difficulty_level",
                             "rating"), DIFFICULTY_SCALE),
    "category": RatingKind("category", "category.jinja", ("primary_tag", "task_category",
                           "category", "primary", "task"), None),
}


def render_prompt(template: str, **variables: Any) -> str:
    """Render ``prompts/analysis/<template>`` with ``variables``.

    >>> "Query: Hi" in render_prompt("tags.jinja", input="Hi")
    True
    """
    return prompt_files.render_prompt("analysis", template, **variables)


def _label_regex(labels: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first, so "very hard" wins over "hard".
    alts = sorted((re.escape(x) for x in labels), key=len, reverse=True)
    return re.compile(r"(?<![a-z])(" + "|".join(alts) + r")(?![a-z])")


def match_label(value: Any, scale: tuple[str, ...]) -> str | None:
    """The one scale label ``value`` names, or None when it names none or several.

    Accepts ``"Hard"``, ``"**very hard**"``, ``"hard - needs calculus"`` and the 1-based
    position (``4`` or ``"4/5"``).

    >>> match_label("Very Hard.", DIFFICULTY_SCALE), match_label(4, DIFFICULTY_SCALE)
    ('very hard', 'hard')
    >>> match_label("easy or hard", DIFFICULTY_SCALE) is None
    True
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and float(value).is_integer():
        n = int(value)
        return scale[n - 1] if 1 <= n <= len(scale) else None
    if not isinstance(value, str):
        return None
    text = clean_label(value)
    m = re.fullmatch(r"(\d)(?:\s*/\s*" + str(len(scale)) + r")?", text)
    if m:
        return match_label(int(m.group(1)), scale)
    found = set(_label_regex(scale).findall(text))
    # A long sentence that mentions one label is commentary, not an answer.
    if len(found) == 1 and len(text.split()) <= 8:
        return found.pop()
    return None


def _key_value_lines(text: str, keys: tuple[str, ...]) -> list[str]:
    """Values of ``key: value`` lines (markdown and JSON-ish quoting tolerated)."""
    names = "|".join(re.escape(k).replace("_", "[_ ]") for k in keys)
    pattern = re.compile(
        r"^[\s>*#\-\"']*(?:" + names + r")[\s*\"']*[:=]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE
    )
    return [m.group(1) for m in pattern.finditer(text or "")]


def parse_scale(text: str, scale: tuple[str, ...], keys: tuple[str, ...]) -> str | None:
    """The rating label in a judge's answer, or None when it cannot be read without guessing.

    Tried in order: a JSON object with one of ``keys``; a ``key: label`` line; an answer that
    is nothing but a label, or whose first line is (the prompts ask for the label alone, and
    small judges add a paragraph after it).

    >>> parse_scale("**Difficulty:** Hard\\nBecause...", DIFFICULTY_SCALE, ("difficulty",))
    'hard'
    >>> parse_scale("Excellent", QUALITY_SCALE, ("input_quality",))
    'excellent'
    >>> parse_scale("Very easy.\\n\\nThe query asks for a sum.", DIFFICULTY_SCALE, ("difficulty",))
    'very easy'
    >>> parse_scale("It is a fine question.", QUALITY_SCALE, ("input_quality",)) is None
    True
    """
    for obj in find_json(text):
        if isinstance(obj, dict):
            for key in keys:
                if key in obj:
                    label = match_label(obj[key], scale)
                    if label is not None:
                        return label
    for value in _key_value_lines(text, keys):
        label = match_label(value, scale)
        if label is not None:
            return label
    for candidate in (text, _first_line(text)):
        cleaned = clean_label(candidate)
        if cleaned in scale:
            return cleaned
    return None


def _first_line(text: str) -> str:
    return next((line for line in (text or "").splitlines() if line.strip()), "")


def match_category(value: Any) -> str | None:
    """The Magpie task category ``value`` names (case, ``&``/``and`` and aliases forgiven).

    >>> match_category("coding and debugging"), match_category("**Math**")
    ('Coding & Debugging', 'Math')
    >>> match_category("<primary tag>") is None
    True
    """
    if not isinstance(value, str):
        return None
    text = clean_label(value).replace("&", "and")
    names = {clean_label(c).replace("&", "and"): c for c in TASK_CATEGORIES}
    names.update(_CATEGORY_ALIASES)
    if text in names:
        return names[text]
    found = {names[x] for x in _label_regex(tuple(names)).findall(text)}
    if len(found) == 1 and len(text.split()) <= 8:
        return found.pop()
    return None


def parse_category(text: str, keys: tuple[str, ...] = RATINGS["category"].keys) -> str | None:
    """The primary task category in a judge's answer, or None: a JSON object with one of
    ``keys``, a ``key: category`` line, or a short answer (or first line) naming one category.

    >>> parse_category('{"primary_tag": "Math", "other_tags": ["Reasoning"]}')
    'Math'
    >>> parse_category("Creative writing\\n\\nThe user wants a poem.")
    'Creative writing'
    """
    for obj in find_json(text):
        if isinstance(obj, dict):
            for key in keys:
                if key in obj:
                    cat = match_category(obj[key])
                    if cat is not None:
                        return cat
    for value in _key_value_lines(text, keys):
        cat = match_category(value)
        if cat is not None:
            return cat
    for candidate in (text, _first_line(text)):
        if len(candidate.split()) <= 4:
            cat = match_category(candidate)
            if cat is not None:
                return cat
    return None


def constrained_choice(text: str, choices: tuple[str, ...]) -> str | None:
    """The choice when ``text`` is a constrained answer, else None.

    A constrained answer is exactly one of ``choices`` (case, quotes and markdown forgiven),
    ``{"answer": CHOICE}`` or a JSON string, as servers with structured output return it.
    Free text is left to the tolerant parsers, which never take a choice merely mentioned.

    >>> constrained_choice('{"answer": "very hard"}', DIFFICULTY_SCALE)
    'very hard'
    >>> constrained_choice("Hard", DIFFICULTY_SCALE)
    'hard'
    >>> constrained_choice("easy or hard", DIFFICULTY_SCALE) is None
    True
    """
    value = read_json(text or "")
    if isinstance(value, dict):
        value = value.get(CHOICE_KEY)
    candidate = value if isinstance(value, str) else (text or "")
    choice = read_choice(candidate, choices)
    if choice is not None and clean_label(candidate) == clean_label(choice):
        return choice
    return None


def parse_rating(kind: RatingKind, text: str) -> str | None:
    """The label in a judge's answer: the constrained answer (:func:`constrained_choice`),
    else :func:`parse_scale` or :func:`parse_category` for ``kind``; None when unreadable."""
    choice = constrained_choice(text, kind.choices)
    if choice is not None:
        return choice
    if kind.scale is None:
        return parse_category(text, kind.keys)
    return parse_scale(text, kind.scale, kind.keys)


def rating_result(kind: RatingKind, completion: Completion) -> dict[str, Any]:
    """What is stored per record: ``label``, 1-based ``score`` (scales only) and ``status``;
    an unparseable answer keeps its ``raw`` text and ``finish_reason`` instead.

    >>> rating_result(RATINGS["difficulty"], Completion('{"difficulty": "easy"}', "stop"))
    {'label': 'easy', 'score': 2, 'status': 'ok'}
    """
    label = parse_rating(kind, completion.text)
    if label is None:
        return {"label": None, "score": None, "status": UNPARSEABLE,
                "raw": completion.text[:500], "finish_reason": completion.finish_reason}
    out: dict[str, Any] = {"label": label}
    if kind.scale is not None:
        out["score"] = kind.scale.index(label) + 1
    out["status"] = "ok"
    return out


async def direct_chat(llm: LLM, messages: list[Message], params: SamplingParams,
                      step: str) -> Completion:
    """A :data:`ChatFn` that calls the backend directly (no cache, no accounting)."""
    return await llm.chat(messages, params)


async def rate(
    record: Record,
    llm: LLM,
    kind: str | RatingKind,
    *,
    chat: ChatFn = direct_chat,
    max_tokens: int = 256,
) -> dict[str, Any]:
    """Ask ``llm`` for one rating of ``record``'s instruction; see :func:`rating_result`.

    >>> await rate(record, llm, "quality")        # doctest: +SKIP
    {'label': 'good', 'score': 4, 'status': 'ok'}
    """
    k = RATINGS[kind] if isinstance(kind, str) else kind
    choices = k.choices
    messages = [{"role": "user", "content": render_prompt(k.template, input=instruction(record),
                                                          choices=choices)}]
    # Greedy and seeded: a rating is a measurement, and a rerun must hit the cache. The
    # choice constraint makes the answer a label on servers with structured output; others
    # answer in free text, read by the tolerant parsers.
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens,
                            seed=stable_seed(record.get("id", ""), k.step), choices=choices)
    return rating_result(k, await chat(llm, messages, params, k.step))
