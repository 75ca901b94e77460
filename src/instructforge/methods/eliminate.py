"""Elimination evolving (WizardLM, METHODS.md section 1): when does an evolution fail?

The paper's four rules, each on its own field, each returning a :class:`Finding` with its
evidence whether it fired or not (so kept records carry their audit too):

1. :func:`no_information_gain` - parent vs child *instruction*, from an LLM's Equal / Not
   Equal judgement (asked with a choice constraint, read by :func:`parse_equality_verdict`);
2. :func:`hard_to_respond` - the *response* says "sorry" (or refuses) and is short;
3. :func:`only_stop_words` - the *response* is only punctuation and stop words;
4. :func:`copies_evolving_prompt` - the *instruction* copies words of the evolving prompt.

Our checks beyond the paper (on by default; ``EliminationConfig.preset("paper")`` runs the
four alone), for failures small models make that the four rules let through:

- :func:`truncated_evolution` - the evolution was cut at the token limit;
- :func:`degenerate_repetition` - the instruction repeats itself;
- :func:`not_an_instruction` - the child answers, solves or comments on its parent instead
  of asking something (cheap phrase signals, then a constrained LLM verdict);
- :func:`lost_the_task` - the child drops its parent's input (cheap word overlap) or its
  question (a constrained LLM verdict); not checked for in-breadth children, which are new
  tasks by design.

:func:`check_instruction` and :func:`check_response` run them in one order for every caller
(Evol-Instruct and Auto Evol-Instruct alike).

Small models wrap a good instruction in harmless formatting ("#Rewritten Prompt#:", quotes,
a markdown fence); :func:`normalise_instruction` removes that first and lists what it removed.
Rule 4 judges what remains *and* any echoed scaffolding the cleaning cut away: cleaning may
remove a wrapper, never hide an echo.

>>> copies_evolving_prompt("Rewrite the given prompt in French.").fired
True
>>> parse_equality_verdict("After comparing them: **Not Equal**.").label
'not_equal'
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any

from stop_words import get_stop_words

from instructforge.llm.structured import read_choice
from instructforge.prompt_files import render_prompt

NO_INFORMATION_GAIN = "no_information_gain"
HARD_TO_RESPOND = "hard_to_respond"
ONLY_STOP_WORDS = "only_stop_words"
COPIES_EVOLVING_PROMPT = "copies_evolving_prompt"
EMPTY_INSTRUCTION = "empty_instruction"
RULES = (NO_INFORMATION_GAIN, HARD_TO_RESPOND, ONLY_STOP_WORDS, COPIES_EVOLVING_PROMPT)
# Ours, beyond the paper (docs/evol-instruct.md says why each exists).
TRUNCATED_EVOLUTION = "truncated_evolution"
DEGENERATE_REPETITION = "degenerate_repetition"
NOT_AN_INSTRUCTION = "not_an_instruction"
LOST_THE_TASK = "lost_the_task"
EXTRA_RULES = (TRUNCATED_EVOLUTION, DEGENERATE_REPETITION, NOT_AN_INSTRUCTION, LOST_THE_TASK)
ALL_RULES = (*RULES, *EXTRA_RULES)
PRESETS = {"paper": RULES, "all": ALL_RULES}

# The judges' fixed answers (sent as a choice constraint).
EQUALITY_CHOICES = ("Equal", "Not Equal")
INSTRUCTION_CHOICES = ("Instruction", "Answer")
TASK_CHOICES = ("Yes", "No")

# Cheap signals that a child answers or comments instead of asking: how its opening reads.
# Each is matched at the start of the (cleaned) child, case-insensitively.
ANSWER_OPENINGS: tuple[str, ...] = (
    r"(?:the\s+)?(?:final\s+|correct\s+)?answer\s*(?:is\b|:)",
    r"(?:the\s+)?solution\s*(?:is\b|:)",
    r"(?:sure|certainly|of course|absolutely|okay|ok|great|yes|no)\s*[,!.:]",
    r"(?:the|this)\s+(?:given\s+|rewritten\s+|original\s+|new\s+)?"
    r"(?:prompt|instruction|question|task)\s+(?:is\s+(?:asking|about|a\b)|asks|requires|"
    r"wants|has\s+been)",
    r"(?:in\s+)?(?:this|the)\s+rewritten\s+(?:version|prompt|instruction)",
    r"(?:to\s+(?:solve|answer|calculate|find|determine)\s+(?:this|the)\b[^.?!]*,)",
    r"let'?s\s+(?:solve|break|think|calculate|start|begin|find)",
    r"(?:step\s*1\s*[:.)-])",
    r"i\s+(?:think|believe|have\s+rewritten|rewrote|would\s+rewrite)\b",
)

# Rule 4: words of the evolving prompts (templates under prompts/evol/). A regex each, so
# "#The Given Prompt#", "given  prompt" and "Given_Prompt" all count.
EVOLVING_PROMPT_PATTERNS: tuple[str, ...] = (
    r"given[\s_]*prompt",
    r"rewritten[\s_]*prompt",
    r"created[\s_]*prompt",
    r"(?:a|the|this|my)\s+(?:brand[\s-]*)?new[\s_]*prompt",  # in-breadth: "create a brand-new prompt"
    r"prompt[\s_]*rewriter",
    r"prompt[\s_]*creator",
)

# Rule 2: the paper's word is "sorry"; the other phrasings are how refusals usually read.
REFUSAL_PHRASES: tuple[str, ...] = (
    "sorry",
    "i apologize",
    "i apologise",
    "my apologies",
    "i cannot",
    "i can't",
    "i can not",
    "i am unable",
    "i'm unable",
    "i am not able",
    "i'm not able",
    "as an ai",
    "i don't have access",
    "i do not have access",
)
SHORT_RESPONSE_WORDS = 80  # the paper's threshold for rule 2

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


@dataclass
class Finding:
    """One rule's result on one record: whether it fired, why, and the evidence."""

    rule: str
    fired: bool
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EqualityVerdict:
    """A parsed Equal / Not Equal judgement. ``label`` is None when no verdict was found."""

    label: str | None  # "equal", "not_equal" or None
    matched: str | None = None
    ambiguous: bool = False  # both verdicts appear; the first one was taken


@dataclass(frozen=True)
class EliminationConfig:
    """Which rules run, and their knobs. The paper's four rules and our four checks are all
    on by default; :meth:`preset` builds ``paper`` (the four alone) or ``all``."""

    no_information_gain: bool = True
    hard_to_respond: bool = True
    only_stop_words: bool = True
    copies_evolving_prompt: bool = True
    truncated_evolution: bool = True
    degenerate_repetition: bool = True
    not_an_instruction: bool = True
    lost_the_task: bool = True
    short_response_words: int = SHORT_RESPONSE_WORDS
    refusal_phrases: tuple[str, ...] = REFUSAL_PHRASES
    evolving_prompt_patterns: tuple[str, ...] = EVOLVING_PROMPT_PATTERNS
    answer_openings: tuple[str, ...] = ANSWER_OPENINGS
    stop_words_language: str = "english"
    # Degenerate repetition: at least this share of the word 4-grams are repeats, in a text
    # of at least ``repetition_min_words`` words (or one line said three times or more).
    repetition_share: float = 0.4
    repetition_min_words: int = 24

    @classmethod
    def preset(cls, rules: str = "all", disabled: Any = (), **knobs: Any) -> EliminationConfig:
        """``rules`` is ``paper`` or ``all``; ``disabled`` switches single rules off.

        >>> cfg = EliminationConfig.preset("paper")
        >>> [r for r in ALL_RULES if getattr(cfg, r)] == list(RULES)
        True
        """
        if rules not in PRESETS:
            raise ValueError(f"unknown rule set {rules!r}; choose one of: {', '.join(PRESETS)}")
        disabled = set(disabled or ())
        unknown = disabled - set(ALL_RULES)
        if unknown:
            raise ValueError(f"unknown rule(s) {', '.join(sorted(unknown))}; "
                             f"rules: {', '.join(ALL_RULES)}")
        on = {r: r in PRESETS[rules] and r not in disabled for r in ALL_RULES}
        return cls(**on, **knobs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EliminationConfig:
        """Inverse of ``asdict`` (lists back to tuples), for configs read from JSON/YAML."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v
                      for k, v in d.items() if k in names})

    def active(self) -> list[str]:
        return [r for r in ALL_RULES if getattr(self, r)]


def _plain(text: str) -> str:
    """Lower case with typographic apostrophes made ASCII, so phrase lists match."""
    return text.replace("\u2019", "'").replace("\u2018", "'").lower()


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased (apostrophes kept inside words).

    >>> words("I can’t -- sorry!")
    ['i', "can't", 'sorry']
    """
    return _WORD.findall(_plain(text))


# --- normalisation -----------------------------------------------------------------------

# A label the small model echoes from the evolving prompt: "#Rewritten Prompt#:",
# "**Rewritten prompt:**", "## Created Prompt", "New instruction:"...
_LABEL_NAME = (
    r"(?:the\s+)?(?:rewritten|created|given|new|final|evolved|revised|more\s+complex)"
    r"[\s_]+(?:prompt|instruction|question|task)"
)
_LEADING_LABEL = re.compile(
    rf"^\s*(?:[#*_>\s]*){_LABEL_NAME}[ \t]*(?:[#*_]+[ \t]*:?|:|(?=\n))[*_#]*[ \t]*\n?",
    re.IGNORECASE,
)
# The same label introducing the answer after echoed scaffolding ("#The Given Prompt#: ...
# #Rewritten Prompt#: the real one"): only a label naming the *output* counts here.
_OUTPUT_LABEL = re.compile(
    r"(?:^|\n)[#*_>\s]*(?:the\s+)?(?:rewritten|created)[\s_]+prompt[ \t]*"
    r"(?:[#*_]+[ \t]*:?|:|(?=\n))[*_#]*",
    re.IGNORECASE,
)
# The same label left dangling at the end, with nothing after it.
_TRAILING_LABEL = re.compile(
    rf"\n[#*_>\s]*{_LABEL_NAME}[ \t]*(?:[#*_]+[ \t]*:?|:)?[*_#]*\s*$", re.IGNORECASE
)
_HEADING = re.compile(r"^#{1,6}[ \t]+")
_FENCE = re.compile(r"^```[\w+-]*[ \t]*\n(.*?)\n?```$", re.DOTALL)
_QUOTES = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("`", "`"))


def normalise_instruction(text: str) -> tuple[str, list[dict[str, str]]]:
    """Strip harmless formatting an evolving LLM wraps around its instruction.

    Returns the cleaned instruction and one entry per normalisation applied
    (``{"name": ..., "removed": ...}``), in order, so the run can report how often
    each was needed. Applies until nothing changes: echoed prompt scaffolding before the
    last "#Rewritten Prompt#:" label, a leading label, a dangling trailing label, a
    markdown heading marker, a whole-text markdown fence, and quotes around the whole text.

    >>> normalise_instruction('#Rewritten Prompt#: "List three rare fruits."')
    ('List three rare fruits.', [{'name': 'leading_label', 'removed': '#Rewritten Prompt#: '}, \
{'name': 'quotes', 'removed': '"..."'}])
    """
    applied: list[dict[str, str]] = []
    current = text.strip()
    changed = True
    while changed and current:
        changed = False
        # Scaffolding: the model echoed (part of) the evolving prompt, then the real answer
        # after an output label. Keep what follows the last such label, if anything.
        last = None
        for m in _OUTPUT_LABEL.finditer(current):
            last = m
        if last is not None and last.start() > 0:
            rest = current[last.end() :].strip()
            if rest:
                applied.append({"name": "echoed_scaffold", "removed": current[: last.end()]})
                current, changed = rest, True
                continue
        m = _LEADING_LABEL.match(current)
        if m and current[m.end() :].strip():
            applied.append({"name": "leading_label", "removed": m.group(0)})
            current, changed = current[m.end() :].strip(), True
            continue
        m = _TRAILING_LABEL.search(current)
        if m and current[: m.start()].strip():
            applied.append({"name": "trailing_label", "removed": m.group(0)})
            current, changed = current[: m.start()].strip(), True
            continue
        m = _HEADING.match(current)
        if m and current[m.end() :].strip():
            applied.append({"name": "heading", "removed": m.group(0)})
            current, changed = current[m.end() :].strip(), True
            continue
        m = _FENCE.match(current)
        if m and m.group(1).strip():
            fence_open = current.split("\n", 1)[0]
            applied.append({"name": "code_fence", "removed": f"{fence_open}...```"})
            current, changed = m.group(1).strip(), True
            continue
        for left, right in _QUOTES:
            inner = current[len(left) : -len(right)] if len(current) > 2 else ""
            if (
                current.startswith(left)
                and current.endswith(right)
                and inner.strip()
                and left not in inner
                and right not in inner
            ):
                applied.append({"name": "quotes", "removed": f"{left}...{right}"})
                current, changed = inner.strip(), True
                break
    return current, applied


# --- rule 4: the instruction copies the evolving prompt ----------------------------------


_GIVEN_LABEL = re.compile(r"given[\s_]*prompt", re.IGNORECASE)


def copies_evolving_prompt(
    instruction: str,
    patterns: tuple[str, ...] = EVOLVING_PROMPT_PATTERNS,
    normalisations: list[dict[str, str]] | None = None,
) -> Finding:
    """Rule 4, on the child *instruction*: does it copy evolving-prompt words?

    ``normalisations`` (from :func:`normalise_instruction`) are checked too: echoed
    scaffolding that the cleaning cut away still counts, so a truncated loop of "#The Given
    Prompt# ... #Rewritten Prompt#:" cannot pass as its harmless-looking tail. A wrapper
    label naming the output (a leading "#Rewritten Prompt#:") is formatting, not an echo,
    and does not count; one naming the input ("#The Given Prompt#:") does.

    >>> copies_evolving_prompt("#Rewritten Prompt#: name three fruits").evidence["matches"]
    ['Rewritten Prompt']
    >>> copies_evolving_prompt("Name three rare fruits.").fired
    False
    >>> text, norms = normalise_instruction("#The Given Prompt#: Hi\\n#Rewritten Prompt#: The")
    >>> text, copies_evolving_prompt(text, normalisations=norms).fired
    ('The', True)
    """
    # An echo: scaffolding before the output label, or a label naming the *input* ("#The
    # Given Prompt#:") that the model wrote where its rewrite should be.
    echoes = [n["removed"] for n in normalisations or ()
              if n["name"] == "echoed_scaffold" or _GIVEN_LABEL.search(n["removed"])]
    for where, text in [("instruction", instruction), *(("echo", e) for e in echoes)]:
        matches = [m for p in patterns for m in re.finditer(p, text, re.IGNORECASE)]
        if matches:
            first_at = min(m.start() for m in matches)
            lo = max(0, first_at - 40)
            found = [m.group(0) for m in matches]
            said = "instruction contains" if where == "instruction" else \
                "the evolution echoed (cut away by cleaning)"
            return Finding(
                COPIES_EVOLVING_PROMPT,
                True,
                f"{said} evolving-prompt words: {', '.join(repr(m) for m in found)}",
                {"matches": found, "where": where, "context": text[lo : first_at + 60]},
            )
    return Finding(COPIES_EVOLVING_PROMPT, False, "no evolving-prompt words",
                   {"echo_checked": bool(echoes)})


# --- rule 2: the response shows the LLM found it hard ------------------------------------


def hard_to_respond(
    response: str,
    max_words: int = SHORT_RESPONSE_WORDS,
    phrases: tuple[str, ...] = REFUSAL_PHRASES,
    *,
    truncated: bool = False,
) -> Finding:
    """Rule 2, on the *response*: it says "sorry" (or refuses) AND has < ``max_words`` words.

    A long, helpful answer that happens to say "sorry" does not fire, and neither does one
    cut at the token limit (it is longer than what was seen, so it is not short).

    >>> hard_to_respond("Sorry, I cannot help with that.").fired
    True
    >>> hard_to_respond("Sorry for the wait! " + "Here is the plan. " * 30).fired
    False
    >>> hard_to_respond("Sorry, the first step is", truncated=True).fired
    False
    """
    plain = _plain(response)
    n_words = len(words(response))
    found = [p for p in phrases if re.search(rf"(?<!\w){re.escape(p)}(?!\w)", plain)]
    evidence: dict[str, Any] = {"phrases": found, "words": n_words, "threshold": max_words,
                                "truncated": truncated}
    if found and truncated:
        return Finding(HARD_TO_RESPOND, False,
                       f"says {found[0]!r} but the answer was cut at the token limit", evidence)
    if found and n_words < max_words:
        return Finding(
            HARD_TO_RESPOND,
            True,
            f"response says {found[0]!r} and has {n_words} < {max_words} words",
            evidence,
        )
    if found:
        reason = f"says {found[0]!r} but has {n_words} >= {max_words} words"
    else:
        reason = "no refusal phrase"
    return Finding(HARD_TO_RESPOND, False, reason, evidence)


# --- rule 3: the response is only punctuation and stop words -----------------------------


@lru_cache(maxsize=8)
def stop_word_set(language: str = "english") -> frozenset[str]:
    """The ``stop-words`` package's list for ``language``, lower-cased.

    Its English list also holds the numbers "10" and "39" (an HTML-entity leftover); numbers
    carry content ("42" answers a sum), so entries with digits are left out.
    """
    return frozenset(
        _plain(w) for w in get_stop_words(language) if not any(c.isdigit() for c in w)
    )


def only_stop_words(response: str, language: str = "english") -> Finding:
    """Rule 3, on the *response*: nothing but punctuation, symbols and stop words.

    Empty responses, a bare code fence and emoji-only answers fire too.

    >>> only_stop_words("... it is what it is!").fired
    True
    >>> only_stop_words("Paris.").fired
    False
    """
    # A fence's language tag ("```python") is markup, not content.
    text = re.sub(r"```[\w+-]*", " ", response)
    found = words(text)
    stops = stop_word_set(language)
    content = [w for w in found if w not in stops]
    evidence = {"words": found[:20], "content_words": content[:20]}
    if content:
        return Finding(ONLY_STOP_WORDS, False, f"{len(content)} content words", evidence)
    reason = "response is empty" if not found else "response is only stop words and punctuation"
    if not found and response.strip():
        reason = "response is only punctuation or symbols"
    return Finding(ONLY_STOP_WORDS, True, reason, evidence | {"response": response[:200]})


# --- rule 1: no information gain ---------------------------------------------------------

_ECHOED_OPTIONS = re.compile(
    r"\bequal\s*(?:or|/)\s*not\s+equal\b|\bnot\s+equal\s*(?:or|/)\s*equal\b"
)
_VERDICT = re.compile(
    r"\b(?:not[\s_-]*(?:quite\s+|exactly\s+|really\s+|fully\s+|entirely\s+|strictly\s+)?equal"
    r"|\w+n't\s+equal|non[\s-]?equal|unequal|inequal|equal)\b"
)
_FALLBACK_EQUAL = re.compile(r"\b(?:identical|the\s+same|same)\b")
_FALLBACK_NOT_EQUAL = re.compile(r"\b(?:different|differ|distinct)\b")


def parse_equality_verdict(text: str) -> EqualityVerdict:
    """Read an Equal / Not Equal judgement, tolerant of case, punctuation and prose.

    The first verdict word wins (the judge is told to answer first); an echo of the
    question's "Equal or Not Equal" is ignored; "identical"/"same" and "different" are
    read when neither word appears. Returns ``EqualityVerdict(None)`` when there is no verdict.

    >>> parse_equality_verdict("I think they are equal, since both ask the same.").label
    'equal'
    >>> parse_equality_verdict("NOT EQUAL!").label
    'not_equal'
    >>> parse_equality_verdict("Hmm.").label is None
    True
    """
    plain = re.sub(r"[*_`\"#]", " ", _plain(text))
    plain = _ECHOED_OPTIONS.sub(" ", plain)
    hits = [(m.group(0), "equal" if m.group(0) == "equal" else "not_equal")
            for m in _VERDICT.finditer(plain)]
    if hits:
        labels = {label for _, label in hits}
        return EqualityVerdict(hits[0][1], hits[0][0], ambiguous=len(labels) > 1)
    eq, neq = _FALLBACK_EQUAL.search(plain), _FALLBACK_NOT_EQUAL.search(plain)
    if eq and neq:
        first = eq if eq.start() < neq.start() else neq
        return EqualityVerdict("equal" if first is eq else "not_equal", first.group(0), ambiguous=True)
    if eq:
        return EqualityVerdict("equal", eq.group(0))
    if neq:
        return EqualityVerdict("not_equal", neq.group(0))
    return EqualityVerdict(None)


def same_text(parent: str, child: str) -> bool:
    """True when the two instructions differ only in case, spacing or punctuation."""
    return words(parent) == words(child)


def no_information_gain(parent: str, child: str, judge_text: str | None) -> Finding:
    """Rule 1, on parent vs child *instructions*: the judge says they are Equal.

    ``judge_text`` is the judge LLM's raw answer, or None when it was not asked because
    the two texts are the same word for word (an evident Equal). An unreadable verdict does
    not fire (there is no evidence of equality); its evidence says so.

    >>> no_information_gain("Name a fruit.", "Name a fruit!", None).fired
    True
    >>> no_information_gain("Name a fruit.", "Name a rare fruit.", "Not Equal").fired
    False
    """
    if judge_text is None:
        if same_text(parent, child):
            return Finding(
                NO_INFORMATION_GAIN, True, "child repeats its parent word for word",
                {"judge": None, "verdict": "equal", "same_text": True},
            )
        raise ValueError("judge_text is required unless parent and child are the same text")
    exact = read_choice(judge_text, EQUALITY_CHOICES) if judge_text.strip().startswith(
        ("{", '"')) or judge_text.strip() in EQUALITY_CHOICES else None
    verdict = (EqualityVerdict("equal" if exact == "Equal" else "not_equal", exact) if exact
               else parse_equality_verdict(judge_text))
    evidence = {
        "judge": judge_text[:300],
        "verdict": verdict.label,
        "matched": verdict.matched,
        "ambiguous": verdict.ambiguous,
    }
    if verdict.label == "equal":
        return Finding(NO_INFORMATION_GAIN, True, "judge says Equal to the parent", evidence)
    if verdict.label is None:
        return Finding(NO_INFORMATION_GAIN, False, "judge verdict unreadable; kept", evidence)
    return Finding(NO_INFORMATION_GAIN, False, "judge says Not Equal", evidence)


# --- ours: truncated evolution, degenerate repetition ------------------------------------


def truncated_evolution(text: str, truncated: bool) -> Finding:
    """The evolution stopped at the token limit, so the instruction may be unfinished.

    >>> truncated_evolution("Write a poem about", True).fired
    True
    """
    if truncated:
        return Finding(TRUNCATED_EVOLUTION, True,
                       "the evolution was cut at the token limit (finish_reason=length)",
                       {"tail": text[-120:]})
    return Finding(TRUNCATED_EVOLUTION, False, "the evolution ended on its own")


def degenerate_repetition(text: str, share: float = 0.4, min_words: int = 24) -> Finding:
    """The instruction repeats itself: at least ``share`` of its word 4-grams are repeats
    (in a text of ``min_words`` words or more), or one line of 3+ words comes 3+ times.

    >>> degenerate_repetition("Add 2 and 3. " * 12).fired
    True
    >>> degenerate_repetition("List three fruits that grow in cold climates and say why.").fired
    False
    """
    ws = words(text)
    grams = [tuple(ws[i : i + 4]) for i in range(len(ws) - 3)]
    repeated = 1 - len(set(grams)) / len(grams) if grams else 0.0
    lines = [ln.strip().lower() for ln in text.splitlines() if len(words(ln)) >= 3]
    top_line, top_count = max(((ln, lines.count(ln)) for ln in set(lines)),
                              key=lambda x: x[1], default=("", 0))
    evidence = {"words": len(ws), "repeated_4gram_share": round(repeated, 3),
                "threshold": share, "most_repeated_line": top_line[:120],
                "line_count": top_count}
    if len(ws) >= min_words and repeated >= share:
        return Finding(DEGENERATE_REPETITION, True,
                       f"{repeated:.0%} of the instruction's 4-word phrases are repeats", evidence)
    if top_count >= 3:
        return Finding(DEGENERATE_REPETITION, True,
                       f"one line is repeated {top_count} times", evidence)
    return Finding(DEGENERATE_REPETITION, False, "no degenerate repetition", evidence)


# --- ours: not an instruction, lost the task (LLM-judged) ----------------------------------


def answer_opening(text: str, openings: tuple[str, ...] = ANSWER_OPENINGS) -> str | None:
    """The answer-like opening ``text`` starts with ("The answer is", "Sure,"...), or None.

    >>> answer_opening("The answer is: the area is 48 cm^2.")
    'The answer is'
    >>> answer_opening("What is the area of a 12 cm by 8 cm rectangle?") is None
    True
    """
    head = text.lstrip(" \t\n*_#>\"'`-")
    for pattern in openings:
        m = re.match(pattern, head, re.IGNORECASE)
        if m:
            return m.group(0).strip(" ,!.:")
    return None


def not_an_instruction(child: str, judge_text: str | None,
                       openings: tuple[str, ...] = ANSWER_OPENINGS) -> Finding:
    """The child answers, solves or comments on its parent instead of asking something.

    Fires on an answer-like opening without asking the judge (``judge_text`` None), else on
    the judge's "Answer" verdict. An unreadable verdict does not fire.

    >>> not_an_instruction("The answer is 48.", None).fired
    True
    >>> not_an_instruction("Find the area of the rectangle.", "Instruction").fired
    False
    >>> not_an_instruction("A rectangle of 12 by 8 has area 96.", '{"answer": "Answer"}').fired
    True
    """
    opening = answer_opening(child, openings)
    if opening:
        return Finding(NOT_AN_INSTRUCTION, True, f"the child opens like an answer ({opening!r})",
                       {"signal": opening, "judge": None})
    if judge_text is None:
        return Finding(NOT_AN_INSTRUCTION, False, "no answer-like opening; judge not asked",
                       {"signal": None, "judge": None})
    label = read_choice(judge_text, INSTRUCTION_CHOICES)
    evidence = {"signal": None, "judge": judge_text[:300], "verdict": label}
    if label == "Answer":
        return Finding(NOT_AN_INSTRUCTION, True,
                       "judge says the child is an answer or comment, not an instruction",
                       evidence)
    if label is None:
        return Finding(NOT_AN_INSTRUCTION, False, "judge verdict unreadable; kept", evidence)
    return Finding(NOT_AN_INSTRUCTION, False, "judge says the child is an instruction", evidence)


def parent_input(parent: str, min_words: int = 2) -> list[str]:
    """The content words of the parent's *input*: the lines after its first line (seed
    tasks carry their input that way), or [] when it has no input of ``min_words``+ words.

    >>> parent_input("Sort the list.\\nList: [10, 2, 5, 92]")
    ['list', '10', '2', '5', '92']
    >>> parent_input("Name three fruits.")
    []
    """
    first, _, rest = parent.strip().partition("\n")
    stops = stop_word_set()
    found = list(dict.fromkeys(w for w in words(rest) if w not in stops))
    return found if len(found) >= min_words else []


def lost_the_task(judge_text: str | None, operation: str | None = None, *,
                  parent: str = "", child: str = "", min_input_share: float = 0.25) -> Finding:
    """The child drops its parent's question or input.

    Fires without asking when the parent has an input (lines after its first) and the child
    keeps less than ``min_input_share`` of its content words (the list to sort, the
    paragraph to summarise is gone); else on the judge's "No" to "does it still ask for the
    original task?". In-breadth children are new tasks by design: ``judge_text`` None and
    ``operation`` "in_breadth" means not checked.

    >>> lost_the_task("No").fired, lost_the_task("Yes").fired
    (True, False)
    >>> lost_the_task(None, "deepening", parent="Sort the list.\\nList: [10, 2, 5, 92]",
    ...               child="Sort the given list, keeping only unique items.").fired
    True
    """
    given = parent_input(parent) if operation not in NEW_TASK_OPERATIONS else []
    if given:
        kept = set(words(child)) & set(given)
        share = len(kept) / len(given)
        if share < min_input_share:
            return Finding(LOST_THE_TASK, True,
                           f"the child keeps {share:.0%} of the parent's input",
                           {"signal": "input_dropped", "input_words": given[:20],
                            "input_kept_share": round(share, 3), "judge": None,
                            "operation": operation})
    if judge_text is None:
        return Finding(LOST_THE_TASK, False, f"judge not asked (operation {operation!r})",
                       {"judge": None, "operation": operation})
    label = read_choice(judge_text, TASK_CHOICES)
    evidence = {"judge": judge_text[:300], "verdict": label, "operation": operation}
    if label == "No":
        return Finding(LOST_THE_TASK, True, "judge says the child dropped the parent's task",
                       evidence)
    if label is None:
        return Finding(LOST_THE_TASK, False, "judge verdict unreadable; kept", evidence)
    return Finding(LOST_THE_TASK, False, "judge says the child keeps the parent's task",
                   evidence)


# --- one elimination for every caller ------------------------------------------------------

# (template name, variables) -> the judge's answer text. The caller decides model, step name,
# sampling and the choice constraint (the template's choices, passed along).
Judge = Callable[[str, str, tuple[str, ...]], Awaitable[str]]
# Operations whose child is a new task by design: lost_the_task is not asked of them.
NEW_TASK_OPERATIONS = ("in_breadth",)


def render_judge(template: str, parent: str, child: str) -> str:
    """A judge prompt from ``prompts/evol/TEMPLATE`` (``first`` = parent, ``second`` = child)."""
    return render_prompt("evol", template, first=parent, second=child)


async def check_instruction(
    parent: str,
    child: str,
    judge: Judge,
    config: EliminationConfig,
    *,
    normalisations: list[dict[str, str]] | None = None,
    truncated: bool = False,
    operation: str | None = None,
) -> list[Finding]:
    """Every enabled instruction rule, cheapest first, until one fires (the last finding is
    then the verdict). Evol-Instruct and Auto Evol-Instruct both eliminate through this.

    ``judge(prompt, choices)`` asks the judge model with a choice constraint and returns its
    answer text. Checking in this order only saves calls: a child is kept exactly when no
    enabled rule fires, whatever the order.
    """
    findings: list[Finding] = []

    def add(f: Finding) -> bool:
        findings.append(f)
        return f.fired

    if not child.strip():
        add(Finding(EMPTY_INSTRUCTION, True, "the evolved instruction is empty",
                    {"parent": parent}))
        return findings
    if config.truncated_evolution and add(truncated_evolution(child, truncated)):
        return findings
    if config.copies_evolving_prompt and add(
            copies_evolving_prompt(child, config.evolving_prompt_patterns, normalisations)):
        return findings
    if config.degenerate_repetition and add(degenerate_repetition(
            child, config.repetition_share, config.repetition_min_words)):
        return findings
    if config.not_an_instruction and answer_opening(child, config.answer_openings):
        add(not_an_instruction(child, None, config.answer_openings))
        return findings
    if config.no_information_gain:
        if same_text(parent, child):
            f = no_information_gain(parent, child, None)
        else:
            text = await judge(render_judge("equality_judge.jinja", parent, child),
                               EQUALITY_CHOICES)
            f = no_information_gain(parent, child, text)
        if add(f):
            return findings
    if config.not_an_instruction:
        text = await judge(render_judge("instruction_judge.jinja", parent, child),
                           INSTRUCTION_CHOICES)
        if add(not_an_instruction(child, text, config.answer_openings)):
            return findings
    if config.lost_the_task:
        cheap = lost_the_task(None, operation, parent=parent, child=child)
        if cheap.fired or operation in NEW_TASK_OPERATIONS:
            add(cheap)
            return findings
        text = await judge(render_judge("task_judge.jinja", parent, child), TASK_CHOICES)
        add(lost_the_task(text, operation))
    return findings


def check_response(answer: str, config: EliminationConfig, *, truncated: bool = False
                   ) -> list[Finding]:
    """The paper's two response rules (2 and 3), as enabled.

    >>> [f.fired for f in check_response("Sorry, I can't write that poem.", EliminationConfig())]
    [True, False]
    """
    out: list[Finding] = []
    if config.hard_to_respond:
        out.append(hard_to_respond(answer, config.short_response_words, config.refusal_phrases,
                                   truncated=truncated))
    if config.only_stop_words:
        out.append(only_stop_words(answer, config.stop_words_language))
    return out


def first_fired(findings: list[Finding]) -> Finding | None:
    """The verdict: the first finding that fired, or None (kept)."""
    return next((f for f in findings if f.fired), None)


def unreadable_verdicts(findings: list[dict[str, Any]]) -> int:
    """How many judge verdicts in a record's findings (as dicts) could not be read."""
    n = 0
    for f in findings:
        ev = f.get("evidence") or {}
        if f["rule"] in (NO_INFORMATION_GAIN, NOT_AN_INSTRUCTION, LOST_THE_TASK) \
                and ev.get("judge") is not None and ev.get("verdict") is None:
            n += 1
    return n
