"""Auto Evol-Instruct (Zeng et al. 2024; METHODS.md section 2): an LLM optimizes the evolving
method itself, then Evol-Instruct evolves the dataset with the best method found.

One optimization step reads like the paper::

    trajectories = evolve(mini_batch, method, steps=l)           # evol LLM, X -> X(1)..X(l)
    feedback = [analyse(t) for t in trajectories]                # optimizer LLM
    candidates = [optimize(method, feedback) for _ in range(m)]  # optimizer LLM, sampled
    rates = [failure_rate(c, dev_set) for c in candidates]       # evol LLM on the dev set
    method = best(candidates) if it beats method else method

A *method* is a template file (``prompts/auto_evol/initial_method.jinja`` is the universal
e0): a ``{% block method %}`` the optimizer rewrites, then a fixed answer format with headed
sections and the ``{{ instruction }}`` slot. The evol LLM's answer is parsed with
:func:`parse_method_output`, which is tolerant of missing headers, markdown, extra text and
repeated sections.

Every method version, its feedback, each candidate's dev-set failure rate and per-rule
failure counts are written under ``RUN_DIR/methods/step_K/``; a step is complete when its
``step.json`` exists, so a rerun after a crash loads the finished steps and replays the LLM
calls of the unfinished one from ``RUN_DIR/cache.sqlite``. Finally e* is saved as
``RUN_DIR/methods/best/auto_evol.jinja`` and run as the single operation of
:func:`instructforge.methods.evol_instruct.evolve` (responses, elimination, lineage).

Auto Evol's own settings are fields of :class:`AutoEvolConfig`; everything it shares with
Evol-Instruct (models, rounds, seed, elimination, sampling, input) is the embedded
``AutoEvolConfig.evol``, an :class:`~instructforge.methods.evol_instruct.EvolConfig` whose
defaults :func:`evol_config` gives, and which the final pass runs as it is.

>>> cfg = AutoEvolConfig(steps=2, candidates=3, dev_size=10, evol=evol_config(rounds=1))
>>> result = auto_evolve("examples/seeds.jsonl", "runs/auto", cfg)     # doctest: +SKIP
>>> result.best.failure_rate                                          # doctest: +SKIP
0.3
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2

from instructforge import prompt_files
from instructforge.engine import Budget, Context, JobResult, RequestCache, RunDir, preflight
from instructforge.engine.run import save_usage, spent_so_far
from instructforge.errors import InstructForgeError
from instructforge.files import write_atomic
from instructforge.inputs import InstructionSource
from instructforge.llm import LLM, Completion, Message, RawCompletionUnsupported, SamplingParams
from instructforge.llm.base import WrappedLLM
from instructforge.llm.batch import BatchLLM
from instructforge.llm.config import ModelConfig, build_roles, distinct
from instructforge.llm.openai import OpenAICompatible
from instructforge.llm.urls import redact_urls
from instructforge.methods import eliminate as el
from instructforge.methods.evol_instruct import EvolConfig, Models, evolve
from instructforge.prompt_files import prompt_env
from instructforge.records import instruction, stable_seed

METHOD = "auto_evol"
OPERATION = "auto_evol"  # the file name (stem) of e* when Evol-Instruct runs it
MODEL_ID_SUFFIX = "+auto_evol_sections"

# Failure rules beyond Evol-Instruct's: the method's output could not be parsed, and the
# paper's three failure types read from the evol LLM's answer to the evolved instruction.
UNPARSEABLE = "unparseable"
STAGNANT_COMPLEXITY = "stagnant_complexity"
INSUFFICIENT_QUALIFICATION = "insufficient_qualification"
LOSS_OF_KEY_INFORMATION = "loss_of_key_information"
PAPER_FAILURE_TYPES = (STAGNANT_COMPLEXITY, INSUFFICIENT_QUALIFICATION, LOSS_OF_KEY_INFORMATION)
FAILURE_RULES = (UNPARSEABLE, el.EMPTY_INSTRUCTION, *el.RULES, *PAPER_FAILURE_TYPES)

# Rule 4 also fires on the section names of the evolving method's answer format.
AUTO_EVOL_PROMPT_PATTERNS: tuple[str, ...] = (
    r"rewritten[\s_]*instruction",
    r"methods?[\s_]*list",
    r"#[\s_]*plan[\s_]*#",
    r"reply[\s_]+strictly[\s_]+in",
)


class AutoEvolError(InstructForgeError, ValueError):
    """A configuration or method-file problem, explained."""


# --- the tolerant section parser ------------------------------------------------------------

# Section names as regexes; longer names first so "Finally Rewritten Instruction" is not read
# as "Rewritten Instruction" or "Instruction".
METHOD_SECTIONS: dict[str, tuple[str, ...]] = {
    "final": (
        r"final(?:ly)?[\s_]+rewritten[\s_]+instruction",
        r"final(?:ly)?[\s_]+(?:revised|evolved|rewritten)?[\s_]*instruction",
    ),
    "rewritten": (r"rewritten[\s_]+instruction",),
    "methods_list": (r"methods?[\s_]+list", r"list[\s_]+of[\s_]+methods"),
    "plan": (r"plan",),
    # The echoed input: only in the prompt's own spelling (#Instruction#) or named as the
    # original, so a final answer that starts "Instruction: ..." is not cut off.
    "instruction": (r"#[ \t]*instruction[ \t]*#", r"(?:original|given)[\s_]+instruction"),
}
OPTIMIZER_SECTIONS: dict[str, tuple[str, ...]] = {
    "optimized_method": (r"optimi[sz]ed[\s_]+method", r"(?:improved|new|updated)[\s_]+method"),
    "analysis": (r"analysis",),
    "instruction": (r"#[ \t]*instruction[ \t]*#",),
}
ANALYSIS_SECTIONS: dict[str, tuple[str, ...]] = {"issues": (r"issues", r"feedback")}

# Commentary a model appends after its answer ("Note: ...", "This rewritten instruction adds
# ..."): a paragraph that starts like this ends the section.
_COMMENTARY = re.compile(
    r"\n\s*\n[*_\s]*(?:note|explanation|(?:this|the)\s+(?:final\s+|new\s+)?(?:rewritten|revised"
    r"|evolved|final|new)\s+(?:instruction|version))\b",
    re.IGNORECASE,
)


def _header_regex(sections: dict[str, tuple[str, ...]]) -> re.Pattern[str]:
    names = "|".join(f"(?P<{key}>{'|'.join(pats)})" for key, pats in sections.items())
    return re.compile(
        r"^[ \t>*_#\-(\[]*"                               # markdown: heading, bold, bullet
        r"(?:step[ \t]*\d+[ \t]*[:.)\-]?[ \t]*)?"           # optional "Step 3"
        r"[*_#(\[ \t]*"
        rf"(?:{names})"
        r"[ \t]*[*_#)\]]*[ \t]*"                           # closing markup: "#", "**", ")"
        r"(?::[*_ \t]*|(?=\n)|$)",                         # a colon, or the end of the line
        re.IGNORECASE | re.MULTILINE,
    )


_HEADERS: dict[int, re.Pattern[str]] = {}


def _headers(sections: dict[str, tuple[str, ...]]) -> re.Pattern[str]:
    key = id(sections)
    if key not in _HEADERS:
        _HEADERS[key] = _header_regex(sections)
    return _HEADERS[key]


@dataclass
class Sections:
    """Headed sections in the order found (repeats kept), and any text before the first."""

    sections: list[tuple[str, str]]
    preamble: str = ""

    def last(self, key: str) -> str | None:
        """The last non-empty section named ``key`` (a model often echoes the empty format
        before filling it in, or drafts a section twice)."""
        for k, content in reversed(self.sections):
            if k == key and content:
                return content
        return None


def parse_sections(text: str, sections: dict[str, tuple[str, ...]] = METHOD_SECTIONS) -> Sections:
    """Split ``text`` at the headers named in ``sections``; never raises.

    Headers may carry markdown (``**Plan:**``, ``### Step 2 - Plan``), a ``Step N`` prefix,
    ``#...#`` marks, and a colon or a line end; content may follow on the header's line.

    >>> s = parse_sections("Step 2 #Plan#: add a table\\n**Final Rewritten Instruction:** Go.")
    >>> s.sections
    [('plan', 'add a table'), ('final', 'Go.')]
    """
    found = list(_headers(sections).finditer(text))
    out: list[tuple[str, str]] = []
    for i, m in enumerate(found):
        key = next(k for k, v in m.groupdict().items() if v is not None)
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        out.append((key, _clean(text[m.end() : end])))
    preamble = text[: found[0].start()] if found else text
    return Sections(out, preamble.strip())


# The answer format's own intro, echoed by a model: prompt text, never part of an answer.
_FORMAT_ECHO = re.compile(r"^[ \t*#>_-]*please reply strictly in the\b.*$",
                          re.IGNORECASE | re.MULTILINE | re.DOTALL)


def _clean(content: str) -> str:
    """A section's text without trailing commentary, an echoed answer-format intro, or
    markup wrapped around all of it."""
    content = _COMMENTARY.split(content, maxsplit=1)[0]
    content = _FORMAT_ECHO.split(content, maxsplit=1)[0].strip()
    for mark in ("**", "__"):
        if content.startswith(mark) and content.endswith(mark) and len(content) > 2 * len(mark):
            content = content[len(mark) : -len(mark)].strip()
    # A dangling bold marker left from "**Final instruction:** text" style headers.
    return content.strip("*_ \t\n").strip() if set(content) <= set("*_ \t\n") else content


@dataclass
class MethodOutput:
    """What an evolving method's answer yields: the final instruction (or None) and where it
    was found (``final``, or ``rewritten`` when the final section is missing)."""

    instruction: str | None
    section: str | None
    sections: list[str] = field(default_factory=list)


def parse_method_output(text: str) -> MethodOutput:
    """The final rewritten instruction in an evolving method's answer.

    The last non-empty "Finally Rewritten Instruction" section; failing that, the last
    non-empty "Rewritten Instruction" section; failing that, None (unparseable).

    >>> parse_method_output("Step 3 #Rewritten Instruction#: A\\nStep 4 #Finally Rewritten "
    ...                     "Instruction#: B").instruction
    'B'
    >>> parse_method_output("Sure! Here is a harder question.").instruction is None
    True
    """
    parsed = parse_sections(text, METHOD_SECTIONS)
    names = [k for k, _ in parsed.sections]
    for key in ("final", "rewritten"):
        found = parsed.last(key)
        if found:
            return MethodOutput(found, key, names)
    return MethodOutput(None, None, names)


def parse_optimized_method(text: str, min_words: int = 10) -> str | None:
    """The method text in the optimizer's answer, or None when it gave none (or a stub).

    The last non-empty "Optimized Method" section; an answer with no header at all (small
    models) is taken whole, since the dev set, not the format, decides whether a method is
    any good; an answer with only an analysis gives no method.

    >>> parse_optimized_method("Step 1 #Analysis#: x\\nStep 2 #Optimized Method#: " + "Do it. " * 9)
    'Do it. Do it. Do it. Do it. Do it. Do it. Do it. Do it. Do it.'
    """
    parsed = parse_sections(text, OPTIMIZER_SECTIONS)
    found = parsed.last("optimized_method")
    if found is None and not parsed.sections:
        found = parsed.preamble
    if not found:
        return None
    m = re.match(r"^```[\w+-]*[ \t]*\n(.*?)\n?```$", found, re.DOTALL)
    if m:
        found = m.group(1).strip()
    # The answer format is fixed by the method file; an echo of it is not part of the method.
    found = re.split(r"\n[ \t*#]*please reply strictly in the following format", found,
                     flags=re.IGNORECASE)[0].strip()
    return found if len(el.words(found)) >= min_words else None


def parse_feedback(text: str) -> str:
    """The issues the optimizer listed (its whole answer when it used no header)."""
    parsed = parse_sections(text, ANALYSIS_SECTIONS)
    return (parsed.last("issues") or text).strip()


# --- methods as template files -------------------------------------------------------------

_BLOCK = re.compile(
    r"\{%-?\s*block\s+method\s*-?%\}(?P<body>.*?)\{%-?\s*endblock(?:\s+method)?\s*-?%\}",
    re.DOTALL,
)
_RAW = re.compile(r"^\s*\{%-?\s*raw\s*-?%\}(.*)\{%-?\s*endraw\s*-?%\}\s*$", re.DOTALL)
_JINJA_SYNTAX = re.compile(r"\{%|%\}|\{\{|\}\}|\{#|#\}")


def prompts_dir() -> Path:
    """The built-in ``prompts/auto_evol`` folder."""
    return prompt_files.prompts_dir("auto_evol")


def render_prompt(name: str, **variables: Any) -> str:
    """Render one of the ``prompts/auto_evol`` templates (analysis, optimization)."""
    return prompt_env(prompts_dir()).get_template(name).render(**variables).strip()


@dataclass(frozen=True)
class EvolvingMethod:
    """One evolving method: the full template text (what is saved as ``method.jinja``).

    >>> e0 = EvolvingMethod.initial()
    >>> "#Finally Rewritten Instruction#" in e0.render("Name a fruit.")
    True
    >>> e0.with_body("Rewrite it harder.").body
    'Rewrite it harder.'
    """

    source: str
    origin: str = "<memory>"

    @classmethod
    def initial(cls) -> EvolvingMethod:
        """The universal initial method e0."""
        return cls.load(prompts_dir() / "initial_method.jinja")

    @classmethod
    def load(cls, path: str | Path) -> EvolvingMethod:
        """A method file; it must have a ``{% block method %}`` and the ``{{ instruction }}``
        slot outside it (raises :class:`AutoEvolError` naming the file otherwise)."""
        p = Path(path)
        try:
            source = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise AutoEvolError(f"{p}: cannot read method file: {e}") from None
        return cls.check(source, str(p))

    @classmethod
    def check(cls, source: str, origin: str = "<memory>") -> EvolvingMethod:
        m = _BLOCK.search(source)
        if m is None:
            raise AutoEvolError(
                f"{origin}: a method file needs a {{% block method %}}...{{% endblock %}} (the "
                "part the optimizer rewrites) followed by the answer format and {{ instruction }}"
            )
        method = cls(source, origin)
        probe = "\x00probe instruction\x00"
        try:
            rendered = method.render(probe)
        except jinja2.TemplateError as e:
            line = getattr(e, "lineno", None)
            where = f"{origin}:{line}" if line else origin
            raise AutoEvolError(f"{where}: cannot render method template: {e}") from None
        if probe not in rendered or probe in method.body:
            raise AutoEvolError(f"{origin}: the method must use {{{{ instruction }}}} after its "
                                "{% block method %}")
        return method

    @property
    def body(self) -> str:
        """The optimizable text (the ``method`` block), as the optimizer sees it."""
        m = _BLOCK.search(self.source)
        assert m is not None
        body = m.group("body")
        raw = _RAW.match(body)
        return (raw.group(1) if raw else body).strip()

    def with_body(self, body: str) -> EvolvingMethod:
        """The same file with a new ``method`` block (kept literal: no Jinja in it runs)."""
        m = _BLOCK.search(self.source)
        assert m is not None
        text = body.strip()
        if _JINJA_SYNTAX.search(text):
            # An LLM-written method is data: wrap it so braces in it are printed, not run.
            text = "{% raw %}" + re.sub(r"\{%-?\s*endraw\s*-?%\}", "", text) + "{% endraw %}"
        new = f"{{% block method -%}}\n{text}\n{{%- endblock %}}"
        return EvolvingMethod(self.source[: m.start()] + new + self.source[m.end() :], self.origin)

    def render(self, instruction_text: str) -> str:
        """The evolving prompt for ``instruction_text`` (rendered as Evol-Instruct renders
        an operation: StrictUndefined, stripped)."""
        template = prompt_env().from_string(self.source)
        return template.render(instruction=instruction_text).strip()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()[:12]


def method_diff(old: EvolvingMethod, new: EvolvingMethod, old_name: str = "before",
                new_name: str = "after") -> str:
    """A unified diff of two methods' optimizable text (what the optimizer changed)."""
    lines = difflib.unified_diff(
        old.body.splitlines(keepends=True), new.body.splitlines(keepends=True),
        fromfile=old_name, tofile=new_name,
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


# --- failures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailureConfig:
    """The paper's three failure types, read from the answer to the evolved instruction.

    Each fires only on a *short* answer (fewer than ``max_words`` words, and not cut at the
    token limit): a long answer that opens with "Sure!" is doing the task.
    """

    stagnant_complexity: bool = True
    insufficient_qualification: bool = True
    loss_of_key_information: bool = True
    max_words: int = el.SHORT_RESPONSE_WORDS
    # Stagnant complexity: the answer only acknowledges, then asks back.
    acknowledgements: tuple[str, ...] = (
        "understood", "noted", "got it", "thank you", "thanks", "okay", "ok", "i see",
        "alright", "all right", "acknowledged",
    )
    # Insufficient qualification: it agrees, then has to ask what is meant.
    agreements: tuple[str, ...] = (
        "sure", "of course", "certainly", "absolutely", "yes", "i'd be happy to",
        "i would be happy to", "happy to help", "i'd be glad to", "i can help",
    )
    clarifying_questions: tuple[str, ...] = (
        r"what (?:do|did|would) you mean", r"what (?:kind|type|sort|specific)",
        r"which \w+(?: \w+)? (?:do|would|did) you", r"could you (?:please )?(?:specify|tell me|"
        r"explain|elaborate|give)", r"can you (?:please )?(?:specify|tell me|explain|elaborate|"
        r"give)", r"do you (?:mean|want|have)", r"more (?:details|information|context)",
        r"what (?:is|are) the", r"what would you like",
    )
    # Loss of key information: it asks for the missing input.
    missing_information: tuple[str, ...] = (
        "please provide", "could you clarify", "could you please clarify", "can you clarify",
        "could you provide", "could you please provide", "can you provide",
        "can you please provide", "please share", "please specify", "please clarify",
        "you haven't provided", "you have not provided", "you didn't provide",
        "you did not provide", "was not provided", "wasn't provided",
    )


def _opening(plain: str, phrases: Sequence[str], within_words: int = 4) -> str | None:
    """The phrase the answer opens with (within its first few words), or None."""
    head = " ".join(el.words(plain)[: within_words + 2])
    for p in phrases:
        if re.match(rf"^(?:\w+ ){{0,{within_words - 1}}}?{re.escape(p)}(?!\w)", head):
            return p
    return None


def paper_failure_types(
    answer: str, *, truncated: bool = False, config: FailureConfig | None = None
) -> list[el.Finding]:
    """The three failure types of the Auto Evol-Instruct paper, each a :class:`Finding`.

    >>> [f.rule for f in paper_failure_types("Understood. What should I do next?") if f.fired]
    ['stagnant_complexity']
    >>> [f.rule for f in paper_failure_types("Sure! What kind of poem do you mean?") if f.fired]
    ['insufficient_qualification']
    >>> [f.rule for f in paper_failure_types("Please provide the table first.") if f.fired]
    ['loss_of_key_information']
    >>> any(f.fired for f in paper_failure_types("Sure! Paris is the capital of France."))
    False
    """
    cfg = config or FailureConfig()
    plain = answer.replace("\u2019", "'").lower()
    n_words = len(el.words(answer))
    short = n_words < cfg.max_words and not truncated
    asks = "?" in answer
    base: dict[str, Any] = {"words": n_words, "threshold": cfg.max_words, "truncated": truncated,
                            "asks_back": asks, "answer": answer[:200]}
    out: list[el.Finding] = []

    if cfg.stagnant_complexity:
        ack = _opening(plain, cfg.acknowledgements)
        fired = bool(ack) and asks and short
        reason = (f"answer only acknowledges ({ack!r}) and asks back" if fired
                  else "no acknowledgement followed by a question in a short answer")
        out.append(el.Finding(STAGNANT_COMPLEXITY, fired, reason, {**base, "phrase": ack}))

    if cfg.insufficient_qualification:
        agree = _opening(plain, cfg.agreements)
        question = next((q for q in cfg.clarifying_questions if re.search(q, plain)), None)
        fired = bool(agree) and bool(question) and asks and short
        reason = (f"answer agrees ({agree!r}) but asks what is meant" if fired
                  else "no agreement followed by a clarifying question in a short answer")
        out.append(el.Finding(INSUFFICIENT_QUALIFICATION, fired, reason,
                              {**base, "phrase": agree, "question": question}))

    if cfg.loss_of_key_information:
        missing = next((p for p in cfg.missing_information
                        if re.search(rf"(?<!\w){re.escape(p)}(?!\w)", plain)), None)
        fired = bool(missing) and short
        reason = (f"answer asks for missing input ({missing!r})" if fired
                  else "no request for missing input in a short answer")
        out.append(el.Finding(LOSS_OF_KEY_INFORMATION, fired, reason, {**base, "phrase": missing}))
    return out


@dataclass
class DevResult:
    """One dev-set instruction evolved by one method: what came out and which rules fired."""

    id: str
    parent: str
    raw: str
    instruction: str | None
    section: str | None
    answer: str | None
    findings: list[el.Finding]

    @property
    def failed(self) -> bool:
        return any(f.fired for f in self.findings)

    @property
    def fired(self) -> list[str]:
        return [f.rule for f in self.findings if f.fired]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "parent": self.parent, "instruction": self.instruction,
            "section": self.section, "failed": self.failed, "fired": self.fired,
            "answer": self.answer, "raw": self.raw,
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass
class Score:
    """A method's dev-set result: failure rate, per-rule failure counts, and the tie-break.

    ``failure_rate`` is None for a candidate the optimizer did not deliver (never selected).
    """

    name: str
    failure_rate: float | None
    failures: int = 0
    total: int = 0
    rule_counts: dict[str, int] = field(default_factory=dict)
    mean_words: float = 0.0

    @property
    def firings(self) -> int:
        """Rule firings summed over items (an item failing two rules counts twice)."""
        return sum(self.rule_counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "firings": self.firings}


def failure_rate(name: str, results: Sequence[DevResult]) -> Score:
    """Failed items over all items, with how often each rule fired.

    >>> ok = DevResult("a", "p", "", "c", "final", "ans", [el.Finding("x", False, "")])
    >>> bad = DevResult("b", "p", "", None, None, None, [el.Finding(UNPARSEABLE, True, "")])
    >>> s = failure_rate("m", [ok, bad])
    >>> (s.failure_rate, s.rule_counts)
    (0.5, {'unparseable': 1})
    """
    counts: Counter[str] = Counter()
    for r in results:
        counts.update(set(r.fired))
    failures = sum(r.failed for r in results)
    lengths = [len(el.words(r.instruction)) for r in results if r.instruction]
    return Score(
        name,
        failures / len(results) if results else 0.0,
        failures,
        len(results),
        dict(sorted(counts.items())),
        round(sum(lengths) / len(lengths), 3) if lengths else 0.0,
    )


@dataclass
class Selection:
    """The outcome of one step's candidate selection."""

    winner: str
    improved: bool
    ranking: list[str]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_key(score: Score, index: int) -> tuple[float, int, float, int]:
    """Lower is better: failure rate, then rule firings, then longer evolved instructions
    (more added complexity), then the order the candidates were sampled in."""
    assert score.failure_rate is not None
    return (score.failure_rate, score.firings, -score.mean_words, index)


def select_candidate(current: Score, candidates: Sequence[Score]) -> Selection:
    """The candidate with the lowest failure rate, if it beats ``current``; else ``current``.

    Ties between candidates go to fewer rule firings, then longer evolved instructions, then
    the earlier candidate. A candidate must have a *strictly* lower failure rate than the
    current method to replace it (an equal rate is no evidence of improvement).

    >>> cur = Score("current", 0.5)
    >>> select_candidate(cur, [Score("c1", 0.4), Score("c2", 0.2), Score("c3", 0.3)]).winner
    'c2'
    >>> select_candidate(cur, [Score("c1", 0.5), Score("c2", 0.7)]).winner
    'current'
    """
    assert current.failure_rate is not None
    valid = [(rank_key(s, i), s) for i, s in enumerate(candidates) if s.failure_rate is not None]
    valid.sort(key=lambda pair: pair[0])
    ranking = [s.name for _, s in valid]
    if not valid:
        return Selection(current.name, False, ranking, "no candidate method was produced")
    best = valid[0][1]
    assert best.failure_rate is not None
    if best.failure_rate < current.failure_rate:
        return Selection(best.name, True, ranking,
                         f"{best.name} failure rate {best.failure_rate:.3f} < current "
                         f"{current.failure_rate:.3f}")
    return Selection(current.name, False, ranking,
                     f"best candidate {best.name} failure rate {best.failure_rate:.3f} does not "
                     f"beat current {current.failure_rate:.3f}")


# --- configuration -------------------------------------------------------------------------


# Auto Evol's defaults for what it shares with Evol-Instruct: small token caps, so a search
# finishes in minutes on the embedded CPU model, and one final round.
EVOL_DEFAULTS: dict[str, Any] = {"rounds": 1, "evol_max_tokens": 192,
                                 "response_max_tokens": 128, "method": METHOD}

# The fields of the embedded EvolConfig that the final pass sets itself (e* is its only
# operation); the rest of the embedded config is run as it is.
FINAL_PASS_FIELDS = ("operations", "ops_dir", "elimination", "method")


def evol_config(**overrides: Any) -> EvolConfig:
    """Evol-Instruct's config with Auto Evol-Instruct's defaults (see :data:`EVOL_DEFAULTS`),
    then ``overrides``: what :class:`AutoEvolConfig` embeds as ``evol``. ``rounds`` is the
    number of final Evol-Instruct rounds over the whole dataset with e* (0: search only).
    The response and judge models default to the evol model: one model plays every role
    unless another is named.

    >>> c = evol_config(seed=3, evol_llm=ModelConfig("openai:m@http://h/v1"))
    >>> (c.rounds, c.evol_max_tokens, c.response_max_tokens, c.method, c.seed)
    (1, 192, 128, 'auto_evol', 3)
    >>> c.judge_llm.model
    'openai:m@http://h/v1'
    """
    evol_llm = overrides.get("evol_llm")
    if evol_llm is not None:
        overrides = {"response_llm": replace(evol_llm), "judge_llm": replace(evol_llm),
                     **overrides}
    return EvolConfig(**{**EVOL_DEFAULTS, **overrides})


@dataclass
class AutoEvolConfig:
    """Everything the search and the final evolution depend on (saved, secrets excluded).

    ``evol`` is the Evol-Instruct config the two share: the evol, response and judge models,
    ``rounds`` of the final pass (0: search only), ``seed``, ``elimination``, the evolving,
    answer and judge sampling, the input (``column``, ``skip_invalid``, ``limit``),
    ``concurrency`` and ``shared_cache``. The search reads them from it and the final pass
    runs it, with e* as its only operation. The fields here are Auto Evol's own.

    The defaults are small so a search finishes in minutes on the embedded CPU model; with a
    real model raise the token caps (a four-section answer needs room) and the sizes.
    """

    evol: EvolConfig = field(default_factory=evol_config)
    optimizer_llm: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 3  # optimization steps T
    patience: int = 2  # stop after this many steps in a row without improvement (0: never)
    candidates: int = 3  # m, optimizations sampled per step
    trajectory_steps: int = 2  # l, evolutions per trajectory
    batch_size: int = 3  # mini-batch of instructions whose trajectories are analysed
    dev_size: int = 10  # held-out dev set for the failure rate
    initial_method: str | None = None  # a method file; default: the universal e0
    failures: FailureConfig = field(default_factory=FailureConfig)
    optimizer_temperature: float = 0.7
    optimizer_max_tokens: int = 384
    analysis_max_tokens: int = 128

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the shared settings nested under ``evol``."""
        return json.loads(json.dumps(asdict(self)))

    def check(self) -> None:
        if not isinstance(self.evol, EvolConfig):
            raise AutoEvolError(f"evol must be an EvolConfig, got {type(self.evol).__name__}")
        for name in ("steps", "candidates", "trajectory_steps", "batch_size", "dev_size"):
            if getattr(self, name) < 1:
                raise AutoEvolError(f"{name} must be >= 1, got {getattr(self, name)}")
        # rounds 0 is valid here (search only): the final pass, whose EvolChain wants >= 1,
        # is then never run.
        if self.evol.rounds < 0 or self.patience < 0:
            raise AutoEvolError("rounds and patience must be >= 0")
        e = self.evol
        if e.operations is not None or e.ops_dir is not None or e.weights:
            raise AutoEvolError("evol.operations, evol.ops_dir and evol.weights must be left "
                                "unset: the final pass's only operation is the best method "
                                "found")
        if e.executor != "local":
            raise AutoEvolError(f"evol.executor must be 'local', got {e.executor!r}: the final "
                                "pass runs e* through an in-process sections parser")

    def search_key(self) -> dict[str, Any]:
        """The settings a saved search depends on, flat (the shared ones read from ``evol``):
        a rerun with other values would mix two searches in one directory, so it is
        refused."""
        d = self.to_dict()
        keep = ("evol_llm", "optimizer_llm", "response_llm", "judge_llm", "candidates",
                "trajectory_steps", "batch_size", "dev_size", "seed", "elimination", "failures",
                "evol_temperature", "evol_max_tokens", "optimizer_temperature",
                "optimizer_max_tokens", "analysis_max_tokens", "response_temperature",
                "response_max_tokens", "judge_max_tokens", "top_p", "column", "limit")
        return {k: d[k] if k in d else d["evol"][k] for k in keep}

    def elimination_for_auto_evol(self) -> el.EliminationConfig:
        """Evol-Instruct's rules, with rule 4 also catching this method's section names."""
        elimination = self.evol.elimination
        patterns = tuple(dict.fromkeys(
            (*elimination.evolving_prompt_patterns, *AUTO_EVOL_PROMPT_PATTERNS)
        ))
        return el.EliminationConfig(**{**asdict(elimination),
                                       "evolving_prompt_patterns": patterns})

    def final_pass(self, ops_dir: str | Path) -> EvolConfig:
        """The Evol-Instruct config of the final pass: ``evol`` with e* (the ``auto_evol``
        operation in ``ops_dir``) as its only operation and this method's elimination."""
        return replace(self.evol, operations=[OPERATION], ops_dir=str(ops_dir),
                       elimination=self.elimination_for_auto_evol(), method=METHOD)


@dataclass
class SearchModels:
    """The backends of the search: evol (and response, judge) and optimizer."""

    evol: LLM
    optimizer: LLM
    response: LLM
    judge: LLM

    @classmethod
    def build(cls, cfg: AutoEvolConfig, api_key: str | None = None) -> SearchModels:
        e = cfg.evol
        # The search streams (its steps wait on each other); --batch is for the final pass.
        roles = [replace(c, batch=False) for c in
                 (e.evol_llm, cfg.optimizer_llm, e.response_llm, e.judge_llm)]
        return cls(*build_roles(roles, api_key))

    def distinct(self) -> list[LLM]:
        return distinct([self.evol, self.optimizer, self.response, self.judge])


def batched(models: SearchModels, cfg: EvolConfig, journal: Path) -> Models:
    """The final pass's backends: the search's, each server backend whose role asks for
    ``--batch`` wrapped in a :class:`~instructforge.llm.batch.BatchLLM` (one per backend)."""
    made: dict[int, LLM] = {}

    def wrap(llm: LLM, mc: ModelConfig) -> LLM:
        if not mc.batch or not isinstance(llm, OpenAICompatible):
            return llm
        if id(llm) not in made:
            made[id(llm)] = BatchLLM(llm, journal, size=mc.batch_requests,
                                     window=mc.batch_window, poll=mc.batch_poll)
        return made[id(llm)]

    return Models(wrap(models.evol, cfg.evol_llm), wrap(models.response, cfg.response_llm),
                  wrap(models.judge, cfg.judge_llm))


# --- the wrapper that lets Evol-Instruct run e* -----------------------------------------------


class SectionsLLM(WrappedLLM):
    """The evol backend seen through :func:`parse_method_output`: ``chat()`` returns the
    final rewritten instruction ('' when the answer cannot be parsed, which Evol-Instruct's
    elimination rejects as an empty instruction). Its ``model_id`` differs from the wrapped
    backend's, so cached parsed answers never collide with raw ones.

    >>> wrapped = SectionsLLM(make_llm("embedded"))                   # doctest: +SKIP
    """

    def __init__(self, inner: LLM, log_path: Path | None = None) -> None:
        super().__init__(inner)
        self.supports_completion = False
        self.log_path = log_path

    @property  # type: ignore[override]
    def model_id(self) -> str:
        return self.inner.model_id + MODEL_ID_SUFFIX

    async def chat(self, messages: list[Message], params: SamplingParams) -> Completion:
        out = await self.inner.chat(messages, params)
        parsed = parse_method_output(out.text)
        if self.log_path is not None:
            # The raw sectioned answers are not in the records: keep them for inspection.
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({
                    "parent": messages[-1]["content"].rsplit("#Instruction#:", 1)[-1].strip(),
                    "section": parsed.section, "instruction": parsed.instruction,
                    "raw": out.text,
                }, ensure_ascii=False) + "\n")
        return Completion(parsed.instruction or "", out.finish_reason, out.prompt_tokens,
                          out.completion_tokens, out.model, extra={"raw": out.text})

    async def complete(self, text: str, params: SamplingParams) -> Completion:
        raise RawCompletionUnsupported("the auto-evol sections wrapper only chats")

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "parser": "auto_evol sections"}


# --- the search ----------------------------------------------------------------------------


def _jsonl(rows: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


@dataclass
class StepRecord:
    """A finished step as saved in ``methods/step_K/step.json``."""

    step: int
    method: str  # path of the method after this step, relative to methods/
    failure_rate: float
    improved: bool
    winner: str
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    """The search's outcome: every step, the best method e* and its score."""

    steps: list[StepRecord]
    best: StepRecord
    best_method: EvolvingMethod
    best_path: Path
    stopped: str
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass
class Instr:
    id: str
    text: str


class MethodSearch:
    """The optimization loop over one run directory (resumable)."""

    def __init__(self, cfg: AutoEvolConfig, models: SearchModels, run_dir: str | Path,
                 pool: Sequence[Instr], *, log: Any = None) -> None:
        cfg.check()
        self.cfg = cfg
        self.models = models
        self.root = Path(run_dir) / "methods"
        self.pool = list(pool)
        if not self.pool:
            raise AutoEvolError("no instructions to search with")
        self.log = log or (lambda msg: None)
        self.rules = cfg.elimination_for_auto_evol()
        self.initial = (EvolvingMethod.load(cfg.initial_method) if cfg.initial_method
                        else EvolvingMethod.initial())
        # The dev set is held out: mini-batches never come from it, so the failure rate
        # that picks a method is measured on instructions its optimisation never saw.
        if len(self.pool) < cfg.dev_size + cfg.batch_size:
            raise AutoEvolError(
                f"{len(self.pool)} instructions cannot hold a dev set of {cfg.dev_size} and "
                f"mini-batches of {cfg.batch_size} apart: give at least "
                f"{cfg.dev_size + cfg.batch_size} instructions, or lower --dev-size / "
                f"--batch-size (e.g. --dev-size {max(1, len(self.pool) - cfg.batch_size)})"
            )
        rng = random.Random(stable_seed(cfg.evol.seed, "dev_set"))
        self.dev = sorted(rng.sample(self.pool, cfg.dev_size), key=lambda x: x.id)
        dev_ids = {d.id for d in self.dev}
        self.train = [x for x in self.pool if x.id not in dev_ids]

    # -- LLM calls -----------------------------------------------------------------------
    def _evol_params(self, *seed_parts: object) -> SamplingParams:
        e = self.cfg.evol
        return SamplingParams(e.evol_temperature, e.top_p, e.evol_max_tokens,
                              stable_seed(e.seed, *seed_parts))

    async def _evolve(self, ctx: Context, method: EvolvingMethod, text: str, step: str,
                      *seed_parts: object) -> tuple[str, MethodOutput, Completion]:
        out = await ctx.chat(self.models.evol,
                             [{"role": "user", "content": method.render(text)}],
                             self._evol_params(*seed_parts), step=step)
        return out.text, parse_method_output(out.text), out

    async def trajectory(self, ctx: Context, method: EvolvingMethod, x: Instr,
                         k: int) -> dict[str, Any]:
        """X, X(1), ..., X(l) with the current method; stops at an unparseable answer."""
        stages: list[dict[str, Any]] = [{"stage": 0, "instruction": x.text, "note": None}]
        current = x.text
        for s in range(1, self.cfg.trajectory_steps + 1):
            raw, parsed, _ = await self._evolve(ctx, method, current, "trajectory",
                                                "trajectory", k, x.id, s)
            if parsed.instruction is None:
                stages.append({"stage": s, "instruction": raw.strip()[:500],
                               "note": "the method's answer had no final rewritten "
                                       "instruction; this is its raw output", "raw": raw})
                break
            current, _ = el.normalise_instruction(parsed.instruction)
            stages.append({"stage": s, "instruction": current, "note": None, "raw": raw,
                           "section": parsed.section})
        return {"id": x.id, "stages": stages}

    async def analyse(self, ctx: Context, traj: dict[str, Any], k: int) -> dict[str, Any]:
        c = self.cfg
        prompt = render_prompt("trajectory_analysis.jinja", stages=traj["stages"])
        out = await ctx.chat(
            self.models.optimizer, [{"role": "user", "content": prompt}],
            SamplingParams(c.optimizer_temperature, c.evol.top_p, c.analysis_max_tokens,
                           stable_seed(c.evol.seed, "analysis", k, traj["id"])),
            step="analysis",
        )
        return {"id": traj["id"], "feedback": parse_feedback(out.text), "raw": out.text}

    async def optimize(self, ctx: Context, method: EvolvingMethod, feedback: list[str], k: int,
                       j: int) -> tuple[EvolvingMethod | None, str]:
        c = self.cfg
        prompt = render_prompt("method_optimization.jinja", method=method.body, feedback=feedback)
        out = await ctx.chat(
            self.models.optimizer, [{"role": "user", "content": prompt}],
            # Distinct seeds: the m samples must differ.
            SamplingParams(c.optimizer_temperature, c.evol.top_p, c.optimizer_max_tokens,
                           stable_seed(c.evol.seed, "optimize", k, j)),
            step="optimize",
        )
        body = parse_optimized_method(out.text)
        return (method.with_body(body) if body else None), out.text

    async def evaluate(self, ctx: Context, method: EvolvingMethod) -> list[DevResult]:
        """Evolve every dev instruction once with ``method`` and check every failure rule.

        Seeds depend on the dev item only, not on the method, so all methods are compared on
        the same sampling noise.
        """
        return list(await asyncio.gather(*[self._evaluate_one(ctx, method, x) for x in self.dev]))

    async def _evaluate_one(self, ctx: Context, method: EvolvingMethod, x: Instr) -> DevResult:
        e, rules = self.cfg.evol, self.rules
        raw, parsed, out = await self._evolve(ctx, method, x.text, "dev_evolve", "dev", x.id,
                                              "evolve")
        if parsed.instruction is None:
            f = el.Finding(UNPARSEABLE, True, "the method's answer has no final rewritten "
                           "instruction section", {"sections": parsed.sections})
            return DevResult(x.id, x.text, raw, None, None, None, [f])
        child, normalisations = el.normalise_instruction(parsed.instruction)
        findings = await el.check_instruction(
            x.text, child, self._judge(ctx), rules, normalisations=normalisations,
            truncated=out.finish_reason == "length",
        )
        if el.first_fired(findings):  # as in Evol-Instruct: a failed child is not answered
            return DevResult(x.id, x.text, raw, child, parsed.section, None, findings)
        reply = await ctx.chat(
            self.models.response, [{"role": "user", "content": child}],
            SamplingParams(e.response_temperature, e.top_p, e.response_max_tokens,
                           stable_seed(e.seed, "dev", x.id, "respond")),
            step="dev_respond",
        )
        answer = reply.text.strip()
        truncated = reply.finish_reason == "length"
        findings += el.check_response(answer, rules, truncated=truncated)
        findings.extend(paper_failure_types(answer, truncated=truncated,
                                            config=self.cfg.failures))
        return DevResult(x.id, x.text, raw, child, parsed.section, answer, findings)

    def _judge(self, ctx: Context) -> el.Judge:
        """The dev-set judge, asked exactly as Evol-Instruct asks it (greedy, constrained)."""
        e = self.cfg.evol

        async def ask(prompt: str, choices: tuple[str, ...]) -> str:
            out = await ctx.chat(
                self.models.judge, [{"role": "user", "content": prompt}],
                SamplingParams(0.0, 1.0, e.judge_max_tokens, e.seed, choices=choices),
                step="dev_judge",
            )
            return out.text

        return ask

    # -- persistence ---------------------------------------------------------------------
    def _step_dir(self, k: int) -> Path:
        return self.root / f"step_{k}"

    def _load_step(self, k: int) -> StepRecord | None:
        p = self._step_dir(k) / "step.json"
        if not p.exists():
            return None
        return StepRecord(**json.loads(p.read_text(encoding="utf-8")))

    def _check_config(self) -> None:
        p = self.root / "config.json"
        key = redact_urls(self.cfg.search_key())  # saved: no credentials in server URLs
        if p.exists():
            saved = json.loads(p.read_text(encoding="utf-8"))
            diff = sorted(k for k in set(key) | set(saved) if key.get(k) != saved.get(k))
            if diff:
                raise AutoEvolError(
                    f"{self.root}: this run directory holds a search made with other settings "
                    f"({', '.join(diff)} differ); use a new --output or the same options"
                )
        else:
            write_atomic(p, key)
        write_atomic(self.root / "dev_set.jsonl", _jsonl([asdict(x) for x in self.dev]))

    def _save_evaluation(self, d: Path, score: Score, results: list[DevResult]) -> None:
        write_atomic(d / "evaluation.json", {"score": score.to_dict(),
                                       "items": [r.to_dict() for r in results]})

    # -- the loop ------------------------------------------------------------------------
    async def run(self, ctx: Context) -> SearchResult:
        cfg = self.cfg
        self._check_config()
        history: list[StepRecord] = []

        # Step 0: the initial method's failure rate on the dev set.
        rec0 = self._load_step(0)
        if rec0 is None:
            d0 = self._step_dir(0)
            write_atomic(d0 / "method.jinja", self.initial.source)
            self.log(f"step 0: evaluating the initial method on {len(self.dev)} dev "
                     "instructions")
            results = await self.evaluate(ctx, self.initial)
            score = failure_rate("initial", results)
            self._save_evaluation(d0, score, results)
            rec0 = StepRecord(0, "step_0/method.jinja", score.failure_rate or 0.0, False,
                              "initial", [])
            write_atomic(d0 / "step.json", rec0.to_dict())
        elif EvolvingMethod.load(self.root / rec0.method).source != self.initial.source:
            raise AutoEvolError(f"{self.root}: the saved initial method differs from "
                                "--initial-method; use a new --output")
        self.log(f"step 0: initial method failure rate {rec0.failure_rate:.3f}")
        history.append(rec0)
        best = rec0
        stale = 0
        stopped = f"ran {cfg.steps} steps"
        for k in range(1, cfg.steps + 1):
            if cfg.patience and stale >= cfg.patience:
                stopped = f"no improvement for {stale} steps (patience {cfg.patience})"
                break
            rec = self._load_step(k)
            if rec is None:
                rec = await self.step(ctx, k, best)
            else:
                self.log(f"step {k}: loaded from {self._step_dir(k)}")
            history.append(rec)
            self.log(f"step {k}: {rec.winner} (failure rate {rec.failure_rate:.3f}"
                     f"{', improved' if rec.improved else ''})")
            if rec.improved:
                best, stale = rec, 0
            else:
                stale += 1
        best_method = EvolvingMethod.load(self.root / best.method)
        best_dir = self.root / "best"
        write_atomic(best_dir / f"{OPERATION}.jinja", best_method.source)
        write_atomic(best_dir / "best.json", {**best.to_dict(), "stopped": stopped})
        write_atomic(self.root / "history.json", {
            "stopped": stopped,
            "best": {"step": best.step, "method": best.method,
                     "failure_rate": best.failure_rate},
            "steps": [r.to_dict() for r in history],
        })
        return SearchResult(history, best, best_method, best_dir / f"{OPERATION}.jinja", stopped)

    async def step(self, ctx: Context, k: int, current_rec: StepRecord) -> StepRecord:
        """One optimization step: trajectories, feedback, m candidates, selection."""
        cfg = self.cfg
        d = self._step_dir(k)
        current = EvolvingMethod.load(self.root / current_rec.method)
        rng = random.Random(stable_seed(cfg.evol.seed, "batch", k))
        batch = rng.sample(self.train, min(cfg.batch_size, len(self.train)))

        self.log(f"step {k}: evolving {len(batch)} trajectories of {cfg.trajectory_steps} "
                 "steps with the current method")
        trajectories = list(await asyncio.gather(*[self.trajectory(ctx, current, x, k)
                                                   for x in batch]))
        write_atomic(d / "trajectories.jsonl", _jsonl(trajectories))
        self.log(f"step {k}: analysing the trajectories")
        analyses = list(await asyncio.gather(*[self.analyse(ctx, t, k) for t in trajectories]))
        feedback = [a["feedback"] for a in analyses if a["feedback"]]
        write_atomic(d / "feedback.json", analyses)

        self.log(f"step {k}: sampling {cfg.candidates} optimized methods")
        optimized = await asyncio.gather(*[self.optimize(ctx, current, feedback, k, j)
                                           for j in range(1, cfg.candidates + 1)])
        # The candidates are on disk before their (long) evaluation, for inspection.
        for j, (method, raw) in enumerate(optimized, 1):
            cd = d / f"candidate_{j}"
            write_atomic(cd / "optimizer_output.txt", raw)
            if method is not None:
                write_atomic(cd / "method.jinja", method.source)
                write_atomic(cd / "method.diff", method_diff(current, method, current_rec.method,
                                                       f"step_{k}/candidate_{j}/method.jinja"))
        self.log(f"step {k}: evaluating {sum(m is not None for m, _ in optimized)} candidates "
                 f"on {len(self.dev)} dev instructions")
        evaluated = await asyncio.gather(*[self.evaluate(ctx, m) if m is not None
                                           else _nothing() for m, _ in optimized])
        current_score = Score("current", current_rec.failure_rate)
        scores: list[Score] = []
        for j, ((method, _), results) in enumerate(zip(optimized, evaluated, strict=True), 1):
            cd = d / f"candidate_{j}"
            name = f"candidate_{j}"
            if method is None:
                scores.append(Score(name, None))
                write_atomic(cd / "evaluation.json", {"score": scores[-1].to_dict(), "items": [],
                                                "note": "the optimizer's answer held no "
                                                        "method"})
                continue
            scores.append(failure_rate(name, results))
            self._save_evaluation(cd, scores[-1], results)

        selection = select_candidate(current_score, scores)
        write_atomic(d / "selection.json", {
            **selection.to_dict(),
            "current": {"method": current_rec.method, "failure_rate": current_rec.failure_rate},
            "candidates": [s.to_dict() for s in scores],
            "tie_break": "failure rate, then fewer rule firings, then longer evolved "
                         "instructions, then candidate order",
        })
        winner = current
        method_path = current_rec.method
        rate = current_rec.failure_rate
        if selection.improved:
            j = int(selection.winner.rsplit("_", 1)[1])
            winner = optimized[j - 1][0]  # type: ignore[assignment]
            method_path = f"step_{k}/method.jinja"
            rate = scores[j - 1].failure_rate  # type: ignore[assignment]
            write_atomic(d / "method.jinja", winner.source)
            write_atomic(d / "method.diff", method_diff(current, winner, current_rec.method,
                                                  method_path))
        rec = StepRecord(k, method_path, rate, selection.improved, selection.winner,
                         [s.to_dict() for s in scores])
        write_atomic(d / "step.json", rec.to_dict())  # last: the step is complete
        return rec


async def _nothing() -> list[DevResult]:
    return []


# --- the whole method ----------------------------------------------------------------------


def load_pool(input_path: str | Path, cfg: AutoEvolConfig) -> list[Instr]:
    """The valid input instructions (bad rows raise :class:`InputError` unless skipped)."""
    e = cfg.evol
    source = InstructionSource(input_path, column=e.column, skip_invalid=e.skip_invalid,
                               limit=e.limit)
    source.validate()
    return [Instr(r["id"], instruction(r)) for r in source if r.get("status") != "rejected"]


def search(
    input_path: str | Path,
    run_dir: str | Path,
    config: AutoEvolConfig | None = None,
    *,
    models: SearchModels | None = None,
    api_key: str | None = None,
    log: Any = None,
) -> SearchResult:
    """Search for the best evolving method e* (resumable); writes ``RUN_DIR/methods/``."""
    cfg = config or AutoEvolConfig()
    cfg.check()
    pool = load_pool(input_path, cfg)
    models = models or SearchModels.build(cfg, api_key)
    searcher = MethodSearch(cfg, models, run_dir, pool, log=log)
    return asyncio.run(_run_search(searcher, Path(run_dir), cfg))


async def _run_search(searcher: MethodSearch, run_dir: Path, cfg: AutoEvolConfig) -> SearchResult:
    await preflight(searcher.models.distinct())
    cache = RequestCache(RunDir(run_dir).cache)
    shared = RequestCache(Path(cfg.evol.shared_cache)) if cfg.evol.shared_cache else None
    budget = None
    if cfg.evol.max_cost is not None:  # the search and the final pass share the cap
        Budget.check(searcher.models.distinct())
        budget = Budget(cfg.evol.max_cost, spent_so_far(searcher.root / "usage.json"))
    ctx = Context(cache, shared, budget)
    started = round(time.time(), 3)
    try:
        result = await searcher.run(ctx)
    finally:
        usage = ctx.usage.as_dict()
        save_usage(searcher.root / "usage.json", "auto_evol_search",
                   {"pid": os.getpid(), "started": started,
                    "cost_usd": round(ctx.usage.cost_usd, 6), "by_model_step": usage})
        for llm in searcher.models.distinct():
            await llm.release_loop()  # the final pass uses them again (a vLLM model stays)
        cache.close()
        if shared:
            shared.close()
    result.usage = usage
    return result


def estimate(input_path: str | Path, config: AutoEvolConfig | None = None) -> dict[str, Any]:
    """What :func:`auto_evolve` would do and cost at most, without calling anything (the
    CLI's ``--dry-run``)."""
    cfg = config or AutoEvolConfig()
    cfg.check()
    n = len(load_pool(input_path, cfg))
    e = cfg.evol
    dev = min(cfg.dev_size, n)
    per_dev = 3  # evolve, judge, respond
    per_step = (cfg.batch_size * cfg.trajectory_steps + cfg.batch_size + cfg.candidates
                + cfg.candidates * dev * per_dev)
    return {
        "input": str(input_path),
        "instructions": n,
        "dev_set": dev,
        "steps": cfg.steps,
        "candidates_per_step": cfg.candidates,
        "models": f"evol={e.evol_llm.model} optimizer={cfg.optimizer_llm.model} "
                  f"response={e.response_llm.model} judge={e.judge_llm.model}",
        "search_llm_calls_at_most": dev * per_dev + cfg.steps * per_step,
        "evolution_rounds": e.rounds,
        "evolution_llm_calls_at_most": n * e.rounds * 3,
    }


@dataclass
class AutoEvolResult:
    search: SearchResult
    evolution: JobResult | None


def auto_evolve(
    input_path: str | Path,
    run_dir: str | Path,
    config: AutoEvolConfig | None = None,
    *,
    models: SearchModels | None = None,
    api_key: str | None = None,
    progress: bool = True,
    log: Any = None,
) -> AutoEvolResult:
    """Search for e*, then evolve the whole dataset with it for ``config.evol.rounds`` rounds.

    The second part *is* Evol-Instruct (:func:`~instructforge.methods.evol_instruct.evolve`)
    with e* as its only operation and the evol backend wrapped in :class:`SectionsLLM`, so
    responses, elimination, lineage, resume and ``summary.json`` are exactly ``evolve``'s.
    """
    # One process at a time: the search's calls and the final pass both write the run.
    with RunDir(run_dir).lock():
        return _auto_evolve(input_path, run_dir, config, models=models, api_key=api_key,
                            progress=progress, log=log)


def _auto_evolve(
    input_path: str | Path,
    run_dir: str | Path,
    config: AutoEvolConfig | None,
    *,
    models: SearchModels | None,
    api_key: str | None,
    progress: bool,
    log: Any,
) -> AutoEvolResult:
    cfg = config or AutoEvolConfig()
    models = models or SearchModels.build(cfg, api_key)
    found = search(input_path, run_dir, cfg, models=models, api_key=api_key, log=log)
    if cfg.evol.rounds == 0:
        return AutoEvolResult(found, None)
    evol_cfg = cfg.final_pass(found.best_path.parent)
    if evol_cfg.max_cost is not None:  # what the search spent is spent
        left = evol_cfg.max_cost - spent_so_far(Path(run_dir) / "methods" / "usage.json")
        evol_cfg = replace(evol_cfg, max_cost=max(left, 1e-9))
    # config.yaml records the whole Auto Evol config (the shared part nested under `evol:`)
    # and what the final pass set in it.
    record = {**cfg.to_dict(),
              "final_pass": {k: v for k, v in evol_cfg.to_dict().items()
                             if k in FINAL_PASS_FIELDS}}
    final = batched(models, evol_cfg, RunDir(run_dir).batches)
    wrapper = SectionsLLM(final.evol, found.best_path.parent / "evolutions.jsonl")
    job = evolve(input_path, run_dir, evol_cfg,
                 models=Models(evol=wrapper, response=final.response, judge=final.judge),
                 progress=progress, run_config=record)
    return AutoEvolResult(found, job)
