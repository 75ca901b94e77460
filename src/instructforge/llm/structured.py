"""Reading constrained (structured) answers, whether or not the server enforced them.

A request with ``SamplingParams(choices=...)`` or ``json_schema=...`` comes back as the bare
choice (llama.cpp grammar, vLLM choice), as JSON (``response_format`` json_schema, where a
choice travels as ``{"answer": CHOICE}``), or as free text when the server refused the
constraint. These readers accept all three.

>>> read_choice('{"answer": "Not Equal"}', ("Equal", "Not Equal"))
'Not Equal'
>>> read_choice("I think they are **not equal**.", ("Equal", "Not Equal"))
'Not Equal'
>>> read_json('Sure: ```json\\n{"score": 4}\\n```')
{'score': 4}
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

CHOICE_KEY = "answer"


def choice_schema(choices: Sequence[str]) -> dict[str, Any]:
    """The JSON schema a choice travels as where only JSON can be enforced (an object at the
    root, as OpenAI's strict mode requires)."""
    return {
        "type": "object",
        "properties": {CHOICE_KEY: {"type": "string", "enum": list(choices)}},
        "required": [CHOICE_KEY],
        "additionalProperties": False,
    }


_GBNF_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def gbnf_literal(text: str) -> str:
    r"""``text`` as a quoted GBNF (llama.cpp grammar) string literal: ``\``, ``"`` and control
    characters escaped, everything else literal (UTF-8).

    >>> print(gbnf_literal('say "hi"\n'))
    "say \"hi\"\n"
    """
    out = []
    for ch in text:
        if ch in _GBNF_ESCAPES:
            out.append(_GBNF_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:  # everything else is taken literally (UTF-8)
            out.append(ch)
    return '"' + "".join(out) + '"'


def choice_grammar(choices: Sequence[str]) -> str:
    """A GBNF grammar whose only sentences are ``choices``.

    >>> choice_grammar(["Equal", "Not Equal"])
    'root ::= "Equal" | "Not Equal"'
    """
    return "root ::= " + " | ".join(gbnf_literal(c) for c in choices)


def _norm(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.replace("\u2019", "'")).strip().lower()


def read_choice(text: str, choices: Sequence[str]) -> str | None:
    """The choice ``text`` gives, or None when it gives none.

    Exact answers and JSON (``{"answer": ...}`` or a bare JSON string) first; in free text
    the earliest choice wins, and at one position the longest ("Not Equal" over "Equal").
    """
    stripped = text.strip()
    if stripped in choices:
        return stripped
    value = read_json(stripped)
    if isinstance(value, dict):
        value = value.get(CHOICE_KEY)
    if isinstance(value, str):
        stripped = value.strip()
    by_norm = {_norm(c): c for c in choices}
    if _norm(stripped) in by_norm:
        return by_norm[_norm(stripped)]
    plain = f" {_norm(stripped)} "
    best: tuple[int, int, str] | None = None
    for key, choice in by_norm.items():
        if not key:
            continue
        at = plain.find(f" {key} ")
        if at >= 0 and (best is None or (at, -len(key)) < (best[0], best[1])):
            best = (at, -len(key), choice)
    return best[2] if best else None


_FENCED = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL)


def read_json(text: str) -> Any | None:
    """The JSON value in ``text``: the whole text, a fenced block, or the first ``{...}`` /
    ``[...]`` span that parses; None when there is none."""
    candidates = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCED.finditer(text)]
    for opener, closer in (("{", "}"), ("[", "]")):
        start, end = text.find(opener), text.rfind(closer)
        if 0 <= start < end:
            candidates.append(text[start : end + 1])
    for c in candidates:
        if not c:
            continue
        try:
            return json.loads(c)
        except ValueError:
            continue
    return None
