"""LLM backends behind one interface, and ``make_llm`` to build one from a spec string.

Spec strings (used by every ``--*-model`` option):

- ``embedded``: the bundled SmolLM2-135M-Instruct, served by llama.cpp on 127.0.0.1;
- ``embedded:NAME``: a named embedded model, e.g. ``embedded:qwen2.5-coder-1.5b`` (extra
  ``[qwen]``) or ``embedded:smollm2-135m`` (see :mod:`instructforge.llm.local_models`);
- ``/path/to/model.gguf``: any GGUF file, served the same way;
- ``openai:MODEL@http://host:port/v1``: an OpenAI-compatible server;
- ``openai:MODEL`` or ``openai``: the server in ``OPENAI_BASE_URL`` (key: ``OPENAI_API_KEY``);
- ``http://host:port/v1``: that server's only model;
- ``vllm:/path/to/model[?tensor_parallel_size=2&...]``: vLLM in this process (GPU, extra
  ``[vllm]``; imported only when used).

>>> llm = make_llm("openai:gpt-4o-mini@https://api.example.com/v1")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

from instructforge.llm import local_models
from instructforge.llm.base import (
    LLM,
    Completion,
    LLMError,
    Message,
    RawCompletionUnsupported,
    SamplingParams,
)
from instructforge.llm.embedded import ServerSettings, embedded_llm
from instructforge.llm.openai import OpenAICompatible
from instructforge.llm.urls import redact_urls

__all__ = [
    "LLM",
    "Completion",
    "LLMError",
    "Message",
    "OpenAICompatible",
    "RawCompletionUnsupported",
    "SamplingParams",
    "ServerSettings",
    "embedded_llm",
    "make_llm",
]


def make_llm(
    spec: str | None = "embedded",
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    model_path: str | None = None,
    max_concurrency: int | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    settings: ServerSettings | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
) -> LLM:
    """Build a backend from a spec string and/or explicit server options.

    ``base_url`` (with ``spec`` as the model name) wins over ``model_path``, which wins over
    the spec; ``api_key`` defaults to ``OPENAI_API_KEY``. ``rpm`` / ``tpm`` (requests /
    tokens per minute) limit a server's backend (:class:`OpenAICompatible`).
    """
    kw: dict[str, Any] = {}
    if max_concurrency:
        kw["max_concurrency"] = max_concurrency
    if timeout:
        kw["timeout"] = timeout
    if max_retries is not None:
        kw["max_retries"] = max_retries
    remote = {"rpm": rpm, "tpm": tpm}
    key = api_key or os.environ.get("OPENAI_API_KEY")
    spec = (spec or "embedded").strip()
    if base_url:
        embedded = spec in ("embedded", "") or spec.startswith("embedded:")
        model = None if embedded else spec.removeprefix("openai:")
        return OpenAICompatible(base_url, model, key, **kw, **remote)
    if model_path:
        return embedded_llm(model_path, settings=settings, **kw)
    if spec == "embedded" or spec.startswith("embedded:"):
        local = local_models.get_model(spec.removeprefix("embedded").removeprefix(":"))
        settings = settings or ServerSettings(parallel=local.parallel,
                                              ctx_per_slot=local.ctx_per_slot)
        return embedded_llm(local_models.model_path(local), settings=settings,
                            alias=local.alias, **kw)
    if spec.startswith("vllm:"):
        from instructforge.llm.vllm import VLLM  # vllm itself loads on the first request

        return VLLM.from_spec(spec, **({"max_concurrency": max_concurrency}
                                       if max_concurrency else {}))
    if spec.endswith(".gguf"):
        return embedded_llm(spec, settings=settings, **kw)
    if spec.startswith(("http://", "https://")):
        return OpenAICompatible(spec, None, key, **kw, **remote)
    if spec == "openai" or spec.startswith("openai:"):
        rest = spec.removeprefix("openai").removeprefix(":")
        model, _, url = rest.partition("@")
        url = url or os.environ.get("OPENAI_BASE_URL", "")
        if not url:
            raise LLMError(
                f"model spec {spec!r} names no server and OPENAI_BASE_URL is not set; "
                "use openai:MODEL@http://host:port/v1 or --base-url."
            )
        return OpenAICompatible(url, model or None, key, **kw, **remote)
    raise LLMError(
        f"unknown model spec {redact_urls(spec)!r}: use 'embedded', 'embedded:NAME' "
        f"({', '.join(local_models.MODELS)}), a .gguf path, "
        "'openai:MODEL@URL', 'openai:MODEL' (with OPENAI_BASE_URL), a server URL or 'vllm:PATH'."
    )
