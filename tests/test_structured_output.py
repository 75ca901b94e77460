"""Constrained output (``SamplingParams(choices=..., json_schema=...)``) on every backend.

(a) the real embedded llama.cpp server enforces it; (b) a server that refuses it is asked
again without it, once, and the backend remembers; (c) how each server flavour is asked;
(d) in-process vLLM, with a fake ``vllm`` module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest

from instructforge.devserver import CONSTRAINT_FIELDS, DevServer
from instructforge.engine.context import Context
from instructforge.llm import Completion, LLMError, OpenAICompatible, SamplingParams
from instructforge.llm.openai import constraint_fields
from instructforge.llm.structured import choice_grammar, choice_schema, gbnf_literal
from instructforge.llm.vllm import VLLM

CHOICES = ("Equal", "Not Equal")
SCORE = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "reason": {"type": "string", "maxLength": 80},
    },
    "required": ["score", "reason"],
    "additionalProperties": False,
}
PROSE = [{"role": "user", "content": (
    "Here are two instructions.\nA: Write a poem about the sea.\nB: Compose a short verse "
    "about the ocean.\nAre they equal? Think step by step and explain your reasoning in detail "
    "before you answer.")}]
MSG = [{"role": "user", "content": "hi"}]


def fast(url: str, model: str | None = "dev", **kw: Any) -> OpenAICompatible:
    return OpenAICompatible(url, model, backoff_base=0.01, backoff_max=0.05, **kw)


def constraint_keys(body: dict[str, Any]) -> list[str]:
    return [k for k in CONSTRAINT_FIELDS if k in body]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "instructforge" and r.levelno == logging.WARNING]


# -- (a) the real embedded llama.cpp server ------------------------------------------------------
@pytest.mark.llm
def test_llamacpp_answers_exactly_one_choice_where_free_text_would_not(embedded_llm):
    async def run() -> tuple[list[Completion], list[Completion], Completion]:
        chats = await asyncio.gather(*[
            embedded_llm.chat(PROSE, SamplingParams(1.0, max_tokens=24, seed=s, choices=CHOICES))
            for s in range(6)])
        raws = await asyncio.gather(*[
            embedded_llm.complete("Question: is 2+2 equal to 4? Discuss.\nAnswer:",
                                  SamplingParams(1.0, max_tokens=24, seed=s, choices=CHOICES))
            for s in range(3)])
        free = await embedded_llm.chat(PROSE, SamplingParams(1.0, max_tokens=24, seed=0))
        return chats, raws, free

    chats, raws, free = asyncio.run(run())
    assert asyncio.run(embedded_llm.server_flavour()) == "llamacpp"
    for out in chats + raws:
        assert out.text in CHOICES, out.text
        assert out.extra["constraint"] == "native"
        assert out.finish_reason == "stop"
    # The same request without the constraint rambles: the grammar is what made it exact.
    assert free.text.strip() not in CHOICES
    assert "constraint" not in free.extra


@pytest.mark.llm
def test_llamacpp_choices_with_quotes_backslashes_and_unicode_come_back_verbatim(embedded_llm):
    choices = ('Say "yes"', "back\\slash", "naïve café", "[x] | y ::= z")

    async def run() -> list[Completion]:
        return list(await asyncio.gather(*[
            embedded_llm.chat(MSG, SamplingParams(1.0, max_tokens=16, seed=s, choices=(c,)))
            for s, c in enumerate(choices)]))

    assert [o.text for o in asyncio.run(run())] == list(choices)


@pytest.mark.llm
def test_llamacpp_json_schema_output_parses_and_validates(embedded_llm):
    async def run() -> list[Completion]:
        chats = [embedded_llm.chat(PROSE, SamplingParams(1.0, max_tokens=120, seed=s,
                                                         json_schema=SCORE)) for s in range(3)]
        raw = embedded_llm.complete("Rate the poem 'Roses are red' from 1 to 5.\n",
                                    SamplingParams(1.0, max_tokens=120, seed=1, json_schema=SCORE))
        return list(await asyncio.gather(*chats, raw))

    for out in asyncio.run(run()):
        value = json.loads(out.text)  # the whole text, no prose around it
        assert set(value) == {"score", "reason"}
        assert type(value["score"]) is int and 1 <= value["score"] <= 5
        assert isinstance(value["reason"], str) and len(value["reason"]) <= 80
        assert out.extra["constraint"] == "native"


# -- (b) a server that refuses constraints -------------------------------------------------------
def test_a_refused_constraint_falls_back_once_warns_once_and_is_counted(caplog):
    caplog.set_level(logging.WARNING, logger="instructforge")
    params = SamplingParams(0.0, max_tokens=8, seed=1, choices=CHOICES)
    with DevServer(reject_constraints=True) as srv:
        llm = fast(srv.url)
        ctx = Context(None)

        async def run() -> list[Completion]:
            first = await ctx.chat(llm, [{"role": "user", "content": "one"}], params, step="judge")
            second = await ctx.chat(llm, [{"role": "user", "content": "two"}], params, step="judge")
            plain = await ctx.chat(llm, [{"role": "user", "content": "three"}],
                                   SamplingParams(0.0, max_tokens=8), step="judge")
            return [first, second, plain]

        first, second, plain = asyncio.run(run())
        bodies = srv.bodies
    assert first.text == second.text == srv.answer
    assert first.extra["constraint"] == second.extra["constraint"] == "fallback"
    assert "constraint" not in plain.extra
    # constrained (refused), the same without, then the second call without at once
    assert [constraint_keys(b) for b in bodies] == [["response_format"], [], [], []]
    assert [b["messages"][0]["content"] for b in bodies] == ["one", "one", "two", "three"]
    assert srv.rejected == 1
    warned = warnings_of(caplog)
    assert len(warned) == 1 and "refused constrained decoding" in warned[0]
    usage = ctx.usage.as_dict()[llm.model_id]["judge"]
    assert usage["requests"] == 3 and usage["unconstrained"] == 2


def test_concurrent_refusals_warn_once_and_all_fall_back(caplog):
    caplog.set_level(logging.WARNING, logger="instructforge")
    with DevServer(reject_constraints=True, flavour="vllm") as srv:
        llm = fast(srv.url)

        async def run() -> list[Completion]:
            return list(await asyncio.gather(*[
                llm.chat([{"role": "user", "content": str(i)}],
                         SamplingParams(0.0, max_tokens=8, json_schema=SCORE))
                for i in range(8)]))

        outs = asyncio.run(run())
    assert {o.extra["constraint"] for o in outs} == {"fallback"}
    assert len(warnings_of(caplog)) == 1
    assert 1 <= srv.rejected <= 8


def test_an_error_the_unconstrained_request_gets_too_is_raised_and_not_remembered(caplog):
    caplog.set_level(logging.WARNING, logger="instructforge")
    params = SamplingParams(0.0, max_tokens=8, choices=CHOICES)
    with DevServer(faults=["400", "400"]) as srv:
        llm = fast(srv.url, structured="openai")
        with pytest.raises(LLMError, match="HTTP 400"):
            asyncio.run(llm.chat(MSG, params))
        out = asyncio.run(llm.chat(MSG, params))  # the server is fine now: constrained again
        bodies = srv.bodies
    assert out.extra["constraint"] == "native"
    assert constraint_keys(bodies[-1]) == ["response_format"]
    assert warnings_of(caplog) == []


def test_raw_completion_falls_back_too_and_chat_is_remembered_apart():
    params = SamplingParams(0.0, max_tokens=8, choices=CHOICES)
    with DevServer(reject_constraints=True, flavour="llamacpp") as srv:
        llm = fast(srv.url)
        raw = asyncio.run(llm.complete("Q:", params))
        chat = asyncio.run(llm.chat(MSG, params))
        bodies = srv.bodies
    assert raw.extra["constraint"] == chat.extra["constraint"] == "fallback"
    assert [constraint_keys(b) for b in bodies] == [["grammar"], [], ["grammar"], []]


def test_the_fallback_mark_survives_the_cache_and_old_rows_still_load():
    out = Completion("Equal", "stop", 3, 1, "m", extra={"constraint": "fallback"})
    row = json.loads(json.dumps(out.to_dict()))
    assert row["constraint"] == "fallback"
    assert Completion.from_dict(row, cached=True).extra == {"constraint": "fallback"}
    old = {"text": "x", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1,
           "model": "m"}
    assert Completion.from_dict(old).extra == {}
    assert Completion("x", "stop", 1, 1, "m").to_dict() == old  # unconstrained rows unchanged


# -- (c) how each flavour is asked ---------------------------------------------------------------
@pytest.mark.parametrize("flavour, version, expected", [
    ("llamacpp", None, ["grammar"]),
    ("vllm", "0.11.0", ["structured_outputs"]),
    ("vllm", "0.10.1.1", ["guided_choice"]),
    ("openai", None, ["response_format"]),
])
def test_the_flavour_is_detected_once_and_mapped(flavour, version, expected):
    params = SamplingParams(0.0, max_tokens=8, choices=CHOICES)
    with DevServer(flavour=flavour, version=version or "0.11.0") as srv:
        llm = fast(srv.url)

        async def run() -> tuple[Completion, int, Completion, int]:
            first = await llm.chat(MSG, params)
            n = srv.requests
            second = await llm.complete("Q:", params)
            return first, n, second, srv.requests - n

        first, n_first, second, n_second = asyncio.run(run())
        bodies = srv.bodies
    assert first.extra["constraint"] == second.extra["constraint"] == "native"
    assert [constraint_keys(b) for b in bodies] == [expected, expected]
    assert n_first >= 2 and n_second == 1  # probes on the first constrained call only
    assert llm._flavour == flavour


def test_a_probe_that_got_no_answer_is_tried_again_on_the_next_call():
    params = SamplingParams(0.0, max_tokens=8, choices=CHOICES)
    # GET /props times out once
    with DevServer(flavour="llamacpp", faults=["timeout"], timeout_sleep=1.0) as srv:
        llm = fast(srv.url, timeout=0.5)
        asyncio.run(llm.chat(MSG, params))
        assert llm._flavour is None
        asyncio.run(llm.chat(MSG, params))
        bodies = srv.bodies
    assert [constraint_keys(b) for b in bodies] == [["response_format"], ["grammar"]]
    assert llm._flavour == "llamacpp"


def test_unconstrained_calls_never_probe_and_carry_no_constraint():
    with DevServer(flavour="llamacpp") as srv:
        llm = fast(srv.url)
        out = asyncio.run(llm.chat(MSG, SamplingParams(0.0, max_tokens=8)))
        assert srv.requests == 1 and constraint_keys(srv.bodies[0]) == []
    assert out.extra == {} and llm._flavour is None


def test_structured_off_sends_no_constraint_and_says_so():
    with DevServer(flavour="llamacpp") as srv:
        llm = fast(srv.url, structured="off")
        ctx = Context(None)
        out = asyncio.run(ctx.chat(llm, MSG, SamplingParams(0.0, choices=CHOICES), step="s"))
        assert srv.requests == 1 and constraint_keys(srv.bodies[0]) == []
    assert out.extra["constraint"] == "off"
    assert ctx.usage.as_dict()[llm.model_id]["s"]["unconstrained"] == 1
    assert llm.describe()["structured"] == "off"


def test_a_forced_flavour_is_used_without_probing():
    with DevServer(flavour="llamacpp") as srv:
        llm = fast(srv.url, structured="vllm")
        asyncio.run(llm.chat(MSG, SamplingParams(0.0, json_schema=SCORE)))
        assert srv.requests == 1
        assert srv.bodies[0]["structured_outputs"] == {"json": SCORE}


def test_an_unknown_structured_setting_is_refused():
    with pytest.raises(LLMError, match="structured='xgrammar'"):
        OpenAICompatible("http://127.0.0.1:9/v1", "m", structured="xgrammar")


def test_payload_mapping_for_choices():
    p = SamplingParams(0.0, choices=CHOICES)
    assert constraint_fields("llamacpp", p) == {"grammar": 'root ::= "Equal" | "Not Equal"'}
    assert constraint_fields("vllm", p) == {"structured_outputs": {"choice": list(CHOICES)}}
    assert constraint_fields("vllm", p, "0.12.0rc1") == {
        "structured_outputs": {"choice": list(CHOICES)}}
    assert constraint_fields("vllm", p, "0.10.2") == {"guided_choice": list(CHOICES)}
    assert constraint_fields("vllm", p, "garbage") == {
        "structured_outputs": {"choice": list(CHOICES)}}
    assert constraint_fields("openai", p) == {"response_format": {"type": "json_schema",
        "json_schema": {"name": "choice", "schema": choice_schema(CHOICES), "strict": True}}}
    assert constraint_fields("off", p) == {}


def test_payload_mapping_for_json_schema():
    p = SamplingParams(0.0, json_schema=SCORE)
    assert constraint_fields("llamacpp", p) == {"json_schema": SCORE}
    assert constraint_fields("vllm", p, "0.11.1") == {"structured_outputs": {"json": SCORE}}
    assert constraint_fields("vllm", p, "0.6.3.post1") == {"guided_json": SCORE}
    assert constraint_fields("openai", p) == {"response_format": {"type": "json_schema",
        "json_schema": {"name": "output", "schema": SCORE, "strict": True}}}


def test_payload_mapping_without_a_constraint_adds_nothing_and_choices_win_over_a_schema():
    assert all(constraint_fields(f, SamplingParams()) == {}
               for f in ("llamacpp", "vllm", "openai"))
    both = SamplingParams(0.0, choices=CHOICES, json_schema=SCORE)
    assert list(constraint_fields("llamacpp", both)) == ["grammar"]
    with pytest.raises(ValueError, match="unknown server flavour"):
        constraint_fields("tgi", both)


def test_gbnf_literals_escape_what_the_grammar_parser_reads_specially():
    assert gbnf_literal('a "b" \\ c') == '"a \\"b\\" \\\\ c"'
    assert gbnf_literal("x\ny\tz\r\x07") == '"x\\ny\\tz\\r\\x07"'
    assert gbnf_literal("naïve 🎉") == '"naïve 🎉"'
    assert choice_grammar(["A", "B|C"]) == 'root ::= "A" | "B|C"'


# -- (d) in-process vLLM, with a fake vllm module --------------------------------------------------
@dataclass
class _Out:
    text: str
    finish_reason: str = "stop"
    token_ids: tuple[int, ...] = (1, 2)


@dataclass
class _Final:
    outputs: list[_Out]
    prompt_token_ids: tuple[int, ...] = (1, 2, 3)


class _FakeEngine:
    def __init__(self, refuse: bool = False) -> None:
        self.seen: list[Any] = []
        self.refuse = refuse

    async def generate(self, prompt: Any, sampling: Any, request_id: str):
        self.seen.append(sampling)
        if self.refuse and ("structured_outputs" in sampling.kw or "guided_decoding" in sampling.kw):
            raise ValueError("xgrammar does not support this schema")
        yield _Final([_Out("Equal")])


def _fake_vllm(monkeypatch: pytest.MonkeyPatch, kind: str | None) -> None:
    """A ``vllm`` module with ``StructuredOutputsParams`` ("new"), ``GuidedDecodingParams``
    ("old") or neither (None)."""

    class Params:
        def __init__(self, **kw: Any) -> None:
            self.kw = kw

    class Spec:
        def __init__(self, **kw: Any) -> None:
            self.kw = kw

    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = Params  # type: ignore[attr-defined]
    sp = types.ModuleType("vllm.sampling_params")
    if kind == "new":
        sp.StructuredOutputsParams = Spec  # type: ignore[attr-defined]
    elif kind == "old":
        sp.GuidedDecodingParams = Spec  # type: ignore[attr-defined]
    vllm.sampling_params = sp  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp)


def _vllm(monkeypatch: pytest.MonkeyPatch, engine: _FakeEngine) -> VLLM:
    async def create(self: VLLM) -> _FakeEngine:
        return engine

    monkeypatch.setattr(VLLM, "_create", create)
    return VLLM("/models/x")


def _complete_twice(llm: VLLM, params: SamplingParams) -> list[Completion]:
    async def run() -> list[Completion]:
        try:
            return [await llm.complete("Q:", params), await llm.complete("Q2:", params)]
        finally:
            await llm.aclose()

    return asyncio.run(run())


def test_in_process_vllm_sends_structured_outputs(monkeypatch):
    _fake_vllm(monkeypatch, "new")
    engine = _FakeEngine()
    outs = _complete_twice(_vllm(monkeypatch, engine), SamplingParams(0.0, choices=CHOICES))
    assert [o.extra["constraint"] for o in outs] == ["native", "native"]
    spec = engine.seen[0].kw["structured_outputs"]
    assert type(spec).__module__ == __name__ and spec.kw == {"choice": list(CHOICES)}
    assert "guided_decoding" not in engine.seen[0].kw


def test_in_process_old_vllm_sends_guided_decoding(monkeypatch):
    _fake_vllm(monkeypatch, "old")
    engine = _FakeEngine()
    outs = _complete_twice(_vllm(monkeypatch, engine), SamplingParams(0.0, json_schema=SCORE))
    assert outs[0].extra["constraint"] == "native"
    assert engine.seen[0].kw["guided_decoding"].kw == {"json": SCORE}


def test_in_process_vllm_without_structured_outputs_falls_back_once(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="instructforge")
    _fake_vllm(monkeypatch, None)
    engine = _FakeEngine()
    outs = _complete_twice(_vllm(monkeypatch, engine), SamplingParams(0.0, choices=CHOICES))
    assert [o.extra["constraint"] for o in outs] == ["fallback", "fallback"]
    assert len(engine.seen) == 2 and all("structured_outputs" not in s.kw for s in engine.seen)
    assert len(warnings_of(caplog)) == 1


def test_in_process_vllm_refusing_the_constraint_retries_without_it(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="instructforge")
    _fake_vllm(monkeypatch, "new")
    engine = _FakeEngine(refuse=True)
    outs = _complete_twice(_vllm(monkeypatch, engine), SamplingParams(0.0, json_schema=SCORE))
    assert [o.extra["constraint"] for o in outs] == ["fallback", "fallback"]
    # refused, the same without, then the second call without at once
    assert ["structured_outputs" in s.kw for s in engine.seen] == [True, False, False]
    warned = warnings_of(caplog)
    assert len(warned) == 1 and "xgrammar does not support" in warned[0]


def test_in_process_vllm_unconstrained_calls_carry_nothing(monkeypatch):
    _fake_vllm(monkeypatch, "new")
    engine = _FakeEngine()
    outs = _complete_twice(_vllm(monkeypatch, engine), SamplingParams(0.0))
    assert all(o.extra == {} for o in outs)
    assert all(set(s.kw) == {"temperature", "top_p", "max_tokens", "seed", "stop"}
               for s in engine.seen)


def test_in_process_vllm_error_the_unconstrained_call_gets_too_is_raised_not_remembered(
        monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="instructforge")
    _fake_vllm(monkeypatch, "new")

    class TooLong(_FakeEngine):
        async def generate(self, prompt: Any, sampling: Any, request_id: str):
            self.seen.append(sampling)
            if prompt["prompt"] == "long":
                raise ValueError("The decoder prompt is longer than the maximum model length")
            yield _Final([_Out("Equal")])

    engine = TooLong()
    llm = _vllm(monkeypatch, engine)
    params = SamplingParams(0.0, choices=CHOICES)

    async def run() -> Completion:
        try:
            with pytest.raises(LLMError, match="longer than the maximum"):
                await llm.complete("long", params)
            return await llm.complete("short", params)
        finally:
            await llm.aclose()

    assert asyncio.run(run()).extra["constraint"] == "native"
    assert warnings_of(caplog) == []
