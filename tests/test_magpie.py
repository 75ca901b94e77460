"""Magpie on the engine, with a scripted model: what is sent, what is kept, what is dropped."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from instructforge.devserver import DevServer
from instructforge.llm import OpenAICompatible
from instructforge.llm.base import LLM, Completion, SamplingParams
from instructforge.llm.templates import get_template
from instructforge.methods.filters import FilterConfig
from instructforge.methods.magpie import (
    MagpieConfig,
    MagpieError,
    category_names,
    estimate,
    magpie,
    pick_category,
    render_prompt,
)

CHATML_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ScriptedLLM(LLM):
    """Writes a query when sent a pre-query prefix, an answer when sent a post-query one."""

    def __init__(self, queries=None, answers=None, template_text=CHATML_JINJA, **kw):
        self.model_id = "scripted"
        self.queries = queries or (lambda p, seed: f"Question number {seed} about gardening?")
        self.answers = answers or (lambda p, seed: "A clear and useful answer about plants.")
        self.template_text = template_text
        self.calls: list[tuple[str, str, SamplingParams]] = []
        for k, v in kw.items():
            setattr(self, k, v)

    async def chat_template(self):
        return self.template_text

    async def chat(self, messages, params):
        self.calls.append(("chat", json.dumps(messages), params))
        return Completion("An answer from the chat API.", "stop", 5, 5, self.model_id)

    async def complete(self, text, params):
        self.calls.append(("complete", text, params))
        if params.max_tokens == 1:  # the endpoint probe
            return Completion("x", "length", 1, 1, self.model_id)
        if text.endswith("<|im_start|>assistant\n"):
            out = self.answers(text, params.seed)
        else:
            out = self.queries(text, params.seed)
        if isinstance(out, Completion):
            return out
        return Completion(out, "stop", len(text) // 4, len(out) // 4, self.model_id)


def _run(tmp_path: Path, llm: LLM, **cfg) -> tuple[list[dict], list[dict]]:
    cfg.setdefault("n", 4)
    cfg.setdefault("filters", FilterConfig(languages=None))
    magpie(tmp_path / "run", MagpieConfig(**cfg), llm=llm, progress=False)
    kept = [json.loads(x) for x in (tmp_path / "run/data/records.jsonl").read_text().splitlines()]
    rej_path = tmp_path / "run/rejected.jsonl"
    rej = [json.loads(x) for x in rej_path.read_text().splitlines()] if rej_path.exists() else []
    return kept, rej


def _query_calls(llm: ScriptedLLM):
    return [c for c in llm.calls if c[0] == "complete" and c[2].max_tokens != 1
            and not c[1].endswith("<|im_start|>assistant\n")]


SMOL_PREFIX = get_template("smollm2").pre_query_template()


def test_instruction_synthesis_sends_only_the_pre_query_template(tmp_path):
    llm = ScriptedLLM()
    _run(tmp_path, llm, n=2)
    for _, text, params in _query_calls(llm):
        assert text == SMOL_PREFIX
        assert params.temperature == 1.0 and params.top_p == 1.0
        assert params.stop == ("<|im_end|>",)


def test_each_conversation_slot_samples_with_its_own_seed(tmp_path):
    llm = ScriptedLLM()
    _run(tmp_path, llm, n=5)
    seeds = [c[2].seed for c in _query_calls(llm)]
    assert len(set(seeds)) == 5


def test_response_synthesis_sends_pre_query_query_and_post_query(tmp_path):
    llm = ScriptedLLM()
    kept, _ = _run(tmp_path, llm, n=1)
    query = kept[0]["messages"][0]["content"]
    answers = [c for c in llm.calls if c[1].endswith("<|im_start|>assistant\n")]
    assert answers[0][1] == SMOL_PREFIX + query + "<|im_end|>\n<|im_start|>assistant\n"
    assert answers[0][2].temperature == 0.0


def test_a_kept_record_is_a_chat_with_its_facts(tmp_path):
    kept, rej = _run(tmp_path, ScriptedLLM(), n=3)
    assert len(kept) == 3 and not rej
    r = kept[0]
    assert r["method"] == "magpie" and r["id"].startswith("magpie-")
    assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
    assert r["metadata"]["template"] == "smollm2"
    assert r["metadata"]["turns"][0]["query_finish_reason"] == "stop"


def test_three_turns_give_three_query_answer_pairs_with_follow_up_prompts(tmp_path):
    llm = ScriptedLLM(queries=lambda p, seed: f"Question {seed} about trees and how they grow?")
    kept, _ = _run(tmp_path, llm, n=1, turns=3)
    msgs = kept[0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 3
    system = kept[0]["metadata"]["system_prompt"]
    assert "multi-round conversation" in system
    follow_up = _query_calls(llm)[1][1]
    t = get_template("smollm2")
    assert follow_up == t.render([{"role": "system", "content": system}, *msgs[:2]]) + (
        "<|im_start|>user\n"
    )


def test_a_category_puts_its_system_prompt_before_the_pre_query(tmp_path):
    llm = ScriptedLLM()
    kept, _ = _run(tmp_path, llm, n=2, categories={"math": 1.0})
    assert kept[0]["metadata"]["category"] == "math"
    text = _query_calls(llm)[0][1]
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert "mathematical questions" in text and text.endswith("<|im_end|>\n<|im_start|>user\n")


def test_a_weighted_mix_draws_categories_by_weight():
    draws = Counter(pick_category({"math": 3.0, "coding": 1.0}, f"magpie-{i}", 0)
                    for i in range(2000))
    assert 0.7 < draws["math"] / 2000 < 0.8


def test_category_draws_are_deterministic():
    mix = {"math": 1.0, "coding": 1.0, "law": 1.0}
    assert [pick_category(mix, f"magpie-{i}", 7) for i in range(20)] == [
        pick_category(mix, f"magpie-{i}", 7) for i in range(20)]


def test_users_can_add_their_own_category(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "cooking.jinja").write_text(
        "{{ assistant }} The user will ask you about cooking.")
    assert "cooking" in category_names(str(tmp_path / "cats"))
    llm = ScriptedLLM()
    _run(tmp_path, llm, n=1, categories={"cooking": 1}, category_dir=str(tmp_path / "cats"))
    assert "ask you about cooking" in _query_calls(llm)[0][1]


def test_an_unknown_category_names_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="math"):
        magpie(tmp_path / "run", MagpieConfig(categories={"astrology": 1}), llm=ScriptedLLM())


def test_shipped_prompts_render_with_the_default_system_prompt():
    assistant = render_prompt("assistant", default_system="You are Qwen.")
    assert assistant == "You are Qwen."
    assert render_prompt("assistant", default_system="") == "You are a helpful AI assistant."
    for name in category_names():
        assert render_prompt(f"categories/{name}", assistant=assistant).startswith("You are Qwen.")


def test_a_leaking_query_goes_to_rejected_with_the_reason(tmp_path):
    llm = ScriptedLLM(queries=lambda p, seed: "What is a cat?<|im_start|>assistant\nA cat is")
    kept, rej = _run(tmp_path, llm, n=2)
    assert not kept and len(rej) == 2
    assert rej[0]["rejection"]["stage"] == "query"
    assert rej[0]["rejection"]["rule"] == "template_leakage"
    assert rej[0]["messages"][0]["content"].startswith("What is a cat?")


def test_a_response_cut_at_max_tokens_is_rejected_as_incomplete(tmp_path):
    llm = ScriptedLLM(answers=lambda p, seed: Completion("Step one is to", "length", 9, 9))
    kept, rej = _run(tmp_path, llm, n=1)
    assert not kept and rej[0]["rejection"]["rule"] == "incomplete"
    assert rej[0]["rejection"]["stage"] == "response"


def test_a_filter_switched_off_lets_its_case_through(tmp_path):
    llm = ScriptedLLM(answers=lambda p, seed: Completion("Step one is to", "length", 9, 9))
    kept, _ = _run(tmp_path, llm, n=1,
                   filters=FilterConfig(incomplete=False, languages=None))
    assert len(kept) == 1


def test_duplicate_queries_across_the_stream_keep_only_the_first(tmp_path):
    llm = ScriptedLLM(queries=lambda p, seed: "How do I repot a large monstera plant safely?")
    kept, rej = _run(tmp_path, llm, n=4)
    assert len(kept) == 1 and len(rej) == 3
    assert {r["rejection"]["rule"] for r in rej} == {"exact_duplicate"}
    assert all(r["rejection"]["evidence"]["duplicate_of"] == kept[0]["id"] for r in rej)


def test_near_duplicate_queries_are_dropped(tmp_path):
    llm = ScriptedLLM(queries=lambda p, seed: (
        "I'm planning a two week trip to Japan in spring to see the cherry blossoms, can you "
        f"suggest an itinerary{'!' if seed % 2 else '?'} {'Thanks' if seed % 3 else 'Thank you'}"))
    kept, rej = _run(tmp_path, llm, n=6, filters=FilterConfig(languages=None, exact_dedup=False))
    assert len(kept) == 1
    assert {r["rejection"]["rule"] for r in rej} == {"near_duplicate"}


def test_the_dedup_index_survives_resume(tmp_path):
    same = "How do I repot a large monstera plant safely?"
    first = ScriptedLLM(queries=lambda p, seed: same)
    kept, _ = _run(tmp_path, first, n=1)
    assert len(kept) == 1
    # A second invocation on the same run directory: new slots, the same query.
    again = ScriptedLLM(queries=lambda p, seed: same)
    kept, rej = _run(tmp_path, again, n=3)
    assert len(kept) == 1
    assert [r["rejection"]["evidence"]["duplicate_of"] for r in rej] == ["magpie-0"] * 2


def test_resume_makes_no_finished_call_twice(tmp_path):
    first = ScriptedLLM()
    _run(tmp_path, first, n=3)
    again = ScriptedLLM()
    kept, _ = _run(tmp_path, again, n=3)
    assert len(kept) == 3
    assert [c for c in again.calls if c[2].max_tokens != 1] == []


def test_the_template_probe_is_cached_so_a_rerun_sends_nothing(tmp_path):
    first = ScriptedLLM()
    _run(tmp_path, first, n=2)
    assert [c[2].max_tokens for c in first.calls].count(1) == 1  # the probe, once
    again = ScriptedLLM()
    _run(tmp_path, again, n=2)
    assert again.calls == []


def test_another_model_can_write_the_answers_through_its_chat_api(tmp_path):
    llm, responder = ScriptedLLM(), ScriptedLLM(model_id="responder")
    magpie(tmp_path / "run", MagpieConfig(n=1, filters=FilterConfig(languages=None)), llm=llm,
           response_llm=responder, progress=False)
    rec = json.loads((tmp_path / "run/data/records.jsonl").read_text())
    assert rec["messages"][1]["content"] == "An answer from the chat API."
    assert rec["metadata"]["response_model"] == "responder"
    assert [c[0] for c in responder.calls] == ["chat"]


def test_a_chat_only_backend_fails_before_any_record_with_the_reason(tmp_path):
    llm = ScriptedLLM(supports_completion=False)
    with pytest.raises(MagpieError, match="raw text completion") as e:
        magpie(tmp_path / "run", MagpieConfig(n=2), llm=llm)
    assert "--response-model" in str(e.value) and "/v1/completions" in str(e.value)
    assert llm.calls == []


def test_a_server_that_rejects_completions_gets_the_same_clear_error(tmp_path):
    with DevServer(completions=False) as srv:
        llm = OpenAICompatible(srv.url, "dev")
        with pytest.raises(MagpieError, match="only offers a chat API"):
            magpie(tmp_path / "run", MagpieConfig(n=2, template="chatml"), llm=llm,
                   progress=False)
    assert not (tmp_path / "run" / "data" / "records.jsonl").exists()


def test_a_model_that_cannot_tell_its_template_asks_for_one(tmp_path):
    with pytest.raises(MagpieError, match="--template"):
        magpie(tmp_path / "run", MagpieConfig(n=1), llm=ScriptedLLM(template_text=None))


def test_a_named_template_overrides_the_model(tmp_path):
    llm = ScriptedLLM(template_text=None)
    llm.answers = lambda p, seed: "ok answer"
    magpie(tmp_path / "run", MagpieConfig(n=1, template="qwen2.5",
                                          filters=FilterConfig(languages=None)),
           llm=llm, progress=False)
    assert _query_calls(llm)[0][1].startswith("<|im_start|>system\nYou are Qwen")


def test_dry_run_estimate_counts_calls_without_calling():
    plan = estimate(MagpieConfig(n=10, turns=3, query_max_tokens=100, response_max_tokens=200))
    assert plan["llm_calls_max"] == 60
    assert plan["completion_tokens_max"] == 9000


@pytest.mark.parametrize("bad", [{"n": 0}, {"turns": 0}, {"categories": {"math": 0}}])
def test_bad_settings_are_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).rstrip("s") if "categories" not in bad
                       else "weight"):
        MagpieConfig(**bad).validate()


@pytest.mark.parametrize("fmt", ["messages", "alpaca", "sharegpt"])
def test_multi_turn_output_exports_in_the_trainer_formats(tmp_path, fmt):
    from instructforge.tuning.export import export_run

    llm = ScriptedLLM(queries=lambda p, seed: f"Question {seed} about trees and how they grow?")
    _run(tmp_path, llm, n=2, turns=2)
    res = export_run(tmp_path / "run", fmt)
    assert res.written == 2
    row = json.loads(res.path.read_text().splitlines()[0])
    if fmt == "alpaca":
        assert len(row["history"]) == 1 and row["output"]
    elif fmt == "sharegpt":
        assert [c["from"] for c in row["conversations"]] == ["human", "gpt"] * 2
    else:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * 2


def test_the_template_check_releases_the_loop_and_the_job_closes_the_model_once(tmp_path):
    events = []

    class Tracked(ScriptedLLM):
        async def release_loop(self):
            events.append("release_loop")

        async def aclose(self):
            events.append("aclose")

    magpie(tmp_path / "run", MagpieConfig(n=1, filters=FilterConfig(languages=None)),
           llm=Tracked(), progress=False)
    # A model loaded in process (vLLM) survives the check and is shut down once, at the end.
    assert events == ["release_loop", "aclose"]
