"""The LLM interface: what callers need is on it (no duck typing), and wrappers forward it."""

from __future__ import annotations

import asyncio

from instructforge.llm import LLM, Completion, SamplingParams
from instructforge.llm.base import WrappedLLM
from instructforge.llm.config import ModelConfig, build_roles, distinct, gpus_needed
from instructforge.llm.templates import resolve_template


class Plain(LLM):
    model_id = "plain-id"

    def __init__(self) -> None:
        self.resolved = 0

    async def chat(self, messages, params: SamplingParams) -> Completion:
        return Completion("hi", "stop")

    async def complete(self, text, params: SamplingParams) -> Completion:
        return Completion(text, "stop")

    async def resolve_model(self) -> str:
        self.resolved += 1
        return await super().resolve_model()


def test_every_backend_can_be_resolved_with_the_default_check():
    assert asyncio.run(Plain().resolve_model()) == "plain-id"


def test_a_wrapper_forwards_resolve_model_and_the_model_name_to_what_it_wraps():
    inner = Plain()
    inner.model = "Qwen/Qwen2.5-0.5B-Instruct"
    wrapped = WrappedLLM(inner)
    assert asyncio.run(wrapped.resolve_model()) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert inner.resolved == 1
    assert wrapped.model_id == "plain-id"
    # The chat template is guessed from the wrapped model's own name.
    assert asyncio.run(resolve_template(None, wrapped)).name == "qwen2.5"


def test_roles_configured_alike_share_one_backend():
    a, b, c = build_roles([ModelConfig("openai:m@http://h/v1")] * 2
                          + [ModelConfig("openai:j@http://h/v1")])
    assert a is b and a is not c
    assert distinct([a, b, c]) == [a, c]


def test_gpus_are_counted_from_model_configs_once_per_engine():
    tp2 = ModelConfig("vllm:/m?tensor_parallel_size=2")
    assert gpus_needed(tp2, tp2, ModelConfig("openai:j@http://h/v1"), None) == 2
