"""InsTag-style intention tags, and the complexity / diversity figures built on them.

An LLM tags each instruction with open-set intention tags (``prompts/analysis/tags.jinja``),
asked for ``{"tags": [TAG, ...]}`` with a JSON-schema constraint (:data:`TAGS_SCHEMA`), so a
server with structured output always answers parseable JSON; answers from a server that ignored
the constraint are read by the same tolerant parser (InsTag's ``{"tag", "explanation"}`` lists,
``Tags:`` lines, bulleted lists). Following InsTag (Lu et al. 2023) and the Auto Evol-Instruct
paper:

- **complexity** = mean number of distinct tags per instruction;
- **diversity** = number of distinct *normalised* tags over the whole set.

Tags are normalised (lowercase, separators unified, plural ``s`` dropped) so that
``"Data_Analysis"`` and ``"data analyses"`` count once.  Unparseable answers count in neither.

>>> parse_tags('[{"tag": "Math", "explanation": "..."}, {"tag": "word problem"}]')
['math', 'word problem']
>>> complexity_diversity([["math", "logic"], ["math"]])
{'tagged': 2, 'complexity': 1.5, 'diversity': 2, 'diversity_per_instruction': 1.0}
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from instructforge.analysis.parsing import find_json
from instructforge.analysis.ratings import UNPARSEABLE, ChatFn, direct_chat, render_prompt
from instructforge.llm.base import LLM, Completion, SamplingParams
from instructforge.records import Record, instruction, stable_seed

STEP = "instag"
MAX_TAG_WORDS = 6  # longer "tags" are sentences the model wrote, not tags
MAX_TAGS = 10  # InsTag's tag counts stay well below this; it bounds a small judge's loops
MAX_TAG_CHARS = 60
TAGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "tags": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_CHARS},
            "minItems": 1,
            "maxItems": MAX_TAGS,
        },
    },
    "required": ["tags"],
    "additionalProperties": False,
}
"""The constraint the tagger is asked under: an object at the root (as OpenAI's strict mode
requires) holding 1 to :data:`MAX_TAGS` short tags. Plain strings rather than InsTag's
``{"tag", "explanation"}`` objects: the explanations are never used, cost most of the tokens,
and let a small judge run out of tokens before its first tag."""
# Echoes of the prompt's own placeholders are not tags.
_PLACEHOLDERS = {"str", "tag", "tags", "explanation", "string", "...", "tag 1", "tag 2"}


def normalise_tag(tag: str) -> str:
    """Canonical form of a tag: NFKC, lowercase, ``_-/`` as spaces, punctuation dropped,
    a plural ``s`` dropped from the last word ('' if nothing is left).

    >>> normalise_tag("  Data_Analysis! "), normalise_tag("Word problems"), normalise_tag("class")
    ('data analysis', 'word problem', 'class')
    """
    t = unicodedata.normalize("NFKC", tag or "").lower()
    t = re.sub(r"[_\-/]+", " ", t)
    t = re.sub(r"[^\w\s&+#]", "", t)  # keep c++ / c# / r&d style tokens
    t = re.sub(r"\s+", " ", t).strip()
    words = t.split(" ")
    last = words[-1]
    # A light stemmer: "problems" -> "problem", "analyses" -> "analysis", "queries" ->
    # "query", but "analysis", "class" and "gas" stay.
    if last.endswith("ies") and len(last) > 4:
        last = last[:-3] + "y"
    elif last.endswith("yses"):
        last = last[:-2] + "is"
    elif len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is")):
        last = last[:-1]
    words[-1] = last
    return " ".join(words).strip()


def _clean(tags: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for raw in tags:
        if not isinstance(raw, str):
            continue
        t = normalise_tag(raw)
        if not t or t in _PLACEHOLDERS or len(t.split()) > MAX_TAG_WORDS or t in out:
            continue
        out.append(t)
    return out


def _tags_from_json(value: Any) -> list[Any]:
    if isinstance(value, dict):
        if "tag" in value:
            return [value["tag"]] if isinstance(value["tag"], str) else list(value["tag"] or [])
        if isinstance(value.get("tags"), list):
            return [t for v in value["tags"] for t in _tags_from_json(v)] or value["tags"]
        return []
    if isinstance(value, list):
        out: list[Any] = []
        for v in value:
            out.extend([v] if isinstance(v, str) else _tags_from_json(v))
        return out
    return []


_TAGS_OPEN = re.compile(r'"tags"\s*:\s*\[')
_DECODER = json.JSONDecoder()


def _cut_tag_list(text: str) -> list[str]:
    """The finished strings of a ``{"tags": [...`` answer cut off at the token limit."""
    m = _TAGS_OPEN.search(text or "")
    if not m:
        return []
    out: list[str] = []
    i = m.end()
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] != '"':
            return out
        try:
            value, i = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError:
            return out
        out.append(value)


_LIST_LINE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\**([^:*\n]{1,60}?)\**\s*(?:[:\-\u2013]\s.*)?$",
                        re.MULTILINE)
_TAGS_LINE = re.compile(r"^\s*\**tags?\**\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)


def parse_tags(text: str) -> list[str] | None:
    """Normalised tags from an InsTag answer, or None when the answer holds no tags.

    Reads the constrained ``{"tags": [...]}`` (also truncated: its finished tags count), a
    JSON list of ``{"tag", "explanation"}`` objects (or loose objects), then ``Tags: a, b``
    lines, then bulleted ``- tag: why`` lists.

    >>> parse_tags('{"tags": ["Math", "word problems"]}')
    ['math', 'word problem']
    >>> parse_tags('{"tags": ["coding", "Python", "sor')
    ['coding', 'python']
    >>> parse_tags('{"tag": "coding", "explanation": "x"} {"tag": "Python"}')
    ['coding', 'python']
    >>> parse_tags("Tags: cooking, Recipe adaptation")
    ['cooking', 'recipe adaptation']
    >>> parse_tags("1. **Math**: asks for a sum\\n2. Arithmetic - adding")
    ['math', 'arithmetic']
    >>> parse_tags("I cannot help with that.") is None
    True
    """
    found: list[Any] = []
    for value in find_json(text):
        found.extend(_tags_from_json(value))
    tags = _clean(found)
    if not tags:
        tags = _clean(_cut_tag_list(text))
    if not tags:
        for line in _TAGS_LINE.findall(text or ""):
            tags = _clean(re.split(r"[,;]", line))
            if tags:
                break
    if not tags:
        tags = _clean(_LIST_LINE.findall(text or ""))
    return tags or None


def tag_result(completion: Completion) -> dict[str, Any]:
    """What is stored per record: ``tags`` and ``status`` (raw text when unparseable).

    >>> tag_result(Completion('[{"tag": "math"}]', "stop"))
    {'tags': ['math'], 'status': 'ok'}
    """
    tags = parse_tags(completion.text)
    if tags is None:
        return {"tags": None, "status": UNPARSEABLE, "raw": completion.text[:500],
                "finish_reason": completion.finish_reason}
    return {"tags": tags, "status": "ok"}


async def tag(record: Record, llm: LLM, *, chat: ChatFn = direct_chat,
              max_tokens: int = 256) -> dict[str, Any]:
    """Ask ``llm`` for the intention tags of ``record``'s instruction; see :func:`tag_result`.

    >>> await tag(record, llm)                    # doctest: +SKIP
    {'tags': ['math', 'word problem'], 'status': 'ok'}
    """
    messages = [{"role": "user", "content": render_prompt("tags.jinja", input=instruction(record))}]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens,
                            seed=stable_seed(record.get("id", ""), STEP), json_schema=TAGS_SCHEMA)
    return tag_result(await chat(llm, messages, params, STEP))


def complexity_diversity(tag_lists: Sequence[Sequence[str] | None]) -> dict[str, Any]:
    """Complexity and diversity of a set of tagged instructions (None entries: untagged).

    >>> complexity_diversity([None, ["a"]])["tagged"]
    1
    """
    tagged = [list(dict.fromkeys(t)) for t in tag_lists if t is not None]
    if not tagged:
        return {"tagged": 0, "complexity": None, "diversity": 0, "diversity_per_instruction": None}
    distinct = {t for tags in tagged for t in tags}
    return {
        "tagged": len(tagged),
        "complexity": round(sum(len(t) for t in tagged) / len(tagged), 4),
        "diversity": len(distinct),
        "diversity_per_instruction": round(len(distinct) / len(tagged), 4),
    }


def top_tags(tag_lists: Sequence[Sequence[str] | None], n: int = 30) -> list[tuple[str, int]]:
    """The ``n`` most frequent tags with their counts (instructions carrying each)."""
    counts = Counter(t for tags in tag_lists if tags for t in set(tags))
    return counts.most_common(n)
