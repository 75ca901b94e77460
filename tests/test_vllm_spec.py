"""The vllm backend without a GPU: spec strings, lazy import, a clear error when vLLM is absent."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys

import pytest

from instructforge.llm import LLMError, SamplingParams, make_llm
from instructforge.llm.vllm import VLLM


def test_a_vllm_spec_builds_the_in_process_backend_with_its_options():
    llm = make_llm("vllm:/models/qwen?tensor_parallel_size=2&max_model_len=4096",
                   max_concurrency=32)
    assert isinstance(llm, VLLM)
    assert (llm.model, llm.tensor_parallel_size, llm.max_concurrency) == ("/models/qwen", 2, 32)
    assert llm.describe() == {"model": "vllm:/models/qwen", "backend": "vllm",
                              "tensor_parallel_size": 2, "enable_prefix_caching": True,
                              "max_model_len": 4096}


def test_prefix_caching_is_on_by_default():
    assert VLLM("/models/x").enable_prefix_caching is True


def test_an_unknown_spec_option_is_named():
    with pytest.raises(LLMError, match="unknown option 'tp'"):
        make_llm("vllm:/models/x?tp=2")


def test_a_spec_option_of_the_wrong_type_is_named():
    with pytest.raises(LLMError, match="tensor_parallel_size='two' is not a int"):
        make_llm("vllm:/models/x?tensor_parallel_size=two")


def test_building_the_backend_does_not_import_vllm():
    code = ("import sys; from instructforge.llm import make_llm; make_llm('vllm:/models/x'); "
            "print('vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_without_vllm_the_first_call_says_how_to_get_it():
    llm = make_llm("vllm:/models/x")

    async def call():
        try:
            await llm.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=4))
        finally:
            await llm.aclose()

    with pytest.raises(LLMError, match=r"pip install 'instructforge\[vllm\]'"):
        asyncio.run(call())


def test_releasing_the_loop_keeps_the_model_loaded_and_aclose_frees_it(monkeypatch):
    """Magpie checks the template under one asyncio.run and runs the job under another: the
    model must be loaded once, not once per loop."""
    shutdowns = []
    loads = []

    class Engine:
        def shutdown(self):
            shutdowns.append(1)

    async def create(self):
        loads.append(1)
        return Engine()

    monkeypatch.setattr(VLLM, "_create", create)
    llm = VLLM("/models/x")

    async def one_loop():
        await llm._engine()
        await llm.release_loop()

    asyncio.run(one_loop())
    asyncio.run(one_loop())
    assert loads == [1] and shutdowns == []
    asyncio.run(llm.aclose())
    assert shutdowns == [1]
