"""Magpie's filters: each one switchable, each says why it dropped a text.

A filter returns ``None`` (keep) or a :class:`Rejection` whose ``rule``, ``reason`` and
``evidence`` go straight into ``rejected.jsonl``::

    f = TextFilters(FilterConfig(languages=("en",)))
    f.check("Wie backe ich Brot?", field="instruction")
    # Rejection(rule='language', reason='instruction is in de, not one of en', ...)

The deduplicators (:class:`ExactDedup`, :class:`NearDedup`, defined in
:mod:`instructforge.dedup` for every command) hold state across the stream; the
Magpie job rebuilds them from the run's existing output on resume.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from instructforge.dedup import NEAR_DUP_THRESHOLD, NUM_PERM, ExactDedup, NearDedup
from instructforge.llm.templates import special_tokens_in
from instructforge.records import Rejection


@dataclass
class FilterConfig:
    """Which filters run and their thresholds. Set a switch to False to turn a filter off.

    Lengths are in characters, on the stripped text.
    """

    length: bool = True
    min_instruction_chars: int = 10
    max_instruction_chars: int = 2000
    min_response_chars: int = 2
    max_response_chars: int = 20000
    incomplete: bool = True
    repetition: bool = True
    # Share of word 3-grams that repeat an earlier 3-gram; fluent text stays well under it.
    max_repeated_ngram_ratio: float = 0.3
    # zlib size / text size; loops like "=====..." compress far below fluent text (~0.4).
    min_compression_ratio: float = 0.12
    leakage: bool = True
    languages: tuple[str, ...] | None = ("en",)
    # Language id is unreliable on very short texts; those pass.
    min_language_chars: int = 20
    exact_dedup: bool = True
    near_dedup: bool = True
    near_dup_threshold: float = NEAR_DUP_THRESHOLD
    num_perm: int = NUM_PERM

    def describe(self) -> dict[str, Any]:
        """Plain data for config.yaml."""
        d = dict(self.__dict__)
        d["languages"] = list(self.languages) if self.languages else None
        return d


# -- single-text checks ------------------------------------------------------------------------

def check_length(text: str, *, field: str, min_chars: int, max_chars: int) -> Rejection | None:
    """Empty, too short or too long.

    >>> check_length("", field="instruction", min_chars=10, max_chars=100).rule
    'empty'
    """
    n = len(text.strip())
    if n == 0:
        return Rejection("empty", f"{field} is empty", {"chars": 0})
    if n < min_chars:
        return Rejection("too_short", f"{field} has {n} characters (< {min_chars})", {"chars": n})
    if n > max_chars:
        return Rejection("too_long", f"{field} has {n} characters (> {max_chars})", {"chars": n})
    return None


def check_incomplete(finish_reason: str, *, field: str) -> Rejection | None:
    """The model was cut off at the token limit (``finish_reason == "length"``).

    >>> check_incomplete("length", field="response").rule
    'incomplete'
    """
    if finish_reason == "length":
        return Rejection("incomplete", f"{field} was cut at the max_tokens limit",
                         {"finish_reason": finish_reason})
    return None


_WORD = re.compile(r"\w+", re.UNICODE)


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0 = none repeat).

    >>> repeated_ngram_ratio("one two three four")
    0.0
    >>> round(repeated_ngram_ratio("la la la la la la"), 2)
    0.75
    """
    words = [w.lower() for w in _WORD.findall(text)]
    grams = [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def compression_ratio(text: str) -> float:
    """zlib-compressed size over raw size (UTF-8); low means highly repetitive."""
    raw = text.encode("utf-8")
    return len(zlib.compress(raw, 9)) / len(raw) if raw else 1.0


def check_repetition(text: str, *, field: str, max_ngram_ratio: float = 0.3,
                     min_compression: float = 0.12) -> Rejection | None:
    """Degenerate loops: repeated phrases or repeated characters.

    Short texts are judged only when they have enough material (12+ words for the n-gram
    rule, 200+ characters for compression) so a terse answer is never called repetitive.

    >>> check_repetition("I like cats. " * 10, field="response").rule
    'repetition'
    """
    words = len(_WORD.findall(text))
    ratio = repeated_ngram_ratio(text)
    if words >= 12 and ratio > max_ngram_ratio:
        return Rejection("repetition", f"{field} repeats itself ({ratio:.0%} of its word "
                         f"3-grams are repeats, > {max_ngram_ratio:.0%})",
                         {"repeated_3gram_ratio": round(ratio, 3)})
    if len(text) >= 200:
        cr = compression_ratio(text)
        if cr < min_compression:
            return Rejection("repetition", f"{field} is a character loop (compresses to "
                             f"{cr:.0%} of its size, < {min_compression:.0%})",
                             {"compression_ratio": round(cr, 3)})
    return None


def check_leakage(text: str, *, field: str, special_tokens: Iterable[str] = ()) -> Rejection | None:
    """Chat-template markup in the text: the model ran past its turn or echoed the template.

    Looks for the given template's own tokens and for any control-token-looking text
    (``<|im_start|>``, ``[INST]``, ``<start_of_turn>``...).

    >>> check_leakage("Hi<|im_start|>assistant", field="instruction").evidence
    ['<|im_start|>']
    """
    found = [t for t in special_tokens if t and t in text]
    for t in special_tokens_in(text):
        if t not in found:
            found.append(t)
    if found:
        return Rejection("template_leakage",
                         f"{field} contains chat-template tokens: {', '.join(found)}", found)
    return None


@lru_cache(maxsize=1)
def _language_identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from ``py3langid``.

    >>> detect_language("Where is the nearest train station?")[0]
    'en'
    """
    lang, prob = _language_identifier().classify(text)
    return str(lang), float(prob)


def check_language(text: str, *, field: str, languages: Iterable[str],
                   min_chars: int = 20) -> Rejection | None:
    """The text is not in one of ``languages`` (texts under ``min_chars`` pass)."""
    allowed = tuple(languages)
    if not allowed or len(text.strip()) < min_chars:
        return None
    lang, prob = detect_language(text)
    if lang not in allowed:
        return Rejection("language", f"{field} is in {lang}, not one of {', '.join(allowed)}",
                         {"language": lang, "probability": round(prob, 3)})
    return None


@dataclass
class TextFilters:
    """The configured filters, applied in a fixed order (cheapest first)."""

    config: FilterConfig = field(default_factory=FilterConfig)
    special_tokens: tuple[str, ...] = ()
    exact: ExactDedup = field(default_factory=ExactDedup)
    near: NearDedup | None = None

    def __post_init__(self) -> None:
        if self.near is None:
            self.near = NearDedup(self.config.near_dup_threshold, self.config.num_perm)

    def check(self, text: str, *, field: str, finish_reason: str = "stop") -> Rejection | None:
        """Run the per-text filters on an instruction or a response (not the dedup ones).

        ``field`` is ``"instruction"``/``"response"`` (optionally with a turn, e.g.
        ``"instruction (turn 2)"``); it picks the length limits and names the text in reasons.
        """
        c = self.config
        is_instruction = field.startswith("instruction")
        if c.incomplete and (r := check_incomplete(finish_reason, field=field)):
            return r
        if c.length:
            lo, hi = ((c.min_instruction_chars, c.max_instruction_chars) if is_instruction
                      else (c.min_response_chars, c.max_response_chars))
            if r := check_length(text, field=field, min_chars=lo, max_chars=hi):
                return r
        elif not text.strip():
            return Rejection("empty", f"{field} is empty", {"chars": 0})
        if c.leakage and (r := check_leakage(text, field=field,
                                             special_tokens=self.special_tokens)):
            return r
        if c.repetition and (r := check_repetition(text, field=field,
                                                   max_ngram_ratio=c.max_repeated_ngram_ratio,
                                                   min_compression=c.min_compression_ratio)):
            return r
        if c.languages and (r := check_language(text, field=field, languages=c.languages,
                                                min_chars=c.min_language_chars)):
            return r
        return None

    def check_duplicate(self, text: str, exclude: str | None = None) -> Rejection | None:
        """Exact, then near duplicates among the instructions kept so far (not ``exclude``)."""
        if self.config.exact_dedup and (r := self.exact.check(text, exclude)):
            return r
        if self.config.near_dedup and self.near is not None and (
            r := self.near.check(text, exclude)
        ):
            return r
        return None

    def keep_unique(self, text: str, record_id: str) -> Rejection | None:
        """Check ``text`` against the kept instructions and, when it is no duplicate, remember
        it, in one step (no await between them: atomic among concurrent records)."""
        if r := self.check_duplicate(text, exclude=record_id):
            return r
        self.remember(text, record_id)
        return None

    def remember(self, text: str, record_id: str) -> None:
        """Add a kept instruction to the dedup indexes."""
        if self.config.exact_dedup:
            self.exact.add(text, record_id)
        if self.config.near_dedup and self.near is not None:
            self.near.add(text, record_id)

